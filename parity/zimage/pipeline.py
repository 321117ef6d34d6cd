"""Z-Image's diffusers pipeline (``ZImagePipeline``): how parity loads, feeds and calls it.

The family's :class:`parity.family.PipelineAdapter`: a single or split checkpoint
loaded as the reference server and ai-toolkit load it, one prompt embedding per text
(Qwen3 hidden states), and CFG's negative embeddings when the guidance runs it.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from parity.errors import NotZImageCheckpointError

if TYPE_CHECKING:
    import torch
    from diffusers import ZImagePipeline

logger = logging.getLogger(__name__)


def _text_encoder_class(components: str) -> Any:
    import transformers

    name = "Qwen3Model"
    index = Path(components, "model_index.json")
    if os.path.isdir(components) and index.is_file():
        try:
            entry = json.loads(index.read_text(encoding="utf-8")).get("text_encoder")
            if isinstance(entry, list) and len(entry) == 2 and entry[0] == "transformers":
                name = entry[1]
        except (OSError, ValueError, AttributeError):
            logger.warning("%s: unreadable model_index.json; using %s", index, name)
    cls = getattr(transformers, name, None)
    if cls is None:
        raise NotZImageCheckpointError(f"{index}: unknown text encoder class {name!r}")
    return cls


def load(
    transformer_ref: str,
    components: str,
    scheduler_ref: str | None,
    *,
    dtype: torch.dtype,
    device: torch.device | str = "cpu",
) -> ZImagePipeline:
    """Build a diffusers ``ZImagePipeline``, progress bar disabled.

    A single checkpoint (``transformer_ref == components``, its own scheduler or none) is
    loaded with ``ZImagePipeline.from_pretrained``. A split one loads
    ``ZImageTransformer2DModel`` from ``transformer_ref`` and the VAE (``AutoencoderKL``),
    text encoder (the transformers class that the components' ``model_index.json``
    names, ``Qwen3Model`` by default, as ``from_pretrained`` does) and tokenizer
    (``AutoTokenizer``) from ``components``; the ``FlowMatchEulerDiscreteScheduler`` from
    ``scheduler_ref``, or a default one (shift 3.0, no dynamic shifting) when there is
    none. Both ways give the same weights, so the same pixels.

    Parameters
    ----------
    transformer_ref, components, scheduler_ref:
        Folders or hub ids (see :class:`parity.render.models.ModelSource`).
    dtype:
        The torch dtype every part is loaded in.
    device:
        Device to move the pipeline to.
    """
    from diffusers import (
        AutoencoderKL,
        FlowMatchEulerDiscreteScheduler,
        ZImagePipeline,
        ZImageTransformer2DModel,
    )

    if transformer_ref == components and scheduler_ref in (None, components):
        kwargs: dict[str, Any] = {}
        if scheduler_ref is None:
            kwargs["scheduler"] = _default_scheduler()
        pipe = ZImagePipeline.from_pretrained(components, dtype=dtype, **kwargs)
    else:
        from transformers import AutoTokenizer

        transformer = ZImageTransformer2DModel.from_pretrained(
            transformer_ref, subfolder="transformer", dtype=dtype
        )
        vae = AutoencoderKL.from_pretrained(components, subfolder="vae", dtype=dtype)
        text_encoder = _text_encoder_class(components).from_pretrained(
            components, subfolder="text_encoder", dtype=dtype
        )
        tokenizer = AutoTokenizer.from_pretrained(components, subfolder="tokenizer")
        if scheduler_ref is None:
            scheduler = _default_scheduler()
        else:
            scheduler = FlowMatchEulerDiscreteScheduler.from_pretrained(
                scheduler_ref, subfolder="scheduler"
            )
        pipe = ZImagePipeline(
            scheduler=scheduler,
            vae=vae,
            text_encoder=text_encoder,
            tokenizer=tokenizer,
            transformer=transformer,
        )
    pipe.to(device)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _default_scheduler() -> Any:
    from diffusers import FlowMatchEulerDiscreteScheduler

    logger.info("no scheduler config; using FlowMatchEulerDiscreteScheduler(shift=3.0)")
    return FlowMatchEulerDiscreteScheduler(
        num_train_timesteps=1000, shift=3.0, use_dynamic_shifting=False
    )


def encode(pipe: Any, text: str, device: Any) -> Any:
    """The prompt embeddings of ``text`` (no CFG pass: a negative is encoded on its own)."""
    import torch

    with torch.no_grad():
        embeds, _ = pipe.encode_prompt(text, do_classifier_free_guidance=False, device=device)
    return embeds


def call_arguments(positive: Any, negative: Any | None, guidance: float) -> dict[str, Any]:
    """``prompt_embeds``, ``guidance_scale`` (CFG ``pos + g (pos - neg)``, run for ``g > 0``)
    and, when CFG runs, ``negative_prompt_embeds``."""
    return {
        "prompt_embeds": positive,
        "negative_prompt_embeds": negative,
        "guidance_scale": guidance,
    }
