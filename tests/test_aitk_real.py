"""The real ai-toolkit job: parity reproduces its previews and explains every mismatch.

Expected values come from the job's config.yaml read with ai-toolkit's rules (see the
comments), never from parity's own output.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from parity.cli import main
from parity.compare import inspect_codec, load_rgb
from parity.job import read_job
from parity.testing.jobs import AITK_REAL_BASE, AITK_REAL_CAUSES, AITK_REAL_JOB

EXPECTED = AITK_REAL_CAUSES


@pytest.fixture(scope="module")
def previews(tmp_path_factory):
    out = tmp_path_factory.mktemp("preview")
    status = main(
        [
            "preview",
            str(AITK_REAL_JOB),
            "--base-model",
            str(AITK_REAL_BASE),
            "--device",
            "cpu",
            "--out",
            str(out),
        ]
    )
    assert status == 0
    return out


def test_preview_reproduces_every_stored_preview(previews, float_noise):
    """ai-toolkit rendered these on another machine: the same within float noise.

    ai-toolkit saved each preview with ``image.save(path)`` (Pillow's JPEG defaults), so
    the render is encoded that way and compared with the file within the codec's spread.
    """
    job = read_job(AITK_REAL_JOB)
    assert len(job.previews) == 15
    for preview in job.previews:
        render = load_rgb(previews / str(preview.step) / f"{preview.index}.png")
        codec = inspect_codec(preview.path)
        assert (codec.format, codec.subsampling) == ("JPEG", "4:2:0")
        float_noise.check(preview.path.name, load_rgb(preview.path), render, codec=codec)


def test_effective_settings_are_recorded(previews):
    effective = json.loads((previews / "effective.json").read_text())
    item4 = next(e for e in effective if e["step"] == 20 and e["index"] == 4)
    assert (item4["settings"]["width"], item4["settings"]["height"]) == (96, 80)
    assert item4["settings"]["pipeline_guidance"] == 1.5
    assert item4["settings"]["negative_prompt"] == "blurry"


@pytest.fixture(scope="module")
def run_rows(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    status = main(
        [
            "run",
            str(AITK_REAL_JOB),
            "--base-model",
            str(AITK_REAL_BASE),
            "--device",
            "cpu",
            "--out",
            str(out),
            "--no-history",
        ]
    )
    assert status == 1  # there are mismatches
    return out, json.loads((out / "results.json").read_text())


def test_every_preview_gets_a_verdict_and_every_mismatch_is_explained(run_rows):
    _, rows = run_rows
    assert len(rows) == 15
    for row in rows:
        assert row["verdict"] in ("match", "mismatch"), row["detail"]
        if row["verdict"] == "mismatch":
            assert row["explained"] is True, (row["step"], row["index"], row["detail"])


def test_causes_follow_from_the_config(run_rows):
    _, rows = run_rows
    for row in rows:
        expected = EXPECTED[row["step"]][row["index"]]
        assert row["causes"] == expected, (row["step"], row["index"])
        assert row["verdict"] == ("match" if not expected else "mismatch")
        # Every cause is confirmed or listed below the noise floor, never missing.
        confirmed = {c["cause"] for c in row["counterfactuals"] if c["confirmed"]}
        assert confirmed | {u["cause"] for u in row["below_noise_floor"]} == set(expected)


def test_float32_rows_need_no_noise_floor(run_rows):
    """fp32 on both sides: exact matches and mismatches far from the thresholds measure
    none (the floor only widens the rule, and fp32 floors are within a level)."""
    _, rows = run_rows
    assert all(row["noise_floor"] is None for row in rows)


def test_run_folder_contents(run_rows):
    out, rows = run_rows
    header = (out / "results.csv").read_text().splitlines()[0]
    # The original columns, in order, then the ones added since (never renamed or removed).
    assert header == (
        "job,step,index,preview,render,width_preview,height_preview,width_render,height_render,"
        "ssim,psnr,ms_ssim,latent_distance,lpips,verdict,causes,explained,detail,"
        "below_noise_floor,noise_floor_max_abs_diff,noise_floor_mean_abs_diff,noise_floor_ssim,"
        "noise_floor_psnr,worst_frame"
    )
    for row in rows:
        assert (out / row["render"]).is_file()
        # The run keeps the preview it compared: the same bytes as the job's file.
        kept, source = out / row["preview"], Path(row["preview_source"])
        assert kept.is_relative_to(out / "previews") and kept.read_bytes() == source.read_bytes()
    for step in (0, 10, 20):
        corrected = json.loads((out / "corrected_requests" / f"{step}.json").read_text())
        first = json.loads((out / "corrected_requests" / f"{step}" / "0.json").read_text())
        assert first["model"] == "zimage"
        # Step 0 has no LoRA of its own: the earliest checkpoint stands in at scale 0.
        lora = "aitk_zimage/aitk_zimage_000000010.safetensors" if step < 20 else None
        assert first["loras"][0]["path"] == (lora or "aitk_zimage/aitk_zimage.safetensors")
        # Sample 1 (80x112) and 4 (96x80) cannot be reproduced by the server.
        assert set(corrected["cannot_reproduce"]) == {"1", "4"}
        assert set(corrected["placement"]) == {"0", "2", "3"}
    assert (out / "report.html").is_file()
    row = next(r for r in rows if (r["step"], r["index"]) == (20, 1))
    assert (row["width_preview"], row["height_preview"]) == (80, 112)
    assert (row["width_render"], row["height_render"]) == (64, 96)


def test_explain_labels_the_jpeg_floor_and_the_counterfactuals(tmp_path, capsys):
    common = ["--base-model", str(AITK_REAL_BASE), "--device", "cpu"]
    # Preview 3 of step 20 is reproduced exactly (see AITK_REAL_CAUSES).
    main(["explain", str(AITK_REAL_JOB), "--step", "20", "--index", "3", *common,
          "--out", str(tmp_path / "match")])  # fmt: skip
    out = capsys.readouterr().out
    assert "reference render vs preview: SSIM 1.0000" in out
    assert "an exact reproduction scores SSIM 1.0000" in out
    floor = re.search(r"best possible SSIM against this JPEG preview \(a perfect "
                      r"reproduction\): (0\.\d{4})", out)  # fmt: skip
    lossless = re.search(r"the lossless render scores SSIM (0\.\d{4})", out)
    assert floor and lossless and floor[1] == lossless[1]  # exact: it sits on the floor
    assert "JPEG floor" not in out
    # Preview 4 of step 20: cfg and snapping.
    status = main(["explain", str(AITK_REAL_JOB), "--step", "20", "--index", "4", *common,
                   "--out", str(tmp_path / "mismatch")])  # fmt: skip
    out = capsys.readouterr().out
    assert status == 1
    lines = {line.split()[0] + " " + line.split()[1]: line for line in out.splitlines()
             if line.startswith("  all ")}  # fmt: skip
    assert "CONFIRMED" not in lines["all causes"] and "not confirmed" not in lines["all causes"]
    assert "all but cfg" in out and "all but snapping" in out
    assert "CONFIRMED cause" in lines["all but"]
    assert "closest request:" in out and "the server cannot reproduce this preview" in out
