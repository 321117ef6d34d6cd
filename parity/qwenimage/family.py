"""The Qwen-Image family (Qwen-Image and Qwen-Image-2512 LoRAs, ``arch: qwen_image``) as
one :class:`parity.family.Family`."""

from __future__ import annotations

from parity.family import Family
from parity.qwenimage import aitk, pipeline, server
from parity.qwenimage.checkpoints import HUB_SCHEDULERS, QWEN_IMAGE_SCHEDULER, TRANSFORMER_CLASS

#: The VAE's tile (``AutoencoderKLQwenImage.tile_sample_min_height`` / ``_width``), px.
VAE_TILE_SIZE = 256


def reference_model(arch_tag: str | None, name_or_path: str) -> str:
    """The server's model id for a Qwen-Image job: ``qwen_image_2512`` for
    ``arch: qwen_image:2512`` or a 2512 base checkpoint, else ``qwen_image``."""
    if (arch_tag or "").lower() == "2512" or "2512" in name_or_path:
        return "qwen_image_2512"
    return "qwen_image"


QWEN_IMAGE = Family(
    name="qwenimage",
    label="Qwen-Image",
    arches=("qwen_image",),
    arch_names="qwen_image, qwen_image:2512",
    transformer_class=TRANSFORMER_CLASS,
    checkpoint_parts=("vae/config.json", "text_encoder/config.json", "tokenizer"),
    # ai-toolkit casts the text encoder to the training dtype after loading it.
    text_encoders=("text_encoder",),
    quantized_text_encoder="text_encoder",
    quantize_exclude=aitk.QUANTIZE_EXCLUDE,
    server_models=server.SERVER_MODELS,
    hub_schedulers=HUB_SCHEDULERS,
    default_scheduler=QWEN_IMAGE_SCHEDULER,
    preview_scheduler=aitk.PREVIEW_SCHEDULER,
    diffusers_note=(
        "QwenImagePipeline, its transformer and scheduler compute the same on CPU at "
        "ai-toolkit's c9438378 and 0.42.1"
    ),
    lora_key_format="'diffusion_model.<module>.lora_A.weight' / '.lora_B.weight'",
    reference_model=reference_model,
    preview_era=aitk.preview_era,
    preview_qtypes=aitk.preview_qtypes,
    # QwenImagePipeline runs true CFG, and so uses the negative, for true_cfg_scale > 1.
    negative_prompt_used=lambda guidance: guidance > 1,
    unreproduced_options=aitk.unreproduced_options,
    preview_vae_tiling=aitk.preview_vae_tiling,
    vae_tile_size=VAE_TILE_SIZE,
    pipeline=pipeline,  # type: ignore[arg-type]  # a module implementing the protocol
)
