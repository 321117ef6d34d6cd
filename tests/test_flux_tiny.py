"""Tests of the tiny FLUX.1 checkpoint (parity.flux.tiny): deterministic bytes, loads with
diffusers' FluxPipeline, renders the same pixels twice and reacts to its settings."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from parity.flux.tiny import SCHEDULER_CONFIG, build_tiny_flux, clip_vocab_and_merges, t5_pieces

PROMPT = "a red cube on a table"


def _file_hashes(folder: Path) -> dict[str, str]:
    return {
        p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Path:
    return build_tiny_flux(tmp_path_factory.mktemp("flux") / "tiny-flux")


@pytest.fixture(scope="module")
def pipe(built):
    from diffusers import FluxPipeline

    pipe = FluxPipeline.from_pretrained(built)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _render(pipe, *, prompt=PROMPT, seed=0, guidance=4.0, steps=6, width=64, height=64):
    """Render and return float pixels in [0, 255], shape (height, width, 3)."""
    import torch

    out = pipe(
        prompt,
        width=width,
        height=height,
        num_inference_steps=steps,
        guidance_scale=guidance,
        generator=torch.Generator("cpu").manual_seed(seed),
        output_type="np",
    ).images[0]
    return np.asarray(out, dtype=np.float64) * 255.0


@pytest.fixture(scope="module")
def reference(pipe) -> np.ndarray:
    return _render(pipe)


def test_two_builds_are_byte_identical(built: Path, tmp_path: Path) -> None:
    again = build_tiny_flux(tmp_path / "again")
    assert again == tmp_path / "again"
    assert _file_hashes(again) == _file_hashes(built)


def test_layout_and_size(built: Path) -> None:
    index = json.loads((built / "model_index.json").read_text())
    assert index["_class_name"] == "FluxPipeline"
    for part in (
        "transformer",
        "vae",
        "text_encoder",
        "tokenizer",
        "text_encoder_2",
        "tokenizer_2",
        "scheduler",
    ):
        assert (built / part).is_dir(), part
    total = sum(p.stat().st_size for p in built.rglob("*") if p.is_file())
    assert total < 3 * 1024 * 1024


def test_configs_have_flux_dev_structure(pipe) -> None:
    scheduler = pipe.scheduler.config
    for key, value in SCHEDULER_CONFIG.items():
        assert scheduler[key] == value, key
    assert pipe.vae_scale_factor == 8
    assert pipe.vae.config.latent_channels == 16
    assert pipe.vae.config.scaling_factor == pytest.approx(0.3611)
    assert pipe.vae.config.shift_factor == pytest.approx(0.1159)
    cfg = pipe.transformer.config
    assert cfg.guidance_embeds is True
    assert cfg.in_channels == 4 * pipe.vae.config.latent_channels
    assert cfg.joint_attention_dim == pipe.text_encoder_2.config.d_model
    assert cfg.pooled_projection_dim == pipe.text_encoder.config.hidden_size
    assert pipe.tokenizer.model_max_length == 77
    assert pipe.tokenizer_2.model_max_length == 512


def test_vocabularies_are_laid_out_as_the_real_ones() -> None:
    vocab, merges = clip_vocab_and_merges()
    assert vocab["<|endoftext|>"] == len(vocab) - 1
    assert len(merges) == len(vocab) - 512 - 2
    pieces = t5_pieces()
    assert [p for p, _ in pieces[:3]] == ["<pad>", "</s>", "<unk>"]


def test_tokenizers_round_trip(pipe) -> None:
    clip = pipe.tokenizer("a red cube sks").input_ids
    assert clip[0] == pipe.tokenizer.bos_token_id and clip[-1] == pipe.tokenizer.eos_token_id
    assert len(clip) == 6  # each known word is one token
    t5 = pipe.tokenizer_2("a red cube sks").input_ids
    assert t5[-1] == 1 and len(t5) == 5
    assert pipe.tokenizer_2.unk_token_id not in pipe.tokenizer_2("zebra quiz").input_ids


def test_same_seed_same_pixels(pipe, reference) -> None:
    assert reference.shape == (64, 64, 3)
    assert np.isfinite(reference).all()
    assert reference.std() > 30.0  # not flat
    assert np.array_equal(_render(pipe), reference)


@pytest.mark.parametrize(
    "change",
    [{"seed": 1}, {"guidance": 4.5}, {"steps": 4}, {"prompt": "a blue sphere in the sky"}],
    ids=["seed", "guidance", "steps", "prompt"],
)
def test_each_setting_changes_the_image(pipe, reference, change) -> None:
    assert float(np.abs(_render(pipe, **change) - reference).mean()) > 2.0


def test_size_floors_to_16(pipe) -> None:
    # FluxPipeline packs 2x2 latents of a factor-8 VAE: 80x104 renders as 80x96.
    image = _render(pipe, width=80, height=104)
    assert image.shape == (96, 80, 3)
