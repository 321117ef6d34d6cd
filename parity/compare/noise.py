"""The float-noise rule: whether two renders are the same image, made on different machines.

Renders of the same settings made in one process are bit-identical; made elsewhere (another
CPU, BLAS or library build) they differ by float noise, which a stored preview's codec can
then spread further (:func:`codec_spread`).
"""

from __future__ import annotations

import math
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


#: A render made elsewhere is the same image when it is within this many times its own
#: measured noise floor (:class:`NoiseFloor`). Measured on the real bf16 UI-preset job
#: (fixtures/aitk_ui_zimage, 9 previews, preview and reference settings, ATen kernels
#: ``default``, ``avx2`` and ``avx512`` on one AVX-512-bf16 CPU): the largest difference
#: between two kernel families is at most 1.62 times the smaller family's SDPA floor
#: (1.37 for the mean), and the previews ai-toolkit rendered on another CPU at most 1.57
#: times this machine's floor. docs/deciding.md has the table.
NOISE_FLOOR_K = 2.0


@dataclass(frozen=True)
class NoiseFloor:
    """How far one setting's render moves through a second, numerically equivalent
    kernel path in the same process: the float noise of that case, measured.

    Attributes
    ----------
    method : str
        The kernels switched (``parity.render.engine.alternate_method``), e.g. ``"sdpa
        math vs default"``.
    max_abs_diff : int
        Largest per-channel difference of the two lossless renders, levels of 255.
    mean_abs_diff : float
        Mean per-channel difference, levels of 255.
    ssim : float
        SSIM of the two renders, in ``[-1, 1]``.
    psnr : float
        PSNR of the two renders, dB (capped at ``PSNR_IDENTICAL_DB``).
    """

    method: str
    max_abs_diff: int
    mean_abs_diff: float
    ssim: float
    psnr: float

    def limits(self, k: float = NOISE_FLOOR_K) -> tuple[int, float]:
        """``(max levels, mean levels)`` allowed by ``k`` times this floor, never below
        :data:`FLOAT_NOISE_LEVELS` levels."""
        return (
            max(FLOAT_NOISE_LEVELS, math.ceil(k * self.max_abs_diff)),
            k * self.mean_abs_diff,
        )

    def to_json(self) -> dict[str, object]:
        return {
            "method": self.method,
            "max_abs_diff": self.max_abs_diff,
            "mean_abs_diff": self.mean_abs_diff,
            "ssim": self.ssim,
            "psnr": self.psnr,
        }

    @classmethod
    def from_json(cls, d: dict) -> NoiseFloor:
        return cls(
            str(d["method"]),
            int(d["max_abs_diff"]),
            float(d["mean_abs_diff"]),
            float(d["ssim"]),
            float(d["psnr"]),
        )


def measure_floor(render: np.ndarray, alternate: np.ndarray, *, method: str) -> NoiseFloor:
    """The :class:`NoiseFloor` of two lossless ``uint8`` RGB renders ``(H, W, 3)`` of one
    setting, ``render`` through the default kernels and ``alternate`` through the other
    path (``method`` names it)."""
    from parity.compare.metrics import PSNR_IDENTICAL_DB, psnr, ssim

    render, alternate = _check_pair(render, alternate)
    diff = np.abs(render.astype(np.int16) - alternate.astype(np.int16))
    return NoiseFloor(
        method=method,
        max_abs_diff=int(diff.max()),
        mean_abs_diff=float(diff.mean()),
        ssim=float(ssim(render, alternate)),
        psnr=float(min(psnr(render, alternate), PSNR_IDENTICAL_DB)),
    )


def noise_limits(
    dtype: str = "float32", floor: NoiseFloor | None = None
) -> tuple[int, float | None]:
    """``(max levels, mean levels or None)`` of the float-noise rule for a pipeline dtype.

    With a measured ``floor``: the larger of the float32 rule and :data:`NOISE_FLOOR_K`
    times the floor (its mean too). Without one, a bf16/fp16 pipeline falls back to the
    bound measured once (:data:`HALF_NOISE_LEVELS`, :data:`HALF_NOISE_MEAN`); how much a
    half-precision render moves depends on the image, so callers that can measure the
    floor should.
    """
    half = dtype in ("bfloat16", "float16", "bf16", "fp16")
    if floor is not None:
        levels, mean = floor.limits()
        return levels, mean if half else None
    if half:
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
    floor: NoiseFloor | None = None,
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
    floor : NoiseFloor, optional
        The measured noise floor of ``render``'s setting on this machine
        (:func:`measure_floor`): the tolerance is then the larger of the float32 rule and
        :data:`NOISE_FLOOR_K` times it.

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
    levels, mean_limit = noise_limits(dtype, floor)
    if codec is None or codec.lossless:
        return _noise_check(reference, render, levels, mean_limit)
    worst, mean = _spread(render, codec, levels=levels, draws=4, seed=0)
    return _noise_check(
        reference, encode_like(render, codec), worst, mean if mean_limit is not None else None
    )
