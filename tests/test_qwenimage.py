"""The Qwen-Image family end to end, on real ai-toolkit Qwen-Image jobs and real server
renders.

Ground truth that parity did not produce (``fixtures/aitk_qwen``, ``fixtures/aitk_qwen_ui``;
their READMEs say how each file was made):

- previews rendered by ai-toolkit's own trainer, with the call log of every
  ``QwenImagePipeline`` call it made (``calls.jsonl``: the size, steps, true CFG scale,
  seed, scheduler and tiling the pipeline received);
- the same prompts rendered by the reference server's own route and executor
  (``server/<step>/``: the request sent, the images returned).

The expected causes are derived from the two sides' rules (``docs/families/qwen-image.md``)
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
from parity.families import family_of_model
from parity.job import read_job
from parity.plan.sides import as_configured_request, pair_for
from parity.testing.jobs import FIXTURES

QWEN = FIXTURES / "aitk_qwen"
UI = FIXTURES / "aitk_qwen_ui"
QWEN_JOB = QWEN / "output" / "aitk_qwen"
UI_JOB = UI / "output" / "aitk_qwen_ui"
QWEN_BASE = QWEN / "tiny_qwen"
QWEN_HUB_ID = "Qwen/Qwen-Image"

# The fp32 job's config against the request a user writes from it (every size, seed,
# steps, guidance and negative written, prompt flags as fields; one LoRA at the
# sample-level multiplier 1). ai-toolkit floors sizes to 32, the server to 16: item 1
# (80x112) previews at 64x96, item 4 (100x90) at 96x64, served at 80x112 and 96x80.
# Item 2 runs at network_multiplier 0.5, where a LoRA exists (step 0 is before training).
QWEN_CAUSES: dict[tuple[int, int], list[str]] = {
    (step, i): [] for step in (0, 10, 20) for i in range(6)
}
for _step in (0, 10, 20):
    QWEN_CAUSES[(_step, 1)] = QWEN_CAUSES[(_step, 4)] = ["snapping"]
QWEN_CAUSES[(10, 2)] = QWEN_CAUSES[(20, 2)] = ["lora_scale"]


def _calls(path: Path) -> dict[str, dict]:
    """ai-toolkit's QwenImagePipeline calls by preview file name."""
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
    job = read_job(QWEN_JOB)
    assert (job.family, job.arch, job.reference_model) == ("qwenimage", "qwen_image", "qwen_image")
    assert job.merged_lora is False  # one item has its own multiplier
    assert not job.quantization.active and job.vae_tiling is False
    assert family_of_model("qwen_image_2512").name == "qwenimage"


def test_the_edit_variants_are_exit_2_naming_the_known_families(tmp_path: Path, capsys):
    config = (QWEN_JOB / "config.yaml").read_text(encoding="utf-8")
    for arch in ("qwen_image_edit", "qwen_image_edit_plus"):
        job = tmp_path / arch
        job.mkdir()
        (job / "config.yaml").write_text(config.replace("arch: qwen_image", f"arch: {arch}"))
        assert main(["inspect", str(job)]) == 2
        err = capsys.readouterr().err
        assert f"model.arch is '{arch}'" in err and "Qwen-Image: qwen_image" in err, err


def test_a_2512_job_is_served_by_qwen_image_2512(tmp_path: Path):
    config = (QWEN_JOB / "config.yaml").read_text(encoding="utf-8")
    job = Path(shutil.copytree(QWEN_JOB, tmp_path / "j"))
    (job / "config.yaml").write_text(config.replace("arch: qwen_image", "arch: qwen_image:2512"))
    read = read_job(job)
    assert read.reference_model == "qwen_image_2512"
    request = as_configured_request(read, read.checkpoint_for_step(20))
    pair = pair_for(read, read.samples[0], read.checkpoint_for_step(20), request=request,
                    request_index=0)  # fmt: skip
    # The server fuses the LoRA into the weights: the same numbers in fp32.
    assert pair.reference.lora is not None and pair.reference.lora.merged is True
    assert list(pair.differences) == []


