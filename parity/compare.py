"""Compare a render with a stored preview.

Images are ``uint8`` RGB arrays of shape ``(H, W, 3)`` with values in ``[0, 255]``.
All metric functions take the two images first and everything else by keyword.

The metrics are

- SSIM (scikit-image, gaussian window, sigma 1.5 px, population covariance),
- PSNR in dB (capped at :data:`PSNR_IDENTICAL_DB` where a finite number is needed),
- MS-SSIM (up to 5 scales, the Wang et al. 2003 weights),
- cosine distance between VAE latents (optional: needs an encoder),
- LPIPS (optional: only when its backbone weights are already cached locally).

Previews written by ai-toolkit are JPEG files (Pillow's defaults: quality 75, 4:2:0
chroma subsampling), while renders are lossless. :func:`inspect_codec` reads how a preview
was encoded and :func:`encode_like` encodes a render the same way, so both sides carry the
same compression loss before they are compared.
"""

from __future__ import annotations

import importlib.util
import io
import logging
import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from parity.errors import ImageReadError
from parity.settings import (
    DEFAULT_LATENT_DISTANCE_MAX,
    DEFAULT_PSNR_MIN,
    DEFAULT_SSIM_MIN,
)

logger = logging.getLogger(__name__)

__all__ = [
    "PSNR_IDENTICAL_DB",
    "SSIM_SIGMA",
    "MS_SSIM_WEIGHTS",
    "LPIPS_BACKBONES",
    "ImageReadError",
    "Codec",
    "Comparison",
    "Thresholds",
    "load_rgb",
    "ssim",
    "psnr",
    "ms_ssim",
    "latent_distance",
    "make_vae_encoder",
    "lpips_available",
    "lpips_distance",
    "inspect_codec",
    "encode_like",
    "jpeg_floor",
    "align_sizes",
    "compare",
    "distance",
]

#: PSNR (dB) reported for identical images where a finite number is needed (JSON, CSV).
#: For uint8 images a single 1-level difference in a 1024x1024 RGB image is ~113 dB, so
#: values above this cap only ever mean "a handful of least-significant-bit differences".
PSNR_IDENTICAL_DB = 100.0

#: Standard deviation (px) of the gaussian SSIM window. With scikit-image's truncation at
#: 3.5 sigma the window is 11x11 px, as in Wang et al. 2004.
SSIM_SIGMA = 1.5

#: Per-scale exponents of MS-SSIM, finest scale first (Wang, Simoncelli & Bovik 2003).
MS_SSIM_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)

#: LPIPS backbones in order of preference: (lpips ``net`` name, torchvision weight file).
LPIPS_BACKBONES = (
    ("alex", "alexnet-owt-7be5be79.pth"),
    ("vgg", "vgg16-397923af.pth"),
    ("squeeze", "squeezenet1_1-b8a52dc0.pth"),
)

_SSIM_TRUNCATE = 3.5
_SSIM_WINDOW = 2 * int(_SSIM_TRUNCATE * SSIM_SIGMA + 0.5) + 1  # 11 px
_K1, _K2 = 0.01, 0.03
_DATA_RANGE = 255.0
_MID_GREY = np.float32(127.5)

# Formats whose decode gives back exactly the pixels that were saved (for 8-bit RGB).
_LOSSLESS_FORMATS = frozenset({"PNG", "BMP", "TIFF", "PPM", "TGA", "QOI"})

# ITU-T T.81 Annex K tables (the IJG/libjpeg base tables), natural (row-major) order,
# the order Pillow reports in ``Image.quantization``.
_STD_LUMA = np.array(
    [
        [16, 11, 10, 16, 24, 40, 51, 61],
        [12, 12, 14, 19, 26, 58, 60, 55],
        [14, 13, 16, 24, 40, 57, 69, 56],
        [14, 17, 22, 29, 51, 87, 80, 62],
        [18, 22, 37, 56, 68, 109, 103, 77],
        [24, 35, 55, 64, 81, 104, 113, 92],
        [49, 64, 78, 87, 103, 121, 120, 101],
        [72, 92, 95, 98, 112, 100, 103, 99],
    ],
    dtype=np.int64,
).ravel()
_STD_CHROMA = np.array(
    [
        [17, 18, 24, 47, 99, 99, 99, 99],
        [18, 21, 26, 66, 99, 99, 99, 99],
        [24, 26, 56, 99, 99, 99, 99, 99],
        [47, 66, 99, 99, 99, 99, 99, 99],
        [99, 99, 99, 99, 99, 99, 99, 99],
        [99, 99, 99, 99, 99, 99, 99, 99],
        [99, 99, 99, 99, 99, 99, 99, 99],
        [99, 99, 99, 99, 99, 99, 99, 99],
    ],
    dtype=np.int64,
).ravel()

_SUBSAMPLING_NAMES = {0: "4:4:4", 1: "4:2:2", 2: "4:2:0"}


# --------------------------------------------------------------------------- loading


