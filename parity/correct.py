"""The corrected request: what to send the server so it reproduces the previews.

Per checkpoint, prompts are grouped by LoRA scale (the server applies one scale per
request) and every setting is made explicit in the server's semantics: the guidance the
pipeline must receive, the preview's seed and steps, its exact size. Where no request
can reproduce a preview, the reason is given instead.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from parity.attribute import Attribution
from parity.job import Job
from parity.server import (
    GUIDANCE_BOUNDS,
    LORA_SCALE_BOUNDS,
    RESOLUTION_DIVISOR,
    SERVER_MODELS,
    SIZE_BOUNDS,
    InferenceRequest,
    LoraItem,
    PromptItem,
    clamp,
    request_number,
)
from parity.settings import Cause, RenderSettings


@dataclass
class CorrectedRequests:
    """Requests for one checkpoint plus the previews no request can reproduce."""

    step: int
    requests: list[InferenceRequest] = field(default_factory=list)
    #: Per preview index: the request and prompt position that reproduce it.
    placement: dict[int, tuple[int, int]] = field(default_factory=dict)
    cannot: dict[int, list[str]] = field(default_factory=dict)

    def to_json_dict(self) -> dict:
        return {
            "step": self.step,
            "requests": [r.to_json_dict() for r in self.requests],
            "placement": {
                str(i): {"request": r, "prompt": p} for i, (r, p) in sorted(self.placement.items())
            },
            "cannot_reproduce": {str(i): reasons for i, reasons in sorted(self.cannot.items())},
        }


def _num(x: float) -> float | int:
    # Rounded: max(0, g - 1) leaves float noise such as 3.0999999999999996.
    return request_number(round(float(x), 6))


def blockers(
    preview: RenderSettings,
    *,
    model: str,
    checkpoint_shift: float | None,
    lora_not_applied: bool = False,
    server_dtype: str | None = None,
    rounded_checkpoint: str | None = None,
) -> list[str]:
    """Reasons the server cannot reproduce ``preview`` with any request.

    ``rounded_checkpoint``: the dtype the step's checkpoint was saved in when that is a
    rounding of the training weights (``BF16``, ``F16``), else None.
    """
    reasons = []
    div = RESOLUTION_DIVISOR
    if preview.width % div or preview.height % div:
        reasons.append(
            f"{preview.width}x{preview.height} is not a multiple of {div}; the server "
            f"floors it to {preview.width // div * div}x{preview.height // div * div}"
        )
    server_shift = SERVER_MODELS[model].scheduler_shift(checkpoint_shift)
    if server_shift is not None and server_shift != preview.scheduler_shift:
        reasons.append(
            f"the preview used scheduler shift {preview.scheduler_shift:g}; the server's "
            f"{model} uses {server_shift:g} and a request cannot change it"
        )
    if preview.sigmas is not None:
        reasons.append(
            "the preview came from an ai-toolkit release whose diffusers made N-1 updates for "
            "N steps; the server's diffusers makes N"
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
            "'diffusion_model.<module>.lora_A.weight' / '.lora_B.weight'"
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


def corrected_requests(
    job: Job,
    step: int,
    previews: Mapping[int, RenderSettings],
    *,
    attributions: Mapping[int, Attribution | None] | None = None,
    lora_not_applied: bool = False,
    checkpoint_shift: float | None = None,
    server_dtype: str | None = None,
) -> CorrectedRequests:
    """Requests that reproduce the previews of ``step`` (``previews``: index → settings).

    ``attributions`` (index → the preview's attribution, where one was made) add, to a
    preview no request can reproduce exactly, how close the server gets.
    """
    attributions = attributions or {}
    checkpoint = job.checkpoint_for_step(step)
    out = CorrectedRequests(step=step)
    groups: dict[float | None, list[tuple[int, PromptItem]]] = {}
    for index in sorted(previews):
        s = previews[index]
        reasons = blockers(
            s,
            model=job.reference_model,
            checkpoint_shift=checkpoint_shift,
            lora_not_applied=lora_not_applied and s.lora is not None,
            server_dtype=server_dtype,
            rounded_checkpoint=checkpoint.dtype if checkpoint and checkpoint.rounded else None,
        )
        closest = closest_without_precision(attributions.get(index))
        if reasons and closest is not None:
            reasons.append(closest)
        if reasons:
            out.cannot[index] = reasons
        sample = job.samples[index]
        item = PromptItem(
            prompt=sample.prompt_template,
            width=int(clamp(s.width, SIZE_BOUNDS)),
            height=int(clamp(s.height, SIZE_BOUNDS)),
            # The server passes guidance to diffusers unchanged.
            guidance_scale=clamp(_num(s.pipeline_guidance), GUIDANCE_BOUNDS),
            sample_steps=s.steps,
            seed=s.seed,
            neg=s.negative_prompt,
        )
        scale = s.lora.scale if s.lora is not None else None
        groups.setdefault(scale, []).append((index, item))
    # Step 0 previews show the base model (the LoRA's B matrices are still zero). The
    # server needs exactly one LoRA file, so the earliest checkpoint at scale 0 stands in
    # for "no LoRA": the adapter then adds exactly nothing.
    stand_in = job.checkpoints[0] if checkpoint is None and job.checkpoints else None
    for scale, items in groups.items():
        loras = []
        if checkpoint is not None and scale is not None:
            loras.append(
                LoraItem(
                    path=Path(checkpoint.path).name,
                    network_multiplier=_num(clamp(scale, LORA_SCALE_BOUNDS)),
                )
            )
        elif stand_in is not None:
            loras.append(LoraItem(path=Path(stand_in.path).name, network_multiplier=0))
        else:
            for index, _ in items:
                out.cannot.setdefault(index, []).append(
                    "the server requires one LoRA file and the job has no checkpoint to stand in"
                )
        request = InferenceRequest(
            model=job.reference_model,
            trigger_word=job.trigger_word,
            loras=loras,
            prompts=[item for _, item in items],
        )
        for pos, (index, _) in enumerate(items):
            out.placement[index] = (len(out.requests), pos)
        out.requests.append(request)
    return out
