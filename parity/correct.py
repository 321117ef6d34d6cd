"""The corrected request: what to send the server so it reproduces the previews.

Per checkpoint, prompts are grouped by LoRA scale (the server applies one scale per
request) and every setting is made explicit in the server's semantics: the guidance the
pipeline must receive, the preview's seed and steps, its exact size. Where no request
can reproduce a preview, the reason is given instead.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from parity.attribute import Attribution, UnconfirmedCause, scheduler_text
from parity.families import SERVER_MODELS, family_of_model
from parity.job import Checkpoint, Job
from parity.plan.sides import checkpoint_loras, schedule_fields
from parity.server import (
    FPS_BOUNDS,
    FRAMES_BOUNDS,
    GUIDANCE_BOUNDS,
    LORA_SCALE_BOUNDS,
    SIZE_BOUNDS,
    InferenceRequest,
    LoraItem,
    PromptItem,
    clamp,
    request_number,
)
from parity.settings import Cause, RenderSettings, SchedulerConfig

#: The folder of a run's corrected requests: ``<step>.json`` indexes, ``<step>/<k>.json``.
CORRECTED_DIR = "corrected_requests"


@dataclass(frozen=True)
class PlacedPrompt:
    """A prompt of a corrected request: its file (relative to ``corrected_requests/``)
    and its position in the request's prompts."""

    file: str
    prompt: int

    def to_json(self) -> dict[str, Any]:
        return {"file": self.file, "prompt": self.prompt}

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> PlacedPrompt:
        return cls(file=str(d["file"]), prompt=int(d["prompt"]))


@dataclass(frozen=True)
class CorrectedIndex:
    """The record of ``corrected_requests/<step>.json``: per preview index, the prompt
    that reproduces it (``placement``), or why none does (``cannot_reproduce``) and the
    request holding its closest prompt (``closest``).

    Written from :meth:`CorrectedRequests.index`; read back with :meth:`read` and
    :meth:`read_all` (the report reads it so).
    """

    step: int
    placement: Mapping[int, PlacedPrompt] = field(default_factory=dict)
    cannot_reproduce: Mapping[int, tuple[str, ...]] = field(default_factory=dict)
    closest: Mapping[int, PlacedPrompt] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """The index file's object (keys in this order; preview indices as strings)."""
        return {
            "step": self.step,
            "placement": {str(i): p.to_json() for i, p in sorted(self.placement.items())},
            "cannot_reproduce": {
                str(i): list(reasons) for i, reasons in sorted(self.cannot_reproduce.items())
            },
            # Per preview no request reproduces: the request holding its closest prompt.
            "closest": {str(i): p.to_json() for i, p in sorted(self.closest.items())},
        }

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> CorrectedIndex:
        return cls(
            step=int(d["step"]),
            placement={int(i): PlacedPrompt.from_json(p) for i, p in d["placement"].items()},
            cannot_reproduce={
                int(i): tuple(str(r) for r in reasons)
                for i, reasons in d.get("cannot_reproduce", {}).items()
            },
            closest={int(i): PlacedPrompt.from_json(p) for i, p in d.get("closest", {}).items()},
        )

    @classmethod
    def read(cls, run_dir: str | os.PathLike[str], step: int) -> CorrectedIndex:
        """The index of ``step`` in run folder ``run_dir``.

        Raises
        ------
        ValueError
            The file is not such an index (the message names it).
        """
        path = Path(run_dir) / CORRECTED_DIR / f"{step}.json"
        try:
            return cls.from_json(json.loads(path.read_text(encoding="utf-8")))
        except (KeyError, TypeError, AttributeError, ValueError) as e:
            raise ValueError(f"{path}: not an index of corrected requests ({e})") from None

    @classmethod
    def read_all(cls, run_dir: str | os.PathLike[str]) -> dict[int, CorrectedIndex]:
        """Every step's index in run folder ``run_dir`` (none: an empty dict)."""
        folder = Path(run_dir) / CORRECTED_DIR
        steps = sorted(int(p.stem) for p in folder.glob("*.json") if p.stem.isdigit())
        return {step: cls.read(run_dir, step) for step in steps}


