"""The Qwen-Image family's checkpoints: hub ids, the transformer class and the scheduler
the published checkpoints ship (``Qwen/Qwen-Image`` and ``Qwen/Qwen-Image-2512`` on the
hub, ``scheduler/scheduler_config.json`` and ``transformer/config.json``)."""

from __future__ import annotations

from parity.settings import DynamicShift, SchedulerConfig

#: Hub id of Qwen-Image, the base of the server's ``qwen_image`` model and the UI preset.
QWEN_IMAGE_HUB_ID = "Qwen/Qwen-Image"
#: Hub id of Qwen-Image-2512 (the server's ``qwen_image_2512``, ai-toolkit's
#: ``arch: qwen_image:2512``).
QWEN_IMAGE_2512_HUB_ID = "Qwen/Qwen-Image-2512"

#: ``_class_name`` of a Qwen-Image transformer's ``config.json``.
TRANSFORMER_CLASS = "QwenImageTransformer2DModel"

#: The scheduler Qwen/Qwen-Image ships: FlowMatch Euler with dynamic shifting (the
#: exponential time shift), base shift 0.5 at 256 image tokens, max shift 0.9 at 8192,
#: sigmas stretched so the last one is 0.02 (``shift_terminal``); ``shift`` 1.0 is unused.
QWEN_IMAGE_SCHEDULER = SchedulerConfig(
    shift=1.0,
    dynamic_shift=DynamicShift(
        base_shift=0.5, max_shift=0.9, base_image_seq_len=256, max_image_seq_len=8192
    ),
    options=(("shift_terminal", 0.02),),
)

#: The scheduler config each hub checkpoint ships, for ids mapped to no local folder.
HUB_SCHEDULERS: dict[str, SchedulerConfig] = {
    QWEN_IMAGE_HUB_ID: QWEN_IMAGE_SCHEDULER,
    QWEN_IMAGE_2512_HUB_ID: QWEN_IMAGE_SCHEDULER,
}
