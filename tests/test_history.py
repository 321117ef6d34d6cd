"""Nightly history: appends (also concurrent ones), reading back, old files, regressions."""

from __future__ import annotations

import math
import multiprocessing as mp
import re
from html import unescape
from pathlib import Path

import pandas as pd
import pytest

from parity.report.history import (
    BASE_COLUMNS,
    HISTORY_COLUMNS,
    RUN_COLUMNS,
    SSIM_DROP_THRESHOLD,
    HistoryError,
    append_history,
    append_run_history,
    find_regressions,
    read_history,
    run_facts,
)
from parity.results import ResultRow
from parity.run_info import RunInfo


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


@pytest.mark.parametrize("ext", ["parquet", "csv"])
def test_a_history_without_the_run_columns_still_reads(tmp_path, ext):
    """A table written before family, base model, run folder and versions were kept:
    read with those columns empty, and appended to with them filled."""
    path = tmp_path / f"history.{ext}"
    old = pd.DataFrame(
        [
            {"job": "j", "step": 100, "index": 0, "run_time": "2025-01-01T00:00:00+00:00",
             "run_id": "r1", "verdict": "match", "causes": "", "ssim": 0.99, "psnr": 40.0,
             "ms_ssim": None, "latent_distance": 0.01, "lpips": None, "explained": False}
        ],
        columns=list(BASE_COLUMNS),
    )  # fmt: skip
    if ext == "csv":
        old.to_csv(path, index=False)
    else:
        old.to_parquet(path, index=False)
    df = read_history(path)
    assert list(df.columns) == list(HISTORY_COLUMNS)
    assert all(df.iloc[0][c] == "" for c in RUN_COLUMNS)
    run = tmp_path / "j" / "r2"
    append_history(
        path, _rows("j", [0.5], ["mismatch"]), run_time="2025-01-02T00:00:00Z", run_id="r2",
        run_dir=run, family="zimage", base_model="zimage_turbo", parity_version="0.1.0",
        git="abc123",
    )  # fmt: skip
    df = read_history(path)
    assert len(df) == 2 and df.iloc[0]["run_dir"] == ""
    new = df.iloc[1]
    assert new["run_dir"] == "j/r2"  # relative to the history's folder
    assert (new["family"], new["base_model"]) == ("zimage", "zimage_turbo")
    assert (new["parity_version"], new["parity_git"]) == ("0.1.0", "abc123")
    assert find_regressions(df)[0].new_run_id == "r2"


def test_a_table_without_the_base_columns_is_refused(tmp_path):
    path = tmp_path / "history.csv"
    path.write_text("job,step\nj,1\n", encoding="utf-8")
    with pytest.raises(HistoryError, match="lacks columns"):
        read_history(path)


def test_run_history_records_the_run_folder_and_facts(tmp_path):
    """What the run stage gives: the run folder and its run.json."""
    info = RunInfo(job="j", started="2025-01-01T00:00:00Z", parity_version="9.9",
                   reference_model="zimage_turbo")  # fmt: skip
    rows = [ResultRow(job="j", step=10, index=0, ssim=0.9, verdict="match",
                      preview="previews/10/a.jpg", render="renders/10/0.png")]  # fmt: skip
    history = tmp_path / "reports" / "history.parquet"
    run = tmp_path / "reports" / "nightly" / "j"
    assert append_run_history(history, rows, run_time=info.started, run_id="j/nightly",
                              warn=print, run_dir=run, run_info=info)  # fmt: skip
    row = read_history(history).iloc[0]
    assert row["run_dir"] == "nightly/j"
    assert (row["family"], row["base_model"], row["parity_version"]) == (
        "zimage",
        "zimage_turbo",
        "9.9",
    )
    assert (row["preview"], row["render"]) == ("previews/10/a.jpg", "renders/10/0.png")
    # Unknown facts are empty, not made up.
    assert (
        run_facts(None)["family"] == ""
        and run_facts(RunInfo(reference_model="x"))["base_model"] == "x"
    )


def _frame(*runs: tuple[str, str, str, list[tuple[int, int, str, float | None]]]) -> pd.DataFrame:
    """A history table of (job, run id, run time, [(step, index, verdict, ssim)]) runs."""
    rows = [
        {"job": job, "step": step, "index": index, "run_time": when, "run_id": run_id,
         "verdict": verdict, "causes": "", "ssim": math.nan if ssim is None else ssim,
         "psnr": math.nan, "ms_ssim": math.nan, "latent_distance": math.nan, "lpips": math.nan,
         "explained": False, **dict.fromkeys(RUN_COLUMNS, "")}
        for job, run_id, when, previews in runs
        for step, index, verdict, ssim in previews
    ]  # fmt: skip
    return pd.DataFrame(rows, columns=list(HISTORY_COLUMNS))


