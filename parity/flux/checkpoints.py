"""The FLUX.1 family's checkpoints: hub ids, the transformer class and the scheduler the
published checkpoint ships (``black-forest-labs/FLUX.1-dev``, ``scheduler/scheduler_config.json``
and ``transformer/config.json`` on the hub)."""

from __future__ import annotations

from parity.settings import DynamicShift, SchedulerConfig

#: Hub id of FLUX.1-dev, the base of the server's ``flux`` model and of the UI's preset.
FLUX_DEV_HUB_ID = "black-forest-labs/FLUX.1-dev"

#: ``_class_name`` of a FLUX.1 transformer's ``config.json``.
TRANSFORMER_CLASS = "FluxTransformer2DModel"

#: FLUX.1-dev's scheduler: FlowMatch Euler with dynamic shifting, base shift 0.5 at 256
#: image tokens, max shift 1.15 at 4096 (``shift`` 3.0 is unused with dynamic shifting).
FLUX_DEV_SCHEDULER = SchedulerConfig(
    shift=3.0,
    dynamic_shift=DynamicShift(
        base_shift=0.5, max_shift=1.15, base_image_seq_len=256, max_image_seq_len=4096
    ),
)

#: The scheduler config each hub checkpoint ships, for ids mapped to no local folder.
HUB_SCHEDULERS: dict[str, SchedulerConfig] = {FLUX_DEV_HUB_ID: FLUX_DEV_SCHEDULER}
