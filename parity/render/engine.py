"""The render engine: one base model loaded once, any RenderSettings rendered with it.

Both sides go through :meth:`RenderEngine.render`; nothing but the RenderSettings record
decides the pixels. The base model's family (:mod:`parity.families`) says which diffusers
pipeline it is and how that pipeline is fed. Per run the engine keeps:

- one diffusers pipeline (``ZImagePipeline``, ``FluxPipeline``) per :class:`VariantKey` (dtype, quantization,
  text-encoder cast, training adapter), loaded on demand and built the way ai-toolkit
  builds its model for sampling (see :meth:`RenderEngine.variant`);
- prompt embeddings per (text, variant, kernel path), shared by checkpoints and
  counterfactuals;
- the LoRA files, read once each (:mod:`parity.job.lora_files`).

LoRA application comes in two kinds, matching the two sides:

- ``LoraApplier.PEFT`` on a plain variant: a PEFT adapter named ``"lora"`` loaded with
  diffusers ``load_lora_weights`` and scaled at run time, exactly as the reference server
  does. Keys diffusers does not recognise are silently not applied, as on the server; the
  engine counts the modules that did get the adapter.
- ai-toolkit's network (``LoraApplier.AITK``, and always on a quantized variant or one
  with a training adapter, where ai-toolkit cannot merge): with ``merged`` the update is
  merged into the weights (``W + m * delta`` in float32, rounded once to the weight dtype)
  for the render and restored after; otherwise it runs beside each linear through a
  forward hook (:meth:`parity.render.lora.ModuleDelta.output`).

A render can also go through the *alternate kernel path* (``render(..., alternate=True)``,
:func:`alternate_kernels`): numerically equivalent kernels that order their float
reductions differently. Two renders of one setting, one through each path, differ by
what another machine's kernels would change; that is the noise floor a run measures
(:mod:`parity.compare.noise`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from parity.errors import LoraError, ModelLoadError, ParityError, RenderError
from parity.family import Family
from parity.job.lora_files import audit_keys, read_header, read_lora
from parity.render.lora import ModuleDelta, module_deltas, perturb_within_rounding
from parity.settings import (
    Dtype,
    LoraApplier,
    LoraSettings,
    Quantization,
    RenderSettings,
    SchedulerConfig,
    TrainingAdapter,
)

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np
    import torch
    from PIL import Image

log = logging.getLogger(__name__)

LORA_ADAPTER = "lora"


@dataclass
class RenderOutput:
    """One render: its frames (one for an image) and what was actually applied."""

    frames: tuple[Image.Image, ...]
    settings: RenderSettings
    lora_modules_in_file: int = 0
    lora_modules_applied: int = 0
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)

    @property
    def image(self) -> Image.Image:
        """The first frame: the image of an image family's render."""
        return self.frames[0]

    @functools.cached_property
    def frames_rgb(self) -> tuple[np.ndarray, ...]:
        """Every frame as ``uint8`` RGB ``(H, W, 3)``, converted once."""
        import numpy as np

        return tuple(np.asarray(frame.convert("RGB")) for frame in self.frames)

    @property
    def rgb(self) -> np.ndarray:
        """The render's pixels: an image's ``(H, W, 3)``, a video's frames ``(N, H, W, 3)``."""
        import numpy as np

        return np.stack(self.frames_rgb) if self.settings.video else self.frames_rgb[0]

    @property
    def lora_not_applied(self) -> bool:
        """True when some module of the LoRA file reached no module of the transformer."""
        return (
            self.settings.lora is not None and self.lora_modules_applied < self.lora_modules_in_file
        )


def default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


#: What :func:`alternate_kernels` switches, per device kind: the noise floor's ``method``.
ALTERNATE_METHODS = {
    "cpu": "sdpa math vs default",
    "cuda": "sdpa math vs default, tf32 on vs off, reduced-precision reductions off vs on",
}


