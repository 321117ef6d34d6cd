"""Nothing a job or request holds is executed, and nothing it names escapes its folder.

- YAML is read with a safe loader: python tags are refused, never run.
- LoRAs are read only as safetensors: pickled files (``torch.save``), whatever their
  name, are refused without being unpickled.
- Paths are confined: request LoRA paths to the LoRA root (for ``parity render`` by
  default the request's folder), job previews and
  checkpoints to the job folder (symlinks out of it included), unless
  ``--allow-outside-paths``.
- The HTML report escapes every user text and loads nothing from the network.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
from helpers import run_job_cli

from parity.cli import main
from parity.testing.jobs import TINY_BASE, write_job
from parity.testing.lora import write_aitk_lora

EVIL_PROMPT = 'a cat <script>alert("x")</script> "onerror=alert(1) <img src=x onerror=alert(2)>'
SAMPLE = {
    "width": 64,
    "height": 64,
    "seed": 1,
    "guidance_scale": 0,
    "sample_steps": 3,
    "samples": [{"prompt": "a red cube on a table"}, {"prompt": EVIL_PROMPT}],
}
NAME = "tiny_job"
ALL_KEYS = {(s, i) for s in (10, 20) for i in range(2)}


@pytest.fixture(scope="module")
def base_job(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("security")
    return write_job(root, name=NAME, sample=SAMPLE, checkpoints={10: {}, 20: {"seed": 1}})


@pytest.fixture
def job(base_job: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(base_job, tmp_path / "jobs" / NAME, symlinks=True))


def run(job: Path, out: Path, capsys, *extra: str) -> tuple[int, str, dict]:
    return run_job_cli(job, out, capsys, *extra)


def checkpoint(job: Path, step: int) -> Path:
    return job / f"{NAME}_{step:09d}.safetensors"


def preview(job: Path, step: int, index: int) -> Path:
    (path,) = (job / "samples").glob(f"*__{step:09d}_{index}.jpg")
    return path


# ------------------------------------------------------------------------ YAML


def test_yaml_python_tag_is_refused_not_run(job: Path, tmp_path: Path, capsys) -> None:
    marker = tmp_path / "yaml_ran"
    config = job / "config.yaml"
    config.write_text(
        f"exploit: !!python/object/apply:os.system ['touch {marker}']\n" + config.read_text()
    )
    rc, err, rows = run(job, tmp_path / "out", capsys)
    assert rc == 2 and not rows
    assert str(config) in err and "python/object" in err
    assert not marker.exists()


# ---------------------------------------------------------------- pickled LoRAs


class _Sentinel:
    """Unpickling this object creates ``path``: proof that a pickle was loaded."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def _pickled_lora(path: Path, marker: Path, *, legacy: bool = False) -> Path:
    import torch

    payload = {"diffusion_model.layers.0.attention.to_q.lora_A.weight": torch.zeros(4, 32)}
    payload["sentinel"] = _Sentinel(marker)
    torch.save(payload, path, _use_new_zipfile_serialization=not legacy)
    return path


def test_sentinel_pickle_does_run_when_unpickled(tmp_path: Path) -> None:
    """The sentinel works: loading the file with pickle enabled does create the marker."""
    import torch

    marker = tmp_path / "probe"
    path = _pickled_lora(tmp_path / "probe.pt", marker)
    torch.load(path, weights_only=False)  # our own file, to check the test itself
    assert marker.exists()


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
def test_pickle_named_safetensors_is_refused(job: Path, tmp_path: Path, capsys, legacy) -> None:
    marker = tmp_path / "unpickled"
    path = _pickled_lora(checkpoint(job, 10), marker, legacy=legacy)
    rc, _, rows = run(job, tmp_path / "out", capsys)
    assert not marker.exists()
    assert rc == 1 and set(rows) == ALL_KEYS
    for (step, _), row in rows.items():
        if step == 10:
            assert row["verdict"] == "error"
            assert str(path) in row["detail"] and "pickle" in row["detail"]
        else:
            assert row["verdict"] == "match"


def test_pt_checkpoint_is_refused_and_named(job: Path, tmp_path: Path, capsys) -> None:
    marker = tmp_path / "unpickled"
    checkpoint(job, 10).unlink()
    pt = _pickled_lora(job / f"{NAME}_{10:09d}.pt", marker)
    rc, err, rows = run(job, tmp_path / "out", capsys)
    assert not marker.exists()
    assert rc == 1 and set(rows) == ALL_KEYS
    assert str(pt) in err and "pickled" in err
    for (step, _), row in rows.items():
        if step == 10:
            assert row["verdict"] == "error"
            assert str(pt) in row["detail"] and "pickled" in row["detail"]
        else:
            assert row["verdict"] == "match"


# ------------------------------------------------------------ request LoRA paths


@pytest.fixture
def request_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "request"
    folder.mkdir()
    write_aitk_lora(tmp_path / "outside.safetensors", TINY_BASE, step=10, name="outside")
    return folder


def _write_request(folder: Path, lora_path: str) -> Path:
    request = {
        "model": "zimage",
        "loras": [{"path": lora_path}],
        "prompts": [{"prompt": "a red cube", "width": 64, "height": 64, "sample_steps": 2}],
    }
    path = folder / "request.json"
    path.write_text(json.dumps(request))
    return path


def _render(request: Path, out: Path, capsys, *extra: str) -> tuple[int, str]:
    rc = main(["render", str(request), "--base-model", str(TINY_BASE), "--out", str(out), *extra])
    return rc, capsys.readouterr().err


