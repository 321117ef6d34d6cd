"""The nightly dashboard as a browser shows it, after the folder was moved: three nights of
a three-job fleet run (``parity run A B C --history``), one job regressing on the last
night, then ``parity report``; headless Chromium loads the pages."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from html import unescape
from pathlib import Path
from urllib.parse import unquote, urldefrag

import numpy as np
import pytest
from PIL import Image

from parity.report.dashboard import job_slug

CHROMIUM = shutil.which("chromium")

pytestmark = pytest.mark.skipif(
    CHROMIUM is None,
    reason="headless browser checks need `chromium` on PATH (Debian package chromium)",
)

SAMPLE = {
    "width": 64,
    "height": 64,
    "seed": 5,
    "guidance_scale": 0,
    "sample_steps": 3,
    "neg": "",
    "samples": [{"prompt": "[trigger] a red cube"}, {"prompt": "[trigger] a blue ball"}],
}
CFG_SAMPLE = {**SAMPLE, "samples": [{"prompt": "[trigger] a tall tower", "guidance_scale": 4}]}
JOBS = ("lora_a", "lora_b", "lora_cfg")
REGRESSED = "lora_b"


@pytest.fixture(scope="module")
def moved(tmp_path_factory) -> Path:
    """The reports folder of three nightly fleet runs and the dashboard, moved after it
    was written; the job folders are gone. Returns the moved reports folder."""
    from parity.cli import main
    from parity.testing.jobs import TINY_BASE, write_job

    tmp = tmp_path_factory.mktemp("nightly")
    jobs = [
        write_job(tmp / "training", name=name, sample=CFG_SAMPLE if name == "lora_cfg" else SAMPLE)
        for name in JOBS
    ]
    reports = tmp / "reports"
    history = reports / "history.parquet"
    for night in (1, 2, 3):
        if night == 3:  # lora_b's second preview is replaced by its first: a regression
            first, second = sorted((jobs[1] / "samples").glob("*.jpg"))
            shutil.copyfile(first, second)
        args = ["run", *map(str, jobs), "--base-model", str(TINY_BASE), "--history",
                str(history), "--out", str(reports / f"nightly-2026-12-0{night}")]  # fmt: skip
        assert main(args) in (0, 1)
    assert main(["report", "--history", str(history), "--out", str(reports / "dashboard")]) == 0
    target = tmp / "artifact upload" / "reports"
    target.parent.mkdir()
    shutil.move(reports, target)
    shutil.rmtree(tmp / "training")
    return target


def _chromium(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    profile = tmp_path / "chromium-profile"
    cmd = [
        CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
        "--no-first-run", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--enable-logging=stderr", "--v=0", f"--user-data-dir={profile}",
        *args,
    ]  # fmt: skip
    return subprocess.run(cmd, capture_output=True, text=True, timeout=90, check=False)


def _dom(tmp_path: Path, page: Path, fragment: str = "", height: int = 4000) -> str:
    proc = _chromium(
        tmp_path, f"--window-size=1280,{height}", "--virtual-time-budget=8000", "--dump-dom",
        page.as_uri() + fragment,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "<html" in proc.stdout, proc.stderr[-2000:]
    # The page logged nothing: no script error, no warning.
    console = [line for line in proc.stderr.splitlines() if ":CONSOLE" in line]
    assert console == [], console
    root = re.search(r"<html[^>]*>", proc.stdout)[0]
    assert "data-js-errors" not in root and "data-files-broken" not in root, root
    return proc.stdout


def _job_rows(dom: str) -> list[tuple[str, bool]]:
    """(job, hidden) of each overview row, in the order shown."""
    rows = re.findall(r'<tr class="job[^"]*"([^>]*)>', dom)
    return [(re.search(r'data-job="([^"]+)"', r)[1], " hidden" in r) for r in rows]


def _links(html: str) -> list[str]:
    return re.findall(r'(?:href|src)="([^"#][^"]*|#[^"]*)"', html)


def test_overview_in_a_browser(moved, tmp_path):
    index = moved / "dashboard" / "index.html"
    dom = _dom(tmp_path, index)
    assert 'data-ready="true"' in dom and "3 of 3 jobs shown" in dom
    # The regressed job comes first; all three are shown.
    assert _job_rows(dom) == [(REGRESSED, False), ("lora_a", False), ("lora_cfg", False)]
    row = re.search(rf'<tr class="job regressed" data-job="{REGRESSED}".*?</tr>', dom, re.S)[0]
    assert 'data-regressions="1"' in row and "10#1 match→mismatch" in row
    # "regressed only" hides the others.
    dom = _dom(tmp_path, index, "#regressed")
    assert _job_rows(dom) == [(REGRESSED, False), ("lora_a", True), ("lora_cfg", True)]
    assert "1 of 3 jobs shown" in dom
    # By cause: the steady cfg mismatch; sorting by name.
    dom = _dom(tmp_path, index, "#cause=cfg&sort=job")
    assert _job_rows(dom) == [("lora_a", True), (REGRESSED, True), ("lora_cfg", False)]
    # Each row's last-run link reaches that run's report.html, in the moved folder.
    for job in JOBS:
        row = re.search(rf'<tr class="job[^"]*" data-job="{job}".*?</tr>', dom, re.S)[0]
        href = re.search(r'<a class="report-link" href="([^"]+)"', row)[1]
        report = (index.parent / unquote(href)).resolve()
        assert report == (moved / "nightly-2026-12-03" / job / "report.html").resolve()
        assert f"<title>parity report: {job}</title>" in report.read_text(encoding="utf-8")


def test_job_page_in_a_browser(moved, tmp_path):
    page = moved / "dashboard" / "jobs" / f"{job_slug(REGRESSED)}.html"
    dom = _dom(tmp_path, page, height=6000)
    root = re.search(r"<html[^>]*>", dom)[0]
    assert 'data-charts="2"' in root  # plotly drew both charts from the shared script
    assert dom.count('class="main-svg"') >= 2
    # The regression's preview and both nights' renders loaded; nothing broken.
    loaded = int(re.search(r'data-images-loaded="(\d+)"', root)[1])
    assert 'data-images-broken="0"' in root and loaded == 3
    card = re.search(r'<article class="card regression-card" id="s10-i1">.*?</article>', dom,
                     re.S)[0]  # fmt: skip
    hrefs = re.findall(r'<a class="card-link" href="([^"]+)"', card)
    assert [urldefrag(h)[0] for h in hrefs] == [
        f"../../nightly-2026-12-0{n}/{REGRESSED}/report.html" for n in (2, 3)
    ]
    for href in hrefs:  # the preview's card is in both reports
        path, anchor = urldefrag(href)
        assert f'id="{anchor}"' in (page.parent / unquote(path)).read_text(encoding="utf-8")


HOVER_AND_CLICK = """<!DOCTYPE html>
<html><body>
<iframe id="page" src="%s" width="1200" height="2400"></iframe>
<pre id="out"></pre>
<script>
// Hovers the last run's point of the SSIM chart, then clicks the second run's point.
var frame = document.getElementById("page"), out = document.getElementById("out");
var clicked = false;
var timer = setInterval(function () {
  var w = frame.contentWindow, d = w && w.document;
  if (clicked || !d || d.documentElement.getAttribute("data-charts") !== "2") return;
  clearInterval(timer);
  var gd = d.getElementById("chart-0");
  w.Plotly.Fx.hover(gd, [{curveNumber: 0, pointNumber: 2}, {curveNumber: 1, pointNumber: 2}]);
  out.setAttribute("data-hover", d.querySelector(".hoverlayer").textContent);
  clicked = true;
  frame.addEventListener("load", function () {
    out.setAttribute("data-opened", frame.contentWindow.location.href);
  });
  // As a click on the page does: from the page's own context (a relative address is
  // resolved against the page that runs the script).
  w.setTimeout('document.getElementById("chart-0").emit("plotly_click", ' +
               '{points: [{curveNumber: 1, pointIndex: 1, pointNumber: 1}]})', 0);
}, 50);
</script>
</body></html>
"""


def test_a_chart_point_names_its_run_and_opens_its_report(moved, tmp_path):
    page = moved / "dashboard" / "jobs" / f"{job_slug(REGRESSED)}.html"
    probe = tmp_path / "probe" / "hover.html"
    probe.parent.mkdir()
    probe.write_text(HOVER_AND_CLICK % page.as_uri(), encoding="utf-8")
    proc = _chromium(tmp_path, "--allow-file-access-from-files", "--window-size=1280,2400",
                     "--virtual-time-budget=10000", "--dump-dom", probe.as_uri())  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = re.search(r'<pre id="out"[^>]*>', proc.stdout)[0]
    hover = unescape(re.search(r'data-hover="([^"]*)"', out)[1])
    # the run, its numbers and the parity version and commit that ran it
    assert f"{REGRESSED}/nightly-2026-12-03" in hover, hover
    assert "1 match, 1 mismatch, 0 error" in hover and "parity 0.1.0" in hover, hover
    assert re.search(r"mean SSIM: 0\.\d{4}", hover) and "min SSIM" in hover, hover
    opened = re.search(r'data-opened="([^"]*)"', out)
    assert opened, out
    assert opened[1] == (moved / f"nightly-2026-12-02/{REGRESSED}/report.html").as_uri()


def test_nothing_is_broken_after_the_move(moved, tmp_path):
    """Every link and image of every page resolves inside the moved folder, and no page
    refers to a network address."""
    pages = [moved / "dashboard" / "index.html", *(moved / "dashboard" / "jobs").glob("*.html")]
    assert len(pages) == 1 + len(JOBS)
    checked = 0
    for page in pages:
        html = page.read_text(encoding="utf-8")
        assert not re.search(r'(?:href|src)="(?:https?:)?//', html)
        for link in _links(html):
            path, anchor = urldefrag(link)
            target = (page.parent / unquote(path)).resolve() if path else page
            assert target.is_file(), (page.name, link)
            assert moved.resolve() in target.parents, (page.name, link)
            if anchor and target.suffix == ".html":
                assert f'id="{anchor}"' in target.read_text(encoding="utf-8"), link
            checked += 1
    assert checked >= 25


def test_screenshots(moved, tmp_path):
    """Screenshots of both pages (docs/img/ keeps a copy: PARITY_SCREENSHOTS=DIR)."""
    shots = {
        "dashboard.png": (moved / "dashboard" / "index.html", "1280,560"),
        "dashboard-job.png": (moved / "dashboard" / "jobs" / f"{job_slug(REGRESSED)}.html",
                              "1280,1300"),
    }  # fmt: skip
    keep = os.environ.get("PARITY_SCREENSHOTS")
    for name, (page, size) in shots.items():
        shot = tmp_path / name
        proc = _chromium(tmp_path, f"--screenshot={shot}", f"--window-size={size}",
                         "--hide-scrollbars", "--virtual-time-budget=8000", page.as_uri())  # fmt: skip
        assert proc.returncode == 0, proc.stderr[-2000:]
        with Image.open(shot) as im:
            pixels = np.asarray(im.convert("RGB"))
        assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 200 and pixels.std() > 10
        if keep:
            Path(keep).mkdir(parents=True, exist_ok=True)
            with Image.open(shot) as im:  # a small palette PNG for the docs
                im.convert("RGB").quantize(128).save(Path(keep) / name, optimize=True)
