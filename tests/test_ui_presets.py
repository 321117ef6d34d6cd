"""The jobs people train: ai-toolkit's UI presets, end to end.

Two kinds of evidence:

- ``fixtures/aitk_ui_zimage``, a real ai-toolkit job in the UI's Z-Image preset (bf16,
  qfloat8 transformer and text encoder, rank 8 with alpha 4, bf16 checkpoints), rendered
  by ai-toolkit on another CPU: its previews are reproduced within the bf16 float-noise
  rule, and its expected causes come from its config read with both rule sets;
- jobs written with parity's job writer on the tiny models, one per preset feature (a
  Turbo job with a training adapter, alpha below rank, LoKr, keys the server drops, EMA),
  whose previews come from parity's preview renderer on this machine: exact in-process
  expectations.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from helpers import corrected_index, request_for

from parity.cli import main
from parity.compare import inspect_codec, load_rgb
from parity.job import read_job
from parity.testing.jobs import (
    AITK_REAL_BASE,
    FIXTURES,
    TINY_BASE,
    TINY_TURBO,
    UI_PRESET,
    write_job,
)
from parity.testing.lora import write_aitk_lora

UI_FIXTURE = FIXTURES / "aitk_ui_zimage"
UI_JOB = UI_FIXTURE / "output" / "aitk_zimage_ui"

# Per sample index, from the config: 64x64 at guidance 4 (ai-toolkit gives diffusers 3,
# the server 4); guidance 0 (0 on both sides); 96x80 at guidance 4 (the server floors to
# 96x64). Everything also differs in precision: bf16 with qfloat8 weights against the
# server's fp32 on CPU. Seeds 42, 43, 44 (walk_seed) on both sides; 6 steps written.
UI_CAUSES = {0: ["cfg", "precision"], 1: ["precision"], 2: ["cfg", "precision", "snapping"]}


def _run(job: Path, out: Path, *extra: str) -> tuple[int, list[dict]]:
    code = main(["run", str(job), "--no-history", "--out", str(out), *extra])
    return code, json.loads((out / "results.json").read_text(encoding="utf-8"))


def _preview_name(job: Path, step: int, index: int) -> str:
    (path,) = (job / "samples").glob(f"*__{step:09d}_{index}.jpg")
    return path.stem


# ------------------------------------------------------------- the real UI-preset job


@pytest.fixture(scope="module")
def ui_fp32_job(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the real job with the fp32 training weights that rendered its previews."""
    job = Path(shutil.copytree(UI_JOB, tmp_path_factory.mktemp("ui-fp32") / UI_JOB.name))
    for weights in (UI_FIXTURE / "fp32_weights").iterdir():
        shutil.copyfile(weights, job / weights.name)
    return job


def test_real_ui_job_previews_within_bf16_float_noise(
    ui_fp32_job: Path, tmp_path: Path, float_noise
) -> None:
    """With the fp32 weights, every lossless preview and every JPEG, within the rule:
    each image against the noise floor measured for its own settings here."""
    out = tmp_path / "previews"
    args = ["preview", str(ui_fp32_job), "--base-model", str(AITK_REAL_BASE), "--out", str(out)]
    assert main(args) == 0
    effective = json.loads((out / "effective.json").read_text(encoding="utf-8"))
    assert len(effective) == 9
    for entry in effective:
        settings = entry["settings"]
        assert settings["dtype"] == "bfloat16" and settings["text_encoder_cast"] is True
        assert settings["quantization"] == {"qtype": "qfloat8", "qtype_te": "qfloat8"}
        assert settings["lora"] is None or settings["lora"]["merged"] is False
        name = _preview_name(ui_fp32_job, entry["step"], entry["index"])
        render = load_rgb(out / entry["image"])
        jpeg = ui_fp32_job / "samples" / f"{name}.jpg"
        codec = inspect_codec(jpeg)
        floor = float_noise.floor(settings, render, base_model=AITK_REAL_BASE, codec=codec)
        assert floor.max_abs_diff > 0  # bf16 renders do move with the kernels
        lossless = load_rgb(UI_FIXTURE / "lossless_previews" / f"{name}.png")
        float_noise.check(f"{name} before JPEG", lossless, render, dtype="bfloat16", floor=floor)
        float_noise.check(name, load_rgb(jpeg), render, codec=codec, dtype="bfloat16", floor=floor)


