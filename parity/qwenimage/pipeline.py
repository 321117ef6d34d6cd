"""Qwen-Image's diffusers pipeline (``QwenImagePipeline``): how parity loads, feeds and
calls it.

The family's :class:`parity.family.PipelineAdapter`. Both sides encode a prompt with the
pipeline's own ``encode_prompt`` (Qwen2.5-VL's hidden states under the chat template,
its system prefix dropped) and run true CFG: the guidance is ``true_cfg_scale``, and the
negative prompt's embeddings are passed with it. ``QwenImagePipeline`` runs CFG only for
``true_cfg_scale > 1`` with a negative given, so a guidance of 1 or less renders the
prompt alone on both sides.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from parity.pipeline_parts import load_from_parts

if TYPE_CHECKING:
    import torch
    from diffusers import QwenImagePipeline

logger = logging.getLogger(__name__)


def load(
    transformer_ref: str,
    components: str,
    scheduler_ref: str | None,
    *,
    dtype: torch.dtype,
    device: torch.device | str = "cpu",
) -> QwenImagePipeline:
    """Build a diffusers ``QwenImagePipeline``, progress bar disabled.

    A single checkpoint is loaded with ``QwenImagePipeline.from_pretrained`` (as the
    server loads ``Qwen/Qwen-Image``); a split one takes the
    ``QwenImageTransformer2DModel`` from ``transformer_ref`` and every other part from
    ``components``. The scheduler comes from ``scheduler_ref`` when it is another folder;
    renders replace it with the one their settings describe anyway. The parameters are
    those of :meth:`parity.family.PipelineAdapter.load` (``dtype``: a torch dtype).
    """
    from diffusers import (
        FlowMatchEulerDiscreteScheduler,
        QwenImagePipeline,
        QwenImageTransformer2DModel,
    )

    return load_from_parts(
        QwenImagePipeline,
        QwenImageTransformer2DModel,
        FlowMatchEulerDiscreteScheduler,
        transformer_ref,
        components,
        scheduler_ref,
        dtype=dtype,
        device=device,
    )


def encode(pipe: Any, text: str, device: Any) -> tuple[Any, Any]:
    """``(prompt_embeds, prompt_embeds_mask)`` of ``text``.

    ``encode_prompt`` gives no mask where every token is valid (always, for one prompt);
    an all-ones mask stands for it then, as ai-toolkit and the server both build one, and
    the pipeline drops it again before the transformer.
    """
    import torch

    with torch.no_grad():
        embeds, mask = pipe.encode_prompt(prompt=text, device=device, num_images_per_prompt=1)
    if mask is None:
        mask = torch.ones(embeds.shape[:2], dtype=torch.int64, device=embeds.device)
    return embeds, mask


def call_arguments(
    positive: tuple[Any, Any], negative: tuple[Any, Any] | None, guidance: float
) -> dict[str, Any]:
    """``prompt_embeds`` and its mask, ``true_cfg_scale`` and, when CFG runs, the
    negative's embeddings and mask (``guidance_scale`` is for guidance-distilled
    checkpoints, which Qwen-Image is not)."""
    embeds, mask = positive
    arguments: dict[str, Any] = {
        "prompt_embeds": embeds,
        "prompt_embeds_mask": mask,
        "true_cfg_scale": guidance,
    }
    if negative is not None:
        arguments["negative_prompt_embeds"], arguments["negative_prompt_embeds_mask"] = negative
    return arguments