def _reasons(df: pd.DataFrame, **kw) -> set[tuple[str, int, int, str]]:
    return {(g.job, g.step, g.index, g.reason) for g in find_regressions(df, **kw)}


def test_regression_kinds():
    before = [(1, 0, "match", 0.99), (1, 1, "match", 0.99), (1, 2, "match", 0.99),
              (1, 3, "mismatch", 0.7), (1, 4, "error", None), (1, 5, "match", 0.99),
              (1, 6, "match", None), (1, 7, "mismatch", 0.8)]  # fmt: skip
    after = [(1, 0, "mismatch", 0.98), (1, 1, "error", None), (1, 2, "match", 0.95),
             (1, 3, "mismatch", 0.6), (1, 4, "match", 0.99), (1, 5, "match", 0.985),
             (1, 6, "match", 0.5), (1, 7, "match", 0.99)]  # fmt: skip
    df = _frame(("a", "n1", "2025-01-01T00:00:00+00:00", before),
                ("a", "n2", "2025-01-02T00:00:00+00:00", after))  # fmt: skip
    assert _reasons(df) == {
        ("a", 1, 0, "verdict"),  # match -> mismatch, SSIM barely moved
        ("a", 1, 1, "verdict"),  # match -> error, no SSIM
        ("a", 1, 2, "ssim_drop"),  # still a match, SSIM fell by 0.04
        ("a", 1, 3, "ssim_drop"),  # a mismatch that got worse
    }  # an error that recovered, a drop under the threshold, an SSIM that was unknown: none
    # The threshold decides the SSIM drops.
    assert _reasons(df, ssim_drop=0.05) == {("a", 1, 0, "verdict"), ("a", 1, 1, "verdict"),
                                            ("a", 1, 3, "ssim_drop")}  # fmt: skip


def test_only_the_last_two_runs_by_time_are_compared():
    """Rows appended out of order are ordered by run time; older regressions are over."""
    runs = [
        ("a", "n3", "2025-01-03T00:00:00+00:00", [(1, 0, "match", 0.99), (1, 1, "match", 0.9)]),
        ("a", "n1", "2025-01-01T00:00:00+00:00", [(1, 0, "match", 0.99), (1, 1, "match", 0.99)]),
        ("a", "n2", "2025-01-02T00:00:00+00:00", [(1, 0, "error", None), (1, 1, "match", 0.99)]),
        ("b", "m1", "2025-01-01T00:00:00+00:00", [(1, 0, "match", 0.99)]),
        ("c", "k1", "2025-01-01T00:00:00+00:00", [(1, 0, "match", 0.99), (1, 1, "match", 0.9)]),
        ("c", "k2", "2025-01-02T00:00:00+00:00", [(1, 0, "mismatch", 0.5), (2, 0, "error", None)]),
    ]
    regs = find_regressions(_frame(*runs))
    # a: n2 -> n3 only (the error of n2 recovered; step 1 #1 dropped 0.09).
    # b: a single run. c: step 1 #1 and step 2 #0 are in one run only: not compared.
    assert [(g.job, g.step, g.index, g.old_run_id, g.new_run_id) for g in regs] == [
        ("a", 1, 1, "n2", "n3"),
        ("c", 1, 0, "k1", "k2"),
    ]


def test_runs_of_one_time_are_ordered_by_run_id():
    same = "2025-01-01T00:00:00+00:00"
    df = _frame(("a", "r2", same, [(1, 0, "mismatch", 0.5)]),
                ("a", "r1", same, [(1, 0, "match", 0.99)]))  # fmt: skip
    [g] = find_regressions(df)
    assert (g.old_run_id, g.new_run_id) == ("r1", "r2")


def test_empty_history_has_no_regressions():
    assert find_regressions(_frame()) == []


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
    out = capsys.readouterr().out
    assert "1 job, 1 regressed (1 preview)" in out
    [page] = (tmp_path / "trends" / "jobs").glob("*.html")
    html = page.read_text(encoding="utf-8")
    cards = re.findall(r'<article class="card regression-card" id="([^"]+)">(.*?)</article>', html,
                       flags=re.S)  # fmt: skip
    assert [c[0] for c in cards] == ["s10-i1"]
    text = " ".join(unescape(re.sub(r"<[^>]+>", " ", cards[0][1])).split())
    assert re.search(r"step 10 #1 match → mismatch SSIM 1\.0000 → 0\.\d{4}", text), text
    # The history knows both run folders: the cards link to both reports.
    assert 'href="../../run1/report.html#s10-i1"' in cards[0][1]
    assert 'href="../../run2/report.html#s10-i1"' in cards[0][1]