def test_preview_settings_are_what_ai_toolkit_gave_qwen_image_pipeline():
    """Each preview's settings against the call log of the pipeline call that made it."""
    job = read_job(QWEN_JOB)
    calls = _calls(QWEN / "calls.jsonl")
    assert len(calls) == len(job.previews) == 18
    for preview in job.previews:
        call = calls[preview.path.name]
        checkpoint = job.checkpoint_for_step(preview.step)
        request = as_configured_request(job, checkpoint)
        pair = pair_for(job, job.samples[preview.index], checkpoint, request=request,
                        request_index=preview.index)  # fmt: skip
        p = pair.preview
        assert [p.width, p.height] == [call["width"], call["height"]], preview.path.name
        assert [p.width, p.height] == call["image"]["size"]
        assert (p.steps, p.seed) == (call["num_inference_steps"], call["generator"]["initial_seed"])
        assert p.pipeline_guidance == call["true_cfg_scale"]  # unchanged: no g - 1
        assert call["negative_given"] is True
        scheduler = call["scheduler"]["config"]
        assert scheduler["use_dynamic_shifting"] is True and p.dynamic_shift is not None
        assert p.dynamic_shift.max_shift == scheduler["max_shift"] == 0.9
        assert p.dynamic_shift.max_image_seq_len == scheduler["max_image_seq_len"] == 8192
        assert dict(p.scheduler_options) == {"shift_terminal": scheduler["shift_terminal"]}
        assert scheduler["time_shift_type"] == "exponential"  # the class's default
        networks = call["lora"]["networks"]
        if checkpoint is not None:
            assert p.lora is not None and p.lora.scale == networks[0]["multiplier"]
            assert p.lora.merged is networks[0]["is_merged_in"] is False
        assert list(pair.differences) == QWEN_CAUSES[(preview.step, preview.index)], preview


def test_a_scheduler_config_key_no_family_had_is_kept_and_compared(tmp_path: Path):
    """A checkpoint whose scheduler drops ``shift_terminal``: the server samples with
    its file, the preview with ai-toolkit's own config, and the difference is a cause."""
    base = Path(shutil.copytree(QWEN_BASE, tmp_path / "base"))
    path = base / "scheduler" / "scheduler_config.json"
    config = json.loads(path.read_text(encoding="utf-8"))
    config["shift_terminal"] = None
    path.write_text(json.dumps(config), encoding="utf-8")
    from parity.render.models import ModelSource, checkpoint_scheduler

    ref = str(base)
    scheduler = checkpoint_scheduler(ModelSource(ref, ref, ref, "edited"))
    assert scheduler is not None and scheduler.options == ()
    job = read_job(QWEN_JOB)
    request = as_configured_request(job, None)
    pair = pair_for(job, job.samples[0], None, request=request, request_index=0,
                    checkpoint_scheduler=scheduler)  # fmt: skip
    assert list(pair.differences) == ["scheduler"]


# ------------------------------------------------------------------ previews, server


def test_preview_reproduces_every_stored_preview(tmp_path: Path, float_noise):
    out = tmp_path / "previews"
    args = ["preview", str(QWEN_JOB), "--base-model", str(QWEN_BASE), "--device", "cpu"]
    assert main([*args, "--out", str(out)]) == 0
    effective = json.loads((out / "effective.json").read_text(encoding="utf-8"))
    assert len(effective) == 18
    for entry in effective:
        assert entry["settings"]["family"] == "qwenimage"
        name = _preview_name(QWEN_JOB, entry["step"], entry["index"])
        render = load_rgb(out / entry["image"])
        jpeg = QWEN_JOB / "samples" / f"{name}.jpg"
        lossless = load_rgb(QWEN / "lossless_previews" / f"{name}.png")
        float_noise.check(f"{name} before JPEG", lossless, render)
        float_noise.check(name, load_rgb(jpeg), render, codec=inspect_codec(jpeg))


