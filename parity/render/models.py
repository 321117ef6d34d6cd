"""Where the weights of a render come from.

Jobs and the reference pipelines name their checkpoints by hub id
(``Tongyi-MAI/Z-Image-Turbo``); parity runs offline, so a :class:`ModelMap` maps those
ids to local diffusers folders. :func:`resolve_job_model` applies ai-toolkit's rules for
split checkpoints (``name_or_path`` + ``extras_name_or_path``) and
:func:`resolve_reference_model` the reference server's, both returning a
:class:`ModelSource`; :func:`load_pipeline` builds the family's diffusers pipeline
(``ZImagePipeline``, ``FluxPipeline``) from one.

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
    WrongCheckpointError,
)
from parity.families import SERVER_MODELS, checkpoint_family, family_of_checkpoint, hub_scheduler
from parity.family import Family
from parity.model_map import ModelMap
from parity.settings import SchedulerConfig

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelSource:
    """Where each part of a pipeline is loaded from.

    Attributes
    ----------
    transformer:
        Folder or hub id holding ``transformer/``.
    components:
        Folder or hub id providing ``vae/``, the text encoders and the tokenizers.
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
                "checkpoint); set model.extras_name_or_path to the checkpoint that "
                "provides the VAE, text encoders and tokenizers (e.g. the hub id of the base "
                "model it was cut from)"
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
    ``zimage_deturbo``, ``flux``...) to its checkpoints, each hub id going through
    ``model_map``. A model whose transformer comes from another checkpoint than its other
    parts (``wan22_14b_t2v``) takes those parts from the transformer's folder too when
    that folder is a full checkpoint (it has ``text_encoder/``) and their own hub id is
    not mapped.

    Raises
    ------
    ModelNotFoundError
        Unknown model id, or a mapped folder is missing.
    """
    if model_id not in SERVER_MODELS:
        raise ModelNotFoundError(
            f"unknown reference model {model_id!r}; known: {', '.join(SERVER_MODELS)}"
        )
    model = SERVER_MODELS[model_id]
    transformer = model_map.resolve(model.transformer_hub_id)
    components = model_map.resolve(model.hub_id)
    if (
        components == model.hub_id
        and model.hub_id != model.transformer_hub_id
        and _is_local(transformer)
        and os.path.isdir(os.path.join(transformer, "text_encoder"))
    ):
        # The transformer's folder is a full checkpoint (as a job's is read): the model's
        # other parts come from it unless its own hub id is mapped elsewhere.
        components = transformer
    return ModelSource(
        transformer=transformer,
        components=components,
        scheduler=_scheduler_of(transformer, components),
        label=model_id,
    )


def validate_checkpoint(source: ModelSource, family: Family | None = None) -> None:
    """Check the local folders of ``source`` hold what ``family``'s pipeline needs.

    ``family`` None: the family of the transformer's config
    (:func:`parity.families.checkpoint_family`). Hub
    ids are not checked (that would need the network).

    Raises
    ------
    ModelNotFoundError
        A needed file or folder is missing; the message names the folder and the part.
    WrongCheckpointError
        The transformer config is unreadable or of another family's class
        (the family's ``wrong_checkpoint_error``).
    """
    config_path = Path(source.transformer, "transformer", "config.json")
    if family is None and _is_local(source.transformer) and not config_path.is_file():
        raise ModelNotFoundError(
            f"{source.transformer}: missing transformer/config.json (not a diffusers "
            "checkpoint folder)"
        )
    family = family or checkpoint_family(source.transformer)
    error = family.wrong_checkpoint_error
    if _is_local(source.transformer):
        if not config_path.is_file():
            raise ModelNotFoundError(
                f"{source.transformer}: missing transformer/config.json (not a diffusers "
                f"{family.label} checkpoint folder)"
            )
        try:
            config = json.loads(config_path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise error(f"{config_path}: unreadable config: {exc}") from exc
        class_name = config.get("_class_name") if isinstance(config, dict) else None
        if class_name != family.transformer_class:
            other = family_of_checkpoint(source.transformer)
            what = f" (a {other.label} checkpoint)" if other is not None else ""
            raise error(
                f"{config_path}: _class_name is {class_name!r}{what}, expected "
                f"{family.transformer_class!r} for a {family.label} job"
            )
    if _is_local(source.components):
        for part in family.checkpoint_parts:
            path = Path(source.components, part)
            ok = path.is_file() if part.endswith(".json") else path.is_dir()
            if not ok:
                raise ModelNotFoundError(
                    f"{source.components}: missing {part} (needed for the VAE, text encoders "
                    "and tokenizers)"
                )


def checkpoint_scheduler(source: ModelSource) -> SchedulerConfig | None:
    """The scheduler the checkpoint ships (shift and dynamic shifting), or None when unknown.

    Reads ``scheduler/scheduler_config.json`` of a local folder, else uses the scheduler a
    family knows for that hub id (:func:`parity.families.hub_scheduler`).
    """
    ref = source.scheduler
    if ref is None:
        return None
    if not _is_local(ref):
        return hub_scheduler(ref)
    path = Path(ref, "scheduler", "scheduler_config.json")
    if not path.is_file():
        return None
    try:
        return SchedulerConfig.from_config(json.loads(path.read_text(encoding="utf-8")))
    except (OSError, ValueError, TypeError, AttributeError):
        logger.warning("%s: unreadable scheduler config", path)
        return None


def load_pipeline(
    source: ModelSource,
    *,
    family: Family | None = None,
    dtype: torch.dtype | str = "float32",
    device: torch.device | str = "cpu",
) -> Any:
    """Build ``family``'s diffusers pipeline from ``source`` (None: the family of its
    transformer: :func:`parity.families.checkpoint_family`); see the family's
    ``pipeline.load``.

    ``dtype``: a torch dtype or its name (``"float32"``, ``"bfloat16"``, ``"float16"``).
    """
    import torch

    torch_dtype = getattr(torch, dtype, None) if isinstance(dtype, str) else dtype
    if not isinstance(torch_dtype, torch.dtype):
        raise ValueError(f"unknown dtype {dtype!r}")
    family = family or checkpoint_family(source.transformer)
    return family.pipeline.load(
        source.transformer, source.components, source.scheduler, dtype=torch_dtype, device=device
    )
