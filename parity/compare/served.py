"""The check of an image a server returned against parity's own render of its prompt."""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from parity.compare.codec import inspect_codec
from parity.compare.images import load_rgb
from parity.compare.noise import noise_limits, same_within_noise
from parity.compare.scores import compare


@dataclass(frozen=True)
class ServedCheck:
    """An image the server returned against parity's own render of the same prompt.

    Attributes
    ----------
    same : bool
        The two are the same image within float noise and the served file's codec
        spread (:func:`same_within_noise`); never when their sizes differ.
    ssim, psnr : float
        Of the render encoded like the served file, against the served image (PSNR in
        dB, capped at :data:`~parity.compare.PSNR_IDENTICAL_DB`).
    max_abs_diff : int or None
        Largest per-channel difference, levels of 255 (None when the sizes differ).
    limit : int
        The allowed difference, levels of 255.
    served_size, render_size : tuple of int
        ``(width, height)`` in px.
    """

    same: bool
    ssim: float
    psnr: float
    max_abs_diff: int | None
    limit: int
    served_size: tuple[int, int]
    render_size: tuple[int, int]


def check_served(
    served_path: str | os.PathLike[str], render_rgb: np.ndarray, *, dtype: str = "float32"
) -> ServedCheck:
    """Compare an image the server returned with parity's reference render of its prompt.

    Parameters
    ----------
    served_path : str or os.PathLike
        The server's image (the server writes JPEG quality 95; PNG, WebP also read).
    render_rgb : numpy.ndarray
        ``uint8`` RGB ``(H, W, 3)``: parity's lossless reference render of that prompt.
    dtype : str, default "float32"
        The dtype the reference render was computed in (it sets the float-noise
        tolerance, see :func:`noise_limits`).

    Returns
    -------
    ServedCheck
        The render is encoded like the served file before scoring; ``same`` is the
        float-noise rule with that codec's spread.

    Raises
    ------
    ImageReadError
        If the served file cannot be read as an image.
    """
    served = load_rgb(served_path)
    codec = inspect_codec(served_path)
    render_rgb = np.asarray(render_rgb)
    scores = compare(served, render_rgb, codec=codec)
    served_size = (int(served.shape[1]), int(served.shape[0]))
    render_size = (int(render_rgb.shape[1]), int(render_rgb.shape[0]))
    if served.shape != render_rgb.shape:
        return ServedCheck(
            False, scores.ssim, scores.psnr, None, noise_limits(dtype)[0], served_size, render_size
        )
    noise = same_within_noise(served, render_rgb, codec=codec, dtype=dtype)
    return ServedCheck(
        noise.same,
        scores.ssim,
        scores.psnr,
        noise.max_abs_diff,
        noise.limit,
        served_size,
        render_size,
    )