@pytest.mark.parametrize("step", [10, 20])
def test_server_renders_are_reproduced(step: int, tmp_path: Path, float_noise):
    """The server's own code rendered ``server/<step>/request.json``: ``parity render``
    of the same file gives the same images (float32 on CPU, as the server ran)."""
    folder = QWEN / "server" / str(step)
    request = json.loads((folder / "request.json").read_text(encoding="utf-8"))
    out = tmp_path / "render"
    args = ["render", str(folder / "request.json"), "--lora-root", str(QWEN / "output")]
    assert main([*args, "--base-model", str(QWEN_BASE), "--out", str(out)]) == 0
    effective = json.loads((out / "effective.json").read_text(encoding="utf-8"))
    for i, entry in enumerate(effective):
        # The server floors to 16: 80x112 stays, 100x90 becomes 96x80.
        prompt = request["prompts"][i]
        assert entry["settings"]["width"] == prompt.get("width", 1024) // 16 * 16
        assert entry["settings"]["height"] == prompt.get("height", 1024) // 16 * 16
        render = load_rgb(out / f"{i}.png")
        float_noise.check(f"server {step}/{i}.png", load_rgb(folder / f"{i}.png"), render)
        jpeg = folder / f"{i}.jpg"
        float_noise.check(
            f"server {step}/{i}.jpg", load_rgb(jpeg), render, codec=inspect_codec(jpeg)
        )


# ------------------------------------------------------------------------ the run


@pytest.fixture(scope="module")
def qwen_run(tmp_path_factory) -> tuple[Path, dict, int]:
    """``parity run`` with the Qwen-Image hub id mapped to the tiny checkpoint."""
    out = tmp_path_factory.mktemp("qwen-run") / "run"
    args = ["run", str(QWEN_JOB), "--model-map", f"{QWEN_HUB_ID}={QWEN_BASE}", "--device", "cpu"]
    code = main([*args, "--out", str(out), "--no-history"])
    return out, _rows(out / "results.json"), code


def test_every_preview_gets_the_causes_the_two_sides_imply(qwen_run):
    out, rows, code = qwen_run
    assert code == 1
    assert set(rows) == set(QWEN_CAUSES)
    for key, row in rows.items():
        expected = QWEN_CAUSES[key]
        assert row["verdict"] == ("mismatch" if expected else "match"), (key, row["detail"])
        if expected:
            assert row["causes"] == expected and row["explained"] is True, key
            confirmed = [c["cause"] for c in row["counterfactuals"] if c["confirmed"]]
            assert confirmed == expected, key
    run = json.loads((out / "run.json").read_text(encoding="utf-8"))
    assert run["reference_model"] == "qwen_image"


def test_corrected_requests_reproduce_the_previews_they_place(qwen_run, tmp_path: Path):
    """The corrected request asks for the size the preview really had (64x96 is a
    multiple of the server's 16) and one request per LoRA scale; rendered as written,
    each reproduces the previews it places."""
    out, rows, _ = qwen_run
    for step in (10, 20):
        index = corrected_index(out, step)
        assert set(index["placement"]) == {str(i) for i in range(6)}, index["cannot_reproduce"]
        files = sorted({p["file"] for p in index["placement"].values()})
        requests = {f: json.loads((out / "corrected_requests" / f).read_text()) for f in files}
        assert sorted(r["loras"][0]["network_multiplier"] for r in requests.values()) == [0.5, 1]
        sizes = {(p["width"], p["height"]) for r in requests.values() for p in r["prompts"]}
        assert (64, 96) in sizes and (96, 64) in sizes
        rendered = {}
        for n, name in enumerate(files):
            rendered[name] = tmp_path / f"{step}-{n}"
            args = ["render", str(out / "corrected_requests" / name)]
            args += ["--lora-root", str(QWEN_JOB.parent), "--base-model", str(QWEN_BASE)]
            assert main([*args, "--out", str(rendered[name])]) == 0
        for preview_index, place in index["placement"].items():
            preview = out / rows[(step, int(preview_index))]["preview"]
            render = rendered[place["file"]] / f"{place['prompt']}.png"
            result = compare(load_rgb(preview), load_rgb(render), codec=inspect_codec(preview))
            assert Thresholds().is_match(result), (step, preview_index, result)


