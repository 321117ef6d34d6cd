"""GPU noise floor: how far renders of one setting move with SDPA's attention kernel, with
TF32, with reduced-precision reductions and with parity's own alternate kernel path (all
three at once, what a run measures), scored with parity's metrics (``python -m bench
--full-size --noise-floor``, first model)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bench.common import _drop_engine_adapter, _fresh_engine, _reference_settings


def noise_floor(
    pipe: Any, job_dir: Path, device: str, dtype_name: str, work: Path
) -> dict[str, Any]:
    """How far renders of one setting move with the attention kernel, TF32 and
    reduced-precision reductions.

    The job's first reference setting is rendered with PyTorch's defaults and TF32 off
    (SDPA picks its kernel: flash or memory-efficient attention on CUDA; bf16/fp16
    matmuls may reduce in reduced precision, PyTorch's default), again with SDPA forced
    to its math kernel, again with TF32 on for matmuls and convolutions, again with
    reduced-precision reductions off, and again through parity's alternate kernel path
    (:func:`parity.render.engine.alternate_kernels`: all three switched, the noise floor
    a run measures; ``NoiseFloor`` is recorded for it as a run records it). Each
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
    saved = (
        cuda[0].allow_tf32,
        cuda[1].allow_tf32,
        cuda[0].allow_bf16_reduced_precision_reduction,
        cuda[0].allow_fp16_reduced_precision_reduction,
    )

    def render(*, alternate: bool = False) -> np.ndarray:
        engine._embeddings.clear()
        out = engine.render(settings, alternate=alternate)
        return np.array(out.image.convert("RGB"))

    try:
        cuda[0].allow_tf32 = cuda[1].allow_tf32 = False
        default = render()
        with sdpa_kernel(SDPBackend.MATH):
            math = render()
        cuda[0].allow_tf32 = cuda[1].allow_tf32 = True
        tf32 = render()
        cuda[0].allow_tf32 = cuda[1].allow_tf32 = False
        cuda[0].allow_bf16_reduced_precision_reduction = not saved[2]
        cuda[0].allow_fp16_reduced_precision_reduction = not saved[3]
        reductions = render()
        cuda[0].allow_bf16_reduced_precision_reduction = saved[2]
        cuda[0].allow_fp16_reduced_precision_reduction = saved[3]
        alternate = render(alternate=True)  # switches from these defaults and restores them
    finally:
        cuda[0].allow_tf32, cuda[1].allow_tf32 = saved[0], saved[1]
        cuda[0].allow_bf16_reduced_precision_reduction = saved[2]
        cuda[0].allow_fp16_reduced_precision_reduction = saved[3]
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
        "reduced-precision reductions: default vs flipped": reductions,
        "parity's alternate path (all three)": alternate,
    }
    from parity.render.engine import alternate_method

    out: dict[str, Any] = {
        "setting": {"width": settings.width, "height": settings.height, "steps": settings.steps},
        "pairs": {},
        # As a run records it; the CUDA k is not measured yet (NOISE_FLOOR_K is CPU's).
        "run_floor": compare.measure_floor(
            default, alternate, codec=codec, method=alternate_method(device), dtype=dtype_name
        ).to_json(),
        "noise_floor_k": compare.NOISE_FLOOR_K,
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
