"""What the driver and the workers of a fleet run pass each other: the planned jobs,
the tasks sent to workers, the workers' specs and the events they send back; and the
fleet's constants. Plain frozen dataclasses, picklable, with no imports of torch or Ray.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from parity.plan import UserRequest
from parity.render.models import ModelSource
from parity.run import RunOptions

#: Attempts per job: a job whose worker dies is retried once, on a new worker.
MAX_ATTEMPTS = 2

#: The combined summary of a multi-job run, in its output folder.
SUMMARY_FILE = "summary.json"

#: For tests: a folder where every worker writes ``<job name>.json``
#: (``{"pid", "attempt", "rows", "worker"}``) after each finished row, so that a test
#: can kill the process running a given job in the middle of it.
SIGNAL_DIR_ENV = "PARITY_FLEET_SIGNAL_DIR"
#: With that folder set, a worker waits this long after each signal before rendering on,
#: so that the job is still in flight when the test's kill lands (without it a tiny job
#: can finish first on a loaded machine, and nothing is left to retry).
SIGNAL_PAUSE_S = 2.0

#: Seconds the driver waits for an event before looking again (Ctrl-C is seen then).
POLL_S = 1.0


# --------------------------------------------------------------------- records


@dataclass(frozen=True)
class FleetJob:
    """One job of a fleet run, planned on the driver.

    Attributes
    ----------
    name:
        The job's name (``config.name``), unique in the run: its run folder's name.
    job_path:
        Absolute path of the job folder (or job file) as given.
    out_dir:
        Its run folder.
    source:
        Where its base model loads from; with ``options.reference_dtype``, its group.
    options:
        How it is rendered and judged.
    recorded_options:
        The command-line options kept in its run.json (for ``--resume``).
    previews:
        Previews of the selected steps (those already done included).
    history:
        History table to append its rows to, or None.
    run_id:
        Its run id in the history table.
    requests:
        The ``--request`` files that name its checkpoints, bound to its steps.
    """

    name: str
    job_path: str
    out_dir: Path
    source: ModelSource
    options: RunOptions
    recorded_options: dict[str, Any]
    previews: int
    reference_model: str | None = None
    history: str | None = None
    run_id: str = ""
    problems: tuple[str, ...] = ()
    requests: tuple[UserRequest, ...] = ()
    model_map: tuple[str, ...] = ()

    @property
    def group(self) -> tuple[ModelSource, str | None]:
        """Jobs of one group share a loaded model: same base model, same dtype."""
        return (self.source, self.options.reference_dtype)


@dataclass(frozen=True)
class JobTask:
    """What a worker needs to run one job: picklable, paths absolute.

    ``results_json`` / ``run_json`` are the rows and run.json the driver already has
    (a resumed run, or a retry after a worker died); the worker continues from them.
    """

    name: str
    job_path: str
    reference_model: str | None
    source: ModelSource
    options: RunOptions
    recorded_options: dict[str, Any]
    out_dir: str
    attempt: int
    results_json: str | None = None
    run_json: str | None = None
    requests: tuple[UserRequest, ...] = ()
    model_map: tuple[str, ...] = ()


@dataclass(frozen=True)
class WorkerSpec:
    """One worker: its label, its device and its torch threads (None: torch's choice)."""

    label: str
    device: str
    threads: int | None = None
    signal_dir: str | None = None
    log_level: int = logging.WARNING


@dataclass(frozen=True)
class RowEvent:
    """A finished row with its images (paths relative to the run folder)."""

    job: str
    row: dict[str, Any]
    files: dict[str, bytes]
    worker: str
    run_json: str | None = None  # on a job's first row: run.json as run_job wrote it


@dataclass(frozen=True)
class DoneEvent:
    """A finished job: its final rows, corrected requests and run.json."""

    job: str
    rows: list[dict[str, Any]]
    files: dict[str, bytes]
    run_json: str
    worker: str


@dataclass(frozen=True)
class FailedEvent:
    """A job that cannot run (its model cannot be loaded, its folder changed...)."""

    job: str
    error: str
    worker: str


@dataclass(frozen=True)
class WorkerLost:
    """The worker process or actor died; its job in flight is retried or fails."""

    reason: str


Event = RowEvent | DoneEvent | FailedEvent
