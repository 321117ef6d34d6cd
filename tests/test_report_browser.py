"""The run report as a browser shows it: headless Chromium runs the page's script."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from parity.correct import CorrectedIndex, PlacedPrompt
from parity.report import write_report
from parity.results import ResultRow
from parity.run_info import RunInfo

CHROMIUM = shutil.which("chromium")

pytestmark = pytest.mark.skipif(
    CHROMIUM is None,
    reason="headless browser checks need `chromium` on PATH (Debian package chromium)",
)

# Would rename the page if the browser ever ran it.
EVIL_PROMPT = "<script>document.title='pwned'</script><script>alert(1)</script>"
TITLE = "parity report: nightly job"


def _image(path: Path, seed: int, size: tuple[int, int] = (96, 96)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0 : size[1], 0 : size[0]]
    base = np.stack([x * 255 // size[0], y * 255 // size[1], np.full_like(x, 128)], axis=2)
    noise = rng.integers(0, 40, size=(size[1], size[0], 3))
    Image.fromarray(np.clip(base + noise, 0, 255).astype(np.uint8)).save(path)


@pytest.fixture()
def run_dir(tmp_path):
    job = tmp_path / "job"
    run = tmp_path / "reports" / "nightly job" / "20250101T000000Z"
    run.mkdir(parents=True)
    _image(job / "samples" / "a.png", 1)
    _image(job / "samples" / "b.png", 2)
    _image(run / "renders" / "100" / "0.png", 1)
    _image(run / "renders" / "100" / "1.png", 3)
    _image(run / "counterfactuals" / "100" / "1" / "seed.png", 2)
    rows = [
        ResultRow(
            job="nightly job",
            step=100,
            index=0,
            preview=str(job / "samples" / "a.png"),
            render="renders/100/0.png",
            ssim=0.998,
            psnr=48.2,
            ms_ssim=0.999,
            latent_distance=0.004,
            verdict="match",
            prompt="a red bicycle",
        ),
        ResultRow(
            job="nightly job",
            step=100,
            index=1,
            preview=str(job / "samples" / "b.png"),
            render="renders/100/1.png",
            ssim=0.42,
            psnr=14.1,
            ms_ssim=0.51,
            latent_distance=0.71,
            lpips=0.38,
            verdict="mismatch",
            causes=["seed"],
            explained=True,
            prompt=EVIL_PROMPT,
            best_counterfactual="counterfactuals/100/1/seed.png",
            corrected_request_note="send seed 42 instead of the random default",
        ),
        ResultRow(
            job="nightly job",
            step=200,
            index=0,
            verdict="error",
            notes=["preview file unreadable"],
            prompt="a blue car",
        ),
    ]
    run_info = {
        "job_path": str(job),
        "started": "2025-01-01T00:00:00Z",
        "finished": "2025-01-01T00:04:00Z",
        "device": "cpu",
        "parity_version": "0.1.0",
        "thresholds": {"ssim_match": 0.95},
    }
    request = {"prompts": [{"prompt": "a red bicycle", "seed": 42}]}
    (run / "corrected_requests" / "100").mkdir(parents=True)
    (run / "corrected_requests" / "100" / "0.json").write_text(json.dumps(request), "utf-8")
    write_report(
        run,
        rows,
        job_name="nightly job",
        run_info=RunInfo.from_json(run_info),
        corrected_requests={
            100: CorrectedIndex(step=100, placement={0: PlacedPrompt("100/0.json", 0)})
        },
        request_files={"100/0.json": request},
    )
    return run


def _chromium(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    profile = tmp_path / "chromium-profile"
    cmd = [
        CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
        "--no-first-run", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", f"--user-data-dir={profile}", *args,
    ]  # fmt: skip
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=False)


def _dom(tmp_path: Path, url: str) -> str:
    proc = _chromium(tmp_path, "--dump-dom", url)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "<html" in proc.stdout, proc.stderr[-2000:]
    return proc.stdout


def _article(dom: str, ident: str) -> str:
    m = re.search(rf'<article[^>]*id="{ident}"[^>]*>', dom)
    assert m, ident
    return m.group(0)


def test_page_after_script_ran(run_dir, tmp_path):
    dom = _dom(tmp_path, (run_dir / "report.html").as_uri())
    # the page script ran: the filter bar is shown and counts the rows
    assert 'class="js"' in dom
    assert re.search(r'id="filters"(?![^>]*hidden)', dom)
    assert "3 of 3 shown" in dom
    # summary counts as displayed
    for verdict in ("match", "mismatch", "error"):
        assert re.search(rf'data-count="{verdict}">1<', dom)
    # the prompt is text, and no injected script ran
    assert f"<title>{TITLE}</title>" in dom
    assert "pwned" not in dom.split("<body", 1)[0]
    assert "&lt;script&gt;document.title='pwned'&lt;/script&gt;" in dom
    assert len(re.findall(r"<script\b", dom)) == 1


def test_filters_from_address(run_dir, tmp_path):
    url = (run_dir / "report.html").as_uri() + "#failures&cause=seed"
    dom = _dom(tmp_path, url)
    assert "1 of 3 shown" in dom
    assert "hidden" in _article(dom, "s100-i0")
    assert "hidden" in _article(dom, "s200-i0")  # an error, but without cause seed
    assert "hidden" not in _article(dom, "s100-i1")
    dom = _dom(tmp_path, (run_dir / "report.html").as_uri() + "#failures")
    assert "2 of 3 shown" in dom
    assert "hidden" not in _article(dom, "s200-i0")


def test_screenshot_kept_with_run(run_dir, tmp_path):
    shot = run_dir / "report.png"
    proc = _chromium(
        tmp_path, f"--screenshot={shot}", "--window-size=1280,2000",
        "--virtual-time-budget=3000", (run_dir / "report.html").as_uri(),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert shot.is_file()
    with Image.open(shot) as im:
        assert im.size == (1280, 2000)
        pixels = np.asarray(im.convert("RGB"))
    # a rendered page, not a blank one: many colours, including the verdict colours
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 500
    assert pixels.std() > 10


# ------------------------------------------------------------ a run folder that travels

TRAVEL_SAMPLE = {
    "width": 64,
    "height": 64,
    "seed": 3,
    "guidance_scale": 0,
    "sample_steps": 3,
    "neg": "",
    "samples": [
        {"prompt": "[trigger] a red cube"},  # reproduced exactly at step 0 (no LoRA yet)
        {"prompt": "[trigger] a tall tower", "guidance_scale": 4},  # cfg: a mismatch
    ],
}


@pytest.fixture()
def moved_run(tmp_path):
    """A finished run whose folder was moved, and whose job folder is gone from where it
    was: the report may rely on nothing outside the run folder."""
    from parity.job import read_job
    from parity.run import RunOptions, run_job
    from parity.testing.jobs import TINY_BASE, shared_engine, write_job

    job = write_job(tmp_path / "training", name="travel", sample=TRAVEL_SAMPLE,
                    preview_steps=(0, 10))  # fmt: skip
    run = tmp_path / "reports" / "travel" / "run"
    summary = run_job(read_job(job), shared_engine(TINY_BASE), run, RunOptions(progress=False))
    assert [r.verdict for r in summary.rows] == ["match", "mismatch", "match", "mismatch"]
    # Same filesystem: the kept previews are hard links, not copies.
    kept = run / summary.rows[0].preview
    assert kept.stat().st_ino == Path(summary.rows[0].preview_source).stat().st_ino
    moved = tmp_path / "artifact upload" / "parity run"
    moved.parent.mkdir()
    shutil.move(run, moved)
    shutil.move(job, tmp_path / "training" / "gone")
    return moved


def _image_counts(dom: str) -> tuple[int, int, int]:
    loaded = re.search(r'data-images-loaded="(\d+)"', dom)
    broken = re.search(r'data-images-broken="(\d+)"', dom)
    assert loaded and broken, dom[:500]
    return int(loaded[1]), int(broken[1]), len(re.findall(r"<img\b", dom))


def _tall_dom(tmp_path: Path, report: Path) -> str:
    # A window tall enough that every lazily loaded image is in view and loads.
    proc = _chromium(
        tmp_path, "--window-size=1280,30000", "--virtual-time-budget=8000", "--dump-dom",
        report.as_uri(),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout


def test_moved_run_folder_report_has_no_broken_image(moved_run, tmp_path):
    dom = _tall_dom(tmp_path, moved_run / "report.html")
    loaded, broken, images = _image_counts(dom)
    # 4 cards: preview, render, heatmap; best counterfactual and flip pair where they apply
    assert images >= 4 * 3 + 4
    assert (loaded, broken) == (images, 0)
    assert "../" not in " ".join(re.findall(r'src="([^"]+)"', dom))
    # The rows refer to the copies kept in the run folder too.
    rows = json.loads((moved_run / "results.json").read_text())
    assert all((moved_run / r["preview"]).is_file() for r in rows)
    # The overview links each thumbnail to its card; the flip control is live.
    for row in rows:
        card = f"s{row['step']}-i{row['index']}"
        assert re.search(rf'<a class="thumb v-{row["verdict"]}" href="#{card}"', dom)
        assert f'id="{card}"' in dom
    assert re.search(r'<button type="button" class="flip-button">flip: showing preview', dom)
    # The check would see a missing file: remove one copy and one image breaks.
    (moved_run / rows[1]["preview"]).unlink()
    loaded, broken, images = _image_counts(_tall_dom(tmp_path, moved_run / "report.html"))
    assert broken >= 1 and loaded + broken == images


def test_exact_reproduction_heatmap_is_black(moved_run):
    rows = {
        (r["step"], r["index"]): r for r in json.loads((moved_run / "results.json").read_text())
    }
    assert rows[(0, 0)]["ssim"] == 1.0  # step 0 has no LoRA: the same settings exactly
    heat = np.asarray(Image.open(moved_run / "diffs" / "0" / "0.png").convert("RGB"))
    assert heat.max() <= 4  # magma's darkest colour everywhere
    mismatch = np.asarray(Image.open(moved_run / "diffs" / "0" / "1.png").convert("RGB"))
    assert mismatch.max() > 60
