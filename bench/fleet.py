"""Benchmark: jobs per hour of one multi-job ``parity run`` with 1 and with 2 local
workers (``--workers``), on the tiny model, CPU (``python -m bench --fleet``), ending with
``fleet ratio: jobs-per-hour workers2/workers1=<r>``."""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.common import environment, same_pixels, sample_config

#: Jobs of the fleet benchmark, and their shape (per job).
FLEET_JOBS = 4
FLEET_SHAPE = dict(checkpoints=3, samples=4, size=64, steps=8)
FLEET_QUICK_SHAPE = dict(checkpoints=1, samples=2, size=64, steps=2)
FLEET_WORKERS = (1, 2)


def build_fleet_jobs(work: Path, base_model: str, shape: dict[str, int]) -> list[Path]:
    """``FLEET_JOBS`` jobs of one shape on one base model, each with its own seeds."""
    from parity.testing.jobs import write_job

    jobs = []
    for i in range(FLEET_JOBS):
        name = (
            f"fleet{i}_{shape['checkpoints']}x{shape['samples']}_{shape['size']}px_"
            f"{shape['steps']}steps"
        )
        folder = work / name
        if not (folder / "bench.done").is_file():
            sample = sample_config(shape["samples"], shape["size"], shape["steps"], 4.0)
            sample["seed"] = 42 + 100 * i
            write_job(
                work,
                name=name,
                sample=sample,
                checkpoints={
                    10 * (c + 1): {"seed": 10 * i + c + 1} for c in range(shape["checkpoints"])
                },
                base_model=base_model,
            )
            (folder / "bench.done").write_text("ok\n", encoding="utf-8")
        jobs.append(folder)
    return jobs


def spawn_fleet(
    jobs: list[Path], workers: int, out: Path, args: argparse.Namespace
) -> tuple[float, float]:
    """``parity run JOB... --workers N`` in a fresh process: (wall seconds, CPU seconds of
    the process and its workers, user + system)."""
    env = dict(os.environ, CI="1")  # no progress bar, one line per finished job
    cmd = [sys.executable, "-m", "parity.cli", "run", *map(str, jobs), "--workers", str(workers)]
    cmd += ["--out", str(out), "--base-model", str(args.base_model), "--no-history"]
    if args.threads > 0:
        cmd += ["--threads", str(args.threads)]
        env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(args.threads)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode not in (0, 1):
        raise SystemExit(
            f"parity run --workers {workers} exited {proc.returncode}:\n{proc.stderr[-4000:]}"
        )
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu


_PROBE = (
    "import time, torch\n"
    "torch.set_num_threads(1)\n"
    "a = torch.randn(256, 256)\n"
    "t = time.perf_counter()\n"
    "for _ in range(2000):\n"
    "    a @ a\n"
    "print(time.perf_counter() - t)\n"
)


def parallel_capacity() -> float:
    """How much more CPU work two processes get done at once than one alone.

    A fixed one-thread matrix loop is timed alone, then in two processes started
    together: the capacity is ``2 * alone / together`` (2.0 on two idle cores, about 1.0
    where other work leaves room for one). It says what a ratio of 1 and 2 workers can
    reach on this machine at this moment.
    """

    def run(n: int) -> list[float]:
        procs = [
            subprocess.Popen([sys.executable, "-c", _PROBE], stdout=subprocess.PIPE, text=True)
            for _ in range(n)
        ]
        return [float(p.communicate()[0]) for p in procs]

    alone = run(1)[0]
    together = statistics.mean(run(2))
    return 2 * alone / together


def fleet_benchmark(args: argparse.Namespace) -> int:
    """Jobs per hour of one multi-job ``parity run`` with 1 and with 2 local workers.

    Both runs render the same ``FLEET_JOBS`` jobs of one base model, in fresh processes,
    interleaved across repeats (medians reported); wall time from process start to exit,
    so worker start-up and model loading count. Each worker has ``--threads`` torch
    threads (default 1), so 2 workers use twice the cores of 1.
    """
    from parity.testing.jobs import TINY_BASE

    args.base_model = args.base_model or str(TINY_BASE)
    work = Path(args.work)
    shape = FLEET_QUICK_SHAPE if args.quick else FLEET_SHAPE
    t0 = time.perf_counter()
    jobs = build_fleet_jobs(work, args.base_model, shape)
    print(f"fleet: {len(jobs)} jobs ({shape} each) ready in {time.perf_counter() - t0:.1f} s")
    env = environment(args)
    print(f"environment: {json.dumps(env)}", flush=True)
    runs = Path(tempfile.mkdtemp(prefix="fleet-", dir=work))
    walls: dict[int, list[float]] = {n: [] for n in FLEET_WORKERS}
    cpus: dict[int, list[float]] = {n: [] for n in FLEET_WORKERS}
    for r in range(args.repeat):
        for n in FLEET_WORKERS:  # interleaved, so load changes hit both alike
            wall, cpu = spawn_fleet(jobs, n, runs / f"workers{n}-{r}", args)
            walls[n].append(wall)
            cpus[n].append(cpu)
            print(
                f"repeat {r + 1}/{args.repeat} --workers {n}: {wall:.2f} s wall, {cpu:.2f} s CPU",
                flush=True,
            )
    identical = all(
        same_pixels(runs / "workers1-0" / job.name, runs / "workers2-0" / job.name) for job in jobs
    )
    per_hour = {n: len(jobs) * 3600 / statistics.median(w) for n, w in walls.items()}
    summary = {
        "environment": {**env, "load_average_end": os.getloadavg()},
        "jobs": len(jobs),
        "shape": shape,
        "threads_per_worker": args.threads,
        "walls_s": walls,
        "cpu_s": cpus,
        "jobs_per_hour": per_hour,
        "renders_identical": identical,
    }
    capacity = parallel_capacity()
    summary["parallel_capacity"] = capacity
    print(f"renders identical with 1 and 2 workers: {identical}")
    print(
        f"parallel capacity now: 2 processes do {capacity:.2f}x the CPU work of 1 "
        "(2.00 on two idle cores)"
    )
    print(f"medians over {args.repeat} run(s), wall time from process start:")
    for n in FLEET_WORKERS:
        print(
            f"  --workers {n}: {statistics.median(walls[n]):8.2f} s wall "
            f"{statistics.median(cpus[n]):8.2f} s CPU  {per_hour[n]:8.1f} jobs/hour"
        )
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=2), encoding="utf-8")
    print(f"fleet ratio: jobs-per-hour workers2/workers1={per_hour[2] / per_hour[1]:.3f}")
    return 0
