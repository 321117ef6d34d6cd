"""The two sides of a comparison, each a thin function from a sample to RenderSettings.

- :func:`preview_settings`: what ai-toolkit rendered a training preview with.
- :func:`reference_settings`: what the reference server renders for a request prompt.
- :func:`as_configured_request`: the request a user writes from the sample config.
- :func:`differences`: the static differences between two settings records, named with
  parity's cause vocabulary.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from parity.families import SERVER_MODELS, family, family_of_model
from parity.family import Era
from parity.job import Checkpoint, Job, SampleSpec
from parity.server import (
    FPS_BOUNDS,
    FRAMES_BOUNDS,
    GUIDANCE_BOUNDS,
    SIZE_BOUNDS,
    STEPS_BOUNDS,
    InferenceRequest,
    LoraItem,
    PromptItem,
    ServerPrompt,
    clamp,
    request_number,
    server_dtype,
    server_prompts,
)
from parity.settings import (
    CAUSES,
    FLOW_MATCH_EULER,
    Cause,
    Dtype,
    LoraApplier,
    LoraSettings,
    Quantization,
    RenderSettings,
    SchedulerConfig,
    TrainingAdapter,
    legacy_sigmas,
)

_DTYPE_NAMES: dict[str, Dtype] = {
    "fp32": "float32",
    "float32": "float32",
    "float": "float32",
    "fp16": "float16",
    "float16": "float16",
    "half": "float16",
    "bf16": "bfloat16",
    "bfloat16": "bfloat16",
}


def normalize_dtype(name: str) -> Dtype:
    try:
        return _DTYPE_NAMES[name.lower()]
    except KeyError:
        raise ValueError(f"unknown dtype {name!r}; use one of fp32, fp16, bf16") from None


def snap(value: int, multiple: int) -> int:
    """Floor ``value`` (pixels) to a multiple of ``multiple``."""
    return value // multiple * multiple


def era_of(job: Job, checkpoint: Checkpoint | None) -> Era:
    """The era of the ai-toolkit release that rendered a step's previews.

    A step's own checkpoint says it; step 0 (no checkpoint) takes the earliest one,
    written by the same run closest in time. The rules are the job's family's.
    """
    version = checkpoint.aitk_version if checkpoint else None
    if version is None:
        version = next((c.aitk_version for c in job.checkpoints if c.aitk_version), None)
    return family(job.family).preview_era(version)


def preview_settings(
    job: Job, sample: SampleSpec, checkpoint: Checkpoint | None, *, era: Era | None = None
) -> RenderSettings:
    """Settings ai-toolkit used for preview ``sample.index`` at ``checkpoint``'s step."""
    rules = family(job.family)
    era = era or era_of(job, checkpoint)
    lora = lora_2 = None
    if checkpoint is not None:
        lora = LoraSettings(
            path=str(checkpoint.path),
            scale=sample.network_multiplier,
            merged=job.merged_lora,
            applier=LoraApplier.AITK,
        )
        if checkpoint.path_2 is not None:  # one network over both experts, one multiplier
            lora_2 = dataclasses.replace(lora, path=str(checkpoint.path_2))
    dtype = normalize_dtype(job.train_dtype)
    adapter = TrainingAdapter(str(job.adapter_path)) if job.adapter_path is not None else None
    width, height = snap(sample.width, era.size_multiple), snap(sample.height, era.size_multiple)
    return RenderSettings(
        prompt=sample.prompt,
        negative_prompt=sample.negative_prompt,
        width=width,
        height=height,
        pipeline_guidance=era.pipeline_guidance(sample.guidance_scale),
        steps=sample.steps,
        sigmas=legacy_sigmas(sample.steps) if era.legacy_sigmas else None,
        **schedule_fields(rules.preview_scheduler, rules.default_scheduler),
        seed=sample.seed,
        generator="global",
        lora=lora,
        dtype=dtype,
        quantization=job.quantization,
        # ai-toolkit casts the loaded text encoders to the training dtype once more
        # (z_image.py load_model; stable_diffusion_model.py for FLUX.1), which rounds what
        # loading kept in float32; a no-op in float32.
        text_encoder_cast=dtype != "float32",
        adapter=adapter,
        # Tiling changes pixels only where the image is larger than the VAE's tile.
        vae_tiling=job.vae_tiling and rules.tiling_acts(width, height),
        family=rules.name,
        num_frames=sample.rendered_frames,
        fps=sample.fps if rules.video else None,
        lora_2=lora_2,
    )


