"""Deterministic tiny random-weight Wan text-to-video checkpoints in diffusers format.

Two layouts, each at toy size, so that every code path of `diffusers.WanPipeline` (and of
ai-toolkit's ``wan21`` and ``wan22_14b`` loaders and samplers, and of the reference
server's ``wan21_*`` and ``wan22_14b_t2v`` pipelines) runs on them in seconds on a CPU:

- ``Wan-AI/Wan2.1-T2V-1.3B-Diffusers`` (the default): one transformer;
- ``Wan-AI/Wan2.2-T2V-A14B-Diffusers`` (``two_experts=True``): a high-noise expert
  ``transformer`` and a low-noise expert ``transformer_2`` with the same configuration and
  other weights, and ``boundary_ratio`` 0.875 in model_index.json (the pipeline runs
  ``transformer`` while the timestep is at or above 875, ``transformer_2`` below).

The parts:

- transformer(s): `WanTransformer3DModel`, 2 heads of 16, 2 blocks, patch (1, 2, 2),
  16 input and output channels, text width 32, feed-forward width 64, rotary axes
  (8, 4, 4) as the real head split gives them;
- vae: `AutoencoderKLWan` with base width 4, the real channel multipliers (1, 2, 4, 4),
  one residual block per level, the real temporal downsampling (False, True, True) and
  the real per-channel latent mean and standard deviation, so that the spatial factor is
  8, the temporal factor 4 (frame counts 4k+1: 9 frames are 3 latent frames), and sizes
  are multiples of 16; its tiled decode starts above 256 pixels, as the real one's;
- text_encoder: `UMT5EncoderModel`, width 32, 2 layers of 2 heads, gated-GELU
  feed-forward of width 64, 32 relative-position buckets;
- tokenizer: a T5-style Unigram tokenizer (``T5Tokenizer``, the class both ai-toolkit's
  UMT5 loader and `WanPipeline` use) written from a fixed word list: ``<pad>`` 0,
  ``</s>`` 1, ``<unk>`` 2, the word-start mark, one token per listed word, then single
  characters, so that any ASCII prompt encodes and the listed words are one token each;
- scheduler: `UniPCMultistepScheduler` with the real checkpoint's settings key for key
  (flow prediction on flow sigmas, ``flow_shift`` 3.0); the Wan 2.2 file adds the two
  keys the A14B checkpoint's file has (``use_dynamic_shifting`` false,
  ``time_shift_type`` exponential).

Random weights alone give near-flat videos, so a few weights are scaled (the token
embeddings, the cross-attention values, the output projection and the final modulation)
and the VAE decoder's 3x3 spatial kernels are smoothed, so that frames show large-scale
structure that reacts to the prompt, the seed, the guidance, the number of steps and a
LoRA, and that changes a little from frame to frame.

ai-toolkit's ``wan22_14b`` loader reads the VAE from the hub repository
``ai-toolkit/wan2.1-vae``, never from the checkpoint folder; :func:`write_vae_hub_cache`
lays the tiny VAE out as that repository in a Hugging Face hub cache folder, for runs with
``HF_HUB_OFFLINE=1`` and ``HF_HUB_CACHE`` pointing there.

Run ``python -m parity.wan.tiny --out DIR [--two-experts] [--vae-hub-cache CACHE]``.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import shutil
import string
from pathlib import Path

from parity.tiny_parts import building, write_json
from parity.wan.checkpoints import (
    WAN21_1B_HUB_ID,
    WAN21_SCHEDULER_CONFIG,
    WAN22_HUB_ID,
    WAN22_SCHEDULER_CONFIG,
)

logger = logging.getLogger(__name__)

#: Hub ids of the models the tiny checkpoints stand in for.
HUB_ID = WAN21_1B_HUB_ID
HUB_ID_TWO_EXPERTS = WAN22_HUB_ID

#: The hub repository ai-toolkit's Wan 2.2 14B loader reads the VAE from.
VAE_HUB_ID = "ai-toolkit/wan2.1-vae"

#: Timestep fraction below which the Wan 2.2 A14B pipeline switches to ``transformer_2``.
BOUNDARY_RATIO = 0.875

#: The scheduler settings of the real checkpoints' ``scheduler/scheduler_config.json``,
#: key for key (:mod:`parity.wan.checkpoints`), without the class name written beside them.
SCHEDULER_CONFIG: dict[str, object] = {
    k: v for k, v in WAN21_SCHEDULER_CONFIG.items() if k != "_class_name"
}
SCHEDULER_CONFIG_TWO_EXPERTS: dict[str, object] = {
    k: v for k, v in WAN22_SCHEDULER_CONFIG.items() if k != "_class_name"
}

#: The ``_diffusers_version`` stamps of the real scheduler files.
_SCHEDULER_STAMP = {False: "0.33.0.dev0", True: "0.35.0.dev0"}

#: Width of the text encoder = transformer ``text_dim``.
TEXT_WIDTH = 32

#: The word-start mark of SentencePiece-style tokenizers.
WORD_START = "\u2581"

#: The special tokens in id order, as in the real UMT5 tokenizer.
SPECIAL_TOKENS: tuple[str, ...] = ("<pad>", "</s>", "<unk>")

_WORDS: tuple[str, ...] = (
    # Words of the prompts the fixtures and tests use.
    "a an on in at with under above next to near from over behind the of and",
    "photo picture painting portrait drawing illustration render close up shot view video",
    "dog cat horse bird fish person man woman child astronaut robot",
    "red green blue yellow white black orange purple brown gray pink golden",
    "cube sphere cone house tree car boat table chair cup vase flower fruit apple",
    "sky sea ocean lake river mountain hill forest garden street city room window field",
    "sunset night morning fog rain snow light lighting shadow studio soft high detail",
    "small large big tiny old new wooden stone glass metal simple minimal",
    "blurry low quality distorted watermark sks ohwx style art digital film grain",
    "sitting standing floating riding sleeping walking wearing holding looking",
    "rolling spinning flying running moving slowly fast camera pan zoom",
)

#: Unigram log-probabilities: a listed word beats spelling it out, the bare word-start
#: mark and single characters cover everything else.
_WORD_SCORE = -6.0
_MARK_SCORE = -4.0
_CHAR_SCORE = -14.0

_TEXT_SEED = 2026
_VAE_SEED = 4321
_TRANSFORMER_SEEDS = (0, 1)


def _words() -> list[str]:
    """The fixed word list, deduplicated, in first-seen order."""
    seen: dict[str, None] = {}
    for line in _WORDS:
        for word in line.split():
            seen.setdefault(word, None)
    return list(seen)


def vocabulary() -> list[tuple[str, float]]:
    """The Unigram vocabulary with its scores, in id order.

    The special tokens, the word-start mark, each listed word with the mark in front,
    then every printable ASCII character except the space (letters, digits,
    punctuation), so that no ASCII prompt needs ``<unk>``.
    """
    vocab = [(token, 0.0) for token in SPECIAL_TOKENS]
    vocab.append((WORD_START, _MARK_SCORE))
    vocab += [(WORD_START + word, _WORD_SCORE) for word in _words()]
    chars = string.ascii_lowercase + string.ascii_uppercase + string.digits + string.punctuation
    vocab += [(char, _CHAR_SCORE) for char in chars]
    return vocab


def _build_tokenizer(folder: Path) -> int:
    """Write the tokenizer files; return the vocabulary size."""
    from transformers import T5Tokenizer

    vocab = vocabulary()
    T5Tokenizer(vocab=vocab, extra_ids=0).save_pretrained(folder)
    tokenizer = T5Tokenizer.from_pretrained(folder)
    if len(tokenizer) != len(vocab):
        raise RuntimeError(f"tokenizer in {folder} has {len(tokenizer)} tokens, not {len(vocab)}")
    for i, token in enumerate(SPECIAL_TOKENS):
        if tokenizer.convert_tokens_to_ids(token) != i:
            raise RuntimeError(f"{token} is not id {i} in {folder}")
    for word in _words():
        if tokenizer(word, add_special_tokens=False).input_ids != [
            tokenizer.convert_tokens_to_ids(WORD_START + word)
        ]:
            raise RuntimeError(f"{word!r} is not one token in {folder}")
    return len(vocab)


def _build_text_encoder(folder: Path, vocab_size: int) -> None:
    import torch
    from transformers import UMT5Config, UMT5EncoderModel

    config = UMT5Config(
        vocab_size=vocab_size,
        d_model=TEXT_WIDTH,
        d_kv=16,
        d_ff=64,
        num_layers=2,
        num_heads=2,
        relative_attention_num_buckets=32,
        relative_attention_max_distance=128,
        dropout_rate=0.0,
        layer_norm_epsilon=1e-6,
        feed_forward_proj="gated-gelu",
        tie_word_embeddings=False,
        pad_token_id=0,
        eos_token_id=1,
        decoder_start_token_id=0,
    )
    torch.manual_seed(_TEXT_SEED)
    model = UMT5EncoderModel(config).eval()
    with torch.no_grad():
        model.get_input_embeddings().weight.normal_(0.0, 1.0)
    model.save_pretrained(folder, safe_serialization=True)


def _smooth_decoder(vae, *, output_gain: float, frame_mix: float) -> None:
    """Make the random causal 3D-convolution decoder produce smooth, high-contrast frames
    that change a little from one frame to the next.

    - Every convolution with a 3x3 spatial kernel gets a blurred kernel (per time tap,
      its random kernel summed over space times a normalised binomial window), so that
      upsampling interpolates instead of adding pixel noise.
    - Every convolution over three frames gets the sum of its three time taps on the
      current frame and nothing on the two before, so that random time taps do not
      scramble the frames.
    - The temporal upsamplers, which make two frames of each one, pass the frame through
      to the first and add ``frame_mix`` times their random weights to the second, so
      that the four frames of one latent frame differ a little, not wholly.
    - The output convolution's weights are multiplied by ``output_gain`` so that frames
      use the whole 0..255 range.
    """
    import torch
    from diffusers.models.autoencoders.autoencoder_kl_wan import WanResample

    window = torch.tensor([[1.0, 2.0, 1.0], [2.0, 4.0, 2.0], [1.0, 2.0, 1.0]]) / 16.0
    with torch.no_grad():
        for module in vae.decoder.modules():
            if isinstance(module, torch.nn.Conv3d | torch.nn.Conv2d):
                if tuple(module.kernel_size[-2:]) == (3, 3):
                    centre = module.weight.sum(dim=(-2, -1), keepdim=True)
                    module.weight.copy_(centre * window)
                if isinstance(module, torch.nn.Conv3d) and module.kernel_size[0] == 3:
                    current = module.weight.sum(dim=2)
                    module.weight.zero_()
                    module.weight[:, :, -1] = current
        for module in vae.decoder.modules():
            if isinstance(module, WanResample) and module.mode == "upsample3d":
                conv = module.time_conv
                half = conv.out_channels // 2
                identity = torch.eye(half).view(half, half, 1, 1)
                random = conv.weight[half:].clone()
                conv.weight.zero_()
                conv.weight[:half, :, -1] = identity
                conv.weight[half:, :, -1] = identity
                conv.weight[half:] += frame_mix * random
                conv.bias[:half] = 0.0
                conv.bias[half:] *= frame_mix
        vae.decoder.conv_out.weight.mul_(output_gain)
        vae.decoder.conv_out.bias.zero_()


def _build_vae(folder: Path) -> None:
    import torch
    from diffusers import AutoencoderKLWan

    torch.manual_seed(_VAE_SEED)
    vae = AutoencoderKLWan(
        base_dim=4,
        z_dim=16,
        dim_mult=[1, 2, 4, 4],
        num_res_blocks=1,
        attn_scales=[],
        temperal_downsample=[False, True, True],
        dropout=0.0,
    ).eval()
    _smooth_decoder(vae, output_gain=3.0, frame_mix=0.3)
    vae.save_pretrained(folder, safe_serialization=True)


def _build_transformer(folder: Path, seed: int) -> None:
    import torch
    from diffusers import WanTransformer3DModel

    torch.manual_seed(seed)
    model = WanTransformer3DModel(
        patch_size=(1, 2, 2),
        num_attention_heads=2,
        attention_head_dim=16,
        in_channels=16,
        out_channels=16,
        text_dim=TEXT_WIDTH,
        freq_dim=256,
        ffn_dim=64,
        num_layers=2,
        cross_attn_norm=True,
        qk_norm="rms_norm_across_heads",
        eps=1e-6,
        image_dim=None,
        added_kv_proj_dim=None,
        rope_max_seq_len=1024,
        pos_embed_seq_len=None,
    ).eval()
    with torch.no_grad():
        model.proj_out.weight.mul_(2.0)
        model.scale_shift_table.mul_(4.0)
        # The prompt reaches the video only through the cross-attention, whose keys are
        # RMS-normalised: larger values and sharper keys make prompt and CFG visible.
        for block in model.blocks:
            block.attn2.to_v.weight.mul_(8.0)
            block.attn2.norm_k.weight.mul_(3.0)
    model.save_pretrained(folder, safe_serialization=True)


def _build_scheduler(folder: Path, two_experts: bool) -> None:
    """Write the scheduler file with the real checkpoint's keys and version stamp."""
    from diffusers import UniPCMultistepScheduler

    config = SCHEDULER_CONFIG_TWO_EXPERTS if two_experts else SCHEDULER_CONFIG
    UniPCMultistepScheduler.from_config(config)  # fails here if diffusers rejects a key
    folder.mkdir(parents=True, exist_ok=True)
    write_json(
        folder / "scheduler_config.json",
        {
            "_class_name": "UniPCMultistepScheduler",
            "_diffusers_version": _SCHEDULER_STAMP[two_experts],
            **config,
        },
    )


