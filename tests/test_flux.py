"""The FLUX.1 family end to end, on the real ai-toolkit FLUX.1 jobs and real server renders.

Ground truth that parity did not produce (``fixtures/aitk_flux``, ``fixtures/aitk_flux_ui``;
their READMEs say how each file was made):

- previews rendered by ai-toolkit's own trainer, with the call log of every
  ``FluxPipeline`` call it made (``calls.jsonl``: the size, steps, guidance, seed and
  scheduler the pipeline received);
- the same prompts rendered by the reference server's own route and executor
  (``server/<step>/``: the request sent, the images returned).

The expected causes are derived from the two sides' rules (``docs/families/flux.md``)
applied to each config by hand, never from parity's output.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from helpers import corrected_index

from parity.cli import main
from parity.compare import Thresholds, compare, inspect_codec, load_rgb
from parity.errors import ModelError
from parity.families import family_of_model
from parity.job import read_job
from parity.plan.sides import as_configured_request, pair_for
from parity.testing.jobs import AITK_FLUX_BASE as FLUX_BASE
from parity.testing.jobs import AITK_FLUX_JOB as FLUX_JOB
from parity.testing.jobs import AITK_FLUX_UI_JOB as UI_JOB
from parity.testing.jobs import FIXTURES

FLUX = FIXTURES / "aitk_flux"
UI = FIXTURES / "aitk_flux_ui"
FLUX_DEV = "black-forest-labs/FLUX.1-dev"

# The fp32 job's config against the request a user writes from it (every size, seed,
# steps and guidance written; one LoRA at the sample-level multiplier 1): only item 2,
# at network_multiplier 0.5, differs, and only where a LoRA exists (step 0 is before
# training). Item 4's --n blurry reaches the server as neg, which FluxPipeline ignores
# (no true CFG), as ai-toolkit passes no negative at all: not a difference.
FLUX_CAUSES = {(step, i): [] for step in (0, 10, 20) for i in range(5)}
FLUX_CAUSES[(10, 2)] = FLUX_CAUSES[(20, 2)] = ["lora_scale"]
# The UI preset: bf16 with a qfloat8 transformer and T5 against the server's fp32 on CPU;
# everything a request can set is written and equal.
UI_CAUSES = {(step, i): ["precision"] for step in (0, 10, 20) for i in range(3)}


def _calls(path: Path) -> dict[str, dict]:
    """ai-toolkit's FluxPipeline calls by preview file name."""
    calls = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    return {Path(c["preview"]).name: c for c in calls}


def _preview_name(job: Path, step: int, index: int) -> str:
    (path,) = (job / "samples").glob(f"*__{step:09d}_{index}.jpg")
    return path.stem


def _rows(results: Path) -> dict[tuple[int, int], dict]:
    rows = json.loads(results.read_text(encoding="utf-8"))
    return {(r["step"], r["index"]): r for r in rows}


# ------------------------------------------------------------------------- the job


def test_the_family_comes_from_the_config():
    job = read_job(FLUX_JOB)
    assert (job.family, job.arch, job.reference_model) == ("flux", "flux", "flux")
    # One item has its own multiplier: ai-toolkit ran the LoRA beside the weights.
    assert job.merged_lora is False
    assert not job.quantization.active
    ui = read_job(UI_JOB)
    assert (ui.family, ui.reference_model, ui.train_dtype) == ("flux", "flux", "bf16")
    # quantize_te quantizes T5 with the transformer's qtype.
    assert (ui.quantization.qtype, ui.quantization.qtype_te) == ("qfloat8", "qfloat8")
    assert ui.merged_lora is False  # quantized: ai-toolkit never merges