def test_real_ui_job_with_its_bf16_checkpoints_step_0_within_float_noise(
    tmp_path: Path, float_noise
) -> None:
    """Step 0 previews come before training (no LoRA file): the job as it is reproduces
    them within the bf16 rule, each against its own measured noise floor. Later steps
    need the fp32 weights the folder lacks (see the rounding test below)."""
    out = tmp_path / "previews"
    args = ["preview", str(UI_JOB), "--base-model", str(AITK_REAL_BASE), "--step", "0"]
    assert main([*args, "--out", str(out)]) == 0
    effective = json.loads((out / "effective.json").read_text(encoding="utf-8"))
    assert [e["index"] for e in effective] == [0, 1, 2]
    for entry in effective:
        name = _preview_name(UI_JOB, 0, entry["index"])
        render = load_rgb(out / entry["image"])
        floor = float_noise.floor(entry["settings"], render, base_model=AITK_REAL_BASE)
        lossless = load_rgb(UI_FIXTURE / "lossless_previews" / f"{name}.png")
        float_noise.check(f"{name} before JPEG", lossless, render, dtype="bfloat16", floor=floor)


@pytest.fixture(scope="module")
def ui_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[dict]]:
    out = tmp_path_factory.mktemp("ui-run") / "run"
    code, rows = _run(UI_JOB, out, "--base-model", str(AITK_REAL_BASE))
    assert code == 1  # bf16 quantized previews: the server cannot reproduce them
    return out, rows


def test_real_ui_job_every_preview_gets_its_causes(ui_run) -> None:
    """Every difference the config makes is a cause, confirmed by its leave-one-out render
    or listed below the case's noise floor: never missing, whatever the CPU's kernels."""
    _, rows = ui_run
    assert len(rows) == 9
    for row in rows:
        where = (row["step"], row["index"], row["detail"])
        assert row["verdict"] == "mismatch", where
        assert row["causes"] == UI_CAUSES[row["index"]], where
        assert row["explained"] is True, where
        confirmed = {c["cause"] for c in row["counterfactuals"] if c["confirmed"]}
        unconfirmed = {u["cause"] for u in row["below_noise_floor"]}
        assert confirmed | unconfirmed == set(UI_CAUSES[row["index"]]), where
        assert not confirmed & unconfirmed, where


def test_real_ui_job_every_bf16_row_carries_its_noise_floor(ui_run) -> None:
    """The server renders fp32 on CPU, the previews are bf16: each row's floor is measured
    on its all-switched render (the preview's numerics), scored like the JPEG preview, and
    that render is judged with it."""
    _, rows = ui_run
    for row in rows:
        floor = row["noise_floor"]
        assert floor is not None, (row["step"], row["index"])
        assert (floor["render"], floor["dtype"]) == ("all", "bfloat16")
        assert floor["method"] == "sdpa math vs default"
        assert floor["max_abs_diff"] > 0 and floor["encoded_max_abs_diff"] is not None
        everything = next(c for c in row["counterfactuals"] if c["cause"] == "all")
        assert everything["settings"]["dtype"] == "bfloat16"


def test_real_ui_job_step_0_is_reproduced_and_later_steps_within_their_rounding(ui_run) -> None:
    """Step 0 has no LoRA file: the preview side reproduces it (within the rule: the
    thresholds, or 3 times the all-switched render's own noise floor).
    Steps 10 and 20 come from bf16 checkpoints: where the all-switched render does not
    match, re-rendering within the checkpoint's rounding accounts for the residual."""
    _, rows = ui_run
    for row in rows:
        everything = next(c for c in row["counterfactuals"] if c["cause"] == "all")
        if row["step"] == 0:
            assert everything["match"], (row["index"], everything["ssim"])
            assert row["rounding"] is None
            continue
        if everything["match"]:
            continue
        assert row["rounding"]["checkpoint_dtype"] == "BF16", row["detail"]
        assert row["rounding"]["accounts"] is True
        assert "checkpoint saved in BF16" in row["detail"]
        rounding = [c for c in row["counterfactuals"] if c["cause"].startswith("rounding_")]
        assert len(rounding) == row["rounding"]["draws"] == 3
        seeds = {c["settings"]["lora"]["rounding_seed"] for c in rounding}
        assert seeds == {1, 2, 3}


def test_real_ui_job_corrected_requests_say_what_no_request_can_fix(ui_run) -> None:
    out, rows = ui_run
    for step in (0, 10, 20):
        corrected = corrected_index(out, step)
        for index in ("0", "1", "2"):
            reasons = " ".join(corrected["cannot_reproduce"][index])
            assert "quantized" in reasons and "qfloat8" in reasons
            assert "bfloat16" in reasons  # the preview dtype; the server renders fp32 on CPU
            assert ("checkpoint saved in BF16" in reasons) == (step > 0)
            assert "closest the server gets" in reasons


