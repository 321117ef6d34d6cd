"""Nightly history: appends (also concurrent ones), reading back, trends and regressions."""

from __future__ import annotations

import math
import multiprocessing as mp
import re
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from parity.report.history import (
    HISTORY_COLUMNS,
    SSIM_DROP_THRESHOLD,
    HistoryError,
    append_history,
    append_run_history,
    find_regressions,
    read_history,
    render_trends,
)
from parity.results import ResultRow


def _rows(job: str, ssims: list[float | None], verdicts: list[str], causes=None) -> list[ResultRow]:
    causes = causes or [[] for _ in ssims]
    return [
        ResultRow(
            job=job,
            step=100 * (i // 2 + 1),
            index=i % 2,
            ssim=s,
            psnr=None if s is None else 30.0 + i,
            verdict=v,
            causes=c,
            explained=bool(c),
        )
        for i, (s, v, c) in enumerate(zip(ssims, verdicts, causes, strict=True))
    ]


@pytest.mark.parametrize("ext", ["parquet", "csv"])
def test_append_two_runs_and_read_back(tmp_path, ext):
    path = tmp_path / "hist" / f"history.{ext}"
    run1 = _rows(
        "job a", [0.99, 0.5, None], ["match", "mismatch", "error"], [[], ["seed", "cfg"], []]
    )
    run2 = _rows("job a", [0.98, 0.97, 0.9], ["match", "match", "mismatch"])
    append_history(path, run1, run_time="2025-01-01T02:00:00Z", run_id="r1")
    append_history(path, run2, run_time="2025-01-02T02:00:00+00:00", run_id="r2")
    df = read_history(path)
    assert list(df.columns) == list(HISTORY_COLUMNS)
    assert len(df) == 6
    assert list(df["run_id"]) == ["r1"] * 3 + ["r2"] * 3
    first = df.iloc[1]
    assert first["job"] == "job a" and first["step"] == 100 and first["index"] == 1
    assert first["causes"] == "cfg;seed"  # sorted, ";"-joined
    assert bool(first["explained"]) is True
    assert first["run_time"].startswith("2025-01-01T02:00:00")
    assert math.isnan(df.iloc[2]["ssim"])
    assert df.iloc[0]["causes"] == ""
    assert df["step"].dtype.kind == "i" and df["ssim"].dtype.kind == "f"


def test_read_missing_history_is_empty(tmp_path):
    df = read_history(tmp_path / "none.parquet")
    assert df.empty and list(df.columns) == list(HISTORY_COLUMNS)


def test_unknown_extension_rejected(tmp_path):
    with pytest.raises(HistoryError, match="history.txt"):
        append_history(tmp_path / "history.txt", [], run_time="2025-01-01T00:00:00Z", run_id="r")


def test_a_history_that_cannot_be_written_is_one_warning(tmp_path):
    """What ``parity run`` of one job and the fleet's driver both do after a run."""
    rows = _rows("j", [0.9], ["match"])
    lines: list[str] = []
    ok = append_run_history(
        tmp_path / "history.parquet", rows, run_time="2025-01-01T00:00:00Z", run_id="r",
        warn=lines.append,
    )  # fmt: skip
    assert ok and lines == [] and len(read_history(tmp_path / "history.parquet")) == 1
    bad = tmp_path / "history.txt"
    assert not append_run_history(bad, rows, run_time="2025", run_id="r", warn=lines.append)
    assert not append_run_history(
        tmp_path / "h.csv", rows, run_time=None, run_id="r", warn=lines.append, job="j"
    )
    assert lines[0].startswith("warning: history not updated: ") and "history.txt" in lines[0]
    assert lines[1] == "warning: j: history not updated: the run has no start time in its run.json"
    assert not (tmp_path / "h.csv").exists()


def _writer(path: str, run_id: str, n: int, chunks: int, barrier) -> None:
    per = n // chunks
    barrier.wait()
    for c in range(chunks):
        rows = [
            ResultRow(job="job", step=c, index=i, ssim=0.5, verdict="match")
            for i in range(c * per, (c + 1) * per)
        ]
        append_history(path, rows, run_time="2025-01-01T00:00:00Z", run_id=run_id)


@pytest.mark.parametrize("ext", ["parquet", "csv"])
def test_concurrent_appends_lose_no_rows(tmp_path, ext):
    path = str(tmp_path / f"history.{ext}")
    ctx = mp.get_context("spawn")
    barrier = ctx.Barrier(2)
    procs = [
        ctx.Process(target=_writer, args=(path, run_id, 50, 10, barrier)) for run_id in ("p1", "p2")
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
        assert p.exitcode == 0
    df = read_history(path)
    assert len(df) == 100
    keys = set(zip(df["run_id"], df["index"], strict=True))
    assert keys == {(r, i) for r in ("p1", "p2") for i in range(50)}


def _history_with_regression(path: Path) -> None:
    base = [0.99, 0.98, 0.97, 0.96]
    append_history(
        path,
        _rows("job a", base, ["match"] * 4)
        + _rows("job b", [0.9, 0.8], ["mismatch"] * 2, [["cfg"], []]),
        run_time="2025-01-01T02:00:00Z",
        run_id="night-1",
    )
    # job a: step 100 #1 turns mismatch; step 200 #0 drops SSIM by 0.05 but stays match;
    # step 200 #1 drops by less than the threshold.
    drop_small = 0.96 - SSIM_DROP_THRESHOLD / 2
    append_history(
        path,
        _rows(
            "job a",
            [0.99, 0.6, 0.92, drop_small],
            ["match", "mismatch", "match", "match"],
            [[], ["<lora_scale>"], [], []],
        )
        + _rows("job b", [0.91, 0.8], ["mismatch"] * 2, [["cfg"], ["seed"]]),
        run_time="2025-01-02T02:00:00Z",
        run_id="night-2",
    )


def test_find_regressions(tmp_path):
    path = tmp_path / "history.parquet"
    _history_with_regression(path)
    regs = find_regressions(read_history(path))
    got = {(g.job, g.step, g.index, g.reason) for g in regs}
    assert got == {("job a", 100, 1, "verdict"), ("job a", 200, 0, "ssim_drop")}
    verdict = next(g for g in regs if g.reason == "verdict")
    assert (verdict.old_verdict, verdict.new_verdict) == ("match", "mismatch")
    assert (verdict.old_run_id, verdict.new_run_id) == ("night-1", "night-2")
    assert verdict.old_ssim == pytest.approx(0.98) and verdict.new_ssim == pytest.approx(0.6)
    assert "match → mismatch" in verdict.describe()


def test_single_run_has_no_regressions(tmp_path):
    path = tmp_path / "history.csv"
    append_history(path, _rows("j", [0.1], ["error"]), run_time="2025-01-01T00:00Z", run_id="r")
    assert find_regressions(read_history(path)) == []


class _Imgs(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.srcs: list[str] = []

    def handle_starttag(self, tag, attrs):
        if tag == "img":
            self.srcs += [v for k, v in attrs if k == "src"]


def test_render_trends(tmp_path):
    path = tmp_path / "history.parquet"
    _history_with_regression(path)
    out_dir = tmp_path / "trends"
    index = render_trends(path, out_dir)
    assert index == out_dir / "index.html"
    html = index.read_text(encoding="utf-8")
    parser = _Imgs()
    parser.feed(html)
    assert len(parser.srcs) == 4  # two plots per job
    for src in parser.srcs:
        png = out_dir / src
        with Image.open(png) as im:
            assert im.format == "PNG" and im.width > 200 and im.height > 100
            assert len(np.unique(np.asarray(im.convert("L")))) > 10  # not a blank image
    # the regressions are named: job, step, index, old → new verdict and SSIM
    rows = re.findall(r'<tr class="regression">(.*?)</tr>', html, flags=re.S)
    assert len(rows) == 2
    joined = " ".join(re.sub(r"<[^>]+>", " ", r) for r in rows)
    assert re.search(r"100\s+1\s+match\s+→\s+mismatch\s+0\.9800 → 0\.6000", joined)
    assert re.search(r"200\s+0\s+match\s+→\s+match\s+0\.9700 → 0\.9200", joined)
    assert "job a" in html and "job b" in html
    assert not re.search(r"https?://", html)
    assert "2 regressions" in html


def test_parity_report_over_two_real_runs_names_the_injected_regression(tmp_path, capsys):
    """Two `parity run`s append to one history; a preview broken in between is named."""
    import shutil

    from parity.cli import main
    from parity.testing.jobs import TINY_BASE, write_job

    sample = {
        "width": 64,
        "height": 64,
        "seed": 2,
        "guidance_scale": 0,
        "sample_steps": 3,
        "samples": [{"prompt": "[trigger] a red cube"}, {"prompt": "[trigger] a blue ball"}],
    }
    job = write_job(tmp_path / "jobs", name="nightly", sample=sample)
    history = tmp_path / "history.parquet"
    common = ["run", str(job), "--base-model", str(TINY_BASE), "--history", str(history)]
    assert main([*common, "--out", str(tmp_path / "run1")]) == 0
    # The regression: preview 1 is replaced by preview 0's image before the next night.
    first, second = sorted((job / "samples").glob("*.jpg"))
    shutil.copyfile(first, second)
    assert main([*common, "--out", str(tmp_path / "run2"), "--no-attribution"]) == 1
    capsys.readouterr()

    assert main(["report", "--history", str(history), "--out", str(tmp_path / "trends")]) == 0
    html = (tmp_path / "trends" / "index.html").read_text(encoding="utf-8")
    assert len(list((tmp_path / "trends").rglob("*.png"))) >= 2
    rows = re.findall(r'<tr class="regression">(.*?)</tr>', html, flags=re.S)
    assert len(rows) == 1
    text = " ".join(re.sub(r"<[^>]+>", " ", rows[0]).split())
    assert re.search(r"\b10 1 match → mismatch\b", text), text