def alternate_method(device: str) -> str:
    """The name of the alternate kernel path on ``device`` (``"cpu"``, ``"cuda:1"``...)."""
    return ALTERNATE_METHODS["cuda" if str(device).startswith("cuda") else "cpu"]


@contextlib.contextmanager
def alternate_kernels(device: str) -> Iterator[None]:
    """Run torch through numerically equivalent kernels that reduce in another order.

    Everywhere: scaled dot-product attention through its math kernel instead of the
    fused one torch picks (the text encoder's attention included). On CUDA also TF32 for
    matmuls and cuDNN switched to the opposite of the matmul setting in force (on, from
    PyTorch's default), and reduced-precision reductions in bf16 and fp16 matmuls each
    switched to the opposite of theirs (off, from the default). Every setting is restored
    on exit.

    Notes
    -----
    Measured on CPU (``docs/deciding.md``): the math kernel's renders differ from the
    default ones by about as much as renders made with other ATen kernel sets (scalar,
    AVX2, AVX-512) do, the best predictor of the cross-machine spread among the
    switches tried; changing torch's thread count changed nothing at the fixtures'
    sizes. Process-wide: do not render in other threads meanwhile.
    """
    import torch
    from torch.nn.attention import SDPBackend, sdpa_kernel

    cuda = str(device).startswith("cuda") and torch.cuda.is_available()
    matmul, cudnn = torch.backends.cuda.matmul, torch.backends.cudnn
    saved = (
        matmul.allow_tf32,
        cudnn.allow_tf32,
        matmul.allow_bf16_reduced_precision_reduction,
        matmul.allow_fp16_reduced_precision_reduction,
    )
    try:
        if cuda:
            matmul.allow_tf32 = cudnn.allow_tf32 = not saved[0]
            matmul.allow_bf16_reduced_precision_reduction = not saved[2]
            matmul.allow_fp16_reduced_precision_reduction = not saved[3]
        with sdpa_kernel(SDPBackend.MATH):
            yield
    finally:
        if cuda:
            matmul.allow_tf32, cudnn.allow_tf32 = saved[0], saved[1]
            matmul.allow_bf16_reduced_precision_reduction = saved[2]
            matmul.allow_fp16_reduced_precision_reduction = saved[3]


@dataclass(frozen=True)
class VariantKey:
    """What makes two pipelines' weights differ (everything else is per render)."""

    dtype: Dtype
    quantization: Quantization = Quantization()
    text_encoder_cast: bool = False
    adapter: TrainingAdapter | None = None

    @classmethod
    def of(cls, settings: RenderSettings) -> VariantKey:
        return cls(
            settings.dtype, settings.quantization, settings.text_encoder_cast, settings.adapter
        )

    @property
    def plain(self) -> bool:
        """Weights as loaded: a PEFT adapter can be attached (the server's way)."""
        return not self.quantization.qtype and self.adapter is None


@dataclass
class _PeftState:
    """One denoiser's PEFT adapter: the file loaded into it, and its modules."""

    path: str | None = None
    applied: int = 0
    in_file: int = 0


@dataclass
class _Variant:
    """A pipeline built for one :class:`VariantKey`, with each denoiser's PEFT adapter."""

    pipe: Any
    key: VariantKey
    peft: dict[str, _PeftState] = field(default_factory=dict)

    @property
    def dtype(self) -> Dtype:
        return self.key.dtype


