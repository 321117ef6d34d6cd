"""The reference server's Z-Image models: defaults, checkpoints and scheduler.

runcomfy ai-toolkit-inference ``src/pipelines/zimage*.py``: the three model ids, their
default steps and guidance, the floor to 32, and whether the pipeline replaces the
checkpoint's scheduler (FlowMatch shift 3.0) or keeps it (``zimage_turbo``). The API rules
every model shares are in :mod:`parity.server`.
"""

from __future__ import annotations

from parity.family import ServerModel
from parity.settings import SchedulerConfig
from parity.zimage.checkpoints import REFERENCE_MODELS

#: Width and height are floored to a multiple of this (BasePipeline.generate).
RESOLUTION_DIVISOR = 32
#: Scheduler shift when the server replaces the checkpoint's scheduler.
SCHEDULER_SHIFT = 3.0
#: The scheduler it installs then: FlowMatch, fixed shift.
REPLACED_SCHEDULER = SchedulerConfig(shift=SCHEDULER_SHIFT)


def _model(model_id: str, steps: int, guidance: float, *, replaces: bool) -> ServerModel:
    transformer, components = REFERENCE_MODELS[model_id]
    return ServerModel(
        model_id,
        "zimage",
        default_steps=steps,
        default_guidance=guidance,
        resolution_divisor=RESOLUTION_DIVISOR,
        transformer_hub_id=transformer,
        hub_id=components,
        replaced_scheduler=REPLACED_SCHEDULER if replaces else None,
    )


SERVER_MODELS: dict[str, ServerModel] = {
    "zimage": _model("zimage", 30, 4.0, replaces=True),
    "zimage_turbo": _model("zimage_turbo", 8, 1.0, replaces=False),
    "zimage_deturbo": _model("zimage_deturbo", 25, 3.0, replaces=True),
}
