"""Quantized previews (``model.quantize``): the ``precision`` cause, end to end.

The committed job ``fixtures/jobs/quantized`` (written by ``fixtures/jobs/make_jobs.py``)
was previewed with an optimum-quanto qfloat8 transformer and text encoder in fp32, as
ai-toolkit renders a ``quantize: true`` job; the server never quantizes. Sample 0
differs from the server by precision alone, sample 1 also by cfg, sample 2 also by LoRA
scale. Measured on the tiny model at 64x64, 4 steps (codec-matched SSIM of the
unquantized render with every other cause corrected): 0.954, 0.938, 0.951, all clearly
under the 0.98 match threshold.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from helpers import request_for
from PIL import Image

from parity.cli import main
from parity.testing.jobs import FIXTURES, TINY_BASE

JOB = FIXTURES / "jobs" / "quantized"
EXPECTED_CAUSES = {0: ["precision"], 1: ["cfg", "precision"], 2: ["lora_scale", "precision"]}


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("quantized-run") / "run"
    code = main(
        ["run", str(JOB), "--base-model", str(TINY_BASE), "--out", str(out), "--no-history"]
    )
    assert code == 1  # every preview is a mismatch: the server cannot quantize
    return out


@pytest.fixture(scope="module")
def rows(run_dir: Path) -> dict[int, dict]:
    data = json.loads((run_dir / "results.json").read_text(encoding="utf-8"))
    return {row["index"]: row for row in data}


def _counterfactual(row: dict, name: str) -> dict:
    return next(cf for cf in row["counterfactuals"] if cf["cause"] == name)


def test_job_is_a_quantized_fp32_job() -> None:
    from parity.job import read_job

    job = read_job(JOB)
    assert job.quantization.qtype == "qfloat8"
    assert job.quantization.qtype_te == "qfloat8"
    assert job.train_dtype == "fp32"
    assert not job.merged_lora  # ai-toolkit never merges a LoRA into a quantized model


@pytest.mark.parametrize("index", sorted(EXPECTED_CAUSES))
def test_run_names_precision_and_explains_completely(rows: dict[int, dict], index: int) -> None:
    row = rows[index]
    assert row["verdict"] == "mismatch"
    assert row["candidate_causes"] == EXPECTED_CAUSES[index]
    assert row["causes"] == EXPECTED_CAUSES[index]
    assert row["explained"] is True
    assert row["unexplained_residual"] is None
    assert _counterfactual(row, "all")["match"] is True


@pytest.mark.parametrize("index", sorted(EXPECTED_CAUSES))
def test_precision_counterfactual_really_quantizes(
    run_dir: Path, rows: dict[int, dict], index: int
) -> None:
    row = rows[index]
    everything = _counterfactual(row, "all")
    assert everything["settings"]["quantization"] == {"qtype": "qfloat8", "qtype_te": "qfloat8"}
    assert everything["settings"]["dtype"] == "float32"
    without = _counterfactual(row, "precision")
    assert without["settings"]["quantization"] == {"qtype": None, "qtype_te": None}
    # Leaving precision at the server's value is what breaks the match, clearly.
    assert without["match"] is False and without["confirmed"] is True
    assert without["ssim"] < 0.975
    a = np.asarray(Image.open(run_dir / everything["image"]).convert("RGB"), dtype=np.int16)
    b = np.asarray(Image.open(run_dir / without["image"]).convert("RGB"), dtype=np.int16)
    assert np.abs(a - b).max() > 10  # quantized and unquantized renders differ visibly


def test_corrected_request_says_quantized_previews_cannot_be_reproduced(
    run_dir: Path, rows: dict[int, dict]
) -> None:
    corrected = json.loads((run_dir / "corrected_requests" / "10.json").read_text("utf-8"))
    cannot = corrected["cannot_reproduce"]
    assert sorted(cannot) == ["0", "1", "2"]
    for index, row in rows.items():
        reasons = " ".join(cannot[str(index)])
        assert "quantized" in reasons and "qfloat8" in reasons
        # How close the unquantized render gets: the all-but-precision counterfactual.
        closest = f"SSIM {_counterfactual(row, 'precision')['ssim']:.4f}"
        assert closest in reasons
        assert "quantized" in row["corrected_request_note"]
        assert closest in row["corrected_request_note"]
    # No request reproduces them, but the closest ones fix everything a request can fix:
    # cfg and LoRA scale.
    assert corrected["placement"] == {}

    assert request_for(run_dir, 10, 1)[1]["guidance_scale"] == 3
    assert request_for(run_dir, 10, 2)[0]["loras"][0]["network_multiplier"] == 0.5


def test_preview_command_reproduces_committed_previews(tmp_path: Path, float_noise) -> None:
    """The committed previews were rendered on another machine: within float noise."""
    out = tmp_path / "previews"
    code = main(["preview", str(JOB), "--base-model", str(TINY_BASE), "--out", str(out)])
    assert code == 0
    assert float_noise.check_job_previews(JOB, out) == 3
    effective = json.loads((out / "effective.json").read_text(encoding="utf-8"))
    for entry in effective:
        assert entry["settings"]["quantization"] == {"qtype": "qfloat8", "qtype_te": "qfloat8"}
