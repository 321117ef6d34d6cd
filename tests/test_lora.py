"""LoRA files (parity.render.lora): what the server's loader takes, the update arithmetic, rounding.

The references are the libraries themselves: diffusers 0.42.1's Z-Image loader (what the
server runs) for which keys load and how alpha scales a LoRA; torch for kron and matmul.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from parity.job.lora_files import LoraFormat, audit_keys, read_header, read_lora
from parity.render.lora import module_deltas, perturb_within_rounding
from parity.testing.jobs import TINY_BASE
from parity.testing.lora import write_aitk_lora

PEFT = [
    "diffusion_model.layers.0.attention.to_q.lora_A.weight",
    "diffusion_model.layers.0.attention.to_q.lora_B.weight",
]


def test_audit_of_ai_toolkit_keys() -> None:
    audit = audit_keys(PEFT)
    assert audit.formats == (LoraFormat.LORA,) and audit.modules == ("layers.0.attention.to_q",)
    assert audit.taken == 2 and audit.loadable and not audit.dropped and audit.alpha is None


def test_audit_names_what_the_server_drops_and_refuses() -> None:
    dora = audit_keys([*PEFT, "diffusion_model.layers.0.attention.to_q.dora_scale"])
    assert dora.loadable and list(dora.dropped.values()) == [1]
    assert "DoRA" in next(iter(dora.dropped))
    te = audit_keys([*PEFT, "text_encoder.layers.0.q_proj.lora_A.weight"])
    assert te.loadable and "text-encoder" in next(iter(te.dropped))
    loha = audit_keys(["diffusion_model.layers.0.attention.to_q.hada_w1_a"])
    assert not loha.loadable and "hada_w1_a" in loha.refused
    kohya_te = audit_keys([*PEFT, "lora_te_layers_0_q_proj.lora_down.weight"])
    assert not kohya_te.loadable


def _load_into_server(path: Path) -> tuple[str | None, int]:
    """What the server's diffusers does with a file: (error, adapted modules)."""
    from diffusers import ZImagePipeline
    from peft.tuners.tuners_utils import BaseTunerLayer

    pipe = ZImagePipeline.from_pretrained(str(TINY_BASE))
    try:
        pipe.load_lora_weights(str(path.parent), weight_name=path.name, adapter_name="x")
    except ValueError as e:
        return str(e), 0
    return None, sum(isinstance(m, BaseTunerLayer) for m in pipe.transformer.modules())


@pytest.mark.parametrize(
    "extra,loadable",
    [
        ({}, True),
        ({"diffusion_model.layers.0.attention.to_q.dora_scale": torch.ones(1, 32)}, True),
        ({"diffusion_model.layers.0.attention.to_q.hada_w1_a": torch.zeros(4, 32)}, False),
    ],
    ids=["ai-toolkit", "dora", "loha"],
)
def test_audit_agrees_with_the_server_loader(tmp_path: Path, extra, loadable) -> None:
    path = write_aitk_lora(tmp_path / "l.safetensors", TINY_BASE, extra_keys=extra)
    audit = audit_keys(read_header(path).tensors)
    error, adapted = _load_into_server(path)
    assert audit.loadable is loadable is (error is None)
    if loadable:
        assert adapted == len(audit.modules) == 16


def test_alpha_scales_a_lora_as_the_server_does(tmp_path: Path) -> None:
    """kohya-style alpha keys: diffusers bakes alpha / rank into the update; so does parity."""
    from diffusers import ZImagePipeline

    path = write_aitk_lora(tmp_path / "a.safetensors", TINY_BASE, rank=8, seed=3)
    state = dict(read_lora(path))
    for key in list(state):
        if key.endswith(".lora_A.weight"):
            state[key.replace(".lora_A.weight", ".alpha")] = torch.tensor(4.0)
    from safetensors.torch import save_file

    save_file(state, str(tmp_path / "alpha.safetensors"))
    ours = module_deltas(read_lora(tmp_path / "alpha.safetensors"))
    theirs = ZImagePipeline.lora_state_dict(str(tmp_path / "alpha.safetensors"))
    module = "layers.0.attention.to_q"
    a = theirs[f"transformer.{module}.lora_A.weight"].float()
    b = theirs[f"transformer.{module}.lora_B.weight"].float()
    assert ours[module].scale == 0.5
    assert torch.allclose(ours[module].weight(1.0), b @ a, rtol=1e-6, atol=1e-7)


