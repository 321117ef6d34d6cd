"""Benchmark: what parity costs beyond the renders themselves.

Four ways of rendering the same ai-toolkit job through the reference semantics:

a. ``bare``: a plain diffusers loop. One ``ZImagePipeline``, each checkpoint's LoRA loaded
   once with ``load_lora_weights``, every prompt of the job's as-configured request
   (:func:`parity.sides.as_configured_request`, :func:`parity.server.server_prompts`)
   encoded once and rendered, PNGs saved. No comparison.
b. ``parity``: ``parity run --no-attribution --no-history`` on the job.
c. ``attribute``: ``parity run --no-history`` (counterfactual renders for mismatches).
d. ``server``: a naive per-request flow like the reference server's: one request per
   preview, each one unloading and reloading the LoRA and encoding its prompt strings
   again (no embedding cache); model CPU offload on CUDA only.

And two ways of rendering one API request, the job's as-configured request for its last
checkpoint (:func:`parity.sides.as_configured_request`, LoRA path made absolute), written
to ``request.json``:

e. ``render``: ``parity render request.json --allow-outside-paths``.
f. ``bare-request``: a plain diffusers loop over that request's prompts with the server's
   semantics (:func:`parity.server.server_prompts`: sizes floored to 32, seeds, guidance
   as given; the server's scheduler; ``load_lora_weights`` and
   ``set_weights_and_activate_adapters`` at the request's scale; CPU generator).

On CPU every variant runs in a fresh process (``bench.py --variant X``) and its wall time
is measured by the parent from process start to exit, so interpreter start, imports and
model loading are included in all six. Inside the process the time spent in metrics
(:func:`parity.compare.compare_many`, which :func:`parity.compare.compare` calls,
:func:`parity.compare.jpeg_floor`, preview decoding) and in attribution
(:func:`parity.attribute.attribute`, which includes its counterfactual renders) is
measured with wrappers around those functions.

``--full-size`` (CUDA) builds the real Z-Image architecture with random weights in
process (no download, weights materialised once, directly in bf16 on the GPU) and runs
the four variants in that process at 1024x1024 with the real step counts; model building
is then excluded from all four. ``--scale tiny`` runs the same code path at toy size
(also on CPU), which is how it is tested.

With ``--noise-floor`` the full-size run also renders one setting with SDPA's math
kernel vs its default one and with TF32 off vs on, scored with parity's metrics; with
``--oom-fallback`` it caps GPU memory so that a render runs out of it and the engine's
offload fallback renders it. ``bench/gpu.sh`` runs all of it as one command.

On CPU the line before the last is ``render ratio: parity-render/bare=<e/f>``; the last
line of the output is always
``ratios: parity/bare=<b/a> attribute/bare=<c/a> server/bare=<d/a>``.

``--fleet`` is another benchmark: jobs per hour of one multi-job ``parity run`` with 1
and with 2 local workers (``--workers``), ending with
``fleet ratio: jobs-per-hour workers2/workers1=<r>``.
"""

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
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
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
ADAPTER = "bench"

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


def build_job(
    work: Path, *, checkpoints: int, samples: int, size: int, steps: int, **kwargs: Any
) -> Path:
    """Build (or reuse) a tiny-model job of ``checkpoints`` x ``samples`` previews."""
    from parity.testing.jobs import write_job

    name = f"bench_{checkpoints}x{samples}_{size}px_{steps}steps"
    folder = work / name
    stamp = folder / "bench.done"
    if stamp.is_file():
        return folder
    write_job(
        work,
        name=name,
        sample=sample_config(samples, size, steps, 4.0),
        checkpoints={10 * (i + 1): {"seed": i + 1} for i in range(checkpoints)},
        **kwargs,
    )
    stamp.write_text("ok\n", encoding="utf-8")
    return folder


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


def _compare_modules() -> list[Any]:
    """The package parity.compare and each of its modules."""
    import parity.compare as compare

    names = sorted(m.name for m in pkgutil.iter_modules(compare.__path__))
    return [compare, *(importlib.import_module(f"parity.compare.{name}") for name in names)]


def instrument_parity() -> Timers:
    """Wrap parity's stages so a ``parity run`` in this process reports where time goes."""
    import parity.compare as compare
    import parity.report as report
    import parity.run as run
    from parity.engine import RenderEngine

    timers = Timers()
    # compare() calls compare_many(), so wrapping compare_many counts either call once.
    # Each is wrapped in every module of parity.compare that holds it: the package's own
    # modules call it by the name they imported (check_served calls load_rgb, for one).
    for name in ("compare_many", "jpeg_floor", "load_rgb", "inspect_codec"):
        original = getattr(compare, name)
        for module in _compare_modules():
            if getattr(module, name, None) is original:
                timers.wrap(module, name, f"metrics.{name}")
    timers.wrap(run, "attribute", "attribution")  # parity.run calls it by this name
    timers.wrap(run, "write_results", "io.results")
    timers.wrap(run, "write_corrected_requests", "io.corrected")
    timers.wrap(report, "write_report", "io.report")
    if hasattr(run, "save_png"):  # PNG writing: a module function or a Runner method
        timers.wrap(run, "save_png", "io.png")
    elif hasattr(run.Runner, "_save_png"):
        timers.wrap(run.Runner, "_save_png", "io.png")
    timers.wrap(RenderEngine, "render", "render")
    timers.wrap(RenderEngine, "_load", "load")
    timers.wrap(RenderEngine, "encode", "encode")
    return timers


