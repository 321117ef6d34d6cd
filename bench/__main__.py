"""``python -m bench [options]``: the benchmarks' options, and which one runs.

Without ``--full-size``, ``--fleet`` or ``--dashboard`` it is the CPU benchmark
(:mod:`bench.cpu`);
``--variant`` (internal) runs one of its variants in this process and prints its
measurements as one JSON line.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import bench
from bench.common import ALL_VARIANTS
from bench.cpu import cpu_benchmark, run_variant
from bench.dashboard import dashboard_benchmark
from bench.fleet import fleet_benchmark
from bench.full_size import full_size_benchmark


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench", description=bench.__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="2 checkpoints x 2 samples, 2 steps")
    p.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    p.add_argument("--full-size", action="store_true", help="real Z-Image size, CUDA only")
    p.add_argument("--scale", choices=["full", "tiny"], default="full", help=argparse.SUPPRESS)
    p.add_argument("--models", default="turbo,base", help="full size: turbo,base (default)")
    p.add_argument("--size", type=int, default=None, help="full size: px (default 1024)")
    p.add_argument("--repeat", type=int, default=None, help="runs per variant (default 3)")
    p.add_argument("--json", metavar="OUT", help="write all measurements as JSON")
    p.add_argument(
        "--noise-floor",
        action="store_true",
        help="full size: one setting rendered with SDPA math vs its default kernel and TF32 "
        "off vs on, scored with parity's metrics (first model)",
    )
    p.add_argument(
        "--oom-fallback",
        action="store_true",
        help="full size, CUDA: cap GPU memory so a render runs out of it and the engine's "
        "offload fallback renders it (first model)",
    )
    p.add_argument(
        "--fleet",
        action="store_true",
        help="jobs per hour of 'parity run JOB... --workers N' with 1 and 2 workers (CPU)",
    )
    p.add_argument(
        "--dashboard",
        action="store_true",
        help="time and page sizes of 'parity report' over a generated history of 500 jobs x "
        "60 nightly runs (--quick: 20 x 5)",
    )
    p.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch/OpenMP threads in every variant (default 1; 0: leave as is)",
    )
    p.add_argument(
        "--work",
        default=str(Path(tempfile.gettempdir()) / "parity-bench"),
        help="folder for the job (reused) and run outputs",
    )
    p.add_argument("--base-model", default=None, help=argparse.SUPPRESS)
    p.add_argument("--variant", choices=ALL_VARIANTS, help=argparse.SUPPRESS)
    p.add_argument("--request", help=argparse.SUPPRESS)
    p.add_argument("--job", help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.variant:
        print(json.dumps(run_variant(args)), flush=True)
        return 0
    if args.repeat is None:
        args.repeat = 1 if args.quick else 3
    Path(args.work).mkdir(parents=True, exist_ok=True)
    if args.full_size:
        if args.quick:
            args.models = args.models.split(",")[0]
        return full_size_benchmark(args)
    if args.fleet:
        return fleet_benchmark(args)
    if args.dashboard:
        return dashboard_benchmark(args)
    if args.scale != "full":
        raise SystemExit("bench: --scale only applies with --full-size")
    return cpu_benchmark(args)


if __name__ == "__main__":
    sys.exit(main())
