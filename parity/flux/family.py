"""The FLUX.1 family (FLUX.1-dev LoRAs, ``arch: flux``) as one :class:`parity.family.Family`."""

from __future__ import annotations

from parity.family import Family
from parity.flux import aitk, pipeline, server
from parity.flux.checkpoints import FLUX_DEV_SCHEDULER, HUB_SCHEDULERS, TRANSFORMER_CLASS


def reference_model(arch_tag: str | None, name_or_path: str) -> str:
    """The server's model id for a FLUX.1 job: ``flux`` (FLUX.1-dev) for every one."""
    return "flux"


FLUX = Family(
    name="flux",
    label="FLUX.1",
    arches=("flux",),
    arch_flag="is_flux",
    arch_names="flux (or model.is_flux: true)",
    transformer_class=TRANSFORMER_CLASS,
    checkpoint_parts=(
        "vae/config.json",
        "text_encoder/config.json",
        "text_encoder_2/config.json",
        "tokenizer",
        "tokenizer_2",
    ),
    # ai-toolkit casts both text encoders to the training dtype after loading them.
    text_encoders=("text_encoder", "text_encoder_2"),
    # quantize_te quantizes T5; CLIP stays in the compute dtype.
    quantized_text_encoder="text_encoder_2",
    # Every Linear of the transformer, the embedders and the output layers included.
    quantize_exclude=(),
    server_models=server.SERVER_MODELS,
    hub_schedulers=HUB_SCHEDULERS,
    default_scheduler=FLUX_DEV_SCHEDULER,
    preview_scheduler=aitk.PREVIEW_SCHEDULER,
    diffusers_note=(
        "FluxPipeline, its transformer and scheduler compute the same on CPU at the "
        "server's pin 072d15ee, ai-toolkit's c9438378 and 0.42.1"
    ),
    lora_key_format="'transformer.<module>.lora_A.weight' / '.lora_B.weight'",
    reference_model=reference_model,
    preview_era=aitk.preview_era,
    preview_qtypes=aitk.preview_qtypes,
    # FluxPipeline runs true CFG only for true_cfg_scale > 1, which neither side sets.
    negative_prompt_used=lambda guidance: False,
    unreproduced_options=aitk.unreproduced_options,
    pipeline=pipeline,  # type: ignore[arg-type]  # a module implementing the protocol
)
