"""Deterministic tiny random-weight Z-Image checkpoints in diffusers format.

The checkpoints have the real model's structure at toy size, so every code path of
`diffusers.ZImagePipeline` runs on them in well under a second on a CPU:

- transformer: `ZImageTransformer2DModel`, dim 32, 2 layers, 1 refiner layer, 2 heads,
  `cap_feat_dim` 32, 16 input channels, patch 2;
- vae: 16-channel `AutoencoderKL` with 4 blocks (`vae_scale_factor` 8, so sizes are
  multiples of 16 as with the real model), scaling 0.3611, shift 0.1159;
- text_encoder: `Qwen3ForCausalLM` with hidden size 32, 2 layers;
- tokenizer: a byte-level BPE trained on a small built-in corpus, with Qwen3's special
  tokens and a Qwen3-style chat template;
- scheduler: `FlowMatchEulerDiscreteScheduler`, shift 6.0 (base, like the real Z-Image
  checkpoint) or 3.0 (turbo, like Z-Image-Turbo).

Random weights alone give near-flat or noisy images, so a few weights are scaled (the
transformer's final layer and its adaLN modulation) and the VAE decoder is smoothed, so
that images show large-scale structure that survives JPEG q75 and reacts to the prompt,
the seed, CFG, the number of steps, the size and a LoRA.

Run ``python -m parity.zimage.tiny [--out fixtures/models]`` to rebuild the committed
fixtures `tiny-zimage` and `tiny-zimage-turbo`.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Literal

from parity.tiny_parts import build_vae, building, write_json

logger = logging.getLogger(__name__)

Variant = Literal["base", "turbo"]

#: Scheduler shift each variant's checkpoint ships.
SCHEDULER_SHIFT: dict[str, float] = {"base": 6.0, "turbo": 3.0}

#: Folder names of the committed fixtures under ``fixtures/models``.
FIXTURE_NAMES: dict[str, str] = {"base": "tiny-zimage", "turbo": "tiny-zimage-turbo"}

SPECIAL_TOKENS: tuple[str, ...] = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<think>",
    "</think>",
)

#: Qwen3-style chat template: honours ``add_generation_prompt`` and ``enable_thinking``
#: (an empty think block is emitted when thinking is explicitly disabled).
CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}"
    "{{- '<|im_start|>assistant\\n' }}"
    "{%- if enable_thinking is defined and enable_thinking is false %}"
    "{{- '<think>\\n\\n</think>\\n\\n' }}"
    "{%- endif %}"
    "{%- endif %}"
)

_CORPUS: tuple[str, ...] = (
    "a photo of a dog sitting on a wooden table in the garden",
    "a red cube on a table, studio lighting, high detail",
    "a blue sphere floating above the ocean at sunset",
    "portrait of a woman with long hair, soft light, film grain",
    "a green tree on a hill under a cloudy sky",
    "a cat sleeping on the sofa next to a window",
    "a yellow car parked in front of an old house",
    "an astronaut riding a horse on the moon, digital art",
    "a bowl of fruit: apples, oranges and bananas",
    "a city street at night with neon signs and rain",
    "a mountain lake with reflections, morning fog",
    "sks person wearing a black jacket, close-up",
    "a painting of flowers in a vase, oil on canvas",
    "a small boat on a river, watercolor",
    "white background, simple shapes, minimal illustration",
    "blurry, low quality, distorted, watermark, text",
    "The quick brown fox jumps over the lazy dog. 0123456789",
    "user assistant system think answer question image picture",
)

_VOCAB_SIZE = 640
_TEXT_SEED = 1234
_VAE_SEED = 4321
_TRANSFORMER_SEED_OFFSET = {"base": 0, "turbo": 7919}


def _build_tokenizer(folder: Path) -> int:
    """Train and save the byte-level BPE tokenizer; return its vocabulary size."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    # Same pre-tokenization as Qwen2/Qwen3: split with Qwen's regex, then bytes to unicode.
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(
                Regex(
                    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
                    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
                ),
                behavior="isolated",
            ),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=_VOCAB_SIZE,
        min_frequency=1,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    # Repeat the corpus so that merge frequencies are far apart and ties are rare.
    corpus = [line for k, line in enumerate(_CORPUS) for _ in range(1 + k % 3)]
    tokenizer.train_from_iterator(corpus, trainer=trainer)
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer.save(str(folder / "tokenizer.json"))
    write_json(
        folder / "tokenizer_config.json",
        {
            "add_prefix_space": None,
            "backend": "tokenizers",
            "bos_token": None,
            "clean_up_tokenization_spaces": False,
            "eos_token": "<|im_end|>",
            "model_max_length": 131072,
            "pad_token": "<|endoftext|>",
            "tokenizer_class": "Qwen2Tokenizer",
            "unk_token": None,
        },
    )
    (folder / "chat_template.jinja").write_text(CHAT_TEMPLATE, encoding="utf-8")
    return tokenizer.get_vocab_size()


