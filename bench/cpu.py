"""Benchmark: parity against a bare render loop, tiny models (the default benchmark).

Four ways of rendering the same ai-toolkit job through the reference semantics:

a. ``bare``: a plain diffusers loop. The job family's pipeline, loaded by its pipeline
   adapter (``parity.families.FAMILIES[family].pipeline``), each checkpoint's LoRA loaded
   once with ``load_lora_weights``, each prompt encoded once by the adapter, and every
   preview rendered as the server would render it: the reference settings ``parity run``
   plans (:func:`reference_settings`; sizes, seeds, the scheduler's class and config,
   guidance through the adapter's ``call_arguments``), PNGs saved. No comparison.
b. ``parity``: ``parity run --no-attribution --no-history`` on the job.
c. ``attribute``: ``parity run --no-history`` (counterfactual renders for mismatches).
d. ``server``: a naive per-request flow like the reference server's: one request per
   preview, each one unloading and reloading the LoRA and encoding its prompt strings
   again (no embedding cache); model CPU offload on CUDA only.

And two ways of rendering one API request, the job's as-configured request for its last
checkpoint (:func:`parity.plan.sides.as_configured_request`, LoRA path made absolute), written
to ``request.json``:

e. ``render``: ``parity render request.json --allow-outside-paths``.
f. ``bare-request``: a plain diffusers loop over that request's prompts with the server's
   semantics (:func:`parity.zimage.server.server_prompts`: sizes floored to 32, seeds, guidance
   as given; the server's scheduler; ``load_lora_weights`` and
   ``set_weights_and_activate_adapters`` at the request's scale; CPU generator).

On CPU every variant runs in a fresh process (``python -m bench --variant X``) and its
wall time is measured by the parent from process start to exit, so interpreter start,
imports and model loading are included in all six. Inside the process the time spent in
metrics (:func:`parity.compare.compare_many`, which :func:`parity.compare.compare` calls,
:func:`parity.compare.jpeg_floor`, preview decoding) and in attribution
(:func:`parity.attribute.attribute`, which includes its counterfactual renders) is
measured with wrappers around those functions.

Beside the table, what the noise floors cost (:func:`bench.common.noise_floor_line`): the
extra renders through the alternate kernel path against all renders, and their seconds
against the seconds spent rendering, for (b) and (c) on the benchmark's float32 job
(which needs none: its comparisons are exact or far from the thresholds) and for (c) on
the real bf16 UI-preset job ``fixtures/aitk_ui_zimage`` (one per preview).

The real ai-toolkit jobs of other families run (a) and (b) in the same rounds: the
Qwen-Image job (``fixtures/aitk_qwen``, 3 steps x 6 previews, true CFG) and the Wan 2.1
video job (``fixtures/aitk_wan21``, 3 steps x 6 previews of 9 frames, 6 steps each). The
bare loop above, through each family's adapter, renders parity's reference images and
videos pixel for pixel (checked), and ``qwen-image ratio: parity/bare=<b/a>`` and
``wan21 ratio: parity/bare=<b/a>`` are printed.

On CPU the lines before the last are those family ratio lines and
``render ratio: parity-render/bare=<e/f>``; the last line of the output is always
``ratios: parity/bare=<b/a> attribute/bare=<c/a> server/bare=<d/a>``.

Variants a-d (:func:`bare_loop`, :func:`server_loop`) also run in :mod:`bench.full_size`.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.common import (
    ALL_VARIANTS,
    LETTERS,
    REPO,
    counterfactual_stats,
    environment,
    instrument_parity,
    median_of,
    noise_floor_line,
    parity_timings,
    peak_memory_mib,
    print_table,
    ratios_line,
    same_pixels,
    sample_config,
    set_threads,
    summarize,
)

ADAPTER = "bench"


# ------------------------------------------------------------------------ the job


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


# ---------------------------------------------------------------------- variants


def plan(job_dir: Path) -> list[tuple[Any, Any, list[Any]]]:
    """(checkpoint, as-configured request, server prompts) per step with previews."""
    from parity.job import read_job
    from parity.plan.sides import as_configured_request
    from parity.server import server_prompts

    job = read_job(job_dir)
    out = []
    for step in job.steps:
        checkpoint = job.checkpoint_for_step(step)
        request = as_configured_request(job, checkpoint)
        out.append((checkpoint, request, server_prompts(request)))
    return out


def _scheduler(request: Any, checkpoint_shift: float) -> Any:
    from diffusers import FlowMatchEulerDiscreteScheduler

    from parity.families import SERVER_MODELS
    from parity.zimage.server import SCHEDULER_SHIFT as SERVER_SCHEDULER_SHIFT

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


def reference_settings(job_dir: Path, checkpoint_scheduler: Any, device: str) -> list[Any]:
    """The reference side (:class:`parity.settings.RenderSettings`) of every preview of the
    job that ``parity run`` renders, as ``(step, index, settings)``: the server's semantics,
    whatever the family (sizes, seeds, guidance keyword, scheduler class and config, LoRA
    scale, VAE tiling), planned by :func:`parity.plan.plan_cases` as the run plans them."""
    from parity.job import read_job
    from parity.plan import plan_cases

    job = read_job(job_dir)
    cases = plan_cases(
        job,
        job.steps,
        device=device,
        checkpoint_scheduler=checkpoint_scheduler,
        reference_dtype=None,
    )
    return [(c.step, c.index, c.pair.reference) for c in cases if c.pair and not c.error]


def bare_loop(
    pipe: Any, job_dir: Path, out_dir: Path, device: str, *, checkpoint_scheduler: Any = None
) -> int:
    """Variant a: each LoRA loaded once, each prompt encoded once; return renders.

    Any family: the pipeline is called the way the family's pipeline adapter
    (``parity.families.FAMILIES[job.family].pipeline``) says, with each preview's
    reference settings (:func:`reference_settings`); ``checkpoint_scheduler`` (default:
    the pipeline's own scheduler config) is the checkpoint's scheduler the plan starts from.
    """

    from parity.families import FAMILIES
    from parity.job import read_job
    from parity.settings import LoraApplier, SchedulerConfig

    family = FAMILIES[read_job(job_dir).family]
    adapter = family.pipeline
    if checkpoint_scheduler is None:
        checkpoint_scheduler = SchedulerConfig.from_config(pipe.scheduler.config)
    embeddings: dict[str, Any] = {}

    def encode(text: str) -> Any:
        if text not in embeddings:
            embeddings[text] = adapter.encode(pipe, text, device)
        return embeddings[text]

    loaded: tuple[str, float] | None = None  # (LoRA path, scale) attached now
    renders = 0
    for step, index, s in reference_settings(job_dir, checkpoint_scheduler, device):
        lora = s.lora
        if lora is not None and (lora.merged or lora.applier is not LoraApplier.PEFT):
            raise SystemExit(f"bench: step {step} #{index}: the bare loop applies PEFT LoRAs only")
        if lora is None:
            if loaded is not None:
                pipe.delete_adapters(ADAPTER)
                loaded = None
        elif loaded is None or loaded[0] != lora.path:
            if loaded is not None:
                pipe.delete_adapters(ADAPTER)
            path = Path(lora.path)
            pipe.load_lora_weights(str(path.parent), weight_name=path.name, adapter_name=ADAPTER)
            loaded = (lora.path, float("nan"))
        if lora is not None and loaded is not None and loaded[1] != lora.scale:
            pipe.set_adapters([ADAPTER], [lora.scale])
            loaded = (lora.path, lora.scale)
        pipe.scheduler = s.scheduler_config.build()
        if s.vae_tiling:
            pipe.vae.enable_tiling()
        else:
            pipe.vae.disable_tiling()
        negative = (
            encode(s.negative_prompt) if family.negative_prompt_used(s.pipeline_guidance) else None
        )
        arguments = adapter.call_arguments(encode(s.prompt), negative, s.pipeline_guidance)
        if s.sigmas is not None:
            arguments["sigmas"] = list(s.sigmas)
        frames = _call(pipe, s, device, arguments)
        path = out_dir / "renders" / str(step) / f"{index}.{'webp' if s.video else 'png'}"
        path.parent.mkdir(parents=True, exist_ok=True)
        if s.video:  # every frame lossless, as a browser plays it
            frames[0].save(path, lossless=True, save_all=True, append_images=frames[1:])
        else:
            frames[0].save(path)
        renders += 1
    return renders


def _call(pipe: Any, s: Any, device: str, arguments: dict[str, Any]) -> list[Any]:
    """One pipeline call at the settings' size, steps, seed (CPU generator) and, for a
    video, frames; the PIL frames (one for an image)."""
    import torch

    video = {"num_frames": s.num_frames, "output_type": "pil"} if s.video else {}
    with torch.no_grad():
        out = pipe(
            height=s.height,
            width=s.width,
            num_inference_steps=s.steps,
            generator=torch.Generator("cpu").manual_seed(int(s.seed)),
            **video,
            **arguments,
        )
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return list(out.frames[0]) if s.video else [out.images[0]]


def write_request(job_dir: Path, path: Path) -> Path:
    """Write the job's as-configured request for its last checkpoint to ``path``.

    The server's API takes exactly one LoRA, so the request is for a checkpoint (not the
    step-0 baseline); its path is made absolute so the request works from any folder.
    """
    from parity.job import read_job
    from parity.plan.sides import as_configured_request

    job = read_job(job_dir)
    steps = [s for s in job.steps if job.checkpoint_for_step(s) is not None]
    if not steps:
        raise SystemExit(f"bench: {job_dir} has no LoRA checkpoint to build a request for")
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


def load_pipeline(base: Path, device: str, family: str = "zimage") -> Any:
    """``family``'s diffusers pipeline from the folder ``base``, in the server's dtype on
    ``device``, loaded by the family's pipeline adapter (``ZImagePipeline.from_pretrained``,
    ``QwenImagePipeline.from_pretrained``...), progress bars off."""
    import warnings

    import diffusers
    import torch
    import transformers

    from parity.families import FAMILIES
    from parity.server import server_dtype

    diffusers.utils.logging.disable_progress_bar()
    transformers.utils.logging.disable_progress_bar()
    scheduler = str(base) if (Path(base) / "scheduler").is_dir() else None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        pipe = FAMILIES[family].pipeline.load(
            str(base),
            str(base),
            scheduler,
            dtype=getattr(torch, server_dtype(device)),
            device=device,
        )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def run_variant(args: argparse.Namespace) -> dict[str, Any]:
    """One variant in this (fresh) process; return its measurements."""
    started = time.perf_counter()
    set_threads(args.threads)
    job_dir = Path(args.job)
    out_dir = Path(args.out)
    base = Path(args.base_model)
    result: dict[str, Any] = {"variant": args.variant}
    if args.variant in ("bare", "server", "bare-request"):
        from parity.job import read_job

        family = read_job(job_dir).family if args.variant == "bare" else "zimage"
        pipe = load_pipeline(base, args.device, family)
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
    # ``python -m bench`` in this process's working folder. The checkout goes last on
    # PYTHONPATH: ``bench`` imports from any folder, and whatever this process's path
    # finds first (parity included) the child finds first too.
    path = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    if str(REPO) not in path:
        env["PYTHONPATH"] = os.pathsep.join([*path, str(REPO)])
    cmd = [sys.executable, "-m", "bench", "--variant", variant]
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


def bf16_noise_floor(runs: Path, args: argparse.Namespace) -> dict[str, Any]:
    """(c) on the real bf16 UI-preset job, once: what its noise floors cost."""
    from parity.testing.jobs import AITK_REAL_BASE, FIXTURES

    job = FIXTURES / "aitk_ui_zimage" / "output" / "aitk_zimage_ui"
    ui_args = argparse.Namespace(**{**vars(args), "base_model": str(AITK_REAL_BASE)})
    result = spawn_variant("attribute", job, runs / "attribute-bf16-ui", ui_args)
    result["job"] = job.relative_to(REPO).as_posix()
    return result


#: The real ai-toolkit jobs of other families (fp32 sd_trainer, 3 steps x 6 samples
#: each), by the name their ratio line prints: (label, job, base checkpoint).
FAMILY_JOBS: dict[str, tuple[str, Path, Path]] = {
    "qwen-image": (
        "Qwen-Image",
        Path("fixtures") / "aitk_qwen" / "output" / "aitk_qwen",
        Path("fixtures") / "aitk_qwen" / "tiny_qwen",
    ),
    "wan21": (
        "Wan 2.1 video",
        Path("fixtures") / "aitk_wan21" / "output" / "aitk_wan21",
        Path("fixtures") / "aitk_wan21" / "tiny_wan21",
    ),
}
#: Their variants: the bare loop (a) and ``parity run --no-attribution`` (b).
FAMILY_VARIANTS = ("bare", "parity")


def family_args(args: argparse.Namespace, base: Path) -> argparse.Namespace:
    return argparse.Namespace(**{**vars(args), "base_model": str(REPO / base)})


def family_summary(
    name: str, runs: Path, by_variant: dict[str, list[dict[str, Any]]]
) -> dict[str, Any]:
    """Medians of a family job's (a) and (b), their ratios, and whether the bare loop
    rendered parity's reference images pixel for pixel."""
    table = {
        v: {
            "wall_s": median_of(rs, "wall_s"),
            "cpu_s": median_of(rs, "cpu_s"),
            "renders": rs[0].get("renders"),
            "walls_s": [r["wall_s"] for r in rs],
        }
        for v, rs in by_variant.items()
    }
    label, job, _ = FAMILY_JOBS[name]
    return {
        "name": name,
        "label": label,
        "job": job.as_posix(),
        "table": table,
        "ratio": table["parity"]["wall_s"] / table["bare"]["wall_s"],
        "cpu_ratio": table["parity"]["cpu_s"] / table["bare"]["cpu_s"],
        "bare_equals_parity_renders": same_pixels(
            runs / f"{name}-bare-0", runs / f"{name}-parity-0"
        ),
    }


