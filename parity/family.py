"""What a model family is: the record of facts each family's folder fills in.

A family (``parity/zimage/``, ``parity/flux/``) states, as data and small functions on
plain values, everything that differs between model families for ai-toolkit's previews
and for the reference server: which job configs are its own, its server model ids and
their defaults, its preview rules per ai-toolkit release (:class:`Era`), its scheduler,
its quantization, and how its diffusers pipeline is loaded and called
(:class:`PipelineAdapter`). The stages ask the family of a job or a request
(:mod:`parity.families`) instead of holding such facts themselves, so the next family is
a folder beside these.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Protocol

from parity.errors import WrongCheckpointError
from parity.settings import SchedulerConfig


class Guidance(StrEnum):
    """How a release handed the sample's guidance ``g`` to diffusers."""

    #: ``max(0, g - 1)``: "CFG is 0 normalized" (0.10.21 and later).
    MINUS_ONE = "minus_one"
    #: ``g``, with the pipeline running CFG for ``g > 0`` (0.7.25 to 0.10.20).
    RAW = "raw"
    #: ``g``, with the pipeline running CFG only for ``g > 1`` (before 0.7.25).
    RAW_GT1 = "raw_gt1"


@dataclass(frozen=True)
class Era:
    """Preview semantics of one range of ai-toolkit releases (DOMAIN table, section 5).

    Attributes
    ----------
    version:
        The release the rules were chosen for (None: unknown).
    guidance:
        How the sample's guidance reached diffusers.
    size_multiple:
        The model's size floor, px (16, or 32 before 0.9.15).
    legacy_sigmas:
        True when N steps made N-1 updates (diffusers before 0.39).
    label, note:
        One line for reports; an ambiguity of the release, when there is one.
    """

    version: str | None
    guidance: Guidance
    size_multiple: int
    legacy_sigmas: bool
    label: str
    note: str = ""

    def pipeline_guidance(self, guidance_scale: float) -> float:
        """The guidance that makes the installed diffusers (CFG ``pos + g (pos - neg)`` for
        ``g > 0``) do what this release's did with ``guidance_scale``."""
        if self.guidance is Guidance.MINUS_ONE:
            return max(0.0, guidance_scale - 1.0)
        if self.guidance is Guidance.RAW_GT1:
            return guidance_scale if guidance_scale > 1.0 else 0.0
        return guidance_scale


@dataclass(frozen=True)
class DiffusersEra:
    """How the diffusers release a server runs treats a family's steps and guidance.

    A family whose pipeline changed between releases parses ``--server-diffusers``
    into one of these (:attr:`Family.server_era`); Z-Image's releases are in
    :mod:`parity.zimage.diffusers_era`.

    Attributes
    ----------
    label:
        The release or commit as given, with its version (for reports).
    legacy_sigmas:
        True when N steps make N-1 updates (before 0.39 / commit 32ecbe3).
    cfg_threshold:
        CFG runs when the guidance it receives is above this: 1.0 before 0.37 (commit
        97c2c6e), else 0.0.
    note:
        An ambiguity of the version, when there is one.
    """

    label: str
    legacy_sigmas: bool
    cfg_threshold: float
    note: str = ""

    @property
    def cfg_rule(self) -> str:
        return f"CFG runs for g > {self.cfg_threshold:g}"

    @property
    def steps_rule(self) -> str:
        return "N steps make N-1 updates" if self.legacy_sigmas else "N steps make N updates"

    def describe(self) -> str:
        text = f"diffusers {self.label}: {self.steps_rule}, {self.cfg_rule}"
        return f"{text} ({self.note})" if self.note else text

    def pipeline_guidance(self, guidance_scale: float) -> float:
        """The guidance that makes the installed diffusers (CFG ``pos + g (pos - neg)``
        for ``g > 0``) do what this release does with ``guidance_scale``."""
        return guidance_scale if guidance_scale > self.cfg_threshold else 0.0

    def request_guidance(self, pipeline_guidance: float) -> float | None:
        """The guidance to send so that this release does what the installed diffusers
        does with ``pipeline_guidance``; None when no value does (CFG weaker than the
        threshold cannot run)."""
        if pipeline_guidance <= 0.0:
            return 0.0
        if pipeline_guidance > self.cfg_threshold:
            return pipeline_guidance
        return None

    def to_json(self) -> dict[str, object]:
        return {
            "label": self.label,
            "legacy_sigmas": self.legacy_sigmas,
            "cfg_threshold": self.cfg_threshold,
            "note": self.note,
        }


