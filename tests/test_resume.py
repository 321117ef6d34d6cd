"""Nothing lost: a killed run keeps what it finished, ``--resume`` completes it exactly,
and concurrent runs appending to one history table lose no rows.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from parity.cli import main
from parity.testing.jobs import TINY_BASE, write_job

# Item 1 uses CFG, which ai-toolkit and the server apply differently: that preview is a
# mismatch with a confirmed cause, so attribution fields are compared too.
SAMPLE = {
    "width": 64,
    "height": 64,
    "seed": 1,
    "guidance_scale": 0,
    "sample_steps": 3,
    "samples": [
        {"prompt": "a red cube on a table"},
        {"prompt": "a dog in the garden", "guidance_scale": 3},
        {"prompt": "a green tree on a hill"},
    ],
}
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "CI": "1"}


@pytest.fixture(scope="module")
def jobs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("resume")
    big = write_job(root, name="job_a", sample=SAMPLE, checkpoints={10: {}, 20: {"seed": 1}})
    small = write_job(
        root, name="job_b", sample={**SAMPLE, "samples": SAMPLE["samples"][::2]}, checkpoints=None
    )
    return big, small


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "parity.cli", *args, "--base-model", str(TINY_BASE)]


def _rows(out: Path) -> list[dict]:
    return json.loads((out / "results.json").read_text(encoding="utf-8"))


def _start_and_kill(args: list[str], folder: Path, *, rows: int, timeout: float) -> int:
    """Start ``parity`` with ``args``, SIGKILL it once ``folder`` holds ``rows`` result rows
    (or after ``timeout`` s); the number of rows seen before the kill."""
    proc = subprocess.Popen(_cli(*args), env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + timeout
    seen = 0
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                seen = len(_rows(folder))
            except (FileNotFoundError, json.JSONDecodeError):
                seen = 0  # a half-written file would fail here: the callers' asserts catch it
            if seen >= rows:
                break
            time.sleep(0.01)
    finally:
        proc.send_signal(signal.SIGKILL)
        _, err = proc.communicate()
    assert proc.returncode == -signal.SIGKILL, err.decode()
    assert seen >= rows, f"the run never wrote {rows} rows: {err.decode()}"
    return seen


def test_killed_run_keeps_rows_and_resume_completes_it(jobs, tmp_path: Path, capsys) -> None:
    job, _ = jobs
    killed = tmp_path / "killed"
    _start_and_kill(
        ["run", str(job), "--no-history", "--out", str(killed)], killed, rows=2, timeout=120
    )

    # What the killed run left is valid JSON holding only finished rows.
    partial = _rows(killed)
    assert 2 <= len(partial) < 6
    assert all(r["verdict"] in ("match", "mismatch") for r in partial)
    assert all((killed / r["render"]).is_file() for r in partial)

    # Resume from the folder alone (the job path comes from run.json).
    rc = main(["run", "--resume", str(killed), "--base-model", str(TINY_BASE), "--no-history"])
    assert rc == 1  # item 1 is a mismatch
    resumed = _rows(killed)
    assert len(resumed) == 6
    # The finished rows were kept, not redone.
    by_key = {(r["step"], r["index"]): r for r in resumed}
    for row in partial:
        assert by_key[(row["step"], row["index"])]["ssim"] == row["ssim"]

    straight = tmp_path / "straight"
    rc = main(
        ["run", str(job), "--base-model", str(TINY_BASE), "--no-history", "--out", str(straight)]
    )
    capsys.readouterr()
    assert rc == 1
    expected = _rows(straight)
    assert [r["verdict"] for r in expected].count("mismatch") == 2
    assert all("cfg" in r["causes"] for r in expected if r["verdict"] == "mismatch")
    # Same out-dir depth, so even the relative paths agree: rows are identical.
    assert resumed == expected
    info = json.loads((killed / "run.json").read_text())
    assert info["finished"] and info["counts"] == {"match": 4, "mismatch": 2, "error": 0}
    assert (killed / "report.html").is_file()


def test_resume_of_a_finished_run_renders_nothing(jobs, tmp_path: Path, capsys) -> None:
    _, job = jobs
    out = tmp_path / "done"
    assert (
        main(["run", str(job), "--base-model", str(TINY_BASE), "--no-history", "--out", str(out)])
        == 0
    )
    before = _rows(out)
    stamps = {p: p.stat().st_mtime_ns for p in (out / "renders").rglob("*.png")}
    assert main(["run", "--resume", str(out), "--base-model", str(TINY_BASE), "--no-history"]) == 0
    capsys.readouterr()
    assert _rows(out) == before
    assert {p: p.stat().st_mtime_ns for p in (out / "renders").rglob("*.png")} == stamps


def test_concurrent_runs_share_one_history(jobs, tmp_path: Path) -> None:
    from parity.report.history import read_history

    history = tmp_path / "reports_tmp" / "history.parquet"
    procs = [
        subprocess.Popen(
            _cli(
                "run",
                str(job),
                "--no-attribution",
                "--history",
                str(history),
                "--out",
                str(tmp_path / job.name),
            ),
            env=ENV,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for job in jobs
    ]
    outputs = [p.communicate(timeout=300) for p in procs]
    for p, (_, err) in zip(procs, outputs, strict=True):
        assert p.returncode in (0, 1), err.decode()
        assert b"history not updated" not in err, err.decode()
    df = read_history(history)
    counts = df.groupby("job").size().to_dict()
    assert counts == {"job_a": 6, "job_b": 2}
    assert df["run_id"].nunique() == 2
    for job in jobs:
        rows = _rows(tmp_path / job.name)
        got = df[df["job"] == job.name].sort_values(["step", "index"])
        assert list(got["verdict"]) == [r["verdict"] for r in rows]


def test_killed_run_with_options_resumes_from_the_folder_alone(jobs, tmp_path: Path) -> None:
    """A run started with non-default options, killed, continues with ``--resume DIR``
    alone (run.json records every option) and ends exactly as an uninterrupted run."""
    job, _ = jobs
    request = tmp_path / "sent" / "request.json"
    request.parent.mkdir()
    prompts = [
        {"prompt": s["prompt"], "width": 64, "height": 64, "seed": 1, "sample_steps": 3}
        for s in SAMPLE["samples"]
    ]
    body = {"model": "zimage", "loras": [{"path": "job_a/job_a_000000020.safetensors"}]}
    request.write_text(json.dumps({**body, "prompts": prompts}), encoding="utf-8")
    options = [
        *("--steps", "10,20", "--request", str(request), "--server-diffusers", "0.38.0.dev0"),
        *("--ssim-min", "0.97", "--confirm-margin", "0.05", "--no-history", "--device", "cpu"),
    ]
    killed = tmp_path / "killed"
    _start_and_kill(["run", str(job), *options, "--out", str(killed)], killed, rows=2, timeout=180)
    assert 2 <= len(_rows(killed)) < 6

    assert main(["run", "--resume", str(killed)]) == 1  # nothing else given
    straight = tmp_path / "straight"
    base = ["--base-model", str(TINY_BASE)]
    assert main(["run", str(job), *options, *base, "--out", str(straight)]) == 1
    resumed, expected = _rows(killed), _rows(straight)
    assert resumed == expected
    # The options really were in force after the resume: the server's era (library on
    # every row), the request's step 20, the thresholds.
    assert all("library" in r["causes"] for r in resumed)
    assert {r["step"] for r in resumed if r["request"]} == {20}
    info = json.loads((killed / "run.json").read_text())
    assert info["options"] == json.loads((straight / "run.json").read_text())["options"]
    assert info["thresholds"]["ssim_min"] == 0.97 and info["confirm_margin"] == 0.05
    assert info["options"]["base_model"] == str(TINY_BASE)


def test_kept_files_are_links_or_copies_never_half_written(tmp_path: Path) -> None:
    from parity.results import link_or_copy

    source = tmp_path / "job" / "preview.jpg"
    source.parent.mkdir()
    source.write_bytes(b"\xff\xd8 preview bytes")
    linked = link_or_copy(source, tmp_path / "run" / "previews" / "10" / "preview.jpg")
    assert linked.stat().st_ino == source.stat().st_ino  # same filesystem: a hard link
    assert link_or_copy(source, linked) == linked  # kept as it is
    copied = link_or_copy(source, tmp_path / "run" / "requests" / "0.json", link=False)
    assert copied.read_bytes() == source.read_bytes()
    assert copied.stat().st_ino != source.stat().st_ino

    # Another filesystem (a CI artifact folder, a tmpfs): os.link fails, the file is copied.
    shm = Path("/dev/shm")
    if not shm.is_dir() or shm.stat().st_dev == tmp_path.stat().st_dev:
        pytest.skip("no second filesystem to copy across")
    elsewhere = Path(tempfile.mkdtemp(dir=shm))
    try:
        other = link_or_copy(source, elsewhere / "previews" / "preview.jpg")
        assert other.read_bytes() == source.read_bytes()
        assert other.stat().st_dev != source.stat().st_dev
        assert not list(other.parent.glob(".*.tmp"))  # no temporary file left behind
    finally:
        shutil.rmtree(elsewhere)
