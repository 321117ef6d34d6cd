"""A deterministic tiny random-weight Qwen-Image checkpoint in diffusers format.

The folder has the layout of ``Qwen/Qwen-Image`` at toy size, so every code path of
`diffusers.QwenImagePipeline` (and of ai-toolkit's Qwen-Image loader and sampler) runs on
it in about a second on a CPU:

- transformer: `QwenImageTransformer2DModel`, 2 heads of 16, 2 blocks, patch 2, 64 input
  channels (16 latent channels packed 2x2), 16 output channels, joint attention dim 32
  (the text encoder's width), rotary axes (4, 6, 6), no guidance embedding (as the real
  model);
- vae: `AutoencoderKLQwenImage` with base width 8, the real channel multipliers
  (1, 2, 4, 4), one residual block per level and the real per-channel latent mean and
  standard deviation, so `vae_scale_factor` is 8 and sizes are multiples of 16 as with the
  real model; its tiled decode starts above 256 pixels, as the real one's;
- text_encoder: `Qwen2_5_VLForConditionalGeneration` with a text model of width 32,
  2 layers, 2 query heads and 1 key-value head (multimodal rotary sections (2, 3, 3)) and
  a one-layer vision tower;
- tokenizer: a byte-level BPE `Qwen2Tokenizer` with Qwen2.5-VL's special tokens;
- scheduler: `FlowMatchEulerDiscreteScheduler` with Qwen-Image's settings key for key
  (dynamic shifting with the exponential time shift, base shift 0.5 at 256 tokens, max
  shift 0.9 at 8192 tokens, shift 1.0, terminal sigma 0.02).

The tokenizer is written from a fixed word list, not trained: each word (with and
without the leading space mark) gets the merges that join it into one token, appended
after the merges already there, so that every listed word is a single token and two
builds write the same bytes. `QwenImagePipeline` drops the leading tokens of its prompt
template (the system prompt, :data:`PROMPT_TEMPLATE_DROP` tokens with the real
tokenizer); the word list holds every word of that template, and the builder checks that
the prefix encodes to exactly that many tokens here too.

Random weights alone give near-flat or noisy images, so a few weights are scaled (the
token embeddings, the text values of the joint attention, the output projection and
the final adaLN modulation) and the VAE
decoder is smoothed, so that images show large-scale structure that survives JPEG q75 and
reacts to the prompt, the seed, true CFG, the number of steps and a LoRA.

Run ``python -m parity.qwenimage.tiny --out DIR`` to build one.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from parity.tiny_parts import building, write_json

logger = logging.getLogger(__name__)

#: The scheduler settings of Qwen/Qwen-Image's ``scheduler/scheduler_config.json``
#: (and of ai-toolkit's ``qwen_image`` training scheduler), key for key.
SCHEDULER_CONFIG: dict[str, object] = {
    "base_image_seq_len": 256,
    "base_shift": 0.5,
    "invert_sigmas": False,
    "max_image_seq_len": 8192,
    "max_shift": 0.9,
    "num_train_timesteps": 1000,
    "shift": 1.0,
    "shift_terminal": 0.02,
    "stochastic_sampling": False,
    "time_shift_type": "exponential",
    "use_beta_sigmas": False,
    "use_dynamic_shifting": True,
    "use_exponential_sigmas": False,
    "use_karras_sigmas": False,
}

#: Hub id of the model the tiny checkpoint stands in for.
HUB_ID = "Qwen/Qwen-Image"

#: `QwenImagePipeline`'s prompt template and the number of its leading tokens (the system
#: prompt and the user turn's header) it drops from the text encoder's hidden states.
PROMPT_TEMPLATE = (
    "<|im_start|>system\nDescribe the image by detailing the color, shape, size, texture, "
    "quantity, text, spatial relationships of the objects and background:<|im_end|>\n"
    "<|im_start|>user\n{}<|im_end|>\n<|im_start|>assistant\n"
)
PROMPT_TEMPLATE_DROP = 34

#: Width of the text encoder = transformer ``joint_attention_dim``.
TEXT_WIDTH = 32

#: Qwen2.5-VL's special tokens, in the order of their ids in the real tokenizer (they
#: follow the byte-level vocabulary there as here).
SPECIAL_TOKENS: tuple[str, ...] = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|object_ref_start|>",
    "<|object_ref_end|>",
    "<|box_start|>",
    "<|box_end|>",
    "<|quad_start|>",
    "<|quad_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
)

#: Qwen2-VL's chat template, reduced to text messages.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

_WORDS: tuple[str, ...] = (
    # Every word of QwenImagePipeline's prompt template.
    "system user assistant Describe the image by detailing color shape size texture",
    "quantity text spatial relationships of objects and background",
    # Words of the prompts the fixtures and tests use.
    "a an on in at with under above next to near from over behind",
    "photo picture painting portrait drawing illustration render close up shot view",
    "dog cat horse bird fish person man woman child astronaut robot",
    "red green blue yellow white black orange purple brown gray pink golden",
    "cube sphere cone house tree car boat table chair cup vase flower fruit apple",
    "sky sea ocean lake river mountain hill forest garden street city room window",
    "sunset night morning fog rain snow light lighting shadow studio soft high detail",
    "small large big tiny old new wooden stone glass metal simple minimal",
    "blurry low quality distorted watermark sks ohwx style art digital film grain",
    "sitting standing floating riding sleeping walking wearing holding looking",
)

_TEXT_SEED = 2026
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
    code points from 256 up (so a space is ``Ġ`` and a newline ``Ċ``), the convention
    GPT-2 and Qwen tokenizers share.
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


def _apply_merges(symbols: list[str], ranks: dict[tuple[str, str], int]) -> list[str]:
    """Byte-level BPE on one pre-token: merge the best-ranked adjacent pair until none."""
    while len(symbols) > 1:
        pairs = [
            (ranks.get((a, b), len(ranks)), i)
            for i, (a, b) in enumerate(zip(symbols[:-1], symbols[1:], strict=True))
        ]
        rank, i = min(pairs)
        if rank == len(ranks):
            break
        symbols = [*symbols[:i], symbols[i] + symbols[i + 1], *symbols[i + 2 :]]
    return symbols


def vocab_and_merges() -> tuple[dict[str, int], list[tuple[str, str]]]:
    """The BPE vocabulary (without the special tokens) and merges, from the word list.

    Base symbols are the 256 byte characters. For each word, bare and with the space mark
    ``Ġ``, the merges learnt so far split it into pieces; merges joining those pieces left
    to right are appended. A later merge ranks below every earlier one, so it never
    changes how an earlier word is merged, and each listed word ends as one token.
    """
    alphabet = _byte_alphabet()
    tokens: list[str] = list(alphabet)
    known = set(tokens)
    merges: list[tuple[str, str]] = []
    ranks: dict[tuple[str, str], int] = {}
    space = alphabet[ord(" ")]
    for word in _words():
        for form in (space + word, word):
            pieces = _apply_merges(list(form), ranks)
            left = pieces[0]
            for right in pieces[1:]:
                merged = left + right
                ranks[(left, right)] = len(merges)
                merges.append((left, right))
                if merged not in known:
                    tokens.append(merged)
                    known.add(merged)
                left = merged
    return {token: i for i, token in enumerate(tokens)}, merges


def _build_tokenizer(folder: Path) -> dict[str, int]:
    """Write the tokenizer files; return the ids of the special tokens."""
    from transformers import Qwen2Tokenizer

    vocab, merges = vocab_and_merges()
    specials = {token: len(vocab) + i for i, token in enumerate(SPECIAL_TOKENS)}
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(
        json.dumps(vocab, ensure_ascii=False) + "\n", encoding="utf-8"
    )
    (folder / "merges.txt").write_text(
        "#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges), encoding="utf-8"
    )
    write_json(
        folder / "tokenizer_config.json",
        {
            "add_bos_token": False,
            "add_prefix_space": False,
            "added_tokens_decoder": {
                str(i): {
                    "content": token,
                    "lstrip": False,
                    "normalized": False,
                    "rstrip": False,
                    "single_word": False,
                    "special": True,
                }
                for token, i in specials.items()
            },
            "additional_special_tokens": [t for t in SPECIAL_TOKENS if t != "<|endoftext|>"],
            "bos_token": None,
            "clean_up_tokenization_spaces": False,
            "eos_token": "<|im_end|>",
            "errors": "replace",
            "model_max_length": 131072,
            "pad_token": "<|endoftext|>",
            "split_special_tokens": False,
            "tokenizer_class": "Qwen2Tokenizer",
            "unk_token": None,
        },
    )
    (folder / "chat_template.jinja").write_text(CHAT_TEMPLATE, encoding="utf-8")

    tokenizer = Qwen2Tokenizer.from_pretrained(folder)
    if len(tokenizer) != len(vocab) + len(specials):
        raise RuntimeError(f"tokenizer in {folder} has {len(tokenizer)} tokens")
    for token, i in specials.items():
        if tokenizer.convert_tokens_to_ids(token) != i:
            raise RuntimeError(f"{token} is not id {i} in {folder}")
    prefix = PROMPT_TEMPLATE.split("{}")[0]
    n_prefix = len(tokenizer(prefix).input_ids)
    if n_prefix != PROMPT_TEMPLATE_DROP:
        raise RuntimeError(
            f"the prompt template's prefix encodes to {n_prefix} tokens, "
            f"QwenImagePipeline drops {PROMPT_TEMPLATE_DROP}"
        )
    for word in _words():
        for form in (word, " " + word):
            if len(tokenizer(form).input_ids) != 1:
                raise RuntimeError(f"{form!r} is not one token in {folder}")
    return specials


def _build_text_encoder(folder: Path, vocab_size: int, specials: dict[str, int]) -> None:
    import torch
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    config = Qwen2_5_VLConfig(
        text_config={
            "vocab_size": vocab_size,
            "hidden_size": TEXT_WIDTH,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "num_key_value_heads": 1,
            "hidden_act": "silu",
            "max_position_embeddings": 4096,
            "rms_norm_eps": 1e-6,
            "use_sliding_window": False,
            "max_window_layers": 2,
            "attention_dropout": 0.0,
            "rope_parameters": {
                "rope_type": "default",
                "rope_theta": 1000000.0,
                "mrope_section": [2, 3, 3],
            },
            "bos_token_id": specials["<|endoftext|>"],
            "eos_token_id": specials["<|im_end|>"],
            "tie_word_embeddings": False,
        },
        vision_config={
            "depth": 1,
            "hidden_size": 16,
            "intermediate_size": 32,
            "num_heads": 2,
            "in_channels": 3,
            "patch_size": 14,
            "spatial_merge_size": 2,
            "temporal_patch_size": 2,
            "window_size": 112,
            "out_hidden_size": TEXT_WIDTH,
            "fullatt_block_indexes": [0],
        },
        image_token_id=specials["<|image_pad|>"],
        video_token_id=specials["<|video_pad|>"],
        vision_start_token_id=specials["<|vision_start|>"],
        vision_end_token_id=specials["<|vision_end|>"],
        tie_word_embeddings=False,
    )
    torch.manual_seed(_TEXT_SEED)
    model = Qwen2_5_VLForConditionalGeneration(config).eval()
    with torch.no_grad():
        model.get_input_embeddings().weight.normal_(0.0, 1.0)
    model.save_pretrained(folder, safe_serialization=True)


def _smooth_decoder(vae, *, output_gain: float) -> None:
    """Make the random 3D-convolution decoder produce smooth, high-contrast images.

    Every convolution with a 3x3 spatial kernel gets a blurred kernel (per time slice,
    its random kernel summed over space times a normalised binomial window), so that
    upsampling interpolates instead of adding pixel noise; the output convolution's
    weights are multiplied by ``output_gain`` so that images use the whole 0..255 range.
    """
    import torch

    window = torch.tensor([[1.0, 2.0, 1.0], [2.0, 4.0, 2.0], [1.0, 2.0, 1.0]]) / 16.0
    with torch.no_grad():
        for module in vae.decoder.modules():
            if isinstance(module, torch.nn.Conv3d | torch.nn.Conv2d):
                if tuple(module.kernel_size[-2:]) == (3, 3):
                    centre = module.weight.sum(dim=(-2, -1), keepdim=True)
                    module.weight.copy_(centre * window)
        vae.decoder.conv_out.weight.mul_(output_gain)
        vae.decoder.conv_out.bias.zero_()


def _build_vae(folder: Path) -> None:
    import torch
    from diffusers import AutoencoderKLQwenImage

    torch.manual_seed(_VAE_SEED)
    vae = AutoencoderKLQwenImage(
        base_dim=8,
        z_dim=16,
        dim_mult=[1, 2, 4, 4],
        num_res_blocks=1,
        attn_scales=[],
        temperal_downsample=[False, True, True],
        dropout=0.0,
    ).eval()
    _smooth_decoder(vae, output_gain=3.0)
    vae.save_pretrained(folder, safe_serialization=True)


def _build_transformer(folder: Path) -> None:
    import torch
    from diffusers import QwenImageTransformer2DModel

    torch.manual_seed(_TRANSFORMER_SEED)
    model = QwenImageTransformer2DModel(
        patch_size=2,
        in_channels=64,
        out_channels=16,
        num_layers=2,
        attention_head_dim=16,
        num_attention_heads=2,
        joint_attention_dim=TEXT_WIDTH,
        guidance_embeds=False,
        axes_dims_rope=(4, 6, 6),
    ).eval()
    with torch.no_grad():
        model.proj_out.weight.mul_(2.0)
        model.norm_out.linear.weight.mul_(4.0)
        # The text reaches the image only through the joint attention, whose keys are
        # RMS-normalised: larger text values make the prompt and true CFG visible.
        for block in model.transformer_blocks:
            block.attn.add_v_proj.weight.mul_(8.0)
    model.save_pretrained(folder, safe_serialization=True)


def _build_scheduler(folder: Path) -> None:
    from diffusers import FlowMatchEulerDiscreteScheduler

    FlowMatchEulerDiscreteScheduler(**SCHEDULER_CONFIG).save_pretrained(folder)


def build_tiny_qwenimage(out_dir: str | Path) -> Path:
    """Build the tiny random-weight Qwen-Image checkpoint in diffusers format.

    Parameters
    ----------
    out_dir
        Folder of the checkpoint (created; an existing folder is replaced).

    Returns
    -------
    Path
        ``out_dir``, holding model_index.json, transformer/, vae/, text_encoder/,
        tokenizer/ and scheduler/ (about 2 MB). The same library versions give the same
        bytes.
    """
    import diffusers
    import torch

    out_dir = Path(out_dir)
    with building(out_dir) as tmp:
        with torch.random.fork_rng(devices=[]):
            specials = _build_tokenizer(tmp / "tokenizer")
            vocab_size = max(specials.values()) + 1
            _build_text_encoder(tmp / "text_encoder", vocab_size, specials)
            _build_vae(tmp / "vae")
            _build_transformer(tmp / "transformer")
            _build_scheduler(tmp / "scheduler")
        write_json(
            tmp / "model_index.json",
            {
                "_class_name": "QwenImagePipeline",
                "_diffusers_version": diffusers.__version__,
                "scheduler": ["diffusers", "FlowMatchEulerDiscreteScheduler"],
                "text_encoder": ["transformers", "Qwen2_5_VLForConditionalGeneration"],
                "tokenizer": ["transformers", "Qwen2Tokenizer"],
                "transformer": ["diffusers", "QwenImageTransformer2DModel"],
                "vae": ["diffusers", "AutoencoderKLQwenImage"],
            },
        )
    logger.info("built tiny Qwen-Image in %s", out_dir)
    return out_dir


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m parity.qwenimage.tiny",
        description="Build the tiny random-weight Qwen-Image checkpoint.",
    )
    parser.add_argument("--out", required=True, help="output folder (replaced)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    print(build_tiny_qwenimage(args.out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