def parity_timings(timers: Timers) -> dict[str, Any]:
    metrics = sum(v for k, v in timers.seconds.items() if k.startswith("metrics."))
    return {
        "metrics_s": metrics,
        "attribution_s": timers.get("attribution"),
        "render_s": timers.get("render"),
        "load_s": timers.get("load"),
        "breakdown_s": dict(sorted(timers.seconds.items())),
        "calls": dict(sorted(timers.calls.items())),
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


# ---------------------------------------------------------------------- variants


def plan(job_dir: Path) -> list[tuple[Any, Any, list[Any]]]:
    """(checkpoint, as-configured request, server prompts) per step with previews."""
    from parity.job import read_job
    from parity.server import server_prompts
    from parity.sides import as_configured_request

    job = read_job(job_dir)
    out = []
    for step in job.steps:
        checkpoint = job.checkpoint_for_step(step)
        request = as_configured_request(job, checkpoint)
        out.append((checkpoint, request, server_prompts(request)))
    return out


def _scheduler(request: Any, checkpoint_shift: float) -> Any:
    from diffusers import FlowMatchEulerDiscreteScheduler

    from parity.server import SCHEDULER_SHIFT as SERVER_SCHEDULER_SHIFT
    from parity.server import SERVER_MODELS

    replaces = SERVER_MODELS[request.model].replaces_scheduler
    shift = SERVER_SCHEDULER_SHIFT if replaces else checkpoint_shift
    return FlowMatchEulerDiscreteScheduler(
        num_train_timesteps=1000, shift=shift, use_dynamic_shifting=False
    )


def _render(pipe: Any, sp: Any, device: str, **prompt_args: Any) -> Any:
    import torch

    with torch.no_grad():
        out = pipe(
            height=sp.height,
            width=sp.width,
            num_inference_steps=sp.steps,
            guidance_scale=sp.guidance_scale,
            generator=torch.Generator("cpu").manual_seed(int(sp.seed)),
            **prompt_args,
        )
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return out.images[0]


def _encoder(pipe: Any, device: str) -> Callable[[str], Any]:
    """``encode(text)``: the prompt's embeddings, each text encoded once."""
    import torch

    embeddings: dict[str, Any] = {}

    def encode(text: str) -> Any:
        if text not in embeddings:
            with torch.no_grad():
                embeddings[text], _ = pipe.encode_prompt(
                    text, do_classifier_free_guidance=False, device=device
                )
        return embeddings[text]

    return encode


def bare_loop(pipe: Any, job_dir: Path, out_dir: Path, device: str) -> int:
    """Variant a: each LoRA loaded once, each prompt encoded once; return renders."""
    shift = float(pipe.scheduler.config.shift)
    encode = _encoder(pipe, device)
    renders = 0
    loaded = False
    for checkpoint, request, prompts in plan(job_dir):
        pipe.scheduler = _scheduler(request, shift)
        if loaded:
            pipe.delete_adapters(ADAPTER)
        pipe.load_lora_weights(
            str(checkpoint.path.parent), weight_name=checkpoint.path.name, adapter_name=ADAPTER
        )
        loaded = True
        pipe.set_adapters([ADAPTER], [prompts[0].lora_scale])
        for p in prompts:
            negative = encode(p.negative_prompt) if p.guidance_scale > 0 else None
            image = _render(
                pipe, p, device, prompt_embeds=encode(p.prompt), negative_prompt_embeds=negative
            )
            path = out_dir / "renders" / str(checkpoint.step) / f"{p.index}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            image.save(path)
            renders += 1
    return renders


def write_request(job_dir: Path, path: Path) -> Path:
    """Write the job's as-configured request for its last checkpoint to ``path``.

    The server's API takes exactly one LoRA, so the request is for a checkpoint (not the
    step-0 baseline); its path is made absolute so the request works from any folder.
    """
    from parity.job import read_job
    from parity.sides import as_configured_request

    job = read_job(job_dir)
    steps = [s for s in job.steps if job.checkpoint_for_step(s) is not None]
    if not steps:
        raise SystemExit(f"bench.py: {job_dir} has no LoRA checkpoint to build a request for")
    checkpoint = job.checkpoint_for_step(steps[-1])
    data = as_configured_request(job, checkpoint).to_json_dict()
    data["loras"][0]["path"] = str(Path(checkpoint.path).resolve())
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    return path


def bare_request_loop(pipe: Any, request_path: Path, out_dir: Path, device: str) -> int:
    """Variant f: the request's prompts as the server renders them; ``<i>.png`` each."""
    from diffusers.utils.peft_utils import set_weights_and_activate_adapters

    from parity.server import load_request, server_prompts

    request = load_request(request_path)
    prompts = server_prompts(request)  # floor to 32, seeds, guidance as given, one scale
    lora = Path(request.loras[0].path)
    pipe.scheduler = _scheduler(request, float(pipe.scheduler.config.shift))
    pipe.load_lora_weights(str(lora.parent), weight_name=lora.name, adapter_name=ADAPTER)
    set_weights_and_activate_adapters(pipe.transformer, [ADAPTER], [prompts[0].lora_scale])
    encode = _encoder(pipe, device)
    out_dir.mkdir(parents=True, exist_ok=True)
    for p in prompts:
        negative = encode(p.negative_prompt) if p.guidance_scale > 0 else None
        image = _render(
            pipe, p, device, prompt_embeds=encode(p.prompt), negative_prompt_embeds=negative
        )
        image.save(out_dir / f"{p.index}.png")
    return len(prompts)


def server_loop(pipe: Any, job_dir: Path, out_dir: Path, device: str) -> int:
    """Variant d: one request per preview, LoRA reloaded and prompts encoded every time."""
    shift = float(pipe.scheduler.config.shift)
    if device.startswith("cuda"):
        pipe.enable_model_cpu_offload(device=device)
    renders = 0
    for checkpoint, request, prompts in plan(job_dir):
        for p in prompts:
            pipe.scheduler = _scheduler(request, shift)
            pipe.unload_lora_weights()
            pipe.load_lora_weights(
                str(checkpoint.path.parent),
                weight_name=checkpoint.path.name,
                adapter_name=ADAPTER,
            )
            pipe.set_adapters([ADAPTER], [p.lora_scale])
            negative = p.negative_prompt if p.guidance_scale > 0 else None
            image = _render(pipe, p, device, prompt=p.prompt, negative_prompt=negative)
            path = out_dir / "renders" / str(checkpoint.step) / f"{p.index}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            image.save(path)
            renders += 1
    return renders


def load_pipeline(base: Path, device: str) -> Any:
    import warnings

    import diffusers
    import transformers
    from diffusers import ZImagePipeline

    diffusers.utils.logging.disable_progress_bar()
    transformers.utils.logging.disable_progress_bar()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        pipe = ZImagePipeline.from_pretrained(str(base))
    pipe.to(device)
    pipe.set_progress_bar_config(disable=True)
    return pipe


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


def run_variant(args: argparse.Namespace) -> dict[str, Any]:
    """One variant in this (fresh) process; return its measurements."""
    started = time.perf_counter()
    set_threads(args.threads)
    job_dir = Path(args.job)
    out_dir = Path(args.out)
    base = Path(args.base_model)
    result: dict[str, Any] = {"variant": args.variant}
    if args.variant in ("bare", "server", "bare-request"):
        pipe = load_pipeline(base, args.device)
        loaded = time.perf_counter()
        if args.variant == "bare-request":
            renders = bare_request_loop(pipe, Path(args.request), out_dir, args.device)
        else:
            loop = bare_loop if args.variant == "bare" else server_loop
            renders = loop(pipe, job_dir, out_dir, args.device)
        result["renders"] = renders
        result["load_s"] = loaded - started
        result["metrics_s"] = result["attribution_s"] = 0.0
    elif args.variant == "render":
        import logging

        from parity import cli

        timers = instrument_parity()
        argv = ["render", str(args.request), "--base-model", str(base), "--out", str(out_dir)]
        argv += ["--device", args.device, "--allow-outside-paths"]
        with contextlib.redirect_stdout(sys.stderr):
            code = cli.main(argv)
        logging.shutdown()
        if code != 0:
            raise SystemExit(f"parity render exited {code} on {args.request}")
        result.update(parity_timings(timers))
        result["renders"] = timers.calls.get("render", 0)
    else:
        import logging

        from parity import cli

        timers = instrument_parity()
        argv = ["run", str(job_dir), "--base-model", str(base), "--out", str(out_dir)]
        argv += ["--device", args.device, "--no-history"]
        if args.variant == "parity":
            argv.append("--no-attribution")
        with contextlib.redirect_stdout(sys.stderr):
            code = cli.main(argv)
        logging.shutdown()
        if code not in (0, 1):
            raise SystemExit(f"parity run exited {code} on {job_dir}")
        result.update(parity_timings(timers))
        result["renders"] = timers.calls.get("render", 0)
        result.update(counterfactual_stats(out_dir))
    result["in_process_s"] = time.perf_counter() - started
    result["peak_mib"] = peak_memory_mib(args.device)
    return result


# ----------------------------------------------------------------- the benchmark


def spawn_variant(
    variant: str, job: Path, out: Path, args: argparse.Namespace, request: Path | None = None
) -> dict[str, Any]:
    """Run one variant in a fresh interpreter; wall time from spawn to exit."""
    env = dict(os.environ)
    if args.threads > 0:
        env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(args.threads)
    cmd = [sys.executable, str(Path(__file__).resolve()), "--variant", variant]
    cmd += ["--job", str(job), "--out", str(out), "--device", args.device]
    cmd += ["--threads", str(args.threads), "--base-model", str(args.base_model)]
    if request is not None:
        cmd += ["--request", str(request)]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    if proc.returncode != 0:
        raise SystemExit(
            f"variant {variant} failed (exit {proc.returncode}):\n{proc.stderr[-4000:]}"
        )
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")][-1]
    result = json.loads(line)
    result["wall_s"] = wall
    result["cpu_s"] = cpu  # user + system CPU time: less sensitive to other load
    return result


def same_pixels(a_dir: Path, b_dir: Path, sub: str = "renders") -> bool:
    """Whether two runs rendered identical images (the PNGs under ``sub``, all of them)."""
    import numpy as np
    from PIL import Image

    a_files = sorted((a_dir / sub).rglob("*.png"))
    b_files = sorted((b_dir / sub).rglob("*.png"))
    if len(a_files) != len(b_files):
        return False
    if not a_files:
        return False
    for path in a_files:
        other = b_dir / path.relative_to(a_dir)
        if not other.is_file():
            return False
        with Image.open(path) as x, Image.open(other) as y:
            if not np.array_equal(np.asarray(x.convert("RGB")), np.asarray(y.convert("RGB"))):
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


def ratios_line(ratios: dict[str, float]) -> str:
    return (
        f"ratios: parity/bare={ratios['parity']:.3f} attribute/bare={ratios['attribute']:.3f} "
        f"server/bare={ratios['server']:.3f}"
    )


def render_ratio_line(ratios: dict[str, float]) -> str:
    return f"render ratio: parity-render/bare={ratios['render']:.3f}"


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


def cpu_benchmark(args: argparse.Namespace) -> int:
    from parity.testing.jobs import TINY_BASE

    args.base_model = args.base_model or str(TINY_BASE)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    if args.quick:
        shape = dict(checkpoints=2, samples=2, size=64, steps=2)
    else:
        shape = dict(checkpoints=3, samples=4, size=64, steps=6)
    t0 = time.perf_counter()
    job = build_job(work, base_model=args.base_model, **shape)
    print(f"job {job} ({shape}) ready in {time.perf_counter() - t0:.1f} s", flush=True)
    env = environment(args)
    print(f"environment: {json.dumps(env)}", flush=True)
    runs = Path(tempfile.mkdtemp(prefix="runs-", dir=work))
    request = write_request(job, runs / "request.json")
    print(f"request {request} (the job's as-configured request, last checkpoint)", flush=True)
    by_variant: dict[str, list[dict[str, Any]]] = {v: [] for v in ALL_VARIANTS}
    for r in range(args.repeat):
        for variant in ALL_VARIANTS:  # interleaved, so load changes hit every variant alike
            result = spawn_variant(variant, job, runs / f"{variant}-{r}", args, request)
            by_variant[variant].append(result)
            print(
                f"repeat {r + 1}/{args.repeat} ({LETTERS[variant]}) {variant}: "
                f"{result['wall_s']:.2f} s wall, {result['renders']} renders",
                flush=True,
            )
    identical = same_pixels(runs / "bare-0", runs / "parity-0")
    render_identical = same_pixels(runs / "bare-request-0", runs / "render-0", sub=".")
    summary = summarize(by_variant, "wall_s")
    summary["environment"] = env
    summary["environment"]["load_average_end"] = os.getloadavg()
    summary["job"] = {"path": str(job), **shape}
    summary["bare_equals_parity_renders"] = identical
    summary["bare_request_equals_render"] = render_identical
    summary["request"] = str(request)
    summary["runs"] = by_variant
    print(f"bare renders identical to parity's reference renders: {identical}")
    print(f"bare request renders identical to parity render's: {render_identical}")
    print_table(
        summary,
        f"medians over {args.repeat} run(s), wall time from process start; "
        "ratio: (a)-(d) to (a), (e)-(f) to (f)",
    )
    cpu = summary["cpu_ratios"]
    print(
        f"cpu-time ratios: parity/bare={cpu['parity']:.3f} "
        f"attribute/bare={cpu['attribute']:.3f} server/bare={cpu['server']:.3f} "
        f"parity-render/bare={cpu['render']:.3f}"
    )
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=2), encoding="utf-8")
    print(render_ratio_line(summary["ratios"]))
    print(ratios_line(summary["ratios"]))
    return 0