@dataclass
class CorrectedRequests:
    """Requests for one checkpoint plus the previews no request can reproduce.

    Written as ``corrected_requests/<step>/<k>.json`` (:meth:`request_files`: each one a
    plain request the server takes unchanged) and the index
    ``corrected_requests/<step>.json`` (:meth:`to_json_dict`). A request file holds either
    only prompts that reproduce their previews (``placement``) or only the closest
    prompts for previews no request reproduces (named in ``cannot``, with the file).
    """

    step: int
    requests: list[InferenceRequest] = field(default_factory=list)
    #: Per preview index: the request and prompt position that reproduce it.
    placement: dict[int, tuple[int, int]] = field(default_factory=dict)
    #: Per preview index no request reproduces: where its closest prompt was written.
    closest: dict[int, tuple[int, int]] = field(default_factory=dict)
    cannot: dict[int, list[str]] = field(default_factory=dict)

    def file(self, request: int) -> str:
        """Path of request ``request`` relative to ``corrected_requests/``."""
        return f"{self.step}/{request}.json"

    def request_files(self) -> dict[str, dict]:
        """``{"<step>/<k>.json": request body}`` for every request."""
        return {self.file(k): r.to_json_dict() for k, r in enumerate(self.requests)}

    def index(self) -> CorrectedIndex:
        """The index: where each preview is reproduced, or why it cannot be."""
        return CorrectedIndex(
            step=self.step,
            placement={i: PlacedPrompt(self.file(r), p) for i, (r, p) in self.placement.items()},
            cannot_reproduce={i: tuple(reasons) for i, reasons in self.cannot.items()},
            closest={i: PlacedPrompt(self.file(r), p) for i, (r, p) in self.closest.items()},
        )

    def to_json_dict(self) -> dict:
        """The index file's object (:meth:`CorrectedIndex.to_json`)."""
        return self.index().to_json()


def lora_items(
    checkpoint: Checkpoint,
    job: Job,
    lora_root: Path | None,
    scale: float | int,
    *,
    path: str | None = None,
) -> list[LoraItem]:
    """The request's LoRA items for ``checkpoint`` at ``scale``
    (:func:`parity.plan.sides.checkpoint_loras`), each file named relative to the LoRA
    root; ``path``: how the user's own request names a checkpoint of one file."""

    def name(file: Path) -> str:
        if path and checkpoint.path_2 is None:
            return path
        return request_lora_path(file, job, lora_root)

    return checkpoint_loras(checkpoint, scale, name)


def _num(x: float) -> float | int:
    # Rounded: max(0, g - 1) leaves float noise such as 3.0999999999999996.
    return request_number(round(float(x), 6))


