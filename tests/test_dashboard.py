"""The nightly dashboard's pages as written: the overview's rows, order and links, a job's
page, the filters of ``parity report``, escaping, and its benchmark (no browser here:
tests/test_dashboard_browser.py runs the pages)."""

from __future__ import annotations

import re
import subprocess
import sys
from html import unescape
from pathlib import Path

import pytest

from parity.cli import main
from parity.report.dashboard import build_dashboard, job_slug, select
from parity.report.history import append_history, read_history
from parity.results import ResultRow

ROOT = Path(__file__).resolve().parents[1]
EVIL = "<script>document.title='pwned'</script>"


def _run(history: Path, job: str, night: int, previews: list[tuple[str, float | None, list[str]]],
         family: str = "zimage", base: str = "zimage_turbo") -> Path:  # fmt: skip
    """Append one run of ``job`` (a run folder under the history's folder, with a
    report.html and image files, as ``parity run`` leaves it)."""
    run_dir = history.parent / f"night-{night}" / job
    rows = []
    for i, (verdict, ssim, causes) in enumerate(previews):
        preview, render = f"previews/10/{i}.jpg", f"renders/10/{i}.png"
        for name in (preview, render):
            (run_dir / name).parent.mkdir(parents=True, exist_ok=True)
            (run_dir / name).write_bytes(b"")
        rows.append(ResultRow(job=job, step=10, index=i, ssim=ssim, verdict=verdict,
                              causes=causes, preview=preview, render=render))  # fmt: skip
    (run_dir / "report.html").write_text("<html></html>", encoding="utf-8")
    append_history(
        history, rows, run_time=f"2026-11-{night:02d}T02:00:00Z", run_id=f"{job}/night-{night}",
        run_dir=run_dir, family=family, base_model=base, parity_version="0.1.0", git="abc",
    )  # fmt: skip
    return run_dir


@pytest.fixture()
def history(tmp_path) -> Path:
    """3 nights of 3 jobs: ``steady`` always matches, ``broken`` regresses on the last
    night (one preview turns mismatch, one loses SSIM), ``flux job`` mismatches steadily."""
    path = tmp_path / "reports" / "history.parquet"
    ok = ("match", 0.99, [])
    for night in (1, 2, 3):
        _run(path, "steady", night, [ok, ok])
        last = night == 3
        _run(path, "broken", night, [
            ("mismatch", 0.7, ["cfg", "seed"]) if last else ok,
            ("match", 0.95) + ([],) if last else ok,
        ])  # fmt: skip
        _run(path, "flux job", night, [("mismatch", 0.6, ["cfg"]), ("error", None, [])],
             family="flux", base="flux")  # fmt: skip
    return path


def _rows(index_html: str) -> list[str]:
    return re.findall(r'<tr class="job[^"]*"[^>]*>.*?</tr>', index_html, flags=re.S)


def _text(fragment: str) -> str:
    return " ".join(unescape(re.sub(r"<[^>]+>", " ", fragment)).split())


def test_overview_lists_every_job_regressed_first(history, tmp_path):
    out = tmp_path / "reports" / "dashboard"
    board = build_dashboard(history, out)
    assert (board.jobs, board.regressed_jobs, board.regressions) == (3, 1, 2)
    html = board.index.read_text(encoding="utf-8")
    rows = _rows(html)
    assert [re.search(r'data-job="([^"]+)"', r)[1] for r in rows] == [
        "broken",
        "flux job",
        "steady",
    ]
    broken = rows[0]
    assert 'class="job regressed"' in broken and 'data-regressions="2"' in broken
    assert 'data-family="zimage"' in broken and 'data-causes="cfg;seed"' in broken
    text = _text(broken)
    # verdict counts of the last night with their change since the night before
    assert "1 −1 1 +1 0" in text, text
    assert "10#0 match→mismatch, 10#1 match→match" in text
    assert "0.7000" in text  # the worst SSIM
    assert "cfg ×1 seed ×1" in text
    assert "zimage zimage_turbo" in text
    # links: the job's page, and the last run's report, relative to the page
    assert f'href="jobs/{job_slug("broken")}.html"' in broken
    assert 'href="../night-3/broken/report.html"' in broken
    flux = rows[1]
    assert 'data-family="flux"' in flux and 'data-regressions="0"' in flux
    assert re.search(r"\b0\.6000\b", _text(flux)) and "unattributed" not in flux
    # the filters offer the families and the last runs' causes
    assert re.findall(r'<option value="([^"]+)">', html) == ["flux", "zimage", "cfg", "seed"]
    assert not re.search(r'(src|href)="https?:', html)