@dataclass(frozen=True)
class ServerModel:
    """One model id of the reference server: its defaults and the checkpoints it loads.

    Attributes
    ----------
    model_id:
        The request's ``model`` (``zimage``, ``flux``...).
    family:
        Name of the family it belongs to.
    default_steps, default_guidance:
        What a prompt without ``sample_steps`` / ``guidance_scale`` gets.
    resolution_divisor:
        Width and height are floored to a multiple of this, px.
    transformer_hub_id, hub_id:
        Hub ids of the checkpoint holding the transformer and of the one holding the
        VAE, text encoders and tokenizers (the same for a single checkpoint).
    replaced_scheduler:
        The scheduler the pipeline installs in place of the checkpoint's, or None when it
        keeps the checkpoint's own.
    default_network_multiplier:
        The LoRA scale when the request gives none.
    fuses_lora:
        The LoRA is fused into the weights at load (``fuse_lora``: ``W + s * BA`` rounded
        to the weight dtype once), not run beside them as a PEFT adapter.
    default_num_frames, default_fps:
        A video model's frames and frame rate when a prompt gives none; None for an
        image model.
    expert_loras:
        The model has two experts and takes a LoRA pair: request items with
        ``transformer: high`` (the first expert, ``transformer``) and ``transformer: low``
        (the second, ``transformer_2``), each with its own scale.
    """

    model_id: str
    family: str
    default_steps: int
    default_guidance: float
    resolution_divisor: int
    transformer_hub_id: str
    hub_id: str
    replaced_scheduler: SchedulerConfig | None = None
    default_network_multiplier: float = 1.0
    fuses_lora: bool = False
    default_num_frames: int | None = None
    default_fps: int | None = None
    expert_loras: bool = False

    @property
    def video(self) -> bool:
        """Whether the model renders videos (frames and a frame rate)."""
        return self.default_num_frames is not None

    @property
    def replaces_scheduler(self) -> bool:
        return self.replaced_scheduler is not None

    def scheduler(self, checkpoint: SchedulerConfig | None) -> SchedulerConfig | None:
        """The scheduler this model samples with, given the checkpoint's own (or None)."""
        return self.replaced_scheduler or checkpoint


class PipelineAdapter(Protocol):
    """How one family's diffusers pipeline is loaded, fed and called.

    Implemented by a module of the family's folder (``parity/zimage/pipeline.py``,
    ``parity/flux/pipeline.py``) that imports diffusers lazily.
    """

    def load(
        self, transformer: str, components: str, scheduler: str | None, *, dtype: Any, device: Any
    ) -> Any:
        """The pipeline: the transformer from ``transformer``, the other parts from
        ``components``, the scheduler from ``scheduler`` (None: a default one)."""

    def encode(self, pipe: Any, text: str, device: Any) -> Any:
        """The prompt embeddings the pipeline call takes for ``text``."""

    def call_arguments(
        self, positive: Any, negative: Any | None, guidance: float
    ) -> dict[str, Any]:
        """Keyword arguments of the pipeline call for the embeddings of :meth:`encode`
        (``negative`` None: no negative prompt) and the guidance (the settings'
        ``pipeline_guidance``): which argument it is (``guidance_scale``,
        ``true_cfg_scale``...) is the family's."""