class RenderEngine:
    """Loads a base model once and renders :class:`RenderSettings` of its family with it.

    Parameters
    ----------
    source:
        A local diffusers folder, a hub id, or a :class:`parity.render.models.ModelSource`
        (split checkpoints).
    device:
        ``"cpu"``, ``"cuda"``, ``"cuda:1"``...; default: CUDA when available.
    family:
        The base model's family (a name or a :class:`parity.family.Family`); default: the
        family of the checkpoint's transformer class or hub id
        (:func:`parity.families.checkpoint_family`).
    """

    def __init__(
        self, source: Any, *, device: str | None = None, family: Family | str | None = None
    ) -> None:
        from parity.families import FAMILIES, checkpoint_family
        from parity.render.models import ModelSource, checkpoint_scheduler

        if not isinstance(source, ModelSource):  # one folder or hub id holds everything
            ref = str(source)
            source = ModelSource(transformer=ref, components=ref, scheduler=ref, label=ref)
        self.source = source
        if isinstance(family, str):
            family = FAMILIES[family]
        self.family: Family = family or checkpoint_family(source.transformer)
        self.device = device or default_device()
        self._variants: dict[VariantKey, _Variant] = {}
        # Keyed by kernel path too: embeddings of the alternate path never feed a default
        # render, and the reverse.
        self._embeddings: dict[tuple[str, VariantKey, bool], Any] = {}
        self._loras: dict[tuple[str, int | None], dict[str, ModuleDelta]] = {}
        self._offloaded = False
        self.renders = 0
        #: The checkpoint's own scheduler (what zimage_turbo and flux keep), read from its
        #: config without loading any weights.
        self.checkpoint_scheduler: SchedulerConfig | None = checkpoint_scheduler(source)

    # ---- loading

    def _load(self, dtype: Dtype) -> Any:
        import diffusers
        import transformers

        # Library progress bars would interleave with parity's own.
        diffusers.utils.logging.disable_progress_bar()
        transformers.utils.logging.disable_progress_bar()
        from parity.render.models import load_pipeline

        try:
            pipe = load_pipeline(self.source, family=self.family, dtype=dtype, device=self.device)
        except ParityError:
            raise
        except (OSError, ValueError, RuntimeError, ImportError) as e:
            raise ModelLoadError(_load_failure(self.source, e)) from e
        if self.checkpoint_scheduler is None:  # a hub id no family knows: as it loaded
            self.checkpoint_scheduler = SchedulerConfig.from_config(pipe.scheduler.config)
        return pipe

    def variant(
        self,
        dtype: Dtype,
        quantization: Quantization = Quantization(),
        *,
        text_encoder_cast: bool = False,
        adapter: TrainingAdapter | None = None,
    ) -> _Variant:
        """The pipeline for these weights, built on first use in ai-toolkit's order.

        1. load every component in ``dtype``;
        2. ``text_encoder_cast``: cast the family's text encoders to ``dtype`` again, as
           ai-toolkit's ``text_encoder.to(device, dtype=...)`` does (which rounds what
           loading kept in float32: Qwen3's rotary buffers, T5's ``wo`` layers);
        3. ``adapter``: merge the training adapter at +1 into the transformer's linears
           (float32 sum of the ``dtype`` weight and the ``dtype``-rounded update, rounded
           once), before quantization;
        4. quantize the transformer and the family's quantized text encoder
           (:mod:`parity.render.quantize`);
        5. ``adapter``: hook it beside the linears at its sampling multiplier (-1), in
           ``dtype``; these hooks run before any LoRA's, as ai-toolkit's adapter runs
           inside the training LoRA.
        """
        key = VariantKey(dtype, quantization, text_encoder_cast, adapter)
        if key not in self._variants:
            pipe = self._load(dtype)
            if text_encoder_cast:
                casts = self.family.text_encoders
                if self.family.transformer_cast:
                    casts = (*casts, *self.family.experts)
                # diffusers warns that this rounds what it keeps in float32: that rounding
                # is ai-toolkit's, and the point of the cast.
                with _quiet_diffusers():
                    for name in casts:
                        getattr(pipe, name).to(dtype=_torch_dtype(dtype))
            if adapter is not None:
                self._merge_adapter(pipe, adapter, dtype)
            if quantization.active:
                from parity.render.quantize import quantize_text_encoder, quantize_transformer

                if quantization.qtype:  # every expert of a two-expert model
                    for expert in self.family.experts:
                        quantize_transformer(
                            getattr(pipe, expert), quantization.qtype, self.family.quantize_exclude
                        )
                if quantization.qtype_te:
                    quantize_text_encoder(
                        getattr(pipe, self.family.quantized_text_encoder), quantization.qtype_te
                    )
            if adapter is not None:
                self._hook_adapter(pipe, adapter, dtype)
            self._variants[key] = _Variant(pipe, key)
        return self._variants[key]

    def adopt(self, pipe: Any, dtype: Dtype) -> None:
        """Use an already built pipeline as this engine's plain ``dtype`` variant."""
        self._variants[VariantKey(dtype)] = _Variant(pipe, VariantKey(dtype))

    # ---- training adapter

    def _adapter_deltas(self, adapter: TrainingAdapter, dtype: Dtype) -> dict[str, ModuleDelta]:
        """The adapter's updates with their factors rounded to ``dtype`` (ai-toolkit keeps
        the adapter network in the training dtype)."""
        torch_dtype = _torch_dtype(dtype)
        return {
            name: dataclasses.replace(
                d, first=d.first.to(torch_dtype), second=d.second.to(torch_dtype)
            )
            for name, d in self.lora(adapter.path).items()
        }

    def _merge_adapter(self, pipe: Any, adapter: TrainingAdapter, dtype: Dtype) -> None:
        import torch

        modules = dict(pipe.transformer.named_modules())
        with torch.no_grad():
            for name, delta in self._adapter_deltas(adapter, dtype).items():
                module = modules.get(name)
                if not isinstance(module, torch.nn.Linear) or delta.is_zero():
                    continue
                weight = module.weight
                merged = weight.data.float() + delta.weight(1.0).to(weight.device)
                weight.data.copy_(merged.to(weight.dtype))

    def _hook_adapter(self, pipe: Any, adapter: TrainingAdapter, dtype: Dtype) -> None:
        import torch

        torch_dtype = _torch_dtype(dtype)
        modules = dict(pipe.transformer.named_modules())
        scale = torch.tensor(1.0, dtype=torch_dtype, device=self.device)
        multiplier = torch.tensor((adapter.multiplier,), dtype=torch_dtype, device=self.device)
        for name, delta in self._adapter_deltas(adapter, dtype).items():
            module = modules.get(name)
            if not isinstance(module, torch.nn.Linear) or delta.is_zero():
                continue
            a = delta.first.to(self.device)
            b = delta.second.to(self.device)

            def run_adapter(mod: Any, args: Any, out: Any, a: Any = a, b: Any = b) -> Any:
                # All in the adapter's dtype: down, up, times scale and multiplier.
                x = args[0].to(torch_dtype)
                y = torch.nn.functional.linear(torch.nn.functional.linear(x, a), b)
                y = y * scale * multiplier.reshape((-1,) + (1,) * (y.dim() - 1))
                return out + y.to(out.dtype)

            module.register_forward_hook(run_adapter)

    # ---- prompts

    def encode(self, text: str, variant: _Variant, *, alternate: bool = False) -> Any:
        """Prompt embeddings for ``text``, cached per (text, variant, kernel path).

        ``alternate``: encoded through :func:`alternate_kernels` (the caller is inside it).
        """
        key = (text, variant.key, alternate)
        if key not in self._embeddings:
            self._embeddings[key] = self.family.pipeline.encode(variant.pipe, text, self.device)
        return self._embeddings[key]

    # ---- LoRA

    def lora(self, path: str, *, rounding_seed: int | None = None) -> dict[str, ModuleDelta]:
        """The module updates of a LoRA file, read and validated once.

        ``rounding_seed``: every value moved within its own rounding
        (:func:`parity.render.lora.perturb_within_rounding`).

        Raises
        ------
        LoraError
            The file is unusable, or holds no LoRA or LoKr update at all.
        """
        key = (path, rounding_seed)
        if key not in self._loras:
            state = read_lora(path)
            if rounding_seed is not None:
                state = perturb_within_rounding(state, seed=rounding_seed)
            deltas = {
                self.family.lora_module_name(name): delta
                for name, delta in module_deltas(state).items()
            }
            if not deltas:
                audit = audit_keys(state)
                why = audit.refused or "no lora_A/lora_B, lora_down/lora_up or lokr_w1/lokr_w2"
                raise LoraError(f"{path}: holds no LoRA or LoKr update ({why})")
            self._loras[key] = deltas
        return self._loras[key]

    def _use_peft(self, variant: _Variant, lora: LoraSettings | None, expert: str) -> None:
        """Make the PEFT adapter of denoiser ``expert`` match ``lora`` (None: off)."""
        from diffusers.utils.peft_utils import set_weights_and_activate_adapters

        transformer = getattr(variant.pipe, expert)
        state = variant.peft.setdefault(expert, _PeftState())
        adapter = LORA_ADAPTER if expert == self.family.experts[0] else f"{LORA_ADAPTER}_{expert}"
        if lora is None:
            if state.path is not None and state.applied:
                transformer.disable_lora()
            return
        if state.path != lora.path:
            if state.path is not None:
                variant.pipe.delete_adapters(adapter)
                variant.peft[expert] = state = _PeftState()
            deltas = self.lora(lora.path)  # validates the file first
            path = Path(lora.path)
            # The second expert's file goes into transformer_2 (Wan 2.2's loader).
            into = {} if expert == self.family.experts[0] else {"load_into_transformer_2": True}
            try:
                with _quiet_diffusers():
                    variant.pipe.load_lora_weights(
                        str(path.parent), weight_name=path.name, adapter_name=adapter, **into
                    )
            except ValueError as e:
                audit = audit_keys(read_header(lora.path).tensors)  # the key names suffice
                if audit.refused:
                    raise LoraError(
                        f"{path}: the server's diffusers cannot load this file: {audit.refused}"
                    ) from None
                # diffusers also raises when no module at all is targeted.
                log.warning("%s: diffusers applied no LoRA module (%s)", path, e)
                variant.peft[expert] = _PeftState(lora.path, 0, len(deltas))
                return
            applied = _count_adapted_modules(transformer, adapter)
            variant.peft[expert] = state = _PeftState(lora.path, applied, len(deltas))
        if state.applied:
            transformer.enable_lora()
            set_weights_and_activate_adapters(transformer, [adapter], [lora.scale])

    def _aitk_lora(
        self, variant: _Variant, lora: LoraSettings, expert: str
    ) -> tuple[list[Any], list[Any], int]:
        """Apply ai-toolkit's network to denoiser ``expert``; return (hooks, weight
        backups, modules applied)."""
        import torch

        deltas = self.lora(lora.path, rounding_seed=lora.rounding_seed)
        modules = dict(getattr(variant.pipe, expert).named_modules())
        hooks: list[Any] = []
        backups: list[tuple[Any, Any]] = []
        applied = 0
        # ai-toolkit merges only into plain weights (can_merge_in is False when quantized).
        merge = lora.merged and not variant.key.quantization.qtype
        multiplier = torch.tensor((lora.scale,), dtype=torch.float32, device=self.device)
        for name, delta in deltas.items():
            module = modules.get(name)
            if module is None:
                continue
            base = getattr(module, "base_layer", module)  # under a PEFT wrapper, the Linear
            if not isinstance(base, torch.nn.Linear):
                continue
            applied += 1
            if merge:
                if delta.is_zero():
                    continue  # ai-toolkit skips zero updates
                weight = base.weight
                backups.append((weight, weight.data.clone()))
                merged = weight.data.float() + delta.weight(lora.scale).to(weight.device)
                weight.data.copy_(merged.to(weight.dtype))
                continue
            on_device = dataclasses.replace(
                delta, first=delta.first.to(self.device), second=delta.second.to(self.device)
            )

            def run_lora(mod: Any, args: Any, out: Any, d: ModuleDelta = on_device) -> Any:
                x = args[0]
                if hasattr(x, "dequantize") and type(x) is not torch.Tensor:
                    x = x.dequantize()  # a quantized activation (never with weight-only)
                return out + d.output(x, multiplier, out.dtype)

            hooks.append(base.register_forward_hook(run_lora))
        return hooks, backups, applied

    # ---- rendering

    def render(self, settings: RenderSettings, *, alternate: bool = False) -> RenderOutput:
        """Render one image exactly as ``settings`` describe.

        ``alternate``: through the alternate kernel path (:func:`alternate_kernels`), text
        encoder included, for a noise floor; the default renders are unaffected.

        Raises
        ------
        RenderError
            NaN or inf in the decoded image, or a pipeline failure.
        LoraError
            The LoRA file is unusable.
        """
        import torch

        if settings.family != self.family.name:
            raise RenderError(
                f"the settings are for a {settings.family} model; this engine holds the "
                f"{self.family.label} checkpoint {self.source.label}"
            )
        started = time.perf_counter()
        key = VariantKey.of(settings)
        variant = self.variant(
            key.dtype,
            key.quantization,
            text_encoder_cast=key.text_encoder_cast,
            adapter=key.adapter,
        )
        hooks: list[Any] = []
        backups: list[Any] = []
        in_file = applied = 0
        notes: list[str] = []
        # Each denoiser gets its own file: one transformer, or a two-expert model's pair.
        loras = (settings.lora, settings.lora_2)[: len(self.family.experts)]
        try:
            for expert, lora in zip(self.family.experts, loras, strict=False):
                use_aitk = lora is not None and (
                    lora.applier is LoraApplier.AITK or lora.merged or not key.plain
                )
                expert_in_file = expert_applied = 0
                if use_aitk:
                    assert lora is not None
                    self._use_peft(variant, None, expert)
                    more_hooks, more_backups, expert_applied = self._aitk_lora(
                        variant, lora, expert
                    )
                    hooks += more_hooks
                    backups += more_backups
                    expert_in_file = len(self.lora(lora.path))
                else:
                    self._use_peft(variant, lora, expert)
                    if lora is not None:
                        state = variant.peft[expert]
                        expert_in_file, expert_applied = state.in_file, state.applied
                if lora is not None and expert_applied < expert_in_file:
                    notes.append(
                        f"{lora.path}: {expert_applied} of {expert_in_file} LoRA modules "
                        f"matched the {expert}"
                    )
                in_file += expert_in_file
                applied += expert_applied
            with alternate_kernels(self.device) if alternate else contextlib.nullcontext():
                frames = self._call_pipeline(variant, settings, alternate=alternate)
        finally:
            for hook in hooks:
                hook.remove()
            for weight, original in backups:
                weight.data.copy_(original)
        self.renders += 1
        if torch.cuda.is_available() and self.device.startswith("cuda"):
            torch.cuda.synchronize()
        return RenderOutput(
            frames=frames,
            settings=settings,
            lora_modules_in_file=in_file,
            lora_modules_applied=applied,
            seconds=time.perf_counter() - started,
            notes=notes,
        )

    def _call_pipeline(
        self, variant: _Variant, s: RenderSettings, *, alternate: bool = False
    ) -> tuple[Image.Image, ...]:
        import numpy as np
        import torch

        pipe = variant.pipe
        pipe.scheduler = s.scheduler_config.build()
        if s.vae_tiling:
            pipe.vae.enable_tiling()
        else:
            pipe.vae.disable_tiling()
        adapter = self.family.pipeline
        arguments = adapter.call_arguments(
            self.encode(s.prompt, variant, alternate=alternate),
            self.encode(s.negative_prompt, variant, alternate=alternate)
            if self.family.negative_prompt_used(s.pipeline_guidance)
            else None,
            s.pipeline_guidance,
        )
        # ai-toolkit seeds the global CPU generator, the server a fresh CPU generator: both
        # draw the same numbers, so a fresh generator serves both without global state.
        generator = torch.Generator("cpu").manual_seed(int(s.seed))
        kwargs: dict[str, Any] = {}
        if s.sigmas is not None:
            kwargs["sigmas"] = list(s.sigmas)
        if s.num_frames is not None:
            kwargs["num_frames"] = s.num_frames
        for attempt in (1, 2):
            try:
                with torch.no_grad():
                    out = pipe(
                        **arguments,
                        height=s.height,
                        width=s.width,
                        num_inference_steps=s.steps,
                        generator=generator,
                        output_type="np",
                        **kwargs,
                    )
                break
            except torch.OutOfMemoryError:
                if attempt == 2:
                    raise RenderError(
                        f"out of memory on {self.device} rendering {s.width}x{s.height}, "
                        "also with model offload"
                    ) from None
                log.warning("out of memory on %s; retrying with model CPU offload", self.device)
                self._enable_offload(pipe)
                generator = torch.Generator("cpu").manual_seed(int(s.seed))
        # A video pipeline returns (frames, H, W, 3) per video, an image one (H, W, 3).
        array = out.frames[0] if s.video else out.images[0][None]
        if not np.isfinite(array).all():
            raise RenderError(
                f"render produced NaN/inf pixels ({s.width}x{s.height}, dtype {s.dtype}, "
                f"seed {s.seed}); the weights or LoRA overflow at this precision"
            )
        return tuple(_to_pil(frame) for frame in array)

    def _enable_offload(self, pipe: Any) -> None:
        import torch

        if self.device.startswith("cuda") and not self._offloaded:
            pipe.enable_model_cpu_offload(device=self.device)
            self._offloaded = True
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    def close(self) -> None:
        self._variants.clear()
        self._embeddings.clear()
        self._loras.clear()