def reference_settings(
    request: InferenceRequest,
    index: int,
    *,
    lora_paths: list[str],
    device: str = "cpu",
    checkpoint_scheduler: SchedulerConfig | None = None,
    dtype: Dtype | None = None,
    server_diffusers: str | None = None,
) -> tuple[RenderSettings, ServerPrompt]:
    """Settings the server renders prompt ``index`` of ``request`` with.

    ``lora_paths`` are the request's LoRA files resolved to local paths (the server
    applies the first). ``checkpoint_scheduler`` is the checkpoint's own scheduler, used
    by the models that keep it. ``server_diffusers`` is the diffusers release the server
    runs (``--server-diffusers``; None: the installed one); the model's family says what
    it means for its pipeline (:attr:`parity.family.Family.server_era`), and the settings
    then make the installed diffusers behave like it.
    """
    model = SERVER_MODELS[request.model]
    rules = family_of_model(request.model)
    era = rules.server_era(server_diffusers)
    prompt = server_prompts(request)[index]
    # A checkpoint without a scheduler config: what the server's diffusers falls back on.
    scheduler = model.scheduler(checkpoint_scheduler) or rules.default_scheduler
    lora = lora_2 = None
    if model.expert_loras:
        # One file per expert, each at its own scale; an expert without one has none.
        by_expert = dict(zip((lo.transformer for lo in request.loras), lora_paths, strict=False))
        if by_expert.get("high"):
            lora = LoraSettings(path=by_expert["high"], scale=prompt.lora_scale)
        if by_expert.get("low"):
            lora_2 = LoraSettings(path=by_expert["low"], scale=prompt.lora_scale_2 or 0.0)
    elif lora_paths:
        lora = LoraSettings(path=lora_paths[0], scale=prompt.lora_scale, merged=model.fuses_lora)
    settings = RenderSettings(
        prompt=prompt.prompt,
        negative_prompt=prompt.negative_prompt,
        width=prompt.width,
        height=prompt.height,
        # The server passes guidance unchanged; its diffusers decides whether CFG runs.
        pipeline_guidance=(
            era.pipeline_guidance(prompt.guidance_scale) if era else prompt.guidance_scale
        ),
        steps=prompt.steps,
        sigmas=legacy_sigmas(prompt.steps) if era and era.legacy_sigmas else None,
        seed=prompt.seed,
        **schedule_fields(scheduler, rules.default_scheduler),
        generator="cpu",
        lora=lora,
        dtype=dtype or server_dtype(device),
        quantization=Quantization(),
        family=rules.name,
        num_frames=(
            rules.pipeline_frames(prompt.num_frames)
            if rules.pipeline_frames and prompt.num_frames is not None
            else None
        ),
        fps=prompt.fps,
        lora_2=lora_2,
    )
    return settings, prompt


def schedule_fields(scheduler: SchedulerConfig, fallback: SchedulerConfig) -> dict:
    """The scheduler fields of RenderSettings for ``scheduler``, every key of its config
    kept; a FlowMatch config without ``shift`` takes the fallback's (the family's default
    scheduler's). A class without a ``shift`` setting (UniPC) has none."""
    if scheduler.class_name != FLOW_MATCH_EULER:
        shift = scheduler.shift
    else:
        shift = scheduler.shift if scheduler.shift is not None else fallback.shift
        shift = shift if shift is not None else RenderSettings.scheduler_shift
    return {
        "scheduler_shift": shift,
        "dynamic_shift": scheduler.dynamic_shift,
        "scheduler_class": scheduler.class_name,
        "scheduler_options": scheduler.options,
    }


def as_configured_request(job: Job, checkpoint: Checkpoint | None) -> InferenceRequest:
    """The request a user writes by copying the sample config.

    Only settings written in the config are copied (ai-toolkit's defaults are not, so
    the server fills in its own): prompt flags resolved into fields, ``[trigger]`` left
    for the server, sizes, steps and guidance as written (within the server's bounds),
    one LoRA at the sample-level multiplier. Seeds are the ones ai-toolkit used, written
    explicitly for every prompt whenever the config sets any seed (an item's own seed or
    ``--seed`` flag, else the sample ``seed`` plus the item's index with ``walk_seed``,
    else the sample ``seed``): a user copying the config means those.
    """
    cfg = job.sample_config
    seeds_written = "seed" in cfg or "walk_seed" in cfg
    video = family(job.family).video
    prompts = []
    for s in job.samples:
        if s.error:
            continue
        w = s.written
        size_written = ("width" in w, "height" in w)
        prompts.append(
            PromptItem(
                prompt=s.prompt_template,
                width=int(clamp(s.width, SIZE_BOUNDS)) if size_written[0] else None,
                height=int(clamp(s.height, SIZE_BOUNDS)) if size_written[1] else None,
                seed=s.seed if (s.explicit_seed or seeds_written) else None,
                sample_steps=int(clamp(s.steps, STEPS_BOUNDS)) if "sample_steps" in w else None,
                guidance_scale=(
                    clamp(s.guidance_scale, GUIDANCE_BOUNDS) if "guidance_scale" in w else None
                ),
                neg=s.negative_prompt if "neg" in w else None,
                num_frames=(
                    int(clamp(s.num_frames, FRAMES_BOUNDS)) if video and "num_frames" in w else None
                ),
                fps=int(clamp(s.fps, FPS_BOUNDS)) if video and "fps" in w else None,
            )
        )
    loras = []
    if checkpoint is not None:
        mult = request_number(float(cfg.get("network_multiplier", 1)))
        loras = checkpoint_loras(checkpoint, mult, lambda file: file.name)
    return InferenceRequest(
        model=job.reference_model, trigger_word=job.trigger_word, loras=loras, prompts=prompts
    )


