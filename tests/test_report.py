"""HTML run report: content, escaping, self-containment, image links and heatmaps."""

from __future__ import annotations

import json
import re
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote

import numpy as np
import pytest
from PIL import Image

from parity.attribute import Counterfactual
from parity.correct import CorrectedIndex, PlacedPrompt
from parity.report import write_diff_heatmap, write_report
from parity.results import ResultRow
from parity.run_info import RunInfo
from parity.settings import Cause, RenderSettings

EVIL_PROMPT = '<script>alert(1)</script> a "cat" & <b>dog</b>'


def _png(path: Path, rgb: tuple[int, int, int], size: tuple[int, int] = (32, 32)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, rgb).save(path)


def _jpeg(path: Path, rgb: tuple[int, int, int], size: tuple[int, int] = (32, 32)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, rgb).save(path, quality=90)


def make_run(tmp_path: Path) -> tuple[Path, list[ResultRow]]:
    """A job folder with JPEG previews and a run folder with renders, like a real run."""
    job = tmp_path / "jobs" / "my job"
    run_dir = tmp_path / "reports" / "my job" / "20250101T000000Z"
    run_dir.mkdir(parents=True)
    _jpeg(job / "samples" / "0_000000100.jpg", (120, 60, 200))
    _jpeg(job / "samples" / "1_000000100.jpg", (10, 200, 30))
    _png(run_dir / "renders" / "100" / "0.png", (120, 60, 200))
    # A render of a different size: the heatmap resizes it to the preview's size.
    _png(run_dir / "renders" / "100" / "1.png", (200, 20, 30), size=(48, 40))
    _png(run_dir / "counterfactuals" / "100" / "1" / "cfg.png", (20, 190, 40))
    rows = [
        ResultRow(
            job="my job",
            step=100,
            index=0,
            # absolute preview path: the report must link it relatively
            preview=str(job / "samples" / "0_000000100.jpg"),
            render="renders/100/0.png",
            ssim=0.991,
            psnr=41.5,
            ms_ssim=0.995,
            latent_distance=0.01,
            lpips=None,
            verdict="match",
            prompt="a plain prompt",
        ),
        ResultRow(
            job="my job",
            step=100,
            index=1,
            preview="../../../jobs/my job/samples/1_000000100.jpg",
            render="renders/100/1.png",
            ssim=0.41,
            psnr=12.25,
            ms_ssim=0.5,
            latent_distance=0.8,
            lpips=0.33,
            verdict="mismatch",
            causes=["cfg", "seed"],
            explained=True,
            prompt=EVIL_PROMPT,
            best_counterfactual="counterfactuals/100/1/cfg.png",
            counterfactuals=[
                Counterfactual(
                    name="cfg",
                    switched=(Cause.SEED,),
                    settings=RenderSettings(
                        prompt=EVIL_PROMPT,
                        negative_prompt="",
                        width=32,
                        height=32,
                        pipeline_guidance=0.0,
                        steps=4,
                        seed=1,
                        family="zimage",
                    ),
                    ssim=0.97,
                    psnr=35.0,
                    latent_distance=0.02,
                    match=False,
                    image="counterfactuals/100/1/cfg.png",
                    confirmed=True,
                )
            ],
            corrected_request_note="set cfg to 1.0",
        ),
        ResultRow(
            job="my job",
            step=200,
            index=0,
            preview=None,
            verdict="error",
            notes=["render failed: <oops> out of memory"],
            prompt="third",
        ),
    ]
    return run_dir, rows


RUN_INFO = {
    "job_path": "/data/jobs/my job",
    "started": "2025-01-01T00:00:00Z",
    "finished": "2025-01-01T00:10:00Z",
    "device": "cpu",
    "parity_version": "0.1.0",
    "thresholds": {"ssim_match": 0.95, "latent_match": 0.05},
}


