"""The Z-Image family's checkpoints: hub ids, the reference models' checkpoints, and
what the shipped scheduler configs and transformer class say (Tongyi-MAI/Z-Image,
Tongyi-MAI/Z-Image-Turbo, ostris/Z-Image-De-Turbo on the hub; runcomfy
ai-toolkit-inference ``src/pipelines/zimage*.py`` for which checkpoints each reference
model loads)."""

from __future__ import annotations

#: Hub checkpoints of the reference models.
ZIMAGE_HUB_ID = "Tongyi-MAI/Z-Image"
ZIMAGE_TURBO_HUB_ID = "Tongyi-MAI/Z-Image-Turbo"
ZIMAGE_DETURBO_HUB_ID = "ostris/Z-Image-De-Turbo"

#: Reference model id -> (hub id of the transformer, hub id of vae/text encoder/tokenizer).
REFERENCE_MODELS: dict[str, tuple[str, str]] = {
    "zimage": (ZIMAGE_HUB_ID, ZIMAGE_HUB_ID),
    "zimage_turbo": (ZIMAGE_TURBO_HUB_ID, ZIMAGE_TURBO_HUB_ID),
    "zimage_deturbo": (ZIMAGE_DETURBO_HUB_ID, ZIMAGE_TURBO_HUB_ID),
}

#: ``shift`` of the scheduler config shipped with hub checkpoints, used when no local
#: folder is mapped. De-Turbo has no entry: its users replace the scheduler (shift 3.0).
KNOWN_HUB_SCHEDULER_SHIFTS: dict[str, float] = {
    ZIMAGE_TURBO_HUB_ID: 3.0,
    ZIMAGE_HUB_ID: 6.0,
}

#: ``_class_name`` of a Z-Image transformer's ``config.json``.
TRANSFORMER_CLASS = "ZImageTransformer2DModel"