def test_real_ui_job_inspect_says_what_the_preset_does(capsys) -> None:
    assert main(["inspect", str(UI_JOB)]) == 0
    out = capsys.readouterr().out
    assert "linear_alpha 4 differs from linear 8" in out and "scale 1.0" in out
    assert "BF16 (a rounding of the fp32 training weights" in out
    assert "lora, 16 modules; the server takes 32 keys" in out
    assert "warning" not in out  # loss_log.db and .thumbs are not problems
    job = read_job(UI_JOB)
    assert job.setup.process_type == "diffusion_trainer"
    assert (job.setup.network.linear, job.setup.network.linear_alpha) == (8, 4)
    assert job.setup.network.alpha_ignored and job.setup.save_dtype == "bf16"
    assert len(job.previews) == 9  # samples/.thumbs/ ignored


# ------------------------------------------------------------- jobs from the writer

UI_SAMPLE = {
    "sampler": "flowmatch",
    "width": 64,
    "height": 64,
    "seed": 42,
    "walk_seed": True,
    "guidance_scale": 1,
    "sample_steps": 3,
    "neg": "",
    "samples": [{"prompt": "[trigger] a red cube on a table"}, {"prompt": "[trigger] a cone"}],
}
ADAPTER_HUB_PATH = (
    "ostris/zimage_turbo_training_adapter/zimage_turbo_training_adapter_v2.safetensors"
)


def _turbo_preset(adapter: str) -> dict:
    model = {**UI_PRESET["model_extra"], "assistant_lora_path": adapter}
    return {**UI_PRESET, "model_extra": model, "rank": 8}


