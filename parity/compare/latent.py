"""VAE-latent distance: the cosine distance between the latents of two images."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from parity.compare.images import _check_pair, align_sizes


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


#: Frames encoded in one VAE call by :func:`encode_latents` (bounds its memory).
LATENT_BATCH = 8


def encode_latents(frames: list[np.ndarray], encode: Callable[[Any], Any]) -> list[Any]:
    """:func:`encode_latent` of each of several ``uint8`` RGB images of one size (a
    video's frames), :data:`LATENT_BATCH` to a VAE call: a video VAE encodes a batch of
    one-frame clips in about the time of one."""
    import torch

    out: list[Any] = []
    for start in range(0, len(frames), LATENT_BATCH):
        batch = torch.cat(
            [_to_model_input(np.asarray(f)) for f in frames[start : start + LATENT_BATCH]]
        )
        with torch.no_grad():
            z = torch.as_tensor(encode(batch)).detach().to("cpu", torch.float64)
        out.extend(latent.flatten() for latent in z)
    return out


def cosine_distance(za: Any, zb: Any) -> float:
    """``1 - cos(za, zb)`` of two flattened latents, in ``[0, 2]`` (float64)."""
    import torch

    na, nb = float(torch.linalg.vector_norm(za)), float(torch.linalg.vector_norm(zb))
    if na == 0.0 or nb == 0.0:
        return 0.0 if na == nb else 1.0
    cosine = float(torch.dot(za, zb)) / (na * nb)
    return float(min(max(1.0 - cosine, 0.0), 2.0))


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
    a, b, _ = align_sizes(np.asarray(a), np.asarray(b))
    a, b = _check_pair(a, b)
    za = encode_latent(a, encode) if a_latent is None else a_latent
    return cosine_distance(za, encode_latent(b, encode))


def make_vae_encoder(vae: Any, *, normalize: bool = True) -> Callable[[Any], Any]:
    """Wrap a diffusers ``AutoencoderKL`` as an ``encode`` callable.

    Parameters
    ----------
    vae : diffusers.AutoencoderKL
        The pipeline's VAE (any object with ``encode(x).latent_dist.mean``).
    normalize : bool, default True
        Map the posterior mean into the denoiser's latent space, using the VAE config:
        per channel ``(mean - latents_mean) / latents_std`` where the config has those
        (video VAEs such as Qwen-Image's), else ``(mean - shift_factor) *
        scaling_factor`` (missing factors count as 0 and 1). This centres the latents,
        which makes cosine distances between them more discriminating. False returns the
        raw posterior mean.

    Notes
    -----
    A VAE whose first convolution is 3-D (a video VAE) takes and returns a frame axis:
    the image is encoded as a one-frame clip.

    Returns
    -------
    callable
        ``encode(x)`` for a ``float32`` tensor ``(N, 3, H, W)`` in ``[-1, 1]``; runs under
        ``torch.no_grad()`` on the VAE's device and in its dtype, and returns the latents
        (float32, CPU).
    """
    import torch

    config = getattr(vae, "config", None)
    shift = float(getattr(config, "shift_factor", None) or 0.0)
    scale = float(getattr(config, "scaling_factor", None) or 1.0)
    channel_mean = getattr(config, "latents_mean", None)
    channel_std = getattr(config, "latents_std", None)
    conv_in = getattr(getattr(vae, "encoder", None), "conv_in", None)
    video = getattr(getattr(conv_in, "weight", None), "dim", lambda: 4)() == 5

    def encode(x: Any) -> Any:
        with torch.no_grad():
            x = x.to(device=vae.device, dtype=vae.dtype)
            if video:
                x = x.unsqueeze(2)  # (N, 3, 1, H, W): N one-frame clips
            mean = vae.encode(x).latent_dist.mean
            if normalize and channel_mean is not None and channel_std is not None:
                view = (1, -1) + (1,) * (mean.dim() - 2)
                mu = torch.tensor(channel_mean, dtype=mean.dtype, device=mean.device)
                sigma = torch.tensor(channel_std, dtype=mean.dtype, device=mean.device)
                mean = (mean - mu.view(view)) / sigma.view(view)
            elif normalize:
                mean = (mean - shift) * scale
            return mean.to("cpu", torch.float32)

    return encode
