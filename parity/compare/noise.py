"""The float-noise rule: whether two renders are the same image, made on different machines.

Renders of the same settings made in one process are bit-identical; made elsewhere (another
CPU, BLAS or library build) they differ by float noise, which a stored preview's codec can
then spread further (:func:`codec_spread`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from parity.compare.codec import Codec, encode_like
from parity.compare.images import _check_pair

#: Largest per-channel difference, in levels of 255, between two renders of the same
#: settings by a float32 pipeline on different machines (CPU kernels, vector width and
#: thread count change the order of float reductions). Renders made in one process are
#: bit-identical.
FLOAT_NOISE_LEVELS = 1

#: The same for a bf16 or fp16 pipeline, and the largest mean difference allowed with it.
#: Every operation rounds to 8 (or 11) significant bits there, so a reduction that differs
#: in its last float32 bit now and then flips a rounding and grows, step by step, into a
#: few levels of the image. Measured on the real ai-toolkit bf16 job in
#: ``fixtures/aitk_ui_zimage`` (qfloat8 transformer and text encoder): this machine's
#: renders against the previews ai-toolkit's CPU rendered, at most 11 levels and 1.41 on
#: average (2 of 9 previews bit-exact); two kernel sets of one CPU (ATen AVX2 against
#: scalar), at most 12 levels and 1.23 on average.
HALF_NOISE_LEVELS = 16
HALF_NOISE_MEAN = 2.0


def noise_limits(dtype: str = "float32") -> tuple[int, float | None]:
    """``(max levels, mean levels or None)`` of the float-noise rule for a pipeline dtype."""
    if dtype in ("bfloat16", "float16", "bf16", "fp16"):
        return HALF_NOISE_LEVELS, HALF_NOISE_MEAN
    return FLOAT_NOISE_LEVELS, None


@dataclass(frozen=True)
class NoiseCheck:
    """Whether two images are the same up to float noise (see :func:`same_within_noise`).

    Attributes
    ----------
    same : bool
        ``max_abs_diff <= limit`` and, where a mean limit applies, ``mean_abs_diff <=
        mean_limit``.
    max_abs_diff : int
        Largest per-channel difference, levels of 255.
    limit : int
        The allowed largest difference, levels of 255.
    exact_share : float
        Share of channel values that are identical, in ``[0, 1]``.
    mean_abs_diff : float
        Mean per-channel difference, levels of 255.
    mean_limit : float or None
        The allowed mean difference (None: no mean limit).
    """

    same: bool
    max_abs_diff: int
    limit: int
    exact_share: float
    mean_abs_diff: float = 0.0
    mean_limit: float | None = None

    def __str__(self) -> str:
        verdict = "same" if self.same else "different"
        mean = f", mean {self.mean_abs_diff:.2f}" + (
            f" (limit {self.mean_limit:g})" if self.mean_limit is not None else ""
        )
        return (
            f"{verdict}: max difference {self.max_abs_diff}/255 (limit {self.limit}){mean}, "
            f"{self.exact_share:.2%} of values identical"
        )


def _noise_check(
    a: np.ndarray, b: np.ndarray, limit: int, mean_limit: float | None = None
) -> NoiseCheck:
    a, b = _check_pair(a, b)
    diff = np.abs(a.astype(np.int16) - b.astype(np.int16))
    worst, mean = int(diff.max()), float(diff.mean())
    same = worst <= limit and (mean_limit is None or mean <= mean_limit)
    return NoiseCheck(same, worst, int(limit), float(np.mean(diff == 0)), mean, mean_limit)


def _spread(
    rgb: np.ndarray, codec: Codec, *, levels: int, draws: int, seed: int
) -> tuple[int, float]:
    """Largest and mean difference between ``encode_like(rgb)`` and encodings of
    ``rgb`` plus uniform integer noise in ``[-levels, levels]``, over ``draws`` draws."""
    base = encode_like(rgb, codec)
    rng = np.random.default_rng(seed)
    worst, mean = levels, 0.0
    for _ in range(draws):
        noise = rng.integers(-levels, levels + 1, size=rgb.shape)
        noisy = np.clip(rgb.astype(np.int16) + noise, 0, 255).astype(np.uint8)
        check = _noise_check(base, encode_like(noisy, codec), 255)
        worst, mean = max(worst, check.max_abs_diff), max(mean, check.mean_abs_diff)
    return worst, mean


def codec_spread(
    rgb: np.ndarray,
    codec: Codec,
    *,
    levels: int = FLOAT_NOISE_LEVELS,
    draws: int = 4,
    seed: int = 0,
) -> int:
    """How far float noise before encoding can move an image after encoding.

    Parameters
    ----------
    rgb : numpy.ndarray
        ``uint8`` RGB image ``(H, W, 3)`` before encoding.
    codec : Codec
        The encoding (see :func:`~parity.compare.inspect_codec`).
    levels : int, default FLOAT_NOISE_LEVELS
        Amplitude of the noise, levels of 255.
    draws : int, default 4
        Number of noise draws.
    seed : int, default 0
        Seed of the noise (the result is deterministic).

    Returns
    -------
    int
        The largest per-channel difference, levels of 255, between ``encode_like(rgb)``
        and ``encode_like(rgb + noise)`` over ``draws`` draws of uniform integer noise in
        ``[-levels, levels]``; at least ``levels``. For lossless codecs, ``levels``.

    Notes
    -----
    JPEG quantizes DCT coefficients, so a one-level change of the input can move a
    coefficient across a quantization step and change decoded pixels by several levels.
    Noise on every value is a harsher perturbation than the few values another machine
    changes, so the spread bounds what that machine's render can show after encoding.
    """
    if codec.lossless:
        return levels
    return _spread(rgb, codec, levels=levels, draws=draws, seed=seed)[0]


def same_within_noise(
    reference: np.ndarray,
    render: np.ndarray,
    *,
    codec: Codec | None = None,
    dtype: str = "float32",
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
    dtype : str, default "float32"
        Compute dtype of the pipeline that rendered both (``"bfloat16"``...): it sets the
        tolerance (:func:`noise_limits`).

    Returns
    -------
    NoiseCheck
        Lossless: the same when every channel is within :func:`noise_limits`'s levels
        (and, for bf16/fp16, the mean difference within its mean). Encoded: ``render``
        is encoded like ``reference`` first, and the two are the same when they are as
        close as noise of those levels before encoding leaves them (:func:`codec_spread`:
        its largest and, for bf16/fp16, its mean difference).

    Notes
    -----
    Use this for renders made in another process or on another machine (committed
    fixtures, a server's images). Renders made in the same process are bit-identical and
    are compared exactly instead.
    """
    levels, mean_limit = noise_limits(dtype)
    if codec is None or codec.lossless:
        return _noise_check(reference, render, levels, mean_limit)
    worst, mean = _spread(render, codec, levels=levels, draws=4, seed=0)
    return _noise_check(
        reference, encode_like(render, codec), worst, mean if mean_limit is not None else None
    )