@pytest.fixture(scope="module")
def turbo_job(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The UI's "Z-Image Turbo (w/ Training Adapter)" preset on the tiny Turbo model, with
    a local adapter file next to the training folder, where ai-toolkit would find it."""
    run_dir = tmp_path_factory.mktemp("turbo-ui")
    adapter = run_dir / "adapters" / "tiny_training_adapter.safetensors"
    write_aitk_lora(adapter, TINY_TURBO, rank=4, seed=7, scale_b=0.3, name="adapter")
    return write_job(
        run_dir / "output",
        name="turbo_ui",
        sample=UI_SAMPLE,
        checkpoints={10: {"rank": 8, "seed": 5, "scale_b": 0.1}},
        base_model=TINY_TURBO,
        arch="zimage:turbo",
        name_or_path="Tongyi-MAI/Z-Image-Turbo",
        **_turbo_preset("adapters/tiny_training_adapter.safetensors"),
    )


def test_turbo_preset_previews_carry_the_adapter_and_float8(turbo_job: Path) -> None:
    job = read_job(turbo_job)
    assert (
        job.adapter_path == turbo_job.parents[1] / "adapters" / "tiny_training_adapter.safetensors"
    )
    assert job.quantization.qtype == "float8"  # qfloat8 becomes torchao float8 with an adapter
    assert job.quantization.qtype_te == "qfloat8"
    assert not job.merged_lora


def test_turbo_preset_run_names_cfg_and_precision(turbo_job: Path, tmp_path: Path) -> None:
    code, rows = _run(turbo_job, tmp_path / "run", "--base-model", str(TINY_TURBO))
    assert code == 1 and len(rows) == 2
    for row in rows:
        # guidance 1: ai-toolkit gives diffusers 0, the server 1; bf16, float8 and the
        # adapter against the server's fp32.
        assert row["verdict"] == "mismatch", row["detail"]
        assert (row["causes"], row["explained"]) == (["cfg", "precision"], True), row["detail"]
        everything = next(c for c in row["counterfactuals"] if c["cause"] == "all")
        assert everything["settings"]["adapter"]["multiplier"] == -1.0
        assert everything["settings"]["quantization"]["qtype"] == "float8"
    corrected = corrected_index(tmp_path / "run", 10)
    reasons = " ".join(corrected["cannot_reproduce"]["0"])
    assert "training adapter tiny_training_adapter.safetensors" in reasons
    assert "closest the server gets" in reasons
    # What a request can fix, it fixes: the guidance diffusers must receive.
    assert {request_for(tmp_path / "run", 10, i)[1]["guidance_scale"] for i in (0, 1)} == {0}


def test_turbo_adapter_changes_the_preview_and_is_undone_at_minus_one(turbo_job, tmp_path):
    """The adapter is really applied: Q(W + A) - A differs from Q(W), and from Q(W + A)."""
    import dataclasses

    import numpy as np

    from parity.plan.sides import preview_settings
    from parity.testing.jobs import shared_engine

    job = read_job(turbo_job)
    settings = preview_settings(job, job.samples[0], job.checkpoint_for_step(10))
    engine = shared_engine(TINY_TURBO)
    with_adapter = np.asarray(engine.render(settings).image, dtype=np.int16)
    without = np.asarray(engine.render(settings.replace(adapter=None)).image, dtype=np.int16)
    plus = settings.replace(adapter=dataclasses.replace(settings.adapter, multiplier=0.0))
    merged_only = np.asarray(engine.render(plus).image, dtype=np.int16)
    assert np.abs(with_adapter - without).max() > 0  # float8 of W + A, then - A: not Q(W)
    assert np.abs(merged_only - with_adapter).max() > np.abs(with_adapter - without).max()


def test_adapter_as_a_hub_path_is_found_through_the_model_map(turbo_job, tmp_path, capsys):
    job = Path(shutil.copytree(turbo_job, tmp_path / "output" / "turbo_ui"))
    config = (job / "config.yaml").read_text(encoding="utf-8")
    local = "adapters/tiny_training_adapter.safetensors"
    (job / "config.yaml").write_text(config.replace(local, ADAPTER_HUB_PATH), encoding="utf-8")
    adapter = turbo_job.parents[1] / local
    assert read_job(job).adapter_problem and "--model-map" in read_job(job).adapter_problem
    # Unmapped: the run cannot happen (every preview needs the adapter): exit 2, one line.
    code = main(["run", str(job), "--base-model", str(TINY_TURBO), "--no-history"])
    assert code == 2 and ADAPTER_HUB_PATH in capsys.readouterr().err
    repo = ADAPTER_HUB_PATH.rpartition("/")[0]
    mapped = tmp_path / "hub" / repo
    mapped.mkdir(parents=True)
    shutil.copyfile(adapter, mapped / Path(ADAPTER_HUB_PATH).name)
    flags = ["--base-model", str(TINY_TURBO), "--model-map", f"{repo}={mapped}"]
    code, rows = _run(job, tmp_path / "run", *flags, "--steps", "10")
    assert code == 1 and all(r["causes"] == ["cfg", "precision"] for r in rows)
    # The same through a fleet worker process, which reads the job again.
    code, fleet_rows = _run(job, tmp_path / "fleet", *flags, "--steps", "10", "--workers", "1")
    assert code == 1 and [r["causes"] for r in fleet_rows] == [r["causes"] for r in rows]


ALIGNED = {
    "width": 64,
    "height": 64,
    "seed": 3,
    "guidance_scale": 0,
    "sample_steps": 3,
    "neg": "",
    "samples": [{"prompt": "[trigger] a red barn"}, {"prompt": "[trigger] a blue sea"}],
}


def _pixels(engine, settings):
    import numpy as np

    return np.asarray(engine.render(settings).image, dtype=np.int16)


def _preview_settings_of(job: Path, index: int = 0):
    from parity.plan.sides import preview_settings

    read = read_job(job)
    return preview_settings(read, read.samples[index], read.checkpoint_for_step(10))


def test_alpha_below_rank_is_ignored_as_ai_toolkit_does(tmp_path: Path, capsys) -> None:
    """rank 8, linear_alpha 4: previews, file and server all at scale 1, so an aligned
    fp32 job matches; applying alpha / rank = 0.5 would change the render."""
    import dataclasses

    from parity.testing.jobs import shared_engine

    job = write_job(
        tmp_path,
        name="alpha_job",
        sample=ALIGNED,
        checkpoints={10: {"rank": 8, "scale_b": 0.2}},
        rank=8,
        network_extra={"linear_alpha": 4},
    )
    assert main(["inspect", str(job)]) == 0
    assert "linear_alpha 4 differs from linear 8" in capsys.readouterr().out
    code, rows = _run(job, tmp_path / "run", "--base-model", str(TINY_BASE))
    assert code == 0 and all(r["verdict"] == "match" for r in rows)
    settings = _preview_settings_of(job)
    engine = shared_engine(TINY_BASE)
    halved = settings.replace(lora=dataclasses.replace(settings.lora, scale=0.5))
    assert abs(_pixels(engine, halved) - _pixels(engine, settings)).max() > 10


def test_lokr_job_matches_on_the_server(tmp_path: Path, capsys) -> None:
    """ai-toolkit's full-rank LoKr, merged for sampling in fp32; the server's diffusers
    loads it as a PEFT LoKr adapter whose delta is kron(w1, w2)."""
    from parity.testing.jobs import shared_engine

    job = write_job(
        tmp_path,
        name="lokr_job",
        sample=ALIGNED,
        checkpoints={10: {"kind": "lokr", "scale_b": 0.4}},
        network_extra={"type": "lokr", "lokr_full_rank": True, "lokr_factor": -1},
    )
    assert main(["inspect", str(job)]) == 0
    out = capsys.readouterr().out
    assert "lokr, 16 modules" in out and "alpha keys: LoKr full factors run at scale 1" in out
    code, rows = _run(job, tmp_path / "run", "--base-model", str(TINY_BASE))
    assert code == 0, [r["detail"] for r in rows]
    # The LoKr changes the image: the match is not the base model matching itself.
    settings = _preview_settings_of(job)
    assert settings.lora is not None and settings.lora.merged
    engine = shared_engine(TINY_BASE)
    assert abs(_pixels(engine, settings) - _pixels(engine, settings.replace(lora=None))).max() > 10


def test_keys_the_server_drops_are_lora_not_applied_with_counts(tmp_path: Path) -> None:
    """Half the modules under a prefix ai-toolkit's network reads (PEFT's
    ``base_model.model.``) but the server's diffusers does not map."""

    def prefix(module: str) -> str:
        return "base_model.model." if module.startswith("layers.1.") else "diffusion_model."

    job = write_job(
        tmp_path,
        name="dropped",
        sample=ALIGNED,
        checkpoints={10: {"key_prefix": prefix, "scale_b": 0.3}},
    )
    code, rows = _run(job, tmp_path / "run", "--base-model", str(TINY_BASE))
    assert code == 1
    for row in rows:
        assert (row["causes"], row["explained"]) == (["lora_not_applied"], True), row["detail"]
        assert "8 of 16 LoRA modules matched the transformer" in row["detail"]


