"""The pytest plugin, run as users run it: pytest in a subprocess with --parity-job."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from parity.results import read_results
from parity.testing.jobs import (
    AITK_REAL_BASE,
    AITK_REAL_CAUSES,
    AITK_REAL_JOB,
    TINY_BASE,
    write_job,
)

SAMPLE = {
    "width": 64,
    "height": 64,
    "seed": 1,
    "guidance_scale": 0,
    "sample_steps": 3,
    "samples": [{"prompt": "[trigger] a cat"}, {"prompt": "a dog"}],
}


def _seed_of_second(settings, sample):
    """The second preview was rendered with another seed: a mismatch no setting explains."""
    return dataclasses.replace(settings, seed=settings.seed + 1) if sample.index == 1 else settings


@pytest.fixture(scope="module")
def tiny_jobs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("jobs")
    job_a = write_job(root, name="job_a", sample=SAMPLE, preview_transform=_seed_of_second)
    job_b = root / "job_b"
    shutil.copytree(job_a, job_b)
    config = (job_b / "config.yaml").read_text(encoding="utf-8")
    (job_b / "config.yaml").write_text(config.replace("job_a", "job_b"), encoding="utf-8")
    for path in job_b.glob("job_a*.safetensors"):
        path.rename(job_b / path.name.replace("job_a", "job_b"))
    return {"job_a": job_a, "job_b": job_b}


def _copy(job: Path, dest: Path) -> Path:
    shutil.copytree(job, dest / job.name)
    return dest / job.name


def run_pytest(
    cwd: Path, *args: str, pyproject: str = ""
) -> tuple[subprocess.CompletedProcess, dict]:
    """Run pytest in ``cwd`` (its own rootdir); return the process and junit cases by id."""
    (cwd / "pyproject.toml").write_text("[tool.pytest.ini_options]\n" + pyproject, encoding="utf-8")
    junit = cwd / "junit.xml"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONDONTWRITEBYTECODE": "1"}
    env.pop("PYTEST_ADDOPTS", None)
    env.pop("PYTEST_XDIST_WORKER", None)
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-p", "no:randomly"]
        + ["-rs", f"--junitxml={junit}", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    cases = {}
    if junit.exists():
        for tc in ET.parse(junit).getroot().iter("testcase"):
            props = {p.get("name"): p.get("value") for p in tc.iter("property")}
            failure = tc.find("failure")
            skipped = tc.find("skipped")
            outcome = (
                "failed" if failure is not None else "skipped" if skipped is not None else "passed"
            )
            text = "" if failure is None else (failure.get("message", "") + (failure.text or ""))
            name = tc.get("name").split("@")[0]
            cases[f"{tc.get('classname').replace('.', '::')}::{name}"] = {
                "outcome": outcome,
                "props": props,
                "text": text,
                "skip": "" if skipped is None else skipped.get("message", ""),
            }
    return proc, cases


def test_real_job_items_follow_the_library_verdicts(tmp_path: Path) -> None:
    job = _copy(AITK_REAL_JOB, tmp_path)
    proc, cases = run_pytest(
        tmp_path,
        f"--parity-job={job}",
        f"--parity-base-model={AITK_REAL_BASE}",
        "--parity-steps=20",
    )
    out = proc.stdout + proc.stderr
    assert sorted(cases) == [f"aitk_zimage::step20::{i}" for i in range(5)], out
    run_dirs = {c["props"]["run_dir"] for c in cases.values()}
    assert len(run_dirs) == 1
    run_dir = Path(run_dirs.pop())
    assert run_dir.parent == tmp_path / "reports" / "pytest" / "aitk_zimage"
    assert run_dir.name.startswith("main-")
    rows = {(r.step, r.index): r for r in read_results(run_dir)}
    assert set(rows) == {(20, i) for i in range(5)}
    for i in range(5):
        case, row = cases[f"aitk_zimage::step20::{i}"], rows[(20, i)]
        # The known verdicts of the real job (derived from its config, not from parity).
        expected = AITK_REAL_CAUSES[20][i]
        assert case["outcome"] == ("failed" if expected else "passed"), case
        assert case["props"]["verdict"] == ("mismatch" if expected else "match")
        assert case["props"]["causes"] == ";".join(expected)
        assert case["props"]["verdict"] == row.verdict
        assert float(case["props"]["ssim"]) == pytest.approx(row.ssim, rel=1e-5)
        assert case["props"]["causes"] == ";".join(row.causes)
        # Every cause is reported, confirmed or below the noise floor (fp32: confirmed).
        below = {str(u.cause) for u in row.below_noise_floor}
        assert case["props"]["below_noise_floor"] == ";".join(sorted(below))
        assert {c.name for c in row.counterfactuals if c.confirmed} | below == set(expected)
        assert {"psnr", "latent_distance", "explained"} <= set(case["props"])
        if row.verdict == "match":
            continue
        text = case["text"]
        assert row.verdict.upper() in text
        for cause in row.causes:
            assert cause in text
        assert ("explained" if row.explained else "unexplained") in text
        assert "SSIM" in text and "PSNR" in text and "latent" in text
        for rel in (row.preview, row.render):
            path = (run_dir / rel).resolve()
            assert str(path) in text and path.is_file()
        assert str(run_dir / "report.html") in text
    assert (run_dir / "report.html").is_file()
    counts = {v: sum(r.verdict == v for r in rows.values()) for v in ("match", "mismatch")}
    assert f"aitk_zimage: {counts['match']} match, {counts['mismatch']} mismatch" in proc.stdout


def test_xdist_keeps_a_job_on_one_worker_and_summarizes_every_job(
    tiny_jobs: dict[str, Path], tmp_path: Path
) -> None:
    proc, cases = run_pytest(
        tmp_path,
        "-n",
        "2",
        f"--parity-job={tiny_jobs['job_a']}",
        f"--parity-job={tiny_jobs['job_b']}",
        f"--parity-base-model={TINY_BASE}",
        "--parity-no-attribution",
    )
    out = proc.stdout + proc.stderr
    expected = {f"{j}::step10::{i}" for j in ("job_a", "job_b") for i in (0, 1)}
    assert set(cases) == expected, out
    for job in ("job_a", "job_b"):
        mine = [c for key, c in cases.items() if key.startswith(job)]
        workers = {c["props"]["worker"] for c in mine}
        assert len(workers) == 1 and workers.pop().startswith("gw"), mine
        assert len({c["props"]["run_dir"] for c in mine}) == 1
        verdicts = [c["props"]["verdict"] for c in mine]
        line = next(line for line in proc.stdout.splitlines() if line.startswith(f"{job}:"))
        for verdict in set(verdicts):
            assert f"{verdicts.count(verdict)} {verdict}" in line, line
        assert "(2 previews)" in line
        assert mine[0]["props"]["run_dir"] in proc.stdout


def test_generate_mode_then_reference_drift(tiny_jobs: dict[str, Path], tmp_path: Path) -> None:
    job = _copy(tiny_jobs["job_a"], tmp_path)
    common = [f"--parity-job={job}", f"--parity-base-model={TINY_BASE}", "--parity-no-attribution"]
    proc, cases = run_pytest(tmp_path, *common, "--parity-generate")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    baselines = [job / "parity-baseline" / "job_a" / "step10" / f"{i}.png" for i in (0, 1)]
    for i, baseline in enumerate(baselines):
        assert baseline.is_file()
        case = cases[f"job_a::step10::{i}"]
        assert case["outcome"] == "passed" and case["props"]["baseline"] == str(baseline)

    rgb = np.asarray(Image.open(baselines[0]).convert("RGB")).copy()
    rgb[: rgb.shape[0] // 2] = 255 - rgb[: rgb.shape[0] // 2]
    Image.fromarray(rgb).save(baselines[0])
    # Thresholds, highest first: flags > the job's parity.toml > [tool.parity] (strict here).
    (job / "parity.toml").write_text("latent_distance_max = 2.0\n", encoding="utf-8")
    strict = "\n[tool.parity]\nssim_min = 0.9999\npsnr_min = 99.0\nlatent_distance_max = 0.0\n"
    flags = ["--parity-ssim-min=0", "--parity-psnr-min=0"]
    proc, cases = run_pytest(tmp_path, *common, *flags, pyproject=strict)
    drifted, other = cases["job_a::step10::0"], cases["job_a::step10::1"]
    run_dir = Path(drifted["props"]["run_dir"])
    info = json.loads((run_dir / "run.json").read_text(encoding="utf-8"))
    assert info["thresholds"] == {"ssim_min": 0.0, "psnr_min": 0.0, "latent_distance_max": 2.0}
    assert drifted["outcome"] == "failed" and "reference drift" in drifted["text"]
    assert str(baselines[0]) in drifted["text"]
    assert drifted["props"]["verdict"] == "match"  # the preview itself still matches
    # The seed-shifted preview passes with these limits, and its untouched baseline
    # still matches its render.
    assert float(other["props"]["ssim"]) < 0.9 and other["props"]["verdict"] == "match"
    assert other["outcome"] == "passed" and "drift_ssim" not in other["props"]


def test_gpu_job_is_marked_and_skipped_without_cuda(
    tiny_jobs: dict[str, Path], tmp_path: Path
) -> None:
    job = _copy(tiny_jobs["job_a"], tmp_path)
    (job / "parity.toml").write_text('device = "cuda"\n', encoding="utf-8")
    args = [f"--parity-job={job}", f"--parity-base-model={TINY_BASE}"]
    proc, cases = run_pytest(tmp_path, *args, "-m", "not gpu")
    assert "2 deselected" in proc.stdout and not cases, proc.stdout
    import torch

    if torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    proc, cases = run_pytest(tmp_path, *args, "-m", "gpu and parity")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert [c["outcome"] for c in cases.values()] == ["skipped", "skipped"]
    assert all("CUDA is unavailable" in c["skip"] for c in cases.values())
    assert not (tmp_path / "reports").exists()  # nothing was rendered


def test_fixtures_and_thresholds_precedence(tiny_jobs: dict[str, Path], tmp_path: Path) -> None:
    # parity_thresholds: flag > ini option > [tool.parity] > default.
    (tmp_path / "test_t.py").write_text(
        f"""
