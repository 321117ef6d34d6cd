"""Compare a render with a stored preview (see :mod:`parity.compare.metrics`)."""

from __future__ import annotations

from parity.compare.images import align_sizes, load_rgb
from parity.compare.metrics import (
    LPIPS_BACKBONES,
    PSNR_IDENTICAL_DB,
    SSIM_SIGMA,
    SSIM_WINDOW,
    Codec,
    Comparison,
    compare,
    compare_many,
    encode_latent,
    encode_like,
    inspect_codec,
    jpeg_floor,
    latent_distance,
    lpips_available,
    lpips_distance,
    make_vae_encoder,
    psnr,
    ssim,
)
from parity.compare.metrics import Renders as Renders
from parity.compare.metrics import _is_cpu as _is_cpu
from parity.compare.metrics import _torch_ssim_psnr as _torch_ssim_psnr
from parity.compare.noise import FLOAT_NOISE_LEVELS, NoiseCheck, codec_spread, same_within_noise
from parity.compare.noise import HALF_NOISE_LEVELS as HALF_NOISE_LEVELS
from parity.compare.noise import HALF_NOISE_MEAN as HALF_NOISE_MEAN
from parity.compare.noise import noise_limits as noise_limits
from parity.compare.served import ServedCheck as ServedCheck
from parity.compare.served import check_served as check_served
from parity.compare.verdict import Thresholds, distance
from parity.errors import ImageReadError

__all__ = [
    "PSNR_IDENTICAL_DB",
    "SSIM_SIGMA",
    "SSIM_WINDOW",
    "LPIPS_BACKBONES",
    "FLOAT_NOISE_LEVELS",
    "ImageReadError",
    "Codec",
    "Comparison",
    "Thresholds",
    "NoiseCheck",
    "load_rgb",
    "ssim",
    "psnr",
    "latent_distance",
    "encode_latent",
    "make_vae_encoder",
    "lpips_available",
    "lpips_distance",
    "inspect_codec",
    "encode_like",
    "jpeg_floor",
    "align_sizes",
    "compare",
    "compare_many",
    "distance",
    "codec_spread",
    "same_within_noise",
]
