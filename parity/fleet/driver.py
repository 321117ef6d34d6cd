"""Many jobs in one run: planned and written by one driver, rendered by workers.

Data flow: job folders → :func:`plan_job` (each job read, its base model resolved, its
run folder chosen) → jobs grouped by base model and reference dtype → workers, one per
device, each holding one loaded :class:`parity.engine.RenderEngine` and calling
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
"""

from __future__ import annotations

import ipaddress
import json
import logging
import os
import signal
import socket
import sys
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from parity import __version__
from parity.errors import ParityError
from parity.fleet.records import (
    MAX_ATTEMPTS,
    POLL_S,
    DoneEvent,
    Event,
    FleetJob,
    JobTask,
    RowEvent,
    WorkerLost,
    WorkerSpec,
)
from parity.fleet.worker import (
    FleetWorker,
    RayWorker,
    _local_worker_main,
    stream_events,
)
from parity.results import (
    VERDICTS,
    ResultRow,
    Verdict,
    atomic_write_bytes,
    atomic_write_text,
    read_results,
    write_results,
)
from parity.run import progress_enabled, utc_now, write_run_report

log = logging.getLogger(__name__)


# ---------------------------------------------------------------------- backends


class InProcessBackend:
    """One worker in the driver's own process (several jobs, no ``--workers``)."""

    name = "in-process"

    def __init__(self, spec: WorkerSpec) -> None:
        self.specs = [spec]
        self._worker: FleetWorker | None = None
        self._streams: dict[int, Iterator[Event]] = {}

    def start(self, slot: int) -> None:
        if self._worker is None:
            self._worker = FleetWorker(self.specs[slot])

    def submit(self, slot: int, task: JobTask) -> None:
        assert self._worker is not None
        self._streams[slot] = stream_events(self._worker, task)

    def wait(self, busy: set[int], timeout: float) -> list[tuple[int, Event | WorkerLost]]:
        out: list[tuple[int, Event | WorkerLost]] = []
        for slot in busy:
            try:
                out.append((slot, next(self._streams[slot])))
            except StopIteration:
                out.append((slot, WorkerLost("the job ended without a result")))
        return out

    def close(self, *, abort: bool = False) -> None:
        self._streams.clear()


