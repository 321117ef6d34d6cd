"""The driver of a fleet run: :class:`FleetRun` schedules the planned jobs onto a
backend's workers and alone writes what they send back (run folders, history,
summary.json); :func:`read_summary` reads a fleet folder's summary.json.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from collections import deque
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from parity import __version__
from parity.correct import CORRECTED_DIR, CorrectedIndex
from parity.errors import ParityError
from parity.fleet.backends import choose_backend, execution_record
from parity.fleet.records import (
    MAX_ATTEMPTS,
    POLL_S,
    SIGNAL_DIR_ENV,
    SUMMARY_FILE,
    DoneEvent,
    Event,
    FleetJob,
    JobTask,
    RowEvent,
    WorkerLost,
)
from parity.results import (
    ResultRow,
    atomic_write_bytes,
    atomic_write_text,
    exit_code,
    read_results,
    verdict_counts,
    write_results,
)
from parity.run import progress_enabled, utc_now, write_run_report
from parity.run_info import RunInfo

# --------------------------------------------------------------------- the driver


@dataclass
class JobState:
    """The driver's view of one job while the fleet runs."""

    job: FleetJob
    rows: dict[tuple[int, int], ResultRow] = field(default_factory=dict)
    run_info: RunInfo | None = None
    attempts: int = 0
    status: str = "pending"  # pending, running, finished, failed
    error: str | None = None
    worker: str | None = None
    seconds: float = 0.0
    started_at: float | None = None

    @property
    def counts(self) -> dict[str, int]:
        return verdict_counts(self.rows.values())

    @property
    def exit_code(self) -> int:
        return exit_code(self.rows.values()) if self.status == "finished" else 1

    def sorted_rows(self) -> list[ResultRow]:
        return sorted(self.rows.values(), key=lambda r: r.key)

    def to_json(self, root: Path | None) -> dict[str, Any]:
        out_dir = self.job.out_dir
        run_dir = os.path.relpath(out_dir, root) if root is not None else str(out_dir)
        return {
            "job": self.job.name,
            "job_path": self.job.job_path,
            "run_dir": run_dir,
            "status": self.status,
            "error": self.error,
            "counts": self.counts,
            "exit_code": self.exit_code if self.status in ("finished", "failed") else None,
            "attempts": self.attempts,
            "worker": self.worker,
            "model": self.job.source.label,
            "seconds": round(self.seconds, 3),
        }


class FleetProgress:
    """One bar over every preview of every job on a terminal; else a line per job."""

    def __init__(self, total: int, jobs: int, enabled: bool | None = None) -> None:
        self.jobs = jobs
        self.done = 0
        self.bar = None
        if progress_enabled(enabled):
            from tqdm import tqdm

            self.bar = tqdm(total=total, unit="preview", desc=f"parity: {jobs} jobs")

    def advance(self) -> None:
        if self.bar is not None:
            self.bar.update(1)

    def line(self, text: str) -> None:
        if self.bar is not None:
            self.bar.write(text, file=sys.stderr)
        else:
            print(text, file=sys.stderr, flush=True)

    def job_finished(self, state: JobState) -> None:
        self.done += 1
        where = f"-> {state.job.out_dir}  [{self.done}/{self.jobs} jobs]"
        if state.status == "failed":
            self.line(f"parity: {state.job.name}: FAILED: {state.error} {where}")
            return
        counts = state.counts
        self.line(
            f"parity: {state.job.name}: {counts['match']} match, {counts['mismatch']} mismatch, "
            f"{counts['error']} error in {state.seconds:.1f} s {where}"
        )
        if self.bar is not None:
            self.bar.set_postfix_str(f"{self.done}/{self.jobs} jobs")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


