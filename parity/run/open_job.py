"""Opening a job: its folder read and its base model resolved (:func:`open_job`), and its
render engine (:func:`open_engine`), the same for every front door (``parity run`` of one
job or many, the fleet's planning and workers, the pytest plugin)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from parity.errors import ModelError
from parity.families import family
from parity.job import Job, read_job
from parity.model_map import ModelMap
from parity.render.models import ModelSource, resolve_job_model, validate_checkpoint

if TYPE_CHECKING:
    from parity.render.engine import RenderEngine


@dataclass(frozen=True)
class OpenedJob:
    """A job and where its base model loads from."""

    job: Job
    source: ModelSource | None
    #: Why the model could not be resolved (only with ``model_required=False``).
    model_problem: str | None = None


def open_job(
    path: str | Path,
    model_map: ModelMap,
    *,
    base_model: str | None = None,
    reference_model: str | None = None,
    validate: bool = True,
    model_required: bool = True,
) -> OpenedJob:
    """Read the job at ``path`` and resolve its model through ``model_map``.

    Parameters
    ----------
    path:
        The job folder (or job file).
    model_map:
        Hub id -> local folder, from every source (:meth:`ModelMap.load`); it also
        resolves a training adapter given as a hub path.
    base_model:
        ``--base-model``: the folder that stands for the job's ``model.name_or_path``.
    reference_model:
        ``--model``: the reference model id where the job does not say it.
    validate:
        Check that local folders hold what the job's family's pipeline needs.
    model_required:
        False: a model that cannot be resolved leaves ``source`` None and says why in
        ``model_problem`` (``parity inspect`` works without the weights).

    Raises
    ------
    ParityError
        The job cannot be read, or its model cannot be resolved (the message names the
        file and the fix).
    """
    job = read_job(path, reference_model=reference_model, model_map=model_map)
    mapping = model_map.with_base_model(job.name_or_path, base_model)
    try:
        source = resolve_job_model(job.name_or_path, job.extras_name_or_path, mapping)
        if validate:
            validate_checkpoint(source, family(job.family))
    except ModelError as e:
        if model_required:
            raise
        return OpenedJob(job, None, str(e))
    return OpenedJob(job, source)


def open_engine(job: Job, source: ModelSource, *, device: str | None = None) -> RenderEngine:
    """The render engine of ``job``: its base model ``source`` loaded as the job's family.

    Every front door (``parity run``, ``preview``, ``explain``, ``noise``, a fleet worker,
    the pytest plugin) opens a job's engine with it. The family is the job's, never the
    one guessed from the checkpoint's name (a hub id no family lists would be Z-Image).
    """
    from parity.render.engine import RenderEngine

    return RenderEngine(source, device=device, family=job.family)
