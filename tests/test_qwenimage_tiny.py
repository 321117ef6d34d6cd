"""Tests of the tiny Qwen-Image checkpoint (parity.qwenimage.tiny): deterministic bytes,
loads with diffusers' QwenImagePipeline, drops exactly its prompt template's prefix,
renders the same pixels twice and reacts to its settings."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from parity.qwenimage.tiny import (
    PROMPT_TEMPLATE,
    PROMPT_TEMPLATE_DROP,
    SCHEDULER_CONFIG,
    build_tiny_qwenimage,
    vocab_and_merges,
)

PROMPT = "sks a red cube on a table"


def _file_hashes(folder: Path) -> dict[str, str]:
    return {
        p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Path:
    return build_tiny_qwenimage(tmp_path_factory.mktemp("qwenimage") / "tiny-qwenimage")


@pytest.fixture(scope="module")
def pipe(built):
    import torch
    from diffusers import QwenImagePipeline

    pipe = QwenImagePipeline.from_pretrained(built, dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _render(pipe, *, prompt=PROMPT, seed=0, cfg=4.0, steps=6, width=64, height=64, neg=" "):
    """Render and return float pixels in [0, 255], shape (height, width, 3)."""
    import torch

    out = pipe(
        prompt,
        negative_prompt=neg,
        true_cfg_scale=cfg,
        width=width,
        height=height,
        num_inference_steps=steps,
        generator=torch.Generator("cpu").manual_seed(seed),
        output_type="np",
    ).images[0]
    return np.asarray(out, dtype=np.float64) * 255.0


@pytest.fixture(scope="module")
def reference(pipe) -> np.ndarray:
    return _render(pipe)


def test_two_builds_are_byte_identical(built: Path, tmp_path: Path) -> None:
    again = build_tiny_qwenimage(tmp_path / "again")
    assert again == tmp_path / "again"
    assert _file_hashes(again) == _file_hashes(built)


def test_layout_and_size(built: Path) -> None:
    index = json.loads((built / "model_index.json").read_text())
    assert index["_class_name"] == "QwenImagePipeline"
    assert index["text_encoder"] == ["transformers", "Qwen2_5_VLForConditionalGeneration"]
    for part in ("transformer", "vae", "text_encoder", "tokenizer", "scheduler"):
        assert (built / part).is_dir(), part
    total = sum(p.stat().st_size for p in built.rglob("*") if p.is_file())
    assert total < 4 * 1024 * 1024


def test_configs_have_qwen_image_structure(pipe) -> None:
    scheduler = {k: v for k, v in pipe.scheduler.config.items() if not k.startswith("_")}
    assert scheduler == SCHEDULER_CONFIG
    assert pipe.vae_scale_factor == 8
    assert pipe.vae.config.z_dim == 16
    assert pipe.vae.tile_sample_min_height == 256 and pipe.vae.tile_sample_min_width == 256
    cfg = pipe.transformer.config
    assert cfg.guidance_embeds is False
    assert cfg.in_channels == 4 * pipe.vae.config.z_dim
    assert cfg.out_channels == pipe.vae.config.z_dim
    assert cfg.joint_attention_dim == pipe.text_encoder.config.text_config.hidden_size
    assert pipe.text_encoder.config.vision_config.depth == 1


def test_prompt_template_prefix_is_what_the_pipeline_drops(pipe) -> None:
    assert pipe.prompt_template_encode == PROMPT_TEMPLATE
    assert pipe.prompt_template_encode_start_idx == PROMPT_TEMPLATE_DROP
    prefix = PROMPT_TEMPLATE.split("{}")[0]
    assert len(pipe.tokenizer(prefix).input_ids) == PROMPT_TEMPLATE_DROP
    # What is left after the drop is the prompt and the template's tail.
    full = pipe.tokenizer(PROMPT_TEMPLATE.format(PROMPT)).input_ids
    tail = pipe.tokenizer("<|im_end|>\n<|im_start|>assistant\n").input_ids
    assert len(full) - PROMPT_TEMPLATE_DROP == len(PROMPT.split()) + len(tail)
    embeds, _mask = pipe.encode_prompt(PROMPT, device="cpu")
    assert embeds.shape[1] == len(PROMPT.split()) + len(tail)


def test_vocabulary_is_laid_out_as_the_real_one(pipe) -> None:
    vocab, merges = vocab_and_merges()
    assert len(vocab) == 256 + len({a + b for a, b in merges})
    assert pipe.tokenizer.convert_tokens_to_ids("<|endoftext|>") == len(vocab)
    assert pipe.tokenizer.pad_token == "<|endoftext|>"
    assert pipe.tokenizer.eos_token == "<|im_end|>"
    ids = pipe.tokenizer("a red cube sks").input_ids
    assert len(ids) == 4  # each known word is one token
    assert pipe.tokenizer.decode(pipe.tokenizer("zebra quiz 42").input_ids) == "zebra quiz 42"


def test_same_seed_same_pixels(pipe, reference) -> None:
    assert reference.shape == (64, 64, 3)
    assert np.isfinite(reference).all()
    assert reference.std() > 30.0  # not flat
    assert np.array_equal(_render(pipe), reference)


@pytest.mark.parametrize(
    "change",
    [
        {"seed": 1},
        {"cfg": 4.5},
        {"cfg": 1.0},
        {"steps": 4},
        {"prompt": "sks a blue sphere in the sky"},
        {"neg": "blurry"},
    ],
    ids=["seed", "cfg", "no-cfg", "steps", "prompt", "negative"],
)
def test_each_setting_changes_the_image(pipe, reference, change) -> None:
    assert float(np.abs(_render(pipe, **change) - reference).mean()) > 2.0


def test_size_floors_to_16(pipe) -> None:
    # QwenImagePipeline packs 2x2 latents of a factor-8 VAE: 80x104 renders as 80x96.
    image = _render(pipe, width=80, height=104, steps=2)
    assert image.shape == (96, 80, 3)


def test_tiled_decode_acts_above_256_pixels(pipe) -> None:
    plain = _render(pipe, width=288, height=320, steps=2)
    pipe.vae.enable_tiling()
    try:
        tiled = _render(pipe, width=288, height=320, steps=2)
    finally:
        pipe.vae.disable_tiling()
    assert tiled.shape == plain.shape == (320, 288, 3)
    assert float(np.abs(tiled - plain).max()) > 10.0


FIXTURE = Path(__file__).resolve().parent.parent / "fixtures" / "aitk_qwen"

#: Configs record the library version that wrote them; a newer transformers or diffusers
#: changes only that stamp, so it is left out of the comparison.
_VERSION_KEYS = ("transformers_version", "_diffusers_version")

#: Weights come from float arithmetic (initialisation bounds, kernel smoothing): a
#: rebuild on a CPU with other kernels may differ from the committed bytes by float noise.
WEIGHT_NOISE = 1e-6


def _config_digest(path: Path) -> str:
    data = json.loads(path.read_text(encoding="utf-8"))
    for key in _VERSION_KEYS:
        data.pop(key, None)
    return json.dumps(data, sort_keys=True)


def test_rebuild_gives_the_committed_base_of_the_real_job(built: Path) -> None:
    """The fixture's tiny_qwen/ is this builder's output: configs and tokenizer equal,
    weights within float noise (exact on the machine that made them)."""
    from safetensors.torch import load_file

    committed = FIXTURE / "tiny_qwen"
    ours, theirs = _file_hashes(built), _file_hashes(committed)
    assert ours.keys() == theirs.keys()
    for part in ours:
        if part.endswith(".json") and "tokenizer/" not in part:
            assert _config_digest(built / part) == _config_digest(committed / part), part
        elif part.endswith(".safetensors"):
            a, b = load_file(built / part), load_file(committed / part)
            assert a.keys() == b.keys(), part
            for key in a:
                limit = WEIGHT_NOISE * float(b[key].abs().max())
                assert float((a[key].double() - b[key].double()).abs().max()) <= limit, key
        else:
            assert ours[part] == theirs[part], part


def test_real_step0_previews_are_plain_qwenimage_renders() -> None:
    """ai-toolkit's step-0 previews (LoRA B = 0) are QwenImagePipeline renders of the base
    with the texts and the arguments its call log recorded, within 1/255."""
    import torch
    import yaml
    from diffusers import QwenImagePipeline
    from PIL import Image

    job = FIXTURE / "output" / "aitk_qwen"
    process = yaml.safe_load((job / "config.yaml").read_text())["config"]["process"][0]
    items = process["sample"]["samples"]
    calls = [json.loads(line) for line in (FIXTURE / "calls.jsonl").open()][: len(items)]
    pipe = QwenImagePipeline.from_pretrained(FIXTURE / "tiny_qwen")
    pipe.set_progress_bar_config(disable=True)
    for item, call in zip(items, calls, strict=True):
        text, *flags = item["prompt"].split("--")
        prompt = text.strip().replace("[trigger]", process["trigger_word"])
        neg = item.get("neg", process["sample"]["neg"])
        for flag in flags:
            if flag.startswith("n "):
                neg = flag[2:].strip()
        image = pipe(
            prompt,
            negative_prompt=neg,
            true_cfg_scale=call["true_cfg_scale"],
            width=call["width"],
            height=call["height"],
            num_inference_steps=call["num_inference_steps"],
            generator=torch.Generator("cpu").manual_seed(call["generator"]["initial_seed"]),
        ).images[0]
        ours = np.asarray(image, dtype=np.int16)
        theirs = np.asarray(Image.open(FIXTURE / call["image"]["file"]), dtype=np.int16)
        assert ours.shape == theirs.shape, call["preview"]
        assert int(np.abs(ours - theirs).max()) <= 1, call["preview"]