class FleetRun:
    """Schedules jobs onto a backend's workers and writes what they send back.

    Parameters
    ----------
    jobs:
        The planned jobs, in the order given.
    backend:
        ``InProcessBackend``, ``LocalBackend`` or ``RayBackend``.
    summary_path:
        Where summary.json goes (None: a one-job run writes none).
    resume:
        Start each job from the rows and run.json already in its run folder.
    """

    def __init__(
        self,
        jobs: list[FleetJob],
        backend: Any,
        *,
        summary_path: Path | None = None,
        resume: bool = False,
        summary_info: dict[str, Any] | None = None,
        progress: bool | None = None,
    ) -> None:
        self.backend = backend
        self.states = {job.name: JobState(job) for job in jobs}
        self.summary_path = summary_path
        self.summary_info = dict(summary_info or {})
        self.started = utc_now()
        self.finished: str | None = None
        self.pending: dict[Any, deque[str]] = {}
        for job in jobs:
            self.pending.setdefault(job.group, deque()).append(job.name)
            if resume:
                self._load(self.states[job.name])
        todo = sum(max(0, s.job.previews - len(s.rows)) for s in self.states.values())
        self.progress = FleetProgress(todo, len(jobs), progress)
        slots = range(len(backend.specs))
        self.in_flight: dict[int, str | None] = dict.fromkeys(slots)
        self.loaded: dict[int, Any] = dict.fromkeys(slots)
        self.started_slots: set[int] = set()

    # ---- running

    def run(self) -> list[JobState]:
        """Run every job; return their states (finished or failed) in the order given."""
        self._write_summary()
        completed = False
        try:
            while True:
                for slot, name in self.in_flight.items():
                    if name is None:
                        self._assign(slot)
                busy = {slot for slot, name in self.in_flight.items() if name is not None}
                if not busy:
                    break
                for slot, event in self.backend.wait(busy, POLL_S):
                    self._handle(slot, event)
            completed = True
        finally:
            self.progress.close()
            self.backend.close(abort=not completed)
            self.finished = utc_now()
            self._write_summary()
        return list(self.states.values())

    def _assign(self, slot: int) -> None:
        group = self._next_group(slot)
        if group is None:
            return
        name = self.pending[group].popleft()
        state = self.states[name]
        if slot not in self.started_slots:
            self.backend.start(slot)
            self.started_slots.add(slot)
        state.attempts += 1
        state.status = "running"
        state.started_at = time.perf_counter()
        self.in_flight[slot] = name
        self.loaded[slot] = group
        self.backend.submit(slot, self._task(state))

    def _next_group(self, slot: int) -> Any:
        """The group a free worker takes: its own while it has jobs, else the largest
        group no other worker is on, else the largest one."""
        waiting = [g for g, names in self.pending.items() if names]
        if not waiting:
            return None
        if self.loaded[slot] in waiting:
            return self.loaded[slot]
        elsewhere = {
            self.loaded[s] for s, name in self.in_flight.items() if name is not None and s != slot
        }
        free = [g for g in waiting if g not in elsewhere]
        return max(free or waiting, key=lambda g: len(self.pending[g]))

    def _task(self, state: JobState) -> JobTask:
        job = state.job
        results = json.dumps([r.to_json() for r in state.sorted_rows()]) if state.rows else None
        run_json = state.run_info.to_text() if state.run_info is not None else None
        return JobTask(
            name=job.name,
            job_path=job.job_path,
            reference_model=job.reference_model,
            source=job.source,
            options=job.options,
            recorded_options=job.recorded_options,
            out_dir=str(job.out_dir.absolute()),
            attempt=state.attempts,
            results_json=results,
            run_json=run_json,
            requests=job.requests,
            model_map=job.model_map,
        )

    # ---- events

    def _handle(self, slot: int, event: Event | WorkerLost) -> None:
        if isinstance(event, WorkerLost):
            self._lost(slot, event)
            return
        state = self.states[event.job]
        if isinstance(event, RowEvent):
            self._row(state, event)
            return
        self.in_flight[slot] = None
        state.seconds += time.perf_counter() - (state.started_at or time.perf_counter())
        state.worker = event.worker
        if isinstance(event, DoneEvent):
            self._done(state, event)
        else:
            state.status, state.error = "failed", event.error
        self.progress.job_finished(state)
        self._write_summary()

    def _row(self, state: JobState, event: RowEvent) -> None:
        out_dir = state.job.out_dir
        _write_files(out_dir, event.files)
        row = ResultRow.from_json(event.row)
        state.rows[(row.step, row.index)] = row
        if event.run_json is not None:
            state.run_info = RunInfo.from_json(json.loads(event.run_json))
            self._write_run_info(state, event.worker)
        write_results(out_dir, state.sorted_rows(), durable=False)
        self.progress.advance()

    def _done(self, state: JobState, event: DoneEvent) -> None:
        job = state.job
        _write_files(job.out_dir, event.files)
        rows = [ResultRow.from_json(d) for d in event.rows]
        state.rows = {(r.step, r.index): r for r in rows}
        write_results(job.out_dir, rows)
        state.run_info = RunInfo.from_json(json.loads(event.run_json))
        run_info = self._write_run_info(state, event.worker)
        corrected: dict[int, CorrectedIndex] = {}
        request_files: dict[str, Any] = {}
        for name, data in event.files.items():
            parts = Path(name).parts
            if parts[0] != CORRECTED_DIR:
                continue
            if len(parts) == 2:  # corrected_requests/<step>.json: a step's index
                corrected[int(Path(name).stem)] = CorrectedIndex.from_json(json.loads(data))
            else:  # corrected_requests/<step>/<k>.json: a request file
                request_files["/".join(parts[1:])] = json.loads(data)
        write_run_report(
            job.out_dir,
            rows,
            job_name=job.name,
            run_info=run_info,
            corrected_requests=corrected,
            request_files=request_files,
        )
        state.status = "finished"
        if job.history:
            from parity.report.history import append_run_history

            append_run_history(
                job.history,
                rows,
                run_time=run_info.started,
                run_id=job.run_id,
                warn=self.progress.line,
                job=job.name,
                run_dir=job.out_dir,
                run_info=run_info,
            )

    def _write_run_info(self, state: JobState, worker: str) -> RunInfo:
        assert state.run_info is not None
        state.run_info = replace(state.run_info, worker=worker, attempts=state.attempts)
        state.run_info.write(state.job.out_dir)
        return state.run_info

    def _lost(self, slot: int, lost: WorkerLost) -> None:
        name = self.in_flight[slot]
        label = self.backend.specs[slot].label
        self.in_flight[slot] = None
        self.loaded[slot] = None
        self.started_slots.discard(slot)  # a new worker takes the slot on its next job
        if name is None:
            return
        state = self.states[name]
        state.seconds += time.perf_counter() - (state.started_at or time.perf_counter())
        reason = f"{label} lost ({lost.reason})"
        if state.attempts < MAX_ATTEMPTS:
            kept = len(state.rows)
            self.progress.line(
                f"parity: {name}: {reason}; retrying (attempt {state.attempts + 1} of "
                f"{MAX_ATTEMPTS}), keeping the {kept} row{'' if kept == 1 else 's'} received"
            )
            state.status = "pending"
            self.pending[state.job.group].appendleft(name)
            return
        state.status = "failed"
        state.error = f"its worker died on each of {state.attempts} attempts; last: {reason}"
        state.worker = label
        self.progress.job_finished(state)
        self._write_summary()

    # ---- resume and summary

    def _load(self, state: JobState) -> None:
        out_dir = state.job.out_dir
        if (out_dir / "results.json").is_file():
            try:
                state.rows = {(r.step, r.index): r for r in read_results(out_dir)}
            except (OSError, ValueError) as e:
                raise ParityError(f"{out_dir / 'results.json'}: unreadable ({e})") from None
        if RunInfo.exists(out_dir):
            state.run_info = RunInfo.read(out_dir)

    def counts(self) -> dict[str, int]:
        return verdict_counts(row for state in self.states.values() for row in state.rows.values())

    @property
    def exit_code(self) -> int:
        states = list(self.states.values())
        return 0 if states and all(s.exit_code == 0 for s in states) else 1

    def summary(self) -> dict[str, Any]:
        root = self.summary_path.parent if self.summary_path is not None else None
        states = list(self.states.values())
        done = self.finished is not None and all(s.status in ("finished", "failed") for s in states)
        return {
            "parity_version": __version__,
            "started": self.started,
            "finished": self.finished if done else None,
            "out_dir": str(root.absolute()) if root is not None else None,
            **self.summary_info,
            "jobs_total": len(states),
            "jobs_finished": sum(s.status == "finished" for s in states),
            "jobs_failed": sum(s.status == "failed" for s in states),
            "counts": self.counts(),
            "exit_code": self.exit_code if done else None,
            "jobs": [s.to_json(root) for s in states],
        }

    def _write_summary(self) -> None:
        if self.summary_path is not None:
            atomic_write_text(self.summary_path, json.dumps(self.summary(), indent=2))


