"""Pixel metrics: SSIM and PSNR of two images, by scikit-image or in one torch batch.

What they are and where they are computed: see :mod:`parity.compare`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from parity.compare.images import _check_pair

#: PSNR (dB) reported for identical images where a finite number is needed (JSON, CSV).
#: For uint8 images a single 1-level difference in a 1024x1024 RGB image is ~113 dB, so
#: values above this cap only ever mean "a handful of least-significant-bit differences".
PSNR_IDENTICAL_DB = 100.0

#: Standard deviation (px) of the gaussian SSIM window.
SSIM_SIGMA = 1.5

#: Side (px) of the gaussian SSIM window: scikit-image and torchmetrics both truncate the
#: gaussian at 3.5 sigma, ``2 * int(3.5 * 1.5 + 0.5) + 1 = 11``, as in Wang et al. 2004.
SSIM_WINDOW = 11

_K1, _K2 = 0.01, 0.03  # SSIM stabilising constants, Wang et al. 2004
_DATA_RANGE = 255.0  # uint8 images: max - min of the value range
_BORDER = (SSIM_WINDOW - 1) // 2  # 5 px of each side excluded from the SSIM mean
#: Pixels (renders x H x W) per torchmetrics call: its ~25 float64 maps then take ~5 GiB.
_TORCH_CHUNK_PX = 8 * 1024 * 1024


def _odd_window(height: int, width: int) -> int:
    """Largest odd window (px) <= :data:`SSIM_WINDOW` that fits the image."""
    side = min(height, width, SSIM_WINDOW)
    return side if side % 2 == 1 else side - 1


def ssim(a: np.ndarray, b: np.ndarray) -> float:
    """Structural similarity of two RGB images (scikit-image, the reference definition).

    Parameters
    ----------
    a, b : numpy.ndarray
        ``uint8`` RGB images of the same shape ``(H, W, 3)``, values in ``[0, 255]``.

    Returns
    -------
    float
        Mean SSIM over pixels and channels, in ``[-1, 1]``; 1.0 for identical images.

    Notes
    -----
    ``skimage.metrics.structural_similarity(a, b, channel_axis=-1, data_range=255,
    gaussian_weights=True, sigma=1.5, use_sample_covariance=False, K1=0.01, K2=0.03)``:
    Wang et al. 2004 with an 11x11 px gaussian window (sigma 1.5 px, truncated at
    3.5 sigma, reflect padding), population covariance, computed per channel on R, G, B
    and averaged, excluding a border of half the window (5 px) from the mean. Images
    smaller than 11 px on a side keep the same gaussian weighting and exclude a narrower
    border: scikit-image is given the largest odd ``win_size`` that fits (down to 1 px,
    i.e. no border). :func:`~parity.compare.compare_many` computes the same number in
    torch on a GPU.

    References
    ----------
    Z. Wang, A. C. Bovik, H. R. Sheikh, E. P. Simoncelli, "Image quality assessment: from
    error visibility to structural similarity", IEEE TIP 13(4), 2004.
    """
    from skimage.metrics import structural_similarity

    a, b = _check_pair(a, b)
    return float(
        structural_similarity(
            a,
            b,
            channel_axis=-1,
            data_range=_DATA_RANGE,
            gaussian_weights=True,
            sigma=SSIM_SIGMA,
            use_sample_covariance=False,
            K1=_K1,
            K2=_K2,
            win_size=_odd_window(*a.shape[:2]),
        )
    )


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """Peak signal-to-noise ratio of two RGB images (scikit-image).

    Parameters
    ----------
    a, b : numpy.ndarray
        ``uint8`` RGB images of the same shape ``(H, W, 3)``, values in ``[0, 255]``.

    Returns
    -------
    float
        ``10 * log10(255**2 / MSE)`` in dB, MSE over all pixels and channels
        (``skimage.metrics.peak_signal_noise_ratio(a, b, data_range=255)``).
        ``float('inf')`` for identical images; see :data:`PSNR_IDENTICAL_DB` for the
        finite value the records use instead.
    """
    from skimage.metrics import peak_signal_noise_ratio

    a, b = _check_pair(a, b)
    with np.errstate(divide="ignore"):  # identical images: MSE 0, PSNR inf
        return float(peak_signal_noise_ratio(a, b, data_range=_DATA_RANGE))


def _torch_ssim_psnr(
    a: np.ndarray, renders: Sequence[np.ndarray], *, device: Any
) -> tuple[list[float], list[float]]:
    """SSIM and PSNR of one image against each of N renders, batched in torch.

    Parameters
    ----------
    a : numpy.ndarray
        ``uint8`` RGB image ``(H, W, 3)``, at least 11 px on each side.
    renders : sequence of numpy.ndarray
        ``uint8`` RGB images of the same shape as ``a``.
    device : str or torch.device
        Where to compute, e.g. ``"cuda"``; float64 on every device.

    Returns
    -------
    ssim, psnr : list of float
        Per render: the :func:`ssim` (to within 1e-9) and :func:`psnr` (dB, to within
        1e-5 dB; inf for identical images) of ``(a, render)``.

    Notes
    -----
    ``torchmetrics.functional.image.structural_similarity_index_measure(gaussian_kernel=
    True, sigma=1.5, kernel_size=11, data_range=255, k1=0.01, k2=0.03)`` with the same
    11x11 px gaussian window as scikit-image. torchmetrics pads the image by mirroring
    and averages over all of it; here its per-pixel map (``return_full_image=True``) is
    cropped by 5 px on each side before averaging over pixels and channels, as
    scikit-image does, so the padding never reaches a kept pixel.
    ``torchmetrics.functional.image.peak_signal_noise_ratio(data_range=255,
    dim=(1, 2, 3))`` gives the PSNR of each render.
    """
    import torch
    from torchmetrics.functional.image import (
        peak_signal_noise_ratio,
        structural_similarity_index_measure,
    )

    height, width = a.shape[:2]
    if min(height, width) < SSIM_WINDOW:
        raise ValueError(f"the torch SSIM needs >= {SSIM_WINDOW} px a side, got {a.shape}")

    def planes(batch: np.ndarray) -> Any:  # (N, H, W, 3) uint8 -> (N, 3, H, W) float64
        pixels = torch.from_numpy(np.require(batch, requirements=["C", "W"]))
        return pixels.to(device).permute(0, 3, 1, 2).to(torch.float64)

    target = planes(a[np.newaxis])
    per_call = max(1, _TORCH_CHUNK_PX // (height * width))
    ssims: list[float] = []
    psnrs: list[float] = []
    with torch.no_grad():
        for start in range(0, len(renders), per_call):
            preds = planes(np.stack(renders[start : start + per_call]))
            target_n = target.expand_as(preds)
            _, ssim_map = structural_similarity_index_measure(
                preds,
                target_n,
                gaussian_kernel=True,
                sigma=SSIM_SIGMA,
                kernel_size=SSIM_WINDOW,
                data_range=_DATA_RANGE,
                k1=_K1,
                k2=_K2,
                return_full_image=True,
            )
            kept = ssim_map[..., _BORDER:-_BORDER, _BORDER:-_BORDER]
            ssims += kept.mean(dim=(1, 2, 3)).tolist()
            psnrs += peak_signal_noise_ratio(
                preds, target_n, data_range=_DATA_RANGE, reduction="none", dim=(1, 2, 3)
            ).tolist()
    return ssims, psnrs


def _ssim_psnr_many(
    a: np.ndarray, renders: Sequence[np.ndarray], *, device: Any
) -> tuple[list[float], list[float]]:
    """SSIM and PSNR (dB, uncapped) of ``a`` against each render.

    See :func:`~parity.compare.compare_many`.
    """
    if not renders:
        return [], []
    if _is_cpu(device) or min(a.shape[:2]) < SSIM_WINDOW:
        return [ssim(a, r) for r in renders], [psnr(a, r) for r in renders]
    return _torch_ssim_psnr(a, renders, device=device)


def _is_cpu(device: Any) -> bool:
    return str(device).split(":")[0] == "cpu"


def _capped_psnr(a: np.ndarray, b: np.ndarray) -> float:
    return min(psnr(a, b), PSNR_IDENTICAL_DB)