# -------------------------------------------------------------------------- fleet

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


# --------------------------------------------------------------------- full size


def full_size_configs(scale: str) -> dict[str, dict[str, Any]]:
    """Constructor arguments of the transformer, text encoder and VAE.

    ``scale="full"``: the real Z-Image configuration (transformer defaults: dim 3840,
    30 + 2 refiner layers, 30 heads; Qwen3 4B-class text encoder; Flux-style 16-channel
    VAE). ``scale="tiny"``: the same classes at toy size, for testing this code path.
    """
    vae_common = dict(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        latent_channels=16,
        scaling_factor=0.3611,
        shift_factor=0.1159,
        use_quant_conv=False,
        use_post_quant_conv=False,
        force_upcast=True,
    )
    if scale == "full":
        return {
            "transformer": {},  # the defaults are the real 6B model
            "text_encoder": dict(
                vocab_size=151936,
                hidden_size=2560,
                intermediate_size=9728,
                num_hidden_layers=36,
                num_attention_heads=32,
                num_key_value_heads=8,
                head_dim=128,
                max_position_embeddings=40960,
                rms_norm_eps=1e-6,
                rope_theta=1000000.0,
                tie_word_embeddings=True,
            ),
            "vae": dict(
                vae_common,
                block_out_channels=(128, 256, 512, 512),
                layers_per_block=2,
                norm_num_groups=32,
                sample_size=1024,
            ),
        }
    if scale == "tiny":
        return {
            "transformer": dict(
                dim=32,
                n_layers=2,
                n_refiner_layers=1,
                n_heads=2,
                n_kv_heads=2,
                cap_feat_dim=32,
                axes_dims=[8, 4, 4],
                axes_lens=[1024, 64, 64],
            ),
            "text_encoder": dict(
                vocab_size=1024,
                hidden_size=32,
                intermediate_size=64,
                num_hidden_layers=2,
                num_attention_heads=2,
                num_key_value_heads=2,
                head_dim=16,
                max_position_embeddings=1024,
                rms_norm_eps=1e-6,
                tie_word_embeddings=True,
            ),
            "vae": dict(
                vae_common,
                block_out_channels=(16, 16, 32, 32),
                layers_per_block=1,
                norm_num_groups=8,
                sample_size=64,
            ),
        }
    raise ValueError(f"--scale must be 'full' or 'tiny', got {scale!r}")