def start_fleet_run(
    jobs: list[FleetJob],
    *,
    root: Path | None,
    resume: bool,
    options: dict[str, Any],
    workers: int | None,
    ray: str | None,
    device: str | None,
    threads: int | None,
    log_level: int = logging.WARNING,
) -> FleetRun:
    """The run of ``jobs`` on the backend of ``--workers``, ``--ray``, ``--device`` and
    ``--threads`` (:func:`parity.fleet.backends.choose_backend`; a worker signal folder
    from :data:`SIGNAL_DIR_ENV`), not started yet.

    Its summary.json goes into ``root`` (None: a one-job run writes none) and records
    ``options`` (the run's options) and how the run executes. A backend whose run cannot
    be set up is closed before the error goes on (a Ray cluster started for it stops).
    """
    backend = choose_backend(
        workers=workers,
        ray=ray,
        device=device,
        threads=threads,
        signal_dir=os.environ.get(SIGNAL_DIR_ENV) or None,
        log_level=log_level,
    )
    try:
        return FleetRun(
            jobs,
            backend,
            summary_path=None if root is None else root / SUMMARY_FILE,
            resume=resume,
            summary_info={"options": options, "execution": execution_record(backend, ray)},
        )
    except BaseException:
        backend.close(abort=True)
        raise


def _write_files(out_dir: Path, files: dict[str, bytes]) -> None:
    """Write a worker's files into ``out_dir``, refusing any path that leaves it."""
    root = out_dir.resolve()
    for name, data in files.items():
        target = (out_dir / name).resolve()
        if Path(name).is_absolute() or not target.is_relative_to(root):
            raise ParityError(f"a worker sent a file outside the run folder {out_dir}: {name}")
        atomic_write_bytes(out_dir / name, data, durable=False)


def read_summary(path: Path) -> dict[str, Any]:
    """A fleet folder's summary.json."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise ParityError(f"{path}: unreadable ({e})") from None
    if not isinstance(data, dict) or not isinstance(data.get("jobs"), list):
        raise ParityError(f"{path}: not a parity summary (no list of jobs)")
    return data
