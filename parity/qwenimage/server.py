"""The reference server's Qwen-Image models: their defaults and checkpoints.

runcomfy ai-toolkit-inference af4aec18 ``src/pipelines/qwen_image.py``: model ids
``qwen_image`` (``Qwen/Qwen-Image``) and ``qwen_image_2512`` (``Qwen/Qwen-Image-2512``),
each loaded whole with ``QwenImagePipeline.from_pretrained`` (its own scheduler kept),
``resolution_divisor=16``, 25 steps and guidance 4.0 by default. The request's guidance
goes unchanged to ``true_cfg_scale`` and its negative prompt as text (``""`` by default),
so true CFG runs for guidance above 1. ``qwen_image`` attaches the LoRA as a PEFT adapter
(``set_adapters``); ``qwen_image_2512`` fuses it into the weights at load
(``LoraMergeMethod.FUSE``). The API rules every model shares are in :mod:`parity.server`.
"""

from __future__ import annotations

from parity.family import ServerModel
from parity.qwenimage.checkpoints import QWEN_IMAGE_2512_HUB_ID, QWEN_IMAGE_HUB_ID

#: Width and height are floored to a multiple of this (``resolution_divisor``).
RESOLUTION_DIVISOR = 16

SERVER_MODELS: dict[str, ServerModel] = {
    "qwen_image": ServerModel(
        "qwen_image",
        "qwenimage",
        default_steps=25,
        default_guidance=4.0,
        resolution_divisor=RESOLUTION_DIVISOR,
        transformer_hub_id=QWEN_IMAGE_HUB_ID,
        hub_id=QWEN_IMAGE_HUB_ID,
    ),
    "qwen_image_2512": ServerModel(
        "qwen_image_2512",
        "qwenimage",
        default_steps=25,
        default_guidance=4.0,
        resolution_divisor=RESOLUTION_DIVISOR,
        transformer_hub_id=QWEN_IMAGE_2512_HUB_ID,
        hub_id=QWEN_IMAGE_2512_HUB_ID,
        fuses_lora=True,
    ),
}
