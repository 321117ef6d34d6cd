"""What several benchmarks share: the variants' names and letters, the job's sample
config, timers around parity's stages, thread count and peak memory, an engine around a
pipeline built in process, the results table and the environment record."""

from __future__ import annotations

import argparse
import contextlib
import functools
import importlib
import json
import os
import pkgutil
import platform
import resource
import statistics
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
VARIANTS = ("bare", "parity", "attribute", "server")
#: One API request: ``parity render`` (e) and a bare diffusers loop (f). CPU benchmark only.
REQUEST_VARIANTS = ("render", "bare-request")
ALL_VARIANTS = VARIANTS + REQUEST_VARIANTS
LETTERS = dict(zip(ALL_VARIANTS, "abcdef", strict=True))
#: The variant each one's ratio is taken against.
BASELINE = {v: "bare" for v in VARIANTS} | {v: "bare-request" for v in REQUEST_VARIANTS}

#: Sample config of the benchmark job: four samples, each differing from the server's
#: defaults in a different way, so that every preview is a mismatch with 1 to 4 causes.
SAMPLES = [
    {"prompt": "[trigger] a red cube on a table"},
    {"prompt": "[trigger] a blue sphere", "guidance_scale": 0},
    {"prompt": "[trigger] a green cone in a field", "network_multiplier": 0.5},
    {"prompt": "[trigger] a cat at night --cfg 2.5"},
]


# ------------------------------------------------------------------------ the job


def sample_config(n_samples: int, size: int, steps: int, guidance: float) -> dict[str, Any]:
    return {
        "sampler": "flowmatch",
        "sample_every": 10,
        "width": size,
        "height": size,
        "seed": 42,
        "walk_seed": True,
        "guidance_scale": guidance,
        "sample_steps": steps,
        "neg": "",
        "network_multiplier": 1.0,
        "samples": [dict(s) for s in SAMPLES[:n_samples]],
    }


# ---------------------------------------------------------------- instrumentation


class Timers:
    """Inclusive wall time and call counts of wrapped functions, by label."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self.calls: dict[str, int] = {}

    def wrap(self, owner: Any, name: str, label: str) -> None:
        original = getattr(owner, name)

        @functools.wraps(original)
        def timed(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                self.seconds[label] = self.seconds.get(label, 0.0) + time.perf_counter() - started
                self.calls[label] = self.calls.get(label, 0) + 1

        setattr(owner, name, timed)

    def get(self, label: str) -> float:
        return self.seconds.get(label, 0.0)


def _modules_of(package: Any) -> list[Any]:
    """``package`` and each of its modules (imported)."""
    names = sorted(m.name for m in pkgutil.iter_modules(package.__path__))
    return [package, *(importlib.import_module(f"{package.__name__}.{n}") for n in names)]


def _wrap_everywhere(timers: Timers, package: Any, name: str, label: str) -> None:
    """Wrap function ``name`` in every module of ``package`` that holds it: the package's
    modules call it by the name they imported (check_served calls load_rgb, for one)."""
    original = getattr(package, name)
    for module in _modules_of(package):
        if getattr(module, name, None) is original:
            timers.wrap(module, name, label)


def instrument_parity() -> Timers:
    """Wrap parity's stages so a ``parity run`` in this process reports where time goes."""
    import parity.compare as compare
    import parity.report as report
    import parity.run as run
    import parity.run.runner as runner
    from parity.render.engine import RenderEngine

    timers = Timers()
    # compare() calls compare_many(), so wrapping compare_many counts either call once.
    for name in ("compare_many", "jpeg_floor", "load_clip", "inspect_codec"):
        _wrap_everywhere(timers, compare, name, f"metrics.{name}")
    timers.wrap(runner, "attribute", "attribution")  # the runner calls it by this name
    # One alternate-kernel render and its scoring per case that needs a noise floor.
    timers.wrap(runner.Runner, "measure_case_floor", "noise_floor")
    for module in _modules_of(run):  # every module that writes results.json
        if hasattr(module, "write_results"):
            timers.wrap(module, "write_results", "io.results")
    timers.wrap(runner, "save_render", "io.render")
    _wrap_everywhere(timers, run, "write_corrected_requests", "io.corrected")
    _wrap_everywhere(timers, report, "write_report", "io.report")
    timers.wrap(RenderEngine, "render", "render")
    timers.wrap(RenderEngine, "_load", "load")
    timers.wrap(RenderEngine, "encode", "encode")
    return timers


