"""The float-noise rule: whether two images are the same, made on different machines.

Renders of the same settings made in one process are bit-identical; made elsewhere (another
CPU, BLAS or library build) they differ by float noise, which a stored preview's codec can
then spread further (:func:`codec_spread`). How much float noise a render carries depends
on the render: a float32 pipeline stays within a level of 255, a bf16 one moves from 3 to
50 levels on the fixtures, varying with the image. So the allowance is not a constant: a
case's :class:`NoiseFloor` is measured by rendering it once more through numerically
equivalent kernels (:func:`parity.render.engine.alternate_kernels`), and a difference
counts as noise when it is within :data:`NOISE_FLOOR_K` times that floor, or within the
fixed rule, whichever is larger (:func:`within_noise`, the one verdict rule).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from typing import Any

import numpy as np

from parity.compare.codec import Codec, encode_like
from parity.compare.images import _check_pair
from parity.compare.metrics import PSNR_IDENTICAL_DB, psnr, ssim

#: Largest per-channel difference, in levels of 255, between two renders of the same
#: settings by a float32 pipeline on different machines (CPU kernels, vector width and
#: thread count change the order of float reductions). Renders made in one process are
#: bit-identical. Measured: the fp32 job ``fixtures/aitk_real`` rendered with ATen's
#: scalar, AVX2 and AVX-512 kernels differs by at most 1 level (0.00 on average).
FLOAT_NOISE_LEVELS = 1

#: How many times its own measured noise floor a difference may be and still count as
#: float noise (:func:`within_noise`). The floor is the difference between a render and
#: the same settings rendered through the alternate kernel path in the same process
#: (CPU: SDPA's math kernel instead of its fused one); another machine's render of those
#: settings lies about as far away, but the floor is one draw of that distance, so the
#: rule allows a multiple of it. Measured on CPU (docs/deciding.md has the table): 108
#: bf16 images (the real UI-preset job ``fixtures/aitk_ui_zimage``, bf16 renders of
#: ``fixtures/aitk_real``, a UI-preset job from ``parity.testing.jobs``, 20 more seeds of
#: three of them), each rendered with ATen's scalar, AVX2 and AVX-512 kernels; over the
#: 648 (judging process, other process) pairs the largest ratio of the cross-kernel
#: difference to the judging process's floor was 2.29 for the largest level, 1.59 for
#: the mean level, 2.43 for 1 - SSIM and 1.69 for the root-mean-square difference
#: (lossless); 2.35, 1.40, 1.82 and 1.44 after JPEG q75 encoding; the previews ai-toolkit
#: rendered on another CPU against renders here, at most 1.57 (lossless) and 1.39 (JPEG).
#: 3 covers every one with a margin of 1.23 or more. On CUDA (TF32, reduced-precision
#: reductions) it is not measured yet.
NOISE_FLOOR_K = 3.0

_HALF_DTYPES = frozenset({"bfloat16", "float16", "bf16", "fp16"})


def is_half(dtype: str) -> bool:
    """Whether a pipeline dtype rounds below float32 (bf16, fp16)."""
    return str(dtype) in _HALF_DTYPES


@dataclass(frozen=True)
class NoiseFloor:
    """How far one render moves when its settings go through the alternate kernel path.

    Attributes
    ----------
    method : str
        What was switched (:func:`parity.render.engine.alternate_method`), e.g. ``"sdpa
        math vs default"``.
    dtype : str
        Compute dtype of the render it was measured on; a run applies the floor to the
        renders of its case computed in that dtype.
    render : str
        Which render of the case it was measured on: ``"reference"``, or ``"all"`` (the
        all-causes-switched counterfactual, when only the preview side is bf16/fp16).
    max_abs_diff : int
        Largest per-channel difference, levels of 255, lossless.
    mean_abs_diff : float
        Mean per-channel difference, levels of 255, lossless.
    ssim : float
        :func:`~parity.compare.ssim` of the two renders in the comparison's domain: both
        encoded like the preview when it is a JPEG (``encoded``).
    psnr : float
        :func:`~parity.compare.psnr` likewise, dB, capped at :data:`PSNR_IDENTICAL_DB`.
    encoded_max_abs_diff, encoded_mean_abs_diff : int or float, or None
        Largest and mean difference, levels of 255, after both were encoded like the
        preview; None when it is lossless.
    frames : int
        Frames it was measured over: for a video, every level, SSIM and PSNR above is the
        worst over the frames (largest level, lowest SSIM and PSNR) and the mean level
        the mean over all of them.
    mean_ssim, mean_psnr : float or None
        A video's SSIM and PSNR averaged over its frames (None for an image): the floor
        of a clip's mean scores (:meth:`of_means`).
    """

    method: str
    dtype: str
    render: str
    max_abs_diff: int
    mean_abs_diff: float
    ssim: float
    psnr: float
    encoded_max_abs_diff: int | None = None
    encoded_mean_abs_diff: float | None = None
    frames: int = 1
    mean_ssim: float | None = None
    mean_psnr: float | None = None

    def of_means(self) -> NoiseFloor:
        """The floor a video's mean scores are judged with: its SSIM and PSNR averaged
        over the frames instead of the worst frame's (itself for an image)."""
        if self.mean_ssim is None or self.mean_psnr is None:
            return self
        return replace(self, ssim=self.mean_ssim, psnr=self.mean_psnr)

    @property
    def encoded(self) -> bool:
        """SSIM and PSNR were scored after encoding like a lossy preview."""
        return self.encoded_max_abs_diff is not None

    def levels(self, *, encoded: bool = False) -> tuple[float, float]:
        """``(max, mean)`` difference in levels of 255, lossless or after encoding.

        Raises
        ------
        ValueError
            ``encoded`` asked of a floor scored lossless.
        """
        if not encoded:
            return float(self.max_abs_diff), self.mean_abs_diff
        if self.encoded_max_abs_diff is None or self.encoded_mean_abs_diff is None:
            raise ValueError(
                "this noise floor was scored lossless; score it with the image's codec "
                "(measure_floor(..., codec=codec)) to judge an encoded image with it"
            )
        return float(self.encoded_max_abs_diff), self.encoded_mean_abs_diff

    def __str__(self) -> str:
        encoded = (
            f", {self.encoded_max_abs_diff}/255 encoded"
            if self.encoded_max_abs_diff is not None
            else ""
        )
        return (
            f"max {self.max_abs_diff}/255, mean {self.mean_abs_diff:.2f}{encoded}, "
            f"SSIM {self.ssim:.4f}, PSNR {self.psnr:.1f} dB ({self.method}, {self.dtype})"
        )

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> NoiseFloor:
        return cls(
            method=str(d["method"]),
            dtype=str(d["dtype"]),
            render=str(d.get("render", "reference")),
            max_abs_diff=int(d["max_abs_diff"]),
            mean_abs_diff=float(d["mean_abs_diff"]),
            ssim=float(d["ssim"]),
            psnr=float(d["psnr"]),
            encoded_max_abs_diff=(
                None if d.get("encoded_max_abs_diff") is None else int(d["encoded_max_abs_diff"])
            ),
            encoded_mean_abs_diff=(
                None
                if d.get("encoded_mean_abs_diff") is None
                else float(d["encoded_mean_abs_diff"])
            ),
            frames=int(d.get("frames", 1)),
            mean_ssim=None if d.get("mean_ssim") is None else float(d["mean_ssim"]),
            mean_psnr=None if d.get("mean_psnr") is None else float(d["mean_psnr"]),
        )


