"""Tests of the tiny Z-Image checkpoints (parity.zimage.tiny) and the committed fixtures."""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path

import numpy as np
import pytest

from parity.zimage.tiny import CHAT_TEMPLATE, FIXTURE_NAMES, build_tiny_zimage

MODELS = Path(__file__).resolve().parent.parent / "fixtures" / "models"
BASE = MODELS / FIXTURE_NAMES["base"]
TURBO = MODELS / FIXTURE_NAMES["turbo"]

PROMPT = "a red cube on a table"


# Configs record the library version that wrote them; a newer transformers or diffusers
# changes only that stamp, so it is left out of the comparison.
_VERSION_KEYS = ("transformers_version", "_diffusers_version")


def _digest(path: Path) -> str:
    data = path.read_bytes()
    if path.suffix == ".json":
        config = json.loads(data)
        if isinstance(config, dict):
            for key in _VERSION_KEYS:
                config.pop(key, None)
        data = json.dumps(config, sort_keys=True).encode()
    return hashlib.sha256(data).hexdigest()


def _file_hashes(folder: Path) -> dict[str, str]:
    return {
        p.relative_to(folder).as_posix(): _digest(p)
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def _load(folder: Path):
    from diffusers import ZImagePipeline

    pipe = ZImagePipeline.from_pretrained(folder)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _render(pipe, *, prompt=PROMPT, seed=0, cfg=4.0, steps=6, width=64, height=64):
    """Render and return float pixels in [0, 255], shape (height, width, 3)."""
    import torch

    out = pipe(
        prompt,
        width=width,
        height=height,
        num_inference_steps=steps,
        guidance_scale=cfg,
        generator=torch.Generator("cpu").manual_seed(seed),
        output_type="np",
    ).images[0]
    return np.asarray(out, dtype=np.float64) * 255.0


def _diff(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b).mean())


@pytest.fixture(scope="module")
def base_pipe():
    return _load(BASE)


@pytest.fixture(scope="module")
def reference(base_pipe) -> np.ndarray:
    return _render(base_pipe)


#: Weights are built with float arithmetic (initialisation bounds, kernel smoothing), so
#: a rebuild on a machine with other CPU kernels differs from the committed bytes by float
#: noise: about 1e-7 of a tensor's largest value was measured with ATEN_CPU_CAPABILITY=
#: default against AVX2. Allowed: 1e-6 of the largest value of each tensor.
WEIGHT_NOISE = 1e-6


def test_rebuild_gives_the_committed_fixture(tmp_path: Path) -> None:
    """Configs and tokenizer byte for byte; weights within float noise (exact on the
    machine that made them)."""
    from safetensors.torch import load_file

    for variant, name in FIXTURE_NAMES.items():
        built = build_tiny_zimage(tmp_path / name, variant=variant)
        assert built == tmp_path / name
        ours, theirs = _file_hashes(built), _file_hashes(MODELS / name)
        assert ours.keys() == theirs.keys(), name
        for part in ours:
            if not part.endswith(".safetensors"):
                assert ours[part] == theirs[part], f"{name}/{part} differs"
                continue
            a, b = load_file(built / part), load_file(MODELS / name / part)
            assert a.keys() == b.keys(), f"{name}/{part}"
            for key in a:
                assert (a[key].shape, a[key].dtype) == (b[key].shape, b[key].dtype), key
                limit = WEIGHT_NOISE * float(b[key].abs().max())
                worst = float((a[key].double() - b[key].double()).abs().max())
                assert worst <= limit, f"{name}/{part} {key}: off by {worst:.3g} > {limit:.3g}"


@pytest.mark.parametrize("folder", [BASE, TURBO], ids=["base", "turbo"])
def test_fixture_layout_and_size(folder: Path) -> None:
    index = json.loads((folder / "model_index.json").read_text())
    assert index["_class_name"] == "ZImagePipeline"
    for part in ("transformer", "vae", "text_encoder", "tokenizer", "scheduler"):
        assert (folder / part).is_dir()
    total = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
    assert total < 5 * 1024 * 1024


def test_configs_match_the_real_models(base_pipe) -> None:
    turbo = json.loads((TURBO / "scheduler" / "scheduler_config.json").read_text())
    base = base_pipe.scheduler.config
    assert base.shift == 6.0 and turbo["shift"] == 3.0
    assert not base.use_dynamic_shifting and not turbo["use_dynamic_shifting"]
    assert base_pipe.vae_scale_factor == 8
    assert base_pipe.vae.config.latent_channels == 16
    assert base_pipe.vae.config.scaling_factor == pytest.approx(0.3611)
    assert base_pipe.vae.config.shift_factor == pytest.approx(0.1159)
    cfg = base_pipe.transformer.config
    assert (cfg.dim, cfg.n_layers, cfg.n_refiner_layers, cfg.n_heads) == (32, 2, 1, 2)
    assert (cfg.in_channels, tuple(cfg.all_patch_size)) == (16, (2,))
    assert base_pipe.text_encoder.config.hidden_size == cfg.cap_feat_dim == 32