def test_legacy_is_flux_flag_and_unreproduced_options(tmp_path: Path):
    config = (FLUX_JOB / "config.yaml").read_text(encoding="utf-8")
    legacy = tmp_path / "legacy"
    legacy.mkdir()
    (legacy / "config.yaml").write_text(config.replace("arch: flux", "is_flux: true"))
    assert read_job(legacy).family == "flux"
    cfg = tmp_path / "cfg"
    cfg.mkdir()
    (cfg / "config.yaml").write_text(
        config.replace("arch: flux", "arch: flux\n      use_flux_cfg: true")
    )
    assert main(["inspect", str(cfg)]) == 2


def test_preview_settings_are_what_ai_toolkit_gave_flux_pipeline():
    """Each preview's settings against the call log of the pipeline call that made it."""
    job = read_job(FLUX_JOB)
    calls = _calls(FLUX / "calls.jsonl")
    assert len(calls) == len(job.previews) == 15
    for preview in job.previews:
        call = calls[preview.path.name]
        checkpoint = job.checkpoint_for_step(preview.step)
        request = as_configured_request(job, checkpoint)
        pair = pair_for(job, job.samples[preview.index], checkpoint, request=request,
                        request_index=preview.index)  # fmt: skip
        p = pair.preview
        # FluxPipeline floors what it receives to 16; the image has that size.
        assert [p.width, p.height] == call["image"]["size"], preview.path.name
        assert (p.steps, p.seed) == (call["num_inference_steps"], call["generator"]["initial_seed"])
        assert p.pipeline_guidance == call["guidance_scale"]  # unchanged: no g - 1
        assert call["negative_prompt_embeds"] is None and call["negative_prompt"] is None
        scheduler = call["scheduler"]["config"]
        assert scheduler["use_dynamic_shifting"] is True and p.dynamic_shift is not None
        assert p.dynamic_shift.base_shift == scheduler["base_shift"]
        assert p.dynamic_shift.max_shift == scheduler["max_shift"]
        assert p.dynamic_shift.base_image_seq_len == scheduler["base_image_seq_len"]
        assert p.dynamic_shift.max_image_seq_len == scheduler["max_image_seq_len"]
        networks = call["lora"]["networks"]
        if checkpoint is not None:
            assert p.lora is not None and p.lora.scale == networks[0]["multiplier"]
            assert p.lora.merged is networks[0]["is_merged_in"] is False
        assert list(pair.differences) == FLUX_CAUSES[(preview.step, preview.index)]


# ------------------------------------------------------------------ previews, server


def test_preview_reproduces_every_stored_preview(tmp_path: Path, float_noise):
    out = tmp_path / "previews"
    args = ["preview", str(FLUX_JOB), "--base-model", str(FLUX_BASE), "--device", "cpu"]
    assert main([*args, "--out", str(out)]) == 0
    effective = json.loads((out / "effective.json").read_text(encoding="utf-8"))
    assert len(effective) == 15
    for entry in effective:
        assert entry["settings"]["family"] == "flux"
        name = _preview_name(FLUX_JOB, entry["step"], entry["index"])
        render = load_rgb(out / entry["image"])
        jpeg = FLUX_JOB / "samples" / f"{name}.jpg"
        lossless = load_rgb(FLUX / "lossless_previews" / f"{name}.png")
        float_noise.check(f"{name} before JPEG", lossless, render)
        float_noise.check(name, load_rgb(jpeg), render, codec=inspect_codec(jpeg))


def test_ui_preset_previews_within_bf16_float_noise(tmp_path: Path, float_noise):
    """bf16, qfloat8 transformer (every Linear) and qfloat8 T5, LoRA beside the weights:
    with the fp32 training weights, each preview within its own measured noise floor."""
    job = Path(shutil.copytree(UI_JOB, tmp_path / UI_JOB.name))
    for weights in (UI / "fp32_weights").iterdir():
        shutil.copyfile(weights, job / weights.name)
    out = tmp_path / "previews"
    assert main(["preview", str(job), "--base-model", str(FLUX_BASE), "--out", str(out)]) == 0
    effective = json.loads((out / "effective.json").read_text(encoding="utf-8"))
    assert len(effective) == 9
    for entry in effective:
        settings = entry["settings"]
        assert settings["dtype"] == "bfloat16" and settings["text_encoder_cast"] is True
        assert settings["quantization"] == {"qtype": "qfloat8", "qtype_te": "qfloat8"}
        name = _preview_name(job, entry["step"], entry["index"])
        render = load_rgb(out / entry["image"])
        floor = float_noise.floor(settings, render, base_model=FLUX_BASE)
        lossless = load_rgb(UI / "lossless_previews" / f"{name}.png")
        float_noise.check(f"{name} before JPEG", lossless, render, dtype="bfloat16", floor=floor)


