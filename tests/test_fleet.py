"""Many jobs in one run (parity.fleet): in-process, local worker processes and Ray actors.

Every fleet row is compared with the row of running its job alone, field by field. The run
folders sit at the same depth, so even the relative preview paths must agree; renders are
bit-identical within one machine at one torch thread.
"""

from __future__ import annotations

import importlib.util
import ipaddress
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from parity.cli import main
from parity.testing.jobs import TINY_BASE, write_job

RAY = importlib.util.find_spec("ray") is not None
requires_ray = pytest.mark.skipif(
    not RAY,
    reason="Ray is not installed; it is the optional extra parity[ray]: "
    "pip install -c parity/constraints.txt -e '.[test,ray]'",
)

# Item 1 uses CFG, which ai-toolkit and the server apply differently: a mismatch whose
# attribution renders counterfactuals, so those images travel back from the workers too.
SAMPLE = {
    "width": 64,
    "height": 64,
    "seed": 1,
    "guidance_scale": 0,
    "sample_steps": 2,
    "samples": [{"prompt": "a red cube on a table"}, {"prompt": "a dog", "guidance_scale": 3}],
}
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "CI": "1"}
COMMON = ["--base-model", str(TINY_BASE), "--threads", "1"]


@pytest.fixture(scope="module")
def jobs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Three jobs on the tiny model; job_c is the long one (2 checkpoints x 3 samples)."""
    root = tmp_path_factory.mktemp("fleet")
    three = {**SAMPLE, "samples": [*SAMPLE["samples"], {"prompt": "a green tree on a hill"}]}
    return {
        "job_a": write_job(root / "jobs", name="job_a", sample=SAMPLE),
        "job_b": write_job(root / "jobs", name="job_b", sample={**SAMPLE, "seed": 7}),
        "job_c": write_job(
            root / "jobs", name="job_c", sample=three, checkpoints={10: {}, 20: {"seed": 2}}
        ),
    }


@pytest.fixture(scope="module")
def alone(jobs: dict[str, Path]) -> dict[str, list[dict]]:
    """Each job run alone (``parity run JOB``), rows by job name."""
    rows = {}
    for name, job in jobs.items():
        out = job.parent.parent / "alone" / name
        code = main(["run", str(job), "--out", str(out), "--no-history", *COMMON])
        assert code == 1  # the CFG item is a mismatch
        rows[name] = _rows(out)
    return rows


def _rows(folder: Path) -> list[dict]:
    return json.loads((folder / "results.json").read_text(encoding="utf-8"))


def _summary(folder: Path) -> dict:
    return json.loads((folder / "summary.json").read_text(encoding="utf-8"))


def _parity(*args: str, env: dict | None = None, **kwargs) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "parity.cli", "run", *args, *COMMON],
        env=env or ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **kwargs,
    )


def _assert_same_rows(out: Path, alone: dict[str, list[dict]], names=None) -> None:
    for name in names or alone:
        rows = _rows(out / name)
        assert len(rows) == len(alone[name])
        for fleet_row, alone_row in zip(rows, alone[name], strict=True):
            for key in alone_row:  # field by field, so a failure names the field
                assert fleet_row[key] == alone_row[key], (name, fleet_row["step"], key)
        assert rows == alone[name]


def _kill_when_running(
    proc: subprocess.Popen, signals: Path, out: Path, job: str, attempt: int, kept: int = 0
) -> tuple[int, list[dict], int]:
    """Kill the worker running ``job`` (attempt ``attempt``, which started with ``kept``
    rows) once the driver has written every row that attempt reported; return (pid, the
    rows on disk then, the time of the kill)."""
    deadline = time.monotonic() + 400
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            record = json.loads((signals / f"{job}.json").read_text(encoding="utf-8"))
            rows = _rows(out / job)
        except (OSError, ValueError):
            time.sleep(0.02)
            continue
        received = {(r["step"], r["index"]) for r in rows}
        if record["attempt"] == attempt and len(received) >= kept + record["rows"] > kept:
            os.kill(record["pid"], signal.SIGKILL)
            return record["pid"], rows, time.time_ns()
        time.sleep(0.02)
    proc.kill()
    raise AssertionError(f"{job} attempt {attempt} never ran: {proc.communicate()[1][-3000:]}")


# ------------------------------------------------------------------------ in-process


def test_several_jobs_one_folder_each_summary_and_history(
    jobs, alone, capsys: pytest.CaptureFixture
) -> None:
    from parity.report.history import read_history

    out = jobs["job_a"].parent.parent / "in-process"
    history = out.parent / "history-in-process.csv"
    code = main(
        ["run", str(jobs["job_a"]), str(jobs["job_b"]), "--out", str(out)]
        + ["--history", str(history), *COMMON]
    )
    captured = capsys.readouterr()
    assert code == 1  # mismatches in both
    _assert_same_rows(out, alone, ["job_a", "job_b"])
    assert sorted(p.name for p in out.iterdir()) == ["job_a", "job_b", "summary.json"]
    for name in ("job_a", "job_b"):
        assert (out / name / "report.html").is_file()
        info = json.loads((out / name / "run.json").read_text(encoding="utf-8"))
        assert info["finished"] and info["job"] == name and "in-process" in info["worker"]
        # Not a fleet-level line but one per finished job, with counts, folder, seconds.
        [line] = [ln for ln in captured.err.splitlines() if ln.startswith(f"parity: {name}:")]
        counts = {v: [r["verdict"] for r in alone[name]].count(v) for v in ("match", "mismatch")}
        assert f"{counts['match']} match, {counts['mismatch']} mismatch, 0 error in " in line
        assert str(out / name) in line and " s -> " in line
    summary = _summary(out)
    assert summary["exit_code"] == 1 and summary["finished"]
    assert [j["job"] for j in summary["jobs"]] == ["job_a", "job_b"]
    assert [j["run_dir"] for j in summary["jobs"]] == ["job_a", "job_b"]
    total = {"match": 0, "mismatch": 0, "error": 0}
    for job in summary["jobs"]:
        rows = alone[job["job"]]
        assert job["status"] == "finished" and job["attempts"] == 1
        assert job["counts"]["mismatch"] == [r["verdict"] for r in rows].count("mismatch")
        for key in total:
            total[key] += job["counts"][key]
    assert summary["counts"] == total
    assert summary["options"]["base_model"] == str(TINY_BASE)
    # One history append per job, under <job>/<folder of the run>.
    df = read_history(history)
    assert sorted(df["run_id"].unique()) == ["job_a/in-process", "job_b/in-process"]
    assert df.groupby("job").size().to_dict() == {n: len(alone[n]) for n in ("job_a", "job_b")}
    assert str(out / "summary.json") in captured.out


def test_two_jobs_of_one_name_exit_2_naming_both(jobs, tmp_path: Path, capsys) -> None:
    twin = tmp_path / "elsewhere" / "job_a"
    shutil.copytree(jobs["job_a"], twin)
    out = tmp_path / "out"
    code = main(["run", str(jobs["job_a"]), str(twin), "--out", str(out), *COMMON])
    err = capsys.readouterr().err
    assert code == 2
    assert str(jobs["job_a"]) in err and str(twin) in err and "'job_a'" in err
    assert not out.exists()  # refused before anything was rendered or written


def test_an_unreadable_job_among_several_exits_2_before_rendering(jobs, tmp_path, capsys):
    missing = tmp_path / "no_such_job"
    out = tmp_path / "out"
    code = main(["run", str(jobs["job_a"]), str(missing), "--out", str(out), *COMMON])
    assert code == 2
    assert str(missing) in capsys.readouterr().err
    assert not out.exists()


def test_progress_is_one_bar_over_every_preview_on_a_terminal() -> None:
    from parity.fleet import FleetProgress

    bar = FleetProgress(total=7, jobs=3, enabled=True)
    for _ in range(7):
        bar.advance()
    assert (bar.bar.n, bar.bar.total, bar.bar.unit) == (7, 7, "preview")
    bar.close()
    assert FleetProgress(total=7, jobs=3, enabled=False).bar is None


# --------------------------------------------------------------- local worker processes


def test_local_workers_retry_a_lost_worker_once_then_fail_only_its_job(
    jobs, alone, tmp_path: Path
) -> None:
    out = jobs["job_a"].parent.parent / "local-workers"
    signals = tmp_path / "signals"
    signals.mkdir()
    env = {**ENV, "PARITY_FLEET_SIGNAL_DIR": str(signals)}
    order = [str(jobs[n]) for n in ("job_c", "job_a", "job_b")]
    proc = _parity(*order, "--workers", "2", "--out", str(out), "--no-history", env=env)
    first_pid, kept, killed_at = _kill_when_running(proc, signals, out, "job_c", attempt=1)
    second_pid, _, _ = _kill_when_running(proc, signals, out, "job_c", 2, kept=len(kept))
    stdout, stderr = proc.communicate(timeout=600)
    assert proc.returncode == 1, stderr[-3000:]
    assert first_pid != second_pid
    assert "retrying (attempt 2 of 2)" in stderr
    summary = _summary(out)
    by_job = {j["job"]: j for j in summary["jobs"]}
    assert by_job["job_c"]["status"] == "failed" and by_job["job_c"]["attempts"] == 2
    assert "died on each of 2 attempts" in by_job["job_c"]["error"]
    assert "SIGKILL" in by_job["job_c"]["error"]
    assert "job_c" in stdout and "FAILED" in stdout
    # The other jobs ran to the end on both workers, their rows those of a run alone.
    assert [by_job[n]["status"] for n in ("job_a", "job_b")] == ["finished", "finished"]
    _assert_same_rows(out, alone, ["job_a", "job_b"])
    assert len({j["worker"] for j in summary["jobs"]}) >= 2
    # Rows received before the kills were kept (and their renders never rewritten).
    partial = {(r["step"], r["index"]): r for r in _rows(out / "job_c")}
    assert 2 <= len(partial) < len(alone["job_c"])
    for row in kept:
        assert partial[(row["step"], row["index"])] == row
        assert (out / "job_c" / row["render"]).stat().st_mtime_ns < killed_at

    # --resume DIR resumes every job of the folder; only job_c has work left.
    code = main(["run", "--resume", str(out), "--no-history", *COMMON])
    assert code == 1
    _assert_same_rows(out, alone)
    summary = _summary(out)
    assert [j["status"] for j in summary["jobs"]] == ["finished"] * 3
    for row in kept:
        assert (out / "job_c" / row["render"]).stat().st_mtime_ns < killed_at


# --------------------------------------------------------------------------------- Ray


@pytest.fixture(scope="module")
def ray_cluster():
    """A one-node Ray cluster started as in the README (``ray start --head``), bound to
    127.0.0.1, 2 CPUs, no dashboard; stopped (its process group) by the finalizer."""
    if not RAY:
        pytest.skip("Ray is not installed (the optional extra parity[ray])")
    from parity.fleet import RAY_LOOPBACK_ENV

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    temp = tempfile.mkdtemp(prefix="pr-")  # short: Ray's socket paths must stay short
    # Token authentication with a token of its own, shared with the drivers that join.
    auth = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32)}
    ray = Path(sys.executable).with_name("ray")
    cmd = [str(ray), "start", "--head", "--node-ip-address", "127.0.0.1", "--port", str(port)]
    cmd += ["--num-cpus", "2", "--num-gpus", "0", "--include-dashboard", "false"]
    cmd += ["--disable-usage-stats", "--temp-dir", temp, "--block"]
    proc = subprocess.Popen(
        cmd,
        env={**ENV, **RAY_LOOPBACK_ENV, **auth},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("ray start --head did not come up") from None
                time.sleep(0.2)
        yield {"address": f"127.0.0.1:{port}", "session": proc.pid, "env": auth}
    finally:
        for sig, wait in ((signal.SIGTERM, 15), (signal.SIGKILL, 15)):
            try:
                os.killpg(proc.pid, sig)
            except ProcessLookupError:
                break
            deadline = time.monotonic() + wait
            while time.monotonic() < deadline and _session_pids(proc.pid):
                time.sleep(0.2)
        proc.wait(timeout=30)
        shutil.rmtree(temp, ignore_errors=True)


def _session_pids(sid: int) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if os.getsid(int(entry.name)) == sid:
                    pids.append(int(entry.name))
            except OSError:
                continue
    return pids


def _socket_addresses(sids: set[int]) -> list[tuple[str, str, str]]:
    """(process name, local address, remote address) of every TCP/UDP socket of the
    processes in the sessions ``sids``, read from /proc."""
    inodes: dict[int, str] = {}
    for sid in sids:
        for pid in _session_pids(sid):
            try:
                name = Path(f"/proc/{pid}/comm").read_text().strip()
                fds = list(Path(f"/proc/{pid}/fd").iterdir())
            except OSError:
                continue
            for fd in fds:
                try:
                    target = os.readlink(fd)
                except OSError:
                    continue
                if target.startswith("socket:["):
                    inodes[int(target[8:-1])] = name
    out = []
    for table in ("tcp", "tcp6", "udp", "udp6"):
        lines = Path(f"/proc/net/{table}").read_text().splitlines()[1:]
        for line in lines:
            fields = line.split()
            if int(fields[9]) in inodes:
                local, remote = (_address(fields[i], table.endswith("6")) for i in (1, 2))
                out.append((inodes[int(fields[9])], local, remote))
    return out


def _address(text: str, v6: bool) -> str:
    host, port = text.split(":")
    raw = bytes.fromhex(host)
    if v6:  # four little-endian 32-bit words
        raw = b"".join(raw[i : i + 4][::-1] for i in range(0, 16, 4))
    else:
        raw = raw[::-1]
    return f"{ipaddress.ip_address(raw)}:{int(port, 16)}"


def _loopback_or_unset(address: str) -> bool:
    ip = ipaddress.ip_address(address.rsplit(":", 1)[0])
    mapped = getattr(ip, "ipv4_mapped", None)
    return ip.is_loopback or ip.is_unspecified or bool(mapped and mapped.is_loopback)


@requires_ray
def test_three_jobs_on_ray_local_with_two_workers_equal_each_job_alone(jobs, alone) -> None:
    from parity.report.history import read_history

    out = jobs["job_a"].parent.parent / "ray-local"
    history = out.parent / "history-ray.parquet"
    proc = _parity(
        *(str(jobs[n]) for n in ("job_a", "job_b", "job_c")),
        "--ray",
        "local",
        "--workers",
        "2",
        "--out",
        str(out),
        "--history",
        str(history),
    )
    stdout, stderr = proc.communicate(timeout=600)
    assert proc.returncode == 1, stderr[-3000:]
    _assert_same_rows(out, alone)
    summary = _summary(out)
    assert summary["execution"]["backend"] == "ray"
    assert [w["label"] for w in summary["execution"]["workers"]] == ["ray actor 1", "ray actor 2"]
    assert [(j["status"], j["attempts"]) for j in summary["jobs"]] == [("finished", 1)] * 3
    assert len({j["worker"] for j in summary["jobs"]}) == 2  # both actors rendered
    for name in alone:
        assert (out / name / "report.html").is_file()
    df = read_history(history)
    assert sorted(df["run_id"].unique()) == [f"{n}/ray-local" for n in sorted(alone)]
    assert df.groupby("job").size().to_dict() == {n: len(r) for n, r in alone.items()}


@requires_ray
def test_killed_ray_actor_loses_only_its_job_in_flight(
    jobs, alone, ray_cluster, tmp_path: Path
) -> None:
    out = jobs["job_a"].parent.parent / "ray-killed"
    signals = tmp_path / "signals"
    signals.mkdir()
    env = {**ENV, **ray_cluster["env"], "PARITY_FLEET_SIGNAL_DIR": str(signals)}
    order = [str(jobs[n]) for n in ("job_c", "job_a", "job_b")]
    proc = _parity(
        *order,
        "--ray",
        ray_cluster["address"],
        "--workers",
        "2",
        "--out",
        str(out),
        "--no-history",
        env=env,
        start_new_session=True,
    )
    pid, kept, killed_at = _kill_when_running(proc, signals, out, "job_c", attempt=1)
    # While the actors run: every socket of the cluster and of the driver is on loopback.
    sockets = _socket_addresses({ray_cluster["session"], proc.pid})
    assert any(name == "gcs_server" for name, _, _ in sockets), sockets
    outside = [s for s in sockets if not (_loopback_or_unset(s[1]) and _loopback_or_unset(s[2]))]
    assert not outside, outside
    stdout, stderr = proc.communicate(timeout=600)
    assert proc.returncode == 1, stderr[-3000:]
    assert "ray actor" in stderr and "retrying (attempt 2 of 2)" in stderr
    summary = _summary(out)
    by_job = {j["job"]: j for j in summary["jobs"]}
    assert (by_job["job_c"]["status"], by_job["job_c"]["attempts"]) == ("finished", 2)
    assert f"pid {pid} " not in by_job["job_c"]["worker"]  # finished by another actor
    assert [by_job[n]["attempts"] for n in ("job_a", "job_b")] == [1, 1]
    info = json.loads((out / "job_c" / "run.json").read_text(encoding="utf-8"))
    assert info["attempts"] == 2
    # Every row equals the row of the job run alone; the rows finished before the kill
    # were kept as they were, their renders not made again.
    _assert_same_rows(out, alone)
    assert kept
    final = {(r["step"], r["index"]): r for r in _rows(out / "job_c")}
    for row in kept:
        assert final[(row["step"], row["index"])] == row
        assert (out / "job_c" / row["render"]).stat().st_mtime_ns < killed_at


def test_ray_missing_or_unreachable_is_one_line_and_exit_2(jobs, tmp_path, capsys) -> None:
    if RAY:
        with socket.socket() as s:  # a loopback port where nothing listens
            s.bind(("127.0.0.1", 0))
            address = f"127.0.0.1:{s.getsockname()[1]}"
        proc = _parity(str(jobs["job_a"]), "--ray", address, "--out", str(tmp_path / "o"))
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 2, err[-2000:]
        assert err.strip().splitlines()[-1].startswith("parity: error: ")
        assert address in err.strip().splitlines()[-1]
    else:
        code = main(["run", str(jobs["job_a"]), "--ray", "local", *COMMON])
        assert code == 2 and "parity[ray]" in capsys.readouterr().err


def test_a_request_in_a_multi_job_run_applies_to_the_job_it_names(
    jobs, alone, tmp_path: Path, capsys
) -> None:
    """job_b's checkpoint, written as the server's docs write it (``<job>/<file>`` under
    the training folder), with another seed: job_b's row gets ``seed``, job_a keeps its
    as-configured rows, and job_b's folder keeps its own copy of the request."""
    body = {
        "model": "zimage",
        "loras": [{"path": "job_b/job_b_000000010.safetensors"}],
        "prompts": [
            {"prompt": "a red cube on a table", "width": 64, "height": 64, "seed": 9,
             "sample_steps": 2, "guidance_scale": 0},
        ],
    }  # fmt: skip
    request = tmp_path / "request.json"
    request.write_text(json.dumps(body), encoding="utf-8")
    out = tmp_path / "fleet"
    args = [str(jobs["job_a"]), str(jobs["job_b"]), "--out", str(out), "--no-history"]
    code = main(["run", *args, *COMMON, "--request", str(request), "--workers", "2"])
    assert code == 1, capsys.readouterr().err
    _assert_same_rows(out, alone, names=["job_a"])
    rows = {r["index"]: r for r in _rows(out / "job_b")}
    assert rows[0]["causes"] == ["seed"] and rows[0]["request"]["file"]
    assert rows[1]["verdict"] == "error" and "no prompt 1" in rows[1]["detail"]
    assert (out / "job_b" / "requests" / "0.json").is_file()
    for row in rows.values():  # every file a row names was sent back by its worker
        for name in (row["preview"], row["render"]):
            assert name is None or (out / "job_b" / name).is_file(), name
    corrected = json.loads((out / "job_b" / "corrected_requests" / "10.json").read_text())
    for place in corrected["placement"].values():
        assert (out / "job_b" / "corrected_requests" / place["file"]).is_file()
    # A request no job of the run has: exit 2, naming the jobs.
    body["loras"] = [{"path": "job_z/job_z_000000010.safetensors"}]
    request.write_text(json.dumps(body), encoding="utf-8")
    code = main(["run", *args, *COMMON, "--request", str(request)])
    assert code == 2 and "(job_a, job_b)" in capsys.readouterr().err
