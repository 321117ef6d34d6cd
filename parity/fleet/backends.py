"""The three backends behind :class:`parity.fleet.driver.FleetRun`: one worker in the
driver's process (:class:`InProcessBackend`), local worker processes
(:class:`LocalBackend`) and Ray actors (:class:`RayBackend`). Each has ``name``,
``specs`` (one :class:`~parity.fleet.records.WorkerSpec` per slot) and ``start``,
``submit``, ``wait`` and ``close``; Ray is imported only when a Ray backend is made.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import signal
import socket
from collections.abc import Iterator
from typing import Any

from parity.errors import ParityError
from parity.fleet.records import Event, JobTask, WorkerLost, WorkerSpec
from parity.fleet.worker import FleetWorker, RayWorker, _local_worker_main, stream_events

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


def choose_backend(
    *,
    workers: int | None,
    ray: str | None,
    device: str | None,
    threads: int | None,
    signal_dir: str | None = None,
    log_level: int = logging.WARNING,
) -> InProcessBackend | LocalBackend | RayBackend:
    """The backend of ``--workers``, ``--ray``, ``--device`` and ``--threads``.

    With ``ray`` (an address, ``auto`` or ``local``): Ray actors (``workers`` of them,
    by default one per GPU or node). Else with ``workers``: that many local worker
    processes. Else one worker in this process. Without ``device``, local workers take
    :func:`parity.render.engine.default_device`.

    Raises
    ------
    ParityError
        Workers the machine or cluster cannot give (:func:`local_worker_specs`), or a
        Ray cluster that cannot be reached.
    """
    if ray is not None:
        return RayBackend(
            ray,
            workers=workers,
            device=device,
            threads=threads,
            signal_dir=signal_dir,
            log_level=log_level,
        )
    from parity.render.engine import default_device

    device = device or default_device()
    if workers is not None:
        specs = local_worker_specs(
            workers, device, threads, signal_dir=signal_dir, log_level=log_level
        )
        return LocalBackend(specs)
    return InProcessBackend(WorkerSpec("in-process", device, threads, signal_dir, log_level))


def execution_record(
    backend: InProcessBackend | LocalBackend | RayBackend, ray: str | None = None
) -> dict[str, Any]:
    """How a run executes, for summary.json: the backend, ``--ray`` and the workers."""
    return {
        "backend": backend.name,
        "ray_address": ray,
        "workers": [
            {"label": s.label, "device": s.device, "threads": s.threads} for s in backend.specs
        ],
    }


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