@pytest.mark.parametrize(("fixture", "step"), [(FLUX, 10), (FLUX, 20), (UI, 20)])
def test_server_renders_are_reproduced(fixture: Path, step: int, tmp_path: Path, float_noise):
    """The server's own code rendered ``server/<step>/request.json``: ``parity render``
    of the same file gives the same images (float32 on CPU, as the server ran)."""
    folder = fixture / "server" / str(step)
    request = json.loads((folder / "request.json").read_text(encoding="utf-8"))
    out = tmp_path / "render"
    args = ["render", str(folder / "request.json"), "--lora-root", str(fixture / "output")]
    assert main([*args, "--base-model", str(FLUX_BASE), "--out", str(out)]) == 0
    effective = json.loads((out / "effective.json").read_text(encoding="utf-8"))
    for i, entry in enumerate(effective):
        # The server floors to 16 (80x104 -> 80x96, 100x90 -> 96x80).
        prompt = request["prompts"][i]
        assert entry["settings"]["width"] == prompt.get("width", 1024) // 16 * 16
        assert entry["settings"]["dynamic_shift"] is not None
        # The warning of a floored size names FLUX.1's own divisor.
        width, height = prompt.get("width", 1024), prompt.get("height", 1024)
        if width % 16 or height % 16:
            floored = f"{width // 16 * 16}x{height // 16 * 16}"
            assert entry["warning"] == f"{width}x{height} floored to {floored} (multiple of 16)"
        else:
            assert "warning" not in entry
        render = load_rgb(out / f"{i}.png")
        float_noise.check(f"server {step}/{i}.png", load_rgb(folder / f"{i}.png"), render)
        jpeg = folder / f"{i}.jpg"
        float_noise.check(
            f"server {step}/{i}.jpg", load_rgb(jpeg), render, codec=inspect_codec(jpeg)
        )


# ------------------------------------------------------------------------ the run


@pytest.fixture(scope="module")
def flux_run(tmp_path_factory) -> tuple[Path, dict, int]:
    """``parity run`` with the FLUX.1-dev hub id mapped to the tiny checkpoint."""
    out = tmp_path_factory.mktemp("flux-run") / "run"
    args = ["run", str(FLUX_JOB), "--model-map", f"{FLUX_DEV}={FLUX_BASE}", "--device", "cpu"]
    code = main([*args, "--out", str(out), "--no-history"])
    return out, _rows(out / "results.json"), code


def test_every_preview_gets_the_causes_the_two_sides_imply(flux_run):
    out, rows, code = flux_run
    assert code == 1
    assert set(rows) == set(FLUX_CAUSES)
    for key, row in rows.items():
        expected = FLUX_CAUSES[key]
        assert row["verdict"] == ("mismatch" if expected else "match"), (key, row["detail"])
        if expected:
            assert row["causes"] == expected and row["explained"] is True, key
            confirmed = [c["cause"] for c in row["counterfactuals"] if c["confirmed"]]
            assert confirmed == expected, key
            assert row["noise_floor"] is None  # fp32: the thresholds decide
    run = json.loads((out / "run.json").read_text(encoding="utf-8"))
    assert run["reference_model"] == "flux"