def test_inspect_and_explain(capsys, tmp_path: Path):
    assert main(["inspect", str(QWEN_JOB), "--format", "json"]) == 0
    described = json.loads(capsys.readouterr().out)
    item1 = next(r for r in described if (r["step"], r["index"]) == (20, 1))
    assert item1["reference"]["model"] == "qwen_image" and item1["differences"] == ["snapping"]
    common = ["--base-model", str(QWEN_BASE), "--device", "cpu", "--out", str(tmp_path)]
    assert main(["explain", str(QWEN_JOB), "--step", "20", "--index", "1", *common]) == 1
    out = capsys.readouterr().out
    assert "causes: snapping; explanation complete" in out
    assert "server: diffusers 0.42.1 (installed): QwenImagePipeline" in out


def test_quantization_takes_every_linear_ai_toolkit_quantized():
    """ai-toolkit's call log counts the quantized Linears of the UI preset's transformer
    and text encoder; parity's quantization of the same checkpoint gives those counts."""
    import torch

    from parity.qwenimage.family import QWEN_IMAGE
    from parity.render.models import ModelSource, load_pipeline
    from parity.render.quantize import quantize_text_encoder, quantize_transformer

    call = json.loads((UI / "calls.jsonl").read_text(encoding="utf-8").splitlines()[0])
    layers = call["linear_layers"]

    def quantized(kinds: dict[str, int]) -> int:
        return sum(n for kind, n in kinds.items() if not kind.startswith("Linear:Parameter"))

    ref = str(QWEN_BASE)
    pipe = load_pipeline(ModelSource(ref, ref, ref, "tiny"), family=QWEN_IMAGE)
    count = quantize_transformer(pipe.transformer, "qfloat8", QWEN_IMAGE.quantize_exclude)
    assert count == quantized(layers["transformer"]) > 0
    encoder = pipe.text_encoder
    # ai-toolkit drops the vision tower before quantizing; its Linears never run here.
    visual = sum(isinstance(m, torch.nn.Linear) for m in encoder.model.visual.modules())
    assert quantize_text_encoder(encoder, "qfloat8") - visual == quantized(layers["text_encoder"])


# ------------------------------------------------------------------ the UI preset

# bf16, qfloat8 transformer and text encoder, low_vram: every preview differs from the
# server's fp32 render by precision; item 2 (300x330, 288x320 on both sides) is larger
# than the VAE's 256 px tile, so ai-toolkit's tiled decode (low_vram) is a cause there.
UI_CAUSES = {(step, i): ["precision"] for step in (0, 10, 20) for i in range(3)}
for _step in (0, 10, 20):
    UI_CAUSES[(_step, 2)] = ["precision", "vae_tiling"]


@pytest.fixture(scope="module")
def ui_job(tmp_path_factory) -> Path:
    """The UI job with its fp32 training weights in place of the bf16 checkpoints: the
    weights its previews were rendered with."""
    job = Path(shutil.copytree(UI_JOB, tmp_path_factory.mktemp("ui") / UI_JOB.name))
    for weights in (UI / "fp32_weights").iterdir():
        shutil.copyfile(weights, job / weights.name)
    return job


def test_ui_preset_settings_follow_the_call_log():
    job = read_job(UI_JOB)
    assert job.vae_tiling is True  # low_vram
    assert (job.quantization.qtype, job.quantization.qtype_te) == ("qfloat8", "qfloat8")
    calls = _calls(UI / "calls.jsonl")
    for preview in job.previews:
        call = calls[preview.path.name]
        checkpoint = job.checkpoint_for_step(preview.step)
        request = as_configured_request(job, checkpoint)
        pair = pair_for(job, job.samples[preview.index], checkpoint, request=request,
                        request_index=preview.index)  # fmt: skip
        p = pair.preview
        assert call["vae_tiling"] is True  # on for every call...
        assert p.vae_tiling is (max(p.width, p.height) > 256)  # ...acting above the tile
        assert (p.dtype, p.text_encoder_cast) == ("bfloat16", True)
        assert [p.width, p.height] == call["image"]["size"]
        assert list(pair.differences) == UI_CAUSES[(preview.step, preview.index)]