from pathlib import Path

def test_thresholds(parity_thresholds):
    print('T', parity_thresholds)

def test_factories(parity_engine, parity_job):
    engine = parity_engine({str(TINY_BASE)!r}, device="cpu")
    assert engine is parity_engine(Path({str(TINY_BASE)!r}), device="cpu")
    assert engine.device == "cpu" and engine.renders == 0  # nothing loaded yet
    assert parity_job({str(tiny_jobs["job_a"])!r}).steps == [10]
""",
        encoding="utf-8",
    )
    strict = "\n[tool.parity]\nssim_min = 0.9999\npsnr_min = 99.0\nlatent_distance_max = 0.0\n"
    ini = 'parity_ssim_min = "0.7"\nparity_psnr_min = "30"\n'
    proc, cases = run_pytest(
        tmp_path, "-s", "test_t.py", "--parity-ssim-min=0.5", pyproject=ini + strict
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "ssim_min=0.5, psnr_min=30.0, latent_distance_max=0.0)" in proc.stdout, proc.stdout


def test_unusable_job_is_a_collection_error_naming_it(
    tiny_jobs: dict[str, Path], tmp_path: Path
) -> None:
    empty = tmp_path / "not_a_job"
    empty.mkdir()
    proc, _ = run_pytest(
        tmp_path, f"--parity-job={empty}", f"--parity-job={tiny_jobs['job_a']}", "--parity-steps=99"
    )
    assert proc.returncode != 0
    assert "ERROR collecting not_a_job" in proc.stdout and str(empty) in proc.stdout
    assert "ERROR collecting job_a" in proc.stdout and "[99]" in proc.stdout


def test_a_request_applies_to_the_job_whose_checkpoint_it_names(
    tiny_jobs: dict[str, Path], tmp_path: Path
) -> None:
    jobs = tmp_path / "training"
    job_a, job_b = _copy(tiny_jobs["job_a"], jobs), _copy(tiny_jobs["job_b"], jobs)
    # job_b's checkpoint, one prompt, sent with seed 5 where the preview used seed 1.
    body = {
        "model": "zimage",
        "trigger_word": "sks",
        "loras": [{"path": "job_b/job_b_000000010.safetensors"}],
        "prompts": [{"prompt": "[trigger] a cat", "width": 64, "height": 64, "seed": 5,
                     "sample_steps": 3, "guidance_scale": 0}],
    }  # fmt: skip
    request = tmp_path / "request.json"
    request.write_text(json.dumps(body), encoding="utf-8")
    common = [f"--parity-job={job_a}", f"--parity-job={job_b}", f"--parity-base-model={TINY_BASE}"]
    proc, cases = run_pytest(tmp_path, *common, f"--parity-request={request}")
    out = proc.stdout + proc.stderr
    assert cases["job_a::step10::0"]["outcome"] == "passed", out  # as configured
    assert cases["job_b::step10::0"]["props"]["causes"] == "seed", out  # from the request
    assert "MISMATCH" in cases["job_b::step10::0"]["text"]
    assert "no prompt 1 in" in cases["job_b::step10::1"]["text"]  # preview without prompt
    # A request whose LoRA no collected job has stops the session with one message.
    body["loras"] = [{"path": "job_c/job_c_000000010.safetensors"}]
    request.write_text(json.dumps(body), encoding="utf-8")
    proc, _ = run_pytest(tmp_path, *common, f"--parity-request={request}")
    assert proc.returncode == 4
    assert "names no checkpoint of the collected jobs (job_a, job_b)" in proc.stderr
    # --parity-lora-root: the server's own workflows folder, holding a copy of job_b's
    # checkpoint as job_b/<file>, is where the request's path resolves.
    workflows = tmp_path / "workflows"
    (workflows / "job_b").mkdir(parents=True)
    shutil.copy(job_b / "job_b_000000010.safetensors", workflows / "job_b")
    body["loras"] = [{"path": "job_b/job_b_000000010.safetensors"}]
    request.write_text(json.dumps(body), encoding="utf-8")
    proc, cases = run_pytest(
        tmp_path, *common, f"--parity-request={request}", f"--parity-lora-root={workflows}"
    )
    assert cases["job_b::step10::0"]["props"]["causes"] == "seed", proc.stdout + proc.stderr
    run_dir = Path(cases["job_b::step10::0"]["props"]["run_dir"])
    info = json.loads((run_dir / "run.json").read_text(encoding="utf-8"))
    assert info["requests"][0]["lora_resolved"] == str(
        workflows / "job_b" / "job_b_000000010.safetensors"
    )


def test_xdist_worker_n_takes_gpu_n_mod_count() -> None:
    from parity.pytest_plugin import xdist_device

    # Unset or plain "cuda" with several GPUs: worker gwN on cuda:(N mod count).
    assert [xdist_device(f"gw{n}", None, 3) for n in range(5)] == [
        "cuda:0",
        "cuda:1",
        "cuda:2",
        "cuda:0",
        "cuda:1",
    ]
    assert xdist_device("gw3", "cuda", 2) == "cuda:1"
    # An explicit device, one GPU or none, or no xdist: left as configured.
    assert xdist_device("gw3", "cuda:0", 2) == "cuda:0"
    assert xdist_device("gw3", "cpu", 2) == "cpu"
    assert xdist_device("gw3", None, 1) is None
    assert xdist_device("gw3", "cuda", 0) == "cuda"
    assert xdist_device("main", None, 4) is None


def test_plugin_spreads_xdist_workers_over_the_gpus(
    tiny_jobs: dict[str, Path], tmp_path: Path
) -> None:
    # This machine has no GPU: the session's conftest says torch sees two. Each worker then
    # asks for its own GPU, which fails to load here; the device it chose is recorded.
    (tmp_path / "conftest.py").write_text(
        "import parity.pytest_plugin as plugin\nplugin.cuda_device_count = lambda: 2\n",
        encoding="utf-8",
    )
    proc, cases = run_pytest(
        tmp_path,
        "-n",
        "2",
        f"--parity-job={tiny_jobs['job_a']}",
        f"--parity-job={tiny_jobs['job_b']}",
        f"--parity-base-model={TINY_BASE}",
        "--parity-no-attribution",
    )
    assert len(cases) == 4, proc.stdout + proc.stderr
    for case in cases.values():
        worker, device = case["props"]["worker"], case["props"]["device"]
        assert device == f"cuda:{int(worker.removeprefix('gw')) % 2}", case
        assert case["outcome"] == "failed" and "could not run job" in case["text"]


def test_a_request_of_a_step_parity_steps_leaves_out_is_a_collection_error(
    tmp_path: Path,
) -> None:
    from helpers import REQUEST

    from parity.testing.jobs import AITK_REAL_BASE, AITK_REAL_JOB

    request = tmp_path / "request.json"
    request.write_text(json.dumps(REQUEST), encoding="utf-8")
    proc, cases = run_pytest(
        tmp_path,
        f"--parity-job={AITK_REAL_JOB}",
        f"--parity-base-model={AITK_REAL_BASE}",
        f"--parity-request={request}",
        f"--parity-lora-root={AITK_REAL_JOB.parent}",
        "--parity-steps=20",
    )
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "ERROR collecting aitk_zimage" in proc.stdout
    assert "names the checkpoint of step 10, which --steps leaves out (20)" in proc.stdout
    assert not any(name.startswith("aitk_zimage::step") for name in cases)
