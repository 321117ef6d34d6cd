"""ai-toolkit's rules for sampling a Qwen-Image preview, stated once.

ostris/ai-toolkit 27a03a91 (0.12.26) samples ``arch: qwen_image`` (and
``qwen_image:2512``) with ``QwenImageModel``
(``extensions_built_in/diffusion_models/qwen_image/qwen_image.py``); the file and line of
every rule are in ``docs/families/qwen-image.md``. The rules every family shares (sample
defaults, the floor to 8, qtype names) are in :mod:`parity.aitk`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from parity.family import Era, Guidance
from parity.qwenimage.checkpoints import QWEN_IMAGE_SCHEDULER

#: The scheduler ai-toolkit samples previews with: the config written into
#: qwen_image.py (``scheduler_config``), whatever the checkpoint ships. Its values are
#: Qwen/Qwen-Image's.
PREVIEW_SCHEDULER = QWEN_IMAGE_SCHEDULER

#: ``generate_single_image`` floors width and height to ``get_bucket_divisibility()``,
#: 16 * 2 (the VAE's 8 and the 2x2 patch, doubled): 32, where the server floors to 16.
SIZE_MULTIPLE = 32

#: Transformer modules ai-toolkit's ``quantize_model`` leaves in full precision: none
#: (``QwenImageModel`` names no exclusions), so the blocks and then the extras outside
#: them (input projections, timestep embedder, output layers) all get ``qtype``.
QUANTIZE_EXCLUDE: tuple[str, ...] = ()


def preview_era(version: str | None) -> Era:
    """The preview semantics of an ai-toolkit release for Qwen-Image.

    The same for every release parity knows: the sample's guidance goes unchanged into
    ``QwenImagePipeline`` as ``true_cfg_scale`` with the negative embeddings of the
    sample's ``neg`` (true CFG runs for g > 1, no ``g - 1``); sizes end at multiples of
    32; N steps make N updates (the pipeline builds ``linspace(1, 1/N, N)``).
    """
    return Era(version, Guidance.RAW, SIZE_MULTIPLE, False, "Qwen-Image: true CFG g, 32")


def preview_qtypes(model_config: Mapping[str, Any]) -> tuple[str | None, str | None]:
    """The qtypes ai-toolkit sampled a Qwen-Image job with, from its ``model`` section.

    Returns ``(transformer qtype or None, text encoder qtype or None)``. ``quantize``
    (default False) quantizes the transformer blocks with ``qtype`` (default
    ``qfloat8``); ``quantize_te`` (default: ``quantize``) every linear of the text encoder
    with ``qtype_te`` (default ``qfloat8``); with ``layer_offloading`` ai-toolkit's model
    config turns either ``qfloat8`` into torchao ``float8``.
    """
    quantize = bool(model_config.get("quantize", False))
    quantize_te = bool(model_config.get("quantize_te", quantize))
    qtype = str(model_config.get("qtype") or "qfloat8")
    qtype_te = str(model_config.get("qtype_te") or "qfloat8")
    if model_config.get("layer_offloading"):
        qtype = "float8" if qtype == "qfloat8" else qtype
        qtype_te = "float8" if qtype_te == "qfloat8" else qtype_te
    return (qtype if quantize else None, qtype_te if quantize_te else None)


def preview_vae_tiling(model_config: Mapping[str, Any]) -> bool:
    """``low_vram`` switches the VAE's tiled decode on for every preview
    (``generate_single_image``); the server never tiles."""
    return bool(model_config.get("low_vram", False))


def unreproduced_options(model_config: Mapping[str, Any]) -> list[str]:
    """ai-toolkit preview options of a Qwen-Image job that parity does not render."""
    problems = []
    for key in ("assistant_lora_path", "inference_lora_path"):
        if model_config.get(key):
            problems.append(
                f"model.{key} is set: ai-toolkit ran that LoRA while rendering the previews, "
                "which parity does not reproduce for Qwen-Image"
            )
    return problems