def test_request_lora_outside_is_refused(request_dir: Path, tmp_path: Path, capsys) -> None:
    request = _write_request(request_dir, "../outside.safetensors")
    rc, err = _render(request, tmp_path / "out", capsys)
    assert rc == 2
    assert "outside.safetensors" in err and "--allow-outside-paths" in err
    assert not (tmp_path / "out" / "0.png").exists()
    rc, err = _render(request, tmp_path / "out", capsys, "--allow-outside-paths")
    assert rc == 0, err
    assert (tmp_path / "out" / "0.png").is_file()


def test_request_lora_absolute_or_symlink_outside(
    request_dir: Path, tmp_path: Path, capsys
) -> None:
    outside = tmp_path / "outside.safetensors"
    rc, err = _render(_write_request(request_dir, str(outside)), tmp_path / "o1", capsys)
    assert rc == 2 and str(outside) in err
    (request_dir / "inside.safetensors").symlink_to(outside)
    rc, err = _render(_write_request(request_dir, "inside.safetensors"), tmp_path / "o2", capsys)
    assert rc == 2 and "inside.safetensors" in err
    shutil.copy(outside, request_dir / "real.safetensors")
    rc, err = _render(_write_request(request_dir, "real.safetensors"), tmp_path / "o3", capsys)
    assert rc == 0, err


# --------------------------------------------------------------- job symlinks


def test_checkpoint_symlink_outside_job(job: Path, tmp_path: Path, capsys) -> None:
    path = checkpoint(job, 10)
    elsewhere = tmp_path / "elsewhere.safetensors"
    shutil.move(path, elsewhere)
    path.symlink_to(elsewhere)
    rc, _, rows = run(job, tmp_path / "out", capsys)
    assert rc == 1 and set(rows) == ALL_KEYS
    for (step, _), row in rows.items():
        if step == 10:
            assert row["verdict"] == "error"
            assert str(path) in row["detail"] and "outside the job folder" in row["detail"]
        else:
            assert row["verdict"] == "match"
    rc, _, rows = run(job, tmp_path / "allowed", capsys, "--allow-outside-paths")
    assert rc == 0 and all(r["verdict"] == "match" for r in rows.values())


def test_preview_symlink_outside_job(job: Path, tmp_path: Path, capsys) -> None:
    path = preview(job, 20, 0)
    elsewhere = tmp_path / "elsewhere.jpg"
    shutil.move(path, elsewhere)
    path.symlink_to(elsewhere)
    # A symlink that stays inside the job folder is fine.
    inside = preview(job, 10, 0)
    shutil.move(inside, job / "kept.jpg")
    inside.symlink_to(job / "kept.jpg")
    rc, _, rows = run(job, tmp_path / "out", capsys)
    assert rc == 1 and set(rows) == ALL_KEYS
    for key, row in rows.items():
        if key == (20, 0):
            assert row["verdict"] == "error"
            assert str(path) in row["detail"] and "outside the job folder" in row["detail"]
        else:
            assert row["verdict"] == "match", (key, row["detail"])
    rc, _, rows = run(job, tmp_path / "allowed", capsys, "--allow-outside-paths")
    assert rc == 0 and all(r["verdict"] == "match" for r in rows.values())


def test_preview_command_refuses_a_checkpoint_outside_the_job(
    job: Path, tmp_path: Path, capsys
) -> None:
    path = checkpoint(job, 10)
    elsewhere = tmp_path / "elsewhere.safetensors"
    shutil.move(path, elsewhere)
    path.symlink_to(elsewhere)
    common = ["preview", str(job), "--base-model", str(TINY_BASE), "--device", "cpu"]
    rc = main([*common, "--out", str(tmp_path / "p1")])
    err = capsys.readouterr().err
    assert rc == 1 and str(path) in err and "outside the job folder" in err
    effective = json.loads((tmp_path / "p1" / "effective.json").read_text())
    assert {e["step"] for e in effective if "image" in e} == {20}  # the other step rendered
    assert main([*common, "--out", str(tmp_path / "p2"), "--allow-outside-paths"]) == 0


# ------------------------------------------------------------------ HTML report


def test_report_escapes_user_text_and_stays_offline(job: Path, tmp_path: Path, capsys) -> None:
    # A mismatch gives the report its most text (causes, counterfactuals).
    write_aitk_lora(checkpoint(job, 20), TINY_BASE, seed=9, step=20, name=NAME)
    rc = main(
        ["run", str(job), "--base-model", str(TINY_BASE), "--no-history", "--out", str(tmp_path)]
    )
    capsys.readouterr()
    assert rc == 1
    html = (tmp_path / "report.html").read_text(encoding="utf-8")
    # The prompt is shown, escaped: none of its markup reaches the page as markup.
    assert "alert(1)" in html
    assert '<script>alert("x")' not in html
    assert "<img src=x" not in html
    assert '"onerror=' not in html and " onerror=alert(2)>" not in html
    # Whatever is inside <script> blocks cannot close them early either.
    for block in re.findall(r"<script[^>]*>(.*?)</script>", html, flags=re.S | re.I):
        assert "<script" not in block.lower() and "<img" not in block.lower()
    # Nothing is loaded from the network.
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:)?//""", html, flags=re.I)
    assert not re.search(r"""url\(\s*["']?\s*(https?:)?//""", html, flags=re.I)
    assert not re.search(r"@import", html, flags=re.I)