def test_turbo_transformer_differs_from_base() -> None:
    from safetensors.torch import load_file

    name = "transformer/diffusion_pytorch_model.safetensors"
    a, b = load_file(BASE / name), load_file(TURBO / name)
    assert a.keys() == b.keys()
    assert any(not (a[k] == b[k]).all() for k in a if a[k].abs().sum() > 0)
    # The text encoder and VAE are shared, as with the real models.
    for part in ("text_encoder/model.safetensors", "vae/diffusion_pytorch_model.safetensors"):
        assert (BASE / part).read_bytes() == (TURBO / part).read_bytes()


def test_same_seed_same_pixels(base_pipe, reference) -> None:
    again = _render(base_pipe)
    assert np.array_equal(again, reference)


def test_image_is_finite_structured_and_survives_jpeg(base_pipe, reference) -> None:
    from PIL import Image

    assert reference.shape == (64, 64, 3)
    assert np.isfinite(reference).all()
    assert reference.std() > 30.0  # not flat
    pixels = np.round(reference).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="JPEG", quality=75)
    jpeg = np.asarray(Image.open(buf).convert("RGB"), dtype=np.float64)
    jpeg_error = _diff(jpeg, pixels.astype(np.float64))
    seed_change = _diff(_render(base_pipe, seed=1), reference)
    assert jpeg_error < 8.0
    assert seed_change > 3 * jpeg_error


@pytest.mark.parametrize(
    "change",
    [
        {"seed": 1},
        {"cfg": 2.5},
        {"cfg": 0.0},
        {"steps": 4},
        {"prompt": "a blue sphere"},
        {"prompt": "a red cube on a chair"},
    ],
    ids=["seed", "cfg", "no-cfg", "steps", "prompt", "prompt-word"],
)
def test_each_setting_changes_the_image(base_pipe, reference, change) -> None:
    assert _diff(_render(base_pipe, **change), reference) > 5.0


def test_size_is_honoured_and_changes_the_image(base_pipe, reference) -> None:
    tall = _render(base_pipe, width=80, height=112)
    assert tall.shape == (112, 80, 3)
    assert np.isfinite(tall).all() and tall.std() > 30.0
    wide = _render(base_pipe, width=96, height=64)
    assert wide.shape == (64, 96, 3)
    assert _diff(wide[:, :64], reference) > 5.0


def test_turbo_renders_differently() -> None:
    turbo = _load(TURBO)
    image = _render(turbo)
    assert np.isfinite(image).all() and image.std() > 30.0
    assert _diff(image, _render(turbo, seed=1)) > 5.0


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(BASE / "tokenizer")


def test_tokenizer_specials_and_round_trip(tokenizer) -> None:
    assert tokenizer.pad_token == "<|endoftext|>"
    assert tokenizer.eos_token == "<|im_end|>"
    for token in ("<|im_start|>", "<|im_end|>", "<think>", "</think>"):
        ids = tokenizer(token, add_special_tokens=False).input_ids
        assert len(ids) == 1, token
    text = "a photo of sks dog, 4k — café"
    ids = tokenizer(text, add_special_tokens=False).input_ids
    assert tokenizer.decode(ids) == text
    assert tokenizer.vocab_size <= 1024


def test_chat_template(tokenizer) -> None:
    assert (BASE / "tokenizer" / "chat_template.jinja").read_text() == CHAT_TEMPLATE
    messages = [{"role": "user", "content": "a cat"}]

    def render(**kwargs) -> str:
        return tokenizer.apply_chat_template(messages, tokenize=False, **kwargs)

    user = "<|im_start|>user\na cat<|im_end|>\n"
    assert render(add_generation_prompt=False) == user
    assert render(add_generation_prompt=True) == user + "<|im_start|>assistant\n"
    assert render(add_generation_prompt=True, enable_thinking=True) == (
        user + "<|im_start|>assistant\n"
    )
    assert render(add_generation_prompt=True, enable_thinking=False) == (
        user + "<|im_start|>assistant\n<think>\n\n</think>\n\n"
    )
    assert render(add_generation_prompt=False, enable_thinking=False) == user


def test_build_rejects_unknown_variant(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="variant"):
        build_tiny_zimage(tmp_path / "x", variant="edit")  # type: ignore[arg-type]