def build_tiny_wan(out_dir: str | Path, *, two_experts: bool = False) -> Path:
    """Build a tiny random-weight Wan text-to-video checkpoint in diffusers format.

    Parameters
    ----------
    out_dir
        Folder of the checkpoint (created; an existing folder is replaced).
    two_experts
        Build the Wan 2.2 A14B layout (``transformer`` and ``transformer_2``,
        ``boundary_ratio`` 0.875) instead of Wan 2.1's single transformer.

    Returns
    -------
    Path
        ``out_dir``, holding model_index.json, transformer/ (and transformer_2/), vae/,
        text_encoder/, tokenizer/ and scheduler/ (about 1 MB). The same library versions
        give the same bytes.
    """
    import diffusers
    import torch

    out_dir = Path(out_dir)
    with building(out_dir) as tmp:
        with torch.random.fork_rng(devices=[]):
            vocab_size = _build_tokenizer(tmp / "tokenizer")
            _build_text_encoder(tmp / "text_encoder", vocab_size)
            _build_vae(tmp / "vae")
            _build_transformer(tmp / "transformer", _TRANSFORMER_SEEDS[0])
            if two_experts:
                _build_transformer(tmp / "transformer_2", _TRANSFORMER_SEEDS[1])
            _build_scheduler(tmp / "scheduler", two_experts)
        index: dict[str, object] = {
            "_class_name": "WanPipeline",
            "_diffusers_version": diffusers.__version__,
            "scheduler": ["diffusers", "UniPCMultistepScheduler"],
            "text_encoder": ["transformers", "UMT5EncoderModel"],
            "tokenizer": ["transformers", "T5TokenizerFast"],
            "transformer": ["diffusers", "WanTransformer3DModel"],
            "vae": ["diffusers", "AutoencoderKLWan"],
        }
        if two_experts:
            index["boundary_ratio"] = BOUNDARY_RATIO
            index["expand_timesteps"] = False
            index["transformer_2"] = ["diffusers", "WanTransformer3DModel"]
        write_json(tmp / "model_index.json", index)
    logger.info("built tiny Wan (%s) in %s", "two experts" if two_experts else "one", out_dir)
    return out_dir