def materialize(factory: Callable[[], Any], device: str, dtype: Any, seed: int) -> Any:
    """Build a module on the meta device and give it random weights on ``device``.

    Parameters are allocated once, directly on ``device`` in ``dtype``; buffers that the
    constructor computes (rotary frequencies) are kept. Weights are drawn as
    ``N(0, 0.02)`` (matrices, convolutions, embeddings), norms start at 1, biases at 0.
    """
    import torch
    from accelerate import init_empty_weights

    with init_empty_weights():  # parameters on meta, buffers real
        module = factory()
    # Meta parameters take no memory; buffers are cast as a real .to(dtype) casts them.
    torch.nn.Module.to(module, dtype)
    buffers = {name: b.detach().clone() for name, b in module.named_buffers()}
    module.to_empty(device=device)
    generator = torch.Generator(device=device).manual_seed(seed)
    with torch.no_grad():
        for name, b in module.named_buffers():
            b.copy_(buffers[name].to(device))
        for name, p in module.named_parameters():
            leaf = name.rsplit(".", 1)[-1]
            if p.ndim >= 2 or "pad_token" in name or "embed" in leaf:
                p.normal_(0.0, 0.02, generator=generator)
            elif leaf == "bias":
                p.zero_()
            else:  # norm scales and other vectors
                p.fill_(1.0)
    return module.eval()


