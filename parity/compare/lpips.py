"""LPIPS: the perceptual distance, where it can be computed without downloading anything."""

from __future__ import annotations

import importlib.util
import logging
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from parity.compare.images import _check_pair, align_sizes
from parity.compare.latent import _to_model_input

logger = logging.getLogger(__name__)

#: LPIPS backbones in order of preference: (lpips ``net`` name, torchvision weight file).
LPIPS_BACKBONES = (
    ("alex", "alexnet-owt-7be5be79.pth"),
    ("vgg", "vgg16-397923af.pth"),
    ("squeeze", "squeezenet1_1-b8a52dc0.pth"),
)


def _torch_hub_checkpoints() -> Path:
    import torch

    return Path(torch.hub.get_dir()) / "checkpoints"


def _lpips_backbone() -> tuple[str | None, str]:
    if importlib.util.find_spec("lpips") is None:
        return None, "the lpips package is not installed"
    if importlib.util.find_spec("torchvision") is None:
        return None, "torchvision (needed by lpips for its backbone) is not installed"
    folder = _torch_hub_checkpoints()
    for net, filename in LPIPS_BACKBONES:
        if (folder / filename).is_file():
            return net, f"using the {net} backbone from {folder / filename}"
    names = ", ".join(f for _, f in LPIPS_BACKBONES)
    return None, f"no LPIPS backbone weights in the torch hub cache {folder} (looked for {names})"


def lpips_available() -> tuple[bool, str]:
    """Whether LPIPS can be computed here without downloading anything.

    Returns
    -------
    available : bool
        True if the ``lpips`` package and one backbone's weights (AlexNet, VGG16 or
        SqueezeNet 1.1, see :data:`LPIPS_BACKBONES`) are already in the local torch hub
        cache (``torch.hub.get_dir()/checkpoints``, set by ``TORCH_HOME``).
    reason : str
        Which backbone is used, or why LPIPS is unavailable.
    """
    net, reason = _lpips_backbone()
    return net is not None, reason


@lru_cache(maxsize=2)
def _lpips_model(net: str) -> Any:
    import lpips  # optional; only reached when installed and weights are cached

    model = lpips.LPIPS(net=net, verbose=False)
    model.eval()
    return model


def lpips_distance(a: np.ndarray, b: np.ndarray) -> float | None:
    """LPIPS perceptual distance, or None where it cannot be computed offline.

    Parameters
    ----------
    a, b : numpy.ndarray
        ``uint8`` RGB images ``(H, W, 3)``; ``b`` is resized to ``a`` if sizes differ.

    Returns
    -------
    float or None
        LPIPS v0.1 distance (>= 0, 0 for identical images; lower is more similar), or None
        when :func:`lpips_available` is False. Never downloads weights.
    """
    net, reason = _lpips_backbone()
    if net is None:
        logger.debug("LPIPS skipped: %s", reason)
        return None
    import torch

    a, b, _ = align_sizes(np.asarray(a), np.asarray(b))
    a, b = _check_pair(a, b)
    model = _lpips_model(net)
    with torch.no_grad():
        value = model(_to_model_input(a), _to_model_input(b))
    return float(value.flatten()[0])
