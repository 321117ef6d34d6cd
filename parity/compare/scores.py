"""Scoring renders against a preview: every metric of one comparison in one record."""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from parity.compare.codec import Codec, encode_like
from parity.compare.images import _check_pair, align_sizes
from parity.compare.latent import encode_latent, latent_distance
from parity.compare.lpips import lpips_distance
from parity.compare.metrics import PSNR_IDENTICAL_DB, _ssim_psnr_many

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class Comparison:
    """Scores of one render against one preview.

    Attributes
    ----------
    ssim : float
        :func:`~parity.compare.ssim`, in ``[-1, 1]``.
    psnr : float
        :func:`~parity.compare.psnr` in dB, capped at :data:`PSNR_IDENTICAL_DB`.
    ms_ssim : float or None
        MS-SSIM, in ``[0, 1]``; None where it was not computed, which parity's own
        comparisons now always are (see :mod:`parity.compare`). Kept for the ``ms_ssim``
        column of results.csv and for records made before.
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
    ms_ssim: float | None
    latent_distance: float | None
    lpips: float | None
    resized: bool
    width_preview: int
    height_preview: int
    width_render: int
    height_render: int
    codec_matched: bool = False


#: What :func:`compare_many` takes as renders: (H, W, 3) images, or one (N, H, W, 3) stack.
Renders = "Sequence[np.ndarray | torch.Tensor] | np.ndarray | torch.Tensor"


def _render_list(renders: Renders) -> tuple[list[np.ndarray], Any]:
    """Renders as a list of NumPy images, and the device of a tensor input (else None)."""
    torch = sys.modules.get("torch")  # a tensor can only come from a loaded torch
    if torch is not None and isinstance(renders, torch.Tensor):
        device = renders.device
        batch = renders.detach().cpu().numpy()
        return list(batch[np.newaxis] if batch.ndim == 3 else batch), device
    if isinstance(renders, np.ndarray):
        return list(renders[np.newaxis] if renders.ndim == 3 else renders), None
    images, device = [], None
    for render in renders:
        if torch is not None and isinstance(render, torch.Tensor):
            device = render.device if device is None else device
            render = render.detach().cpu().numpy()
        images.append(np.asarray(render))
    return images, device


def compare_many(
    preview_rgb: np.ndarray,
    renders: Renders,
    *,
    codec: Codec | None = None,
    encode: Callable[[Any], Any] | None = None,
    preview_latent: Any = None,
    device: str | torch.device | None = None,
) -> list[Comparison]:
    """Score several renders against one preview, the pixel metrics in one batch.

    Parameters
    ----------
    preview_rgb : numpy.ndarray
        ``uint8`` RGB preview ``(H, W, 3)`` as decoded from its file.
    renders : sequence of numpy.ndarray or torch.Tensor, or one array or tensor
        The lossless ``uint8`` RGB renders, each ``(H', W', 3)`` (sizes may differ), or
        all of them stacked as ``(N, H', W', 3)``; a CPU or GPU tensor is accepted.
    codec : Codec, optional
        How the preview was encoded. If given, each render (after resizing) is encoded
        the same way with :func:`encode_like` before scoring, so that an exact
        reproduction scores SSIM ~1.
    encode : callable, optional
        Latent encoder for :func:`latent_distance` (see
        :func:`~parity.compare.make_vae_encoder`). Like the pixel metrics it sees the
        codec-matched render: JPEG loss alone moves the tiny fixture VAE's latents by a
        cosine distance of ~0.03, more than a real change of cfg would.
    preview_latent : torch.Tensor, optional
        ``encode_latent(preview_rgb, encode)``, when the caller already has it; else it is
        computed once here for all renders.
    device : str or torch.device, optional
        Where SSIM and PSNR are computed. Default: the device of ``renders`` when they
        are tensors, else ``"cpu"``. On ``"cpu"`` each pair is scored by scikit-image
        (:func:`~parity.compare.ssim`, :func:`~parity.compare.psnr`); on any other torch
        device (``"cuda"``) all renders are scored in one batch by torchmetrics in
        float64, which agrees with scikit-image to 1e-9 (SSIM) and 1e-5 dB (PSNR). Images
        under 11 px on a side always use scikit-image.

    Returns
    -------
    list of Comparison
        One per render, in order; sizes are reported before resizing.
    """
    preview_rgb = np.asarray(preview_rgb)
    images, renders_device = _render_list(renders)
    if device is None:
        device = renders_device if renders_device is not None else "cpu"
    hp, wp = preview_rgb.shape[:2]
    scored: list[np.ndarray] = []
    resized: list[bool] = []
    for render in images:
        _, aligned, was_resized = align_sizes(preview_rgb, render)
        aligned = encode_like(aligned, codec) if codec is not None else aligned
        preview_rgb, aligned = _check_pair(preview_rgb, aligned)
        scored.append(aligned)
        resized.append(was_resized)
    if encode is not None and preview_latent is None and scored:
        preview_latent = encode_latent(preview_rgb, encode)
    ssims, psnrs = _ssim_psnr_many(preview_rgb, scored, device=device)
    comparisons = []
    for render, image, ssim_value, psnr_value, was_resized in zip(
        images, scored, ssims, psnrs, resized, strict=True
    ):
        latent = None
        if encode is not None:
            latent = latent_distance(preview_rgb, image, encode=encode, a_latent=preview_latent)
        comparisons.append(
            Comparison(
                ssim=ssim_value,
                psnr=min(psnr_value, PSNR_IDENTICAL_DB),
                ms_ssim=None,
                latent_distance=latent,
                lpips=lpips_distance(preview_rgb, image),
                resized=was_resized,
                width_preview=int(wp),
                height_preview=int(hp),
                width_render=int(render.shape[1]),
                height_render=int(render.shape[0]),
                codec_matched=codec is not None,
            )
        )
    return comparisons


def compare(
    preview_rgb: np.ndarray,
    render_rgb: np.ndarray | torch.Tensor,
    *,
    codec: Codec | None = None,
    encode: Callable[[Any], Any] | None = None,
    preview_latent: Any = None,
    device: str | torch.device | None = None,
) -> Comparison:
    """Score one render against a preview: :func:`compare_many` with one render.

    Parameters
    ----------
    preview_rgb : numpy.ndarray
        ``uint8`` RGB preview ``(H, W, 3)`` as decoded from its file.
    render_rgb : numpy.ndarray or torch.Tensor
        ``uint8`` RGB render ``(H', W', 3)``, lossless.
    codec, encode, preview_latent, device
        As for :func:`compare_many`.

    Returns
    -------
    Comparison
        All scores; sizes are reported before resizing.
    """
    return compare_many(
        preview_rgb,
        [render_rgb],
        codec=codec,
        encode=encode,
        preview_latent=preview_latent,
        device=device,
    )[0]