def meta_parameter_counts(scale: str) -> dict[str, int]:
    """Parameters of each model of :func:`full_size_configs`, counted on the meta device."""
    from accelerate import init_empty_weights
    from diffusers import AutoencoderKL, ZImageTransformer2DModel
    from transformers import Qwen3Config, Qwen3Model

    configs = full_size_configs(scale)
    with init_empty_weights():
        models = {
            "transformer": ZImageTransformer2DModel(**configs["transformer"]),
            "text_encoder": Qwen3Model(Qwen3Config(**configs["text_encoder"])),
            "vae": AutoencoderKL(**configs["vae"]),
        }
    return {name: sum(p.numel() for p in m.parameters()) for name, m in models.items()}


def build_pipeline(scale: str, device: str, dtype_name: str, *, turbo: bool) -> Any:
    """A ZImagePipeline of the real (or tiny) architecture with random weights."""
    import diffusers
    import torch
    from diffusers import (
        AutoencoderKL,
        FlowMatchEulerDiscreteScheduler,
        ZImagePipeline,
        ZImageTransformer2DModel,
    )
    from transformers import AutoTokenizer, Qwen3Config, Qwen3Model

    from parity.testing.jobs import TINY_BASE

    diffusers.utils.logging.disable_progress_bar()
    dtype = getattr(torch, dtype_name)
    configs = full_size_configs(scale)
    transformer = materialize(
        lambda: ZImageTransformer2DModel(**configs["transformer"]), device, dtype, 1
    )
    text_encoder = materialize(
        lambda: Qwen3Model(Qwen3Config(**configs["text_encoder"])), device, dtype, 2
    )
    vae = materialize(lambda: AutoencoderKL(**configs["vae"]), device, dtype, 3)
    tokenizer = AutoTokenizer.from_pretrained(str(TINY_BASE / "tokenizer"))
    scheduler = FlowMatchEulerDiscreteScheduler(
        num_train_timesteps=1000, shift=3.0 if turbo else 6.0, use_dynamic_shifting=False
    )
    pipe = ZImagePipeline(
        scheduler=scheduler,
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        transformer=transformer,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def full_size_job(
    work: Path, pipe: Any, engine: Any, *, turbo: bool, size: int, dtype_name: str
) -> Path:
    """A 1-checkpoint x 2-prompt job whose LoRA fits ``pipe`` and previews come from it."""
    from parity.job import read_job
    from parity.sides import preview_settings
    from parity.testing.jobs import write_job

    name = f"fullsize_{'turbo' if turbo else 'base'}_{size}px"
    config = dict(pipe.transformer.config)
    steps, guidance = (8, 1.0) if turbo else (30, 4.0)
    sample = sample_config(2, size, steps, guidance)
    folder = write_job(
        work,
        name=name,
        sample=sample,
        checkpoints={10: {"seed": 1}},
        base_model=config,  # the LoRA writer reads dim and n_layers from it
        render=False,
        name_or_path="Tongyi-MAI/Z-Image-Turbo" if turbo else "Tongyi-MAI/Z-Image",
        train_dtype={"bfloat16": "bf16", "float32": "fp32"}[dtype_name],
    )
    job = read_job(folder)
    ms = 1_700_000_000_000
    for step in job.steps or [10]:
        checkpoint = job.checkpoint_for_step(step)
        for s in job.samples:
            image = engine.render(preview_settings(job, s, checkpoint)).image
            ms += 397
            image.save(folder / "samples" / f"{ms}__{step:09d}_{s.index}.jpg")
    return folder


def _reset_peak(device: str) -> None:
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()


def full_size_variants(
    pipe: Any,
    job: Path,
    runs: Path,
    device: str,
    dtype_name: str,
    before_server: Callable[[], None] | None = None,
) -> dict[str, dict[str, Any]]:
    """Variants a-d in this process on one built pipeline (building excluded).

    ``before_server`` runs after (c), while the pipeline is still entirely on the
    device: (d) turns model CPU offload on for good.
    """
    from parity.engine import RenderEngine
    from parity.run import RunOptions, run_job

    shift = float(pipe.scheduler.config.shift)
    results: dict[str, dict[str, Any]] = {}
    for variant in VARIANTS:  # server last: it turns model CPU offload on for good
        if variant == "server" and before_server is not None:
            before_server()
        out = runs / variant
        _reset_peak(device)
        started = time.perf_counter()
        if variant == "bare":
            renders = bare_loop(pipe, job, out, device)
            res: dict[str, Any] = {"renders": renders, "metrics_s": 0.0, "attribution_s": 0.0}
        elif variant == "server":
            pipe.delete_adapters(ADAPTER)
            renders = server_loop(pipe, job, out, device)
            res = {"renders": renders, "metrics_s": 0.0, "attribution_s": 0.0}
        else:
            from parity.job import read_job

            if variant == "parity":
                with contextlib.suppress(ValueError):
                    pipe.delete_adapters(ADAPTER)
            timers = instrument_parity()
            engine = RenderEngine(str(job), device=device)
            engine.adopt(pipe, dtype_name)
            engine.checkpoint_scheduler_shift = shift
            options = RunOptions(attribute=variant == "attribute", progress=False)
            try:
                run_job(read_job(job), engine, out, options, device=device)
            finally:
                _undo_instrumentation()
                _drop_engine_adapter(pipe)
            res = parity_timings(timers)
            res["renders"] = timers.calls.get("render", 0)
            res.update(counterfactual_stats(out))
        res["wall_s"] = time.perf_counter() - started
        res["peak_mib"] = peak_memory_mib(device)
        results[variant] = res
        print(f"  ({LETTERS[variant]}) {variant}: {res['wall_s']:.2f} s", flush=True)
    return results


def _undo_instrumentation() -> None:
    """Remove the wrappers of :func:`instrument_parity` (one process, several runs)."""
    import parity.report as report
    import parity.run as run
    from parity.engine import RenderEngine

    for owner in (*_compare_modules(), report, run, run.Runner, RenderEngine):
        for name, value in list(vars(owner).items()):
            inner = getattr(value, "__wrapped__", None)
            if inner is not None and callable(value):
                setattr(owner, name, inner)


def _drop_engine_adapter(pipe: Any) -> None:
    from parity.engine import LORA_ADAPTER

    with contextlib.suppress(ValueError, KeyError):
        pipe.delete_adapters(LORA_ADAPTER)


def metric_throughput(pipe: Any, size: int, device: str, repeat: int = 5) -> dict[str, float]:
    """Time parity's metrics on ``size`` x ``size`` pairs and print them, ms per megapixel.

    SSIM and PSNR are timed on both of :mod:`parity.compare`'s paths: scikit-image on CPU
    (the reference, what ``compare()`` uses on CPU) and torchmetrics in float64
    (``compare_many``'s device path) on CPU, and on CUDA when ``device`` is CUDA, for one
    render and for a batch of 8 renders of one preview (ms per megapixel of render), with
    ``torch.cuda.synchronize()`` before the clock is read. The torch path on CPU is timed on
    a crop of at most 256x256 px: float64 convolution has no fast CPU kernel (18-22 s per
    megapixel at 1024x1024; the crop reads lower, about 15 s, as it stays in cache).
    Latent distance and ``compare()`` are timed per pair, in ms.
    """
    import numpy as np
    import torch

    from parity import compare

    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
    b = np.clip(a.astype(np.int16) + rng.integers(-8, 9, a.shape), 0, 255).astype(np.uint8)
    encode = compare.make_vae_encoder(pipe.vae)
    crop = min(size, 256)
    a_crop, b_crop = a[:crop, :crop].copy(), b[:crop, :crop].copy()

    def ms_per_call(fn: Callable[[], Any], on: str = "cpu", n: int = repeat) -> float:
        fn()  # warm-up
        _reset_peak(on)
        started = time.perf_counter()
        for _ in range(n):
            fn()
        if on.startswith("cuda"):
            torch.cuda.synchronize()
        return 1e3 * (time.perf_counter() - started) / n

    def per_mp(ms: float, side: int, renders: int = 1) -> float:
        return ms / (renders * side * side / 1e6)

    timings = {
        "ssim_skimage_cpu_ms_per_mp": per_mp(ms_per_call(lambda: compare.ssim(a, b)), size),
        "psnr_skimage_cpu_ms_per_mp": per_mp(ms_per_call(lambda: compare.psnr(a, b)), size),
        "ssim_psnr_torch_cpu_ms_per_mp": per_mp(
            ms_per_call(lambda: compare._torch_ssim_psnr(a_crop, [b_crop], device="cpu"), n=2),
            crop,
        ),
    }
    if device.startswith("cuda"):
        batch = [b] * 8
        timings["ssim_psnr_torch_cuda_ms_per_mp"] = per_mp(
            ms_per_call(lambda: compare._torch_ssim_psnr(a, [b], device=device), device), size
        )
        timings["ssim_psnr_torch_cuda_batch8_ms_per_mp"] = per_mp(
            ms_per_call(lambda: compare._torch_ssim_psnr(a, batch, device=device), device),
            size,
            renders=len(batch),
        )
    timings["latent_distance_ms_per_pair"] = ms_per_call(
        lambda: compare.latent_distance(a, b, encode=encode), device
    )
    timings["compare_ms_per_pair"] = ms_per_call(
        lambda: compare.compare(a, b, encode=encode, device=device), device
    )
    threads = torch.get_num_threads()
    print(f"metrics, ms per megapixel ({size}x{size}; torch CPU threads: {threads}):")
    print(f"  SSIM  scikit-image, cpu        {timings['ssim_skimage_cpu_ms_per_mp']:10.1f}")
    print(f"  PSNR  scikit-image, cpu        {timings['psnr_skimage_cpu_ms_per_mp']:10.1f}")
    print(
        f"  SSIM+PSNR torch float64, cpu   {timings['ssim_psnr_torch_cpu_ms_per_mp']:10.1f}"
        f"  ({crop}x{crop} crop)"
    )
    if device.startswith("cuda"):
        print(
            f"  SSIM+PSNR torch float64, {device}, 1 render   "
            f"{timings['ssim_psnr_torch_cuda_ms_per_mp']:10.2f}"
        )
        print(
            f"  SSIM+PSNR torch float64, {device}, 8 renders  "
            f"{timings['ssim_psnr_torch_cuda_batch8_ms_per_mp']:10.2f}"
        )
    return timings


def full_size_benchmark(args: argparse.Namespace) -> int:
    if args.scale == "full" and not args.device.startswith("cuda"):
        raise SystemExit(
            "bench.py: --full-size builds the real 6B Z-Image model and needs a CUDA GPU "
            "(about 25 GiB of GPU memory); run it with --device cuda on a GPU machine, or "
            "use --scale tiny to run the same code path at toy size on CPU"
        )
    if args.device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            raise SystemExit("bench.py: --device cuda given but torch sees no CUDA device")
    set_threads(args.threads)
    from parity.engine import RenderEngine

    dtype_name = "bfloat16" if args.device.startswith("cuda") else "float32"
    size = args.size or (1024 if args.scale == "full" else 64)
    work = Path(tempfile.mkdtemp(prefix="fullsize-", dir=args.work))
    env = environment(args)
    env["scale"] = args.scale
    print(f"environment: {json.dumps(env)}", flush=True)
    totals = {v: 0.0 for v in VARIANTS}
    report: dict[str, Any] = {"environment": env, "size": size, "models": {}}
    for model in args.models.split(","):
        turbo = model.strip() == "turbo"
        started = time.perf_counter()
        pipe = build_pipeline(args.scale, args.device, dtype_name, turbo=turbo)
        built = time.perf_counter() - started
        n_params = sum(p.numel() for p in pipe.transformer.parameters())
        print(f"{model}: built in {built:.1f} s, transformer {n_params / 1e9:.3f} B params")
        engine = RenderEngine("(in process)", device=args.device)
        engine.adopt(pipe, dtype_name)
        engine.checkpoint_scheduler_shift = float(pipe.scheduler.config.shift)
        job = full_size_job(work, pipe, engine, turbo=turbo, size=size, dtype_name=dtype_name)
        _drop_engine_adapter(pipe)
        by_variant: dict[str, list[dict[str, Any]]] = {v: [] for v in VARIANTS}
        extras: dict[str, Any] = {}

        def gpu_checks(pipe: Any = pipe, job: Path = job, extras: dict = extras) -> None:
            if args.noise_floor:
                extras["noise_floor"] = noise_floor(pipe, job, args.device, dtype_name, work)
            if args.oom_fallback:
                extras["oom_fallback"] = oom_fallback(pipe, job, args.device, dtype_name)

        for r in range(args.repeat):
            first = r == 0 and model == args.models.split(",")[0]
            results = full_size_variants(
                pipe,
                job,
                work / f"runs-{model}-{r}",
                args.device,
                dtype_name,
                before_server=gpu_checks if first else None,
            )
            for v in VARIANTS:
                by_variant[v].append(results[v])
            if r + 1 < args.repeat:  # server left offload hooks: rebuild for the next round
                del pipe, engine
                pipe = build_pipeline(args.scale, args.device, dtype_name, turbo=turbo)
        summary = summarize(by_variant, "wall_s")
        summary["build_s"] = built
        summary.update(extras)
        summary["metrics_per_pair"] = metric_throughput(pipe, size, args.device)
        report["models"][model] = summary
        print_table(summary, f"{model}: {size}x{size}, medians over {args.repeat}, build excluded")
        print(f"{model}: metrics per {size}x{size} pair: {summary['metrics_per_pair']}")
        for v in VARIANTS:
            totals[v] += summary["table"][v]["wall_s"]
        del pipe, engine
        if args.json:  # after each model: a run cut short keeps what it measured
            Path(args.json).write_text(json.dumps(report, indent=2), encoding="utf-8")
    ratios = {v: totals[v] / totals["bare"] for v in VARIANTS}
    report["ratios"] = ratios
    floor = next((m["noise_floor"] for m in report["models"].values() if "noise_floor" in m), None)
    if floor is not None:
        print(noise_floor_verdict(floor))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2), encoding="utf-8")
    print(ratios_line(ratios))
    return 0


