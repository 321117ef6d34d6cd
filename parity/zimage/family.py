"""The Z-Image family (Z-Image, Z-Image-Turbo, De-Turbo) as one :class:`parity.family.Family`."""

from __future__ import annotations

from parity.errors import NotZImageCheckpointError
from parity.family import Family
from parity.settings import SchedulerConfig
from parity.zimage import aitk, pipeline, server
from parity.zimage.checkpoints import KNOWN_HUB_SCHEDULER_SHIFTS, TRANSFORMER_CLASS
from parity.zimage.diffusers_era import diffusers_era

#: ai-toolkit's quantization keeps these transformer modules in full precision (fnmatch
#: on module names): 31 of the 37 linears of a 2-layer transformer are quantized.
QUANTIZE_EXCLUDE: tuple[str, ...] = (
    "t_embedder*",
    "cap_embedder*",
    "all_x_embedder*",
    "all_final_layer*",
    "siglip_embedder*",
)


def reference_model(arch_tag: str | None, name_or_path: str) -> str:
    """The server's model id for a Z-Image job: from ``arch``'s tag (``zimage:turbo``,
    ``zimage:deturbo``), else from the base checkpoint's name."""
    tag = arch_tag.lower() if arch_tag else None
    if tag == "deturbo":
        return "zimage_deturbo"
    if tag == "turbo":
        return "zimage_turbo"
    lowered = name_or_path.lower().replace("_", "-")
    if "de-turbo" in lowered or "deturbo" in lowered:
        return "zimage_deturbo"
    if "turbo" in lowered:
        return "zimage_turbo"
    return "zimage"


ZIMAGE = Family(
    name="zimage",
    label="Z-Image",
    arches=("zimage",),
    arch_names="zimage, zimage:turbo, zimage:deturbo",
    transformer_class=TRANSFORMER_CLASS,
    checkpoint_parts=("vae/config.json", "text_encoder/config.json", "tokenizer"),
    text_encoders=("text_encoder",),
    quantized_text_encoder="text_encoder",
    quantize_exclude=QUANTIZE_EXCLUDE,
    server_models=server.SERVER_MODELS,
    hub_schedulers={
        hub_id: SchedulerConfig(shift=shift) for hub_id, shift in KNOWN_HUB_SCHEDULER_SHIFTS.items()
    },
    default_scheduler=server.REPLACED_SCHEDULER,
    preview_scheduler=SchedulerConfig(shift=aitk.SCHEDULER_SHIFT),
    # ZImagePipeline changed its CFG threshold and its step count between releases.
    server_era=diffusers_era,
    lora_key_format="'diffusion_model.<module>.lora_A.weight' / '.lora_B.weight'",
    reference_model=reference_model,
    preview_era=aitk.era_for_version,
    preview_qtypes=aitk.preview_qtypes,
    # The installed ZImagePipeline runs CFG, and so uses the negative, for g > 0.
    negative_prompt_used=lambda guidance: guidance > 0,
    pipeline=pipeline,  # type: ignore[arg-type]  # a module implementing the protocol
    wrong_checkpoint_error=NotZImageCheckpointError,
)
