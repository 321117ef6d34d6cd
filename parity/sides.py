"""The two sides of a comparison, each a thin function from a sample to RenderSettings.

- :func:`preview_settings`: what ai-toolkit rendered a training preview with.
- :func:`reference_settings`: what the reference server renders for a request prompt.
- :func:`as_configured_request`: the request a user writes from the sample config.
- :func:`differences`: the static differences between two settings records, named with
  parity's cause vocabulary.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from parity.job import Checkpoint, Era, Job, SampleSpec, era_for_version
from parity.request import (
    SERVER_MODELS,
    SERVER_SCHEDULER_SHIFT,
    InferenceRequest,
    LoraItem,
    PromptItem,
    ServerPrompt,
    request_number,
    server_prompts,
)
from parity.settings import CAUSES, Dtype, LoraSettings, Quantization, RenderSettings, legacy_sigmas

#: ai-toolkit samples Z-Image with this FlowMatch shift whatever the checkpoint ships.
AITK_SCHEDULER_SHIFT = 3.0

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


def server_dtype(device: str, *, bf16_supported: bool = True) -> Dtype:
    """The server's dtype rule: bf16 on CUDA when supported, else fp16; fp32 on CPU."""
    if device.startswith("cuda"):
        return "bfloat16" if bf16_supported else "float16"
    return "float32"


def aitk_pipeline_guidance(guidance_scale: float, era: Era) -> float:
    """The guidance value that makes the installed diffusers do what ai-toolkit's did.

    Installed diffusers runs CFG ``pos + g (pos - neg)`` for ``g > 0``.
    """
    if era.guidance == "minus_one":
        return max(0.0, guidance_scale - 1.0)
    if era.guidance == "raw_gt1":
        return guidance_scale if guidance_scale > 1.0 else 0.0
    return guidance_scale


def snap(value: int, multiple: int) -> int:
    """Floor ``value`` (pixels) to a multiple of ``multiple``."""
    return value // multiple * multiple


def era_of(job: Job, checkpoint: Checkpoint | None) -> Era:
    """The era of the ai-toolkit release that rendered a step's previews.

    A step's own checkpoint says it; step 0 (no checkpoint) takes the earliest one,
    written by the same run closest in time.
    """
    version = checkpoint.aitk_version if checkpoint else None
    if version is None:
        version = next((c.aitk_version for c in job.checkpoints if c.aitk_version), None)
    return era_for_version(version)


def preview_settings(
    job: Job, sample: SampleSpec, checkpoint: Checkpoint | None, *, era: Era | None = None
) -> RenderSettings:
    """Settings ai-toolkit used for preview ``sample.index`` at ``checkpoint``'s step."""
    era = era or era_of(job, checkpoint)
    lora = None
    if checkpoint is not None:
        lora = LoraSettings(
            path=str(checkpoint.path),
            scale=sample.network_multiplier,
            merged=job.merged_lora,
            applier="aitk",
        )
    return RenderSettings(
        prompt=sample.prompt,
        negative_prompt=sample.negative_prompt,
        width=snap(sample.width, era.size_multiple),
        height=snap(sample.height, era.size_multiple),
        pipeline_guidance=aitk_pipeline_guidance(sample.guidance_scale, era),
        steps=sample.steps,
        sigmas=legacy_sigmas(sample.steps) if era.legacy_sigmas else None,
        scheduler_shift=AITK_SCHEDULER_SHIFT,
        seed=sample.seed,
        generator="global",
        lora=lora,
        dtype=normalize_dtype(job.train_dtype),
        quantization=job.quantization,
    )


def reference_settings(
    request: InferenceRequest,
    index: int,
    *,
    lora_paths: list[str],
    device: str = "cpu",
    checkpoint_shift: float | None = None,
    dtype: Dtype | None = None,
) -> tuple[RenderSettings, ServerPrompt]:
    """Settings the server renders prompt ``index`` of ``request`` with.

    ``lora_paths`` are the request's LoRA files resolved to local paths (the server
    applies the first). ``checkpoint_shift`` is the shift of the checkpoint's own
    scheduler, used by ``zimage_turbo`` which keeps it.
    """
    model = SERVER_MODELS[request.model]
    prompt = server_prompts(request)[index]
    if model.replaces_scheduler:
        shift = SERVER_SCHEDULER_SHIFT
    else:
        shift = checkpoint_shift if checkpoint_shift is not None else SERVER_SCHEDULER_SHIFT
    lora = LoraSettings(path=lora_paths[0], scale=prompt.lora_scale) if lora_paths else None
    settings = RenderSettings(
        prompt=prompt.prompt,
        negative_prompt=prompt.negative_prompt,
        width=prompt.width,
        height=prompt.height,
        pipeline_guidance=prompt.guidance_scale,
        steps=prompt.steps,
        seed=prompt.seed,
        scheduler_shift=shift,
        generator="cpu",
        lora=lora,
        dtype=dtype or server_dtype(device),
        quantization=Quantization(),
    )
    return settings, prompt