@dataclass(frozen=True)
class Family:
    """The facts of one model family (see the module docstring).

    Attributes
    ----------
    name, label:
        ``"zimage"`` / ``"Z-Image"``: the name settings and reports carry, and how prose
        names it.
    arches:
        ``model.arch`` values of its jobs (before ``:<tag>``), as ai-toolkit reads them.
    arch_flag:
        A legacy ``model`` key that selects the family without ``arch`` (``is_flux``).
    arch_names:
        How an error message lists the arches it takes.
    transformer_class:
        ``_class_name`` of the checkpoint's ``transformer/config.json``.
    checkpoint_parts:
        Files (``.json``) and folders a local checkpoint holding the VAE, text encoders
        and tokenizers must have, relative to it.
    text_encoders:
        The pipeline's text encoder attributes, cast with ``text_encoder_cast``.
    quantized_text_encoder:
        The text encoder ai-toolkit's ``quantize_te`` quantizes.
    quantize_exclude:
        Transformer modules ai-toolkit's ``quantize`` leaves in full precision (fnmatch).
    server_models:
        The reference server's model ids of this family.
    hub_schedulers:
        The scheduler config each hub checkpoint ships, for ids mapped to no folder.
    default_scheduler:
        What the server's diffusers samples with when a checkpoint has no scheduler.
    preview_scheduler:
        The scheduler ai-toolkit samples previews with, whatever the checkpoint ships.
    server_era:
        ``--server-diffusers`` value (None: the installed release) -> the
        :class:`DiffusersEra` that release means for this family's pipeline, or None when
        the release does not change how it treats steps and guidance. Raises
        :class:`parity.errors.ParityError` for a release it cannot place.
    diffusers_note:
        For a family without eras: why the release does not matter, for reports.
    lora_key_format:
        The LoRA key names the server's diffusers loads, for messages.
    reference_model:
        ``(arch tag or None, model.name_or_path) -> server model id`` of a job.
    preview_era:
        ``ai-toolkit version or None -> Era``: the preview semantics of that release.
    preview_qtypes:
        ``model section -> (transformer qtype, text encoder qtype)`` ai-toolkit sampled with.
    negative_prompt_used:
        ``pipeline guidance -> bool``: whether the pipeline uses the negative prompt.
    unreproduced_options:
        ``model section -> problems``: preview options of ai-toolkit parity does not
        render; a job with any is refused.
    preview_vae_tiling:
        ``model section -> bool``: whether ai-toolkit switched the VAE's tiled decode on
        for the previews (Qwen-Image: ``low_vram``).
    vae_tile_size:
        The VAE's tile, px: a tiled decode acts only on an image wider or taller than
        this (diffusers' ``tile_sample_min_width`` / ``_height``); None: never tiles.
    wrong_checkpoint_error:
        The error type of a checkpoint that is not this family's.
    pipeline_frames:
        A video family's pipeline rule for frame counts: ``requested -> rendered``
        (WanPipeline: ``n // 4 * 4 + 1`` unless ``n`` is already ``4k + 1``); None for an
        image family. Both sides run it, so settings carry the rendered count.
    preview_frames:
        ``(model section, requested) -> rendered``: the frames ai-toolkit's previews have,
        where its sampling pipeline has its own rule (Wan 2.1 under ``low_vram``);
        None for an image family.
    experts:
        The pipeline's denoisers a LoRA reaches, in the order of a LoRA pair: one
        ``("transformer",)``, or two for a model with high- and low-noise experts.
    expert_lora_suffixes:
        The file name endings of a LoRA pair, in :attr:`experts` order
        (``("_high_noise", "_low_noise")``); empty for one transformer.
    lora_module_name:
        A LoRA file's module name -> the transformer's (Wan: ai-toolkit saves the
        original Wan naming, ``blocks.0.self_attn.q`` for ``blocks.0.attn1.to_q``); what
        diffusers' loader does on the server side, for ai-toolkit's own network.
    transformer_cast:
        ai-toolkit casts each loaded transformer to the training dtype once more, which
        rounds what loading kept in float32 (Wan's ``time_embedder``, norms and
        ``scale_shift_table``); a preview's ``text_encoder_cast`` then covers them too.
    pipeline:
        Loading and calling its diffusers pipeline.
    """

    name: str
    label: str
    arches: tuple[str, ...]
    arch_names: str
    transformer_class: str
    checkpoint_parts: tuple[str, ...]
    text_encoders: tuple[str, ...]
    quantized_text_encoder: str
    quantize_exclude: tuple[str, ...]
    server_models: Mapping[str, ServerModel]
    default_scheduler: SchedulerConfig
    preview_scheduler: SchedulerConfig
    lora_key_format: str
    reference_model: Callable[[str | None, str], str]
    preview_era: Callable[[str | None], Era]
    preview_qtypes: Callable[[Mapping[str, Any]], tuple[str | None, str | None]]
    negative_prompt_used: Callable[[float], bool]
    pipeline: PipelineAdapter
    arch_flag: str | None = None
    hub_schedulers: Mapping[str, SchedulerConfig] = field(default_factory=dict)
    server_era: Callable[[str | None], DiffusersEra | None] = lambda spec: None
    diffusers_note: str = ""
    unreproduced_options: Callable[[Mapping[str, Any]], list[str]] = lambda model: []
    preview_vae_tiling: Callable[[Mapping[str, Any]], bool] = lambda model: False
    vae_tile_size: int | None = None
    wrong_checkpoint_error: type[Exception] = WrongCheckpointError
    pipeline_frames: Callable[[int], int] | None = None
    preview_frames: Callable[[Mapping[str, Any], int], int] | None = None
    experts: tuple[str, ...] = ("transformer",)
    expert_lora_suffixes: tuple[str, ...] = ()
    transformer_cast: bool = False
    lora_module_name: Callable[[str], str] = lambda name: name

    @property
    def video(self) -> bool:
        """Whether this family renders videos."""
        return self.pipeline_frames is not None

    def tiling_acts(self, width: int, height: int) -> bool:
        """Whether a tiled decode of a ``width`` x ``height`` px image differs from a whole
        one: only above the VAE's tile."""
        tile = self.vae_tile_size
        return tile is not None and (width > tile or height > tile)

    def server_release_label(self, spec: str | None) -> str:
        """The server's diffusers release as a report names it: the era's label, or the
        release given (the installed one by default) for a family without eras."""
        era = self.server_era(spec)
        if era is not None:
            return era.label
        if spec:
            return str(spec).strip()
        from parity.stack import installed_version

        return f"{installed_version('diffusers') or 'unknown'} (installed)"

    def describe_server_release(self, spec: str | None) -> str:
        """One line: what the server's diffusers release does with this family's pipeline."""
        era = self.server_era(spec)
        if era is not None:
            return era.describe()
        return f"diffusers {self.server_release_label(spec)}: {self.diffusers_note}"

    def server_release_json(self, spec: str | None) -> dict[str, object]:
        """The server's diffusers release for run.json: the era's record, or its label and
        why the release does not matter for this family."""
        era = self.server_era(spec)
        if era is not None:
            return era.to_json()
        return {"label": self.server_release_label(spec), "note": self.diffusers_note}