def write_vae_hub_cache(model_dir: str | Path, hub_cache: str | Path) -> Path:
    """Lay the checkpoint's VAE out as the hub repository ``ai-toolkit/wan2.1-vae`` in a
    Hugging Face hub cache folder (what ``HF_HUB_CACHE`` names).

    The repository holds the VAE's ``config.json`` and weights at its top level, as the
    real one does. The snapshot's name, which ``refs/main`` points at, is a hash of those
    files, so the same VAE always gives the same folder.

    Returns
    -------
    Path
        The snapshot folder.
    """
    vae = Path(model_dir) / "vae"
    files = sorted(p for p in vae.iterdir() if p.is_file())
    digest = hashlib.sha1()
    for path in files:
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    revision = digest.hexdigest()
    repo = Path(hub_cache) / ("models--" + VAE_HUB_ID.replace("/", "--"))
    if repo.exists():
        shutil.rmtree(repo)
    snapshot = repo / "snapshots" / revision
    snapshot.mkdir(parents=True)
    for path in files:
        shutil.copyfile(path, snapshot / path.name)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(revision, encoding="utf-8")
    return snapshot


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m parity.wan.tiny",
        description="Build a tiny random-weight Wan text-to-video checkpoint.",
    )
    parser.add_argument("--out", required=True, help="output folder (replaced)")
    parser.add_argument(
        "--two-experts",
        action="store_true",
        help="the Wan 2.2 A14B layout: transformer and transformer_2, boundary 0.875",
    )
    parser.add_argument(
        "--vae-hub-cache",
        metavar="CACHE",
        help=f"also lay the VAE out as the hub repository {VAE_HUB_ID} in this hub cache",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    out = build_tiny_wan(args.out, two_experts=args.two_experts)
    if args.vae_hub_cache:
        write_vae_hub_cache(out, args.vae_hub_cache)
    print(out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