def load_rgb(path: str | os.PathLike[str]) -> np.ndarray:
    """Read an image file fully and return its pixels as RGB.

    Parameters
    ----------
    path : str or os.PathLike
        Image file (any format Pillow reads).

    Returns
    -------
    numpy.ndarray
        ``uint8`` array of shape ``(H, W, 3)``, values in ``[0, 255]``. Alpha is dropped
        and grayscale is replicated to three channels. EXIF orientation is *not* applied:
        the stored pixel grid is returned as written.

    Raises
    ------
    ImageReadError
        If the file is missing, empty, not an image, truncated or otherwise undecodable.
        The whole image is decoded here, so a truncated file fails now rather than later.
    """
    from PIL import Image, ImageFile, UnidentifiedImageError

    p = Path(path)
    try:
        size = p.stat().st_size
    except OSError as exc:
        raise ImageReadError(p, f"cannot access file ({exc.strerror or exc})") from exc
    if not p.is_file():
        raise ImageReadError(p, "not a regular file")
    if size == 0:
        raise ImageReadError(p, "file is empty (0 bytes)")
    if ImageFile.LOAD_TRUNCATED_IMAGES:
        # A process-wide flag set elsewhere would silently pad truncated files with grey.
        raise ImageReadError(
            p, "PIL.ImageFile.LOAD_TRUNCATED_IMAGES is set; refusing to read partial images"
        )
    try:
        with Image.open(p) as im:
            im.load()
            rgb = im.convert("RGB")
    except UnidentifiedImageError as exc:
        raise ImageReadError(p, f"not a recognised image file ({size} bytes)") from exc
    except Image.DecompressionBombError as exc:
        raise ImageReadError(p, f"image too large: {exc}") from exc
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise ImageReadError(p, f"decoding failed, file truncated or corrupt ({exc})") from exc
    return np.asarray(rgb, dtype=np.uint8).copy()