def family_ratio_line(summary: dict[str, Any]) -> str:
    return f"{summary['name']} ratio: parity/bare={summary['ratio']:.3f}"


def render_ratio_line(ratios: dict[str, float]) -> str:
    return f"render ratio: parity-render/bare={ratios['render']:.3f}"


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
    by_family = {name: {v: [] for v in FAMILY_VARIANTS} for name in FAMILY_JOBS}
    for r in range(args.repeat):
        for variant in ALL_VARIANTS:  # interleaved, so load changes hit every variant alike
            result = spawn_variant(variant, job, runs / f"{variant}-{r}", args, request)
            by_variant[variant].append(result)
            print(
                f"repeat {r + 1}/{args.repeat} ({LETTERS[variant]}) {variant}: "
                f"{result['wall_s']:.2f} s wall, {result['renders']} renders",
                flush=True,
            )
        for name, (label, family_job, base) in FAMILY_JOBS.items():  # in the same rounds
            for variant in FAMILY_VARIANTS:
                result = spawn_variant(
                    variant,
                    REPO / family_job,
                    runs / f"{name}-{variant}-{r}",
                    family_args(args, base),
                )
                by_family[name][variant].append(result)
                print(
                    f"repeat {r + 1}/{args.repeat} {label} ({LETTERS[variant]}) {variant}: "
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
    summary["families"] = families = {
        name: {**family_summary(name, runs, runs_of), "runs": runs_of}
        for name, runs_of in by_family.items()
    }
    print(f"bare renders identical to parity's reference renders: {identical}")
    print(f"bare request renders identical to parity render's: {render_identical}")
    print_table(
        summary,
        f"medians over {args.repeat} run(s), wall time from process start; "
        "ratio: (a)-(d) to (a), (e)-(f) to (f)",
    )
    for variant in ("parity", "attribute"):
        print(noise_floor_line(f"({LETTERS[variant]}) {variant}", summary["table"][variant]))
    summary["noise_floor_bf16"] = bf16 = bf16_noise_floor(runs, args)
    print(noise_floor_line(f"(c) attribute, bf16 UI job {bf16['job']}", bf16))
    cpu = summary["cpu_ratios"]
    print(
        f"cpu-time ratios: parity/bare={cpu['parity']:.3f} "
        f"attribute/bare={cpu['attribute']:.3f} server/bare={cpu['server']:.3f} "
        f"parity-render/bare={cpu['render']:.3f}"
    )
    for family in families.values():
        t = family["table"]
        print(
            f"{family['label']} job {family['job']}: bare renders identical to parity's "
            f"reference renders: {family['bare_equals_parity_renders']}; (a) bare "
            f"{t['bare']['wall_s']:.2f} s, (b) parity {t['parity']['wall_s']:.2f} s wall, "
            f"{t['bare']['renders']} renders; cpu-time parity/bare={family['cpu_ratio']:.3f}"
        )
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=2), encoding="utf-8")
    for family in families.values():
        print(family_ratio_line(family))
    print(render_ratio_line(summary["ratios"]))
    print(ratios_line(summary["ratios"]))
    return 0