def test_a_format_the_server_cannot_load_is_a_per_preview_error(tmp_path: Path) -> None:
    import torch

    loha = {
        "diffusion_model.layers.0.attention.to_q.hada_w1_a": torch.zeros(4, 32),
        "diffusion_model.layers.0.attention.to_q.hada_w1_b": torch.zeros(4, 32),
    }
    job = write_job(
        tmp_path,
        name="loha",
        sample=ALIGNED,
        checkpoints={10: {"extra_keys": loha, "scale_b": 0.2}},
    )
    code, rows = _run(job, tmp_path / "run", "--base-model", str(TINY_BASE))
    assert code == 1
    for row in rows:
        assert row["verdict"] == "error"
        assert "cannot load this file" in row["detail"] and "hada_w1_a" in row["detail"]


def test_ema_job_is_read_and_names_no_cause(tmp_path: Path, capsys) -> None:
    job = write_job(
        tmp_path,
        name="ema_job",
        sample=ALIGNED,
        train_extra={"ema_config": {"use_ema": True, "ema_decay": 0.99}},
    )
    assert read_job(job).setup.ema
    assert main(["inspect", str(job)]) == 0
    assert "EMA: ai-toolkit swaps the EMA weights in" in capsys.readouterr().out
    code, rows = _run(job, tmp_path / "run", "--base-model", str(TINY_BASE))
    assert code == 0 and all(r["causes"] == [] for r in rows)


def test_bf16_saved_checkpoint_is_precision_weighed_by_its_rounding(tmp_path: Path) -> None:
    """An unquantized bf16 job saved in bf16: previews from the fp32 weights (this
    machine's renders), the checkpoint their rounding."""
    # Guidance 4 (3 for diffusers vs the server's 4) makes bf16 visible on the tiny model.
    job = write_job(
        tmp_path,
        name="bf16_save",
        sample={**ALIGNED, "guidance_scale": 4},
        checkpoints={10: {"scale_b": 0.3}},
        train_dtype="bf16",
        save_dtype="bf16",
    )
    assert read_job(job).checkpoints[0].dtype == "BF16"
    code, rows = _run(job, tmp_path / "run", "--base-model", str(TINY_BASE))
    assert code == 1
    for row in rows:
        assert (row["causes"], row["explained"]) == (["cfg", "precision"], True), row["detail"]
    corrected = corrected_index(tmp_path / "run", 10)
    assert all(
        "checkpoint saved in BF16" in " ".join(r) for r in corrected["cannot_reproduce"].values()
    )


def test_a_job_without_previews_says_why(tmp_path: Path, capsys) -> None:
    job = write_job(
        tmp_path,
        name="no_samples",
        sample=ALIGNED,
        train_extra={"disable_sampling": True},
        render=False,
    )
    code = main(["run", str(job), "--base-model", str(TINY_BASE), "--no-history"])
    err = capsys.readouterr().err
    assert code == 2 and "no previews to check" in err and "disable_sampling" in err
