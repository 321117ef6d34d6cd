"""ai-toolkit's rules for sampling a FLUX.1 preview, stated once.

ostris/ai-toolkit 27a03a91 (0.12.26) samples ``arch: flux`` (or ``model.is_flux: true``)
with its legacy ``StableDiffusion`` class (``toolkit/stable_diffusion_model.py``); the file
and line of every rule are in ``docs/families/flux.md``. The rules every family shares
(sample defaults, the floor to 8, qtype names) are in :mod:`parity.aitk`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from parity.family import Era, Guidance
from parity.flux.checkpoints import FLUX_DEV_SCHEDULER

#: The scheduler ai-toolkit samples with for ``sampler: flowmatch``: its own
#: ``CustomFlowMatchEulerDiscreteScheduler`` (diffusers' ``set_timesteps`` and ``step``)
#: from its built-in ``flux_config`` (``toolkit/sampler.py:78-88``), whatever the
#: checkpoint ships. Its values are FLUX.1-dev's.
PREVIEW_SCHEDULER = FLUX_DEV_SCHEDULER

#: The sizes a preview ends at: ai-toolkit floors to 8, then ``FluxPipeline`` floors to a
#: multiple of ``vae_scale_factor * 2`` (16) with a warning; the image has the floored size.
SIZE_MULTIPLE = 16


def preview_era(version: str | None) -> Era:
    """The preview semantics of an ai-toolkit release for FLUX.1.

    The same for every release parity knows: the sample's guidance goes unchanged into
    ``FluxPipeline``, which feeds it to the transformer's guidance embedding (FLUX.1-dev is
    guidance-distilled: no CFG, no ``g - 1``); sizes end at multiples of 16; N steps make N
    updates (``FluxPipeline`` builds ``linspace(1, 1/N, N)`` at every diffusers pin).
    """
    return Era(version, Guidance.RAW, SIZE_MULTIPLE, False, "FLUX.1: guidance embedding g, 16")


def preview_qtypes(model_config: Mapping[str, Any]) -> tuple[str | None, str | None]:
    """The qtypes ai-toolkit sampled a FLUX.1 job with, from its ``model`` section.

    Returns ``(transformer qtype or None, T5 qtype or None)``. ``quantize`` (default
    False) quantizes every ``Linear`` of the transformer with ``qtype`` (default
    ``qfloat8``; torchao ``float8`` with ``layer_offloading``); ``quantize_te`` (default:
    ``quantize``) every ``Linear`` of T5 with the same written ``qtype`` through
    optimum-quanto (``qtype_te`` is not read on this path); CLIP is never quantized.
    """
    quantize = bool(model_config.get("quantize", False))
    quantize_te = bool(model_config.get("quantize_te", quantize))
    written = str(model_config.get("qtype") or "qfloat8")
    qtype = "float8" if model_config.get("layer_offloading") and written == "qfloat8" else written
    return (qtype if quantize else None, written if quantize_te else None)


def unreproduced_options(model_config: Mapping[str, Any]) -> list[str]:
    """ai-toolkit preview options of a FLUX.1 job that parity does not render, each with why.

    They change how ai-toolkit rendered the previews, and the server has none of them.
    """
    problems = []
    if model_config.get("use_flux_cfg"):
        problems.append(
            "model.use_flux_cfg: true: ai-toolkit rendered the previews with its own "
            "FluxWithCFGPipeline (real CFG with the negative, the guidance embedding "
            "bypassed), which parity does not reproduce and the server does not have"
        )
    if model_config.get("attn_masking"):
        problems.append(
            "model.attn_masking: true: ai-toolkit masked the T5 embeddings of the previews "
            "by their padding, which parity does not reproduce and the server does not do"
        )
    for key in ("lora_path", "assistant_lora_path", "inference_lora_path"):
        if model_config.get(key):
            problems.append(
                f"model.{key} is set: ai-toolkit merged or ran that LoRA while rendering the "
                "previews, which parity does not reproduce for FLUX.1"
            )
    return problems