def test_corrected_requests_reproduce_the_previews_they_place(flux_run, tmp_path: Path):
    """One request per LoRA scale (the server takes one), each rendered as written."""
    out, rows, _ = flux_run
    for step in (10, 20):
        index = corrected_index(out, step)
        assert set(index["placement"]) == {"0", "1", "2", "3", "4"}, index["cannot_reproduce"]
        files = sorted({p["file"] for p in index["placement"].values()})
        requests = {f: json.loads((out / "corrected_requests" / f).read_text()) for f in files}
        assert sorted(r["loras"][0]["network_multiplier"] for r in requests.values()) == [0.5, 1]
        assert {r["model"] for r in requests.values()} == {"flux"}
        rendered = {}
        for n, name in enumerate(files):
            rendered[name] = tmp_path / f"{step}-{n}"
            args = ["render", str(out / "corrected_requests" / name)]
            args += ["--lora-root", str(FLUX_JOB.parent), "--base-model", str(FLUX_BASE)]
            assert main([*args, "--out", str(rendered[name])]) == 0
        for preview_index, place in index["placement"].items():
            preview = out / rows[(step, int(preview_index))]["preview"]
            render = rendered[place["file"]] / f"{place['prompt']}.png"
            result = compare(load_rgb(preview), load_rgb(render), codec=inspect_codec(preview))
            assert Thresholds().is_match(result), (step, preview_index, result)


def test_ui_preset_run_names_precision_and_why_no_request_can_fix_it(tmp_path: Path):
    out = tmp_path / "run"
    args = ["run", str(UI_JOB), "--base-model", str(FLUX_BASE), "--no-history"]
    assert main([*args, "--out", str(out)]) == 1
    rows = _rows(out / "results.json")
    assert set(rows) == set(UI_CAUSES)
    for key, row in rows.items():
        assert row["causes"] == UI_CAUSES[key] and row["explained"] is True, key
        assert row["noise_floor"] is not None and row["noise_floor"]["dtype"] == "bfloat16"
    for step in (0, 10, 20):
        for reasons in corrected_index(out, step)["cannot_reproduce"].values():
            text = " ".join(reasons)
            assert "transformer qfloat8, text encoder qfloat8" in text and "bfloat16" in text


def test_inspect_and_explain(capsys, tmp_path: Path):
    assert main(["inspect", str(FLUX_JOB), "--format", "json"]) == 0
    described = json.loads(capsys.readouterr().out)
    item2 = next(r for r in described if (r["step"], r["index"]) == (20, 2))
    assert item2["reference"]["model"] == "flux" and item2["differences"] == ["lora_scale"]
    assert item2["aitk"]["dynamic_shift"] == item2["reference"]["dynamic_shift"]
    common = ["--base-model", str(FLUX_BASE), "--device", "cpu", "--out", str(tmp_path)]
    assert main(["explain", str(FLUX_JOB), "--step", "20", "--index", "2", *common]) == 1
    out = capsys.readouterr().out
    assert "static differences: lora_scale" in out and "all but lora_scale" in out
    assert "causes: lora_scale; explanation complete" in out
    assert "server: diffusers 0.42.1 (installed): FluxPipeline" in out


def test_the_family_of_a_server_model():
    assert family_of_model("flux").name == "flux"
    assert family_of_model("zimage_turbo").name == "zimage"


def test_quantization_takes_every_linear_of_the_transformer_and_t5():
    """ai-toolkit quantized 36 of the tiny transformer's 36 Linears and every Linear of
    T5 (its README, from the real run); CLIP stays unquantized."""
    import torch

    from parity.flux.family import FLUX as FLUX_FAMILY
    from parity.render.models import ModelSource, load_pipeline
    from parity.render.quantize import is_quantized, quantize_text_encoder, quantize_transformer

    ref = str(FLUX_BASE)
    pipe = load_pipeline(ModelSource(ref, ref, ref, "tiny"), family=FLUX_FAMILY)
    linears = sum(isinstance(m, torch.nn.Linear) for m in pipe.transformer.modules())
    assert linears == 36
    count = quantize_transformer(pipe.transformer, "qfloat8", FLUX_FAMILY.quantize_exclude)
    assert count == linears
    t5 = getattr(pipe, FLUX_FAMILY.quantized_text_encoder)
    t5_linears = sum(isinstance(m, torch.nn.Linear) for m in t5.modules())
    assert quantize_text_encoder(t5, "qfloat8") == t5_linears > 0
    assert not is_quantized(pipe.text_encoder)


