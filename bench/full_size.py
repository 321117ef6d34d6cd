"""Benchmark: full-size pipelines, and metric throughput (``python -m bench --full-size``).

``--full-size`` (CUDA) builds the real Z-Image architecture with random weights in
process (no download, weights materialised once, directly in bf16 on the GPU) and runs
the four variants in that process at 1024x1024 with the real step counts; model building
is then excluded from all four. ``--scale tiny`` runs the same code path at toy size
(also on CPU), which is how it is tested.

With ``--noise-floor`` the full-size run also renders one setting with SDPA's math
kernel vs its default one and with TF32 off vs on, scored with parity's metrics
(:mod:`bench.noise_floor`); with ``--oom-fallback`` it caps GPU memory so that a render
runs out of it and the engine's offload fallback renders it (:mod:`bench.oom`).
``bench/gpu.sh`` runs all of it as one command. The last line of the output is
``ratios: parity/bare=<b/a> attribute/bare=<c/a> server/bare=<d/a>``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.common import (
    LETTERS,
    VARIANTS,
    _drop_engine_adapter,
    _undo_instrumentation,
    counterfactual_stats,
    environment,
    instrument_parity,
    parity_timings,
    peak_memory_mib,
    print_table,
    ratios_line,
    sample_config,
    set_threads,
    summarize,
)
from bench.cpu import ADAPTER, bare_loop, server_loop
from bench.noise_floor import noise_floor, noise_floor_verdict
from bench.oom import oom_fallback


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
    from parity.plan.sides import preview_settings
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
            image = engine.render(preview_settings(job, s, checkpoint)).image  # an image family
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
    from parity.render.engine import RenderEngine
    from parity.run import RunOptions, run_job
    from parity.settings import SchedulerConfig

    shift = float(pipe.scheduler.config.shift)
    results: dict[str, dict[str, Any]] = {}
    for variant in VARIANTS:  # server last: it turns model CPU offload on for good
        if variant == "server" and before_server is not None:
            before_server()
        out = runs / variant
        _reset_peak(device)
        started = time.perf_counter()
        if variant == "bare":
            renders = bare_loop(
                pipe, job, out, device, checkpoint_scheduler=SchedulerConfig(shift=shift)
            )
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
            engine = RenderEngine(str(job), device=device, family="zimage")
            engine.adopt(pipe, dtype_name)
            engine.checkpoint_scheduler = SchedulerConfig(shift=shift)
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
            "bench: --full-size builds the real 6B Z-Image model and needs a CUDA GPU "
            "(about 25 GiB of GPU memory); run it with --device cuda on a GPU machine, or "
            "use --scale tiny to run the same code path at toy size on CPU"
        )
    if args.device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            raise SystemExit("bench: --device cuda given but torch sees no CUDA device")
    set_threads(args.threads)
    from parity.render.engine import RenderEngine
    from parity.settings import SchedulerConfig

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
        engine = RenderEngine("(in process)", device=args.device, family="zimage")
        engine.adopt(pipe, dtype_name)
        engine.checkpoint_scheduler = SchedulerConfig(shift=float(pipe.scheduler.config.shift))
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