def test_job_page_shows_the_regressions_with_both_renders(history, tmp_path):
    out = tmp_path / "reports" / "dashboard"
    build_dashboard(history, out)
    page = out / "jobs" / f"{job_slug('broken')}.html"
    html = page.read_text(encoding="utf-8")
    cards = re.findall(r'<article class="card regression-card" id="([^"]+)">(.*?)</article>', html,
                       flags=re.S)  # fmt: skip
    assert [c[0] for c in cards] == ["s10-i0", "s10-i1"]
    first = cards[0][1]
    srcs = re.findall(r'<img src="([^"]+)"', first)
    assert srcs == ["../../night-3/broken/previews/10/0.jpg",
                    "../../night-2/broken/renders/10/0.png",
                    "../../night-3/broken/renders/10/0.png"]  # fmt: skip
    assert all((page.parent / s).is_file() for s in srcs)
    hrefs = re.findall(r'<a class="card-link" href="([^"]+)"', first)
    assert hrefs == ["../../night-2/broken/report.html#s10-i0",
                     "../../night-3/broken/report.html#s10-i0"]  # fmt: skip
    assert "SSIM drop" in _text(cards[1][1]) and "0.9900 → 0.9500" in _text(cards[1][1])
    # one shared plotly script, two charts whose points carry their run and report
    script = re.findall(r'<script src="([^"]+)"></script>', html)
    assert len(script) == 1 and (page.parent / script[0]).is_file()
    assert script[0].startswith("../assets/plotly-")
    assert html.count('class="plotly-graph-div"') == 2
    data = html.replace("\\u002f", "/")  # plotly's JSON escapes "/"
    assert '"broken/night-3","2026-11-03 02:00","1 match, 1 mismatch, 0 error"' in data
    assert '"../../night-3/broken/report.html"]' in data  # what a click opens
    assert "0.1.0 abc" in html  # the parity version hovered
    # every run listed, newest first, with its report
    runs = re.findall(r'<a href="([^"]+)">broken/night-\d</a>', html)
    assert runs == [f"../../night-{n}/broken/report.html" for n in (3, 2, 1)]
    assert not re.search(r'(src|href)="https?:', html)
    steady = (out / "jobs" / f"{job_slug('steady')}.html").read_text(encoding="utf-8")
    assert (
        '<article class="card regression-card"' not in steady
        and '<p class="ok">None.</p>' in steady
    )


def test_since_and_job_filters(history, tmp_path):
    df = read_history(history)
    assert set(select(df, since="2026-11-03")["run_id"]) == {
        "steady/night-3", "broken/night-3", "flux job/night-3"
    }  # fmt: skip
    assert set(select(df, jobs=["flux*", "steady"])["job"]) == {"flux job", "steady"}
    with pytest.raises(ValueError, match="not an ISO 8601"):
        select(df, since="last tuesday")
    # One night left: nothing to compare, so nothing regressed.
    board = build_dashboard(history, tmp_path / "d1", since="2026-11-03T00:00:00+00:00")
    assert (board.jobs, board.regressions) == (3, 0)
    board = build_dashboard(history, tmp_path / "d2", jobs=["broken"])
    assert (board.jobs, board.regressions) == (1, 2)
    assert "jobs broken" in board.index.read_text(encoding="utf-8")


def test_user_text_is_escaped(tmp_path):
    path = tmp_path / "history.csv"
    for night in (1, 2):
        _run(path, EVIL, night, [("mismatch", 0.5, [EVIL])])
    board = build_dashboard(path, tmp_path / "out")
    for page in (board.index, *board.job_pages):
        html = page.read_text(encoding="utf-8")
        assert "<script>document.title" not in html
        assert "&lt;script&gt;document.title" in html or "\\u003cscript" in html
    assert job_slug(EVIL).startswith("script_document.title_pwned_")


def test_old_history_without_run_folders_has_no_links(tmp_path):
    """Rows of a history written before run folders were kept: listed, unlinked."""
    path = tmp_path / "history.parquet"
    rows = [ResultRow(job="old", step=1, index=0, ssim=0.99, verdict="match")]
    append_history(path, rows, run_time="2026-01-01T00:00:00Z", run_id="old/1")
    board = build_dashboard(path, tmp_path / "out")
    html = board.index.read_text(encoding="utf-8")
    assert "report-link" not in html and "unknown" in html
    assert "report.html" not in board.job_pages[0].read_text(encoding="utf-8")


def test_empty_history(tmp_path):
    path = tmp_path / "history.parquet"
    append_history(path, [], run_time="2026-01-01T00:00:00Z", run_id="r")
    board = build_dashboard(path, tmp_path / "out")
    assert board.jobs == 0 and board.script is None
    assert "No runs in the history" in board.index.read_text(encoding="utf-8")


def test_report_command(history, tmp_path, capsys):
    out = tmp_path / "dash"
    assert main(["report", "--history", str(history), "--out", str(out), "--job", "broken",
                 "--job", "steady", "--since", "2026-11-02", "--ssim-drop", "0.1"]) == 0  # fmt: skip
    printed = capsys.readouterr().out
    # with a 0.1 threshold the SSIM drop of 0.04 is no regression; the verdict change is
    assert "2 jobs, 1 regressed (1 preview)" in printed
    assert f"dashboard: {out / 'index.html'}" in printed
    assert main(["report", "--history", str(history), "--out", str(out), "--job", "nope"]) == 0
    captured = capsys.readouterr()
    assert captured.out.startswith("0 jobs, 0 regressed")
    assert "warning: no run of the history passes --job/--since" in captured.err
    assert main(["report", "--history", str(tmp_path / "none.parquet"), "--out", str(out)]) == 2
    assert "no history table" in capsys.readouterr().err
    assert main(["report", "--history", str(history), "--out", str(out), "--since", "x"]) == 2
    assert "--since 'x' is not an ISO 8601" in capsys.readouterr().err


def test_report_help_explains_every_option(capsys):
    with pytest.raises(SystemExit):
        main(["report", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for option in ("--history FILE", "--out DIR", "--since DATE", "--job NAME", "--ssim-drop X"):
        # each option is followed by its help text, not by the next option
        m = re.search(re.escape(option) + r" (\S+)", text)
        assert m and not m[1].startswith("-"), option
    from parity.report.history import SSIM_DROP_THRESHOLD

    assert f"(default {SSIM_DROP_THRESHOLD})" in text


def test_dashboard_benchmark_quick(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "bench", "--dashboard", "--quick", "--work", str(tmp_path)],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    last = proc.stdout.strip().splitlines()[-1]
    assert re.fullmatch(
        r"dashboard: jobs=20 runs=5 rows=400 build_s=[\d.]+ index_kb=[\d.]+ "
        r"job_page_kb_median=[\d.]+ job_page_kb_max=[\d.]+ script_kb=[\d.]+ total_mb=[\d.]+",
        last,
    ), last