def _undo_instrumentation() -> None:
    """Remove the wrappers of :func:`instrument_parity` (one process, several runs)."""
    import parity.compare as compare
    import parity.report as report
    import parity.run as run
    from parity.render.engine import RenderEngine

    owners = (*_modules_of(compare), *_modules_of(report), *_modules_of(run), RenderEngine)
    for owner in (*owners, run.Runner):
        for name, value in list(vars(owner).items()):
            inner = getattr(value, "__wrapped__", None)
            if inner is not None and callable(value):
                setattr(owner, name, inner)


def parity_timings(timers: Timers) -> dict[str, Any]:
    metrics = sum(v for k, v in timers.seconds.items() if k.startswith("metrics."))
    return {
        "metrics_s": metrics,
        "attribution_s": timers.get("attribution"),
        "render_s": timers.get("render"),
        "noise_floor_s": timers.get("noise_floor"),
        "noise_floor_renders": timers.calls.get("noise_floor", 0),
        "load_s": timers.get("load"),
        "breakdown_s": dict(sorted(timers.seconds.items())),
        "calls": dict(sorted(timers.calls.items())),
    }


def counterfactual_stats(out_dir: Path) -> dict[str, Any]:
    rows = json.loads((out_dir / "results.json").read_text(encoding="utf-8"))
    mismatched = [r for r in rows if r["verdict"] == "mismatch"]
    cf = sum(int(r.get("counterfactual_renders") or 0) for r in mismatched)
    return {
        "previews": len(rows),
        "mismatches": len(mismatched),
        "counterfactual_renders": cf,
        "renders_per_mismatch": cf / len(mismatched) if mismatched else 0.0,
    }


def set_threads(threads: int) -> None:
    import torch

    if threads > 0:
        torch.set_num_threads(threads)


def peak_memory_mib(device: str) -> float:
    if device.startswith("cuda"):
        import torch

        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


# --------------------------------------------------------- one engine, in process


def _drop_engine_adapter(pipe: Any) -> None:
    from parity.render.engine import LORA_ADAPTER

    with contextlib.suppress(ValueError, KeyError):
        pipe.delete_adapters(LORA_ADAPTER)


def _fresh_engine(pipe: Any, device: str, dtype_name: str) -> Any:
    """A RenderEngine around the built pipeline (no weights loaded from disk)."""
    from parity.render.engine import RenderEngine
    from parity.settings import SchedulerConfig

    engine = RenderEngine("(in process)", device=device, family="zimage")
    engine.adopt(pipe, dtype_name)
    engine.checkpoint_scheduler = SchedulerConfig(shift=float(pipe.scheduler.config.shift))
    return engine


def _reference_settings(job_dir: Path, engine: Any, device: str) -> Any:
    """The reference side of the job's first preview: what the server would render."""
    from parity.job import read_job
    from parity.plan import plan_cases

    job = read_job(job_dir)
    cases = plan_cases(
        job,
        job.steps,
        device=device,
        checkpoint_scheduler=engine.checkpoint_scheduler,
        reference_dtype=None,
    )
    return next(c.pair.reference for c in cases if c.pair is not None)


# ------------------------------------------------------------------------ results


def same_pixels(a_dir: Path, b_dir: Path, sub: str = "renders") -> bool:
    """Whether two runs rendered identical images and videos (the PNGs and the lossless
    WebPs under ``sub``, all of them, every frame)."""
    import numpy as np
    from PIL import Image, ImageSequence

    def frames(path: Path) -> list[np.ndarray]:
        with Image.open(path) as im:
            return [np.asarray(f.convert("RGB")) for f in ImageSequence.Iterator(im)]

    a_files = sorted(p for ext in ("png", "webp") for p in (a_dir / sub).rglob(f"*.{ext}"))
    b_files = sorted(p for ext in ("png", "webp") for p in (b_dir / sub).rglob(f"*.{ext}"))
    if len(a_files) != len(b_files):
        return False
    if not a_files:
        return False
    for path in a_files:
        other = b_dir / path.relative_to(a_dir)
        if not other.is_file():
            return False
        a, b = frames(path), frames(other)
        if len(a) != len(b) or not all(np.array_equal(x, y) for x, y in zip(a, b, strict=True)):
            return False
    return True


