"""Attribution: which causes make the reference render differ from the preview, proven.

Static differences between the two settings records are the candidate causes. Each owns
fields of :class:`RenderSettings` (:data:`CAUSE_FIELDS`). The proof:

1. Render the reference with *every* candidate switched to the preview's value. When
   that render matches the preview (within the thresholds, codec-matched), the
   explanation is complete; otherwise what remains is an unexplained residual, reported
   with its distance and never guessed at.
2. For each candidate, render with every candidate switched *except* that one
   (leave one out). When the explanation is complete, a candidate is a cause exactly
   when its leave-one-out render is not a match: the preview cannot be had without
   changing it, so a corrected request must change it too. When it is not complete
   (nothing matches), a candidate is a cause when leaving it out moves the render away
   from the preview by more than a margin (``confirm_margin``, in ``1 - SSIM``).

With one candidate the leave-one-out render is the reference render itself, so a
mismatch costs at most (candidates + 1) extra renders, and a match costs none.

No difference is dropped: a candidate the leave-one-out evidence cannot confirm is still
a cause of the row, listed as an :class:`UnconfirmedCause` with what it does to the
render (its leave-one-out render against the all-switched one) next to the case's noise
floor, usually because its effect is within float noise.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from parity.settings import (
    CAUSES,
    FLOW_MATCH_EULER,
    Cause,
    LoraApplier,
    LoraSettings,
    RenderSettings,
    legacy_sigmas,
)

#: RenderSettings fields each cause owns; ``lora.<field>`` is a field of the LoRA.
#: Switching a LoRA field where one side has no LoRA at all moves the LoRA itself with
#: ``lora.scale`` (no LoRA acts as scale 0); the other causes then leave it alone.
CAUSE_FIELDS: dict[Cause, tuple[str, ...]] = {
    Cause.SNAPPING: ("width", "height"),
    Cause.FRAMES: ("num_frames",),
    # The rate changes no pixel; its counterfactual is proven by the frame durations the
    # render would be written with (parity.compare scores them with the frames).
    Cause.FPS: ("fps",),
    Cause.CFG: ("pipeline_guidance",),
    Cause.SCHEDULER: ("scheduler_shift", "dynamic_shift", "scheduler_class", "scheduler_options"),
    Cause.STEPS: ("steps",),
    Cause.LIBRARY: ("sigmas",),
    Cause.SEED: ("seed", "generator"),
    Cause.LORA_SCALE: ("lora.scale",),
    Cause.LORA_NOT_APPLIED: ("lora.applier",),
    # Merging the LoRA into the weights is a precision matter: W + m*BA is rounded to the
    # weight dtype once, which in bf16 loses much of a small delta. So is the training
    # adapter, merged before quantization and run beside the weights at -1.
    # Below float32 the applier is one too: ai-toolkit's network runs the LoRA in float32,
    # a PEFT adapter in the model's dtype.
    Cause.PRECISION: (
        "dtype",
        "quantization",
        "text_encoder_cast",
        "adapter",
        "lora.merged",
        "lora.applier",
        "lora.rounding_seed",
    ),
    Cause.VAE_TILING: ("vae_tiling",),
    Cause.PROMPT: ("prompt", "negative_prompt"),
}

#: Name of the counterfactual with every candidate switched.
ALL = "all"
#: Name prefix of the all-switched renders with the LoRA moved within its saved rounding.
ROUNDING = "rounding_"


def switch(base: RenderSettings, target: RenderSettings, causes: Sequence[Cause]) -> RenderSettings:
    """``base`` with the fields of ``causes`` taken from ``target``."""
    changes: dict[str, Any] = {}
    lora_fields: set[str] = set()
    for cause in causes:
        for name in CAUSE_FIELDS[cause]:
            owner, _, field_name = name.partition(".")
            if field_name:
                lora_fields.add(field_name)
            else:
                changes[owner] = getattr(target, owner)
    if lora_fields:  # a LoRA pair's two files are applied alike
        changes["lora"] = _switch_lora(base.lora, target.lora, lora_fields)
        changes["lora_2"] = _switch_lora(base.lora_2, target.lora_2, lora_fields)
    result = base.replace(**changes)
    # ``library`` owns the era (N-1 or N updates), ``steps`` the number of steps: a legacy
    # schedule is rebuilt for the render's steps, so that switching one leaves the other.
    era_owner = target if Cause.LIBRARY in causes else base
    if era_owner.sigmas is not None and era_owner.sigmas == legacy_sigmas(era_owner.steps):
        result = result.replace(sigmas=legacy_sigmas(result.steps))
    return result


def _switch_lora(
    base: LoraSettings | None, target: LoraSettings | None, fields: set[str]
) -> LoraSettings | None:
    if base is None or target is None:
        if "scale" not in fields:
            return base
        if target is None:
            return None
        # The preview's LoRA, applied the way the base side applies LoRAs.
        return dataclasses.replace(target, merged=False, applier=LoraApplier.PEFT)
    return dataclasses.replace(base, **{name: getattr(target, name) for name in fields})


@dataclass(frozen=True)
class Counterfactual:
    """One render with some causes switched to the preview's values, and how close it came.

    Attributes
    ----------
    name:
        :data:`ALL`, or the cause left out (kept at the server's value).
    switched:
        The causes set to the preview's value.
    settings:
        What was rendered.
    ssim, psnr, latent_distance:
        Scores against the preview (:func:`parity.compare.compare`; PSNR in dB;
        latent distance None without the latent metric).
    match:
        Whether the scores pass the match thresholds.
    image:
        The render, relative to the run folder (None when not saved).
    confirmed:
        For a leave-one-out counterfactual: its cause is confirmed.
    """

    name: str
    switched: tuple[Cause, ...]
    settings: RenderSettings
    ssim: float
    psnr: float
    latent_distance: float | None
    match: bool
    image: str | None = None
    confirmed: bool = False

    @property
    def distance(self) -> float:
        """``1 - ssim``: lower is closer, 0 for a pixel-exact reproduction."""
        return 1.0 - self.ssim

    @property
    def leaves_out_a_cause(self) -> bool:
        """An "all but <cause>" render: it confirms its cause or not."""
        return self.name != ALL and not self.name.startswith(ROUNDING)

    @property
    def kind(self) -> str:
        if self.name == ALL:
            return "all causes switched"
        if self.name.startswith(ROUNDING):
            return "all causes switched, the LoRA moved within its saved rounding"
        return "all but this cause"

    @property
    def label(self) -> str:
        """A short name for tables: "all causes switched", "all but cfg"..."""
        if self.name.startswith(ROUNDING):
            return f"all switched, LoRA within its rounding ({self.name[len(ROUNDING) :]})"
        return self.kind if not self.leaves_out_a_cause else f"all but {self.name}"

    def to_json(self) -> dict[str, Any]:
        return {
            "cause": self.name,
            "kind": self.kind,
            "switched": [str(c) for c in self.switched],
            "image": self.image,
            "ssim": self.ssim,
            "psnr": self.psnr,
            "latent_distance": self.latent_distance,
            "match": self.match,
            "confirmed": self.confirmed,
            "settings": self.settings.to_dict(),
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Counterfactual:
        return cls(
            name=str(d["cause"]),
            switched=tuple(Cause(c) for c in d.get("switched", ())),
            settings=RenderSettings.from_dict(d["settings"]),
            ssim=float(d["ssim"]),
            psnr=float(d["psnr"]),
            latent_distance=d.get("latent_distance"),
            match=bool(d["match"]),
            image=d.get("image"),
            confirmed=bool(d.get("confirmed", False)),
        )


@dataclass(frozen=True)
class Attribution:
    """The proof for one mismatched preview.

    Attributes
    ----------
    candidates:
        Static differences, in :data:`CAUSES` order.
    confirmed:
        The causes (see the module docstring for the rule).
    explained:
        The all-switched render matches the preview.
    counterfactuals:
        The all-switched render first, then one leave-one-out render per candidate.
    renders:
        Extra renders made (at most ``len(candidates) + 1``).
    """

    candidates: tuple[Cause, ...]
    confirmed: tuple[Cause, ...]
    explained: bool
    counterfactuals: tuple[Counterfactual, ...]
    renders: int

    @property
    def all_switched(self) -> Counterfactual | None:
        return self.counterfactuals[0] if self.counterfactuals else None

    def left_out(self, cause: Cause) -> Counterfactual | None:
        """The counterfactual that kept ``cause`` at the server's value."""
        return next((c for c in self.counterfactuals if c.name == cause), None)


@dataclass(frozen=True)
class Planned:
    """A counterfactual to render: its name, the causes it switches, its settings."""

    name: str
    switched: tuple[Cause, ...]
    settings: RenderSettings


#: Renders and scores planned counterfactuals in one batch, in order.
EvaluateMany = Callable[[Sequence[Planned]], Sequence[Counterfactual]]


def plan(
    reference: RenderSettings, preview: RenderSettings, candidates: Sequence[Cause]
) -> tuple[Planned, ...]:
    """The renders that prove which ``candidates`` explain a mismatch: everything
    switched, then each candidate left out (a single candidate's leave-one-out is the
    reference render itself, so it is not planned)."""
    ordered = tuple(c for c in CAUSES if c in candidates)
    if not ordered:
        return ()
    planned = [Planned(ALL, ordered, switch(reference, preview, ordered))]
    if len(ordered) > 1:
        for cause in ordered:
            rest = tuple(c for c in ordered if c != cause)
            planned.append(Planned(str(cause), rest, switch(reference, preview, rest)))
    return tuple(planned)


def attribute(
    *,
    reference: RenderSettings,
    preview: RenderSettings,
    candidates: Sequence[Cause],
    reference_render: Counterfactual,
    evaluate: EvaluateMany,
    confirm_margin: float,
) -> Attribution:
    """Prove which ``candidates`` explain the gap between ``reference`` and ``preview``.

    Parameters
    ----------
    reference_render:
        The reference render, already compared (it is not rendered again): the
        leave-one-out render of a single candidate.
    evaluate:
        Renders the :func:`plan`ned counterfactuals, compares each with the preview and
        returns their records, in order: at most ``len(candidates) + 1`` renders, scored
        in one batch.
    confirm_margin:
        Without a complete explanation: minimum increase of ``1 - SSIM`` for a cause.
    """
    planned = plan(reference, preview, candidates)
    if not planned:
        return Attribution((), (), False, (), 0)
    everything, *others = evaluate(planned)
    ordered = planned[0].switched
    if not others:  # one candidate: leaving it out is the reference render
        others = [dataclasses.replace(reference_render, name=str(ordered[0]), switched=())]
    left_out = []
    for record in others:
        if everything.match:
            confirmed = not record.match
        else:
            confirmed = record.distance > everything.distance + confirm_margin
        left_out.append(dataclasses.replace(record, confirmed=confirmed))
    return Attribution(
        candidates=ordered,
        confirmed=tuple(Cause(c.name) for c in left_out if c.confirmed),
        explained=everything.match,
        counterfactuals=(everything, *left_out),
        renders=len(planned),
    )


@dataclass(frozen=True)
class UnconfirmedCause:
    """A candidate cause its leave-one-out render could not confirm, with its effect.

    Attributes
    ----------
    cause:
        The candidate.
    effect_max_abs_diff, effect_mean_abs_diff:
        Its leave-one-out render against the all-switched render: largest and mean
        per-channel difference, levels of 255, lossless.
    within_noise:
        That effect is within the case's noise allowance (the float-noise levels, or
        :data:`~parity.compare.NOISE_FLOOR_K` times the case's noise floor).
    note:
        One sentence: the difference, its effect and the floor, and why it is not
        confirmed.
    """

    cause: Cause
    effect_max_abs_diff: int
    effect_mean_abs_diff: float
    within_noise: bool
    note: str

    def to_json(self) -> dict[str, Any]:
        return {
            "cause": str(self.cause),
            "effect_max_abs_diff": self.effect_max_abs_diff,
            "effect_mean_abs_diff": self.effect_mean_abs_diff,
            "within_noise": self.within_noise,
            "note": self.note,
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> UnconfirmedCause:
        return cls(
            cause=Cause(d["cause"]),
            effect_max_abs_diff=int(d["effect_max_abs_diff"]),
            effect_mean_abs_diff=float(d["effect_mean_abs_diff"]),
            within_noise=bool(d["within_noise"]),
            note=str(d.get("note", "")),
        )


def describe_difference(cause: Cause, reference: RenderSettings, preview: RenderSettings) -> str:
    """How the two sides differ in ``cause``'s settings, in a few words.

    Parameters
    ----------
    cause:
        A candidate cause.
    reference, preview:
        The server's and the preview's settings.

    Returns
    -------
    str
        e.g. ``"the preview is bfloat16 (transformer qfloat8, text encoder qfloat8), the
        server float32"`` or ``"the preview's diffusers got guidance 3, the server's 4"``.
    """
    p, r = preview, reference
    if cause is Cause.PRECISION:
        return f"the preview is {_numerics(p)}, the server {_numerics(r)}"
    if cause is Cause.SNAPPING:
        return f"the preview is {p.width}x{p.height}, the server's {r.width}x{r.height}"
    if cause is Cause.FRAMES:
        return f"the preview has {p.num_frames} frames, the server's {r.num_frames}"
    if cause is Cause.FPS:
        return f"the preview plays at {p.fps} fps, the server's at {r.fps} fps"
    if cause is Cause.CFG:
        return (
            f"the preview's diffusers got guidance {p.pipeline_guidance:g}, "
            f"the server's {r.pipeline_guidance:g}"
        )
    if cause is Cause.SCHEDULER:
        return f"{scheduler_text(p)} in the preview, {scheduler_text(r)} on the server"
    if cause is Cause.STEPS:
        return f"{p.steps} steps in the preview, {r.steps} on the server"
    if cause is Cause.SEED:
        return f"seed {p.seed} in the preview, {r.seed} on the server"
    if cause is Cause.LORA_SCALE:
        return f"LoRA scale {_lora_scale(p)} in the preview, {_lora_scale(r)} on the server"
    if cause is Cause.LIBRARY:
        return (
            f"{_updates(p)} updates for {p.steps} steps in the preview, {_updates(r)} on the server"
        )
    if cause is Cause.LORA_NOT_APPLIED:
        return "the server's LoRA loader leaves modules of the LoRA file unapplied"
    if cause is Cause.VAE_TILING:
        return (
            f"the preview's VAE decoded {_tiling(p)}, the server's {_tiling(r)} "
            f"({p.width}x{p.height})"
        )
    return "the prompts differ"


def _tiling(s: RenderSettings) -> str:
    return "in tiles" if s.vae_tiling else "whole"


def scheduler_text(s: RenderSettings) -> str:
    """``scheduler shift 3``, ``dynamic shifting 0.5..1.15 over 256..4096 tokens``, with
    the class when it is not FlowMatch Euler and every other setting of the config
    (``shift_terminal 0.02``)."""
    d = s.dynamic_shift
    if s.scheduler_shift is None:  # a class without FlowMatch's shift (UniPC)
        text = s.scheduler_class
    elif d is None:
        text = f"scheduler shift {s.scheduler_shift:g}"
    else:
        text = (
            f"dynamic shifting {d.base_shift:g}..{d.max_shift:g} over "
            f"{d.base_image_seq_len}..{d.max_image_seq_len} tokens"
        )
    if s.scheduler_class != FLOW_MATCH_EULER and s.scheduler_shift is not None:
        text = f"{s.scheduler_class} {text}"
    extra = ", ".join(f"{key} {value}" for key, value in s.scheduler_options)
    return f"{text} ({extra})" if extra else text


def _numerics(s: RenderSettings) -> str:
    """A side's numerics: dtype, quantization, text-encoder cast, adapter, LoRA arithmetic."""
    parts = []
    if s.quantization.active:
        q = s.quantization
        parts.append(f"transformer {q.qtype or 'full'}, text encoder {q.qtype_te or 'full'}")
    if s.text_encoder_cast:
        parts.append("text encoder cast")
    if s.adapter is not None:
        parts.append("training adapter")
    if s.lora is not None and s.dtype != "float32":  # how a LoRA is attached rounds below fp32
        if s.lora.merged:
            parts.append("LoRA merged")
        elif s.lora.applier is LoraApplier.AITK:
            parts.append("LoRA beside the weights in float32")
        else:
            parts.append(f"LoRA as a PEFT adapter in {s.dtype}")
    return f"{s.dtype} ({', '.join(parts)})" if parts else s.dtype


def _lora_scale(s: RenderSettings) -> str:
    one = "none" if s.lora is None else f"{s.lora.scale:g}"
    if s.lora_2 is None or (s.lora is not None and s.lora_2.scale == s.lora.scale):
        return one
    return f"{one} (high noise) and {s.lora_2.scale:g} (low noise)"


def _updates(s: RenderSettings) -> str:
    return "N-1" if s.sigmas is not None else "N"
