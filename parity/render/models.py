"""Where the Z-Image weights of a render come from.

Jobs and the reference pipelines name their checkpoints by hub id
(``Tongyi-MAI/Z-Image-Turbo``); parity runs offline, so a :class:`ModelMap` maps those
ids to local diffusers folders. :func:`resolve_job_model` applies ai-toolkit's rules for
split checkpoints (``name_or_path`` + ``extras_name_or_path``) and
:func:`resolve_reference_model` the reference server's, both returning a
:class:`ModelSource`; :func:`load_zimage_pipeline` builds a diffusers ``ZImagePipeline``
from one.

A *hub id* here is any string that is neither a mapped id nor an existing local folder;
it is handed to diffusers unchanged (which then downloads it, or fails when offline).
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from parity.errors import (  # noqa: F401 - re-exported: callers import them from here
    ModelError,
    ModelLoadError,
    ModelMapError,
    ModelNotFoundError,
    NotZImageCheckpointError,
)
from parity.model_map import ModelMap
from parity.zimage.checkpoints import (
    KNOWN_HUB_SCHEDULER_SHIFTS,
    REFERENCE_MODELS,
    TRANSFORMER_CLASS,
    ZIMAGE_TURBO_HUB_ID,
)

if TYPE_CHECKING:
    import torch
    from diffusers import ZImagePipeline

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelSource:
    """Where each part of a Z-Image pipeline is loaded from.

    Attributes
    ----------
    transformer:
        Folder or hub id holding ``transformer/``.
    components:
        Folder or hub id providing ``vae/``, ``text_encoder/`` and ``tokenizer/``.
    scheduler:
        Folder or hub id holding ``scheduler/``: the transformer's when it has one,
        else the components'; None when neither is known to have one.
    label:
        Human-readable name for reports, e.g. ``"Tongyi-MAI/Z-Image"``.
    """

    transformer: str
    components: str
    scheduler: str | None
    label: str

    @property
    def is_split(self) -> bool:
        """True when the transformer and the other components come from different places."""
        return self.transformer != self.components


def _is_local(ref: str) -> bool:
    return os.path.isdir(ref)


def _scheduler_of(transformer: str, components: str) -> str | None:
    if _is_local(transformer):
        if os.path.isdir(os.path.join(transformer, "scheduler")):
            return transformer
    elif transformer == components:
        return transformer
    if _is_local(components):
        return components if os.path.isdir(os.path.join(components, "scheduler")) else None
    return components


def resolve_job_model(
    name_or_path: str, extras_name_or_path: str | None, model_map: ModelMap
) -> ModelSource:
    """Resolve an ai-toolkit job's model the way ai-toolkit loads it.

    The transformer comes from ``name_or_path``. The VAE, text encoder and tokenizer come
    from ``extras_name_or_path`` when it is given, except when the ``name_or_path``
    folder itself has ``text_encoder/``: then it is a full checkpoint and the extras are
    ignored. Without extras, ``name_or_path`` must be a full checkpoint.

    Parameters
    ----------
    name_or_path:
        ``model.name_or_path`` of the job config (hub id or folder).
    extras_name_or_path:
        ``model.extras_name_or_path`` or None.
    model_map:
        Maps hub ids to local folders.

    Raises
    ------
    ModelNotFoundError
        A mapped folder is missing, or a local transformer-only folder is given without
        ``extras_name_or_path``.
    """
    transformer = model_map.resolve(name_or_path)
    extras = model_map.resolve(extras_name_or_path) if extras_name_or_path else None
    label = name_or_path
    if _is_local(transformer) and os.path.isdir(os.path.join(transformer, "text_encoder")):
        if extras is not None and extras != transformer:
            logger.info(
                "%s has text_encoder/; ignoring extras_name_or_path %s as ai-toolkit does",
                transformer,
                extras_name_or_path,
            )
        components = transformer
    elif extras is not None:
        components = extras
        if extras_name_or_path != name_or_path:
            label = f"{name_or_path} + {extras_name_or_path}"
    else:
        if _is_local(transformer):
            raise ModelNotFoundError(
                f"{transformer} has no vae/ or text_encoder/ (a transformer-only "
                f"checkpoint); set model.extras_name_or_path to the checkpoint that "
                f"provides the VAE, text encoder and tokenizer (e.g. {ZIMAGE_TURBO_HUB_ID})"
            )
        components = transformer
    return ModelSource(
        transformer=transformer,
        components=components,
        scheduler=_scheduler_of(transformer, components),
        label=label,
    )


def resolve_reference_model(model_id: str, model_map: ModelMap) -> ModelSource:
    """Resolve a reference server model id (``zimage``, ``zimage_turbo``,
    ``zimage_deturbo``) to its checkpoints, each hub id going through ``model_map``.

    Raises
    ------
    ModelNotFoundError
        Unknown model id, or a mapped folder is missing.
    """
    if model_id not in REFERENCE_MODELS:
        raise ModelNotFoundError(
            f"unknown reference model {model_id!r}; known: {', '.join(REFERENCE_MODELS)}"
        )
    transformer_id, components_id = REFERENCE_MODELS[model_id]
    transformer = model_map.resolve(transformer_id)
    components = model_map.resolve(components_id)
    return ModelSource(
        transformer=transformer,
        components=components,
        scheduler=_scheduler_of(transformer, components),
        label=model_id,
    )


def validate_checkpoint(source: ModelSource) -> None:
    """Check the local folders of ``source`` hold what a Z-Image pipeline needs.

    Hub ids are not checked (that would need the network).

    Raises
    ------
    ModelNotFoundError
        A needed file or folder is missing; the message names the folder and the part.
    NotZImageCheckpointError
        The transformer config is unreadable or not a ``ZImageTransformer2DModel``.
    """
    if _is_local(source.transformer):
        config_path = Path(source.transformer, "transformer", "config.json")
        if not config_path.is_file():
            raise ModelNotFoundError(
                f"{source.transformer}: missing transformer/config.json (not a diffusers "
                "Z-Image checkpoint folder)"
            )
        try:
            config = json.loads(config_path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise NotZImageCheckpointError(f"{config_path}: unreadable config: {exc}") from exc
        class_name = config.get("_class_name") if isinstance(config, dict) else None
        if class_name != TRANSFORMER_CLASS:
            raise NotZImageCheckpointError(
                f"{config_path}: _class_name is {class_name!r}, expected {TRANSFORMER_CLASS!r}"
            )
    if _is_local(source.components):
        for part, kind in (
            ("vae/config.json", "file"),
            ("text_encoder/config.json", "file"),
            ("tokenizer", "dir"),
        ):
            path = Path(source.components, part)
            ok = path.is_file() if kind == "file" else path.is_dir()
            if not ok:
                raise ModelNotFoundError(
                    f"{source.components}: missing {part} (needed for the VAE, text encoder "
                    "and tokenizer)"
                )


def checkpoint_scheduler_shift(source: ModelSource) -> float | None:
    """``shift`` of the checkpoint's own scheduler config, or None when unknown.

    Reads ``scheduler/scheduler_config.json`` of a local folder, else uses
    :data:`KNOWN_HUB_SCHEDULER_SHIFTS` for a hub id.
    """
    ref = source.scheduler
    if ref is None:
        return None
    if _is_local(ref):
        path = Path(ref, "scheduler", "scheduler_config.json")
        if not path.is_file():
            return None
        try:
            shift = json.loads(path.read_text(encoding="utf-8")).get("shift")
        except (OSError, ValueError, AttributeError):
            logger.warning("%s: unreadable scheduler config", path)
            return None
        return float(shift) if isinstance(shift, int | float) else None
    return KNOWN_HUB_SCHEDULER_SHIFTS.get(ref)


def _text_encoder_class(components: str) -> Any:
    import transformers

    name = "Qwen3Model"
    index = Path(components, "model_index.json")
    if _is_local(components) and index.is_file():
        try:
            entry = json.loads(index.read_text(encoding="utf-8")).get("text_encoder")
            if isinstance(entry, list) and len(entry) == 2 and entry[0] == "transformers":
                name = entry[1]
        except (OSError, ValueError, AttributeError):
            logger.warning("%s: unreadable model_index.json; using %s", index, name)
    cls = getattr(transformers, name, None)
    if cls is None:
        raise NotZImageCheckpointError(f"{index}: unknown text encoder class {name!r}")
    return cls


def load_zimage_pipeline(
    source: ModelSource,
    *,
    dtype: torch.dtype | str = "float32",
    device: torch.device | str = "cpu",
) -> ZImagePipeline:
    """Build a diffusers ``ZImagePipeline`` from ``source``, progress bar disabled.

    A single checkpoint is loaded with ``ZImagePipeline.from_pretrained``. A split one
    loads ``ZImageTransformer2DModel`` from ``source.transformer`` and the VAE
    (``AutoencoderKL``), text encoder (the transformers class that the components'
    ``model_index.json`` names, ``Qwen3Model`` by default, as ``from_pretrained`` does)
    and tokenizer (``AutoTokenizer``) from ``source.components``; the
    ``FlowMatchEulerDiscreteScheduler`` from ``source.scheduler``, or a default one
    (shift 3.0, no dynamic shifting) when there is none. Both ways give the same
    weights, so the same pixels.

    Parameters
    ----------
    source:
        Where to load from (see :func:`resolve_job_model`, :func:`resolve_reference_model`).
    dtype:
        Torch dtype or its name (``"float32"``, ``"bfloat16"``, ``"float16"``).
    device:
        Device to move the pipeline to.
    """
    import torch
    from diffusers import (
        AutoencoderKL,
        FlowMatchEulerDiscreteScheduler,
        ZImagePipeline,
        ZImageTransformer2DModel,
    )

    torch_dtype = getattr(torch, dtype) if isinstance(dtype, str) else dtype
    if not isinstance(torch_dtype, torch.dtype):
        raise ValueError(f"unknown dtype {dtype!r}")

    if not source.is_split and source.scheduler in (None, source.components):
        kwargs: dict[str, Any] = {}
        if source.scheduler is None:
            kwargs["scheduler"] = _default_scheduler()
        pipe = ZImagePipeline.from_pretrained(source.components, dtype=torch_dtype, **kwargs)
    else:
        from transformers import AutoTokenizer

        transformer = ZImageTransformer2DModel.from_pretrained(
            source.transformer, subfolder="transformer", dtype=torch_dtype
        )
        vae = AutoencoderKL.from_pretrained(source.components, subfolder="vae", dtype=torch_dtype)
        text_encoder = _text_encoder_class(source.components).from_pretrained(
            source.components, subfolder="text_encoder", dtype=torch_dtype
        )
        tokenizer = AutoTokenizer.from_pretrained(source.components, subfolder="tokenizer")
        if source.scheduler is None:
            scheduler = _default_scheduler()
        else:
            scheduler = FlowMatchEulerDiscreteScheduler.from_pretrained(
                source.scheduler, subfolder="scheduler"
            )
        pipe = ZImagePipeline(
            scheduler=scheduler,
            vae=vae,
            text_encoder=text_encoder,
            tokenizer=tokenizer,
            transformer=transformer,
        )
    pipe.to(device)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _default_scheduler() -> Any:
    from diffusers import FlowMatchEulerDiscreteScheduler

    logger.info("no scheduler config; using FlowMatchEulerDiscreteScheduler(shift=3.0)")
    return FlowMatchEulerDiscreteScheduler(
        num_train_timesteps=1000, shift=3.0, use_dynamic_shifting=False
    )
