"""The reference server's Wan text-to-video models: their defaults and checkpoints.

runcomfy ai-toolkit-inference af4aec18:

- ``src/pipelines/wan21.py``: ``wan21_1b`` and ``wan21_14b`` load the whole official
  checkpoint with ``WanPipeline.from_pretrained`` (its UniPC scheduler kept), floor sizes
  to 16, and attach the LoRA as one PEFT adapter (``set_adapters``);
- ``src/pipelines/wan22_t2v.py``: ``wan22_14b_t2v`` loads VAE, text encoder and scheduler
  from ``Wan-AI/Wan2.2-T2V-A14B-Diffusers`` and both experts from ai-toolkit's bf16 copy,
  floors sizes to 32, loads a LoRA pair (``transformer: high`` into ``transformer``,
  ``low`` into ``transformer_2``, each at its own scale) after ``enable_lora_hotswap``
  (rank padded to 32) and compiles both experts' blocks with ``torch.compile``.

Every one renders 41 frames at 16 fps unless the prompt says otherwise, 25 steps and
guidance 4.0 by default; the guidance goes unchanged to ``WanPipeline`` (CFG for g > 1).
The API rules every model shares are in :mod:`parity.server`.
"""

from __future__ import annotations

from parity.family import ServerModel
from parity.wan.checkpoints import (
    WAN21_1B_HUB_ID,
    WAN21_14B_HUB_ID,
    WAN22_HUB_ID,
    WAN22_TRANSFORMER_HUB_ID,
)

#: Frames and frame rate of a prompt that gives none (``default_num_frames``,
#: ``default_fps``).
DEFAULT_NUM_FRAMES = 41
DEFAULT_FPS = 16


def _wan(
    model_id: str, family: str, transformer: str, hub: str, divisor: int, **extra: bool
) -> ServerModel:
    return ServerModel(
        model_id,
        family,
        default_steps=25,
        default_guidance=4.0,
        resolution_divisor=divisor,
        transformer_hub_id=transformer,
        hub_id=hub,
        default_num_frames=DEFAULT_NUM_FRAMES,
        default_fps=DEFAULT_FPS,
        **extra,
    )


WAN21_SERVER_MODELS: dict[str, ServerModel] = {
    "wan21_1b": _wan("wan21_1b", "wan21", WAN21_1B_HUB_ID, WAN21_1B_HUB_ID, 16),
    "wan21_14b": _wan("wan21_14b", "wan21", WAN21_14B_HUB_ID, WAN21_14B_HUB_ID, 16),
}
WAN22_SERVER_MODELS: dict[str, ServerModel] = {
    "wan22_14b_t2v": _wan(
        "wan22_14b_t2v", "wan22", WAN22_TRANSFORMER_HUB_ID, WAN22_HUB_ID, 32, expert_loras=True
    ),
}
