"""A deterministic tiny random-weight FLUX.1 checkpoint in diffusers format.

The folder has the layout of ``black-forest-labs/FLUX.1-dev`` at toy size, so every code
path of `diffusers.FluxPipeline` (and of ai-toolkit's FLUX.1 loader and sampler) runs on
it in about a second on a CPU:

- transformer: `FluxTransformer2DModel` with the guidance embedding (as FLUX.1-dev has),
  2 heads of 16, 1 double-stream and 2 single-stream blocks, 64 input channels (16 latent
  channels packed 2x2), joint attention dim 32 (the T5 width), pooled projection dim 32
  (the CLIP width);
- vae: 16-channel `AutoencoderKL` with 4 blocks (`vae_scale_factor` 8, so with the 2x2
  packing sizes are multiples of 16 as with the real model), scaling 0.3611, shift 0.1159,
  no quant convolutions;
- text_encoder / tokenizer: `CLIPTextModel` (width 32, 2 layers) with a byte-level BPE
  `CLIPTokenizer` (77 tokens);
- text_encoder_2 / tokenizer_2: `T5EncoderModel` (width 32, 2 layers, gated GELU) with a
  Unigram `T5TokenizerFast` (``<pad>`` 0, ``</s>`` 1, ``<unk>`` 2);
- scheduler: `FlowMatchEulerDiscreteScheduler` with FLUX.1-dev's settings (dynamic
  shifting, base shift 0.5 at 256 tokens, max shift 1.15 at 4096 tokens, shift 3.0).

Both tokenizers are written from a fixed word list, not trained: the BPE merges join each
word's letters left to right, and the Unigram pieces are the words, the letters and the
digits with fixed scores, so two builds write the same bytes.

Random weights alone give near-flat or noisy images, so a few weights are scaled (the
output projection, the final adaLN modulation and the guidance embedder) and the VAE
decoder is smoothed, so that images show large-scale structure that survives JPEG q75 and
reacts to the prompt, the seed, the guidance value, the number of steps and a LoRA.

Run ``python -m parity.flux.tiny --out DIR`` to build one.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from parity.tiny_parts import build_vae, building, write_json

logger = logging.getLogger(__name__)

#: The scheduler settings of FLUX.1-dev's checkpoint (and of ai-toolkit's ``flux_config``).
SCHEDULER_CONFIG: dict[str, object] = {
    "base_image_seq_len": 256,
    "base_shift": 0.5,
    "max_image_seq_len": 4096,
    "max_shift": 1.15,
    "num_train_timesteps": 1000,
    "shift": 3.0,
    "use_dynamic_shifting": True,
}

#: Hub id of the model the tiny checkpoint stands in for.
HUB_ID = "black-forest-labs/FLUX.1-dev"

#: Width of both text encoders (T5 ``d_model`` = transformer ``joint_attention_dim``;
#: CLIP ``hidden_size`` = transformer ``pooled_projection_dim``).
TEXT_WIDTH = 32

CLIP_MAX_LENGTH = 77
T5_MAX_LENGTH = 512

_WORDS: tuple[str, ...] = (
    "a an the of on in at with and under above next to by near from over behind",
    "photo picture painting portrait drawing illustration render close up shot view",
    "dog cat horse bird fish person man woman child astronaut robot",
    "red green blue yellow white black orange purple brown gray pink golden",
    "cube sphere cone house tree car boat table chair cup vase flower fruit apple",
    "sky sea ocean lake river mountain hill forest garden street city room window",
    "sunset night morning fog rain snow light lighting shadow studio soft high detail",
    "small large big tiny old new wooden stone glass metal simple minimal background",
    "blurry low quality distorted watermark text sks ohwx style art digital film grain",
    "sitting standing floating riding sleeping walking wearing holding looking",
)

_CLIP_SPECIAL = ("<|startoftext|>", "<|endoftext|>")
_T5_SPECIAL = ("<pad>", "</s>", "<unk>")

_CLIP_SEED = 2024
_T5_SEED = 2025
_VAE_SEED = 4321
_TRANSFORMER_SEED = 0


def _words() -> list[str]:
    """The fixed word list, deduplicated, in first-seen order."""
    seen: dict[str, None] = {}
    for line in _WORDS:
        for word in line.split():
            seen.setdefault(word, None)
    return list(seen)


def _byte_alphabet() -> list[str]:
    """The 256 characters byte-level BPE uses for the bytes 0..255, in byte order.

    Printable Latin-1 bytes stand for themselves; the others are mapped, in order, to the
    code points from 256 up, which is the convention GPT-2 and CLIP tokenizers share.
    """
    keep = [*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAC + 1), *range(0xAE, 0xFF + 1)]
    out, extra = [], 0
    for byte in range(256):
        if byte in keep:
            out.append(chr(byte))
        else:
            out.append(chr(256 + extra))
            extra += 1
    return out


def clip_vocab_and_merges() -> tuple[dict[str, int], list[tuple[str, str]]]:
    """The CLIP BPE vocabulary and merges, written from the word list.

    Base symbols are the 256 byte characters and the same with the end-of-word mark
    ``</w>``; each word adds the merges that join its letters from left to right (the
    last one carries ``</w>``); the two special tokens come last, as in CLIP.
    """
    alphabet = _byte_alphabet()
    tokens: list[str] = [*alphabet, *(c + "</w>" for c in alphabet)]
    known = set(tokens)
    merges: list[tuple[str, str]] = []
    for word in _words():
        symbols = [*word[:-1], word[-1] + "</w>"]
        left = symbols[0]
        for right in symbols[1:]:
            merged = left + right
            if merged not in known:
                merges.append((left, right))
                tokens.append(merged)
                known.add(merged)
            left = merged
    tokens += list(_CLIP_SPECIAL)
    return {token: i for i, token in enumerate(tokens)}, merges


def t5_pieces() -> list[tuple[str, float]]:
    """The T5 Unigram pieces with their scores, written from the word list.

    ``<pad>``, ``</s>``, ``<unk>`` first (ids 0, 1, 2 as in T5), then the word-start mark,
    whole words (with and without it), then single letters, digits and punctuation. Whole
    words score far above letters, so a known word is always one piece.
    """
    pieces: list[tuple[str, float]] = [(t, 0.0) for t in _T5_SPECIAL]
    pieces.append(("\u2581", -2.0))
    for word in _words():
        pieces.append(("\u2581" + word, -4.0 - 0.01 * len(pieces)))
        pieces.append((word, -6.0 - 0.01 * len(pieces)))
    chars = "abcdefghijklmnopqrstuvwxyz0123456789.,:;!?'\"-()[]/"
    for ch in chars:
        pieces.append(("\u2581" + ch, -12.0))
        pieces.append((ch, -12.5))
    return pieces


def _build_clip(folder_tok: Path, folder_te: Path) -> None:
    import torch
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    vocab, merges = clip_vocab_and_merges()
    folder_tok.mkdir(parents=True, exist_ok=True)
    (folder_tok / "vocab.json").write_text(
        json.dumps(vocab, ensure_ascii=False) + "\n", encoding="utf-8"
    )
    (folder_tok / "merges.txt").write_text(
        "#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges), encoding="utf-8"
    )
    write_json(
        folder_tok / "tokenizer_config.json",
        {
            "bos_token": _CLIP_SPECIAL[0],
            "clean_up_tokenization_spaces": True,
            "do_lower_case": True,
            "eos_token": _CLIP_SPECIAL[1],
            "model_max_length": CLIP_MAX_LENGTH,
            "pad_token": _CLIP_SPECIAL[1],
            "tokenizer_class": "CLIPTokenizer",
            "unk_token": _CLIP_SPECIAL[1],
        },
    )
    tokenizer = CLIPTokenizer.from_pretrained(folder_tok)
    if len(tokenizer) != len(vocab):
        raise RuntimeError(f"CLIP tokenizer in {folder_tok} has {len(tokenizer)} tokens")

    config = CLIPTextConfig(
        vocab_size=len(vocab),
        hidden_size=TEXT_WIDTH,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        max_position_embeddings=CLIP_MAX_LENGTH,
        projection_dim=TEXT_WIDTH,
        hidden_act="quick_gelu",
        bos_token_id=vocab[_CLIP_SPECIAL[0]],
        eos_token_id=vocab[_CLIP_SPECIAL[1]],
        pad_token_id=vocab[_CLIP_SPECIAL[1]],
    )
    torch.manual_seed(_CLIP_SEED)
    model = CLIPTextModel(config).eval()
    with torch.no_grad():
        model.text_model.embeddings.token_embedding.weight.normal_(0.0, 1.0)
    model.save_pretrained(folder_te, safe_serialization=True)


def _build_t5(folder_tok: Path, folder_te: Path) -> None:
    import torch
    from transformers import T5Config, T5EncoderModel, T5TokenizerFast

    pieces = t5_pieces()
    tokenizer = T5TokenizerFast(vocab=pieces, extra_ids=0, model_max_length=T5_MAX_LENGTH)
    folder_tok.mkdir(parents=True, exist_ok=True)
    tokenizer.save_pretrained(folder_tok)
    for stamp in folder_tok.glob("*.json"):
        data = json.loads(stamp.read_text(encoding="utf-8"))
        write_json(stamp, data)

    config = T5Config(
        vocab_size=len(pieces),
        d_model=TEXT_WIDTH,
        d_kv=8,
        d_ff=64,
        num_layers=2,
        num_heads=4,
        relative_attention_num_buckets=8,
        relative_attention_max_distance=32,
        dropout_rate=0.0,
        feed_forward_proj="gated-gelu",
        is_encoder_decoder=False,
        use_cache=False,
        pad_token_id=0,
        eos_token_id=1,
        decoder_start_token_id=0,
    )
    torch.manual_seed(_T5_SEED)
    model = T5EncoderModel(config).eval()
    with torch.no_grad():
        model.shared.weight.normal_(0.0, 1.0)
        for name, param in model.named_parameters():
            if name.endswith(".weight") and param.ndim == 2 and "shared" not in name:
                param.normal_(0.0, 1.0 / param.shape[1] ** 0.5)
    model.save_pretrained(folder_te, safe_serialization=True)


def _build_transformer(folder: Path) -> None:
    import torch
    from diffusers import FluxTransformer2DModel

    torch.manual_seed(_TRANSFORMER_SEED)
    model = FluxTransformer2DModel(
        patch_size=1,
        in_channels=64,
        num_layers=1,
        num_single_layers=2,
        attention_head_dim=16,
        num_attention_heads=2,
        joint_attention_dim=TEXT_WIDTH,
        pooled_projection_dim=TEXT_WIDTH,
        guidance_embeds=True,
        axes_dims_rope=(4, 4, 8),
    ).eval()
    with torch.no_grad():
        model.proj_out.weight.mul_(2.0)
        model.norm_out.linear.weight.mul_(4.0)
        # A random guidance MLP makes the image swing with every tenth of guidance;
        # damped, guidance 4 and 4.5 still differ clearly.
        for lin in model.time_text_embed.guidance_embedder.modules():
            if isinstance(lin, torch.nn.Linear):
                lin.weight.mul_(0.5)
    model.save_pretrained(folder, safe_serialization=True)


def _build_scheduler(folder: Path) -> None:
    from diffusers import FlowMatchEulerDiscreteScheduler

    FlowMatchEulerDiscreteScheduler(**SCHEDULER_CONFIG).save_pretrained(folder)


def build_tiny_flux(out_dir: str | Path) -> Path:
    """Build the tiny random-weight FLUX.1 checkpoint in diffusers format.

    Parameters
    ----------
    out_dir
        Folder of the checkpoint (created; an existing folder is replaced).

    Returns
    -------
    Path
        ``out_dir``, holding model_index.json, transformer/, vae/, text_encoder/,
        tokenizer/, text_encoder_2/, tokenizer_2/ and scheduler/ (about 2 MB). The same
        library versions give the same bytes.
    """
    import diffusers
    import torch

    out_dir = Path(out_dir)
    with building(out_dir) as tmp:
        with torch.random.fork_rng(devices=[]):
            _build_clip(tmp / "tokenizer", tmp / "text_encoder")
            _build_t5(tmp / "tokenizer_2", tmp / "text_encoder_2")
            build_vae(tmp / "vae", seed=_VAE_SEED, output_gain=2.0)
            _build_transformer(tmp / "transformer")
            _build_scheduler(tmp / "scheduler")
        write_json(
            tmp / "model_index.json",
            {
                "_class_name": "FluxPipeline",
                "_diffusers_version": diffusers.__version__,
                "feature_extractor": [None, None],
                "image_encoder": [None, None],
                "scheduler": ["diffusers", "FlowMatchEulerDiscreteScheduler"],
                "text_encoder": ["transformers", "CLIPTextModel"],
                "text_encoder_2": ["transformers", "T5EncoderModel"],
                "tokenizer": ["transformers", "CLIPTokenizer"],
                "tokenizer_2": ["transformers", "T5TokenizerFast"],
                "transformer": ["diffusers", "FluxTransformer2DModel"],
                "vae": ["diffusers", "AutoencoderKL"],
            },
        )
    logger.info("built tiny FLUX.1 in %s", out_dir)
    return out_dir


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m parity.flux.tiny",
        description="Build the tiny random-weight FLUX.1 checkpoint.",
    )
    parser.add_argument("--out", required=True, help="output folder (replaced)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    print(build_tiny_flux(args.out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
