"""Quantized previews on CPU: qtype handling, excluded modules, LoRA order, determinism."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from helpers import render_pipeline
from skimage.metrics import structural_similarity

from parity.aitk import check_qtype, parse_qtype
from parity.errors import QuantizationUnavailableError, UnknownQtypeError
from parity.render.models import ModelSource, load_pipeline
from parity.render.quantize import is_quantized, quantize_text_encoder, quantize_transformer
from parity.zimage.aitk import preview_qtypes
from parity.zimage.family import ZIMAGE

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "aitk_real"
TINY = FIXTURES / "tiny_zimage"
LORA_DIR = FIXTURES / "output" / "aitk_zimage"
LORA_FILE = "aitk_zimage.safetensors"  # step 20, non-zero B matrices


def _pipe():
    return load_pipeline(ModelSource(str(TINY), str(TINY), str(TINY), "tiny"))


def _render(pipe, seed: int = 11) -> np.ndarray:
    return render_pipeline(pipe, prompt="sks, a portrait", seed=seed)


def _ssim(a: np.ndarray, b: np.ndarray) -> float:
    return float(structural_similarity(a, b, channel_axis=2, data_range=255))


@pytest.fixture(scope="module")
def fp32_render() -> np.ndarray:
    return _render(_pipe())


# --- qtype names ----------------------------------------------------------------------


def test_parse_qtype():
    assert parse_qtype("qfloat8") == ("qfloat8", None)
    assert parse_qtype("uint3|ostris/ara/z.safetensors") == ("uint3", "ostris/ara/z.safetensors")
    for bad in ("", "|x", "uint3|"):
        with pytest.raises(UnknownQtypeError):
            parse_qtype(bad)


def test_check_qtype():
    assert check_qtype("qfloat8") == "qfloat8"
    assert check_qtype("qint4") == "qint4"
    # torchao's weight-only types, which ai-toolkit uses with a training adapter
    assert check_qtype("float8") == "float8" and check_qtype("int8") == "int8"
    for unavailable in ("uint4", "orbit3", "qfloat8|org/repo/ara.safetensors"):
        with pytest.raises(QuantizationUnavailableError):
            check_qtype(unavailable)
    with pytest.raises(UnknownQtypeError, match="qfloat9"):
        check_qtype("qfloat9")


def test_preview_qtypes_follow_ai_toolkit_defaults():
    assert preview_qtypes({}) == (None, None)
    assert preview_qtypes({"quantize": True}) == ("qfloat8", "qfloat8")
    assert preview_qtypes({"quantize": True, "quantize_te": False}) == ("qfloat8", None)
    assert preview_qtypes({"quantize": True, "qtype": "qint8", "qtype_te": "qint4"}) == (
        "qint8",
        "qint4",
    )
    # an assistant LoRA makes ai-toolkit quantize the transformer with torchao float8
    assert preview_qtypes({"quantize": True, "assistant_lora_path": "a/b/c.safetensors"}) == (
        "float8",
        "qfloat8",
    )
    assert preview_qtypes({"quantize": True, "layer_offloading": True}) == ("float8", "float8")


# --- quantized renders ----------------------------------------------------------------


def test_unknown_qtype_leaves_the_model_untouched():
    pipe = _pipe()
    with pytest.raises(UnknownQtypeError):
        quantize_transformer(pipe.transformer, "qfloat9")
    with pytest.raises(QuantizationUnavailableError):
        quantize_text_encoder(pipe.text_encoder, "uint4")
    assert not is_quantized(pipe.transformer) and not is_quantized(pipe.text_encoder)


def test_qfloat8_render_is_close_deterministic_and_different(fp32_render):
    import torch
    from optimum.quanto.nn import QModuleMixin

    pipe = _pipe()
    n_transformer = quantize_transformer(pipe.transformer, "qfloat8", ZIMAGE.quantize_exclude)
    n_text = quantize_text_encoder(pipe.text_encoder, "qfloat8")
    assert n_transformer > 0 and n_text > 0
    modules = dict(pipe.transformer.named_modules())
    assert isinstance(modules["layers.0.attention.to_q"], QModuleMixin)
    assert isinstance(modules["layers.0.feed_forward.w1"], QModuleMixin)
    for name, module in modules.items():
        if name.startswith(("t_embedder", "cap_embedder", "all_x_embedder", "all_final_layer")):
            assert not isinstance(module, QModuleMixin), name
    assert any(type(m) is torch.nn.Linear for m in modules.values())
    assert isinstance(pipe.text_encoder.layers[0].mlp.up_proj, QModuleMixin)

    first = _render(pipe)
    np.testing.assert_array_equal(_render(pipe), first)
    assert not np.array_equal(first, fp32_render)
    assert 0.9 < _ssim(first, fp32_render) < 0.9999


def test_lora_attached_then_quantized_keeps_adapter_in_full_precision():
    from diffusers.utils.peft_utils import set_weights_and_activate_adapters
    from optimum.quanto.nn import QModuleMixin

    base = _pipe()
    quantize_transformer(base.transformer, "qfloat8", ZIMAGE.quantize_exclude)
    quantized_base = _render(base)

    pipe = _pipe()
    pipe.load_lora_weights(str(LORA_DIR), weight_name=LORA_FILE, adapter_name="lora")
    with_lora_fp32 = _render(pipe)
    quantize_transformer(pipe.transformer, "qfloat8", ZIMAGE.quantize_exclude)

    to_q = pipe.transformer.layers[0].attention.to_q
    assert isinstance(to_q.base_layer, QModuleMixin)
    assert not isinstance(to_q.lora_A["lora"], QModuleMixin)
    assert not isinstance(to_q.lora_B["lora"], QModuleMixin)
    assert to_q.lora_B["lora"].weight.abs().sum() > 0

    full = _render(pipe)
    assert not np.array_equal(full, quantized_base)  # the LoRA is applied
    assert _ssim(full, with_lora_fp32) > 0.9  # and close to the unquantized LoRA render

    set_weights_and_activate_adapters(pipe.transformer, ["lora"], [0.5])
    half = _render(pipe)
    assert not np.array_equal(half, full)
    set_weights_and_activate_adapters(pipe.transformer, ["lora"], [0.0])
    np.testing.assert_array_equal(_render(pipe), quantized_base)
    set_weights_and_activate_adapters(pipe.transformer, ["lora"], [1.0])
    np.testing.assert_array_equal(_render(pipe), full)


def test_torchao_float8_quantizes_what_ai_toolkit_quantizes(fp32_render):
    """31 linears (the embedders and final layer stay), weight-only: each quantized
    linear computes F.linear with its dequantized weight, in the input's dtype."""
    import torch

    pipe = _pipe()
    assert quantize_transformer(pipe.transformer, "float8", ZIMAGE.quantize_exclude) == 31
    kept = [
        name
        for name, m in pipe.transformer.named_modules()
        if isinstance(m, torch.nn.Linear) and "torchao" not in type(m.weight).__module__
    ]
    assert kept and all(
        name.startswith(("t_embedder", "cap_embedder", "all_x_embedder", "all_final_layer"))
        for name in kept
    )
    linear = pipe.transformer.layers[0].attention.to_q
    assert linear.weight.dequantize().dtype == torch.float32
    x = torch.randn(2, linear.in_features)
    expected = torch.nn.functional.linear(x, linear.weight.dequantize(), linear.bias)
    assert torch.equal(linear(x), expected)
    first = _render(pipe)
    np.testing.assert_array_equal(_render(pipe), first)
    assert not np.array_equal(first, fp32_render)
