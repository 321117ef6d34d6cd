"""The reference server's FLUX.1 model: its defaults and checkpoint.

runcomfy ai-toolkit-inference af4aec18 ``src/pipelines/flux_dev.py``: model id ``flux``,
base ``black-forest-labs/FLUX.1-dev`` loaded whole with ``FluxPipeline.from_pretrained``
(its own scheduler kept), ``resolution_divisor=16``, 25 steps and guidance 4.0 by default;
``guidance_scale`` goes unchanged to ``FluxPipeline`` (the guidance embedding), the
negative prompt too (unused: ``true_cfg_scale`` stays 1). The API rules every model shares
are in :mod:`parity.server`.
"""

from __future__ import annotations

from parity.family import ServerModel
from parity.flux.checkpoints import FLUX_DEV_HUB_ID

#: Width and height are floored to a multiple of this (``resolution_divisor``).
RESOLUTION_DIVISOR = 16

SERVER_MODELS: dict[str, ServerModel] = {
    "flux": ServerModel(
        "flux",
        "flux",
        default_steps=25,
        default_guidance=4.0,
        resolution_divisor=RESOLUTION_DIVISOR,
        transformer_hub_id=FLUX_DEV_HUB_ID,
        hub_id=FLUX_DEV_HUB_ID,
    ),
}