class _Links(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.links: list[tuple[str, str]] = []
        self.text: list[str] = []

    def handle_starttag(self, tag, attrs):
        for name, value in attrs:
            if name in ("src", "href") and value is not None:
                self.links.append((tag, value))

    def handle_data(self, data):
        self.text.append(data)


@pytest.fixture()
def report(tmp_path):
    run_dir, rows = make_run(tmp_path)
    # Both previews of step 100 are placed in one corrected request.
    placed = {i: PlacedPrompt("100/0.json", i) for i in (0, 1)}
    corrected = {100: CorrectedIndex(step=100, placement=placed)}
    request = {"prompts": [{"prompt": "x</pre><script>alert(2)</script>"}], "cfg": 1.0}
    (run_dir / "corrected_requests" / "100").mkdir(parents=True)
    (run_dir / "corrected_requests" / "100" / "0.json").write_text(json.dumps(request), "utf-8")
    out = write_report(
        run_dir,
        rows,
        job_name="my job",
        run_info=RunInfo.from_json(RUN_INFO),
        corrected_requests=corrected,
        request_files={"100/0.json": request},
    )
    return run_dir, rows, out, out.read_text(encoding="utf-8")


def test_report_written_in_run_dir(report):
    run_dir, _, out, html = report
    assert out == run_dir / "report.html"
    assert html.lstrip().startswith("<!DOCTYPE html>")


def test_counts_and_rows_present(report):
    _, rows, _, html = report
    for verdict, n in (("match", 1), ("mismatch", 1), ("error", 1)):
        assert re.search(rf'data-count="{verdict}">{n}<', html), verdict
    assert 'data-count="total">3<' in html
    assert re.search(r'data-cause-count="cfg">1<', html)
    assert re.search(r'data-cause-count="seed">1<', html)
    for row in rows:
        assert f'id="s{row.step}-i{row.index}"' in html
        assert f'data-verdict="{row.verdict}"' in html
    # run info and thresholds
    for text in ("/data/jobs/my job", "2025-01-01T00:10:00Z", "ssim_match", "0.95", "cpu"):
        assert text in html
    # metrics, with LPIPS missing shown as n/a
    assert "0.9910" in html and "41.50 dB" in html and "n/a" in html
    assert "render failed: &lt;oops&gt; out of memory" in html


def test_user_text_is_escaped(report):
    _, _, _, html = report
    assert "<script>alert" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "<b>dog</b>" not in html
    # the corrected request JSON cannot close its <pre> either
    assert "</pre><script>" not in html
    # exactly one script element: the page's own filter script
    assert len(re.findall(r"<script\b", html)) == 1


def test_no_external_resources(report):
    _, _, _, html = report
    assert not re.search(r"https?://", html)
    assert "<link" not in html
    assert "@import" not in html


def test_relative_links_resolve(report):
    run_dir, _, _, html = report
    parser = _Links()
    parser.feed(html)
    images = [v for tag, v in parser.links if tag == "img"]
    # preview, render, diff for two rows; best counterfactual for one; a thumbnail in the
    # overview for both; the flip view's preview and render for both
    assert len(images) == 7 + 2 + 4
    for _, link in parser.links:
        assert not link.startswith(("/", "file:")), link
        if link.startswith("#"):
            continue
        target = run_dir / unquote(link)
        assert target.is_file(), link


def test_heatmaps_written_for_rows_with_both_images(report):
    run_dir, _, _, html = report
    assert (run_dir / "diffs" / "100" / "0.png").is_file()
    assert (run_dir / "diffs" / "100" / "1.png").is_file()
    assert not (run_dir / "diffs" / "200").exists()
    assert 'src="diffs/100/1.png"' in html
    # a heatmap has the preview's size
    with Image.open(run_dir / "diffs" / "100" / "1.png") as im:
        assert im.size == (32, 32)


def test_filters_present_and_hidden_without_js(report):
    _, _, _, html = report
    assert re.search(r'<div class="card filters" id="filters" hidden>', html)
    assert 'id="failures-only"' in html
    options = re.findall(r'<option value="([^"]*)">', html)
    assert options == ["", "cfg", "seed"]
    # no row is hidden in the markup: without JS every row shows
    assert not re.search(r"<article[^>]*\bhidden\b", html)


def test_corrected_request_shown_for_its_step(report):
    _, _, _, html = report
    assert html.count('<pre class="request">') == 2  # both rows of step 100
    assert "&#34;cfg&#34;: 1.0" in html or "&quot;cfg&quot;: 1.0" in html
    assert "set cfg to 1.0" in html


def test_report_of_errors_only(tmp_path):
    rows = [ResultRow(job="j", step=1, index=0, verdict="error", notes=["boom"])]
    out = write_report(tmp_path, rows, job_name="j", run_info=RunInfo())
    html = out.read_text(encoding="utf-8")
    assert 'data-count="error">1<' in html
    assert "No mismatches." in html
    assert "boom" in html
    assert "<img" not in html


def test_missing_image_file_is_not_linked(tmp_path):
    rows = [
        ResultRow(
            job="j", step=1, index=0, preview="gone.jpg", render="renders/1/0.png", verdict="match"
        )
    ]
    html = write_report(tmp_path, rows, job_name="j", run_info=RunInfo()).read_text(
        encoding="utf-8"
    )
    assert "file not found: gone.jpg" in html
    assert "<img" not in html


def test_diff_heatmap_reflects_differences(tmp_path):
    a = np.zeros((16, 16, 3), np.uint8)
    b = a.copy()
    b[:, 8:] = 255  # right half differs completely
    Image.fromarray(a).save(tmp_path / "a.png")
    Image.fromarray(b).save(tmp_path / "b.png")
    out = write_diff_heatmap(tmp_path / "a.png", tmp_path / "b.png", tmp_path / "d" / "h.png")
    heat = np.asarray(Image.open(out).convert("RGB"), dtype=np.int32)
    assert heat.shape == (16, 16, 3)
    left, right = heat[:, :8].sum(axis=2), heat[:, 8:].sum(axis=2)
    assert (left == left[0, 0]).all() and (right == right[0, 0]).all()
    assert right[0, 0] > left[0, 0] + 300  # bright where different, dark where equal
    same = write_diff_heatmap(tmp_path / "a.png", tmp_path / "a.png", tmp_path / "same.png")
    assert (np.asarray(Image.open(same).convert("RGB"), dtype=np.int32) == heat[0, 0]).all()


def test_heatmap_of_a_jpeg_preview_compares_the_render_encoded_alike(tmp_path):
    rng = np.random.default_rng(0)
    render = rng.integers(0, 256, size=(48, 48, 3), dtype=np.uint8)
    Image.fromarray(render).save(tmp_path / "render.png")
    Image.fromarray(render).save(tmp_path / "preview.jpg")  # ai-toolkit's save: quality 75
    exact = write_diff_heatmap(
        tmp_path / "preview.jpg", tmp_path / "render.png", tmp_path / "a.png"
    )
    assert np.asarray(Image.open(exact).convert("RGB")).max() <= 4  # black: an exact match
    lossless = write_diff_heatmap(
        tmp_path / "preview.jpg", tmp_path / "render.png", tmp_path / "b.png", codec_match=False
    )
    assert np.asarray(Image.open(lossless).convert("RGB")).max() > 60  # JPEG noise shows


def test_run_panel_is_tables_not_json(tmp_path):
    run_dir, rows = make_run(tmp_path)
    info = {
        **RUN_INFO,
        "options": {"ssim_min": 0.97, "request": ["/data/req <1>.json"], "no_history": True},
        "stack": {"python": "3.11.7", "libraries": {"diffusers": "0.42.1"},
                  "differs_from_pins": []},
        "server_diffusers": {"label": "072d15ee (0.38.0.dev0)", "legacy_sigmas": True,
                             "cfg_threshold": 0.0, "note": ""},
        "requests": [{"file": "/data/req <1>.json", "step": 100, "lora": "my job/x.safetensors",
                      "prompts": 2, "served": None}],
    }  # fmt: skip
    html = write_report(
        run_dir, rows, job_name="my job", run_info=RunInfo.from_json(info)
    ).read_text("utf-8")
    panel = html[html.index('id="run-info"') : html.index('id="overview"')]
    assert "{" not in panel and "<pre" not in panel
    assert "<code>--ssim-min</code></th><td>0.97" in panel
    assert "<code>--request</code></th><td>/data/req &lt;1&gt;.json" in panel
    assert "072d15ee (0.38.0.dev0): N-1 updates for N steps, CFG for g &gt; 0" in panel
    assert "<th>diffusers</th><td>0.42.1</td>" in panel


def test_counterfactual_rows_are_labelled(report):
    _, _, _, html = report
    table = html[html.index('class="list counterfactuals"') :]
    table = table[: table.index("</table>")]
    assert "<td>all but cfg</td>" in table and "confirmed" in table
    assert "all causes switched" in html  # the legend says what the rows are
