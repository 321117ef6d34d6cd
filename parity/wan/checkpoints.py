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

#: Modules of the original Wan naming (ai-toolkit saves Wan LoRAs in it) -> diffusers'
#: ``WanTransformer3DModel`` names, per block and outside the blocks.
_BLOCK_MODULES = {
    "self_attn.q": "attn1.to_q",
    "self_attn.k": "attn1.to_k",
    "self_attn.v": "attn1.to_v",
    "self_attn.o": "attn1.to_out.0",
    "cross_attn.q": "attn2.to_q",
    "cross_attn.k": "attn2.to_k",
    "cross_attn.v": "attn2.to_v",
    "cross_attn.o": "attn2.to_out.0",
    "ffn.0": "ffn.net.0.proj",
    "ffn.2": "ffn.net.2",
}
_OTHER_MODULES = {
    "head.head": "proj_out",
    "text_embedding.0": "condition_embedder.text_embedder.linear_1",
    "text_embedding.2": "condition_embedder.text_embedder.linear_2",
    "time_embedding.0": "condition_embedder.time_embedder.linear_1",
    "time_embedding.2": "condition_embedder.time_embedder.linear_2",
    "time_projection.1": "condition_embedder.time_proj",
}


def diffusers_module_name(name: str) -> str:
    """A LoRA module's name in the transformer: ``blocks.3.self_attn.q`` (the original
    Wan naming ai-toolkit saves) -> ``blocks.3.attn1.to_q``; a name already in diffusers'
    naming, or of no module listed, unchanged."""
    if name in _OTHER_MODULES:
        return _OTHER_MODULES[name]
    head, _, rest = name.partition(".")
    number, _, module = rest.partition(".")
    if head == "blocks" and number.isdigit() and module in _BLOCK_MODULES:
        return f"blocks.{number}.{_BLOCK_MODULES[module]}"
    return name


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
    # ai-toolkit's bf16 copy of the experts stands for the same checkpoint.
    WAN22_TRANSFORMER_HUB_ID: WAN22_SCHEDULER,
}
