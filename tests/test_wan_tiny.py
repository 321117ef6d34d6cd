"""Tests of the tiny Wan text-to-video checkpoints (parity.wan.tiny): deterministic
bytes, the real layouts and scheduler files, diffusers' WanPipeline renders short clips
from them on a CPU (the same pixels twice, reacting to its settings), the two-expert
layout switches experts at the boundary, the VAE's hub-cache copy loads offline; the real
Wan fixtures' checkpoints are this builder's, and ai-toolkit's step-0 Wan 2.1 previews are
plain renders of it with a flow-match Euler at shift 3.0."""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import numpy as np
import pytest

from parity.wan.tiny import (
    BOUNDARY_RATIO,
    SCHEDULER_CONFIG,
    SCHEDULER_CONFIG_TWO_EXPERTS,
    VAE_HUB_ID,
    WORD_START,
    build_tiny_wan,
    vocabulary,
    write_vae_hub_cache,
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
    return build_tiny_wan(tmp_path_factory.mktemp("wan") / "tiny-wan")


@pytest.fixture(scope="module")
def built_two(tmp_path_factory) -> Path:
    return build_tiny_wan(tmp_path_factory.mktemp("wan22") / "tiny-wan22", two_experts=True)


def _pipe(folder: Path):
    import torch
    from diffusers import WanPipeline

    pipe = WanPipeline.from_pretrained(folder, dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def pipe(built):
    return _pipe(built)


def _render(
    pipe, *, prompt=PROMPT, seed=42, cfg=4.0, steps=6, frames=9, width=64, height=64, neg=""
):
    """Render and return float pixels in [0, 255], shape (frames, height, width, 3)."""
    import torch

    out = pipe(
        prompt=prompt,
        negative_prompt=neg,
        guidance_scale=cfg,
        num_inference_steps=steps,
        num_frames=frames,
        width=width,
        height=height,
        generator=torch.Generator("cpu").manual_seed(seed),
        output_type="np",
    ).frames[0]
    return np.asarray(out, dtype=np.float64) * 255.0


@pytest.fixture(scope="module")
def reference(pipe) -> np.ndarray:
    _render(pipe, steps=1)  # the first call pays for one-time kernel set-up
    return _render(pipe)


def test_two_builds_are_byte_identical(built: Path, built_two: Path, tmp_path: Path) -> None:
    assert _file_hashes(build_tiny_wan(tmp_path / "again")) == _file_hashes(built)
    again = build_tiny_wan(tmp_path / "again2", two_experts=True)
    assert _file_hashes(again) == _file_hashes(built_two)


def test_layouts_and_sizes(built: Path, built_two: Path) -> None:
    index = json.loads((built / "model_index.json").read_text())
    assert index["_class_name"] == "WanPipeline"
    assert index["scheduler"] == ["diffusers", "UniPCMultistepScheduler"]
    assert index["text_encoder"] == ["transformers", "UMT5EncoderModel"]
    assert index["tokenizer"] == ["transformers", "T5TokenizerFast"]
    assert "transformer_2" not in index and "boundary_ratio" not in index
    two = json.loads((built_two / "model_index.json").read_text())
    assert two["boundary_ratio"] == BOUNDARY_RATIO == 0.875
    assert two["transformer_2"] == two["transformer"] == ["diffusers", "WanTransformer3DModel"]
    for folder, parts in ((built, ()), (built_two, ("transformer_2",))):
        for part in ("transformer", "vae", "text_encoder", "tokenizer", "scheduler", *parts):
            assert (folder / part).is_dir(), part
        total = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
        assert total < 2 * 1024 * 1024
    experts = [
        (built_two / f / "diffusion_pytorch_model.safetensors").read_bytes()
        for f in ("transformer", "transformer_2")
    ]
    assert experts[0] != experts[1]


def test_scheduler_files_are_the_real_ones(built: Path, built_two: Path) -> None:
    one = json.loads((built / "scheduler" / "scheduler_config.json").read_text())
    two = json.loads((built_two / "scheduler" / "scheduler_config.json").read_text())
    assert one.pop("_class_name") == two.pop("_class_name") == "UniPCMultistepScheduler"
    assert one.pop("_diffusers_version") == "0.33.0.dev0"
    assert two.pop("_diffusers_version") == "0.35.0.dev0"
    assert one == SCHEDULER_CONFIG and two == SCHEDULER_CONFIG_TWO_EXPERTS
    assert one["flow_shift"] == 3.0 and one["use_flow_sigmas"] is True
    assert one["prediction_type"] == "flow_prediction"
    # The real Wan2.1-T2V-1.3B-Diffusers file is 751 bytes; this one is written the same way.
    assert (built / "scheduler" / "scheduler_config.json").stat().st_size == 751


def test_configs_have_wan_structure(pipe) -> None:
    from diffusers import UniPCMultistepScheduler

    assert isinstance(pipe.scheduler, UniPCMultistepScheduler)
    assert pipe.vae_scale_factor_spatial == 8 and pipe.vae_scale_factor_temporal == 4
    assert pipe.vae.config.z_dim == 16 and len(pipe.vae.config.latents_mean) == 16
    assert pipe.vae.config.latents_std[0] == 2.8184  # the real statistics
    assert pipe.vae.tile_sample_min_height == 256 and pipe.vae.tile_sample_min_width == 256
    cfg = pipe.transformer.config
    assert tuple(cfg.patch_size) == (1, 2, 2)
    assert cfg.in_channels == cfg.out_channels == pipe.vae.config.z_dim
    assert cfg.text_dim == pipe.text_encoder.config.d_model
    assert type(pipe.text_encoder).__name__ == "UMT5EncoderModel"


def test_tokenizer_is_the_word_list(pipe) -> None:
    tok = pipe.tokenizer
    vocab = vocabulary()
    assert len(tok) == len(vocab)
    assert [tok.pad_token_id, tok.eos_token_id, tok.unk_token_id] == [0, 1, 2]
    ids = tok(PROMPT).input_ids
    assert ids[-1] == tok.eos_token_id and len(ids) == len(PROMPT.split()) + 1
    assert tok.convert_ids_to_tokens(ids[:2]) == [WORD_START + "sks", WORD_START + "a"]
    # Unknown words are spelt out; no ASCII prompt needs <unk>.
    odd = tok("Zebra-quiz 42!").input_ids
    assert tok.unk_token_id not in odd
    assert tok.decode(odd, skip_special_tokens=True) == "Zebra-quiz 42!"
    embeds, _ = pipe.encode_prompt(
        PROMPT, do_classifier_free_guidance=False, max_sequence_length=512, device="cpu"
    )
    assert embeds.shape == (1, 512, 32)  # padded with zeros to the call's 512 tokens
    assert float(embeds[0, len(ids) :].detach().abs().max()) == 0.0


def test_renders_a_short_clip_quickly(pipe, reference) -> None:
    assert reference.shape == (9, 64, 64, 3)
    assert np.isfinite(reference).all()
    assert min(frame.std() for frame in reference) > 30.0  # no flat frame
    start = time.perf_counter()
    again = _render(pipe)
    assert time.perf_counter() - start < 10.0
    assert np.array_equal(again, reference)


def test_frames_change_a_little(reference) -> None:
    steps = [float(np.abs(reference[i] - reference[i - 1]).mean()) for i in range(1, 9)]
    assert all(1.0 < step < 60.0 for step in steps), steps


def test_one_frame_and_sizes(pipe) -> None:
    assert _render(pipe, frames=1, steps=2).shape == (1, 64, 64, 3)
    # 4k+1 frames: 6 is rounded down to 5; 80x48 is a multiple of 16 and stays.
    assert _render(pipe, frames=6, width=80, height=48, steps=2).shape == (5, 48, 80, 3)


@pytest.mark.parametrize(
    "change",
    [
        {"seed": 43},
        {"cfg": 1.0},
        {"steps": 4},
        {"prompt": "sks a blue sphere in the sky"},
        {"neg": "blurry"},
    ],
    ids=["seed", "no-cfg", "steps", "prompt", "negative"],
)
def test_each_setting_changes_the_clip(pipe, reference, change) -> None:
    assert float(np.abs(_render(pipe, **change) - reference).mean()) > 2.0


def test_two_experts_split_at_the_boundary(built_two: Path) -> None:
    pipe = _pipe(built_two)
    seen: list[tuple[str, float]] = []
    for name in ("transformer", "transformer_2"):
        getattr(pipe, name).register_forward_pre_hook(
            lambda _m, _a, kw, name=name: seen.append((name, float(kw["timestep"][0]))),
            with_kwargs=True,
        )
    clip = _render(pipe, steps=6)
    assert clip.shape == (9, 64, 64, 3)
    assert {name for name, _ in seen} == {"transformer", "transformer_2"}
    for name, t in seen:
        assert (name == "transformer") == (t >= BOUNDARY_RATIO * 1000), (name, t)


def test_vae_hub_cache_loads_offline(built: Path, tmp_path: Path, monkeypatch) -> None:
    from diffusers import AutoencoderKLWan

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    snapshot = write_vae_hub_cache(built, tmp_path / "hub")
    repo = tmp_path / "hub" / ("models--" + VAE_HUB_ID.replace("/", "--"))
    assert (repo / "refs" / "main").read_text() == snapshot.name
    assert sorted(p.name for p in snapshot.iterdir()) == [
        "config.json",
        "diffusion_pytorch_model.safetensors",
    ]
    assert write_vae_hub_cache(built, tmp_path / "hub") == snapshot  # same bytes, same name
    vae = AutoencoderKLWan.from_pretrained(VAE_HUB_ID, cache_dir=tmp_path / "hub")
    assert vae.config.z_dim == 16


FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"

#: Configs record the library version that wrote them; a newer transformers or diffusers
#: changes only that stamp, so it is left out of the comparison.
_VERSION_KEYS = ("transformers_version", "_diffusers_version")

#: Weights come from float arithmetic (initialisation bounds, kernel smoothing): a
#: rebuild on a CPU with other kernels may differ from the committed bytes by float noise.
WEIGHT_NOISE = 1e-6


def _config_digest(path: Path) -> str:
    data = json.loads(path.read_text(encoding="utf-8"))
    if "scheduler" not in path.parts:  # the scheduler files carry the real checkpoint's stamp
        for key in _VERSION_KEYS:
            data.pop(key, None)
    return json.dumps(data, sort_keys=True)


@pytest.mark.parametrize(
    ("which", "committed"),
    [("built", "aitk_wan21/tiny_wan21"), ("built_two", "aitk_wan22/tiny_wan22")],
)
def test_rebuild_gives_the_committed_base_of_the_real_jobs(request, which, committed) -> None:
    """The fixtures' tiny checkpoints are this builder's output: configs and tokenizer
    equal, weights within float noise (exact on the machine that made them)."""
    from safetensors.torch import load_file

    built, committed = request.getfixturevalue(which), FIXTURES / committed
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


def test_real_step0_previews_are_plain_wan_renders_with_euler_shift_3() -> None:
    """ai-toolkit's step-0 Wan 2.1 previews (LoRA B = 0) are `WanPipeline` renders of the
    base with a static flow-match Euler at shift 3.0 instead of the checkpoint's UniPC,
    with the texts and the arguments its call log recorded, within 1/255 in every frame."""
    import torch
    import yaml
    from diffusers import FlowMatchEulerDiscreteScheduler, WanPipeline
    from PIL import Image

    fixture = FIXTURES / "aitk_wan21"
    process = yaml.safe_load((fixture / "output" / "aitk_wan21" / "config.yaml").read_text())
    process = process["config"]["process"][0]
    items = process["sample"]["samples"]
    calls = [json.loads(line) for line in (fixture / "calls.jsonl").open()][: len(items)]
    pipe = WanPipeline.from_pretrained(fixture / "tiny_wan21")
    pipe.set_progress_bar_config(disable=True)
    pipe.scheduler = FlowMatchEulerDiscreteScheduler(
        num_train_timesteps=1000, shift=3.0, use_dynamic_shifting=False
    )
    for item, call in zip(items, calls, strict=True):
        prompt = item["prompt"].split("--")[0].strip()
        frames = pipe(
            prompt=prompt.replace("[trigger]", process["trigger_word"]),
            negative_prompt=item.get("neg", process["sample"]["neg"]),
            guidance_scale=call["guidance_scale"],
            width=call["width"],
            height=call["height"],
            num_frames=call["num_frames"],
            num_inference_steps=call["num_inference_steps"],
            generator=torch.Generator("cpu").manual_seed(call["generator"]["initial_seed"]),
            output_type="pil",
        ).frames[0]
        assert len(frames) == call["frames"]["count"], call["preview"]
        for i, frame in enumerate(frames):
            ours = np.asarray(frame, dtype=np.int16)
            theirs = np.asarray(
                Image.open(fixture / call["frames"]["folder"] / f"{i}.png"), dtype=np.int16
            )
            assert ours.shape == theirs.shape, call["preview"]
            assert int(np.abs(ours - theirs).max()) <= 1, (call["preview"], i)
