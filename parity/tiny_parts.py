"""Building blocks of the tiny random-weight checkpoints every model family's tests use.

A family's builder (``parity.zimage.tiny``, ``parity.flux.tiny``) makes its own
transformer, text encoders and tokenizers; the parts here are the same for every family
whose VAE has 16 latent channels. Everything is deterministic: the same arguments give
the same bytes.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any


@contextlib.contextmanager
def building(out_dir: Path) -> Iterator[Path]:
    """A fresh folder beside ``out_dir`` to build into; when the block completes it
    replaces ``out_dir``, and a build that fails leaves ``out_dir`` as it was."""
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        yield tmp
        if out_dir.exists():
            shutil.rmtree(out_dir)
        tmp.rename(out_dir)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


def write_json(path: Path, data: dict) -> None:
    """``data`` as sorted, indented JSON with a final newline (stable bytes)."""
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def smooth_decoder(vae: Any, *, output_gain: float) -> None:
    """Make the random decoder produce smooth, high-contrast images.

    Every 3x3 convolution of the decoder gets a blurred kernel (its random kernel times a
    normalised binomial window, summed over the window), so that upsampling interpolates
    instead of adding pixel noise; the output convolution's weights are multiplied by
    ``output_gain`` so that images use the whole 0..255 range.
    """
    import torch

    window = torch.tensor([[1.0, 2.0, 1.0], [2.0, 4.0, 2.0], [1.0, 2.0, 1.0]]) / 16.0
    with torch.no_grad():
        for module in vae.decoder.modules():
            if isinstance(module, torch.nn.Conv2d) and module.kernel_size == (3, 3):
                centre = module.weight.sum(dim=(2, 3), keepdim=True)
                module.weight.copy_(centre * window)
        vae.decoder.conv_out.weight.mul_(output_gain)
        vae.decoder.conv_out.bias.zero_()


def build_vae(folder: Path, *, seed: int, output_gain: float) -> None:
    """A 4-block ``AutoencoderKL`` with 16 latent channels (sizes multiples of 16), its
    decoder smoothed (:func:`smooth_decoder`), saved in diffusers format into ``folder``."""
    import torch
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(16, 16, 32, 32),
        layers_per_block=1,
        act_fn="silu",
        latent_channels=16,
        norm_num_groups=8,
        sample_size=64,
        scaling_factor=0.3611,
        shift_factor=0.1159,
        force_upcast=True,
        use_quant_conv=False,
        use_post_quant_conv=False,
        mid_block_add_attention=True,
    ).eval()
    smooth_decoder(vae, output_gain=output_gain)
    vae.save_pretrained(folder, safe_serialization=True)
