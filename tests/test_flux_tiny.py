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


FIXTURE = Path(__file__).resolve().parent.parent / "fixtures" / "aitk_flux"

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
    """The fixture's tiny_flux/ is this builder's output: configs and tokenizers equal,
    weights within float noise (exact on the machine that made them)."""
    from safetensors.torch import load_file

    committed = FIXTURE / "tiny_flux"
    ours, theirs = _file_hashes(built), _file_hashes(committed)
    assert ours.keys() == theirs.keys()
    for part in ours:
        if part.endswith(".json"):
            assert _config_digest(built / part) == _config_digest(committed / part), part
        elif part.endswith(".safetensors"):
            a, b = load_file(built / part), load_file(committed / part)
            assert a.keys() == b.keys(), part
            for key in a:
                limit = WEIGHT_NOISE * float(b[key].abs().max())
                assert float((a[key].double() - b[key].double()).abs().max()) <= limit, key
        else:
            assert ours[part] == theirs[part], part


def test_real_step0_previews_are_plain_flux_renders() -> None:
    """ai-toolkit's step-0 previews (LoRA B = 0) are FluxPipeline renders of the base with
    the arguments its call log recorded, within the float32 noise rule (1/255)."""
    import torch
    import yaml
    from diffusers import FluxPipeline
    from PIL import Image

    job = FIXTURE / "output" / "aitk_flux"
    process = yaml.safe_load((job / "config.yaml").read_text())["config"]["process"][0]
    items = process["sample"]["samples"]
    calls = [json.loads(line) for line in (FIXTURE / "calls.jsonl").open()][: len(items)]
    pipe = FluxPipeline.from_pretrained(FIXTURE / "tiny_flux")
    pipe.set_progress_bar_config(disable=True)
    for item, call in zip(items, calls, strict=True):
        prompt = item["prompt"].split("--")[0].strip()
        prompt = prompt.replace("[trigger]", process["trigger_word"])
        image = pipe(
            prompt,
            width=call["width"],
            height=call["height"],
            num_inference_steps=call["num_inference_steps"],
            guidance_scale=call["guidance_scale"],
            generator=torch.Generator("cpu").manual_seed(call["generator"]["initial_seed"]),
        ).images[0]
        ours = np.asarray(image, dtype=np.int16)
        theirs = np.asarray(Image.open(FIXTURE / call["image"]["file"]), dtype=np.int16)
        assert ours.shape == theirs.shape, call["preview"]
        assert int(np.abs(ours - theirs).max()) <= 1, call["preview"]
