"""The model families parity knows, and which one a job, a request or a checkpoint is.

Every family is one :class:`parity.family.Family` from its own folder; this registry is
the one place that lists them.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from parity.errors import JobError, ModelError
from parity.family import Family, ServerModel
from parity.flux.family import FLUX
from parity.qwenimage.family import QWEN_IMAGE
from parity.settings import SchedulerConfig
from parity.wan.family import WAN21, WAN22
from parity.zimage.family import ZIMAGE

#: Every family, by name, in the order messages list them.
FAMILIES: dict[str, Family] = {f.name: f for f in (ZIMAGE, FLUX, QWEN_IMAGE, WAN21, WAN22)}

#: Every reference server model id parity renders, with its family's facts.
SERVER_MODELS: dict[str, ServerModel] = {
    model_id: model for f in FAMILIES.values() for model_id, model in f.server_models.items()
}


def family(name: str) -> Family:
    """The family named ``name`` (``"zimage"``, ``"flux"``); KeyError names the known ones."""
    try:
        return FAMILIES[name]
    except KeyError:
        raise KeyError(f"unknown model family {name!r}; known: {', '.join(FAMILIES)}") from None


def check_server_diffusers(spec: str | None) -> str | None:
    """``--server-diffusers`` as given, once every family with eras can place it.

    Raises
    ------
    ParityError
        A family whose pipeline changed between releases cannot place the release (not a
        version or commit, an unknown commit, a release without its pipeline).
    """
    for f in FAMILIES.values():
        f.server_era(spec)
    return spec


def family_of_model(model_id: str) -> Family:
    """The family of a server model id (``zimage_turbo`` -> Z-Image, ``flux`` -> FLUX.1)."""
    return FAMILIES[SERVER_MODELS[model_id].family]


def known_arches() -> str:
    """The arches of every family, for messages: ``"zimage, ...; flux (...)"``."""
    return "; ".join(f"{f.label}: {f.arch_names}" for f in FAMILIES.values())


def family_of_config(model: Mapping[str, Any], source: Path | str) -> Family:
    """The family of a job from its ``model`` section, as ai-toolkit picks its model class.

    ``model.arch`` (before ``:<tag>``) names it; without ``arch``, a legacy flag such as
    ``is_flux: true`` does.

    Raises
    ------
    JobError
        Neither names a family parity knows; the message lists those it knows.
    """
    arch = str(model.get("arch") or "")
    base = arch.split(":", 1)[0].lower()
    for f in FAMILIES.values():
        if base in f.arches or (not arch and f.arch_flag and model.get(f.arch_flag)):
            return f
    said = f"model.arch is {arch!r}" if arch else "model.arch is not set"
    raise JobError(f"{source}: {said}; parity handles {known_arches()}")


def hub_scheduler(hub_id: str) -> SchedulerConfig | None:
    """The scheduler config a hub checkpoint ships, when a family knows it."""
    for f in FAMILIES.values():
        if hub_id in f.hub_schedulers:
            return f.hub_schedulers[hub_id]
    return None


def family_of_checkpoint(transformer: str) -> Family | None:
    """The family whose transformer a checkpoint holds: by the ``_class_name`` of a local
    folder's ``transformer/config.json``, or by a server model's hub id; None if unknown."""
    config = Path(transformer, "transformer", "config.json")
    if config.is_file():
        try:
            name = json.loads(config.read_text(encoding="utf-8")).get("_class_name")
        except (OSError, ValueError, AttributeError):
            return None
        return next((f for f in FAMILIES.values() if f.transformer_class == name), None)
    for model in SERVER_MODELS.values():
        if transformer in (model.transformer_hub_id, model.hub_id):
            return FAMILIES[model.family]
    return None


def checkpoint_family(transformer: str) -> Family:
    """:func:`family_of_checkpoint`, for a caller that names no family.

    Raises
    ------
    ModelError
        No family knows the checkpoint (a hub id no server model loads, a folder without
        a transformer config of a known class): the caller must name the job's family.
    """
    found = family_of_checkpoint(transformer)
    if found is None:
        known = ", ".join(f"{f.label} ({f.transformer_class})" for f in FAMILIES.values())
        raise ModelError(
            f"{transformer}: no model family parity knows holds this checkpoint (known: "
            f"{known}); open it for a job, whose config names its family"
        )
    return found
