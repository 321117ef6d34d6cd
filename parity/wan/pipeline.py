"""Wan's diffusers pipeline (``WanPipeline``): how parity loads, feeds and calls it, for
Wan 2.1 T2V (one transformer) and Wan 2.2 A14B T2V (a high-noise expert ``transformer``
and a low-noise expert ``transformer_2``, switched at the checkpoint's
``boundary_ratio``).

The families' :class:`parity.family.PipelineAdapter`. Both sides encode a prompt the same
way (UMT5's last hidden state over 512 tokens, zero past the prompt's own tokens:
ai-toolkit's encoder and ``WanPipeline.encode_prompt`` compute the same), and both pass
the guidance unchanged as ``guidance_scale``: ``WanPipeline`` runs CFG with the negative
prompt for guidance above 1 (Wan 2.2's low-noise expert at ``guidance_scale_2``, which
defaults to the same value on both sides).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from parity.pipeline_parts import load_from_parts

if TYPE_CHECKING:
    import torch
    from diffusers import WanPipeline

logger = logging.getLogger(__name__)

#: UMT5 tokens of a prompt embedding (``max_sequence_length`` of ``WanPipeline.__call__``).
MAX_SEQUENCE_LENGTH = 512


def _has_second_expert(components: str) -> bool:
    """Whether a local checkpoint's ``model_index.json`` lists ``transformer_2`` (with a
    class: Wan 2.1's lists it empty)."""
    index = Path(components, "model_index.json")
    if not index.is_file():
        return False
    entry = json.loads(index.read_text(encoding="utf-8")).get("transformer_2")
    return bool(entry and entry[0])


def load(
    transformer_ref: str,
    components: str,
    scheduler_ref: str | None,
    *,
    dtype: torch.dtype,
    device: torch.device | str = "cpu",
) -> WanPipeline:
    """Build a diffusers ``WanPipeline``, progress bar disabled.

    A single checkpoint is loaded with ``WanPipeline.from_pretrained`` (as the server
    loads ``Wan-AI/Wan2.1-T2V-1.3B-Diffusers``); a split one takes the transformer (and a
    two-expert checkpoint's ``transformer_2``) from ``transformer_ref`` and every other
    part from ``components``, as the server's ``wan22_14b_t2v`` does. The scheduler comes
    from ``scheduler_ref`` when it is another folder; renders replace it with the one
    their settings describe anyway. The parameters are those of
    :meth:`parity.family.PipelineAdapter.load` (``dtype``: a torch dtype).
    """
    from diffusers import UniPCMultistepScheduler, WanPipeline, WanTransformer3DModel

    two = _has_second_expert(components) or _has_second_expert(transformer_ref)
    return load_from_parts(
        WanPipeline,
        WanTransformer3DModel,
        UniPCMultistepScheduler,
        transformer_ref,
        components,
        scheduler_ref,
        dtype=dtype,
        device=device,
        experts=("transformer", "transformer_2") if two else ("transformer",),
    )


def encode(pipe: Any, text: str, device: Any) -> Any:
    """``prompt_embeds`` of ``text``: UMT5 over :data:`MAX_SEQUENCE_LENGTH` tokens."""
    import torch

    with torch.no_grad():
        embeds, _ = pipe.encode_prompt(
            prompt=text,
            do_classifier_free_guidance=False,
            max_sequence_length=MAX_SEQUENCE_LENGTH,
            device=device,
        )
    return embeds


def call_arguments(positive: Any, negative: Any | None, guidance: float) -> dict[str, Any]:
    """``prompt_embeds``, ``guidance_scale`` and, when CFG runs, the negative's
    ``negative_prompt_embeds``."""
    arguments: dict[str, Any] = {"prompt_embeds": positive, "guidance_scale": guidance}
    if negative is not None:
        arguments["negative_prompt_embeds"] = negative
    return arguments