@pytest.mark.parametrize(
    ("model", "expected"),
    [
        ({}, (None, None)),
        ({"quantize": True}, ("qfloat8", "qfloat8")),  # quantize_te follows quantize
        ({"quantize": True, "qtype": "qint8", "qtype_te": "qfloat8"}, ("qint8", "qint8")),
        ({"quantize": True, "quantize_te": False}, ("qfloat8", None)),
        ({"quantize": True, "layer_offloading": True}, ("float8", "qfloat8")),
    ],
)
def test_preview_qtypes_follow_ai_toolkits_flux_loader(model, expected):
    """T5 is quantized with the transformer's written qtype (qtype_te is not read)."""
    from parity.flux.aitk import preview_qtypes

    assert preview_qtypes(model) == expected


def test_a_split_checkpoint_loads_the_same_weights(tmp_path: Path):
    """A transformer-only folder plus the components of another, as ai-toolkit loads a
    job whose ``name_or_path`` holds only ``transformer/``."""
    import torch

    from parity.render.models import ModelSource, load_pipeline

    bare = tmp_path / "bare"
    shutil.copytree(FLUX_BASE / "transformer", bare / "transformer")
    ref = str(FLUX_BASE)
    full = load_pipeline(ModelSource(ref, ref, ref, "full"))
    split = load_pipeline(ModelSource(str(bare), ref, ref, "split"))
    assert type(split).__name__ == "FluxPipeline"
    for name, tensor in full.transformer.state_dict().items():
        assert torch.equal(tensor, split.transformer.state_dict()[name]), name


def test_another_familys_checkpoint_is_exit_2_naming_both(capsys):
    from parity.testing.jobs import TINY_BASE

    assert main(["run", str(FLUX_JOB), "--base-model", str(TINY_BASE), "--no-history"]) == 2
    err = capsys.readouterr().err
    assert "(a Z-Image checkpoint)" in err and "'FluxTransformer2DModel' for a FLUX.1 job" in err


def test_every_front_door_opens_the_engine_in_the_jobs_family(tmp_path: Path):
    """A FLUX.1 job whose base model is a hub id no family lists, mapped to a folder: the
    engine is FLUX.1's through the library (the CLI's, the plugin's and a fleet worker's
    way), where the checkpoint's own name would have given Z-Image."""
    from parity.fleet.records import WorkerSpec
    from parity.fleet.worker import FleetWorker
    from parity.model_map import ModelMap
    from parity.render.engine import RenderEngine
    from parity.render.models import ModelSource
    from parity.run.open_job import open_engine, open_job

    job = tmp_path / "finetune"
    shutil.copytree(FLUX_JOB, job)
    config = (job / "config.yaml").read_text(encoding="utf-8")
    (job / "config.yaml").write_text(config.replace(FLUX_DEV, "someone/flux-finetune"))
    opened = open_job(job, ModelMap.load([f"someone/flux-finetune={FLUX_BASE}"]))
    assert opened.job.family == "flux"
    assert open_engine(opened.job, opened.source, device="cpu").family.name == "flux"
    hub = ModelSource("someone/flux-finetune", "someone/flux-finetune", None, "hub")
    with pytest.raises(ModelError, match="no model family parity knows"):
        RenderEngine(hub, device="cpu")  # the checkpoint alone names no family
    assert open_engine(opened.job, hub, device="cpu").family.name == "flux"
    worker = FleetWorker(WorkerSpec("w", "cpu"))
    assert worker.engine(opened.job, hub).family.name == "flux"
