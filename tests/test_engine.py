"""The render engine on the tiny models: exact against diffusers, both LoRA kinds, errors."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest
import torch

from parity.errors import LoraError, RenderError
from parity.job import read_job
from parity.job.lora_files import read_lora
from parity.plan.sides import preview_settings, reference_settings
from parity.render.engine import RenderEngine
from parity.server import validate_request
from parity.settings import LoraSettings, RenderSettings
from parity.testing.jobs import TINY_BASE, shared_engine, write_job
from parity.testing.lora import write_aitk_lora, write_foreign_lora


@pytest.fixture(scope="module")
def engine() -> RenderEngine:
    return shared_engine(TINY_BASE)


@pytest.fixture(scope="module")
def loras(tmp_path_factory) -> dict[str, str]:
    d = tmp_path_factory.mktemp("loras")
    return {
        "a": str(write_aitk_lora(d / "a.safetensors", TINY_BASE, seed=1, step=10)),
        "b": str(write_aitk_lora(d / "b.safetensors", TINY_BASE, seed=2, step=20, rank=8)),
        "noprefix": str(
            write_aitk_lora(d / "noprefix.safetensors", TINY_BASE, seed=1, key_prefix="")
        ),
        "foreign": str(write_foreign_lora(d / "foreign.safetensors")),
    }


def base_settings(**changes) -> RenderSettings:
    s = RenderSettings(
        prompt="a red cube on a table",
        negative_prompt="blurry",
        width=64,
        height=64,
        pipeline_guidance=2.0,
        steps=4,
        seed=11,
        family="zimage",
    )
    return s.replace(**changes)


def pixels(image) -> np.ndarray:
    return np.asarray(image.convert("RGB")).astype(np.int16)


def test_reference_render_equals_direct_diffusers_call(engine, loras):
    """The server path: strings to ZImagePipeline, shift-3 scheduler, CPU generator, adapter."""
    from diffusers import FlowMatchEulerDiscreteScheduler, ZImagePipeline
    from diffusers.utils.peft_utils import set_weights_and_activate_adapters

    settings = base_settings(lora=LoraSettings(path=loras["a"], scale=0.7))
    ours = engine.render(settings).image

    pipe = ZImagePipeline.from_pretrained(str(TINY_BASE), dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    pipe.scheduler = FlowMatchEulerDiscreteScheduler(
        num_train_timesteps=1000, use_dynamic_shifting=False, shift=3.0
    )
    path = loras["a"]
    pipe.load_lora_weights(
        path.rsplit("/", 1)[0], weight_name=path.rsplit("/", 1)[1], adapter_name="lora"
    )
    set_weights_and_activate_adapters(pipe.transformer, ["lora"], [0.7])
    direct = pipe(
        prompt="a red cube on a table",
        negative_prompt="blurry",
        width=64,
        height=64,
        num_inference_steps=4,
        guidance_scale=2.0,
        generator=torch.Generator("cpu").manual_seed(11),
    ).images[0]
    assert np.array_equal(pixels(ours), pixels(direct))


def test_same_settings_same_pixels_and_cache_reuse(engine):
    s = base_settings(prompt="a cache test prompt")
    first = pixels(engine.render(s).image)
    cached = len(engine._embeddings)
    second = pixels(engine.render(s).image)
    assert np.array_equal(first, second)
    assert len(engine._embeddings) == cached  # the prompt was not encoded again


def test_lora_switching_between_checkpoints_is_exact(engine, loras):
    a = base_settings(lora=LoraSettings(path=loras["a"], scale=1.0))
    b = base_settings(lora=LoraSettings(path=loras["b"], scale=1.0))
    first = pixels(engine.render(a).image)
    other = pixels(engine.render(b).image)
    none = pixels(engine.render(base_settings()).image)
    again = pixels(engine.render(a).image)
    assert np.array_equal(first, again)
    assert not np.array_equal(first, other)
    assert not np.array_equal(first, none)


def test_lora_scale_zero_is_the_base_model(engine, loras):
    base = pixels(engine.render(base_settings()).image)
    zero = pixels(engine.render(base_settings(lora=LoraSettings(path=loras["a"], scale=0.0))).image)
    assert np.array_equal(base, zero)


def test_aitk_unmerged_equals_peft_and_merged_is_within_tolerance(engine, loras):
    """ai-toolkit's network beside the weights computes what PEFT computes; merged rounds."""
    peft = pixels(engine.render(base_settings(lora=LoraSettings(loras["a"], 0.5))).image)
    beside = pixels(
        engine.render(base_settings(lora=LoraSettings(loras["a"], 0.5, applier="aitk"))).image
    )
    merged = pixels(
        engine.render(
            base_settings(lora=LoraSettings(loras["a"], 0.5, merged=True, applier="aitk"))
        ).image
    )
    assert np.abs(peft - beside).max() <= 1
    # Merging rounds W + m*BA once instead of adding the LoRA output per call: the
    # float32 difference reaches at most one 8-bit level on these renders.
    assert np.abs(peft - merged).max() <= 2
    # Merging is undone after the render: the base model is untouched.
    assert np.array_equal(
        pixels(engine.render(base_settings()).image),
        pixels(engine.render(base_settings(lora=LoraSettings(loras["a"], 0.0))).image),
    )


