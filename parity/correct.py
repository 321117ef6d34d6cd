"""The corrected request: what to send the server so it reproduces the previews.

Per checkpoint, prompts are grouped by LoRA scale (the server applies one scale per
request) and every setting is made explicit in the server's semantics: the guidance the
pipeline must receive, the preview's seed and steps, its exact size. Where no request
can reproduce a preview, the reason is given instead.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from parity.job import Job
from parity.request import (
    SERVER_MODELS,
    SERVER_SCHEDULER_SHIFT,
    InferenceRequest,
    LoraItem,
    PromptItem,
    request_number,
)
from parity.settings import RenderSettings

_DIVISOR = 32


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
) -> list[str]:
    """Reasons the server cannot reproduce ``preview`` with any request."""
    reasons = []
    if preview.width % _DIVISOR or preview.height % _DIVISOR:
        reasons.append(
            f"{preview.width}x{preview.height} is not a multiple of {_DIVISOR}; the server "
            f"floors it to {preview.width // _DIVISOR * _DIVISOR}x"
            f"{preview.height // _DIVISOR * _DIVISOR}"
        )
    server = SERVER_MODELS[model]
    server_shift = SERVER_SCHEDULER_SHIFT if server.replaces_scheduler else checkpoint_shift
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
    if preview.pipeline_guidance > 20:
        reasons.append(f"guidance {preview.pipeline_guidance:g} exceeds the server's limit of 20")
    if preview.quantization.active:
        q = preview.quantization
        reasons.append(
            f"the preview came from a quantized model (transformer {q.qtype or 'full'}, text "
            f"encoder {q.qtype_te or 'full'}); the server never quantizes"
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
    if preview.lora is not None and not -2 <= preview.lora.scale <= 2:
        reasons.append(f"LoRA scale {preview.lora.scale:g} is outside the server's [-2, 2]")
    return reasons


def corrected_requests(
    job: Job,
    step: int,
    previews: dict[int, RenderSettings],
    *,
    lora_not_applied: bool = False,
    checkpoint_shift: float | None = None,
    server_dtype: str | None = None,
) -> CorrectedRequests:
    """Requests that reproduce the previews of ``step`` (``previews``: index → settings)."""
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
        )
        if reasons:
            out.cannot[index] = reasons
        sample = job.samples[index]
        item = PromptItem(
            prompt=sample.prompt_template,
            width=max(64, s.width),
            height=max(64, s.height),
            # The server passes guidance to diffusers unchanged.
            guidance_scale=min(20.0, _num(s.pipeline_guidance)),
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
                    network_multiplier=_num(max(-2, min(2, scale))),
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
