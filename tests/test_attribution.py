"""Each cause injected on the tiny models is named, alone or together, and proven.

Every job here is written the way ai-toolkit writes one; its previews come from parity's
preview renderer, so each difference between the sample config's ai-toolkit semantics
and the server's is a known, injected cause.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers import request_for

from parity.compare import Thresholds
from parity.job import read_job
from parity.run import RunOptions, run_job
from parity.testing.jobs import TINY_BASE, shared_engine, write_job

# Everything written, sizes multiples of 32, cfg 0 (0 on both sides): the server
# reproduces these previews unless a sample adds a difference.
ALIGNED = {"width": 64, "height": 64, "seed": 3, "guidance_scale": 0, "sample_steps": 4, "neg": ""}


def run(folder: Path, out: Path, *, base=TINY_BASE, **options) -> dict[int, dict]:
    job = read_job(folder)
    summary = run_job(job, shared_engine(base), out, RunOptions(**options))
    rows = json.loads((out / "results.json").read_text())
    assert len(rows) == len(summary.rows)
    return {r["index"]: r for r in rows}


@pytest.fixture(scope="module")
def mixed(tmp_path_factory) -> dict[int, dict]:
    """One job, one sample per situation."""
    root = tmp_path_factory.mktemp("mixed")
    sample = {
        **ALIGNED,
        "samples": [
            {"prompt": "[trigger] a clean match"},  # 0: nothing differs
            {"prompt": "[trigger] a tall tower", "width": 80, "height": 112},  # 1: 16-not-32 size
            {"prompt": "[trigger] a red cube", "guidance_scale": 4},  # 2: cfg 4 -> 3 vs 4
            {"prompt": "[trigger] a green cone", "network_multiplier": 0.5},  # 3: per-item scale
            {"prompt": "[trigger] a cat --cfg 4 --w 96 --h 80"},  # 4: cfg and snapping
        ],
    }
    folder = write_job(root, name="mixed", sample=sample, checkpoints={10: {"scale_b": 0.15}})
    rows = run(folder, root / "out")
    for row in rows.values():
        row["out_dir"], row["job_dir"] = str(root / "out"), str(folder)
    return rows


def test_clean_preview_is_a_match_with_no_cause(mixed):
    row = mixed[0]
    assert row["verdict"] == "match"
    assert row["causes"] == [] and row["counterfactual_renders"] == 0
    assert row["ssim"] > 0.99


@pytest.mark.parametrize(
    ("index", "causes"),
    [(1, ["snapping"]), (2, ["cfg"]), (3, ["lora_scale"]), (4, ["cfg", "snapping"])],
)
def test_injected_causes_are_named_and_explained(mixed, index, causes):
    row = mixed[index]
    assert row["verdict"] == "mismatch"
    assert row["causes"] == causes
    assert row["explained"] is True
    # Every cause is the config's difference: confirmed by its leave-one-out render in the
    # evidence, or listed below the case's noise floor (fp32 here: confirmed).
    confirmed = {c["cause"] for c in row["counterfactuals"] if c["confirmed"]}
    assert confirmed | {u["cause"] for u in row["below_noise_floor"]} == set(causes)
    assert set(row["candidate_causes"]) == set(causes)


def test_counterfactual_renders_respect_the_bound(mixed):
    for row in mixed.values():
        bound = len(row["candidate_causes"]) + 1 if row["verdict"] == "mismatch" else 0
        assert row["counterfactual_renders"] <= bound


def test_all_switched_render_reproduces_the_preview(mixed):
    thresholds = Thresholds()
    for row in mixed.values():
        if row["verdict"] != "mismatch":
            continue
        everything = next(c for c in row["counterfactuals"] if c["cause"] == "all")
        assert everything["match"]
        assert everything["ssim"] >= thresholds.ssim_min


def test_corrected_requests_reproduce_the_previews_or_say_why(mixed, tmp_path):
    from parity.cli import main

    out = Path(mixed[0]["out_dir"])
    job_dir = Path(mixed[0]["job_dir"])
    index = json.loads((out / "corrected_requests" / "10.json").read_text())
    assert set(index) == {"step", "placement", "cannot_reproduce", "closest"}
    # Every preview is placed in a request that reproduces it, or named with a reason.
    assert set(index["placement"]) | set(index["cannot_reproduce"]) == {"0", "1", "2", "3", "4"}
    assert not set(index["placement"]) & set(index["cannot_reproduce"])
    assert (
        "80x112 is not a multiple of 32; the server floors it to 64x96"
        in index["cannot_reproduce"]["1"]
    )
    # One request per LoRA scale: sample 3 (scale 0.5) gets its own.
    files = {place["file"] for place in index["placement"].values()}
    requests = {f: json.loads((out / "corrected_requests" / f).read_text()) for f in files}
    scales = sorted(r["loras"][0]["network_multiplier"] for r in requests.values())
    assert scales == [0.5, 1]
    # Render each file exactly as written, the server's way, from the job's training
    # folder: its LoRA paths are <job name>/<file>.
    from parity.compare import compare, inspect_codec, load_rgb

    for n, name in enumerate(sorted(files)):
        assert requests[name]["loras"][0]["path"].startswith("mixed/mixed_000000010")
        status = main(
            [
                "render",
                str(out / "corrected_requests" / name),
                "--lora-root",
                str(job_dir.parent),
                "--base-model",
                str(TINY_BASE),
                "--device",
                "cpu",
                "--out",
                str(tmp_path / f"r{n}"),
            ]
        )
        assert status == 0
    rendered = {name: tmp_path / f"r{n}" for n, name in enumerate(sorted(files))}
    for preview_index, place in index["placement"].items():
        row = mixed[int(preview_index)]
        preview = out / row["preview"]
        render = rendered[place["file"]] / f"{place['prompt']}.png"
        result = compare(load_rgb(preview), load_rgb(render), codec=inspect_codec(preview))
        assert Thresholds().is_match(result), (preview_index, result)


def test_steps_cause_when_the_config_leaves_steps_to_the_defaults(tmp_path):
    # No sample_steps written: ai-toolkit samples with its default 20, the server's
    # zimage model with its default 30.
    sample = {k: v for k, v in ALIGNED.items() if k != "sample_steps"}
    sample["samples"] = [{"prompt": "[trigger] a small boat"}]
    folder = write_job(tmp_path, name="steps", sample=sample)
    row = run(folder, tmp_path / "out")[0]
    assert (row["causes"], row["explained"]) == (["steps"], True)


def test_scheduler_cause_for_a_turbo_job_on_a_shift_6_checkpoint(tmp_path):
    # zimage_turbo keeps the checkpoint's scheduler (shift 6.0 here); ai-toolkit
    # samples with shift 3.0 whatever the checkpoint ships.
    sample = {**ALIGNED, "samples": [{"prompt": "[trigger] a lighthouse"}]}
    folder = write_job(
        tmp_path,
        name="turbo_shift",
        sample=sample,
        arch="zimage:turbo",
        name_or_path="Tongyi-MAI/Z-Image-Turbo",
    )
    row = run(folder, tmp_path / "out")[0]
    assert (row["causes"], row["explained"]) == (["scheduler"], True)


def test_every_cause_the_corrected_request_must_change_is_named(tmp_path):
    """Turbo at guidance 1 on a shift-6 checkpoint: ai-toolkit gives diffusers 0, the
    server 1, and they sample with shifts 3 and 6. Leaving either out breaks the match,
    so both are causes, however much more the scheduler moves the render."""
    sample = {**ALIGNED, "guidance_scale": 1, "samples": [{"prompt": "[trigger] a lighthouse"}]}
    folder = write_job(
        tmp_path,
        name="turbo_cfg1",
        sample=sample,
        arch="zimage:turbo",
        name_or_path="Tongyi-MAI/Z-Image-Turbo",
    )
    row = run(folder, tmp_path / "out")[0]
    assert (row["causes"], row["explained"]) == (["cfg", "scheduler"], True)
    left_out = {c["cause"]: c for c in row["counterfactuals"]}
    assert not left_out["cfg"]["match"] and not left_out["scheduler"]["match"]
    assert left_out["all"]["match"]
    assert request_for(tmp_path / "out", 10, 0)[1]["guidance_scale"] == 0


def test_lora_whose_keys_the_server_does_not_recognise(tmp_path):
    # Keys without the diffusion_model. prefix: ai-toolkit's network matches them by
    # module name, diffusers' loader silently applies nothing.
    sample = {**ALIGNED, "samples": [{"prompt": "[trigger] a red barn"}]}
    folder = write_job(
        tmp_path,
        name="noprefix",
        sample=sample,
        checkpoints={10: {"key_prefix": "", "scale_b": 0.15}},
    )
    row = run(folder, tmp_path / "out")[0]
    assert (row["causes"], row["explained"]) == (["lora_not_applied"], True)
    corrected = json.loads((tmp_path / "out" / "corrected_requests" / "10.json").read_text())
    assert "matches no module" in " ".join(corrected["cannot_reproduce"]["0"])


def test_precision_bf16_preview_against_fp32_server(tmp_path):
    sample = {**ALIGNED, "guidance_scale": 4, "samples": [{"prompt": "[trigger] a stone bridge"}]}
    folder = write_job(tmp_path, name="bf16", sample=sample, train_dtype="bf16")
    row = run(folder, tmp_path / "out")[0]
    assert row["candidate_causes"] == ["cfg", "precision"]
    assert (row["causes"], row["explained"]) == (["cfg", "precision"], True)
    # A bf16 preview against the fp32 server: the floor is the all-switched render's.
    assert (row["noise_floor"]["render"], row["noise_floor"]["dtype"]) == ("all", "bfloat16")
    confirmed = {c["cause"] for c in row["counterfactuals"] if c["confirmed"]}
    assert confirmed | {u["cause"] for u in row["below_noise_floor"]} == {"cfg", "precision"}


def test_precision_fp16_is_named_under_strict_thresholds(tmp_path):
    # fp16 and fp32 renders of the tiny model differ by a few 8-bit levels (SSIM ~0.9996),
    # which the default thresholds call a match; strict thresholds expose the cause.
    sample = {**ALIGNED, "samples": [{"prompt": "[trigger] a quiet harbour"}]}
    folder = write_job(tmp_path, name="fp16", sample=sample, train_dtype="fp16")
    default = run(folder, tmp_path / "default")[0]
    assert default["verdict"] == "match"
    strict = Thresholds(ssim_min=0.99999, psnr_min=80.0, latent_distance_max=1e-6)
    row = run(folder, tmp_path / "strict", thresholds=strict, confirm_margin=0.0)[0]
    assert (row["causes"], row["explained"]) == (["precision"], True)


def test_unexplained_residual_is_reported_not_guessed(tmp_path):
    # A preview rendered from another prompt than the config says: no setting
    # difference explains it, so no cause may be named.
    sample = {**ALIGNED, "samples": [{"prompt": "[trigger] a yellow kite"}]}
    folder = write_job(
        tmp_path,
        name="residual",
        sample=sample,
        preview_transform=lambda s, sample: s.replace(
            prompt="an entirely different scene", seed=99
        ),
    )
    row = run(folder, tmp_path / "out")[0]
    assert row["verdict"] == "mismatch"
    assert row["causes"] == [] and row["explained"] is False
    assert "unexplained residual" in row["detail"]