def measure_floor(
    default: np.ndarray,
    alternate: np.ndarray,
    *,
    codec: Codec | None = None,
    method: str,
    dtype: str,
    render: str = "reference",
    frame_duration: int | None = None,
) -> NoiseFloor:
    """The noise floor of one render: it against its alternate-kernel twin.

    Parameters
    ----------
    default, alternate : numpy.ndarray or sequence of numpy.ndarray
        ``uint8`` RGB ``(H, W, 3)``: one setting rendered in one process through the
        default kernels and through :func:`parity.render.engine.alternate_kernels`; for
        a video, its frames (a sequence, or one ``(N, H, W, 3)`` array).
    codec : Codec, optional
        How the preview it will be compared with is stored: SSIM, PSNR and the encoded
        levels are scored after encoding both like it (a video all frames at once, at
        ``frame_duration`` ms a frame). None or lossless: lossless.
    method, dtype, render : str
        Recorded as they are (see :class:`NoiseFloor`).

    Returns
    -------
    NoiseFloor
        For a video, each level, SSIM and PSNR the worst over the frames, the mean level
        over all of them, and the SSIM and PSNR means (:attr:`NoiseFloor.mean_ssim`).
    """
    from parity.compare.clips import encode_frames_like

    video = _is_clip(default)
    defaults = list(default) if video else [default]
    alternates = list(alternate) if video else [alternate]
    if len(defaults) != len(alternates):
        raise ValueError(f"{len(defaults)} frames against {len(alternates)}")
    pairs = [_check_pair(a, b) for a, b in zip(defaults, alternates, strict=True)]
    levels = [_levels(a, b) for a, b in pairs]
    encoded_levels = None
    if codec is not None and not codec.lossless:
        # A video's frames are encoded at once, as its file was (an image alone).
        a_enc = encode_frames_like([a for a, _ in pairs], codec, frame_duration)
        b_enc = encode_frames_like([b for _, b in pairs], codec, frame_duration)
        pairs = list(zip(a_enc, b_enc, strict=True))
        encoded_levels = [_levels(a, b) for a, b in pairs]
    ssims = [ssim(a, b) for a, b in pairs]
    psnrs = [min(psnr(a, b), PSNR_IDENTICAL_DB) for a, b in pairs]
    return NoiseFloor(
        method=method,
        dtype=str(dtype),
        render=render,
        max_abs_diff=max(w for w, _ in levels),
        mean_abs_diff=float(np.mean([m for _, m in levels])),
        ssim=min(ssims),
        psnr=min(psnrs),
        encoded_max_abs_diff=max(w for w, _ in encoded_levels) if encoded_levels else None,
        encoded_mean_abs_diff=(
            float(np.mean([m for _, m in encoded_levels])) if encoded_levels else None
        ),
        frames=len(pairs),
        mean_ssim=float(np.mean(ssims)) if video else None,
        mean_psnr=float(np.mean(psnrs)) if video else None,
    )


