"""The render engine: one base model loaded once, any RenderSettings rendered with it.

Both sides go through :meth:`RenderEngine.render`; nothing but the RenderSettings record
decides the pixels. Per run the engine keeps:

- one diffusers ``ZImagePipeline`` per (dtype, quantization) variant, loaded on demand;
- prompt embeddings per (text, variant), shared by checkpoints and counterfactuals;
- the LoRA state dicts read once per file.

LoRA application comes in two kinds, matching the two sides:

- ``LoraSettings(merged=False)`` on an unquantized variant: a PEFT adapter named
  ``"lora"`` loaded with diffusers ``load_lora_weights`` and scaled at run time, exactly
  as the reference server does. Keys diffusers does not recognise are silently not
  applied, as on the server; the engine counts the modules that did get the adapter.
- ai-toolkit's network, for previews (``LoraSettings.applier == "aitk"``): the delta is
  merged into the weights, ``W + m (B A)`` computed in float32, when ``merged`` is
  True; otherwise it runs beside each Linear, ``y + m B(A x)``, which also works over
  quantized weights (ai-toolkit never merges into a quantized model).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from parity.errors import PICKLED_SUFFIXES, LoraError, ModelLoadError, ParityError, RenderError
from parity.settings import Dtype, LoraApplier, LoraSettings, Quantization, RenderSettings

if TYPE_CHECKING:  # pragma: no cover
    import torch
    from PIL import Image

log = logging.getLogger(__name__)

LORA_ADAPTER = "lora"
#: Key prefixes ai-toolkit and diffusers use for transformer LoRA keys.
LORA_KEY_PREFIXES = ("diffusion_model.", "transformer.", "base_model.model.")


@dataclass
class RenderOutput:
    """One render: the image and what was actually applied."""

    image: Image.Image
    settings: RenderSettings
    lora_modules_in_file: int = 0
    lora_modules_applied: int = 0
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)

    @property
    def lora_not_applied(self) -> bool:
        return self.settings.lora is not None and self.lora_modules_applied == 0


def default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


# ----------------------------------------------------------------------- LoRA files


def read_lora(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a LoRA state dict from safetensors, refusing pickled formats.

    Raises
    ------
    LoraError
        Pickled suffix, missing, empty, truncated or non-safetensors file, NaN/inf values.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    if path.suffix.lower() in PICKLED_SUFFIXES:
        raise LoraError(
            f"{path}: pickled checkpoint formats ({path.suffix}) are refused; "
            "convert the LoRA to .safetensors"
        )
    if not path.is_file():
        raise LoraError(f"{path}: LoRA file not found")
    size = path.stat().st_size
    if size == 0:
        raise LoraError(f"{path}: LoRA file is empty (0 bytes)")
    try:
        # safetensors parses a JSON header and raw buffers; it never unpickles anything.
        state = load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise LoraError(f"{path}: {_not_safetensors(path, e)}") from None
    if not state:
        raise LoraError(f"{path}: safetensors file holds no tensors")
    for key, tensor in state.items():
        if tensor.is_floating_point() and not bool(tensor.isfinite().all()):
            raise LoraError(f"{path}: tensor {key} contains NaN or inf values")
    return state


def _not_safetensors(path: Path, error: Exception) -> str:
    """What a file that safetensors could not parse looks like, for the error message.

    Only called after parsing failed: the first bytes of a valid safetensors file are a
    little-endian header length, which may by chance start with the same bytes as a zip
    archive or a pickle, so those are never judged by their first bytes alone.
    """
    with open(path, "rb") as f:
        head = f.read(8)
    if head[:4] == b"PK\x03\x04":
        return "a zip archive (torch.save format, which holds pickles), not safetensors; refused"
    if head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"):
        return "a pickle (legacy torch.save format), not safetensors; refused, never unpickled"
    return f"not a readable safetensors file, truncated or corrupt ({error})"


def lora_module_pairs(
    state: dict[str, torch.Tensor],
) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Map module names (prefix stripped) to (A, B) for PEFT- and kohya-style key pairs."""
    pairs: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in state.items():
        for down, up in (
            (".lora_A.weight", ".lora_B.weight"),
            (".lora_down.weight", ".lora_up.weight"),
        ):
            if key.endswith(down):
                pairs.setdefault(key[: -len(down)], {})["A"] = tensor
            elif key.endswith(up):
                pairs.setdefault(key[: -len(up)], {})["B"] = tensor
    out = {}
    for name, ab in pairs.items():
        if "A" not in ab or "B" not in ab:
            continue
        for prefix in LORA_KEY_PREFIXES:
            if name.startswith(prefix):
                name = name[len(prefix) :]
                break
        out[name] = (ab["A"], ab["B"])
    return out