def _build_text_encoder(folder: Path, vocab_size: int) -> None:
    import torch
    from transformers import Qwen3Config, Qwen3ForCausalLM

    config = Qwen3Config(
        vocab_size=vocab_size,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        head_dim=16,
        max_position_embeddings=1024,
        rms_norm_eps=1e-6,
        rope_theta=10000.0,
        tie_word_embeddings=True,
        pad_token_id=0,
        eos_token_id=2,
        bos_token_id=None,
    )
    torch.manual_seed(_TEXT_SEED)
    model = Qwen3ForCausalLM(config).eval()
    with torch.no_grad():
        # Unit-scale token embeddings and stronger attention/MLP weights, so that the
        # second-to-last hidden state mixes tokens and differs clearly between prompts.
        model.model.embed_tokens.weight.normal_(0.0, 1.0)
        for layer in model.model.layers:
            for lin in (
                layer.self_attn.q_proj,
                layer.self_attn.k_proj,
                layer.self_attn.v_proj,
                layer.self_attn.o_proj,
                layer.mlp.gate_proj,
                layer.mlp.up_proj,
                layer.mlp.down_proj,
            ):
                lin.weight.normal_(0.0, 1.0 / lin.in_features**0.5)
    model.save_pretrained(folder, safe_serialization=True)


def _build_transformer(folder: Path, seed: int) -> None:
    import torch
    from diffusers import ZImageTransformer2DModel

    torch.manual_seed(seed)
    model = ZImageTransformer2DModel(
        all_patch_size=(2,),
        all_f_patch_size=(1,),
        in_channels=16,
        dim=32,
        n_layers=2,
        n_refiner_layers=1,
        n_heads=2,
        n_kv_heads=2,
        norm_eps=1e-5,
        qk_norm=True,
        cap_feat_dim=32,
        rope_theta=256.0,
        t_scale=1000.0,
        axes_dims=[8, 4, 4],
        axes_lens=[1024, 64, 64],
    ).eval()
    with torch.no_grad():
        for final in model.all_final_layer.values():
            final.linear.weight.mul_(4.0)
            final.adaLN_modulation[-1].weight.mul_(4.0)
        for layer in model.layers:
            layer.adaLN_modulation[0].weight.mul_(4.0)
    model.save_pretrained(folder, safe_serialization=True)


def _build_scheduler(folder: Path, shift: float) -> None:
    from diffusers import FlowMatchEulerDiscreteScheduler

    scheduler = FlowMatchEulerDiscreteScheduler(
        num_train_timesteps=1000, shift=shift, use_dynamic_shifting=False
    )
    scheduler.save_pretrained(folder)


def build_tiny_zimage(out_dir: str | Path, *, variant: Variant = "base", seed: int = 0) -> Path:
    """Build a tiny random-weight Z-Image checkpoint in diffusers format.

    Parameters
    ----------
    out_dir
        Folder of the checkpoint (created; an existing folder is replaced).
    variant
        ``"base"`` (scheduler shift 6.0) or ``"turbo"`` (shift 3.0, transformer with
        different random weights).
    seed
        Seed of the transformer's weights. The tokenizer, text encoder and VAE are the same
        for every variant and seed, as the real Z-Image and Z-Image-Turbo share them.

    Returns
    -------
    Path
        ``out_dir``, holding model_index.json, transformer/, vae/, text_encoder/,
        tokenizer/ and scheduler/ (about 3 MB). The same arguments give the same bytes.

    Raises
    ------
    ValueError
        If ``variant`` is not ``"base"`` or ``"turbo"``.
    """
    import diffusers
    import torch

    if variant not in SCHEDULER_SHIFT:
        raise ValueError(f"variant must be 'base' or 'turbo', got {variant!r} (for {out_dir})")
    out_dir = Path(out_dir)
    with building(out_dir) as tmp:
        with torch.random.fork_rng(devices=[]):
            vocab_size = _build_tokenizer(tmp / "tokenizer")
            _build_text_encoder(tmp / "text_encoder", vocab_size)
            build_vae(tmp / "vae", seed=_VAE_SEED, output_gain=3.0)
            _build_transformer(tmp / "transformer", seed + _TRANSFORMER_SEED_OFFSET[variant])
            _build_scheduler(tmp / "scheduler", SCHEDULER_SHIFT[variant])
        write_json(
            tmp / "model_index.json",
            {
                "_class_name": "ZImagePipeline",
                "_diffusers_version": diffusers.__version__,
                "scheduler": ["diffusers", "FlowMatchEulerDiscreteScheduler"],
                "text_encoder": ["transformers", "Qwen3ForCausalLM"],
                "tokenizer": ["transformers", "Qwen2Tokenizer"],
                "transformer": ["diffusers", "ZImageTransformer2DModel"],
                "vae": ["diffusers", "AutoencoderKL"],
            },
        )
    logger.info("built tiny Z-Image (%s, seed %d) in %s", variant, seed, out_dir)
    return out_dir


def build_fixtures(out: str | Path) -> list[Path]:
    """Build ``tiny-zimage`` (base) and ``tiny-zimage-turbo`` under ``out``."""
    out = Path(out)
    return [build_tiny_zimage(out / name, variant=v) for v, name in FIXTURE_NAMES.items()]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m parity.zimage.tiny",
        description="(Re)build the tiny Z-Image test checkpoints.",
    )
    parser.add_argument("--out", default="fixtures/models", help="output folder")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    for path in build_fixtures(args.out):
        print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
