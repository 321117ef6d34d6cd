"""The Wan text-to-video families as :class:`parity.family.Family` records: Wan 2.1 T2V
(``arch: wan21``; the server's ``wan21_1b``, ``wan21_14b``) and Wan 2.2 A14B T2V
(``arch: wan22_14b``; ``wan22_14b_t2v``), which share a pipeline, a VAE and a text
encoder and differ in their experts, their LoRA files and the previews' shift.

Image-to-video (``wan21_i2v``, ``wan22_14b_i2v``) and Wan 2.2 5B are not here: the server
runs ai-toolkit's own pipeline code for them, so their jobs are refused as arches parity
does not know.
"""

from __future__ import annotations

from parity.family import Family
from parity.wan import aitk, pipeline, server
from parity.wan.checkpoints import (
    HUB_SCHEDULERS,
    TRANSFORMER_CLASS,
    WAN21_SCHEDULER,
    diffusers_module_name,
)

#: The VAE's tile (``AutoencoderKLWan.tile_sample_min_height`` / ``_width``), px.
VAE_TILE_SIZE = 256

_SHARED = dict(
    transformer_class=TRANSFORMER_CLASS,
    checkpoint_parts=("vae/config.json", "text_encoder/config.json", "tokenizer"),
    # ai-toolkit casts the text encoder to the training dtype after loading it.
    text_encoders=("text_encoder",),
    quantized_text_encoder="text_encoder",
    hub_schedulers=HUB_SCHEDULERS,
    default_scheduler=WAN21_SCHEDULER,
    diffusers_note=(
        "WanPipeline, its transformer and schedulers compute the same on CPU at "
        "ai-toolkit's c9438378 and 0.42.1"
    ),
    lora_key_format="'diffusion_model.<module>.lora_A.weight' / '.lora_B.weight'",
    preview_era=aitk.preview_era,
    preview_qtypes=aitk.preview_qtypes,
    # WanPipeline runs CFG, and so uses the negative, for guidance_scale > 1.
    negative_prompt_used=lambda guidance: guidance > 1,
    unreproduced_options=aitk.unreproduced_options,
    preview_vae_tiling=aitk.preview_vae_tiling,
    vae_tile_size=VAE_TILE_SIZE,
    pipeline_frames=aitk.pipeline_frames,
    # ai-toolkit casts each loaded transformer to the training dtype (``.to(dtype)``).
    transformer_cast=True,
    lora_module_name=diffusers_module_name,
    pipeline=pipeline,  # a module implementing the protocol
)


def wan21_reference_model(arch_tag: str | None, name_or_path: str) -> str:
    """The server's model id for a Wan 2.1 job: ``wan21_14b`` for a 14B base
    checkpoint, else ``wan21_1b``."""
    return "wan21_14b" if "14b" in name_or_path.lower() else "wan21_1b"


WAN21 = Family(
    name="wan21",
    label="Wan 2.1",
    arches=("wan21",),
    arch_names="wan21",
    server_models=server.WAN21_SERVER_MODELS,
    quantize_exclude=aitk.QUANTIZE_EXCLUDE_WAN21,
    preview_frames=aitk.wan21_preview_frames,
    preview_scheduler=aitk.PREVIEW_SCHEDULER_WAN21,
    reference_model=wan21_reference_model,
    **_SHARED,  # type: ignore[arg-type]
)

WAN22 = Family(
    name="wan22",
    label="Wan 2.2 14B",
    arches=("wan22_14b",),
    arch_names="wan22_14b (text to video)",
    server_models=server.WAN22_SERVER_MODELS,
    quantize_exclude=aitk.QUANTIZE_EXCLUDE_WAN22,
    preview_frames=aitk.wan22_preview_frames,
    preview_scheduler=aitk.PREVIEW_SCHEDULER_WAN22,
    reference_model=lambda arch_tag, name_or_path: "wan22_14b_t2v",
    experts=("transformer", "transformer_2"),
    expert_lora_suffixes=("_high_noise", "_low_noise"),
    **_SHARED,  # type: ignore[arg-type]
)
