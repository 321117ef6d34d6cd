"""Exit status and messages: 2 with one line when a run cannot happen, files readable.

Exit status 1 means "a preview does not match" to CI; a run that cannot happen at all (a
model that cannot be loaded, a request whose LoRA is missing, a resumed run whose model
is gone) must say 2 and one line naming the thing and the fix, without a traceback unless
``-v`` asks for it.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from parity.cli import main
from parity.testing.jobs import FIXTURES, TINY_BASE, write_job

SAMPLE = {
    "width": 64,
    "height": 64,
    "seed": 1,
    "guidance_scale": 0,
    "sample_steps": 2,
    "samples": [{"prompt": "a red cube on a table"}, {"prompt": "a dog in the garden"}],
}
# Offline, no model map from the environment or a pyproject.toml (cwd is a tmp folder).
ENV = {
    **{k: v for k, v in os.environ.items() if k != "PARITY_MODEL_MAP"},
    "HF_HUB_OFFLINE": "1",
    "OMP_NUM_THREADS": "1",
    "CI": "1",
}


@pytest.fixture(scope="module")
def job(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("exit-codes")
    return write_job(root, name="exit_job", sample=SAMPLE, checkpoints={10: {}})


def _parity(
    cwd: Path, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "parity.cli", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env or ENV,
        timeout=300,
    )


def _one_line_error(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == 2, (proc.returncode, proc.stderr)
    errors = [line for line in proc.stderr.splitlines() if line.startswith("parity: error:")]
    assert len(errors) == 1, proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    return errors[0]


def test_model_that_cannot_load_offline_is_exit_2(job: Path, tmp_path: Path) -> None:
    # The job names Tongyi-MAI/Z-Image and nothing maps it: offline, it cannot load.
    proc = _parity(tmp_path, "run", str(job), "--no-history", "--out", str(tmp_path / "out"))
    line = _one_line_error(proc)
    assert "Tongyi-MAI/Z-Image" in line and "--base-model" in line and "offline" in line
    # Nothing was rendered, so no run folder was left half written.
    assert not (tmp_path / "out").exists()


def test_verbose_after_the_subcommand_shows_the_traceback(job: Path, tmp_path: Path) -> None:
    proc = _parity(tmp_path, "run", str(job), "--no-history", "-v")
    assert proc.returncode == 2
    assert "Traceback" in proc.stderr and "parity: error:" in proc.stderr


def _request(folder: Path, lora: str) -> Path:
    path = folder / "request.json"
    body = {
        "model": "zimage",
        "loras": [{"path": lora}],
        "prompts": [{"prompt": "a red cube", "width": 64, "height": 64, "sample_steps": 2}],
    }
    path.write_text(json.dumps(body), encoding="utf-8")
    return path


def test_missing_request_lora_is_exit_2_before_the_model_loads(tmp_path: Path) -> None:
    # A checkpoint folder whose weights are garbage: loading it would fail with another
    # message, so naming the LoRA proves the LoRA was checked first.
    broken = tmp_path / "broken-model"
    for part in ("transformer", "vae", "text_encoder", "tokenizer", "scheduler"):
        (broken / part).mkdir(parents=True)
        for item in (TINY_BASE / part).iterdir():
            target = broken / part / item.name
            if item.suffix == ".safetensors":
                target.write_bytes(b"not weights")
            else:
                target.write_bytes(item.read_bytes())
    (broken / "model_index.json").write_bytes((TINY_BASE / "model_index.json").read_bytes())
    request = _request(tmp_path, "missing_lora.safetensors")
    proc = _parity(
        tmp_path, "render", str(request), "--base-model", str(broken), "--out", str(tmp_path / "o")
    )
    line = _one_line_error(proc)
    assert "missing_lora.safetensors" in line and "not found" in line


def test_resume_of_a_run_whose_model_is_gone_is_exit_2(job: Path, tmp_path: Path) -> None:
    """The run was started with its model mapped by PARITY_MODEL_MAP; the resume has no
    map (and no --base-model), so its model cannot be loaded offline."""
    out = tmp_path / "run"
    mapped = {**ENV, "PARITY_MODEL_MAP": f"Tongyi-MAI/Z-Image={TINY_BASE}"}
    first = _parity(tmp_path, "run", str(job), "--no-history", "--out", str(out), env=mapped)
    assert first.returncode == 0, first.stderr
    proc = _parity(tmp_path, "run", "--resume", str(out))
    line = _one_line_error(proc)
    assert "Tongyi-MAI/Z-Image" in line and "--base-model" in line


def test_resume_reuses_the_recorded_options(job: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "run"
    args = ["run", str(job), "--base-model", str(TINY_BASE), "--no-history", "--out", str(out)]
    assert main([*args, "--no-attribution", "--ssim-min", "0.9"]) == 0
    info = json.loads((out / "run.json").read_text(encoding="utf-8"))
    assert info["options"]["base_model"] == str(TINY_BASE)
    assert info["options"]["ssim_min"] == 0.9 and info["options"]["no_attribution"] is True
    rows = json.loads((out / "results.json").read_text(encoding="utf-8"))
    (out / "results.json").write_text(json.dumps(rows[:1]), encoding="utf-8")
    capsys.readouterr()
    assert main(["run", "--resume", str(out)]) == 0  # no --base-model: taken from run.json
    again = json.loads((out / "results.json").read_text(encoding="utf-8"))
    assert again == rows
    info = json.loads((out / "run.json").read_text(encoding="utf-8"))
    assert info["thresholds"]["ssim_min"] == 0.9 and info["attribution"] is False


def test_run_records_the_stack(job: Path, tmp_path: Path) -> None:
    from parity.stack import PIXEL_LIBRARIES

    out = tmp_path / "run"
    assert (
        main(["run", str(job), "--base-model", str(TINY_BASE), "--no-history", "--out", str(out)])
        == 0
    )
    stack = json.loads((out / "run.json").read_text(encoding="utf-8"))["stack"]
    assert set(stack["libraries"]) == set(PIXEL_LIBRARIES)
    assert stack["libraries"]["diffusers"].startswith("0.")
    assert isinstance(stack["differs_from_pins"], list)


def test_output_files_follow_the_umask(job: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    history = tmp_path / "history.parquet"
    old = os.umask(0o022)
    try:
        args = ["run", str(job), "--base-model", str(TINY_BASE), "--out", str(out)]
        assert main([*args, "--history", str(history)]) == 0
    finally:
        os.umask(old)
    files = [p for p in out.rglob("*") if p.is_file()] + [history]
    assert any(p.name == "report.html" for p in files) and len(files) > 5
    for path in files:
        assert stat.S_IMODE(path.stat().st_mode) == 0o644, path


def test_a_run_on_another_stack_says_so_in_one_line(job: Path, tmp_path: Path, capsys, monkeypatch):
    from parity import stack

    pins = {**stack.pinned_versions(), "diffusers": "0.0.1"}
    monkeypatch.setattr(stack, "pinned_versions", lambda: pins)
    args = ["run", str(job), "--base-model", str(TINY_BASE), "--no-history"]
    assert main([*args, "--out", str(tmp_path / "run")]) == 0
    lines = [x for x in capsys.readouterr().err.splitlines() if "differs from parity's pins" in x]
    assert len(lines) == 1 and "diffusers" in lines[0] and "pinned 0.0.1" in lines[0]
    info = json.loads((tmp_path / "run" / "run.json").read_text(encoding="utf-8"))
    assert any(d.startswith("diffusers ") for d in info["stack"]["differs_from_pins"])


@pytest.mark.parametrize("arch", ["wan22_5b", "wan21_i2v", "wan22_14b_i2v"])
def test_a_job_of_a_family_parity_does_not_know_is_exit_2(tmp_path: Path, arch: str) -> None:
    """The real FLUX.1 job's config with an arch ai-toolkit has and parity does not (Wan
    image-to-video and Wan 2.2 5B, where the server runs ai-toolkit's own pipeline code):
    one line that names the families parity knows, before any model loads and before
    anything is written."""
    job = tmp_path / "wan_job"
    job.mkdir()
    config = (FIXTURES / "aitk_flux" / "output" / "aitk_flux" / "config.yaml").read_text()
    (job / "config.yaml").write_text(config.replace("arch: flux", f"arch: {arch}"))
    out = tmp_path / "out"
    proc = _parity(tmp_path, "run", str(job), "--no-history", "--out", str(out))
    line = _one_line_error(proc)
    assert f"model.arch is '{arch}'" in line and str(job / "config.yaml") in line
    assert "zimage, zimage:turbo, zimage:deturbo" in line and "flux" in line
    assert "Wan 2.1: wan21" in line and "wan22_14b (text to video)" in line
    assert not out.exists()
