"""The check of an image a server returned against parity's own render of its prompt."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import numpy as np

from parity.compare.codec import inspect_codec
from parity.compare.noise import FLOAT_NOISE_LEVELS, NoiseFloor, _is_clip, same_within_noise


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
    floor : NoiseFloor or None
        The render's noise floor scored with the served file's codec (None: not given).
    """

    same: bool
    ssim: float
    psnr: float
    max_abs_diff: int | None
    limit: int
    served_size: tuple[int, int]
    render_size: tuple[int, int]
    floor: NoiseFloor | None = None


def check_served(
    served_path: str | os.PathLike[str],
    render_rgb: np.ndarray,
    *,
    dtype: str = "float32",
    alternate_rgb: np.ndarray | None = None,
    method: str = "",
) -> ServedCheck:
    """Compare an image the server returned with parity's reference render of its prompt.

    Parameters
    ----------
    served_path : str or os.PathLike
        The server's image (the server writes JPEG quality 95; PNG, WebP also read).
    render_rgb : numpy.ndarray or sequence of numpy.ndarray
        ``uint8`` RGB ``(H, W, 3)``: parity's lossless reference render of that prompt;
        for a video, its frames (then ``alternate_rgb`` is frames too, and the served
        video is judged as one image of all its frames: :func:`same_within_noise`).
    dtype : str, default "float32"
        The dtype the reference render was computed in.
    alternate_rgb : numpy.ndarray, optional
        The same settings rendered through the alternate kernel path in the same process
        (``RenderEngine.render(..., alternate=True)``): the render's noise floor is scored
        from the two with the served file's codec. Required for bf16 and fp16 (see
        :func:`same_within_noise`); for float32 it widens the rule where it allows more.
    method : str
        What the alternate path switched (recorded in the floor).

    Returns
    -------
    ServedCheck
        The render is encoded like the served file before scoring; ``same`` is
        :func:`same_within_noise` with that codec's spread and the render's floor.

    Raises
    ------
    ImageReadError
        If the served file cannot be read as an image.
    ValueError
        A bf16 or fp16 render without ``alternate_rgb``.
    """
    from parity.compare.clips import load_clip
    from parity.compare.noise import measure_floor
    from parity.compare.scores import compare_clips

    served = load_clip(served_path)
    codec = inspect_codec(served_path)
    video = _is_clip(render_rgb)
    frames = [np.asarray(f) for f in render_rgb] if video else [np.asarray(render_rgb)]
    scores = compare_clips(served, [frames], codec=codec, frame_ms_renders=[served.frame_ms])[0]
    height, width = served.frames[0].shape[:2]
    served_size = (int(width), int(height))
    render_size = (int(frames[0].shape[1]), int(frames[0].shape[0]))

    def one(images: Any) -> Any:  # an image is judged as itself, a video as its frames
        return list(images) if video else images[0]

    floor = None
    if alternate_rgb is not None:
        alternate = [np.asarray(f) for f in alternate_rgb] if video else [alternate_rgb]
        floor = measure_floor(
            one(frames),
            one(alternate),
            codec=codec,
            method=method,
            dtype=dtype,
            frame_duration=served.frame_ms,
        )
    if len(served) != len(frames) or served_size != render_size:
        return ServedCheck(
            False,
            scores.ssim,
            scores.psnr,
            None,
            FLOAT_NOISE_LEVELS,
            served_size,
            render_size,
            floor,
        )
    noise = same_within_noise(
        one(served.frames),
        one(frames),
        codec=codec,
        dtype=dtype,
        floor=floor,
        frame_duration=served.frame_ms,
    )
    return ServedCheck(
        noise.same,
        scores.ssim,
        scores.psnr,
        noise.max_abs_diff,
        noise.limit,
        served_size,
        render_size,
        floor,
    )