@contextlib.contextmanager
def _quiet_diffusers() -> Iterator[None]:
    """diffusers' warnings off: a FLUX.1 LoRA has no text-encoder keys, which
    ``FluxPipeline.load_lora_weights`` reports for every load (parity counts what the
    transformer took itself)."""
    from diffusers.utils import logging as diffusers_logging

    verbosity = diffusers_logging.get_verbosity()
    diffusers_logging.set_verbosity_error()
    try:
        yield
    finally:
        diffusers_logging.set_verbosity(verbosity)


def _to_pil(frame: Any) -> Image.Image:
    """A float frame in [0, 1] as an 8-bit RGB image, rounded as diffusers' ``pil``
    output does (``round(x * 255)``)."""
    import numpy as np
    from PIL import Image

    return Image.fromarray((np.asarray(frame) * 255).round().astype("uint8"))


def _torch_dtype(dtype: Dtype) -> torch.dtype:
    import torch

    return getattr(torch, dtype)


def _load_failure(source: Any, error: Exception) -> str:
    """One line: which checkpoint could not be loaded, why, and how to fix it."""
    reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    parts = {source.transformer, source.components}
    hub_ids = sorted(p for p in parts if not os.path.isdir(p))
    if hub_ids:
        offline = os.environ.get("HF_HUB_OFFLINE", "") not in ("", "0")
        where = "offline (HF_HUB_OFFLINE is set)" if offline else "from the hub or its cache"
        return (
            f"cannot load {', '.join(hub_ids)} {where}: {reason}; map it to a local diffusers "
            "folder with --base-model PATH or --model-map ID=PATH"
        )
    return f"cannot load the checkpoint {source.label} ({', '.join(sorted(parts))}): {reason}"


def _count_adapted_modules(transformer: Any, adapter: str) -> int:
    """Modules PEFT wrapped with ``adapter`` (a LoRA's ``lora_A``, a LoKr's ``lokr_w1``...)."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    count = 0
    for module in transformer.modules():
        if isinstance(module, BaseTunerLayer):
            names = getattr(module, "adapter_layer_names", ()) or ("lora_A",)
            if adapter in getattr(module, names[0], {}):
                count += 1
    return count
