"""Benchmark: building the nightly dashboard (``parity report``) of a fleet's history,
``python -m bench --dashboard``: 500 jobs x 60 nightly runs of 12 previews each by default,
a history table generated for the purpose (nothing is rendered). It prints the build time
and the size of every page, and ends with
``dashboard: jobs=<n> runs=<n> rows=<n> build_s=<s> index_kb=<kb> job_page_kb_median=<kb>
job_page_kb_max=<kb> script_kb=<kb> total_mb=<mb>``."""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import time
from pathlib import Path
from typing import Any

#: Default shape of the generated history.
DASHBOARD_JOBS = 500
DASHBOARD_RUNS = 60
DASHBOARD_PREVIEWS = 12  # 3 checkpoints x 4 samples
QUICK_SHAPE = dict(jobs=20, runs=5, previews=4)

_CAUSES = ("cfg", "seed", "scheduler", "<lora_scale>", "sample_steps", "resolution")
_FAMILIES = (("zimage", "zimage_turbo"), ("zimage", "zimage"), ("flux", "flux"))


def generate_history(path: Path, *, jobs: int, runs: int, previews: int, seed: int = 0) -> int:
    """Write a history table of ``jobs`` x ``runs`` x ``previews`` rows, shaped as nightly
    fleet runs append them: mostly matches, some jobs with steady mismatches (one to
    three causes), and about one job in ten regressing in its last run. Returns rows."""
    import numpy as np
    import pandas as pd

    from parity.report.history import HISTORY_COLUMNS

    rng = np.random.default_rng(seed)
    n = jobs * runs * previews
    job_i = np.repeat(np.arange(jobs), runs * previews)
    run_i = np.tile(np.repeat(np.arange(runs), previews), jobs)
    prev_i = np.tile(np.arange(previews), jobs * runs)
    names = np.array([f"lora_{i:04d}" for i in range(jobs)], dtype=object)
    start = pd.Timestamp("2026-10-01T02:00:00Z")
    times = np.array(
        [(start + pd.Timedelta(days=r, minutes=int(m))).isoformat()
         for r, m in zip(range(runs), rng.integers(0, 90, runs), strict=True)],
        dtype=object,
    )  # fmt: skip
    # A job's previews: steady SSIM, a few steady mismatches, a regression at the end.
    base = rng.uniform(0.985, 0.999, size=(jobs, previews))
    steady_bad = rng.random((jobs, previews)) < 0.08
    regressed_job = rng.random(jobs) < 0.1
    ssim = base[job_i, prev_i] - rng.uniform(0, 0.003, n)
    ssim = np.where(steady_bad[job_i, prev_i], ssim - 0.35, ssim)
    last = run_i == runs - 1
    hit = last & regressed_job[job_i] & (prev_i % 3 == 0)
    ssim = np.where(hit, ssim - rng.uniform(0.1, 0.5, n), ssim)
    verdict = np.where(ssim >= 0.98, "match", "mismatch").astype(object)
    error = rng.random(n) < 0.002
    verdict[error] = "error"
    ssim[error] = np.nan
    cause_pick = rng.integers(0, len(_CAUSES), size=(jobs, previews, 2))
    causes = np.array(
        [";".join(sorted({_CAUSES[a], _CAUSES[b]})) for a, b in cause_pick.reshape(-1, 2)],
        dtype=object,
    ).reshape(jobs, previews)[job_i, prev_i]
    causes = np.where(verdict == "mismatch", causes, "")
    fam = [_FAMILIES[i % len(_FAMILIES)] for i in range(jobs)]
    run_names = np.array([f"nightly-{r:03d}" for r in range(runs)], dtype=object)
    df = pd.DataFrame(
        {
            "job": names[job_i],
            "step": 1000 * (prev_i // 4 + 1),
            "index": prev_i % 4,
            "run_time": times[run_i],
            "run_id": names[job_i] + "/" + run_names[run_i],
            "verdict": verdict,
            "causes": causes,
            "ssim": ssim,
            "psnr": 20 + 25 * np.nan_to_num(ssim),
            "ms_ssim": np.nan,
            "latent_distance": (1 - np.nan_to_num(ssim)) / 4,
            "lpips": np.nan,
            "explained": verdict == "mismatch",
            "family": np.array([f[0] for f in fam], dtype=object)[job_i],
            "base_model": np.array([f[1] for f in fam], dtype=object)[job_i],
            "run_dir": run_names[run_i] + "/" + names[job_i],
            "parity_version": "0.1.0",
            "parity_git": "0123456789ab",
            "preview": [f"previews/{1000 * (p // 4 + 1)}/{p % 4}.jpg" for p in prev_i],
            "render": [f"renders/{1000 * (p // 4 + 1)}/{p % 4}.png" for p in prev_i],
        },
        columns=list(HISTORY_COLUMNS),
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    df.to_parquet(path, index=False)
    return len(df)


def _kb(path: Path) -> float:
    return path.stat().st_size / 1024


def dashboard_benchmark(args: argparse.Namespace) -> int:
    """Generate the history, build the dashboard in this process, print what it cost."""
    from parity.report.dashboard import build_dashboard

    shape = (
        QUICK_SHAPE
        if args.quick
        else dict(jobs=DASHBOARD_JOBS, runs=DASHBOARD_RUNS, previews=DASHBOARD_PREVIEWS)
    )
    work = Path(args.work) / f"dashboard-{shape['jobs']}x{shape['runs']}x{shape['previews']}"
    history = work / "history.parquet"
    t0 = time.perf_counter()
    rows = generate_history(history, **shape)
    gen_s = time.perf_counter() - t0
    print(
        f"history: {shape['jobs']} jobs x {shape['runs']} runs x {shape['previews']} previews "
        f"= {rows} rows, {_kb(history) / 1024:.1f} MB parquet (generated in {gen_s:.1f} s)"
    )
    out = work / "dashboard"
    builds = []
    for _ in range(max(1, args.repeat)):
        t0 = time.perf_counter()
        board = build_dashboard(history, out)
        builds.append(time.perf_counter() - t0)
    build_s = statistics.median(builds)
    pages = [_kb(p) for p in board.job_pages]
    script_kb = _kb(board.script) if board.script else 0.0
    total_mb = sum(p.stat().st_size for p in out.rglob("*") if p.is_file()) / 2**20
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    result: dict[str, Any] = {
        "jobs": board.jobs,
        "runs": shape["runs"],
        "rows": rows,
        "regressed_jobs": board.regressed_jobs,
        "regressions": board.regressions,
        "build_s": round(build_s, 2),
        "builds_s": [round(b, 2) for b in builds],
        "index_kb": round(_kb(board.index), 1),
        "job_page_kb_median": round(statistics.median(pages), 1),
        "job_page_kb_max": round(max(pages), 1),
        "job_pages": len(pages),
        "script_kb": round(script_kb, 1),
        "total_mb": round(total_mb, 1),
        "peak_rss_mb": round(peak_mb),
    }
    print(
        f"built in {build_s:.2f} s (median of {len(builds)}; peak RSS {peak_mb:.0f} MiB): "
        f"{board.jobs} jobs, {board.regressed_jobs} regressed ({board.regressions} previews)"
    )
    print(f"index.html: {result['index_kb']} KB ({board.jobs} rows, paged in the browser)")
    print(
        f"job pages: {len(pages)}, median {result['job_page_kb_median']} KB, "
        f"max {result['job_page_kb_max']} KB"
    )
    print(f"{board.script.name if board.script else 'no script'}: {script_kb:.0f} KB, shared")
    print(f"whole folder: {total_mb:.1f} MB ({out})")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(
        "dashboard: "
        + " ".join(
            f"{k}={result[k]}"
            for k in (
                "jobs",
                "runs",
                "rows",
                "build_s",
                "index_kb",
                "job_page_kb_median",
                "job_page_kb_max",
                "script_kb",
                "total_mb",
            )
        )  # fmt: skip
    )
    return 0