def as_configured_request(job: Job, checkpoint: Checkpoint | None) -> InferenceRequest:
    """The request a user writes by copying the sample config.

    Only settings written in the config are copied (ai-toolkit's defaults are not, so
    the server fills in its own): prompt flags resolved into fields, ``[trigger]`` left
    for the server, sizes, seeds, steps and guidance as written, one LoRA at the
    sample-level multiplier. A seed comes from the item (or its ``--seed`` flag), else
    from the sample-level ``seed``.
    """
    cfg = job.sample_config
    prompts = []
    for s in job.samples:
        if s.error:
            continue
        w = s.written
        seed = None
        if s.explicit_seed:
            seed = s.seed
        elif "seed" in cfg:
            seed = int(cfg["seed"])
        prompts.append(
            PromptItem(
                prompt=s.prompt_template,
                width=max(64, min(4096, s.width)) if "width" in w else None,
                height=max(64, min(4096, s.height)) if "height" in w else None,
                seed=seed,
                sample_steps=max(1, min(150, s.steps)) if "sample_steps" in w else None,
                guidance_scale=(
                    max(0.0, min(20.0, s.guidance_scale)) if "guidance_scale" in w else None
                ),
                neg=s.negative_prompt if "neg" in w else None,
            )
        )
    loras = []
    if checkpoint is not None:
        mult = float(cfg.get("network_multiplier", 1))
        loras.append(LoraItem(path=checkpoint.path.name, network_multiplier=request_number(mult)))
    return InferenceRequest(
        model=job.reference_model, trigger_word=job.trigger_word, loras=loras, prompts=prompts
    )


@dataclass(frozen=True)
class SidePair:
    """Both sides' settings for one preview, plus the static differences."""

    preview: RenderSettings
    reference: RenderSettings
    server_prompt: ServerPrompt
    differences: tuple[str, ...]


def differences(preview: RenderSettings, reference: RenderSettings) -> tuple[str, ...]:
    """Causes visible without rendering, sorted in :data:`parity.settings.CAUSES` order."""
    found: set[str] = set()
    if (preview.width, preview.height) != (reference.width, reference.height):
        found.add("snapping")
    if preview.pipeline_guidance != reference.pipeline_guidance:
        found.add("cfg")
    if preview.scheduler_shift != reference.scheduler_shift:
        found.add("scheduler")
    if preview.steps != reference.steps:
        found.add("steps")
    if preview.sigmas != reference.sigmas:
        found.add("library")
    if preview.seed != reference.seed:
        found.add("seed")
    p_scale = preview.lora.scale if preview.lora else None
    r_scale = reference.lora.scale if reference.lora else None
    if (preview.lora is None) != (reference.lora is None) or p_scale != r_scale:
        found.add("lora_scale")
    merged_differs = (
        preview.lora is not None
        and reference.lora is not None
        and preview.lora.merged != reference.lora.merged
    )
    if (
        preview.dtype != reference.dtype
        or preview.quantization != reference.quantization
        or (merged_differs and preview.dtype != "float32")
    ):
        found.add("precision")
    cfg_active = preview.pipeline_guidance > 0 or reference.pipeline_guidance > 0
    if preview.prompt != reference.prompt or (
        cfg_active and preview.negative_prompt != reference.negative_prompt
    ):
        found.add("prompt")
    return tuple(c for c in CAUSES if c in found)


def pair_for(
    job: Job,
    sample: SampleSpec,
    checkpoint: Checkpoint | None,
    *,
    request: InferenceRequest,
    request_index: int,
    device: str = "cpu",
    checkpoint_shift: float | None = None,
    reference_dtype: Dtype | None = None,
) -> SidePair:
    preview = preview_settings(job, sample, checkpoint)
    lora_paths = [str(Path(job.root) / lo.path) for lo in request.loras]
    reference, server_prompt = reference_settings(
        request,
        request_index,
        lora_paths=lora_paths,
        device=device,
        checkpoint_shift=checkpoint_shift,
        dtype=reference_dtype,
    )
    return SidePair(preview, reference, server_prompt, differences(preview, reference))