def _is_clip(frames: Any) -> bool:
    """Frames of a video: a sequence of images, or one (N, H, W, 3) array."""
    return not isinstance(frames, np.ndarray) or frames.ndim == 4


def _levels(a: np.ndarray, b: np.ndarray) -> tuple[int, float]:
    diff = np.abs(a.astype(np.int16) - b.astype(np.int16))
    return int(diff.max()), float(diff.mean())


# --------------------------------------------------------------------- the verdict rule


@dataclass(frozen=True)
class Rule:
    """The fixed limits of a match; None leaves a quantity unchecked.

    Attributes
    ----------
    ssim_min : float or None
        Minimum SSIM.
    psnr_min : float or None
        Minimum PSNR, dB.
    latent_distance_max : float or None
        Maximum VAE-latent cosine distance (a difference without one passes it).
    max_abs_diff : float or None
        Largest allowed per-channel difference, levels of 255.
    mean_abs_diff : float or None
        Largest allowed mean per-channel difference, levels of 255.
    """

    ssim_min: float | None = None
    psnr_min: float | None = None
    latent_distance_max: float | None = None
    max_abs_diff: float | None = None
    mean_abs_diff: float | None = None


@dataclass(frozen=True)
class Difference:
    """What was measured between two images (None: not measured).

    Attributes
    ----------
    ssim, psnr, latent_distance : float or None
        Scores (PSNR in dB).
    max_abs_diff, mean_abs_diff : float or None
        Per-channel differences, levels of 255.
    resized : bool
        The images had different sizes (then they never match).
    """

    ssim: float | None = None
    psnr: float | None = None
    latent_distance: float | None = None
    max_abs_diff: float | None = None
    mean_abs_diff: float | None = None
    resized: bool = False


def widened(
    rule: Rule, floor: NoiseFloor | None, *, encoded: bool = False, k: float = NOISE_FLOOR_K
) -> Rule:
    """The limits :func:`within_noise` applies: ``rule`` or ``k`` times ``floor``,
    whichever allows more, quantity by quantity.

    Parameters
    ----------
    rule : Rule
        Today's fixed limits.
    floor : NoiseFloor or None
        The measured floor (None: ``rule`` unchanged).
    encoded : bool, default False
        Compare levels with the floor's encoded levels (the images were encoded like a
        lossy file) instead of its lossless ones.
    k : float, default NOISE_FLOOR_K
        The multiple of the floor allowed.

    Returns
    -------
    Rule
        SSIM: ``min(ssim_min, 1 - k (1 - floor.ssim))``; PSNR: ``min(psnr_min,
        floor.psnr - 20 log10 k)`` (k times the floor's root-mean-square difference);
        levels: ``max(limit, k * floor level)`` (the largest one rounded down to whole
        levels). Quantities ``rule`` leaves unchecked stay unchecked, and the latent
        distance, which the floor does not measure, keeps its limit. Never narrower than
        ``rule``.
    """
    if floor is None:
        return rule
    worst, mean = floor.levels(encoded=encoded)

    def lower(limit: float | None, allowed: float) -> float | None:
        return None if limit is None else min(limit, allowed)

    def higher(limit: float | None, allowed: float) -> float | None:
        return None if limit is None else max(limit, allowed)

    return Rule(
        ssim_min=lower(rule.ssim_min, 1.0 - k * (1.0 - floor.ssim)),
        psnr_min=lower(rule.psnr_min, floor.psnr - 20.0 * math.log10(k)),
        latent_distance_max=rule.latent_distance_max,
        max_abs_diff=higher(rule.max_abs_diff, float(math.floor(k * worst))),
        mean_abs_diff=higher(rule.mean_abs_diff, k * mean),
    )


