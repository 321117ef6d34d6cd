"""The one record of what a render does.

Every render, preview-side or reference-side or any mix of the two, is described by
a single :class:`RenderSettings`. Renderers are thin functions from a sample to such a
record; counterfactuals are one-field changes of it (:func:`dataclasses.replace`).
Nothing else influences the pixels.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Literal

GeneratorKind = Literal["cpu", "global"]
Dtype = Literal["float32", "float16", "bfloat16"]


class Cause(StrEnum):
    """What makes a reference render differ from its preview; declared in report order.

    Each cause owns fields of :class:`RenderSettings` (see
    :data:`parity.attribute.CAUSE_FIELDS`); a counterfactual switches those fields.
    """

    SNAPPING = "snapping"  # width, height (Z-Image: floor to 16 in ai-toolkit, 32 on the server)
    FRAMES = "frames"  # a video's frame count
    FPS = "fps"  # a video's frame rate: how it plays, never its pixels
    CFG = "cfg"  # the guidance diffusers receives (Z-Image: CFG; FLUX.1: the guidance embedding)
    SCHEDULER = "scheduler"  # the scheduler's class or any setting of its config
    STEPS = "steps"
    SEED = "seed"
    LORA_SCALE = "lora_scale"  # LoRA multiplier, or a LoRA on one side only
    LORA_NOT_APPLIED = "lora_not_applied"  # keys the server's loader does not take
    PRECISION = "precision"  # dtype, quantization, merged LoRA, training adapter
    VAE_TILING = "vae_tiling"  # the VAE decoded in tiles on one side (ai-toolkit's low_vram)
    PROMPT = "prompt"  # text or negative text
    LIBRARY = "library"  # diffusers era: N-1 vs N updates for N steps


#: The causes in the order a report lists them.
CAUSES: tuple[Cause, ...] = tuple(Cause)


#: Default match thresholds (see :class:`parity.compare.Thresholds` for how they were
#: chosen), kept here so the command line can show them without importing numpy.
DEFAULT_SSIM_MIN = 0.98
DEFAULT_PSNR_MIN = 38.0  # dB
DEFAULT_LATENT_DISTANCE_MAX = 0.025
#: A cause is confirmed when reverting it alone raises 1 - SSIM by more than this.
DEFAULT_CONFIRM_MARGIN = 0.02


class LoraApplier(StrEnum):
    """How a LoRA is attached to the transformer."""

    #: diffusers ``load_lora_weights`` and a PEFT adapter scaled at run time (the
    #: server's way; keys its loader does not recognise are silently skipped).
    PEFT = "peft"
    #: ai-toolkit's own network, which matches module names itself.
    AITK = "aitk"


@dataclass(frozen=True)
class LoraSettings:
    """A LoRA as a render applies it.

    Attributes
    ----------
    path:
        Absolute path of the safetensors file.
    scale:
        Multiplier on the LoRA delta (ai-toolkit's ``network_multiplier``; the server's
        adapter weight).
    merged:
        True when the delta is merged into the base weights before rendering
        (ai-toolkit does this when every sample item shares one multiplier and the model
        is not quantized); False when it runs beside the base weights.
    applier:
        How it is attached (:class:`LoraApplier`).
    rounding_seed:
        None: the file's values. A seed: every value moved uniformly within its own
        rounding (a bf16 or fp16 file stands for any float32 value that rounds to it), to
        measure how much the rounding of a saved checkpoint can move a render
        (ai-toolkit's applier only).
    """

    path: str
    scale: float = 1.0
    merged: bool = False
    applier: LoraApplier = LoraApplier.PEFT
    rounding_seed: int | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "applier", LoraApplier(self.applier))  # "peft" -> PEFT


@dataclass(frozen=True)
class TrainingAdapter:
    """ai-toolkit's training adapter (``model.assistant_lora_path``) as a preview saw it.

    ai-toolkit merges the adapter into the base weights at +1 in the compute dtype before
    it quantizes them, then runs it beside them at ``multiplier`` (-1) while sampling, so a
    preview shows ``Q(W + A) - A`` plus the LoRA. The server renders ``W`` plus the LoRA.

    Attributes
    ----------
    path:
        Absolute path of the adapter's safetensors file.
    multiplier:
        The adapter's multiplier while sampling.
    """

    path: str
    multiplier: float = -1.0


@dataclass(frozen=True)
class Quantization:
    """Weight quantization of the preview side (ai-toolkit ``model.quantize``).

    ``qtype`` is ai-toolkit's name (``qfloat8``, ``qint8``, ``qint4``, ...) or None for
    full precision; ``qtype_te`` likewise for the text encoder.
    """

    qtype: str | None = None
    qtype_te: str | None = None

    @property
    def active(self) -> bool:
        return self.qtype is not None or self.qtype_te is not None


@dataclass(frozen=True)
class DynamicShift:
    """FlowMatch dynamic shifting (diffusers ``use_dynamic_shifting``).

    The shift is not fixed: ``mu`` is interpolated linearly in the packed image's token
    count ``(height / 16) * (width / 16)`` from ``base_shift`` at ``base_image_seq_len``
    tokens to ``max_shift`` at ``max_image_seq_len``, and each sigma ``t`` becomes
    ``exp(mu) / (exp(mu) + (1 / t - 1))`` (the ``exponential`` time shift; other time
    shifts and a ``shift_terminal`` are :attr:`SchedulerConfig.options`).
    """

    base_shift: float = 0.5
    max_shift: float = 1.15
    base_image_seq_len: int = 256
    max_image_seq_len: int = 4096


#: The scheduler class every family parity knows samples with.
FLOW_MATCH_EULER = "FlowMatchEulerDiscreteScheduler"

#: Keys of a scheduler config that are not settings of the scheduler.
_BOOKKEEPING_KEYS = ("_class_name", "_diffusers_version", "_name_or_path")
#: Keys :class:`SchedulerConfig` holds as fields of their own.
_DYNAMIC_KEYS = ("base_shift", "max_shift", "base_image_seq_len", "max_image_seq_len")
_FIELD_KEYS = ("shift", "use_dynamic_shifting", *_DYNAMIC_KEYS)

#: The constructor defaults of each scheduler class (diffusers 0.42.1), for the keys that
#: are not fields of :class:`SchedulerConfig`: a config key at its default changes nothing,
#: so it is not kept, and two configs that differ only in spelling out defaults are equal.
SCHEDULER_DEFAULTS: dict[str, dict[str, Any]] = {
    FLOW_MATCH_EULER: {
        "num_train_timesteps": 1000,
        "invert_sigmas": False,
        "shift_terminal": None,
        "use_karras_sigmas": False,
        "use_exponential_sigmas": False,
        "use_beta_sigmas": False,
        "time_shift_type": "exponential",
        "stochastic_sampling": False,
    },
    "UniPCMultistepScheduler": {
        "num_train_timesteps": 1000,
        "beta_start": 0.0001,
        "beta_end": 0.02,
        "beta_schedule": "linear",
        "trained_betas": None,
        "solver_order": 2,
        "prediction_type": "epsilon",
        "thresholding": False,
        "dynamic_thresholding_ratio": 0.995,
        "sample_max_value": 1.0,
        "predict_x0": True,
        "solver_type": "bh2",
        "lower_order_final": True,
        "disable_corrector": (),
        "solver_p": None,
        "use_karras_sigmas": False,
        "use_exponential_sigmas": False,
        "use_beta_sigmas": False,
        "use_flow_sigmas": False,
        "flow_shift": 1.0,
        "timestep_spacing": "linspace",
        "steps_offset": 0,
        "final_sigmas_type": "zero",
        "rescale_betas_zero_snr": False,
        "time_shift_type": "exponential",
        "sigma_min": None,
        "sigma_max": None,
        "shift_terminal": None,
    },
}


def _frozen(value: Any) -> Any:
    """A JSON value made hashable (lists become tuples)."""
    if isinstance(value, list | tuple):
        return tuple(_frozen(v) for v in value)
    return value


@dataclass(frozen=True)
class SchedulerConfig:
    """A scheduler as a checkpoint ships it (``scheduler/scheduler_config.json``) or a
    side samples with: its class and every setting of its config.

    Attributes
    ----------
    class_name:
        The diffusers scheduler class.
    shift:
        FlowMatch ``shift``; None when the config has none.
    dynamic_shift:
        The dynamic shifting, or None when the config does not use it.
    options:
        Every other key whose value is not the class's default
        (:data:`SCHEDULER_DEFAULTS`), as sorted ``(key, value)`` pairs: Qwen-Image's
        ``shift_terminal``, a time-shift type, Karras sigmas... Nothing of a config is
        dropped unless it equals the default.
    """

    shift: float | None = None
    dynamic_shift: DynamicShift | None = None
    class_name: str = FLOW_MATCH_EULER
    options: tuple[tuple[str, Any], ...] = ()

    @classmethod
    def from_config(cls, config: Any) -> SchedulerConfig:
        """The scheduler a config describes (the parsed ``scheduler_config.json``, or a
        loaded scheduler's ``config``); absent dynamic shifting numbers take diffusers'
        defaults, every other key is kept unless it is at the class's default.

        Raises
        ------
        ValueError, TypeError
            A value that is not a number.
        """
        class_name = str(config.get("_class_name") or FLOW_MATCH_EULER)
        shift = config.get("shift")
        dynamic = None
        if config.get("use_dynamic_shifting"):
            defaults = DynamicShift()
            dynamic = DynamicShift(
                base_shift=float(config.get("base_shift", defaults.base_shift)),
                max_shift=float(config.get("max_shift", defaults.max_shift)),
                base_image_seq_len=int(
                    config.get("base_image_seq_len", defaults.base_image_seq_len)
                ),
                max_image_seq_len=int(config.get("max_image_seq_len", defaults.max_image_seq_len)),
            )
        return cls(
            shift=float(shift) if isinstance(shift, int | float) else None,
            dynamic_shift=dynamic,
            class_name=class_name,
            options=scheduler_options(class_name, config),
        )

    def build(self) -> Any:
        """The diffusers scheduler this describes (imports diffusers)."""
        import diffusers

        return getattr(diffusers, self.class_name)(**self.kwargs())

    def kwargs(self) -> dict[str, Any]:
        """The keyword arguments that build this scheduler with its diffusers class."""
        kwargs: dict[str, Any] = dict(self.options)
        if self.shift is not None:
            kwargs["shift"] = self.shift
        kwargs["use_dynamic_shifting"] = self.dynamic_shift is not None
        if self.dynamic_shift is not None:
            kwargs.update(dataclasses.asdict(self.dynamic_shift))
        return kwargs


def scheduler_options(class_name: str, config: Any) -> tuple[tuple[str, Any], ...]:
    """The keys of a scheduler ``config`` that :class:`SchedulerConfig` keeps as
    ``options``: every setting but its own fields, unless at ``class_name``'s default."""
    defaults = SCHEDULER_DEFAULTS.get(class_name, {})
    kept = {}
    for key, value in config.items():
        if key in _BOOKKEEPING_KEYS or key in _FIELD_KEYS:
            continue
        if key in defaults and _frozen(value) == _frozen(defaults[key]):
            continue
        kept[str(key)] = _frozen(value)
    return tuple(sorted(kept.items()))


@dataclass(frozen=True)
class RenderSettings:
    """Everything that decides the pixels of one render.

    Attributes
    ----------
    prompt, negative_prompt:
        Text given to the text encoder (trigger already substituted).
    width, height:
        Pixel size handed to the pipeline (already snapped by the side's rule).
    family:
        The model family's name (:mod:`parity.families`): which diffusers pipeline renders
        and what its guidance means.
    pipeline_guidance:
        The guidance given to the family's installed diffusers pipeline; the family's
        pipeline adapter says which argument it is and what it means (CFG's scale, a
        guidance embedding's value, true CFG's scale).
    steps:
        ``num_inference_steps``.
    sigmas:
        Explicit sigma schedule (before the scheduler's shift) or None for the
        pipeline's default ``linspace(1, 1/N, N)``. Old ai-toolkit eras used
        ``linspace(1, 0, N)``, whose last step has zero length.
    scheduler_shift:
        ``shift`` of the FlowMatchEulerDiscreteScheduler (unused with dynamic shifting);
        None for a scheduler class without one (UniPC's shift is its ``flow_shift``
        option).
    dynamic_shift:
        The scheduler's dynamic shifting, or None for the fixed ``shift``.
    scheduler_class, scheduler_options:
        The diffusers scheduler class, and every other setting of its config that is not
        at the class's default (:class:`SchedulerConfig`), as sorted ``(key, value)``
        pairs.
    seed, generator:
        Seed and how it was applied: ``"cpu"`` a fresh ``torch.Generator("cpu")`` (the
        server), ``"global"`` ``torch.manual_seed`` (ai-toolkit). Both draw the same
        numbers on CPU; the field records provenance.
    lora:
        The LoRA, or None for the base model alone.
    dtype:
        Compute dtype of the pipeline.
    quantization:
        Weight quantization (preview side only; the server never quantizes).
    text_encoder_cast:
        The whole text encoder (FLUX.1: both) was cast to ``dtype`` after loading, as ai-toolkit does
        (``text_encoder.to(device, dtype=...)``), which also rounds its rotary
        ``inv_freq`` buffers; loading with ``torch_dtype`` alone (the server) keeps those in
        float32. For a family whose loader casts its transformers the same way
        (:attr:`parity.family.Family.transformer_cast`: Wan), they are cast too. Only
        meaningful below float32.
    adapter:
        ai-toolkit's training adapter (preview side of Turbo jobs), or None.
    vae_tiling:
        The VAE decodes in overlapping tiles (diffusers ``vae.enable_tiling()``), as
        ai-toolkit's ``low_vram`` makes some families do; the server never tiles. Tiling
        only acts on images larger than the VAE's tile.
    num_frames:
        Frames of a video family's render (``num_frames`` of its pipeline, already
        rounded by the pipeline's own rule); None for an image family.
    fps:
        Frames per second the video is written with: how it plays, never its pixels;
        None for an image family.
    lora_2:
        A two-expert video model's second LoRA file (Wan 2.2 14B: the low-noise expert's,
        applied to ``transformer_2``), at ``lora``'s scale and in its way; None for a
        model with one transformer or when the pair has no second file.
    """

    prompt: str
    negative_prompt: str
    width: int
    height: int
    pipeline_guidance: float
    steps: int
    seed: int
    family: str
    scheduler_shift: float | None = 3.0
    dynamic_shift: DynamicShift | None = None
    scheduler_class: str = FLOW_MATCH_EULER
    scheduler_options: tuple[tuple[str, Any], ...] = ()
    sigmas: tuple[float, ...] | None = None
    generator: GeneratorKind = "cpu"
    lora: LoraSettings | None = None
    dtype: Dtype = "float32"
    quantization: Quantization = field(default_factory=Quantization)
    text_encoder_cast: bool = False
    adapter: TrainingAdapter | None = None
    vae_tiling: bool = False
    num_frames: int | None = None
    fps: int | None = None
    lora_2: LoraSettings | None = None

    @property
    def video(self) -> bool:
        """Whether this render is a video (a sequence of frames with a rate)."""
        return self.num_frames is not None

    @property
    def scheduler_config(self) -> SchedulerConfig:
        """The scheduler this render samples with, as the pipeline is given it."""
        return SchedulerConfig(
            shift=self.scheduler_shift,
            dynamic_shift=self.dynamic_shift,
            class_name=self.scheduler_class,
            options=self.scheduler_options,
        )

    @property
    def schedule(self) -> SchedulerConfig:
        """:attr:`scheduler_config` for comparing: two renders whose schedules are equal
        step through the same sigmas (with dynamic shifting, ``shift`` is unused)."""
        config = self.scheduler_config
        return dataclasses.replace(config, shift=None) if config.dynamic_shift else config

    def replace(self, **changes: Any) -> RenderSettings:
        """Return a copy with ``changes`` applied (a counterfactual)."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (tuples become lists)."""
        d = dataclasses.asdict(self)
        if d["sigmas"] is not None:
            d["sigmas"] = list(d["sigmas"])
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RenderSettings:
        d = dict(d)
        # Records written before settings named their family were all Z-Image renders.
        d.setdefault("family", "zimage")
        for key in ("lora", "lora_2"):
            if d.get(key) is not None:
                d[key] = LoraSettings(**d[key])
        d["quantization"] = Quantization(**(d.get("quantization") or {}))
        if d.get("adapter") is not None:
            d["adapter"] = TrainingAdapter(**d["adapter"])
        if d.get("dynamic_shift") is not None:
            d["dynamic_shift"] = DynamicShift(**d["dynamic_shift"])
        if d.get("sigmas") is not None:
            d["sigmas"] = tuple(float(s) for s in d["sigmas"])
        d["scheduler_options"] = tuple(
            (str(k), _frozen(v)) for k, v in d.get("scheduler_options") or ()
        )
        return cls(**d)


def legacy_sigmas(steps: int) -> tuple[float, ...]:
    """Sigma schedule of diffusers before 0.39 for ``steps`` steps: ``linspace(1, 0, N)``.

    Its last step goes from sigma 0 to the terminal 0, so N steps make N-1 updates.
    """
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if steps == 1:
        return (1.0,)
    return tuple(1.0 - i / (steps - 1) for i in range(steps))