def _check_pair(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    a = np.asarray(a)
    b = np.asarray(b)
    for name, x in (("a", a), ("b", b)):
        if x.ndim != 3 or x.shape[2] != 3:
            raise ValueError(f"image {name} must have shape (H, W, 3), got {x.shape}")
        if x.dtype != np.uint8:
            raise ValueError(f"image {name} must be uint8 in [0, 255], got dtype {x.dtype}")
        if x.shape[0] == 0 or x.shape[1] == 0:
            raise ValueError(f"image {name} is empty, shape {x.shape}")
    if a.shape != b.shape:
        raise ValueError(f"images differ in size: {a.shape} vs {b.shape}; use align_sizes() first")
    return a, b


# --------------------------------------------------------------------------- pixel metrics


def _odd_window(height: int, width: int) -> int:
    """Largest odd crop window <= the standard 11 px that fits the image."""
    side = min(height, width, _SSIM_WINDOW)
    return side if side % 2 == 1 else side - 1


def ssim(a: np.ndarray, b: np.ndarray) -> float:
    """Structural similarity of two RGB images.

    Parameters
    ----------
    a, b : numpy.ndarray
        ``uint8`` RGB images of the same shape ``(H, W, 3)``.

    Returns
    -------
    float
        Mean SSIM over pixels and channels, in ``[-1, 1]``; 1.0 for identical images.

    Notes
    -----
    The definition and settings of ``skimage.metrics.structural_similarity(a, b,
    channel_axis=-1, data_range=255, gaussian_weights=True, sigma=1.5,
    use_sample_covariance=False)``, i.e. Wang et al. 2004: an 11x11 px gaussian window
    (sigma 1.5 px, truncated at 3.5 sigma, reflect padding), population covariance,
    ``K1=0.01``, ``K2=0.03``, computed per channel on R, G, B and averaged, excluding a
    border of half the window (5 px). It is evaluated here in float32 with the five
    filtered maps of all channels in one pass, so that :func:`compare` can share the
    filtering with :func:`ms_ssim`; the result agrees with scikit-image to within 1e-5.
    A 1024x1024 pair takes about 0.45 s of one CPU core.
    Images smaller than 11 px on a side keep the same gaussian weighting but exclude a
    narrower border (the largest odd window that fits, down to 1 px, i.e. no border), as
    scikit-image does when given that ``win_size``.

    References
    ----------
    Z. Wang, A. C. Bovik, H. R. Sheikh, E. P. Simoncelli, "Image quality assessment: from
    error visibility to structural similarity", IEEE TIP 13(4), 2004.
    """
    a, b = _check_pair(a, b)
    return _ssim_and_cs(_planes(a), _planes(b))[0]


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """Peak signal-to-noise ratio of two RGB images.

    Parameters
    ----------
    a, b : numpy.ndarray
        ``uint8`` RGB images of the same shape ``(H, W, 3)``.

    Returns
    -------
    float
        ``10 * log10(255**2 / MSE)`` in dB, MSE over all pixels and channels.
        ``float('inf')`` for identical images; see :data:`PSNR_IDENTICAL_DB` for the
        finite value the records use instead.
    """
    a, b = _check_pair(a, b)
    diff = a.astype(np.float64) - b.astype(np.float64)
    mse = float(np.mean(diff * diff))
    if mse == 0.0:
        return float("inf")
    return float(10.0 * math.log10(_DATA_RANGE**2 / mse))


def _capped_psnr(a: np.ndarray, b: np.ndarray) -> float:
    return min(psnr(a, b), PSNR_IDENTICAL_DB)


def _planes(rgb: np.ndarray) -> np.ndarray:
    """``(H, W, 3)`` uint8 to contiguous float32 ``(3, H, W)``, centred on mid-grey.

    Centring (values in ``[-127.5, 127.5]``) keeps the float32 variances accurate; the
    mid-grey offset is added back for the luminance term.
    """
    return np.ascontiguousarray(np.moveaxis(rgb, -1, 0), dtype=np.float32) - _MID_GREY


def _ssim_and_cs(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """Mean SSIM and mean contrast-structure term of float32 ``(C, H, W)`` planes.

    Window, constants and border crop as in :func:`ssim`; means over all channels.
    """
    from scipy.ndimage import gaussian_filter

    stack = np.stack([x, y, x * x, y * y, x * y])
    ux, uy, uxx, uyy, uxy = gaussian_filter(
        stack, sigma=(0, 0, SSIM_SIGMA, SSIM_SIGMA), truncate=_SSIM_TRUNCATE, mode="reflect"
    )
    del stack
    vx = uxx - ux * ux
    vy = uyy - uy * uy
    vxy = uxy - ux * uy
    c1 = (_K1 * _DATA_RANGE) ** 2
    c2 = (_K2 * _DATA_RANGE) ** 2
    cs_map = (2 * vxy + c2) / (vx + vy + c2)
    ux += _MID_GREY
    uy += _MID_GREY
    ssim_map = ((2 * ux * uy + c1) / (ux * ux + uy * uy + c1)) * cs_map
    pad = (_odd_window(*x.shape[1:]) - 1) // 2
    if pad:
        ssim_map = ssim_map[:, pad:-pad, pad:-pad]
        cs_map = cs_map[:, pad:-pad, pad:-pad]
    return float(ssim_map.mean(dtype=np.float64)), float(cs_map.mean(dtype=np.float64))


def _ms_ssim_scales(height: int, width: int) -> int:
    """Number of scales for which the coarsest one is still >= the 11 px window."""
    n = 1
    side = min(height, width)
    while n < len(MS_SSIM_WEIGHTS) and side // 2 >= _SSIM_WINDOW:
        side //= 2
        n += 1
    return n


def ms_ssim(a: np.ndarray, b: np.ndarray) -> float:
    """Multi-scale structural similarity of two RGB images.

    Parameters
    ----------
    a, b : numpy.ndarray
        ``uint8`` RGB images of the same shape ``(H, W, 3)``.

    Returns
    -------
    float
        MS-SSIM in ``[0, 1]``; 1.0 for identical images.

    Notes
    -----
    ``prod_j cs_j ** w_j`` over the finer scales times ``ssim_M ** w_M`` at the coarsest
    scale M, with the per-scale SSIM of :func:`ssim` (gaussian window sigma 1.5 px, 11x11,
    ``data_range=255``, K1=0.01, K2=0.03) and the weights
    :data:`MS_SSIM_WEIGHTS` = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333). Between scales the
    images are low-pass filtered and halved by 2x2 averaging (an odd last row/column is
    dropped). Per-scale terms are averaged over R, G, B and clipped at 0 before the
    exponent. The full 5 scales need a shorter side of at least 176 px; smaller images use
    as many scales as keep the coarsest one at least 11 px (at least 1) and the used weights
    are renormalised to sum to 1. With one scale the result is ``max(ssim(a, b), 0)``.

    References
    ----------
    Z. Wang, E. P. Simoncelli, A. C. Bovik, "Multiscale structural similarity for image
    quality assessment", Asilomar Conference on Signals, Systems and Computers, 2003.
    """
    a, b = _check_pair(a, b)
    return _ssim_ms_ssim(a, b)[1]


def _ssim_ms_ssim(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """(SSIM, MS-SSIM) of a checked pair, sharing the finest scale's filtering."""
    n_scales = _ms_ssim_scales(*a.shape[:2])
    weights = np.asarray(MS_SSIM_WEIGHTS[:n_scales], dtype=np.float64)
    weights = weights / weights.sum()
    x, y = _planes(a), _planes(b)
    terms: list[float] = []
    first_ssim = 0.0
    for scale in range(n_scales):
        s_mean, cs_mean = _ssim_and_cs(x, y)
        if scale == 0:
            first_ssim = s_mean
        if scale == n_scales - 1:
            terms.append(s_mean)
        else:
            terms.append(cs_mean)
            x, y = _halve(x), _halve(y)
    values = np.clip(np.asarray(terms), 0.0, None)
    return first_ssim, float(np.prod(values**weights))


def _halve(x: np.ndarray) -> np.ndarray:
    """2x2 average pooling of ``(C, H, W)`` planes (odd last row/column dropped)."""
    h, w = (x.shape[1] // 2) * 2, (x.shape[2] // 2) * 2
    x = x[:, :h, :w]
    return 0.25 * (x[:, 0::2, 0::2] + x[:, 1::2, 0::2] + x[:, 0::2, 1::2] + x[:, 1::2, 1::2])


# --------------------------------------------------------------------------- sizes


def align_sizes(preview: np.ndarray, render: np.ndarray) -> tuple[np.ndarray, np.ndarray, bool]:
    """Bring a render to the preview's size so that the two can be compared.

    Parameters
    ----------
    preview : numpy.ndarray
        ``uint8`` RGB preview, ``(H, W, 3)``; its size is kept.
    render : numpy.ndarray
        ``uint8`` RGB render, ``(H', W', 3)``.

    Returns
    -------
    preview : numpy.ndarray
        Unchanged.
    render : numpy.ndarray
        The render, resized to ``(H, W, 3)`` with Pillow's bicubic filter
        (``Image.Resampling.BICUBIC``) when the sizes differ, else unchanged.
    resized : bool
        True if the render had to be resized. A size mismatch is itself a finding (the
        server snapped or ignored the requested size); the metrics after resizing only say
        how close the content is.
    """
    if preview.shape[:2] == render.shape[:2]:
        return preview, render, False
    from PIL import Image

    height, width = preview.shape[:2]
    resized = Image.fromarray(render).resize((width, height), Image.Resampling.BICUBIC)
    return preview, np.asarray(resized.convert("RGB"), dtype=np.uint8).copy(), True


# --------------------------------------------------------------------------- latents


def _to_model_input(rgb: np.ndarray) -> Any:
    import torch

    x = torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1).unsqueeze(0)
    return x.to(torch.float32) / 127.5 - 1.0


def encode_latent(rgb: np.ndarray, encode: Callable[[Any], Any]) -> Any:
    """Flattened float64 CPU latent of one ``uint8`` RGB image (see :func:`latent_distance`)."""
    import torch

    with torch.no_grad():
        z = torch.as_tensor(encode(_to_model_input(np.asarray(rgb))))
    return z.detach().to("cpu", torch.float64).flatten()


def latent_distance(
    a: np.ndarray,
    b: np.ndarray,
    *,
    encode: Callable[[Any], Any],
    a_latent: Any = None,
) -> float:
    """Cosine distance between the latents of two images.

    Parameters
    ----------
    a, b : numpy.ndarray
        ``uint8`` RGB images ``(H, W, 3)``. If the sizes differ, ``b`` is resized to the
        size of ``a`` first (see :func:`align_sizes`).
    encode : callable
        Takes a ``float32`` torch tensor ``(1, 3, H, W)`` with values in ``[-1, 1]`` and
        returns a latent tensor, e.g. ``lambda x: vae.encode(x).latent_dist.mean`` or
        :func:`make_vae_encoder`. It must be deterministic (use the mean, not a sample).
    a_latent : torch.Tensor, optional
        ``encode_latent(a, encode)``, computed once by a caller that compares many
        renders with the same image ``a``.

    Returns
    -------
    float
        ``1 - cos(z_a, z_b)`` of the flattened latents, in ``[0, 2]``; 0 for identical
        images, about 1 for unrelated ones. Computed in float64.
    """
    import torch

    a, b, _ = align_sizes(np.asarray(a), np.asarray(b))
    a, b = _check_pair(a, b)
    za = encode_latent(a, encode) if a_latent is None else a_latent
    zb = encode_latent(b, encode)
    na, nb = float(torch.linalg.vector_norm(za)), float(torch.linalg.vector_norm(zb))
    if na == 0.0 or nb == 0.0:
        return 0.0 if na == nb else 1.0
    cosine = float(torch.dot(za, zb)) / (na * nb)
    return float(min(max(1.0 - cosine, 0.0), 2.0))


def make_vae_encoder(vae: Any, *, normalize: bool = True) -> Callable[[Any], Any]:
    """Wrap a diffusers ``AutoencoderKL`` as an ``encode`` callable.

    Parameters
    ----------
    vae : diffusers.AutoencoderKL
        The pipeline's VAE (any object with ``encode(x).latent_dist.mean``).
    normalize : bool, default True
        Map the posterior mean into the denoiser's latent space,
        ``(mean - shift_factor) * scaling_factor``, using the VAE config (missing factors
        count as 0 and 1). This centres the latents, which makes cosine distances between
        them more discriminating. False returns the raw posterior mean.

    Returns
    -------
    callable
        ``encode(x)`` for a ``float32`` tensor ``(1, 3, H, W)`` in ``[-1, 1]``; runs under
        ``torch.no_grad()`` on the VAE's device and in its dtype, and returns the latents
        (float32, CPU).
    """
    import torch

    config = getattr(vae, "config", None)
    shift = float(getattr(config, "shift_factor", None) or 0.0)
    scale = float(getattr(config, "scaling_factor", None) or 1.0)

    def encode(x: Any) -> Any:
        with torch.no_grad():
            x = x.to(device=vae.device, dtype=vae.dtype)
            mean = vae.encode(x).latent_dist.mean
            if normalize:
                mean = (mean - shift) * scale
            return mean.to("cpu", torch.float32)

    return encode


# --------------------------------------------------------------------------- LPIPS


def _torch_hub_checkpoints() -> Path:
    import torch

    return Path(torch.hub.get_dir()) / "checkpoints"


def _lpips_backbone() -> tuple[str | None, str]:
    if importlib.util.find_spec("lpips") is None:
        return None, "the lpips package is not installed"
    if importlib.util.find_spec("torchvision") is None:
        return None, "torchvision (needed by lpips for its backbone) is not installed"
    folder = _torch_hub_checkpoints()
    for net, filename in LPIPS_BACKBONES:
        if (folder / filename).is_file():
            return net, f"using the {net} backbone from {folder / filename}"
    names = ", ".join(f for _, f in LPIPS_BACKBONES)
    return None, f"no LPIPS backbone weights in the torch hub cache {folder} (looked for {names})"


def lpips_available() -> tuple[bool, str]:
    """Whether LPIPS can be computed here without downloading anything.

    Returns
    -------
    available : bool
        True if the ``lpips`` package and one backbone's weights (AlexNet, VGG16 or
        SqueezeNet 1.1, see :data:`LPIPS_BACKBONES`) are already in the local torch hub
        cache (``torch.hub.get_dir()/checkpoints``, set by ``TORCH_HOME``).
    reason : str
        Which backbone is used, or why LPIPS is unavailable.
    """
    net, reason = _lpips_backbone()
    return net is not None, reason


@lru_cache(maxsize=2)
def _lpips_model(net: str) -> Any:
    import lpips  # optional; only reached when installed and weights are cached

    model = lpips.LPIPS(net=net, verbose=False)
    model.eval()
    return model


def lpips_distance(a: np.ndarray, b: np.ndarray) -> float | None:
    """LPIPS perceptual distance, or None where it cannot be computed offline.

    Parameters
    ----------
    a, b : numpy.ndarray
        ``uint8`` RGB images ``(H, W, 3)``; ``b`` is resized to ``a`` if sizes differ.

    Returns
    -------
    float or None
        LPIPS v0.1 distance (>= 0, 0 for identical images; lower is more similar), or None
        when :func:`lpips_available` is False. Never downloads weights.
    """
    net, reason = _lpips_backbone()
    if net is None:
        logger.debug("LPIPS skipped: %s", reason)
        return None
    import torch

    a, b, _ = align_sizes(np.asarray(a), np.asarray(b))
    a, b = _check_pair(a, b)
    model = _lpips_model(net)
    with torch.no_grad():
        value = model(_to_model_input(a), _to_model_input(b))
    return float(value.flatten()[0])


# --------------------------------------------------------------------------- codecs


@dataclass(frozen=True)
class Codec:
    """How an image file was encoded.

    Attributes
    ----------
    format : str
        Pillow format name: ``"JPEG"``, ``"PNG"``, ``"WEBP"``, ...
    mode : str
        Pillow mode of the stored image (``"RGB"``, ``"L"``, ``"RGBA"``, ...).
    quality : int or None
        JPEG only: IJG quality 1..100 whose scaled standard tables best match the file's
        quantization tables.
    quality_exact : bool
        JPEG only: the file's tables are exactly the IJG tables for ``quality``
        (False for encoders with custom tables, where ``quality`` is the nearest).
    subsampling : str or None
        JPEG only: ``"4:4:4"``, ``"4:2:2"`` or ``"4:2:0"`` (None for grayscale or an
        unusual layout).
    qtables : tuple of tuple of int, or None
        JPEG only: the file's quantization tables (natural order), reused by
        :func:`encode_like` so the re-encoding quantizes exactly like the file.
    """

    format: str
    mode: str = "RGB"
    quality: int | None = None
    quality_exact: bool = False
    subsampling: str | None = None
    qtables: tuple[tuple[int, ...], ...] | None = None

    @property
    def lossless(self) -> bool:
        """True if decoding gives back the stored pixels exactly (PNG, BMP, TIFF, ...)."""
        return self.format.upper() in _LOSSLESS_FORMATS


def _ijg_table(base: np.ndarray, quality: int) -> np.ndarray:
    scale = 5000 // quality if quality < 50 else 200 - 2 * quality
    return np.clip((base * scale + 50) // 100, 1, 255)


def _estimate_jpeg_quality(tables: dict[int, list[int]]) -> tuple[int | None, bool]:
    if not tables:
        return None, False
    luma = np.asarray(tables.get(0, []), dtype=np.int64)
    chroma = np.asarray(tables.get(1, []), dtype=np.int64) if 1 in tables else None
    if luma.size != 64:
        return None, False
    best: tuple[int, int] | None = None
    for q in range(1, 101):
        err = int(np.abs(luma - _ijg_table(_STD_LUMA, q)).sum())
        if chroma is not None and chroma.size == 64:
            err += int(np.abs(chroma - _ijg_table(_STD_CHROMA, q)).sum())
        if best is None or err < best[0]:
            best = (err, q)
    assert best is not None
    return best[1], best[0] == 0


def inspect_codec(path: str | os.PathLike[str]) -> Codec:
    """Read how an image file was encoded.

    Parameters
    ----------
    path : str or os.PathLike
        Image file.

    Returns
    -------
    Codec
        Format and, for JPEG, the estimated IJG quality (from the quantization tables,
        compared with the Annex K tables scaled by the IJG quality formula: scale
        ``5000/q`` below 50, ``200 - 2q`` from 50, entries clamped to 1..255) and the
        chroma subsampling (``PIL.JpegImagePlugin.get_sampling``).

    Raises
    ------
    ImageReadError
        If the file cannot be opened as an image.
    """
    from PIL import Image, JpegImagePlugin, UnidentifiedImageError

    p = Path(path)
    try:
        with Image.open(p) as im:
            fmt = (im.format or "").upper()
            mode = im.mode
            if fmt != "JPEG":
                return Codec(format=fmt, mode=mode)
            tables = {int(k): list(v) for k, v in getattr(im, "quantization", {}).items()}
            sampling = JpegImagePlugin.get_sampling(im)
    except FileNotFoundError as exc:
        raise ImageReadError(p, "file not found") from exc
    except UnidentifiedImageError as exc:
        raise ImageReadError(p, "not a recognised image file") from exc
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageReadError(p, f"cannot parse header ({exc})") from exc
    quality, exact = _estimate_jpeg_quality(tables)
    qtables = tuple(tuple(tables[k]) for k in sorted(tables)) or None
    return Codec(
        format="JPEG",
        mode=mode,
        quality=quality,
        quality_exact=exact,
        subsampling=_SUBSAMPLING_NAMES.get(sampling),
        qtables=qtables,
    )


def encode_like(rgb: np.ndarray, codec: Codec) -> np.ndarray:
    """Encode an image the way a file was encoded, and decode it back.

    Parameters
    ----------
    rgb : numpy.ndarray
        ``uint8`` RGB image ``(H, W, 3)``, typically a lossless render.
    codec : Codec
        Target encoding, typically ``inspect_codec(preview_path)``.

    Returns
    -------
    numpy.ndarray
        ``uint8`` RGB ``(H, W, 3)`` after the round trip through Pillow. JPEG uses the
        codec's quantization tables when known (else its quality; Pillow's default 75 if
        neither) and its subsampling; grayscale JPEGs are encoded as grayscale. Lossless
        formats return an unchanged copy. Other formats are saved with Pillow's defaults
        for that format.
    """
    from PIL import Image

    rgb = np.asarray(rgb)
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise ValueError(f"expected a uint8 (H, W, 3) image, got {rgb.dtype} {rgb.shape}")
    if codec.lossless:
        return rgb.copy()
    im = Image.fromarray(rgb)
    options: dict[str, Any] = {}
    fmt = codec.format.upper()
    if fmt == "JPEG":
        if codec.mode == "L":
            im = im.convert("L")
        if codec.qtables:
            options["qtables"] = [list(t) for t in codec.qtables]
        else:
            options["quality"] = codec.quality if codec.quality is not None else 75
        if codec.subsampling is not None and im.mode != "L":
            options["subsampling"] = codec.subsampling
    buffer = io.BytesIO()
    im.save(buffer, format=fmt, **options)
    buffer.seek(0)
    with Image.open(buffer) as decoded:
        decoded.load()
        return np.asarray(decoded.convert("RGB"), dtype=np.uint8).copy()


def jpeg_floor(rgb: np.ndarray, codec: Codec) -> dict[str, float]:
    """Scores of an image against its own re-encoding.

    This is what a pixel-exact reproduction scores against a preview that went through
    ``codec``: the best possible result when comparing a lossless render with the preview
    directly, without codec matching.

    Parameters
    ----------
    rgb : numpy.ndarray
        ``uint8`` RGB image ``(H, W, 3)``.
    codec : Codec
        Encoding of the preview.

    Returns
    -------
    dict
        ``{"ssim": float, "psnr": float}``; SSIM in ``[-1, 1]``, PSNR in dB capped at
        :data:`PSNR_IDENTICAL_DB`. For lossless codecs 1.0 and the cap.
    """
    again = encode_like(rgb, codec)
    return {"ssim": ssim(rgb, again), "psnr": _capped_psnr(rgb, again)}


# --------------------------------------------------------------------------- comparison


@dataclass(frozen=True)
class Comparison:
    """Scores of one render against one preview.

    Attributes
    ----------
    ssim : float
        :func:`ssim`, in ``[-1, 1]``.
    psnr : float
        :func:`psnr` in dB, capped at :data:`PSNR_IDENTICAL_DB`.
    ms_ssim : float
        :func:`ms_ssim`, in ``[0, 1]``.
    latent_distance : float or None
        :func:`latent_distance`, in ``[0, 2]``; None without an encoder.
    lpips : float or None
        :func:`lpips_distance`; None where LPIPS is unavailable.
    resized : bool
        The render had a different size and was resized to the preview's for scoring.
    width_preview, height_preview, width_render, height_render : int
        Sizes in px before any resizing.
    codec_matched : bool
        The render was re-encoded like the preview (:func:`encode_like`) before scoring.
    """

    ssim: float
    psnr: float
    ms_ssim: float
    latent_distance: float | None
    lpips: float | None
    resized: bool
    width_preview: int
    height_preview: int
    width_render: int
    height_render: int
    codec_matched: bool = False


def compare(
    preview_rgb: np.ndarray,
    render_rgb: np.ndarray,
    *,
    codec: Codec | None = None,
    encode: Callable[[Any], Any] | None = None,
    preview_latent: Any = None,
) -> Comparison:
    """Score a render against a preview.

    Parameters
    ----------
    preview_rgb : numpy.ndarray
        ``uint8`` RGB preview ``(H, W, 3)`` as decoded from its file.
    render_rgb : numpy.ndarray
        ``uint8`` RGB render ``(H', W', 3)``, lossless.
    codec : Codec, optional
        How the preview was encoded. If given, the render (after resizing) is encoded the
        same way with :func:`encode_like` before scoring, so that an exact reproduction
        scores SSIM ~1.
    encode : callable, optional
        Latent encoder for :func:`latent_distance` (see :func:`make_vae_encoder`). Like
        the pixel metrics it sees the codec-matched render: JPEG loss alone moves the
        tiny fixture VAE's latents by a cosine distance of ~0.03, more than a real
        change of cfg would.
    preview_latent : torch.Tensor, optional
        ``encode_latent(preview_rgb, encode)`` computed once, when one preview is compared
        with several renders.

    Returns
    -------
    Comparison
        All scores; sizes are reported before resizing.
    """
    preview_rgb = np.asarray(preview_rgb)
    render_rgb = np.asarray(render_rgb)
    hp, wp = preview_rgb.shape[:2]
    hr, wr = render_rgb.shape[:2]
    preview_rgb, aligned, resized = align_sizes(preview_rgb, render_rgb)
    scored = encode_like(aligned, codec) if codec is not None else aligned
    preview_rgb, scored = _check_pair(preview_rgb, scored)
    latent = None
    if encode is not None:
        latent = latent_distance(preview_rgb, scored, encode=encode, a_latent=preview_latent)
    ssim_value, ms_ssim_value = _ssim_ms_ssim(preview_rgb, scored)
    return Comparison(
        ssim=ssim_value,
        psnr=_capped_psnr(preview_rgb, scored),
        ms_ssim=ms_ssim_value,
        latent_distance=latent,
        lpips=lpips_distance(preview_rgb, scored),
        resized=resized,
        width_preview=int(wp),
        height_preview=int(hp),
        width_render=int(wr),
        height_render=int(hr),
        codec_matched=codec is not None,
    )


@dataclass(frozen=True)
class Thresholds:
    """Limits within which a codec-matched render counts as reproducing its preview.

    Attributes
    ----------
    ssim_min : float, default 0.98
        Minimum :func:`ssim`.
    psnr_min : float, default 40.0
        Minimum :func:`psnr`, dB.
    latent_distance_max : float, default 0.025
        Maximum :func:`latent_distance` (ignored when the comparison has none).

    Notes
    -----
    Measured on the tiny Z-Image fixture (``fixtures/aitk_real/tiny_zimage``, 64x64 px,
    6 steps, prompt "a photo of a cat", seed 42, cfg 4.0; the preview saved as JPEG q75
    4:2:0 like ai-toolkit's, renders codec-matched, latents from the fixture VAE with
    :func:`make_vae_encoder`):

    ===========================  =============  =========  ===============
    render                       SSIM           PSNR (dB)  latent distance
    ===========================  =============  =========  ===============
    exact reproduction           1.0000         cap (100)  0.0000
    + uniform noise +-1 LSB [1]  0.989 - 0.994  44.4-46.6  0.003 - 0.016
    + uniform noise +-2 LSB [1]  0.987 - 0.993  43.2-45.7  0.004 - 0.015
    cfg 4.5 instead of 4.0       0.9721         35.2       0.047
    other prompt                 0.9201         28.3       0.200
    cfg 2.5                      0.8351         24.4       0.229
    5 steps instead of 6         0.5798         16.5       0.632
    cfg 0                        0.5019         16.8       0.614
    seed 43 instead of 42        0.2663         13.5       0.714
    ===========================  =============  =========  ===============

    [1] added to the lossless render before codec matching, range over 12 noise draws;
    a stand-in for the float noise of another CPU, BLAS or library build.

    Each default lies between the noisy reproductions and the smallest real change
    (cfg +0.5): a reproduction with small numeric noise passes, and every changed setting
    fails all three criteria.
    """

    ssim_min: float = DEFAULT_SSIM_MIN
    psnr_min: float = DEFAULT_PSNR_MIN
    latent_distance_max: float = DEFAULT_LATENT_DISTANCE_MAX

    def is_match(self, comparison: Comparison) -> bool:
        """Whether a comparison counts as a match.

        A resized comparison (render and preview of different sizes) is never a match.
        """
        if comparison.resized:
            return False
        if comparison.ssim < self.ssim_min or comparison.psnr < self.psnr_min:
            return False
        latent = comparison.latent_distance
        return latent is None or latent <= self.latent_distance_max


def distance(comparison: Comparison) -> float:
    """One scalar for ranking renders by closeness to the preview: ``1 - ssim``.

    Parameters
    ----------
    comparison : Comparison
        Scores of a render.

    Returns
    -------
    float
        ``1 - comparison.ssim`` in ``[0, 2]``; lower is closer, 0 for identical images.
    """
    return 1.0 - comparison.ssim


# --------------------------------------------------------------------------- float noise

#: Largest per-channel difference, in levels of 255, between two renders of the same
#: settings made on different machines (CPU kernels, vector width and thread count change
#: the order of float reductions). Renders made in one process are bit-identical.
FLOAT_NOISE_LEVELS = 1


@dataclass(frozen=True)
class NoiseCheck:
    """Whether two images are the same up to float noise (see :func:`same_within_noise`).

    Attributes
    ----------
    same : bool
        ``max_abs_diff <= limit``.
    max_abs_diff : int
        Largest per-channel difference, levels of 255.
    limit : int
        The allowed difference, levels of 255.
    exact_share : float
        Share of channel values that are identical, in ``[0, 1]``.
    """

    same: bool
    max_abs_diff: int
    limit: int
    exact_share: float

    def __str__(self) -> str:
        verdict = "same" if self.same else "different"
        return (
            f"{verdict}: max difference {self.max_abs_diff}/255 (limit {self.limit}), "
            f"{self.exact_share:.2%} of values identical"
        )


def _noise_check(a: np.ndarray, b: np.ndarray, limit: int) -> NoiseCheck:
    a, b = _check_pair(a, b)
    diff = np.abs(a.astype(np.int16) - b.astype(np.int16))
    worst = int(diff.max())
    return NoiseCheck(worst <= limit, worst, int(limit), float(np.mean(diff == 0)))


def codec_spread(rgb: np.ndarray, codec: Codec, *, draws: int = 4, seed: int = 0) -> int:
    """How far float noise before encoding can move an image after encoding.

    Parameters
    ----------
    rgb : numpy.ndarray
        ``uint8`` RGB image ``(H, W, 3)`` before encoding.
    codec : Codec
        The encoding (see :func:`inspect_codec`).
    draws : int, default 4
        Number of noise draws.
    seed : int, default 0
        Seed of the noise (the result is deterministic).

    Returns
    -------
    int
        The largest per-channel difference, levels of 255, between ``encode_like(rgb)``
        and ``encode_like(rgb + noise)`` over ``draws`` draws of uniform integer noise in
        ``[-FLOAT_NOISE_LEVELS, FLOAT_NOISE_LEVELS]``; at least ``FLOAT_NOISE_LEVELS``.
        0 noise growth for lossless codecs, so the result is then ``FLOAT_NOISE_LEVELS``.

    Notes
    -----
    JPEG quantizes DCT coefficients, so a one-level change of the input can move a
    coefficient across a quantization step and change decoded pixels by several levels.
    Noise on every value is a harsher perturbation than the few values another machine
    changes, so the spread bounds what that machine's render can show after encoding.
    """
    base = encode_like(rgb, codec)
    rng = np.random.default_rng(seed)
    spread = FLOAT_NOISE_LEVELS
    if codec.lossless:
        return spread
    for _ in range(draws):
        noise = rng.integers(-FLOAT_NOISE_LEVELS, FLOAT_NOISE_LEVELS + 1, size=rgb.shape)
        noisy = np.clip(rgb.astype(np.int16) + noise, 0, 255).astype(np.uint8)
        spread = max(spread, _noise_check(base, encode_like(noisy, codec), 255).max_abs_diff)
    return spread


def same_within_noise(
    reference: np.ndarray, render: np.ndarray, *, codec: Codec | None = None
) -> NoiseCheck:
    """The float-noise rule: is ``render`` the same image as ``reference``, made elsewhere?

    Parameters
    ----------
    reference : numpy.ndarray
        ``uint8`` RGB ``(H, W, 3)``: a lossless render, or the decoded pixels of a file
        encoded with ``codec`` (a JPEG preview).
    render : numpy.ndarray
        ``uint8`` RGB ``(H, W, 3)``: a lossless render of the same settings, possibly made
        on another machine.
    codec : Codec, optional
        How ``reference`` was encoded; None (or a lossless codec) when it is lossless.

    Returns
    -------
    NoiseCheck
        Lossless: the same when every channel is within :data:`FLOAT_NOISE_LEVELS`.
        Encoded: ``render`` is encoded like ``reference`` first, and the two are the same
        when every channel is within :func:`codec_spread` of the render.

    Notes
    -----
    Use this for renders made in another process or on another machine (committed
    fixtures, a server's images). Renders made in the same process are bit-identical and
    are compared exactly instead.
    """
    if codec is None or codec.lossless:
        return _noise_check(reference, render, FLOAT_NOISE_LEVELS)
    return _noise_check(reference, encode_like(render, codec), codec_spread(render, codec))