def test_lokr_update_is_kron_and_equals_the_servers_adapter(tmp_path: Path) -> None:
    from diffusers import ZImagePipeline

    path = write_aitk_lora(tmp_path / "k.safetensors", TINY_BASE, kind="lokr", scale_b=0.4)
    deltas = module_deltas(read_lora(path))
    assert len(deltas) == 16 and {d.format for d in deltas.values()} == {LoraFormat.LOKR}
    module = "layers.0.adaLN_modulation.0"  # 32 in, 128 out: factors 4x8 in, 8x16 out
    d = deltas[module]
    assert (tuple(d.first.shape), tuple(d.second.shape)) == ((8, 4), (16, 8)) and d.scale == 1.0
    assert torch.equal(d.weight(1.0), torch.kron(d.first, d.second))
    pipe = ZImagePipeline.from_pretrained(str(TINY_BASE))
    pipe.load_lora_weights(str(tmp_path), weight_name="k.safetensors", adapter_name="lokr")
    layer = pipe.transformer.get_submodule(module)
    assert torch.equal(layer.get_delta_weight("lokr"), d.weight(1.0))
    # ai-toolkit's unmerged arithmetic (in the output's dtype) equals the dense update.
    x = torch.randn(3, 32)
    dense = torch.nn.functional.linear(x, d.weight(1.0))
    assert torch.allclose(d.output(x, torch.tensor([1.0]), torch.float32), dense, atol=1e-5)


def test_perturbation_stays_within_the_rounding(tmp_path: Path) -> None:
    path = write_aitk_lora(tmp_path / "b.safetensors", TINY_BASE, dtype=torch.bfloat16)
    state = read_lora(path)
    moved = perturb_within_rounding(state, seed=1)
    again = perturb_within_rounding(state, seed=1)
    for key, tensor in state.items():
        assert moved[key].dtype == torch.float32
        assert torch.equal(moved[key], again[key])  # deterministic
        assert torch.equal(moved[key].to(torch.bfloat16), tensor)  # rounds back to the file
        assert not torch.equal(moved[key], tensor.float())  # and is really moved
    fp32 = read_lora(write_aitk_lora(tmp_path / "f.safetensors", TINY_BASE))
    assert all(torch.equal(perturb_within_rounding(fp32, seed=2)[k], v) for k, v in fp32.items())


def test_text_encoder_cast_rounds_the_rotary_buffers() -> None:
    """ai-toolkit's text_encoder.to(dtype=bf16) rounds inv_freq; loading in bf16 alone
    (the server's way) keeps it in fp32."""
    from parity.render.engine import RenderEngine

    engine = RenderEngine(TINY_BASE, device="cpu")
    plain = engine.variant("bfloat16").pipe.text_encoder
    cast = engine.variant("bfloat16", text_encoder_cast=True).pipe.text_encoder

    def inv_freq(te):
        return next(b for name, b in te.named_buffers() if name.endswith("inv_freq"))

    assert inv_freq(plain).dtype == torch.float32
    assert inv_freq(cast).dtype == torch.bfloat16
    assert torch.equal(inv_freq(cast), inv_freq(plain).to(torch.bfloat16))


def test_training_adapter_is_merged_then_run_at_minus_one(tmp_path: Path) -> None:
    """Without quantization in between, merging A at +1 (one bf16 rounding) and running it
    at -1 (in bf16) leaves a layer's output close to, but not exactly, W's."""
    from parity.render.engine import RenderEngine
    from parity.settings import TrainingAdapter

    adapter = write_aitk_lora(tmp_path / "ad.safetensors", TINY_BASE, seed=4, scale_b=0.5)
    engine = RenderEngine(TINY_BASE, device="cpu")
    base = engine.variant("bfloat16").pipe.transformer.layers[0].attention.to_q
    adapted_variant = engine.variant("bfloat16", adapter=TrainingAdapter(str(adapter)))
    adapted = adapted_variant.pipe.transformer.layers[0].attention.to_q
    delta = module_deltas(read_lora(adapter))["layers.0.attention.to_q"]
    a, b = delta.first.to(torch.bfloat16), delta.second.to(torch.bfloat16)
    merged = (base.weight.float() + b.float() @ a.float()).to(torch.bfloat16)
    assert torch.equal(adapted.weight, merged)
    x = torch.randn(2, 32).to(torch.bfloat16)
    with torch.no_grad():
        expected = torch.nn.functional.linear(x, merged, adapted.bias)
        expected = expected + (torch.nn.functional.linear(torch.nn.functional.linear(x, a), b) * -1)
        assert torch.equal(adapted(x), expected)
        assert not torch.equal(adapted(x), base(x))
        assert (adapted(x).float() - base(x).float()).abs().max() < 0.05
