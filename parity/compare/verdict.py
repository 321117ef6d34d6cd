"""The verdict: whether a render's scores count as reproducing its preview.

The rule itself is :func:`parity.compare.noise.within_noise`: the thresholds, or a
multiple of the render's own measured noise floor where that allows more.
"""

from __future__ import annotations

from dataclasses import dataclass

from parity.compare.noise import Difference, NoiseFloor, Rule, within_noise
from parity.compare.scores import Comparison
from parity.settings import (
    DEFAULT_LATENT_DISTANCE_MAX,
    DEFAULT_PSNR_MIN,
    DEFAULT_SSIM_MIN,
)


@dataclass(frozen=True)
class Thresholds:
    """Limits within which a codec-matched render counts as reproducing its preview.

    Attributes
    ----------
    ssim_min : float, default 0.98
        Minimum :func:`~parity.compare.ssim`.
    psnr_min : float, default 38.0
        Minimum :func:`~parity.compare.psnr`, dB.
    latent_distance_max : float, default 0.025
        Maximum :func:`~parity.compare.latent_distance` (ignored when the comparison has none).

    Notes
    -----
    Measured on the tiny Z-Image fixture (``fixtures/aitk_real/tiny_zimage``, 64x64 px,
    6 steps, prompt "a photo of a cat", seed 42, cfg 4.0; the preview saved as JPEG q75
    4:2:0 like ai-toolkit's, renders codec-matched, latents from the fixture VAE with
    :func:`~parity.compare.make_vae_encoder`):

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

    A bf16 pipeline's float noise is larger and varies with the image: the 9 previews of
    the real ai-toolkit bf16 job (``fixtures/aitk_ui_zimage``, qfloat8, rendered by
    ai-toolkit on another CPU), reproduced with the weights that made them and
    codec-matched, score SSIM 0.9795 - 0.998, PSNR 38.8 - 51 dB and latent distance
    0 - 0.016 here, depending on the CPU kernels. That is why a render's verdict also
    allows :data:`~parity.compare.noise.NOISE_FLOOR_K` times its own measured noise floor
    where that allows more (:meth:`is_match` with ``floor``).

    Each default lies between the noisy float32 reproductions and the smallest real change
    (cfg +0.5): a reproduction with numeric noise passes, and every changed setting fails
    SSIM and PSNR (and all but the smallest, latent distance too).
    """

    ssim_min: float = DEFAULT_SSIM_MIN
    psnr_min: float = DEFAULT_PSNR_MIN
    latent_distance_max: float = DEFAULT_LATENT_DISTANCE_MAX

    @property
    def rule(self) -> Rule:
        """These thresholds as the fixed part of the verdict rule."""
        return Rule(
            ssim_min=self.ssim_min,
            psnr_min=self.psnr_min,
            latent_distance_max=self.latent_distance_max,
        )

    def is_match(self, comparison: Comparison, floor: NoiseFloor | None = None) -> bool:
        """Whether a comparison counts as a match (:func:`~parity.compare.noise.within_noise`).

        Parameters
        ----------
        comparison : Comparison
            The render's scores against its preview.
        floor : NoiseFloor, optional
            The render's measured noise floor, scored in the comparison's domain: SSIM and
            PSNR may then be as far off as :data:`~parity.compare.noise.NOISE_FLOOR_K`
            times the floor where that allows more than the thresholds. None: the
            thresholds alone.

        A resized comparison (render and preview of different sizes) is never a match,
        nor is a video of other frames or another rate. A video matches when its worst
        frame's scores are within the rule (with ``floor``: the floor's worst frame) and
        so are its mean scores (with the floor's means, :meth:`NoiseFloor.of_means`).
        """
        if not within_noise(_difference(comparison), self.rule, floor):
            return False
        if not comparison.video:
            return True
        return within_noise(
            _mean_difference(comparison), self.rule, floor.of_means() if floor else None
        )

    def is_near(self, comparison: Comparison) -> bool:
        """Whether a comparison fails the thresholds by so little that a float32 render's
        noise floor could change its verdict (:data:`NEAR_SSIM`, :data:`NEAR_PSNR_DB`).

        A match is never near: the floor only widens the rule, so it cannot change a
        match. A resized comparison is never a match, so never near either.
        """
        if comparison.resized or self.is_match(comparison):
            return False
        loose = Rule(
            ssim_min=self.ssim_min - NEAR_SSIM,
            psnr_min=self.psnr_min - NEAR_PSNR_DB,
            latent_distance_max=self.latent_distance_max,
        )
        return within_noise(_difference(comparison), loose)


#: How far below ``ssim_min`` a float32 comparison still counts as near the threshold
#: (:meth:`Thresholds.is_near`), and the same for ``psnr_min``, dB. Float32 renders'
#: floors measured on CPU are at most 5e-5 in 1 - SSIM and at least 60.9 dB (JPEG q75,
#: 90 renders), so k times them never loosens the defaults there; the band is for
#: noisier devices and libraries, and costs one render only where a float32 comparison
#: misses by this little.
NEAR_SSIM = 0.01
NEAR_PSNR_DB = 3.0


def _difference(comparison: Comparison) -> Difference:
    """The worst frame's scores (an image's own)."""
    return Difference(
        ssim=comparison.ssim,
        psnr=comparison.psnr,
        latent_distance=comparison.latent_distance,
        resized=comparison.resized or comparison.plays_differently,
    )


def _mean_difference(comparison: Comparison) -> Difference:
    """A video's scores averaged over its frames."""
    return Difference(
        ssim=comparison.mean_ssim,
        psnr=comparison.mean_psnr,
        latent_distance=comparison.mean_latent_distance,
        resized=comparison.resized or comparison.plays_differently,
    )


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