def test_ui_preset_previews_within_bf16_float_noise(ui_job: Path, tmp_path: Path, float_noise):
    """bf16, qfloat8 transformer and text encoder, the LoRA beside the weights and the
    tiled decode at 288x320: each preview within its own measured noise floor."""
    out = tmp_path / "previews"
    assert main(["preview", str(ui_job), "--base-model", str(QWEN_BASE), "--out", str(out)]) == 0
    effective = json.loads((out / "effective.json").read_text(encoding="utf-8"))
    assert len(effective) == 9
    for entry in effective:
        settings = entry["settings"]
        assert settings["quantization"] == {"qtype": "qfloat8", "qtype_te": "qfloat8"}
        name = _preview_name(ui_job, entry["step"], entry["index"])
        render = load_rgb(out / entry["image"])
        floor = float_noise.floor(settings, render, base_model=QWEN_BASE)
        lossless = load_rgb(UI / "lossless_previews" / f"{name}.png")
        float_noise.check(f"{name} before JPEG", lossless, render, dtype="bfloat16", floor=floor)


def test_the_tiled_decode_is_what_the_preview_shows(ui_job: Path, float_noise):
    """The counterfactual by hand: item 2 decoded whole differs from its preview by far
    more than the case's float noise; decoded in tiles it is the preview."""
    import numpy as np

    from parity.testing.jobs import shared_engine

    job = read_job(ui_job)
    checkpoint = job.checkpoint_for_step(20)
    request = as_configured_request(job, checkpoint)
    pair = pair_for(job, job.samples[2], checkpoint, request=request, request_index=2)
    tiled = pair.preview
    assert tiled.vae_tiling and (tiled.width, tiled.height) == (288, 320)
    engine = shared_engine(QWEN_BASE)
    tiled_render = np.asarray(engine.render(tiled).image.convert("RGB"))
    whole_render = np.asarray(engine.render(tiled.replace(vae_tiling=False)).image.convert("RGB"))
    name = _preview_name(ui_job, 20, 2)
    lossless = load_rgb(UI / "lossless_previews" / f"{name}.png")
    floor = float_noise.floor(tiled, tiled_render, base_model=QWEN_BASE)
    float_noise.check(f"{name} tiled", lossless, tiled_render, dtype="bfloat16", floor=floor)
    whole_diff = np.abs(lossless.astype(int) - whole_render.astype(int)).max()
    assert whole_diff > 3 * floor.max_abs_diff, (whole_diff, floor)


def test_ui_preset_run_names_precision_tiling_and_why_no_request_can(tmp_path: Path):
    out = tmp_path / "run"
    args = ["run", str(UI_JOB), "--base-model", str(QWEN_BASE), "--no-history"]
    assert main([*args, "--out", str(out)]) == 1
    rows = _rows(out / "results.json")
    assert set(rows) == set(UI_CAUSES)
    for key, row in rows.items():
        # bf16 at 64x64 can land within the thresholds (a match has no causes); the
        # tiled 288x320 item never does.
        if row["verdict"] == "match":
            assert key[1] != 2 and row["causes"] == [], key
            continue
        assert row["causes"] == UI_CAUSES[key] and row["explained"] is True, key
        assert row["noise_floor"] is not None and row["noise_floor"]["dtype"] == "bfloat16"
    for step in (0, 10, 20):
        cannot = corrected_index(out, step)["cannot_reproduce"]
        for index, reasons in cannot.items():
            text = " ".join(reasons)
            assert "transformer qfloat8, text encoder qfloat8" in text, text
            assert ("in tiles" in text) is (index == "2"), text
