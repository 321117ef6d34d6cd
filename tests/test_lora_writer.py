"""Tests of the ai-toolkit-format LoRA writer (parity.testing.lora)."""

from __future__ import annotations

import hashlib
import json
import struct
from pathlib import Path

import numpy as np
import pytest

from parity.testing.lora import BLOCK_TARGETS, write_aitk_lora, write_foreign_lora

ROOT = Path(__file__).resolve().parent.parent
REAL_LORA = ROOT / "fixtures" / "aitk_real" / "output" / "aitk_zimage" / "aitk_zimage.safetensors"
REAL_BASE = ROOT / "fixtures" / "aitk_real" / "tiny_zimage"
BASE = ROOT / "fixtures" / "models" / "tiny-zimage"


def _open(path: Path) -> tuple[dict[str, str], dict[str, tuple[tuple[int, ...], str]]]:
    from safetensors import safe_open

    with safe_open(str(path), "pt") as fh:
        meta = dict(fh.metadata())
        tensors = {}
        for key in fh.keys():
            t = fh.get_tensor(key)
            tensors[key] = (tuple(t.shape), str(t.dtype))
    return meta, tensors


def _data_section(path: Path) -> bytes:
    raw = path.read_bytes()
    (size,) = struct.unpack("<Q", raw[:8])
    return raw[8 + size :]


@pytest.fixture(scope="module")
def pipe():
    from diffusers import ZImagePipeline

    pipe = ZImagePipeline.from_pretrained(BASE)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def test_keys_shapes_and_metadata_match_a_real_aitk_file(tmp_path: Path) -> None:
    real_meta, real_tensors = _open(REAL_LORA)
    # The real file was trained on a transformer with the same configuration.
    path = write_aitk_lora(tmp_path / "aitk_zimage.safetensors", REAL_BASE, step=20, epoch=4)
    meta, tensors = _open(path)
    assert tensors == real_tensors
    assert meta.keys() == real_meta.keys()
    for key in ("format", "version", "ss_base_model_version", "name", "ss_output_name"):
        assert meta[key] == real_meta[key], key
    assert json.loads(meta["training_info"]) == json.loads(real_meta["training_info"])
    assert json.loads(meta["software"]) == json.loads(real_meta["software"])
    assert meta["sshs_legacy_hash"] == real_meta["sshs_legacy_hash"]
    assert not any("alpha" in key for key in tensors)


def test_model_hash_is_sha256_of_tensor_data(tmp_path: Path) -> None:
    real_meta, _ = _open(REAL_LORA)
    assert hashlib.sha256(_data_section(REAL_LORA)).hexdigest() == real_meta["sshs_model_hash"]
    path = write_aitk_lora(tmp_path / "x.safetensors", BASE, seed=3)
    meta, _ = _open(path)
    assert hashlib.sha256(_data_section(path)).hexdigest() == meta["sshs_model_hash"]


def test_metadata_values_follow_arguments(tmp_path: Path) -> None:
    path = write_aitk_lora(
        tmp_path / "my_job_000000250.safetensors",
        BASE,
        step=250,
        epoch=12,
        aitk_version="0.10.24",
        tag_frequency={"1_sks": {"sks": 3}},
    )
    meta, _ = _open(path)
    assert meta["name"] == meta["ss_output_name"] == "my_job"
    assert json.loads(meta["training_info"]) == {"step": 250, "epoch": 12}
    assert json.loads(meta["software"]) == {
        "name": "ai-toolkit",
        "repo": "https://github.com/ostris/ai-toolkit",
        "version": "0.10.24",
    }
    assert json.loads(meta["ss_tag_frequency"]) == {"1_sks": {"sks": 3}}
    named = write_aitk_lora(tmp_path / "b.safetensors", BASE, name="other")
    assert _open(named)[0]["name"] == "other"


def test_deterministic_and_seeded(tmp_path: Path) -> None:
    a = write_aitk_lora(tmp_path / "a.safetensors", BASE, seed=1).read_bytes()
    b = write_aitk_lora(tmp_path / "a.safetensors", BASE, seed=1).read_bytes()
    c = write_aitk_lora(tmp_path / "c.safetensors", BASE, seed=2)
    assert a == b
    assert _data_section(c) != _data_section(tmp_path / "a.safetensors")


def test_config_module_and_path_give_the_same_file(pipe, tmp_path: Path) -> None:
    transformer = pipe.transformer
    config = json.loads((BASE / "transformer" / "config.json").read_text())
    files = [
        write_aitk_lora(tmp_path / f"{i}" / "l.safetensors", source).read_bytes()
        for i, source in enumerate([BASE, BASE / "transformer", config, transformer])
    ]
    assert all(f == files[0] for f in files)


