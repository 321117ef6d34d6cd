"""Scoring renders against a preview: every metric of one comparison in one record."""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import numpy as np

from parity.compare.codec import Codec, encode_like
from parity.compare.images import _check_pair, align_sizes
from parity.compare.latent import (
    cosine_distance,
    encode_latent,
    encode_latents,
    latent_distance,
)
from parity.compare.lpips import lpips_distance
from parity.compare.metrics import PSNR_IDENTICAL_DB, _ssim_psnr_many

if TYPE_CHECKING:
    import torch

    from parity.compare.clips import Clip


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
    frames : tuple of FrameScore
        A video's scores frame by frame (empty for a still image). ``ssim``, ``psnr``,
        ``latent_distance`` and ``lpips`` are then each the worst over the frames.
    worst_frame : int or None
        The frame with the lowest SSIM (None for a still image).
    mean_ssim, mean_psnr, mean_latent_distance : float or None
        A video's means over its frames (PSNR in dB); None for a still image.
    frames_preview, frames_render : int
        Frame counts; a render of another count is scored on the frames both have and
        never matches.
    frame_ms_preview, frame_ms_render : int or None
        How long a frame shows, ms (:func:`~parity.compare.frame_ms`); a video that plays
        at another rate never matches. None for a still image.
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
    frames: tuple[FrameScore, ...] = ()
    worst_frame: int | None = None
    mean_ssim: float | None = None
    mean_psnr: float | None = None
    mean_latent_distance: float | None = None
    frames_preview: int = 1
    frames_render: int = 1
    frame_ms_preview: int | None = None
    frame_ms_render: int | None = None

    @property
    def video(self) -> bool:
        return bool(self.frames)

    @property
    def plays_differently(self) -> bool:
        """The render has other frames or another frame rate than the preview."""
        return (
            self.frames_preview != self.frames_render
            or self.frame_ms_preview != self.frame_ms_render
        )


@dataclass(frozen=True)
class FrameScore:
    """One frame's scores in a video :class:`Comparison` (PSNR in dB)."""

    ssim: float
    psnr: float
    latent_distance: float | None = None

    def to_json(self) -> dict[str, float | None]:
        return {"ssim": self.ssim, "psnr": self.psnr, "latent_distance": self.latent_distance}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> FrameScore:
        latent = d.get("latent_distance")
        return cls(float(d["ssim"]), float(d["psnr"]), None if latent is None else float(latent))


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


def compare_clips(
    preview: Clip,
    renders: Sequence[Sequence[np.ndarray]],
    *,
    codec: Codec | None = None,
    frame_ms_renders: Sequence[int | None] | None = None,
    encode: Callable[[Any], Any] | None = None,
    preview_latents: Sequence[Any] | None = None,
    device: str | torch.device | None = None,
) -> list[Comparison]:
    """Score several renders of a video (or an image) against one preview, frame by frame.

    Parameters
    ----------
    preview : Clip
        The preview's frames as decoded from its file (:func:`~parity.compare.load_clip`).
    renders : sequence of sequences of numpy.ndarray
        Each render's lossless ``uint8`` RGB frames ``(H', W', 3)``.
    codec : Codec, optional
        How the preview was encoded. Each render's frames (resized to the preview's size
        where they differ) are encoded the same way first, all of a clip at once
        (:func:`~parity.compare.encode_frames_like`).
    frame_ms_renders : sequence of int or None, optional
        Each render's frame duration, ms (default: the preview's); a one-frame render
        has none, as it is written as a still image.
    encode, device
        As for :func:`compare_many`; ``preview_latents`` are the preview frames' latents
        when the caller has them.

    Returns
    -------
    list of Comparison
        One per render. A still preview and one-frame render give :func:`compare_many`'s
        comparison unchanged. Otherwise the frames both have are scored in order, and the
        comparison holds each frame's scores, each metric's worst (SSIM and PSNR lowest,
        latent distance and LPIPS highest) and the means; a render of another frame count
        or rate never matches.
    """
    from parity.compare.clips import encode_frames_like

    if frame_ms_renders is None:
        frame_ms_renders = [preview.frame_ms] * len(renders)
    still = len(preview) == 1 and not preview.animated
    if still and all(len(r) == 1 for r in renders) and all(ms is None for ms in frame_ms_renders):
        return compare_many(
            preview.frames[0],
            [r[0] for r in renders],
            codec=codec,
            encode=encode,
            preview_latent=preview_latents[0] if preview_latents else None,
            device=device,
        )
    if encode is not None and preview_latents is None:
        preview_latents = encode_latents(list(preview.frames), encode)
    out = []
    for frames, ms in zip(renders, frame_ms_renders, strict=True):
        # One frame is written as a still image: it has no duration.
        ms = ms if len(frames) > 1 else None
        aligned = [align_sizes(preview.frames[0], np.asarray(f)) for f in frames]
        scored = [a for _, a, _ in aligned]
        if codec is not None:
            scored = encode_frames_like(scored, codec, ms)
        count = min(len(preview), len(scored))
        per_frame = [
            compare_many(preview.frames[i], [scored[i]], device=device)[0] for i in range(count)
        ]
        if encode is not None and preview_latents is not None:
            # Every frame of the render in a few VAE calls, not one call a frame.
            latents = encode_latents(scored[:count], encode)
            per_frame = [
                replace(c, latent_distance=cosine_distance(za, zb))
                for c, za, zb in zip(per_frame, preview_latents, latents, strict=False)
            ]
        out.append(
            _clip_comparison(
                per_frame,
                resized=any(r for _, _, r in aligned),
                render_size=np.asarray(frames[0]).shape,
                preview=preview,
                frames_render=len(frames),
                frame_ms_render=ms,
                codec_matched=codec is not None,
            )
        )
    return out


def _clip_comparison(
    per_frame: list[Comparison],
    *,
    resized: bool,
    render_size: tuple[int, ...],
    preview: Clip,
    frames_render: int,
    frame_ms_render: int | None,
    codec_matched: bool,
) -> Comparison:
    """One comparison of a clip from its frames' comparisons (see :func:`compare_clips`)."""
    ssims = [c.ssim for c in per_frame]
    psnrs = [c.psnr for c in per_frame]
    latents = [c.latent_distance for c in per_frame if c.latent_distance is not None]
    lpips = [c.lpips for c in per_frame if c.lpips is not None]
    hp, wp = preview.frames[0].shape[:2]
    return Comparison(
        ssim=min(ssims),
        psnr=min(psnrs),
        ms_ssim=None,
        latent_distance=max(latents) if latents else None,
        lpips=max(lpips) if lpips else None,
        resized=resized,
        width_preview=int(wp),
        height_preview=int(hp),
        width_render=int(render_size[1]),
        height_render=int(render_size[0]),
        codec_matched=codec_matched,
        frames=tuple(FrameScore(c.ssim, c.psnr, c.latent_distance) for c in per_frame),
        worst_frame=int(np.argmin(ssims)),
        mean_ssim=float(np.mean(ssims)),
        mean_psnr=float(np.mean(psnrs)),
        mean_latent_distance=float(np.mean(latents)) if latents else None,
        frames_preview=len(preview),
        frames_render=frames_render,
        frame_ms_preview=preview.frame_ms,
        frame_ms_render=frame_ms_render,
    )