# ------------------------------------------------------- GPU noise floor, OOM fallback


def _fresh_engine(pipe: Any, device: str, dtype_name: str) -> Any:
    """A RenderEngine around the built pipeline (no weights loaded from disk)."""
    from parity.engine import RenderEngine

    engine = RenderEngine("(in process)", device=device)
    engine.adopt(pipe, dtype_name)
    engine.checkpoint_scheduler_shift = float(pipe.scheduler.config.shift)
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
        checkpoint_shift=engine.checkpoint_scheduler_shift,
        reference_dtype=None,
    )
    return next(c.pair.reference for c in cases if c.pair is not None)


def noise_floor(
    pipe: Any, job_dir: Path, device: str, dtype_name: str, work: Path
) -> dict[str, Any]:
    """How far renders of one setting move with the attention kernel and with TF32.

    The job's first reference setting is rendered with PyTorch's defaults and TF32 off
    (SDPA picks its kernel: flash or memory-efficient attention on CUDA), again with SDPA
    forced to its math kernel, and again with TF32 on for matmuls and convolutions. Each
    pair is scored with parity's metrics (:func:`parity.compare.compare`, VAE latents
    included) twice: lossless, and with the first render stored as a JPEG q75 preview
    the way ai-toolkit stores previews (the other encoded alike, as a run does). Every
    pair is judged with the default :class:`parity.compare.Thresholds`. The text encoder
    runs again for every render, so it sees the same switch.
    """
    import numpy as np
    import torch
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from parity import compare

    engine = _fresh_engine(pipe, device, dtype_name)
    settings = _reference_settings(job_dir, engine, device)
    cuda = torch.backends.cuda.matmul, torch.backends.cudnn
    saved = cuda[0].allow_tf32, cuda[1].allow_tf32

    def render() -> np.ndarray:
        engine._embeddings.clear()
        return np.array(engine.render(settings).image.convert("RGB"))

    try:
        cuda[0].allow_tf32 = cuda[1].allow_tf32 = False
        default = render()
        with sdpa_kernel(SDPBackend.MATH):
            math = render()
        cuda[0].allow_tf32 = cuda[1].allow_tf32 = True
        tf32 = render()
    finally:
        cuda[0].allow_tf32, cuda[1].allow_tf32 = saved
        _drop_engine_adapter(pipe)
    encode = compare.make_vae_encoder(pipe.vae)
    thresholds = compare.Thresholds()
    preview_path = work / "noise-floor-preview.jpg"
    from PIL import Image

    Image.fromarray(default).save(preview_path)  # Pillow's defaults: q75 4:2:0
    codec = compare.inspect_codec(preview_path)
    preview = compare.load_rgb(preview_path)
    pairs = {
        "attention: SDPA default vs math": math,
        "TF32: off vs on": tf32,
    }
    out: dict[str, Any] = {
        "setting": {"width": settings.width, "height": settings.height, "steps": settings.steps},
        "pairs": {},
    }
    print(f"noise floor at {settings.width}x{settings.height}, {settings.steps} steps:")
    for name, other in pairs.items():
        lossless = compare.compare(default, other, encode=encode, device=device)
        as_preview = compare.compare(preview, other, codec=codec, encode=encode, device=device)
        entry = {
            "max_abs_diff": int(np.abs(default.astype(int) - other.astype(int)).max()),
            "identical_share": float((default == other).mean()),
            "lossless": _scores(lossless, thresholds),
            "jpeg_q75_preview": _scores(as_preview, thresholds),
        }
        out["pairs"][name] = entry
        for kind in ("lossless", "jpeg_q75_preview"):
            sc = entry[kind]
            print(
                f"  {name:<34} {kind:<17} SSIM {sc['ssim']:.4f}  PSNR {sc['psnr']:6.2f} dB  "
                f"latent {sc['latent_distance']:.4f}  -> "
                f"{'match' if sc['match'] else 'MISMATCH'} under the default thresholds"
            )
        print(f"  {name:<34} max |difference| {entry['max_abs_diff']}/255")
    return out


