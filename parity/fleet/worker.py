"""The worker side: :class:`FleetWorker` runs jobs with one loaded engine and emits
events, whatever the backend; the bodies of a local worker process
(:func:`_local_worker_main`) and of a Ray actor (:class:`RayWorker`).

Spawned processes and Ray actors find those by module path (they are pickled by
reference), so they stay at the top level of this module.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import socket
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from parity.errors import ParityError
from parity.fleet.records import (
    SIGNAL_PAUSE_S,
    DoneEvent,
    Event,
    FailedEvent,
    JobTask,
    RowEvent,
    WorkerSpec,
)
from parity.job import Job
from parity.logs import configure_logging
from parity.model_map import ModelMap
from parity.render.models import ModelSource
from parity.results import ResultRow, atomic_write_text
from parity.run_info import RUN_FILE

log = logging.getLogger(__name__)


# ----------------------------------------------------------------------- workers


class FleetWorker:
    """Runs jobs on one device with one loaded engine at a time (any backend)."""

    def __init__(self, spec: WorkerSpec) -> None:
        self.spec = spec
        if spec.threads:
            import torch

            torch.set_num_threads(spec.threads)
        self._engine: Any = None
        self._signalled: dict[tuple[str, int], int] = {}
        threads = {None: "torch's threads", 1: "1 thread"}.get(
            spec.threads, f"{spec.threads} threads"
        )
        self.label = (
            f"{spec.label} ({spec.device}, {threads}, pid {os.getpid()} on {socket.gethostname()})"
        )

    def engine(self, job: Job, source: ModelSource) -> Any:
        """The engine of ``job`` on ``source`` (:func:`parity.run.open_job.open_engine`);
        a worker keeps one, so the previous is dropped."""
        from parity.run.open_job import open_engine

        kept = self._engine
        if kept is not None and kept.source == source and kept.family.name == job.family:
            return kept
        if kept is not None:
            kept.close()
            self._engine = None
            _free_device_memory(self.spec.device)
        self._engine = open_engine(job, source, device=self.spec.device)
        return self._engine

    def execute(self, task: JobTask, emit: Callable[[Event], None]) -> None:
        """Run ``task``'s job, emitting a RowEvent per finished row, then a DoneEvent;
        a FailedEvent when the job cannot run. Never raises for a job's problem."""
        from parity.run import run_job
        from parity.run.open_job import open_job

        try:
            # The model is the driver's (task.source); the job is opened for its folder.
            job = open_job(
                task.job_path,
                ModelMap.load(task.model_map),
                reference_model=task.reference_model,
                model_required=False,
            ).job
            engine = self.engine(job, task.source)
            with tempfile.TemporaryDirectory(prefix="parity-worker-") as tmp:
                work = Path(tmp) / task.name
                work.mkdir()
                if task.results_json is not None:
                    (work / "results.json").write_text(task.results_json, encoding="utf-8")
                if task.run_json is not None:
                    (work / RUN_FILE).write_text(task.run_json, encoding="utf-8")
                first = [True]
                sent: set[str] = set()

                def on_row(row: ResultRow) -> None:
                    run_json = None
                    if first[0]:
                        run_json = (work / RUN_FILE).read_text(encoding="utf-8")
                        first[0] = False
                    files = _row_files(work, row)
                    sent.update(files)
                    emit(RowEvent(task.name, row.to_json(), files, self.label, run_json))
                    self._signal(task)

                summary = run_job(
                    job,
                    engine,
                    work,
                    task.options,
                    resume=task.results_json is not None or task.run_json is not None,
                    device=engine.device,
                    recorded_options=task.recorded_options,
                    on_row=on_row,
                    report=False,
                    relative_to=Path(task.out_dir),
                    requests=task.requests,
                )
                # The rest of the run folder: corrected requests, copies of the requests...
                files = {
                    name: (work / name).read_bytes()
                    for name in _folder_files(work)
                    if name not in sent and name not in _DRIVER_FILES
                }
                emit(
                    DoneEvent(
                        task.name,
                        [r.to_json() for r in summary.rows],
                        files,
                        (work / RUN_FILE).read_text(encoding="utf-8"),
                        self.label,
                    )
                )
        except ParityError as e:  # the job cannot run (its model cannot load...)
            emit(FailedEvent(task.name, str(e), self.label))
        except Exception as e:  # a bug: this job's error, the worker goes on
            log.exception("job %s failed on %s", task.name, self.label)
            emit(FailedEvent(task.name, f"internal error: {type(e).__name__}: {e}", self.label))

    def _signal(self, task: JobTask) -> None:
        """The test hook of :data:`SIGNAL_DIR_ENV`: who runs this job, how far it got."""
        if not self.spec.signal_dir:
            return
        key = (task.name, task.attempt)
        self._signalled[key] = self._signalled.get(key, 0) + 1
        record = {
            "pid": os.getpid(),
            "attempt": task.attempt,
            "rows": self._signalled[key],
            "worker": self.label,
        }
        atomic_write_text(Path(self.spec.signal_dir) / f"{task.name}.json", json.dumps(record))
        time.sleep(SIGNAL_PAUSE_S)


#: Files of a run folder the driver writes itself from the rows and run.json it receives.
_DRIVER_FILES = frozenset({"results.json", "results.csv", RUN_FILE})


def _folder_files(work: Path) -> list[str]:
    """Every file under ``work``, relative to it (posix)."""
    return sorted(p.relative_to(work).as_posix() for p in work.rglob("*") if p.is_file())


def _row_files(work: Path, row: ResultRow) -> dict[str, bytes]:
    """The files a row names inside its run folder (renders, counterfactuals, the preview
    and served copies), as bytes by relative path."""
    names = [row.render, row.best_counterfactual, *(cf.image for cf in row.counterfactuals)]
    names += [row.preview, row.served.path if row.served is not None else None]
    files = {}
    for name in names:
        if name and name not in files and (work / name).is_file():
            files[name] = (work / name).read_bytes()
    return files


def _free_device_memory(device: str) -> None:
    import gc

    gc.collect()
    if device.startswith("cuda"):
        import torch

        torch.cuda.empty_cache()


def stream_events(worker: FleetWorker, task: JobTask) -> Iterator[Event]:
    """``worker.execute(task)`` as a generator of its events (the job runs in a thread)."""
    events: queue.Queue[Any] = queue.Queue()
    end = object()

    def target() -> None:
        try:
            worker.execute(task, events.put)
        finally:
            events.put(end)

    threading.Thread(target=target, name=f"parity-job-{task.name}", daemon=True).start()
    while (event := events.get()) is not end:
        yield event


def _local_worker_main(conn: Any, spec: WorkerSpec) -> None:
    """A local worker process: run the tasks received on ``conn`` until told to stop."""
    configure_logging(spec.log_level, process="worker")
    try:
        worker = FleetWorker(spec)
        while True:
            try:
                task = conn.recv()
            except EOFError:  # the driver is gone
                return
            if task is None:
                return
            worker.execute(task, conn.send)
    except KeyboardInterrupt:  # Ctrl-C reaches the whole process group; the driver reports
        return


class RayWorker:
    """The Ray actor: one :class:`FleetWorker` on the device Ray gave it."""

    def __init__(self, spec: WorkerSpec) -> None:
        configure_logging(spec.log_level, process="worker")
        self.worker = FleetWorker(spec)

    def run(self, task: JobTask) -> Iterator[Event]:
        # A generator method: Ray streams each event to the driver as it is yielded.
        yield from stream_events(self.worker, task)