# -------------------------------------------------------------------- the engine


@dataclass
class _Variant:
    """A pipeline at one dtype and quantization, with its LoRA state."""

    pipe: Any
    dtype: Dtype
    quantization: Quantization
    peft_path: str | None = None
    peft_applied: int = 0
    peft_in_file: int = 0


class RenderEngine:
    """Loads a Z-Image base model once and renders :class:`RenderSettings` with it.

    Parameters
    ----------
    source:
        A local diffusers folder, a hub id, or a :class:`parity.models.ModelSource`
        (split checkpoints).
    device:
        ``"cpu"``, ``"cuda"``, ``"cuda:1"``...; default: CUDA when available.
    """

    def __init__(self, source: Any, *, device: str | None = None) -> None:
        from parity.models import ModelSource, checkpoint_scheduler_shift

        if not isinstance(source, ModelSource):  # one folder or hub id holds everything
            ref = str(source)
            source = ModelSource(transformer=ref, components=ref, scheduler=ref, label=ref)
        self.source = source
        self.device = device or default_device()
        self._variants: dict[tuple[Dtype, Quantization], _Variant] = {}
        self._embeddings: dict[tuple[str, Dtype, str | None], Any] = {}
        self._loras: dict[str, dict[str, tuple[Any, Any]]] = {}
        self._offloaded = False
        self.renders = 0
        #: ``shift`` of the checkpoint's own scheduler (what zimage_turbo keeps), read
        #: from its config without loading any weights.
        self.checkpoint_scheduler_shift: float | None = checkpoint_scheduler_shift(source)

    # ---- loading

    def _load(self, dtype: Dtype) -> Any:
        import diffusers
        import transformers

        # Library progress bars would interleave with parity's own.
        diffusers.utils.logging.disable_progress_bar()
        transformers.utils.logging.disable_progress_bar()
        from parity.models import load_zimage_pipeline

        try:
            pipe = load_zimage_pipeline(self.source, dtype=dtype, device=self.device)
        except ParityError:
            raise
        except (OSError, ValueError, RuntimeError, ImportError) as e:
            raise ModelLoadError(_load_failure(self.source, e)) from e
        shift = getattr(pipe.scheduler.config, "shift", None)
        if self.checkpoint_scheduler_shift is None and shift is not None:
            self.checkpoint_scheduler_shift = float(shift)
        return pipe

    def variant(self, dtype: Dtype, quantization: Quantization = Quantization()) -> _Variant:
        key = (dtype, quantization)
        if key not in self._variants:
            pipe = self._load(dtype)
            if quantization.active:
                from parity.quantize import quantize_text_encoder, quantize_transformer

                if quantization.qtype:
                    quantize_transformer(pipe.transformer, quantization.qtype)
                if quantization.qtype_te:
                    quantize_text_encoder(pipe.text_encoder, quantization.qtype_te)
            self._variants[key] = _Variant(pipe, dtype, quantization)
        return self._variants[key]

    # ---- prompts

    def encode(self, text: str, variant: _Variant) -> Any:
        """Prompt embeddings for ``text``, cached per (text, dtype, text-encoder qtype)."""
        import torch

        key = (text, variant.dtype, variant.quantization.qtype_te)
        if key not in self._embeddings:
            with torch.no_grad():
                embeds, _ = variant.pipe.encode_prompt(
                    text, do_classifier_free_guidance=False, device=self.device
                )
            self._embeddings[key] = embeds
        return self._embeddings[key]

    # ---- LoRA

    def lora_pairs(self, path: str) -> dict[str, tuple[Any, Any]]:
        if path not in self._loras:
            self._loras[path] = lora_module_pairs(read_lora(path))
        return self._loras[path]

    def _use_peft(self, variant: _Variant, lora: LoraSettings | None) -> None:
        """Make the PEFT adapter match ``lora`` (None: adapter off)."""
        from diffusers.utils.peft_utils import set_weights_and_activate_adapters

        transformer = variant.pipe.transformer
        if lora is None:
            if variant.peft_path is not None and variant.peft_applied:
                transformer.disable_lora()
            return
        if variant.peft_path != lora.path:
            if variant.peft_path is not None:
                variant.pipe.delete_adapters(LORA_ADAPTER)
                variant.peft_path = None
            pairs = self.lora_pairs(lora.path)  # validates the file first
            path = Path(lora.path)
            try:
                variant.pipe.load_lora_weights(
                    str(path.parent), weight_name=path.name, adapter_name=LORA_ADAPTER
                )
            except ValueError as e:
                # diffusers raises when no module at all is targeted.
                log.warning("%s: diffusers applied no LoRA module (%s)", path, e)
                variant.peft_path = lora.path
                variant.peft_applied = 0
                variant.peft_in_file = len(pairs)
                return
            variant.peft_path = lora.path
            variant.peft_in_file = len(pairs)
            variant.peft_applied = _count_adapted_modules(transformer, LORA_ADAPTER)
        if variant.peft_applied:
            transformer.enable_lora()
            set_weights_and_activate_adapters(transformer, [LORA_ADAPTER], [lora.scale])

    def _aitk_lora(self, variant: _Variant, lora: LoraSettings) -> tuple[list[Any], list[Any], int]:
        """Apply ai-toolkit's network; return (hooks, weight backups, modules applied)."""
        import torch

        pairs = self.lora_pairs(lora.path)
        modules = dict(variant.pipe.transformer.named_modules())
        hooks: list[Any] = []
        backups: list[tuple[Any, Any]] = []
        applied = 0
        rank_scale = 1.0  # ai-toolkit saves no alpha: alpha = rank, so alpha / rank = 1
        for name, (a, b) in pairs.items():
            module = modules.get(name)
            if module is None:
                continue
            base = getattr(module, "base_layer", module)  # under a PEFT wrapper, the Linear
            if not isinstance(base, torch.nn.Linear):
                continue
            applied += 1
            a32 = a.to(self.device, torch.float32)
            b32 = b.to(self.device, torch.float32)
            if lora.merged and not variant.quantization.qtype:
                if not (a32.any() and b32.any()):
                    continue  # ai-toolkit skips zero deltas
                weight = base.weight
                backups.append((weight, weight.data.clone()))
                merged = weight.data.float() + lora.scale * (b32 @ a32) * rank_scale
                weight.data.copy_(merged.to(weight.dtype))
            else:
                multiplier = torch.tensor((lora.scale,), dtype=torch.float32, device=self.device)

                def add_lora(mod: Any, args: Any, out: Any, a32=a32, b32=b32, m=multiplier) -> Any:
                    x = args[0]
                    if hasattr(x, "dequantize") and not isinstance(x, torch.Tensor):
                        x = x.dequantize()
                    lora_out = torch.nn.functional.linear(
                        torch.nn.functional.linear(x.to(torch.float32), a32), b32
                    )
                    lora_out = lora_out * rank_scale
                    lora_out = lora_out * m.reshape((-1,) + (1,) * (lora_out.dim() - 1))
                    return out + lora_out.to(out.dtype)

                hooks.append(base.register_forward_hook(add_lora))
        return hooks, backups, applied

    # ---- rendering

    def render(self, settings: RenderSettings) -> RenderOutput:
        """Render one image exactly as ``settings`` describe.

        Raises
        ------
        RenderError
            NaN or inf in the decoded image, or a pipeline failure.
        LoraError
            The LoRA file is unusable.
        """
        import torch

        started = time.perf_counter()
        variant = self.variant(settings.dtype, settings.quantization)
        lora = settings.lora
        use_aitk = lora is not None and (
            lora.applier is LoraApplier.AITK or lora.merged or settings.quantization.active
        )
        hooks: list[Any] = []
        backups: list[Any] = []
        in_file = applied = 0
        notes: list[str] = []
        try:
            if use_aitk:
                self._use_peft(variant, None)
                hooks, backups, applied = self._aitk_lora(variant, lora)
                in_file = len(self.lora_pairs(lora.path))
            else:
                self._use_peft(variant, lora)
                if lora is not None:
                    in_file, applied = variant.peft_in_file, variant.peft_applied
            if lora is not None and applied < in_file:
                notes.append(
                    f"{lora.path}: {applied} of {in_file} LoRA modules matched the transformer"
                )
            image = self._call_pipeline(variant, settings)
        finally:
            for hook in hooks:
                hook.remove()
            for weight, original in backups:
                weight.data.copy_(original)
        self.renders += 1
        if torch.cuda.is_available() and self.device.startswith("cuda"):
            torch.cuda.synchronize()
        return RenderOutput(
            image=image,
            settings=settings,
            lora_modules_in_file=in_file,
            lora_modules_applied=applied,
            seconds=time.perf_counter() - started,
            notes=notes,
        )

    def _call_pipeline(self, variant: _Variant, s: RenderSettings) -> Image.Image:
        import numpy as np
        import torch
        from diffusers import FlowMatchEulerDiscreteScheduler

        pipe = variant.pipe
        pipe.scheduler = FlowMatchEulerDiscreteScheduler(
            num_train_timesteps=1000, shift=s.scheduler_shift, use_dynamic_shifting=False
        )
        prompt_embeds = self.encode(s.prompt, variant)
        negative = self.encode(s.negative_prompt, variant) if s.pipeline_guidance > 0 else None
        # ai-toolkit seeds the global CPU generator, the server a fresh CPU generator: both
        # draw the same numbers, so a fresh generator serves both without global state.
        generator = torch.Generator("cpu").manual_seed(int(s.seed))
        kwargs: dict[str, Any] = {}
        if s.sigmas is not None:
            kwargs["sigmas"] = list(s.sigmas)
        for attempt in (1, 2):
            try:
                with torch.no_grad():
                    out = pipe(
                        prompt_embeds=prompt_embeds,
                        negative_prompt_embeds=negative,
                        height=s.height,
                        width=s.width,
                        num_inference_steps=s.steps,
                        guidance_scale=s.pipeline_guidance,
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
        array = out.images[0]
        if not np.isfinite(array).all():
            raise RenderError(
                f"render produced NaN/inf pixels ({s.width}x{s.height}, dtype {s.dtype}, "
                f"seed {s.seed}); the weights or LoRA overflow at this precision"
            )
        return pipe.image_processor.numpy_to_pil(array[None])[0]

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


def _load_failure(source: Any, error: Exception) -> str:
    """One line: which checkpoint could not be loaded, why, and how to fix it."""
    import os

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
    from peft.tuners.tuners_utils import BaseTunerLayer

    count = 0
    for module in transformer.modules():
        if isinstance(module, BaseTunerLayer) and adapter in getattr(module, "lora_A", {}):
            count += 1
    return count