def test_dtype_targets_zero_b_and_prefix(tmp_path: Path) -> None:
    import torch
    from safetensors.torch import load_file

    half = load_file(write_aitk_lora(tmp_path / "h.safetensors", BASE, dtype=torch.float16))
    assert {t.dtype for t in half.values()} == {torch.float16}

    some = load_file(
        write_aitk_lora(tmp_path / "t.safetensors", BASE, targets=["attention.to_q"], rank=2)
    )
    assert sorted(some) == [
        f"diffusion_model.layers.{i}.attention.to_q.lora_{m}.weight" for i in range(2) for m in "AB"
    ]
    assert some["diffusion_model.layers.0.attention.to_q.lora_A.weight"].shape == (2, 32)

    zero = load_file(write_aitk_lora(tmp_path / "z.safetensors", BASE, zero_b=True))
    assert all((t == 0).all() for k, t in zero.items() if ".lora_B." in k)
    assert any((t != 0).any() for k, t in zero.items() if ".lora_A." in k)

    bare = load_file(write_aitk_lora(tmp_path / "p.safetensors", BASE, key_prefix=""))
    assert all(k.startswith("layers.") for k in bare)
    assert len(bare) == 2 * 2 * len(BLOCK_TARGETS)

    with pytest.raises(ValueError, match="no LoRA target"):
        write_aitk_lora(tmp_path / "n.safetensors", BASE, targets=["proj_out"])


def test_foreign_lora_matches_no_zimage_module(pipe, tmp_path: Path) -> None:
    from safetensors.torch import load_file

    path = write_foreign_lora(tmp_path / "flux.safetensors")
    modules = {name for name, _ in pipe.transformer.named_modules()}
    keys = load_file(path).keys()
    assert keys
    for key in keys:
        module = key.removeprefix("transformer.").rsplit(".lora_", 1)[0]
        assert module not in modules


# --- through the diffusers pipeline ---------------------------------------------------------


def _render(pipe) -> np.ndarray:
    import torch

    out = pipe(
        "a red cube on a table",
        width=64,
        height=64,
        num_inference_steps=6,
        guidance_scale=4.0,
        generator=torch.Generator("cpu").manual_seed(0),
        output_type="np",
    ).images[0]
    return np.asarray(out, dtype=np.float64) * 255.0


def _diff(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b).mean())


def test_lora_loads_and_changes_the_image_by_scale(pipe, tmp_path: Path) -> None:
    from diffusers.utils.peft_utils import set_weights_and_activate_adapters

    plain = _render(pipe)
    write_aitk_lora(tmp_path / "job_000000020.safetensors", pipe.transformer)
    write_aitk_lora(tmp_path / "zero.safetensors", pipe.transformer, zero_b=True)
    pipe.load_lora_weights(tmp_path, weight_name="job_000000020.safetensors", adapter_name="lora")
    pipe.load_lora_weights(tmp_path, weight_name="zero.safetensors", adapter_name="zero")
    try:
        renders = {}
        for scale in (1.0, 0.5, 0.0):
            set_weights_and_activate_adapters(pipe.transformer, ["lora"], [scale])
            renders[scale] = _render(pipe)
        set_weights_and_activate_adapters(pipe.transformer, ["zero"], [1.0])
        zero_b = _render(pipe)
    finally:
        pipe.delete_adapters(["lora", "zero"])
    assert np.isfinite(renders[1.0]).all()
    assert _diff(renders[1.0], plain) > 8.0
    assert _diff(renders[0.5], plain) > 4.0
    assert _diff(renders[1.0], renders[0.5]) > 4.0
    assert _diff(renders[0.0], plain) < 0.5
    assert _diff(zero_b, plain) < 0.5
    assert _diff(_render(pipe), plain) < 0.5  # adapters removed


def test_foreign_lora_is_not_applied(pipe, tmp_path: Path) -> None:
    plain = _render(pipe)
    write_foreign_lora(tmp_path / "flux.safetensors")
    try:
        pipe.load_lora_weights(tmp_path, weight_name="flux.safetensors", adapter_name="foreign")
    except ValueError:
        pass  # diffusers 0.42 refuses a LoRA that targets no module
    else:
        pipe.delete_adapters(["foreign"])
    assert _diff(_render(pipe), plain) < 0.5
