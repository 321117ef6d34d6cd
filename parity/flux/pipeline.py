"""FLUX.1's diffusers pipeline (``FluxPipeline``): how parity loads, feeds and calls it.

The family's :class:`parity.family.PipelineAdapter`. Both sides encode a prompt the same
way (CLIP's pooled output at 77 tokens, T5's last hidden state at 512 tokens, no
attention mask: ai-toolkit's ``encode_prompts_flux`` and ``FluxPipeline.encode_prompt``
compute the same), and neither passes a negative prompt that the pipeline uses: ai-toolkit
gives none, and the server's ``negative_prompt`` is ignored at ``true_cfg_scale`` 1.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from parity.pipeline_parts import load_from_parts

if TYPE_CHECKING:
    import torch
    from diffusers import FluxPipeline

logger = logging.getLogger(__name__)

#: T5 tokens of a prompt embedding (``max_sequence_length``), on both sides.
MAX_SEQUENCE_LENGTH = 512


def load(
    transformer_ref: str,
    components: str,
    scheduler_ref: str | None,
    *,
    dtype: torch.dtype,
    device: torch.device | str = "cpu",
) -> FluxPipeline:
    """Build a diffusers ``FluxPipeline``, progress bar disabled.

    A single checkpoint is loaded with ``FluxPipeline.from_pretrained`` (as the server
    loads ``black-forest-labs/FLUX.1-dev``); a split one takes the
    ``FluxTransformer2DModel`` from ``transformer_ref`` and every other part from
    ``components`` (as ai-toolkit does with a transformer-only ``name_or_path``). The
    scheduler comes from ``scheduler_ref`` when it is another folder; renders replace it
    with the one their settings describe anyway. The parameters are those of
    :meth:`parity.family.PipelineAdapter.load` (``dtype``: a torch dtype).
    """
    from transformers.utils import logging as transformers_logging

    # FluxPipeline's module imports CLIP's image processor for IP adapters, which warns
    # about torchvision; parity never uses it.
    verbosity = transformers_logging.get_verbosity()
    transformers_logging.set_verbosity_error()
    try:
        from diffusers import (
            FlowMatchEulerDiscreteScheduler,
            FluxPipeline,
            FluxTransformer2DModel,
        )
    finally:
        transformers_logging.set_verbosity(verbosity)

    return load_from_parts(
        FluxPipeline,
        FluxTransformer2DModel,
        FlowMatchEulerDiscreteScheduler,
        transformer_ref,
        components,
        scheduler_ref,
        dtype=dtype,
        device=device,
    )


def encode(pipe: Any, text: str, device: Any) -> tuple[Any, Any]:
    """``(prompt_embeds, pooled_prompt_embeds)`` of ``text`` (T5 and CLIP)."""
    import torch

    with torch.no_grad():
        embeds, pooled, _ = pipe.encode_prompt(
            prompt=text,
            prompt_2=None,
            device=device,
            num_images_per_prompt=1,
            max_sequence_length=MAX_SEQUENCE_LENGTH,
        )
    return embeds, pooled


def call_arguments(
    positive: tuple[Any, Any], negative: Any | None, guidance: float
) -> dict[str, Any]:
    """``prompt_embeds``, ``pooled_prompt_embeds`` and ``guidance_scale``: the value of the
    transformer's guidance embedding (FLUX.1-dev is guidance-distilled). No negative: true
    CFG (``true_cfg_scale`` > 1) is never run by either side."""
    embeds, pooled = positive
    return {"prompt_embeds": embeds, "pooled_prompt_embeds": pooled, "guidance_scale": guidance}
