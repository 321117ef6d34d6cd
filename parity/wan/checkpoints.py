"""The Wan family's checkpoints: hub ids, the transformer class and the scheduler the
published text-to-video checkpoints ship (``scheduler/scheduler_config.json`` of
``Wan-AI/Wan2.1-T2V-1.3B-Diffusers``, ``-14B-Diffusers`` and
``Wan-AI/Wan2.2-T2V-A14B-Diffusers``)."""

from __future__ import annotations

from parity.settings import SchedulerConfig

#: Hub ids of the server's ``wan21_1b`` and ``wan21_14b`` checkpoints.
WAN21_1B_HUB_ID = "Wan-AI/Wan2.1-T2V-1.3B-Diffusers"
WAN21_14B_HUB_ID = "Wan-AI/Wan2.1-T2V-14B-Diffusers"
#: The server's ``wan22_14b_t2v``: VAE, text encoder and scheduler from the official
#: checkpoint, both experts from ai-toolkit's bf16 copy of it.
WAN22_HUB_ID = "Wan-AI/Wan2.2-T2V-A14B-Diffusers"
WAN22_TRANSFORMER_HUB_ID = "ai-toolkit/Wan2.2-T2V-A14B-Diffusers-bf16"

#: ``_class_name`` of a Wan transformer's ``config.json`` (both experts of Wan 2.2 too).
TRANSFORMER_CLASS = "WanTransformer3DModel"

#: The Wan 2.1 T2V checkpoints' scheduler: UniPC (bh2, order 2) predicting flow on flow
#: sigmas shifted by 3.0, the last sigma 0.
WAN21_SCHEDULER_CONFIG: dict[str, object] = {
    "_class_name": "UniPCMultistepScheduler",
    "beta_end": 0.02,
    "beta_schedule": "linear",
    "beta_start": 0.0001,
    "disable_corrector": [],
    "dynamic_thresholding_ratio": 0.995,
    "final_sigmas_type": "zero",
    "flow_shift": 3.0,
    "lower_order_final": True,
    "num_train_timesteps": 1000,
    "predict_x0": True,
    "prediction_type": "flow_prediction",
    "rescale_betas_zero_snr": False,
    "sample_max_value": 1.0,
    "solver_order": 2,
    "solver_p": None,
    "solver_type": "bh2",
    "steps_offset": 0,
    "thresholding": False,
    "timestep_spacing": "linspace",
    "trained_betas": None,
    "use_beta_sigmas": False,
    "use_exponential_sigmas": False,
    "use_flow_sigmas": True,
    "use_karras_sigmas": False,
}
#: Wan 2.2 A14B's file: the same, plus two keys at the values that change nothing here.
WAN22_SCHEDULER_CONFIG: dict[str, object] = {
    **WAN21_SCHEDULER_CONFIG,
    "time_shift_type": "exponential",
    "use_dynamic_shifting": False,
}

WAN21_SCHEDULER = SchedulerConfig.from_config(WAN21_SCHEDULER_CONFIG)
WAN22_SCHEDULER = SchedulerConfig.from_config(WAN22_SCHEDULER_CONFIG)

#: The scheduler config each hub checkpoint ships, for ids mapped to no local folder.
HUB_SCHEDULERS: dict[str, SchedulerConfig] = {
    WAN21_1B_HUB_ID: WAN21_SCHEDULER,
    WAN21_14B_HUB_ID: WAN21_SCHEDULER,
    WAN22_HUB_ID: WAN22_SCHEDULER,
}
