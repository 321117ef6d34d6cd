"""ai-toolkit's rules for sampling a Wan text-to-video preview, stated once.

ostris/ai-toolkit 27a03a91 (0.12.26) samples ``arch: wan21`` with ``Wan21``
(``toolkit/models/wan21/wan21.py``) and ``arch: wan22_14b`` with ``Wan2214bModel``
(``extensions_built_in/diffusion_models/wan22/wan22_14b_model.py``); the file and line of
every rule are in ``docs/families/wan.md``. The rules every family shares (sample
defaults, the floor to 8 and the minimum of 64, qtype names, the WebP a video preview
is written as) are in :mod:`parity.aitk`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from parity.family import Era, Guidance
from parity.settings import SchedulerConfig

#: The scheduler the previews are sampled with: ai-toolkit's training scheduler, a
#: FlowMatch Euler with a static shift ("unipc got broken in a diffusers update. Use
#: euler for now"), not the checkpoint's UniPC. Wan 2.1: shift 3.0.
PREVIEW_SCHEDULER_WAN21 = SchedulerConfig(shift=3.0)
#: Wan 2.2 14B takes the training scheduler of ai-toolkit's Wan 2.2 code: shift 5.0.
PREVIEW_SCHEDULER_WAN22 = SchedulerConfig(shift=5.0)

#: The size a preview has, px: Wan 2.2's pipeline floors width and height to 16 (the VAE's
#: 8 and the 2x2 patch); Wan 2.1's ``WanPipeline`` refuses a size that is not a multiple
#: of 16 (``check_inputs`` raises before its own floor), so a Wan 2.1 preview that exists
#: has such a size already.
SIZE_MULTIPLE = 16

#: Transformer modules ai-toolkit's ``quantize_model`` leaves in full precision. Wan 2.1:
#: none. Wan 2.2 14B (``get_quantization_exclude_modules``, per expert): the timestep and
#: text embedders and the output projection.
QUANTIZE_EXCLUDE_WAN21: tuple[str, ...] = ()
QUANTIZE_EXCLUDE_WAN22: tuple[str, ...] = ("condition_embedder*", "proj_out*")


def pipeline_frames(requested: int) -> int:
    """The frames ``WanPipeline`` renders for ``requested``: a count that is not
    ``4k + 1`` (the VAE's temporal factor 4, plus the first frame) becomes
    ``requested // 4 * 4 + 1``."""
    return requested if requested % 4 == 1 else requested // 4 * 4 + 1


def wan21_preview_frames(model_config: Mapping[str, Any], requested: int) -> int:
    """The frames of a Wan 2.1 preview for ``requested``: :func:`pipeline_frames`, except
    under ``low_vram``, where ai-toolkit samples with its own ``WanPipeline`` subclass
    (``AggressiveWanUnloadPipeline``), which does not round the count: it draws
    ``(n - 1) // 4 + 1`` latent frames, which the VAE decodes to ``(n - 1) // 4 * 4 + 1``
    frames (40 gives 37, where ``WanPipeline`` gives 41)."""
    if model_config.get("low_vram", False):
        return (requested - 1) // 4 * 4 + 1
    return pipeline_frames(requested)


def wan22_preview_frames(model_config: Mapping[str, Any], requested: int) -> int:
    """The frames of a Wan 2.2 14B preview: ai-toolkit's ``Wan22Pipeline`` rounds as
    ``WanPipeline`` does, ``low_vram`` or not."""
    return pipeline_frames(requested)


def preview_era(version: str | None) -> Era:
    """The preview semantics of an ai-toolkit release for Wan.

    The same for every release parity knows: the sample's guidance goes unchanged to
    ``WanPipeline`` (CFG for g > 1) with the negative embeddings of the sample's ``neg``;
    sizes end at multiples of 16; N steps make N updates.
    """
    return Era(version, Guidance.RAW, SIZE_MULTIPLE, False, "Wan: CFG g, 16")


def preview_qtypes(model_config: Mapping[str, Any]) -> tuple[str | None, str | None]:
    """The qtypes ai-toolkit sampled a Wan job with, from its ``model`` section:
    ``(transformer qtype or None, text encoder qtype or None)``. ``quantize`` quantizes
    the transformer(s) and ``quantize_te`` (default: ``quantize``) UMT5, both with
    ``qtype`` (default ``qfloat8``): Wan's loader never reads ``qtype_te``; with
    ``layer_offloading`` the model config turns ``qfloat8`` into torchao ``float8``."""
    quantize = bool(model_config.get("quantize", False))
    quantize_te = bool(model_config.get("quantize_te", quantize))
    qtype = str(model_config.get("qtype") or "qfloat8")
    if model_config.get("layer_offloading") and qtype == "qfloat8":
        qtype = "float8"
    return (qtype if quantize else None, qtype if quantize_te else None)


def preview_vae_tiling(model_config: Mapping[str, Any]) -> bool:
    """``low_vram`` (or ``model_kwargs.vae_tiling``) switches the VAE's tiled decode on
    for every preview (``use_vae_tiling``); the server never tiles."""
    kwargs = model_config.get("model_kwargs") or {}
    return bool(model_config.get("low_vram", False) or kwargs.get("vae_tiling", False))


def unreproduced_options(model_config: Mapping[str, Any]) -> list[str]:
    """ai-toolkit preview options of a Wan job that parity does not render."""
    problems = []
    for key in ("assistant_lora_path", "inference_lora_path", "lora_path"):
        if model_config.get(key):
            problems.append(
                f"model.{key} is set: ai-toolkit's Wan loaders refuse it when the model "
                "loads, so no preview of this job came from this config"
            )
    kwargs = model_config.get("model_kwargs") or {}
    for key in ("train_high_noise", "train_low_noise"):
        if kwargs.get(key) is False:
            problems.append(
                f"model.model_kwargs.{key} is false: a Wan 2.2 LoRA for one expert only, "
                "which parity does not reproduce"
            )
    return problems
