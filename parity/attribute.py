"""Attribution: which causes make the reference render differ from the preview, proven.

Static differences between the two settings records are the candidate causes. Each is
a set of RenderSettings fields (:data:`CAUSE_FIELDS`). The proof:

1. Render the reference with *every* candidate switched to the preview's value. When
   that render matches the preview (within the thresholds, codec-matched), the
   explanation is complete; otherwise what remains is an unexplained residual, reported
   with its distance and never guessed at.
2. For each candidate, render with every candidate switched *except* that one
   (leave one out). The cause is confirmed when leaving it at the server's value moves
   the render away from the preview by a clear margin: the one-cause-reverted render is
   not a match and is farther by more than ``Thresholds.confirm_margin``.

With one candidate the leave-one-out render is the reference render itself, so a
mismatch costs at most (candidates + 1) extra renders, and a match costs none.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from parity.settings import CAUSES, LoraSettings, RenderSettings

#: RenderSettings fields each cause owns.
CAUSE_FIELDS: dict[str, tuple[str, ...]] = {
    "snapping": ("width", "height"),
    "cfg": ("pipeline_guidance",),
    "scheduler": ("scheduler_shift",),
    "steps": ("steps",),
    "library": ("sigmas",),
    "seed": ("seed", "generator"),
    "lora_scale": ("lora.scale", "lora.presence"),
    "lora_not_applied": ("lora.applier",),
    # Merging the LoRA into the weights is a precision matter: W + m*BA is rounded to the
    # weight dtype once, which in bf16 loses much of a small delta.
    "precision": ("dtype", "quantization", "lora.merged"),
    "prompt": ("prompt", "negative_prompt"),
}


def switch(
    base: RenderSettings, target: RenderSettings, causes: tuple[str, ...] | list[str]
) -> RenderSettings:
    """``base`` with the fields of ``causes`` taken from ``target``."""
    changes: dict[str, Any] = {}
    lora_fields: set[str] = set()
    for cause in causes:
        for name in CAUSE_FIELDS[cause]:
            if name.startswith("lora."):
                lora_fields.add(name[5:])
            else:
                changes[name] = getattr(target, name)
    if lora_fields:
        changes["lora"] = _switch_lora(base.lora, target.lora, lora_fields)
    return base.replace(**changes)


def _switch_lora(
    base: LoraSettings | None, target: LoraSettings | None, fields: set[str]
) -> LoraSettings | None:
    if "presence" in fields and (base is None or target is None):
        if target is None:
            return None
        base = LoraSettings(path=target.path, scale=target.scale, merged=False, applier="peft")
    if base is None or target is None:
        return base
    return LoraSettings(
        path=base.path,
        scale=target.scale if "scale" in fields else base.scale,
        merged=target.merged if "merged" in fields else base.merged,
        applier=target.applier if "applier" in fields else base.applier,
    )


@dataclass
class Evidence:
    """One counterfactual render and how close it came to the preview."""

    name: str  # "all", or the cause left out
    settings: RenderSettings
    comparison: Any
    distance: float
    match: bool
    image_path: str | None = None


@dataclass
class Attribution:
    candidates: tuple[str, ...]
    confirmed: tuple[str, ...]
    explained: bool
    all_switched: Evidence | None
    left_out: list[Evidence] = field(default_factory=list)
    renders: int = 0


def attribute(
    *,
    reference: RenderSettings,
    preview: RenderSettings,
    candidates: tuple[str, ...],
    reference_evidence: Evidence,
    evaluate: Callable[[str, RenderSettings], Evidence],
    confirm_margin: float,
) -> Attribution:
    """Prove which ``candidates`` explain the gap between ``reference`` and ``preview``.

    Parameters
    ----------
    reference_evidence:
        The as-configured reference render, already compared (it is not re-rendered).
    evaluate:
        ``evaluate(name, settings)`` renders ``settings``, compares the render with the
        preview and returns the Evidence. Called at most ``len(candidates) + 1`` times.
    confirm_margin:
        Minimum increase of the distance (same unit as ``Evidence.distance``) for a
        cause to count as confirmed.
    """
    candidates = tuple(c for c in CAUSES if c in candidates)
    if not candidates:
        return Attribution((), (), False, None, [], 0)
    renders = 0
    all_settings = switch(reference, preview, candidates)
    all_ev = evaluate("all", all_settings)
    renders += 1
    left_out: list[Evidence] = []
    confirmed: list[str] = []
    for cause in candidates:
        rest = tuple(c for c in candidates if c != cause)
        if not rest:
            ev = reference_evidence
            ev = Evidence(cause, ev.settings, ev.comparison, ev.distance, ev.match, ev.image_path)
        else:
            ev = evaluate(cause, switch(reference, preview, rest))
            renders += 1
        left_out.append(ev)
        if not ev.match and ev.distance > all_ev.distance + confirm_margin:
            confirmed.append(cause)
    return Attribution(
        candidates=candidates,
        confirmed=tuple(confirmed),
        explained=all_ev.match,
        all_switched=all_ev,
        left_out=left_out,
        renders=renders,
    )