def _scores(c: Any, thresholds: Any) -> dict[str, Any]:
    latent = c.latent_distance if c.latent_distance is not None else float("nan")
    return {
        "ssim": c.ssim,
        "psnr": c.psnr,
        "latent_distance": latent,
        "match": bool(thresholds.is_match(c)),
    }


def noise_floor_verdict(floor: dict[str, Any]) -> str:
    """One line: whether the default thresholds call any noise-floor pair a mismatch."""
    bad = [
        f"{name} ({kind})"
        for name, entry in floor["pairs"].items()
        for kind in ("lossless", "jpeg_q75_preview")
        if not entry[kind]["match"]
    ]
    if not bad:
        return "noise floor: the default thresholds call every pair a match"
    return (
        f"noise floor: the default thresholds call {len(bad)} pair(s) mismatches: "
        f"{', '.join(bad)}; the defaults for CUDA must change"
    )


#: Memory left above what the built pipeline holds when the OOM fallback is exercised:
#: the weights fit, a render's activations do not.
OOM_HEADROOM_BYTES = 32 * 2**20


def oom_fallback(pipe: Any, job_dir: Path, device: str, dtype_name: str) -> dict[str, Any]:
    """Exercise the engine's out-of-memory fallback for real.

    The CUDA caching allocator is capped (``torch.cuda.set_per_process_memory_fraction``)
    just above the memory the pipeline's weights already hold, so the first attempt of a
    render runs out of memory inside the pipeline; the engine then turns model CPU offload
    on and renders again, which fits (one model on the GPU at a time). The cap is lifted
    afterwards. Needs CUDA; on CPU it says so and returns.
    """
    if not device.startswith("cuda"):
        print("OOM fallback: skipped (it caps CUDA memory; this run is on CPU)")
        return {"skipped": "needs CUDA"}
    import torch

    from parity.errors import RenderError

    engine = _fresh_engine(pipe, device, dtype_name)
    settings = _reference_settings(job_dir, engine, device)
    # Prompt embeddings and the LoRA adapter are made before the cap, so that the first
    # allocation beyond it happens inside the pipeline, where the fallback catches it.
    variant = engine.variant(settings.dtype)
    engine.encode(settings.prompt, variant)
    engine.encode(settings.negative_prompt, variant)
    engine._use_peft(variant, settings.lora)
    index = torch.device(device).index
    index = torch.cuda.current_device() if index is None else index
    torch.cuda.synchronize(index)
    torch.cuda.empty_cache()
    total = torch.cuda.get_device_properties(index).total_memory
    held = torch.cuda.memory_reserved(index)
    cap = held + OOM_HEADROOM_BYTES
    torch.cuda.reset_peak_memory_stats(index)
    torch.cuda.set_per_process_memory_fraction(cap / total, index)
    started = time.perf_counter()
    result: dict[str, Any] = {"held_mib": held / 2**20, "cap_mib": cap / 2**20}
    try:
        out = engine.render(settings)
        result.update(rendered=True, image_size=list(out.image.size))
    except (RenderError, torch.OutOfMemoryError) as e:
        result.update(rendered=False, error=f"{type(e).__name__}: {e}")
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0, index)
        _drop_engine_adapter(pipe)
    result.update(
        seconds=time.perf_counter() - started,
        offloaded=bool(engine._offloaded),
        peak_mib=torch.cuda.max_memory_allocated(index) / 2**20,
    )
    cap_text = f"cap {result['cap_mib']:.0f} MiB (weights {result['held_mib']:.0f} MiB)"
    if not result.get("rendered"):
        what = f"the render FAILED: {result.get('error')}"
    elif result["offloaded"]:
        what = "the first attempt ran out of memory; rendered again with model CPU offload"
    else:
        what = "the render fitted under the cap: the fallback was NOT exercised"
    print(
        f"OOM fallback: {cap_text}: {what} in {result['seconds']:.1f} s, "
        f"peak {result['peak_mib']:.0f} MiB"
    )
    return result


# -------------------------------------------------------------------------- main


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
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
    if args.scale != "full":
        raise SystemExit("bench.py: --scale only applies with --full-size")
    return cpu_benchmark(args)


if __name__ == "__main__":
    sys.exit(main())
