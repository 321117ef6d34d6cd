"""Many jobs in one run: planned and written by one driver, rendered by workers.

Data flow: job folders → :func:`plan_job` (each job read, its base model resolved, its
run folder chosen) → jobs grouped by base model and reference dtype → workers, one per
device, each holding one loaded :class:`parity.render.engine.RenderEngine` and calling
:func:`parity.run.run_job` for every job it is given → events back to the driver → the
driver writes every run folder.

Who writes what. A worker renders a job into a private temporary folder and sends each
finished row with its images as soon as it is done (:class:`RowEvent`), then the
corrected requests and run.json (:class:`DoneEvent`). Only the driver writes run
folders: images, results.json/csv and run.json after every row (atomically, so a killed
driver keeps each row it received), report.html, the history append and summary.json.
Workers share nothing with the driver but the job folders and models they read, so the
same code runs on one machine and on a Ray cluster whose nodes see the jobs and models
at the same paths.

Workers. Three backends behind one scheduler (:class:`FleetRun`): ``in-process`` (the
driver's own process: several jobs without ``--workers``), ``local`` (``--workers N``:
N processes started with the ``spawn`` method, torch being unsafe to fork) and ``ray``
(``--ray``: one actor per GPU, or CPU actors). A worker keeps the model it loaded and
takes the next job of the same group while there is one; an idle worker takes the
largest group no other worker is on, else helps with the largest one. A worker that
dies loses only the job in flight: it is retried once on a new worker, resuming from
the rows the driver already has, and otherwise reported as that job's error.

Modules. :mod:`parity.fleet.records` (jobs, tasks, worker specs, events and the
constants), :mod:`parity.fleet.planning` (:func:`plan_job`,
:func:`check_unique_names`), :mod:`parity.fleet.worker` (:class:`FleetWorker`, the
bodies of a worker process and of a Ray actor), :mod:`parity.fleet.backends` (the
three backends, and :func:`choose_backend` of the command line's options),
:mod:`parity.fleet.driver` (:class:`FleetRun`, which writes the run folders) and
:mod:`parity.fleet.resume` (which jobs a run covers and where each writes, a resumed
run's included). Each imports only records and those named before it; this package
re-exports their public names.
"""

from parity.fleet.backends import (
    RAY_LOOPBACK_ENV,
    InProcessBackend,
    LocalBackend,
    RayBackend,
    choose_backend,
    execution_record,
    import_ray,
    local_worker_specs,
)
from parity.fleet.driver import (
    FleetProgress,
    FleetRun,
    JobState,
    read_summary,
    start_fleet_run,
)
from parity.fleet.planning import (
    check_unique_names,
    plan_job,
)
from parity.fleet.records import (
    MAX_ATTEMPTS,
    POLL_S,
    SIGNAL_DIR_ENV,
    SUMMARY_FILE,
    DoneEvent,
    Event,
    FailedEvent,
    FleetJob,
    JobTask,
    RowEvent,
    WorkerLost,
    WorkerSpec,
)
from parity.fleet.resume import (
    RunEntries,
    RunEntry,
    check_job_folders,
    is_fleet_folder,
    is_fleet_run,
    job_to_resume,
    run_entries,
)
from parity.fleet.worker import (
    FleetWorker,
    RayWorker,
    stream_events,
)

__all__ = [
    "start_fleet_run",
    "DoneEvent",
    "Event",
    "FailedEvent",
    "FleetJob",
    "JobTask",
    "MAX_ATTEMPTS",
    "POLL_S",
    "RowEvent",
    "SIGNAL_DIR_ENV",
    "SUMMARY_FILE",
    "WorkerLost",
    "WorkerSpec",
    "check_unique_names",
    "plan_job",
    "FleetWorker",
    "RayWorker",
    "stream_events",
    "InProcessBackend",
    "LocalBackend",
    "RAY_LOOPBACK_ENV",
    "RayBackend",
    "choose_backend",
    "execution_record",
    "import_ray",
    "local_worker_specs",
    "FleetProgress",
    "FleetRun",
    "JobState",
    "read_summary",
    "RunEntries",
    "RunEntry",
    "check_job_folders",
    "is_fleet_folder",
    "is_fleet_run",
    "job_to_resume",
    "run_entries",
]
