"""Every way into parity decides the same: one job with the request the user sent and the
images the server returned, through ``parity run``, ``parity run --workers 1``,
``parity run --ray local`` and ``pytest --parity-job`` from an empty folder (no
pyproject.toml, no conftest.py), gives the same verdicts, causes, served verdicts and
exit status. For each family: the real Z-Image job with a request a user writes, and the
real FLUX.1, Qwen-Image and Wan 2.1 jobs with the request the server's own code answered
and its images (the Wan job's are videos)."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import REQUEST as FULL_REQUEST

from parity.cli import main
from parity.testing.jobs import AITK_FLUX_BASE, AITK_FLUX_JOB, AITK_REAL_BASE, AITK_REAL_JOB

#: The first two prompts of what a user sends for step 10 of the real job
#: (helpers.REQUEST): preview 0 differs by cfg (ai-toolkit passes 4 - 1), preview 1 by
#: snapping (80x112 floored to 64x96 by the server).
REQUEST = {**FULL_REQUEST, "prompts": FULL_REQUEST["prompts"][:2]}

#: The causes derived from the two sides' rules (see REQUEST).
CAUSES = {(10, 0): ["cfg"], (10, 1): ["snapping"]}

#: The real FLUX.1 job and the server's answer to the request for its step 20
#: (fixtures/aitk_flux/server/20): the request sets every setting as the config does but
#: takes one LoRA scale, 1, where item 2 has 0.5; the images are the server's own.
FLUX_SERVED = AITK_FLUX_JOB.parents[1] / "server" / "20"
FLUX_CAUSES = {(20, i): ["lora_scale"] if i == 2 else [] for i in range(5)}

#: The real Qwen-Image job and the server's answer for its step 20
#: (fixtures/aitk_qwen/server/20): ai-toolkit floors items 1 (80x112) and 4 (100x90) to
#: 32, the server to 16, and the request takes one LoRA scale where item 2 has 0.5.
QWEN_JOB = AITK_FLUX_JOB.parents[2] / "aitk_qwen" / "output" / "aitk_qwen"
QWEN_BASE = QWEN_JOB.parents[1] / "tiny_qwen"
QWEN_SERVED = QWEN_JOB.parents[1] / "server" / "20"
QWEN_CAUSES = {(20, i): [] for i in range(6)}
QWEN_CAUSES[(20, 1)] = QWEN_CAUSES[(20, 4)] = ["snapping"]
QWEN_CAUSES[(20, 2)] = ["lora_scale"]

#: The real Wan 2.1 job and the server's answer for its step 20 (fixtures/aitk_wan21/
#: server/20, animated WebP): every preview differs by the scheduler no request can
#: choose (ai-toolkit's Euler against the checkpoint's UniPC), item 2 by its scale too.
WAN_JOB = AITK_FLUX_JOB.parents[2] / "aitk_wan21" / "output" / "aitk_wan21"
WAN_BASE = WAN_JOB.parents[1] / "tiny_wan21"
WAN_SERVED = WAN_JOB.parents[1] / "server" / "20"
WAN_CAUSES = {(20, i): ["scheduler"] for i in range(6)}
WAN_CAUSES[(20, 2)] = ["lora_scale", "scheduler"]

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "CI": "1"}
ENV.pop("PYTEST_ADDOPTS", None)
ENV.pop("PYTEST_XDIST_WORKER", None)
ENV["RAY_USAGE_STATS_ENABLED"] = "0"


@pytest.fixture(scope="module")
def sent(tmp_path_factory) -> tuple[Path, Path]:
    """The request file, and the server's images: prompt 0 as the server renders it,
    prompt 1 replaced by another image (a server that drifted)."""
    root = tmp_path_factory.mktemp("sent")
    request = root / "request.json"
    request.write_text(json.dumps(REQUEST), encoding="utf-8")
    served = root / "served"
    rendered = root / "rendered"
    lora_root = ["--lora-root", str(AITK_REAL_JOB.parent)]
    args = ["render", str(request), "--out", str(rendered), *lora_root]
    assert main([*args, "--base-model", str(AITK_REAL_BASE), "--device", "cpu"]) == 0
    served.mkdir()
    shutil.copy(rendered / "0.png", served / "0.png")
    shutil.copy(rendered / "0.png", served / "1.png")  # not prompt 1's image
    return request, served


def _rows(results: Path) -> dict[tuple[int, int], tuple]:
    rows = json.loads(results.read_text(encoding="utf-8"))
    return {
        (r["step"], r["index"]): (
            r["verdict"],
            sorted(r["causes"]),
            (r.get("served") or {}).get("verdict"),
        )
        for r in rows
    }


def _parity_run(
    out: Path, request: Path, served: Path, *extra: str, job: Path = AITK_REAL_JOB,
    base: Path = AITK_REAL_BASE,
) -> int:  # fmt: skip
    command = [sys.executable, "-m", "parity.cli", "run", str(job)]
    command += ["--base-model", str(base), "--device", "cpu", "--threads", "1"]
    command += ["--request", str(request), "--served", str(served), "--no-history"]
    command += ["--out", str(out), *extra]
    proc = subprocess.run(command, env=ENV, capture_output=True, text=True, timeout=600)
    assert proc.returncode in (0, 1), proc.stderr[-3000:]
    return proc.returncode


def _pytest_run(
    cwd: Path, results: Path, request: Path, served: Path, *, job: Path = AITK_REAL_JOB,
    base: Path = AITK_REAL_BASE,
) -> tuple[int, int, Path]:  # fmt: skip
    """(exit status, failed items, results.json) of ``pytest --parity-job`` in ``cwd``."""
    command = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-p", "no:randomly"]
    command += [f"--parity-job={job}", f"--parity-base-model={base}"]
    command += ["--parity-device=cpu", f"--parity-request={request}"]
    command += [f"--parity-served={served}", f"--parity-results={results}", "-q"]
    proc = subprocess.run(command, cwd=cwd, env=ENV, capture_output=True, text=True, timeout=600)
    failed = sum(
        1 for line in proc.stdout.splitlines() if line.startswith("FAILED ") and "::step" in line
    )
    [path] = sorted(results.glob("*/*/results.json"))
    return proc.returncode, failed, path


def _doors(tmp_path: Path, request: Path, served: Path, **job: Path) -> dict[str, tuple]:
    """Each front door's rows and exit status (1 for any failure of pytest's)."""
    outcomes: dict[str, tuple[dict, int]] = {}
    code = _parity_run(tmp_path / "run", request, served, **job)
    outcomes["parity run"] = (_rows(tmp_path / "run" / "results.json"), code)
    code = _parity_run(tmp_path / "workers", request, served, "--workers", "1", **job)
    outcomes["--workers 1"] = (_rows(tmp_path / "workers" / "results.json"), code)
    if importlib.util.find_spec("ray") is not None:
        code = _parity_run(tmp_path / "ray", request, served, "--ray", "local", **job)
        outcomes["--ray local"] = (_rows(tmp_path / "ray" / "results.json"), code)

    empty = tmp_path / "empty"
    empty.mkdir()
    code, failed, results = _pytest_run(empty, tmp_path / "pytest-results", request, served, **job)
    assert not (empty / "pyproject.toml").exists() and not (empty / "conftest.py").exists()
    plugin_rows = _rows(results)
    outcomes["pytest --parity-job"] = (plugin_rows, 0 if code == 0 else 1)
    # pytest: one failed item per preview that is not a match.
    assert failed == sum(1 for verdict, _, _ in plugin_rows.values() if verdict != "match")
    return outcomes


def test_every_front_door_decides_the_same(sent, tmp_path: Path) -> None:
    request, served = sent
    outcomes = _doors(tmp_path, request, served)
    rows, _ = outcomes["parity run"]
    assert {key: rows[key][1] for key in CAUSES} == CAUSES
    assert {key: rows[key][2] for key in CAUSES} == {(10, 0): "same", (10, 1): "drift"}
    for door, (door_rows, door_code) in outcomes.items():
        assert door_rows == rows, door
        assert door_code == 1, door  # mismatches and a drifted served image
    if importlib.util.find_spec("ray") is None:
        pytest.skip("Ray is not installed (the extra parity[ray]); 3 of 4 front doors checked")


def test_every_front_door_decides_the_same_for_flux(tmp_path: Path) -> None:
    """The server's own images are parity's reference renders ("same"), and the one
    difference the request cannot carry (item 2's scale) is the one cause."""
    request = FLUX_SERVED / "request.json"
    outcomes = _doors(tmp_path, request, FLUX_SERVED, job=AITK_FLUX_JOB, base=AITK_FLUX_BASE)
    rows, _ = outcomes["parity run"]
    assert {key: row[1] for key, row in rows.items()} == FLUX_CAUSES
    assert {row[0] for key, row in rows.items() if key != (20, 2)} == {"match"}
    assert {row[2] for row in rows.values()} == {"same"}
    for door, (door_rows, door_code) in outcomes.items():
        assert door_rows == rows, door
        assert door_code == 1, door  # item 2 is a mismatch
    if importlib.util.find_spec("ray") is None:
        pytest.skip("Ray is not installed (the extra parity[ray]); 3 of 4 front doors checked")


def test_every_front_door_decides_the_same_for_qwen_image(tmp_path: Path) -> None:
    """The server's own images are parity's reference renders ("same") and the causes
    are the ones the request cannot carry: ai-toolkit's floor to 32 and item 2's scale."""
    request = QWEN_SERVED / "request.json"
    outcomes = _doors(tmp_path, request, QWEN_SERVED, job=QWEN_JOB, base=QWEN_BASE)
    rows, _ = outcomes["parity run"]
    assert {key: row[1] for key, row in rows.items()} == QWEN_CAUSES
    assert {row[0] for key, row in rows.items() if not QWEN_CAUSES[key]} == {"match"}
    assert {row[2] for row in rows.values()} == {"same"}
    for door, (door_rows, door_code) in outcomes.items():
        assert door_rows == rows, door
        assert door_code == 1, door
    if importlib.util.find_spec("ray") is None:
        pytest.skip("Ray is not installed (the extra parity[ray]); 3 of 4 front doors checked")


def test_every_front_door_decides_the_same_for_wan(tmp_path: Path) -> None:
    """A video job: the server's own WebP clips are parity's reference renders ("same"),
    and every door names the same causes, the scheduler first among them."""
    request = WAN_SERVED / "request.json"
    outcomes = _doors(tmp_path, request, WAN_SERVED, job=WAN_JOB, base=WAN_BASE)
    rows, _ = outcomes["parity run"]
    assert {key: row[1] for key, row in rows.items()} == WAN_CAUSES
    assert {row[0] for row in rows.values()} == {"mismatch"}
    assert {row[2] for row in rows.values()} == {"same"}
    for door, (door_rows, door_code) in outcomes.items():
        assert door_rows == rows, door
        assert door_code == 1, door
    if importlib.util.find_spec("ray") is None:
        pytest.skip("Ray is not installed (the extra parity[ray]); 3 of 4 front doors checked")


def test_one_exit_status_rule_counts_served_drift() -> None:
    """A one-job run, a fleet job and a fleet run share one rule: every preview matched
    and no served image drifted is 0; a drifted served image alone makes it 1."""
    from parity.fleet import FleetJob, JobState
    from parity.results import ResultRow, ServedResult, Verdict, exit_code
    from parity.run import RunSummary

    def rows(served: str) -> list[ResultRow]:
        served_result = ServedResult(served, 1.0, 100.0, 0, "served/0/0.png")
        return [ResultRow(job="j", step=10, index=0, verdict=Verdict.MATCH, served=served_result)]

    for served, expected in (("same", 0), ("drift", 1)):
        assert exit_code(rows(served)) == expected
        assert RunSummary(Path("."), rows(served)).exit_code == expected
        job = FleetJob.__new__(FleetJob)  # only the rows and status matter here
        state = JobState(job, {(10, 0): rows(served)[0]}, status="finished")
        assert state.exit_code == expected
    assert exit_code([]) == 1  # no rows: nothing was checked