def blockers(
    preview: RenderSettings,
    *,
    model: str,
    checkpoint_scheduler: SchedulerConfig | None,
    lora_not_applied: bool = False,
    server_dtype: str | None = None,
    rounded_checkpoint: str | None = None,
    server_diffusers: str | None = None,
) -> list[str]:
    """Reasons the server cannot reproduce ``preview`` with any request.

    ``rounded_checkpoint``: the dtype the step's checkpoint was saved in when that is a
    rounding of the training weights (``BF16``, ``F16``), else None.
    ``server_diffusers``: the server's diffusers release (``--server-diffusers``; None:
    the installed one), which the model's family places (:attr:`Family.server_era`).
    """
    reasons = []
    server_model = SERVER_MODELS[model]
    family = family_of_model(model)
    server_era = family.server_era(server_diffusers)
    div = server_model.resolution_divisor
    if preview.width % div or preview.height % div:
        reasons.append(
            f"{preview.width}x{preview.height} is not a multiple of {div}; the server "
            f"floors it to {preview.width // div * div}x{preview.height // div * div}"
        )
    server_scheduler = server_model.scheduler(checkpoint_scheduler)
    if server_scheduler is not None:
        # The preview with the server's scheduler, as the reference side builds it.
        served = preview.replace(**schedule_fields(server_scheduler, family.default_scheduler))
        if served.schedule != preview.schedule:
            reasons.append(
                f"the preview used {scheduler_text(preview)}; the server's {model} uses "
                f"{scheduler_text(served)} and a request cannot change it"
            )
    server_legacy = server_era is not None and server_era.legacy_sigmas
    if preview.sigmas is not None and not server_legacy:
        reasons.append(
            "the preview came from an ai-toolkit release whose diffusers made N-1 updates for "
            "N steps; the server's diffusers makes N"
        )
    if preview.sigmas is None and server_legacy:
        assert server_era is not None
        reasons.append(
            f"the preview's diffusers made N updates for N steps; the server's diffusers "
            f"{server_era.label} makes N-1 and a request cannot change it"
        )
    if server_era is not None and server_era.request_guidance(preview.pipeline_guidance) is None:
        reasons.append(
            f"the preview ran CFG with guidance {preview.pipeline_guidance:g}; the server's "
            f"diffusers {server_era.label} runs CFG only for g > {server_era.cfg_threshold:g}"
        )
    if preview.pipeline_guidance > GUIDANCE_BOUNDS[1]:
        reasons.append(
            f"guidance {preview.pipeline_guidance:g} exceeds the server's limit of "
            f"{GUIDANCE_BOUNDS[1]:g}"
        )
    if preview.adapter is not None:
        reasons.append(
            f"the preview came from a model with ai-toolkit's training adapter "
            f"{Path(preview.adapter.path).name} merged before quantization and run at "
            f"{preview.adapter.multiplier:g} beside it (Q(W + A) - A); the server loads W"
        )
    if preview.quantization.active:
        q = preview.quantization
        reasons.append(
            f"the preview came from a quantized model (transformer {q.qtype or 'full'}, text "
            f"encoder {q.qtype_te or 'full'}); the server never quantizes"
        )
    if preview.vae_tiling:
        reasons.append(
            f"the preview's VAE decoded its {preview.width}x{preview.height} image in tiles "
            "(ai-toolkit's low_vram); the server decodes it whole and a request cannot "
            "change it"
        )
    if rounded_checkpoint is not None:
        reasons.append(
            f"checkpoint saved in {rounded_checkpoint}; previews used the fp32 training "
            "weights, which the job folder does not hold"
        )
    if server_dtype is not None and preview.dtype != server_dtype:
        reasons.append(
            f"the preview was rendered in {preview.dtype}; the server renders in {server_dtype} "
            "on this device and a request cannot change it"
        )
    if lora_not_applied:
        reasons.append(
            "the server's LoRA loader matches no module of this LoRA file; re-save its keys as "
            f"{family.lora_key_format}"
        )
    low, high = LORA_SCALE_BOUNDS
    if preview.lora is not None and not low <= preview.lora.scale <= high:
        reasons.append(
            f"LoRA scale {preview.lora.scale:g} is outside the server's [{low:g}, {high:g}]"
        )
    return reasons


def closest_without_precision(attribution: Attribution | None) -> str | None:
    """How close the server's full-precision render gets with every other cause corrected.

    That is the "all but precision" counterfactual (with precision the only candidate,
    the reference render itself). None when it was not rendered.
    """
    record = attribution.left_out(Cause.PRECISION) if attribution is not None else None
    if record is None:
        return None
    return (
        f"closest the server gets: with every other setting corrected, its render reaches "
        f"SSIM {record.ssim:.4f}, PSNR {record.psnr:.1f} dB against the preview"
    )


def request_lora_path(file: Path, job: Job, lora_root: Path | None) -> str:
    """A checkpoint's file as a request names it: relative to the LoRA root (the server's
    workflows folder), ``<job name>/<file>`` when the job folder lies elsewhere."""
    root = Path(lora_root) if lora_root is not None else job.root.parent
    path = Path(file).resolve()
    try:
        return path.relative_to(root.resolve()).as_posix()
    except ValueError:
        return f"{job.name}/{path.name}"