def median_of(results: list[dict[str, Any]], key: str) -> float:
    return statistics.median(float(r.get(key) or 0.0) for r in results)


def summarize(by_variant: dict[str, list[dict[str, Any]]], wall_key: str) -> dict[str, Any]:
    table = {}
    for variant, results in by_variant.items():
        wall = median_of(results, wall_key)
        table[variant] = {
            "wall_s": wall,
            "cpu_s": median_of(results, "cpu_s"),
            "load_s": median_of(results, "load_s"),
            "metrics_s": median_of(results, "metrics_s"),
            "attribution_s": median_of(results, "attribution_s"),
            "metrics_share": median_of(results, "metrics_s") / wall if wall else 0.0,
            "attribution_share": median_of(results, "attribution_s") / wall if wall else 0.0,
            "renders": results[0].get("renders"),
            "renders_per_mismatch": results[0].get("renders_per_mismatch"),
            "render_s": median_of(results, "render_s"),
            "noise_floor_s": median_of(results, "noise_floor_s"),
            "noise_floor_renders": results[0].get("noise_floor_renders") or 0,
            "peak_mib": median_of(results, "peak_mib"),
            "walls_s": [r.get(wall_key) for r in results],
        }
    # Each variant against its baseline: (a)-(d) against (a), (e)-(f) against (f).
    ratios = {v: table[v]["wall_s"] / table[BASELINE[v]]["wall_s"] for v in table}
    out = {"table": table, "ratios": ratios}
    if all(table[BASELINE[v]]["cpu_s"] for v in table):
        out["cpu_ratios"] = {v: table[v]["cpu_s"] / table[BASELINE[v]]["cpu_s"] for v in table}
    return out


def print_table(summary: dict[str, Any], title: str) -> None:
    print(title)
    print(
        f"{'variant':<16}{'wall s':>9}{'ratio':>8}{'cpu s':>8}{'load s':>8}{'metrics':>9}"
        f"{'attrib.':>9}{'renders':>9}{'cf/mism.':>9}{'peak MiB':>10}"
    )
    for variant, row in summary["table"].items():
        print(
            f"({LETTERS[variant]}) {variant:<12}{row['wall_s']:>9.2f}"
            f"{summary['ratios'][variant]:>8.3f}{row['cpu_s']:>8.2f}{row['load_s']:>8.2f}"
            f"{100 * row['metrics_share']:>8.1f}%{100 * row['attribution_share']:>8.1f}%"
            f"{row['renders'] or 0:>9}{row['renders_per_mismatch'] or 0:>9.2f}"
            f"{row['peak_mib']:>10.0f}"
        )


def noise_floor_line(label: str, row: dict[str, Any]) -> str:
    """What measuring noise floors cost a ``parity run`` (a results row of
    :func:`summarize`'s table, or one variant's measurements): its extra renders against
    all renders, and their seconds (each one's scoring included) against the seconds
    spent rendering."""
    renders = int(row.get("renders") or 0)
    extra = int(row.get("noise_floor_renders") or 0)
    seconds, rendering = float(row.get("noise_floor_s") or 0.0), float(row.get("render_s") or 0.0)
    return (
        f"noise floor {label}: {extra} extra renders of {renders} "
        f"({extra / renders if renders else 0.0:.3f}), {seconds:.2f} s of {rendering:.2f} s "
        f"rendering ({seconds / rendering if rendering else 0.0:.3f})"
    )


def ratios_line(ratios: dict[str, float]) -> str:
    return (
        f"ratios: parity/bare={ratios['parity']:.3f} attribute/bare={ratios['attribute']:.3f} "
        f"server/bare={ratios['server']:.3f}"
    )


def environment(args: argparse.Namespace) -> dict[str, Any]:
    from datetime import UTC, datetime

    import diffusers
    import torch
    import transformers

    env = {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
        "transformers": transformers.__version__,
        "cpus": os.cpu_count(),
        "threads": args.threads,
        "device": args.device,
        "load_average": os.getloadavg(),
    }
    if args.device.startswith("cuda"):
        props = torch.cuda.get_device_properties(torch.device(args.device))
        env["gpu"] = f"{props.name}, {props.total_memory / 2**30:.0f} GiB"
        env["cuda"] = torch.version.cuda
    return env