def within_noise(
    difference: Difference,
    rule: Rule,
    floor: NoiseFloor | None = None,
    *,
    encoded: bool = False,
    k: float = NOISE_FLOOR_K,
) -> bool:
    """The verdict rule: whether a difference is within ``rule`` or ``k`` × ``floor``.

    Every verdict parity gives goes through here: a run's match (:class:`~parity.compare.
    Thresholds`, scores of a codec-matched render against its preview), an image made
    elsewhere (:func:`same_within_noise`, levels) and a served image
    (:func:`~parity.compare.check_served`).

    Parameters
    ----------
    difference : Difference
        What was measured.
    rule : Rule
        Today's fixed limits for that kind of comparison.
    floor : NoiseFloor or None
        The noise floor measured for this render (None: ``rule`` alone).
    encoded, k
        As for :func:`widened`.

    Returns
    -------
    bool
        False when the sizes differ; else True when every measured quantity is within
        :func:`widened`'s limit (a quantity not measured, or not limited, passes).
    """
    if difference.resized:
        return False
    limits = widened(rule, floor, encoded=encoded, k=k)
    checks = (
        (difference.ssim, limits.ssim_min, True),
        (difference.psnr, limits.psnr_min, True),
        (difference.latent_distance, limits.latent_distance_max, False),
        (difference.max_abs_diff, limits.max_abs_diff, False),
        (difference.mean_abs_diff, limits.mean_abs_diff, False),
    )
    for value, limit, at_least in checks:
        if value is None or limit is None:
            continue
        if (value < limit) if at_least else (value > limit):
            return False
    return True


