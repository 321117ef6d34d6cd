"""The model map through the command line: ``--model-map`` over ``PARITY_MODEL_MAP`` over
``[tool.parity.models]`` in the working directory's pyproject.toml, and the error for a
mapped folder that does not exist.

Each source maps the Turbo hub id to a different folder whose scheduler config carries a
different ``shift``; ``zimage_turbo`` keeps its checkpoint's scheduler, so the shift that
``parity inspect`` reports for the reference side tells which folder was used.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from parity.model_map import MODEL_MAP_ENV
from parity.testing.jobs import TINY_TURBO, write_job
from parity.zimage.checkpoints import ZIMAGE_TURBO_HUB_ID

SHIFTS = {"pyproject": 2.0, "env": 4.0, "flag": 5.0}


def _fake_checkpoint(folder: Path, shift: float) -> Path:
    """Enough of a checkpoint folder for ``inspect``: text_encoder/ and a scheduler config."""
    (folder / "text_encoder").mkdir(parents=True)
    (folder / "scheduler").mkdir()
    config = {"_class_name": "FlowMatchEulerDiscreteScheduler", "shift": shift}
    (folder / "scheduler" / "scheduler_config.json").write_text(json.dumps(config), "utf-8")
    return folder


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("mapcli")
    for name, shift in SHIFTS.items():
        _fake_checkpoint(root / "models" / name, shift)
    job = write_job(
        root,
        name="turbo_job",
        sample={"width": 64, "height": 64, "seed": 1, "sample_steps": 2, "prompts": ["a cat"]},
        base_model=TINY_TURBO,
        name_or_path=ZIMAGE_TURBO_HUB_ID,
        arch="zimage:turbo",
        render=False,
    )
    Image.new("RGB", (64, 64), (90, 120, 150)).save(
        job / "samples" / "1700000000397__000000010_0.jpg"
    )
    # Relative to the pyproject's folder, as [tool.parity.models] paths are.
    (root / "pyproject.toml").write_text(
        f'[tool.parity.models]\n"{ZIMAGE_TURBO_HUB_ID}" = "models/pyproject"\n', "utf-8"
    )
    return root


def _parity(
    args: list[str], cwd: Path, env_map: str | None = None
) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != MODEL_MAP_ENV}
    env["HF_HUB_OFFLINE"] = "1"
    if env_map is not None:
        env[MODEL_MAP_ENV] = env_map
    return subprocess.run(
        [sys.executable, "-m", "parity.cli", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def _reference_shift(workdir: Path, *extra: str, env_map: str | None = None) -> float:
    proc = _parity(
        ["inspect", "turbo_job", "--format", "json", *extra], cwd=workdir, env_map=env_map
    )
    assert proc.returncode == 0, proc.stderr
    rows = json.loads(proc.stdout)
    assert len(rows) == 1 and rows[0]["error"] is None
    return rows[0]["reference"]["scheduler_shift"]


def test_pyproject_in_working_directory_is_used(workdir: Path) -> None:
    assert _reference_shift(workdir) == SHIFTS["pyproject"]


def test_environment_overrides_pyproject(workdir: Path) -> None:
    env_map = f"{ZIMAGE_TURBO_HUB_ID}={workdir / 'models' / 'env'}"
    assert _reference_shift(workdir, env_map=env_map) == SHIFTS["env"]


def test_flag_overrides_environment_and_pyproject(workdir: Path) -> None:
    env_map = f"{ZIMAGE_TURBO_HUB_ID}={workdir / 'models' / 'env'}"
    flag = f"{ZIMAGE_TURBO_HUB_ID}={workdir / 'models' / 'flag'}"
    shift = _reference_shift(workdir, "--model-map", flag, env_map=env_map)
    assert shift == SHIFTS["flag"]


def test_run_fails_with_exit_2_naming_a_missing_mapped_folder(workdir: Path) -> None:
    missing = workdir / "models" / "not-there"
    proc = _parity(
        ["run", "turbo_job", "--model-map", f"{ZIMAGE_TURBO_HUB_ID}={missing}", "--no-history"],
        cwd=workdir,
    )
    assert proc.returncode == 2, proc.stderr
    assert ZIMAGE_TURBO_HUB_ID in proc.stderr
    assert str(missing) in proc.stderr
    assert "--model-map flag" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_run_names_the_pyproject_when_its_folder_is_missing(tmp_path: Path, workdir: Path) -> None:
    (tmp_path / "pyproject.toml").write_text(
        f'[tool.parity.models]\n"{ZIMAGE_TURBO_HUB_ID}" = "gone"\n', "utf-8"
    )
    proc = _parity(["run", str(workdir / "turbo_job"), "--no-history"], cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert ZIMAGE_TURBO_HUB_ID in proc.stderr
    assert "pyproject.toml" in proc.stderr


def test_run_resolves_through_the_winning_source(workdir: Path) -> None:
    """The environment maps to a missing folder, the flag to a real checkpoint: the run
    gets past model resolution (and stops at the unknown step, before rendering)."""
    env_map = f"{ZIMAGE_TURBO_HUB_ID}={workdir / 'models' / 'missing'}"
    proc = _parity(
        [
            "run",
            "turbo_job",
            "--model-map",
            f"{ZIMAGE_TURBO_HUB_ID}={TINY_TURBO}",
            "--steps",
            "999",
            "--out",
            str(workdir / "run-out"),
            "--no-history",
        ],
        cwd=workdir,
        env_map=env_map,
    )
    assert proc.returncode == 2, proc.stderr
    assert "no previews for step(s) [999]" in proc.stderr
    assert str(workdir / "models" / "missing") not in proc.stderr