def checkpoint_loras(
    checkpoint: Checkpoint, scale: float | int, name: Callable[[Path], str]
) -> list[LoraItem]:
    """A request's LoRA items for ``checkpoint`` at ``scale``, each file named by ``name``:
    one, or a two-expert model's pair (``transformer: high`` and ``low``, each at
    ``scale``, as ai-toolkit applied one multiplier to both experts)."""
    if checkpoint.path_2 is None:
        return [LoraItem(path=name(checkpoint.path), network_multiplier=scale)]
    return [
        LoraItem(path=name(file), transformer=expert, network_multiplier=scale)
        for file, expert in zip(checkpoint.paths, ("high", "low"), strict=True)
    ]


@dataclass(frozen=True)
class SidePair:
    """Both sides' settings for one preview, plus the static differences."""

    preview: RenderSettings
    reference: RenderSettings
    server_prompt: ServerPrompt
    differences: tuple[Cause, ...]


def differences(preview: RenderSettings, reference: RenderSettings) -> tuple[Cause, ...]:
    """Causes visible without rendering, in :data:`parity.settings.CAUSES` order."""
    p_lora, r_lora = preview.lora, reference.lora
    both = p_lora is not None and r_lora is not None
    # How a LoRA is attached changes its arithmetic's precision only below float32.
    lora_arithmetic_differs = (
        both
        and (p_lora.merged != r_lora.merged or p_lora.applier != r_lora.applier)
        and preview.dtype != "float32"
    )
    # Whether the negative prompt reaches the pixels is the family's rule (Z-Image: when
    # CFG runs; FLUX.1: never).
    uses_negative = family(preview.family).negative_prompt_used
    cfg_active = uses_negative(preview.pipeline_guidance) or uses_negative(
        reference.pipeline_guidance
    )
    found = {
        Cause.SNAPPING: (preview.width, preview.height) != (reference.width, reference.height),
        Cause.FRAMES: preview.num_frames != reference.num_frames,
        Cause.FPS: preview.fps != reference.fps,
        Cause.CFG: preview.pipeline_guidance != reference.pipeline_guidance,
        Cause.SCHEDULER: preview.schedule != reference.schedule,
        Cause.STEPS: preview.steps != reference.steps,
        # The diffusers era: N-1 (explicit legacy sigmas) or N updates for N steps; a
        # different number of steps alone is the steps cause.
        Cause.LIBRARY: (preview.sigmas is None) != (reference.sigmas is None),
        Cause.SEED: preview.seed != reference.seed,
        Cause.LORA_SCALE: _scales(preview) != _scales(reference),
        Cause.PRECISION: preview.dtype != reference.dtype
        or preview.quantization != reference.quantization
        or preview.text_encoder_cast != reference.text_encoder_cast
        or preview.adapter != reference.adapter
        or lora_arithmetic_differs,
        Cause.VAE_TILING: preview.vae_tiling != reference.vae_tiling,
        Cause.PROMPT: preview.prompt != reference.prompt
        or (cfg_active and preview.negative_prompt != reference.negative_prompt),
    }
    return tuple(c for c in CAUSES if found.get(c))


def _scales(settings: RenderSettings) -> tuple[float | None, float | None]:
    """The LoRA scales a render applies, per expert (None: no LoRA there)."""
    return tuple(lo.scale if lo else None for lo in (settings.lora, settings.lora_2))


def pair_for(
    job: Job,
    sample: SampleSpec,
    checkpoint: Checkpoint | None,
    *,
    request: InferenceRequest,
    request_index: int,
    device: str = "cpu",
    checkpoint_scheduler: SchedulerConfig | None = None,
    reference_dtype: Dtype | None = None,
    lora_paths: list[str] | None = None,
    server_diffusers: str | None = None,
) -> SidePair:
    """Both sides of ``sample``'s preview, the reference from prompt ``request_index`` of
    ``request``. ``lora_paths``: the request's LoRA files resolved (default: the
    as-configured request's, which name files of the job folder)."""
    preview = preview_settings(job, sample, checkpoint)
    if lora_paths is None:
        lora_paths = [str(Path(job.root) / lo.path) for lo in request.loras]
    reference, server_prompt = reference_settings(
        request,
        request_index,
        lora_paths=lora_paths,
        device=device,
        checkpoint_scheduler=checkpoint_scheduler,
        dtype=reference_dtype,
        server_diffusers=server_diffusers,
    )
    return SidePair(preview, reference, server_prompt, differences(preview, reference))
