"""Planning on the driver: each job read and resolved (:func:`plan_job`) before any
model loads, and run folders that would collide refused (:func:`check_unique_names`).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from parity.errors import ParityError
from parity.fleet.records import FleetJob
from parity.plan import UserRequest
from parity.run import RunOptions
from parity.run.open_job import OpenedJob

# ---------------------------------------------------------------------- planning


def plan_job(
    job_path: str | Path,
    *,
    out_dir: Path,
    options: RunOptions,
    recorded_options: dict[str, Any],
    opened: OpenedJob,
    reference_model: str | None = None,
    model_map: Sequence[str] = (),
    history: str | None = None,
    run_label: str | None = None,
    requests: Sequence[UserRequest] = (),
) -> FleetJob:
    """Everything a worker needs of one job (``opened``: read and its model resolved by
    :func:`parity.run.open_job.open_job`), without loading a model.

    Its history run id is ``<job name>/<run_label>``, by default the run folder's name
    (a multi-job run passes its own folder's name).

    Raises
    ------
    ParityError
        The job cannot be read, a step has no previews, or a local model folder is
        missing a part (the message names the file).
    """
    from parity.plan import select_steps

    job = opened.job
    if job.adapter_problem:  # every preview needs it: the job cannot run
        raise ParityError(job.adapter_problem)
    steps = select_steps(job, options.steps)
    source = opened.source
    assert source is not None  # opened with its model required
    previews = len({(p.step, p.index) for p in job.previews if p.step in steps})
    return FleetJob(
        name=job.name,
        job_path=str(Path(job_path).absolute()),
        out_dir=Path(out_dir),
        source=source,
        options=options,
        recorded_options=dict(recorded_options),
        previews=previews,
        reference_model=reference_model,
        history=history,
        run_id=f"{job.name}/{run_label or Path(out_dir).name}",
        problems=tuple(job.problems),
        requests=tuple(requests),
        model_map=tuple(model_map),
    )


def check_unique_names(named: Sequence[tuple[str, str]]) -> None:
    """Refuse two jobs of one name: their run folders ``DIR/<name>`` would collide.

    ``named`` holds (job name, job folder) pairs.
    """
    seen: dict[str, str] = {}
    for name, folder in named:
        if name in seen:
            raise ParityError(
                f"jobs {seen[name]} and {folder} are both named {name!r}; their run folders "
                "would collide: give each job its own config.name, or run them separately"
            )
        seen[name] = folder