# ------------------------------------------------------------------ images made elsewhere


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
        The allowed largest difference, levels of 255 (the fixed rule or ``k`` times the
        noise floor, whichever is larger).
    exact_share : float
        Share of channel values that are identical, in ``[0, 1]``.
    mean_abs_diff : float
        Mean per-channel difference, levels of 255.
    mean_limit : float or None
        The allowed mean difference (None: no mean limit).
    floor : NoiseFloor or None
        The measured noise floor the limits came from (None: the fixed rule alone).
    """

    same: bool
    max_abs_diff: int
    limit: int
    exact_share: float
    mean_abs_diff: float = 0.0
    mean_limit: float | None = None
    floor: NoiseFloor | None = None

    def __str__(self) -> str:
        verdict = "same" if self.same else "different"
        mean = f", mean {self.mean_abs_diff:.2f}" + (
            f" (limit {self.mean_limit:g})" if self.mean_limit is not None else ""
        )
        floor = f"; noise floor {self.floor}" if self.floor is not None else ""
        return (
            f"{verdict}: max difference {self.max_abs_diff}/255 (limit {self.limit}){mean}, "
            f"{self.exact_share:.2%} of values identical{floor}"
        )


def _noise_check(
    a: np.ndarray,
    b: np.ndarray,
    rule: Rule,
    floor: NoiseFloor | None = None,
    *,
    encoded: bool = False,
) -> NoiseCheck:
    a, b = _check_pair(a, b)
    diff = np.abs(a.astype(np.int16) - b.astype(np.int16))
    worst, mean = int(diff.max()), float(diff.mean())
    same = within_noise(
        Difference(max_abs_diff=worst, mean_abs_diff=mean), rule, floor, encoded=encoded
    )
    limits = widened(rule, floor, encoded=encoded)
    assert limits.max_abs_diff is not None
    return NoiseCheck(
        same,
        worst,
        int(limits.max_abs_diff),
        float(np.mean(diff == 0)),
        mean,
        limits.mean_abs_diff,
        floor,
    )


def _spread(
    rgb: np.ndarray,
    *,
    encode: Callable[[np.ndarray], np.ndarray],
    levels: int,
    draws: int,
    seed: int,
) -> tuple[int, float]:
    """Largest and mean difference between ``encode(rgb)`` and encodings of ``rgb`` plus
    uniform integer noise in ``[-levels, levels]``, over ``draws`` draws (``encode``: as
    the file was encoded, e.g. a video's frames at once)."""
    base = encode(rgb)
    rng = np.random.default_rng(seed)
    worst, mean = levels, 0.0
    for _ in range(draws):
        noise = rng.integers(-levels, levels + 1, size=rgb.shape)
        noisy = np.clip(rgb.astype(np.int16) + noise, 0, 255).astype(np.uint8)
        d_worst, d_mean = _levels(base, encode(noisy))
        worst, mean = max(worst, d_worst), max(mean, d_mean)
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

    def encode(image: np.ndarray) -> np.ndarray:
        return encode_like(image, codec)

    return _spread(rgb, encode=encode, levels=levels, draws=draws, seed=seed)[0]


def same_within_noise(
    reference: np.ndarray,
    render: np.ndarray,
    *,
    codec: Codec | None = None,
    dtype: str = "float32",
    floor: NoiseFloor | None = None,
    frame_duration: int | None = None,
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
        Compute dtype of the pipeline that rendered both (``"bfloat16"``...).
    floor : NoiseFloor, optional
        The noise floor measured for ``render``'s settings here (:func:`measure_floor`),
        scored with ``codec`` when ``reference`` is encoded. Required for bf16 and fp16,
        optional for float32.

    Returns
    -------
    NoiseCheck
        :func:`within_noise` of the two images' difference with the fixed rule and the
        floor. The fixed rule: lossless, every channel within
        :data:`FLOAT_NOISE_LEVELS` (for bf16/fp16 also on average); encoded, ``render``
        is encoded like ``reference`` first and the two are the same when they are as
        close as noise of :data:`FLOAT_NOISE_LEVELS` before encoding leaves them
        (:func:`codec_spread`: its largest and, for bf16/fp16, its mean difference). The
        floor allows ``k`` times its (encoded) levels.

    Raises
    ------
    ValueError
        A bf16 or fp16 image without a floor: its float noise varies from a few levels
        to about 50 with the image and the machine, so no constant says what is noise.
        Measure one: render the settings through
        ``RenderEngine.render(settings, alternate=True)`` and pass :func:`measure_floor`.
        Also a floor scored lossless given with a lossy ``codec``.

    Notes
    -----
    Use this for renders made in another process or on another machine (committed
    fixtures, a server's images). Renders made in the same process are bit-identical and
    are compared exactly instead.

    A video is judged as one image: ``reference`` and ``render`` may each be a sequence
    of frames (or an ``(N, H, W, 3)`` array) of the same count, encoded all at once at
    ``frame_duration`` ms a frame, and the levels are taken over every frame.
    """
    if not _is_clip(reference):
        return _same_within_noise(
            reference,
            render,
            join=lambda image: image,
            encode=lambda image: encode_like(image, codec),
            codec=codec,
            dtype=dtype,
            floor=floor,
        )
    from parity.compare.clips import encode_frames_like

    frames_a, frames_b = np.asarray(list(reference)), np.asarray(list(render))
    if frames_a.shape != frames_b.shape:
        raise ValueError(f"videos differ in frames or size: {frames_a.shape} vs {frames_b.shape}")
    return _same_within_noise(
        np.concatenate(frames_a),
        frames_b,
        join=np.concatenate,
        encode=lambda frames: np.concatenate(
            encode_frames_like(list(frames), codec, frame_duration)
        ),
        codec=codec,
        dtype=dtype,
        floor=floor,
    )


def _same_within_noise(
    reference: np.ndarray,
    render: np.ndarray,
    *,
    join: Callable[[np.ndarray], np.ndarray],
    encode: Callable[[np.ndarray], np.ndarray],
    codec: Codec | None,
    dtype: str,
    floor: NoiseFloor | None,
) -> NoiseCheck:
    """:func:`same_within_noise` of ``reference`` (an image, or a video's frames stacked
    into one) and ``render``: ``join`` stacks ``render`` like it, ``encode`` encodes
    ``render`` as the reference's file was and stacks it."""
    half = is_half(dtype)
    if half and floor is None:
        raise ValueError(
            f"a {dtype} image made elsewhere is judged against its own measured noise floor "
            "(no constant covers bf16/fp16 float noise): render the settings once more with "
            "RenderEngine.render(settings, alternate=True) and pass "
            "floor=measure_floor(default, alternate, codec=codec, ...)"
        )
    if codec is None or codec.lossless:
        rule = Rule(
            max_abs_diff=FLOAT_NOISE_LEVELS, mean_abs_diff=FLOAT_NOISE_LEVELS if half else None
        )
        return _noise_check(reference, join(render), rule, floor)
    worst, mean = _spread(render, encode=encode, levels=FLOAT_NOISE_LEVELS, draws=4, seed=0)
    rule = Rule(max_abs_diff=worst, mean_abs_diff=mean if half else None)
    return _noise_check(reference, encode(render), rule, floor, encoded=True)