def local_worker_specs(
    workers: int,
    device: str,
    threads: int | None,
    *,
    signal_dir: str | None = None,
    log_level: int = logging.WARNING,
    cuda_count: int | None = None,
) -> list[WorkerSpec]:
    """The specs of ``workers`` local workers, each with its own device.

    On CUDA, worker i takes ``cuda:i`` (there must be as many devices); on CPU every
    worker gets ``threads`` torch threads, by default an equal share of the cores
    (``os.cpu_count() // workers``, at least 1).

    Raises
    ------
    ParityError
        ``workers`` < 1, more workers than CUDA devices, or one named GPU for several.
    """
    if workers < 1:
        raise ParityError(f"--workers must be at least 1, not {workers}")
    per_worker = threads or max(1, (os.cpu_count() or 1) // workers)
    if device.startswith("cuda"):
        if cuda_count is None:
            import torch

            cuda_count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if device != "cuda" and workers > 1:
            raise ParityError(
                f"--device {device} names one GPU but --workers {workers} gives each worker "
                "its own: use --device cuda (worker i takes cuda:i)"
            )
        if workers > cuda_count:
            raise ParityError(
                f"--workers {workers} needs {workers} CUDA devices, torch sees {cuda_count}: "
                f"use --workers {max(cuda_count, 1)}, or --device cpu"
            )
        devices = [f"cuda:{i}" for i in range(workers)] if device == "cuda" else [device]
    else:
        devices = [device] * workers
    return [
        WorkerSpec(f"worker {i + 1}", d, per_worker, signal_dir, log_level)
        for i, d in enumerate(devices)
    ]


class LocalBackend:
    """``--workers N``: N worker processes on this machine (``spawn`` start method)."""

    name = "local"

    def __init__(self, specs: list[WorkerSpec]) -> None:
        import multiprocessing

        self.specs = specs
        self._ctx = multiprocessing.get_context("spawn")
        self._procs: dict[int, tuple[Any, Any]] = {}

    def start(self, slot: int) -> None:
        self._stop(slot)
        parent, child = self._ctx.Pipe()
        proc = self._ctx.Process(
            target=_local_worker_main,
            args=(child, self.specs[slot]),
            name=f"parity-{self.specs[slot].label.replace(' ', '-')}",
            daemon=True,
        )
        proc.start()
        child.close()
        self._procs[slot] = (proc, parent)

    def submit(self, slot: int, task: JobTask) -> None:
        proc, conn = self._procs[slot]
        if not proc.is_alive():  # it died while idle: nothing was lost, start another
            self.start(slot)
            proc, conn = self._procs[slot]
        conn.send(task)

    def wait(self, busy: set[int], timeout: float) -> list[tuple[int, Event | WorkerLost]]:
        from multiprocessing.connection import wait

        handles: dict[Any, int] = {}
        for slot in busy:
            proc, conn = self._procs[slot]
            handles[conn] = slot
            handles[proc.sentinel] = slot
        out: list[tuple[int, Event | WorkerLost]] = []
        for slot in dict.fromkeys(handles[h] for h in wait(list(handles), timeout)):
            proc, conn = self._procs[slot]
            try:
                if conn.poll():  # events sent before an exit are still read first
                    out.append((slot, conn.recv()))
                    continue
            except (EOFError, OSError):
                pass
            proc.join(timeout=10)
            out.append((slot, WorkerLost(f"process {proc.pid} {_exit_text(proc.exitcode)}")))
        return out

    def _stop(self, slot: int, *, abort: bool = False) -> None:
        entry = self._procs.pop(slot, None)
        if entry is None:
            return
        proc, conn = entry
        if proc.is_alive() and not abort:
            try:
                conn.send(None)  # idle workers read it and exit
            except OSError:
                pass
            proc.join(timeout=10)
        if proc.is_alive():
            proc.terminate()
            proc.join(timeout=10)
        conn.close()

    def close(self, *, abort: bool = False) -> None:
        for slot in list(self._procs):
            self._stop(slot, abort=abort)


def _exit_text(code: int | None) -> str:
    if code is None:
        return "stopped answering"
    if code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with status {code}"


#: Ray's single-machine switch: with it, a cluster that ``ray.init`` starts binds its
#: servers to 127.0.0.1 only (Ray reads it when it is imported).
RAY_LOOPBACK_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_USAGE_STATS_ENABLED": "0"}


def import_ray(*, loopback: bool) -> Any:
    """Import Ray; for a cluster on this machine's loopback, first put Ray in its
    single-machine mode (else it would swap 127.0.0.1 for the machine's address)."""
    if loopback:
        for key, value in RAY_LOOPBACK_ENV.items():
            os.environ.setdefault(key, value)
    try:
        import ray
    except ImportError:
        raise ParityError(
            "--ray needs Ray, an optional extra of parity: pip install 'parity[ray]' "
            "(in a checkout: pip install -c parity/constraints.txt -e '.[ray]')"
        ) from None
    return ray


class RayBackend:
    """``--ray ADDRESS|auto|local``: Ray actors, one per GPU (``num_gpus=1``) or on CPU.

    ``local`` starts a one-machine cluster bound to 127.0.0.1 (stopped at the end);
    ``auto`` joins the cluster this machine is part of; anything else is the address
    of a running cluster (``host:port`` of its head, or ``ray://host:port``).
    """

    name = "ray"

    def __init__(
        self,
        address: str,
        *,
        workers: int | None,
        device: str | None,
        threads: int | None,
        signal_dir: str | None = None,
        log_level: int = logging.WARNING,
    ) -> None:
        self.address = address
        host_port = _head_address(address)
        ray = import_ray(loopback=address == "local" or _is_loopback(host_port))
        self._ray = ray
        if address == "local":
            ray.init(
                address="local",
                num_cpus=os.cpu_count() or 1,
                include_dashboard=False,
                _node_ip_address="127.0.0.1",
                logging_level=logging.WARNING,
            )
            node_ip = ray.util.get_node_ip_address()
            if node_ip != "127.0.0.1":
                ray.shutdown()
                raise ParityError(
                    f"the local Ray cluster would listen on {node_ip}, not only on 127.0.0.1 "
                    "(Ray was imported before parity asked for loopback): run parity in a "
                    "fresh process, or set RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0"
                )
        else:
            if host_port is not None:  # fail in seconds where nothing listens
                try:
                    socket.create_connection(host_port, timeout=10).close()
                except OSError as e:
                    raise ParityError(
                        f"cannot connect to the Ray cluster at {address}: nothing answers "
                        f"there ({e}); start one with 'ray start --head' or use --ray local"
                    ) from None
            try:
                ray.init(address=address, logging_level=logging.WARNING)
            except (ConnectionError, RuntimeError, ValueError) as e:
                raise ParityError(
                    f"cannot connect to the Ray cluster at {address!r}: {e}; a cluster with "
                    "token authentication (Ray's default) needs RAY_AUTH_MODE=token here and "
                    "its token (~/.ray/auth_token or RAY_AUTH_TOKEN)"
                ) from None
        try:
            self.specs, self._resources = _ray_worker_specs(
                ray, workers, device, threads, signal_dir, log_level
            )
        except BaseException:
            ray.shutdown()
            raise
        self._actor_class = ray.remote(RayWorker)
        self._actors: dict[int, Any] = {}
        self._streams: dict[int, Any] = {}

    def start(self, slot: int) -> None:
        old = self._actors.pop(slot, None)
        if old is not None:
            self._kill(old)
        options = dict(self._resources, max_restarts=0, max_task_retries=0)
        self._actors[slot] = self._actor_class.options(**options).remote(self.specs[slot])

    def submit(self, slot: int, task: JobTask) -> None:
        self._streams[slot] = self._actors[slot].run.remote(task)

    def wait(self, busy: set[int], timeout: float) -> list[tuple[int, Event | WorkerLost]]:
        ray = self._ray
        streams = {self._streams[slot]: slot for slot in busy}
        ready, _ = ray.wait(list(streams), num_returns=1, timeout=timeout)
        out: list[tuple[int, Event | WorkerLost]] = []
        for stream in ready:
            slot = streams[stream]
            try:
                event = ray.get(next(stream))
            except StopIteration:
                out.append((slot, WorkerLost("the actor's stream ended without a result")))
            except ray.exceptions.RayError as e:  # the actor, its process or node died
                reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
                out.append((slot, WorkerLost(f"Ray actor lost: {type(e).__name__}: {reason}")))
            else:
                out.append((slot, event))
        return out

    def _kill(self, actor: Any) -> None:
        try:
            self._ray.kill(actor)
        except Exception as e:  # already dead
            log.debug("ray.kill: %s", e)

    def close(self, *, abort: bool = False) -> None:
        for actor in self._actors.values():
            self._kill(actor)
        self._actors.clear()
        self._streams.clear()
        self._ray.shutdown()  # a local cluster stops; a remote one is left as it was


def _head_address(address: str) -> tuple[str, int] | None:
    """(host, port) of a ``host:port`` head address (None for local, auto, ray://)."""
    if address in ("local", "auto") or "://" in address:
        return None
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit():
        raise ParityError(
            f"--ray {address}: expected local, auto, host:port of a cluster's head, or "
            "ray://host:port"
        )
    return host.strip("[]"), int(port)


def _is_loopback(host_port: tuple[str, int] | None) -> bool:
    if host_port is None:
        return False
    host = host_port[0]
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _ray_worker_specs(
    ray: Any,
    workers: int | None,
    device: str | None,
    threads: int | None,
    signal_dir: str | None,
    log_level: int,
) -> tuple[list[WorkerSpec], dict[str, Any]]:
    """Actor specs and resources for the connected cluster."""
    resources = ray.cluster_resources()
    gpus = int(resources.get("GPU", 0))
    cpus = int(resources.get("CPU", 0))
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    node_cpus = max((int(n.get("Resources", {}).get("CPU", 0)) for n in nodes), default=0)
    use_gpu = device != "cpu" and gpus > 0
    if device and device.startswith("cuda") and gpus == 0:
        raise ParityError(f"--device {device} asks for GPUs but the Ray cluster has none")
    if device and device.startswith("cuda:"):
        raise ParityError("with --ray each actor gets its own GPU: use --device cuda")
    if workers is not None and workers < 1:
        raise ParityError(f"--workers must be at least 1, not {workers}")
    if use_gpu:
        count = workers or gpus
        if count > gpus:
            raise ParityError(
                f"--workers {count} asks for {count} GPU actors but the Ray cluster has "
                f"{gpus} GPUs: use --workers {gpus}, or --device cpu"
            )
        per = threads or max(1, cpus // gpus)
        return [
            WorkerSpec(f"ray actor {i + 1}", "cuda", per, signal_dir, log_level)
            for i in range(count)
        ], {"num_gpus": 1, "num_cpus": 1}
    count = workers or max(1, len(nodes))
    per = threads or max(1, min(cpus // count, node_cpus or 1))
    if node_cpus and per > node_cpus:
        raise ParityError(
            f"--threads {per}: no node of the Ray cluster has {per} CPUs (the largest has "
            f"{node_cpus})"
        )
    return [
        WorkerSpec(f"ray actor {i + 1}", "cpu", per, signal_dir, log_level) for i in range(count)
    ], {"num_cpus": per}


# --------------------------------------------------------------------- the driver


@dataclass
class JobState:
    """The driver's view of one job while the fleet runs."""

    job: FleetJob
    rows: dict[tuple[int, int], ResultRow] = field(default_factory=dict)
    run_info: dict[str, Any] | None = None
    attempts: int = 0
    status: str = "pending"  # pending, running, finished, failed
    error: str | None = None
    worker: str | None = None
    seconds: float = 0.0
    started_at: float | None = None

    @property
    def counts(self) -> dict[str, int]:
        out = {str(v): 0 for v in Verdict}
        for row in self.rows.values():
            out[str(row.verdict)] += 1
        return out

    @property
    def exit_code(self) -> int:
        ok = self.status == "finished" and self.rows
        return 0 if ok and all(r.verdict is Verdict.MATCH for r in self.rows.values()) else 1

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
        run_json = json.dumps(state.run_info) if state.run_info is not None else None
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
            state.run_info = json.loads(event.run_json)
            self._write_run_info(state, event.worker)
        write_results(out_dir, state.sorted_rows(), durable=False)
        self.progress.advance()

    def _done(self, state: JobState, event: DoneEvent) -> None:
        job = state.job
        _write_files(job.out_dir, event.files)
        rows = [ResultRow.from_json(d) for d in event.rows]
        state.rows = {(r.step, r.index): r for r in rows}
        write_results(job.out_dir, rows)
        state.run_info = json.loads(event.run_json)
        run_info = self._write_run_info(state, event.worker)
        corrected, request_files = {}, {}
        for name, data in event.files.items():
            parts = Path(name).parts
            if parts[0] != "corrected_requests":
                continue
            if len(parts) == 2:  # corrected_requests/<step>.json: a step's index
                corrected[int(Path(name).stem)] = json.loads(data)
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
            try:
                from parity.history import append_history

                append_history(job.history, rows, run_time=run_info["started"], run_id=job.run_id)
            except Exception as e:  # the run folder is complete; say so and go on
                self.progress.line(f"warning: {job.name}: history not updated: {e}")

    def _write_run_info(self, state: JobState, worker: str) -> dict[str, Any]:
        assert state.run_info is not None
        state.run_info["worker"] = worker
        state.run_info["attempts"] = state.attempts
        atomic_write_text(state.job.out_dir / "run.json", json.dumps(state.run_info, indent=2))
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
        info_path = out_dir / "run.json"
        if info_path.is_file():
            try:
                state.run_info = json.loads(info_path.read_text(encoding="utf-8"))
            except (OSError, ValueError) as e:
                raise ParityError(f"{info_path}: unreadable ({e}); start again") from None

    def counts(self) -> dict[str, int]:
        total = {str(v): 0 for v in VERDICTS}
        for state in self.states.values():
            for k, n in state.counts.items():
                total[k] += n
        return total

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