def corrected_requests(
    job: Job,
    step: int,
    previews: Mapping[int, RenderSettings],
    *,
    attributions: Mapping[int, Attribution | None] | None = None,
    unconfirmed: Mapping[int, Sequence[UnconfirmedCause]] | None = None,
    lora_not_applied: bool = False,
    checkpoint_scheduler: SchedulerConfig | None = None,
    server_dtype: str | None = None,
    server_diffusers: str | None = None,
    lora_root: Path | None = None,
    lora_path: str | None = None,
) -> CorrectedRequests:
    """Requests that reproduce the previews of ``step`` (``previews``: index → settings).

    Every setting is explicit in the server's semantics (guidance as the server's
    diffusers must receive it, the preview's seed, steps and exact size), prompts are
    the sample's text without ``--flags`` (``[trigger]`` left for the server), one
    request per LoRA scale. ``lora_path`` is how the request names the LoRA (the user's
    own request's path for the step, where there is one); default: the step's checkpoint
    relative to ``lora_root``. ``attributions`` (index → the preview's attribution)
    add, to a preview no request can reproduce, how close the server gets, and
    ``unconfirmed`` (index → the causes its evidence did not confirm) what each of those
    does there: a request still sets every setting to the preview's, confirmed or not,
    and a blocker stays a blocker, but one whose effect is within the case's float noise
    may leave the closest request within noise of the preview.
    """
    attributions = attributions or {}
    unconfirmed = unconfirmed or {}
    server_era = family_of_model(job.reference_model).server_era(server_diffusers)
    checkpoint = job.checkpoint_for_step(step)
    out = CorrectedRequests(step=step)
    groups: dict[tuple[bool, float | None], list[tuple[int, PromptItem]]] = {}
    for index in sorted(previews):
        s = previews[index]
        reasons = blockers(
            s,
            model=job.reference_model,
            checkpoint_scheduler=checkpoint_scheduler,
            lora_not_applied=lora_not_applied and s.lora is not None,
            server_dtype=server_dtype,
            rounded_checkpoint=checkpoint.dtype if checkpoint and checkpoint.rounded else None,
            server_diffusers=server_diffusers,
        )
        closest = closest_without_precision(attributions.get(index))
        if reasons and closest is not None:
            reasons.append(closest)
        if reasons:
            reasons.extend(f"not confirmed here: {u.note}" for u in unconfirmed.get(index, ()))
        if reasons:
            out.cannot[index] = reasons
        sample = job.samples[index]
        guidance = s.pipeline_guidance
        if server_era is not None:
            wanted = server_era.request_guidance(guidance)
            guidance = wanted if wanted is not None else guidance
        item = PromptItem(
            prompt=sample.prompt_template,
            width=int(clamp(s.width, SIZE_BOUNDS)),
            height=int(clamp(s.height, SIZE_BOUNDS)),
            # The server passes guidance to diffusers unchanged.
            guidance_scale=clamp(_num(guidance), GUIDANCE_BOUNDS),
            sample_steps=s.steps,
            seed=s.seed,
            neg=s.negative_prompt,
            # A video's frames (already the pipeline's 4k + 1) and rate, as the preview's.
            num_frames=None if s.num_frames is None else int(clamp(s.num_frames, FRAMES_BOUNDS)),
            fps=None if s.fps is None else int(clamp(s.fps, FPS_BOUNDS)),
        )
        scale = s.lora.scale if s.lora is not None else None
        groups.setdefault((not reasons, scale), []).append((index, item))
    # Step 0 previews show the base model (the LoRA's B matrices are still zero). The
    # server needs exactly one LoRA file, so the earliest checkpoint at scale 0 stands in
    # for "no LoRA": the adapter then adds exactly nothing.
    stand_in = job.checkpoints[0] if checkpoint is None and job.checkpoints else None
    # Requests that reproduce come first, then those holding only closest prompts.
    for (reproduces, scale), items in sorted(
        groups.items(), key=lambda kv: (not kv[0][0], kv[1][0][0])
    ):
        loras = []
        if checkpoint is not None and scale is not None:
            loras = lora_items(
                checkpoint,
                job,
                lora_root,
                _num(clamp(scale, LORA_SCALE_BOUNDS)),
                path=lora_path,
            )
        elif stand_in is not None:
            loras = lora_items(stand_in, job, lora_root, 0)
        else:
            for index, _ in items:
                out.cannot.setdefault(index, []).append(
                    "the server requires one LoRA file and the job has no checkpoint to stand in"
                )
            continue
        request = InferenceRequest(
            model=job.reference_model,
            trigger_word=job.trigger_word,
            loras=loras,
            prompts=[item for _, item in items],
        )
        number = len(out.requests)
        for pos, (index, _) in enumerate(items):
            if reproduces:
                out.placement[index] = (number, pos)
            else:
                out.closest[index] = (number, pos)
                out.cannot[index].append(
                    f"closest request: {out.file(number)} prompt {pos} (every setting a "
                    "request can set is set to the preview's there)"
                )
        out.requests.append(request)
    return out