def test_unrecognised_keys_are_reported_as_not_applied(engine, loras):
    out = engine.render(base_settings(lora=LoraSettings(loras["noprefix"], 1.0)))
    assert out.lora_not_applied
    assert out.lora_modules_in_file == 16 and out.lora_modules_applied == 0
    # ai-toolkit's own network matches the module names and applies it.
    aitk = engine.render(base_settings(lora=LoraSettings(loras["noprefix"], 1.0, applier="aitk")))
    assert not aitk.lora_not_applied and aitk.lora_modules_applied == 16
    assert not np.array_equal(pixels(out.image), pixels(aitk.image))

    foreign = engine.render(base_settings(lora=LoraSettings(loras["foreign"], 1.0)))
    assert foreign.lora_not_applied
    assert np.array_equal(pixels(foreign.image), pixels(engine.render(base_settings()).image))


def test_pickled_and_broken_lora_files_are_refused(tmp_path, loras):
    marker = tmp_path / "executed"

    class Boom:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    pt = tmp_path / "lora.pt"
    pt.write_bytes(pickle.dumps(Boom()))
    with pytest.raises(LoraError, match="pickled"):
        read_lora(pt)
    disguised = tmp_path / "disguised.safetensors"
    disguised.write_bytes(pickle.dumps(Boom()))
    with pytest.raises(LoraError, match="disguised.safetensors"):
        read_lora(disguised)
    assert not marker.exists()

    empty = tmp_path / "empty.safetensors"
    empty.write_bytes(b"")
    with pytest.raises(LoraError, match="empty"):
        read_lora(empty)
    data = open(loras["a"], "rb").read()
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(LoraError, match="truncated"):
        read_lora(truncated)


def test_nan_render_is_an_error(engine, tmp_path):
    huge = write_aitk_lora(tmp_path / "huge.safetensors", TINY_BASE, scale_b=1e30)
    with pytest.raises(RenderError, match="NaN"):
        engine.render(base_settings(lora=LoraSettings(str(huge), 1.0)))
    # The engine stays usable afterwards.
    assert engine.render(base_settings()).image.size == (64, 64)


@pytest.fixture(scope="module")
def cfg4_job(tmp_path_factory):
    sample = {
        "width": 64,
        "height": 64,
        "seed": 5,
        "guidance_scale": 4,
        "sample_steps": 4,
        "neg": "",
        "samples": [
            {"prompt": "[trigger] a blue sphere"},
            {"prompt": "[trigger] a tall tower", "width": 80, "height": 112},
        ],
    }
    return write_job(tmp_path_factory.mktemp("jobs"), name="cfg4", sample=sample, render=False)


def test_preview_of_cfg4_equals_reference_with_guidance_3(engine, cfg4_job):
    """Independent route to ai-toolkit's cfg rule: the server given 3.0 draws the same image."""
    job = read_job(cfg4_job)
    checkpoint = job.checkpoints[-1]
    preview = preview_settings(job, job.samples[0], checkpoint)
    assert preview.lora.merged  # every item shares multiplier 1: ai-toolkit merges
    request = validate_request(
        {
            "model": "zimage",
            "trigger_word": "sks",
            "loras": [{"path": str(checkpoint.path), "network_multiplier": 1.0}],
            "prompts": [
                {
                    "prompt": "[trigger] a blue sphere",
                    "width": 64,
                    "height": 64,
                    "seed": 5,
                    "sample_steps": 4,
                    "guidance_scale": 3.0,
                    "neg": "",
                }
            ],
        }
    )
    reference, _ = reference_settings(request, 0, lora_paths=[str(checkpoint.path)])
    a = pixels(engine.render(preview).image)
    b = pixels(engine.render(reference).image)
    assert np.abs(a - b).max() <= 2  # merged (preview) vs unfused adapter (server)


def test_80x112_is_80x112_on_the_preview_side_and_64x96_on_the_server(engine, cfg4_job):
    from parity.plan.sides import as_configured_request

    job = read_job(cfg4_job)
    checkpoint = job.checkpoints[-1]
    preview = preview_settings(job, job.samples[1], checkpoint)
    request = as_configured_request(job, checkpoint)
    reference, _ = reference_settings(request, 1, lora_paths=[str(checkpoint.path)])
    assert engine.render(preview).image.size == (80, 112)
    assert engine.render(reference).image.size == (64, 96)


def test_settings_round_trip_through_json():
    s = base_settings(
        lora=LoraSettings("/x.safetensors", 0.5, True, "aitk"), sigmas=(1.0, 0.5, 0.0)
    )
    assert RenderSettings.from_dict(json.loads(json.dumps(s.to_dict()))) == s


def test_safetensors_whose_header_length_starts_like_a_pickle_loads(tmp_path, loras):
    """A valid file is parsed, not judged by its first byte.

    The first 8 bytes of a safetensors file are its little-endian JSON header length;
    when that length is 0x80 past a multiple of 256 the file starts with byte 0x80, the
    pickle protocol marker. Real bf16 checkpoints with ai-toolkit's metadata hit this.
    """
    from safetensors.torch import load_file, save_file

    state = load_file(loras["a"])
    for pad in range(600):
        path = tmp_path / "header80.safetensors"
        save_file(state, str(path), metadata={"format": "pt", "padding": "x" * pad})
        head = path.read_bytes()[:8]
        if int.from_bytes(head, "little") % 256 == 0x80:
            break
    else:  # pragma: no cover - the padding covers every residue
        pytest.fail("no padding gave a header length of 0x80 mod 256")
    assert head[:1] == b"\x80"
    loaded = read_lora(path)
    assert loaded.keys() == state.keys()
    assert all(torch.equal(loaded[k], state[k]) for k in state)
