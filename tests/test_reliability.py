"""Bad inputs: every problem is named (file and what is wrong), the rest of the run goes on.

Per-preview problems become ``error`` rows whose ``detail`` names the file and the problem,
while the other previews still get real verdicts (exit status 1). A job that cannot be
used at all stops the run with a message on stderr (exit status 2).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from helpers import run_job_cli

from parity.cli import main
from parity.testing.jobs import TINY_BASE, write_job
from parity.testing.lora import write_aitk_lora, write_foreign_lora

SAMPLE = {
    "width": 64,
    "height": 64,
    "seed": 1,
    "guidance_scale": 0,
    "sample_steps": 3,
    "samples": [
        {"prompt": "a red cube on a table"},
        {"prompt": "a dog in the garden"},
        {"prompt": "a green tree on a hill"},
    ],
}
NAME = "tiny_job"
# Step 10 and step 20 have LoRAs of different ranks: the engine must switch between them.
CHECKPOINTS = {10: {"rank": 4, "seed": 3}, 20: {"rank": 8, "seed": 4}}
ALL_KEYS = {(s, i) for s in (10, 20) for i in range(3)}


@pytest.fixture(scope="module")
def base_job(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("reliability")
    return write_job(root, name=NAME, sample=SAMPLE, checkpoints=CHECKPOINTS)


@pytest.fixture
def job(base_job: Path, tmp_path: Path) -> Path:
    """A private copy of the fixture job, free to damage."""
    return Path(shutil.copytree(base_job, tmp_path / NAME, symlinks=True))


def previews(job: Path, step: int) -> dict[int, Path]:
    out = {}
    for path in sorted((job / "samples").iterdir()):
        stem = path.name.split("__", 1)[1].rsplit(".", 1)[0]
        s, i = stem.split("_")
        if int(s) == step:
            out[int(i)] = path
    return out


def checkpoint(job: Path, step: int) -> Path:
    return job / f"{NAME}_{step:09d}.safetensors"


def run(
    job: Path | str, out: Path, capsys: pytest.CaptureFixture, *extra: str
) -> tuple[int, str, dict[tuple[int, int], dict]]:
    return run_job_cli(job, out, capsys, *extra)


def assert_only_errors(
    rows: dict[tuple[int, int], dict], bad: set[tuple[int, int]], *needles: str
) -> None:
    """``bad`` rows are errors whose detail holds every needle; every other row matches."""
    assert bad <= set(rows)
    for key, row in rows.items():
        if key in bad:
            assert row["verdict"] == "error", (key, row)
            for needle in needles:
                assert needle.lower() in row["detail"].lower(), (key, needle, row["detail"])
        else:
            assert row["verdict"] == "match", (key, row["verdict"], row["detail"])


# ----------------------------------------------------------------------- baseline


def test_clean_job_matches_with_ranks_switching(job: Path, tmp_path: Path, capsys) -> None:
    """Rank 4 at step 10, rank 8 at step 20: each step renders with its own LoRA."""
    rc, _, rows = run(job, tmp_path / "out", capsys)
    assert set(rows) == ALL_KEYS
    assert rc == 0
    assert all(r["verdict"] == "match" for r in rows.values())
    # The two LoRAs really differ: step 10 and 20 previews of one prompt are not the same.
    for i in range(3):
        assert previews(job, 10)[i].read_bytes() != previews(job, 20)[i].read_bytes()


def test_steps_in_reverse_order_still_switch_lora(job: Path, tmp_path: Path, capsys) -> None:
    rc, _, rows = run(job, tmp_path / "out", capsys, "--steps", "20,10")
    assert rc == 0 and set(rows) == ALL_KEYS


# --------------------------------------------------------------- job-level problems


def test_config_missing(job: Path, tmp_path: Path, capsys) -> None:
    (job / "config.yaml").unlink()
    rc, err, rows = run(job, tmp_path / "out", capsys)
    assert rc == 2 and not rows
    assert str(job) in err and "config.yaml" in err


def test_config_not_yaml(job: Path, tmp_path: Path, capsys) -> None:
    (job / "config.yaml").write_text("config: {name: [unclosed\n  process: :\n")
    rc, err, _ = run(job, tmp_path / "out", capsys)
    assert rc == 2
    assert str(job / "config.yaml") in err and "not valid YAML" in err


def test_config_not_a_mapping(job: Path, tmp_path: Path, capsys) -> None:
    (job / "config.yaml").write_text("- just\n- a list\n")
    rc, err, _ = run(job, tmp_path / "out", capsys)
    assert rc == 2
    assert str(job / "config.yaml") in err and "mapping" in err


def _edit_config(job: Path, edit) -> None:
    import yaml

    path = job / "config.yaml"
    config = yaml.safe_load(path.read_text())
    edit(config["config"]["process"][0])
    path.write_text(yaml.safe_dump(config))


def test_no_sample_section(job: Path, tmp_path: Path, capsys) -> None:
    _edit_config(job, lambda p: p.pop("sample"))
    rc, err, _ = run(job, tmp_path / "out", capsys)
    assert rc == 2
    assert str(job / "config.yaml") in err and "sample" in err


def test_unknown_arch(job: Path, tmp_path: Path, capsys) -> None:
    _edit_config(job, lambda p: p["model"].update(arch="hidream"))
    rc, err, _ = run(job, tmp_path / "out", capsys)
    assert rc == 2
    assert str(job / "config.yaml") in err and "'hidream'" in err and "arch" in err


def test_job_folder_missing(tmp_path: Path, capsys) -> None:
    rc, err, _ = run(tmp_path / "nowhere", tmp_path / "out", capsys)
    assert rc == 2 and str(tmp_path / "nowhere") in err


def test_base_model_missing_component(job: Path, tmp_path: Path, capsys) -> None:
    broken = tmp_path / "tiny-zimage-novae"
    shutil.copytree(TINY_BASE, broken, ignore=shutil.ignore_patterns("vae"))
    rc = main(
        ["run", str(job), "--base-model", str(broken), "--no-history", "--out", str(tmp_path / "o")]
    )
    err = capsys.readouterr().err
    assert rc == 2
    assert str(broken) in err and "vae" in err


# ------------------------------------------------------------ per-sample problems


@pytest.mark.parametrize(
    ("field", "value", "needle"),
    [("width", "abc", "width"), ("sample_steps", -1, "sample_steps")],
)
def test_bad_sample_item(job: Path, tmp_path: Path, capsys, field, value, needle) -> None:
    _edit_config(job, lambda p: p["sample"]["samples"][1].update({field: value}))
    rc, _, rows = run(job, tmp_path / "out", capsys)
    assert rc == 1
    assert_only_errors(rows, {(10, 1), (20, 1)}, str(job / "config.yaml"), needle, str(value))


# ------------------------------------------------------------ per-preview problems


def test_preview_truncated(job: Path, tmp_path: Path, capsys) -> None:
    path = previews(job, 10)[0]
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    rc, _, rows = run(job, tmp_path / "out", capsys)
    assert rc == 1
    assert_only_errors(rows, {(10, 0)}, path.name, "truncated")


def test_preview_zero_bytes(job: Path, tmp_path: Path, capsys) -> None:
    path = previews(job, 10)[1]
    path.write_bytes(b"")
    rc, _, rows = run(job, tmp_path / "out", capsys)
    assert rc == 1
    assert_only_errors(rows, {(10, 1)}, path.name, "empty")


def test_preview_not_an_image(job: Path, tmp_path: Path, capsys) -> None:
    path = previews(job, 20)[2]
    path.write_text("this is a caption, not a picture\n")
    rc, _, rows = run(job, tmp_path / "out", capsys)
    assert rc == 1
    assert_only_errors(rows, {(20, 2)}, path.name, "not")


def test_preview_with_text_extension(job: Path, tmp_path: Path, capsys) -> None:
    path = previews(job, 20)[0]
    renamed = path.with_suffix(".txt")
    path.rename(renamed)
    rc, _, rows = run(job, tmp_path / "out", capsys)
    assert rc == 1
    assert_only_errors(rows, {(20, 0)}, renamed.name, ".txt", "not an image")


def test_png_under_jpg_name_is_read(job: Path, tmp_path: Path, capsys) -> None:
    """A PNG saved under .jpg is still a readable image: compared by its content, no error."""
    from PIL import Image

    # A lossless PNG of exactly what the reference renders, under the preview's .jpg name.
    rc, _, first = run(job, tmp_path / "first", capsys)
    assert rc == 0
    path = previews(job, 10)[2]
    shutil.copy(tmp_path / "first" / first[(10, 2)]["render"], path)
    with Image.open(path) as im:
        assert im.format == "PNG"
    rc, _, rows = run(job, tmp_path / "out", capsys)
    assert rc == 0
    row = rows[(10, 2)]
    assert row["verdict"] == "match" and row["width_preview"] == 64
    # Compared as the lossless image it is: pixel-identical, no JPEG floor.
    assert row["ssim"] == pytest.approx(1.0) and row["jpeg_floor"] is None


def test_preview_index_beyond_samples(job: Path, tmp_path: Path, capsys) -> None:
    extra = job / "samples" / f"1800000000000__{10:09d}_7.jpg"
    shutil.copy(previews(job, 10)[0], extra)
    rc, _, rows = run(job, tmp_path / "out", capsys)
    assert rc == 1
    assert_only_errors(rows, {(10, 7)}, extra.name, "index 7", "beyond")


def test_duplicate_preview(job: Path, tmp_path: Path, capsys) -> None:
    original = previews(job, 20)[1]
    dup = job / "samples" / f"1800000000000__{20:09d}_1.jpg"
    shutil.copy(original, dup)
    rc, _, rows = run(job, tmp_path / "out", capsys)
    assert rc == 1
    assert_only_errors(rows, {(20, 1)}, "duplicate", original.name, dup.name)


# ------------------------------------------------------------------ LoRA problems


def test_lora_truncated(job: Path, tmp_path: Path, capsys) -> None:
    path = checkpoint(job, 10)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    rc, _, rows = run(job, tmp_path / "out", capsys)
    assert rc == 1
    assert_only_errors(rows, {(10, i) for i in range(3)}, str(path), "truncated")


def test_lora_zero_bytes(job: Path, tmp_path: Path, capsys) -> None:
    path = checkpoint(job, 20)
    path.write_bytes(b"")
    # The final <name>.safetensors is the same step: leave only the damaged step file.
    (job / f"{NAME}.safetensors").unlink()
    rc, _, rows = run(job, tmp_path / "out", capsys)
    assert rc == 1
    assert_only_errors(rows, {(20, i) for i in range(3)}, str(path), "empty")


def test_lora_random_bytes(job: Path, tmp_path: Path, capsys) -> None:
    import random

    path = checkpoint(job, 10)
    path.write_bytes(random.Random(0).randbytes(4096))
    rc, _, rows = run(job, tmp_path / "out", capsys)
    assert rc == 1
    assert_only_errors(rows, {(10, i) for i in range(3)}, str(path), "safetensors")


def test_lora_with_nan(job: Path, tmp_path: Path, capsys) -> None:
    from safetensors.torch import load_file, save_file

    path = checkpoint(job, 10)
    state = load_file(str(path))
    key = next(k for k in sorted(state) if k.endswith("lora_B.weight"))
    state[key][0, 0] = float("nan")
    save_file(state, str(path))
    rc, _, rows = run(job, tmp_path / "out", capsys)
    assert rc == 1
    assert_only_errors(rows, {(10, i) for i in range(3)}, str(path), "NaN", key)


def test_lora_for_another_architecture(job: Path, tmp_path: Path, capsys) -> None:
    path = checkpoint(job, 10)
    write_foreign_lora(path)
    rc, _, rows = run(job, tmp_path / "out", capsys)
    assert rc == 1
    for key, row in rows.items():
        if key[0] == 10:
            # Nothing of the LoRA applies: the render is the base model's, so it cannot
            # reproduce the preview, and the row says why.
            assert row["verdict"] == "mismatch", row
            assert "lora_not_applied" in row["candidate_causes"]
            assert "0 of" in row["detail"] and path.name in row["detail"]
        else:
            assert row["verdict"] == "match", row


def test_render_overflowing_to_nan(job: Path, tmp_path: Path, capsys) -> None:
    path = checkpoint(job, 20)
    write_aitk_lora(path, TINY_BASE, rank=8, seed=4, scale_b=1e30, step=20, name=NAME)
    (job / f"{NAME}.safetensors").unlink()
    rc, _, rows = run(job, tmp_path / "out", capsys)
    assert rc == 1
    assert_only_errors(rows, {(20, i) for i in range(3)}, "NaN")


# ------------------------------------------------------------------ out of memory


class _OomEngine:
    """Factory of a RenderEngine whose transformer runs out of memory on demand."""

    @staticmethod
    def make(fail_prompt: str, *, times: int | None):
        """``times``: how many transformer calls fail for ``fail_prompt`` (None: all)."""
        import torch

        from parity.render.engine import RenderEngine

        class Engine(RenderEngine):
            current: str = ""
            raised = 0

            def render(self, settings):
                self.current = settings.prompt
                return super().render(settings)

        engine = Engine(str(TINY_BASE), device="cpu")

        def hook(module, args):
            if engine.current == fail_prompt and (times is None or engine.raised < times):
                engine.raised += 1
                raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")

        engine.variant("float32").pipe.transformer.register_forward_pre_hook(hook)
        return engine


def _run_engine(job: Path, out: Path, engine) -> tuple[int, dict[tuple[int, int], dict]]:
    from parity.job import read_job
    from parity.run import RunOptions, run_job

    summary = run_job(read_job(job), engine, out, RunOptions(attribute=False, progress=False))
    rows = {(r["step"], r["index"]): r for r in json.loads((out / "results.json").read_text())}
    return summary.exit_code, rows


def test_out_of_memory_once_is_retried(job: Path, tmp_path: Path, caplog) -> None:
    engine = _OomEngine.make(SAMPLE["samples"][1]["prompt"], times=1)
    with caplog.at_level("WARNING", logger="parity.render.engine"):
        rc, rows = _run_engine(job, tmp_path / "out", engine)
    assert engine.raised == 1
    assert "out of memory" in caplog.text
    assert rc == 0 and set(rows) == ALL_KEYS
    assert all(r["verdict"] == "match" for r in rows.values())


def test_out_of_memory_every_time_fails_only_that_preview(job: Path, tmp_path: Path) -> None:
    engine = _OomEngine.make(SAMPLE["samples"][2]["prompt"], times=None)
    rc, rows = _run_engine(job, tmp_path / "out", engine)
    assert engine.raised >= 2  # first try and the retry, for each failing preview
    assert rc == 1 and set(rows) == ALL_KEYS
    assert_only_errors(rows, {(10, 2), (20, 2)}, "out of memory")
