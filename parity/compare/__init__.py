"""Compare a render with a stored preview.

Images are ``uint8`` RGB arrays of shape ``(H, W, 3)`` with values in ``[0, 255]``.
All metric functions take the images first and everything else by keyword.

The metrics are

- SSIM: scikit-image's ``structural_similarity`` with a gaussian window (11x11 px,
  sigma 1.5 px), population covariance and ``data_range=255`` (see :func:`ssim`),
- PSNR in dB (``data_range=255``; capped at :data:`PSNR_IDENTICAL_DB` in records),
- cosine distance between VAE latents (optional: needs an encoder),
- LPIPS (optional: only when its backbone weights are already cached locally).

No metric is written out here: scikit-image is the reference definition of SSIM and
PSNR, and torchmetrics computes the same numbers in torch for a batch of renders on the
renders' device (:func:`compare_many`).

Where the numbers are computed
------------------------------
``device="cpu"`` (the default) calls scikit-image itself, one pair at a time: on a CPU it
is the fastest way to the reference numbers (SSIM of a 1024x1024 pair: 0.55-0.9 s of one
core, against 1.2-1.4 s for torchmetrics in float32 and 18-22 s in float64, whose
depthwise convolution has no fast CPU kernel; PSNR: 0.02-0.03 s; ``bench/bench.py
--full-size`` prints ms per megapixel of each path). On a GPU (``device="cuda"``) SSIM
and PSNR of all renders of one preview are computed in one batch with torchmetrics, in
float64: the variances are ``E[x^2] - E[x]^2`` of values up to 255, and in float32 that
cancellation moves SSIM by up to 5e-4 on near-white flat areas (measured against
scikit-image), more than the 1e-4 agreement promised here. In float64 SSIM agrees with
scikit-image to about 1e-12 and PSNR to about 2e-6 dB (torchmetrics takes the log of
``data_range`` in float32).

MS-SSIM is no longer computed, and :attr:`Comparison.ms_ssim` is always None (the
``ms_ssim`` column of results.csv stays, empty, as part of the file format). It was not
part of the verdict, nothing decided on it, and it cost more than SSIM itself (0.79 s of
the 1.3 s of a 1024x1024 comparison). scikit-image has no MS-SSIM to check a torch one
against; torchmetrics' version needs 176 px on the shorter side for its 5 scales, so it
is undefined on the fixtures and small previews (64x64, 80x112: there the former
hand-written one fell back to fewer scales and read 0.0 whenever one scale's term was
negative); and it is a different definition from the one recorded so far (it averages
the coarsest scale's SSIM over the padded border and keeps all 5 weights), so old and
new values would not have been comparable anyway.

Previews written by ai-toolkit are JPEG files (Pillow's defaults: quality 75, 4:2:0
chroma subsampling), while renders are lossless. :func:`inspect_codec` reads how a preview
was encoded (its quantization tables and chroma subsampling) and :func:`encode_like`
encodes a render the same way, so both sides carry the same compression loss before they
are compared.
"""

from __future__ import annotations

# One module a responsibility: images (reading and pairing images), clips (a video's
# frames and frame duration, encoding frames like a file), metrics (SSIM, PSNR),
# latent (VAE-latent distance), lpips, codec (encoding like a file), scores (Comparison,
# compare_many), verdict (Thresholds), noise (noise floors and the one verdict rule,
# within_noise, that Thresholds and the float-noise rule apply) and served (check_served). The names imported "as" themselves are re-exported outside
# __all__: public ones added since, and private ones that tests and bench/ call.
from parity.compare.clips import (
    WEBP_QUALITY,
    Clip,
    encode_clip,
    encode_frames_like,
    frame_ms,
    load_clip,
)
from parity.compare.codec import Codec, encode_like, inspect_codec, jpeg_floor
from parity.compare.images import align_sizes, load_rgb
from parity.compare.latent import encode_latent, latent_distance, make_vae_encoder
from parity.compare.lpips import LPIPS_BACKBONES, lpips_available, lpips_distance
from parity.compare.metrics import PSNR_IDENTICAL_DB, SSIM_SIGMA, SSIM_WINDOW, psnr, ssim
from parity.compare.metrics import _is_cpu as _is_cpu
from parity.compare.metrics import _torch_ssim_psnr as _torch_ssim_psnr
from parity.compare.noise import (
    FLOAT_NOISE_LEVELS,
    NOISE_FLOOR_K,
    Difference,
    NoiseCheck,
    NoiseFloor,
    Rule,
    codec_spread,
    measure_floor,
    same_within_noise,
    widened,
    within_noise,
)
from parity.compare.noise import is_half as is_half
from parity.compare.scores import Comparison, FrameScore, compare, compare_clips, compare_many
from parity.compare.scores import Renders as Renders
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
    "NOISE_FLOOR_K",
    "ImageReadError",
    "Codec",
    "Clip",
    "Comparison",
    "FrameScore",
    "WEBP_QUALITY",
    "Thresholds",
    "NoiseCheck",
    "NoiseFloor",
    "Rule",
    "Difference",
    "load_rgb",
    "load_clip",
    "frame_ms",
    "encode_clip",
    "encode_frames_like",
    "compare_clips",
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
    "measure_floor",
    "widened",
    "within_noise",
]
