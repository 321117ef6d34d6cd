"""Video previews in the HTML report, the text report and the pytest plugin's failure
text: a run folder made by hand from real files (an animated lossy WebP preview written
as ai-toolkit writes one, parity's lossless animated WebP renders) and rows scored by
:func:`parity.compare.compare_clips` on those files."""

from __future__ import annotations

import re
from html.parser import HTMLParser
from pathlib import Path
from types import SimpleNamespace
from typing import Any
from urllib.parse import unquote

import numpy as np
import pytest
from PIL import Image

from parity.attribute import ALL, Counterfactual
from parity.compare import Thresholds, compare_clips, frame_ms, inspect_codec, load_clip
from parity.plan import Case
from parity.report import write_diff_heatmap, write_report
from parity.report.text import (
    _schedule_lines,
    explain_lines,
    frame_text,
    playback,
    playback_text,
    sigma_schedule,
)
from parity.results import ResultRow, VideoScores, read_results, save_render, write_results
from parity.run_info import RunInfo
from parity.settings import Cause, RenderSettings
from parity.wan.checkpoints import WAN21_SCHEDULER

EVIL_PROMPT = '<script>alert(1)</script> a "cat" & <b>dog</b> walks'
JOB = "wan <job>"
FPS = 8
FRAMES = 9
#: The frame of the reference render that is visibly changed (0-based): the worst frame.
CHANGED = 5
#: Where that frame is changed: rows and columns of a block.
BLOCK = (slice(8, 40), slice(20, 56))


def clip_frames(count: int = FRAMES) -> list[np.ndarray]:
    """Synthetic 64x64 frames that differ from each other: a gradient with a square
    moving across it."""
    y, x = np.mgrid[0:64, 0:64]
    frames = []
    for i in range(count):
        frame = np.stack([x * 4, y * 4, np.full_like(x, 90 + 10 * i)], axis=2)
        frame[40:56, 4 + 6 * i : 16 + 6 * i] = (250, 240, 30)
        frames.append(np.clip(frame, 0, 255).astype(np.uint8))
    return frames


def write_preview(path: Path, frames: list[np.ndarray], fps: int) -> None:
    """An animated lossy WebP as ai-toolkit saves a video sample: Pillow, quality 80,
    ``1000 // fps`` ms a frame, looping."""
    path.parent.mkdir(parents=True, exist_ok=True)
    images = [Image.fromarray(f) for f in frames]
    images[0].save(
        path, save_all=True, append_images=images[1:], duration=1000 // fps, loop=0, quality=80
    )


def changed(frames: list[np.ndarray]) -> list[np.ndarray]:
    """The frames with frame :data:`CHANGED` visibly changed (a block inverted)."""
    out = [f.copy() for f in frames]
    out[CHANGED][BLOCK] = 255 - out[CHANGED][BLOCK]
    return out


def scores(
    run_dir: Path, preview: str, render: str, fps: int | None
) -> tuple[VideoScores | None, Any]:
    """The row's scores of a render (written at ``fps``) against a preview, as the runner
    computes them."""
    rendered = load_clip(run_dir / render)
    [c] = compare_clips(
        load_clip(run_dir / preview),
        [rendered.frames],
        codec=inspect_codec(run_dir / preview),
        frame_ms_renders=[frame_ms(fps)],
    )
    return VideoScores.of(c), c


def wan_settings(**changes: object) -> RenderSettings:
    """A Wan 2.1 render's settings: ai-toolkit's FlowMatch Euler, shift 3."""
    base = RenderSettings(
        prompt=EVIL_PROMPT,
        negative_prompt="",
        width=64,
        height=64,
        pipeline_guidance=5.0,
        steps=6,
        seed=42,
        family="wan21",
        num_frames=FRAMES,
        fps=FPS,
    )
    return base.replace(**changes)


#: The server's Wan 2.1 scheduler: UniPC with flow sigmas.
SERVER = dict(
    scheduler_shift=WAN21_SCHEDULER.shift,
    scheduler_class=WAN21_SCHEDULER.class_name,
    scheduler_options=WAN21_SCHEDULER.options,
)


def make_run(tmp_path: Path) -> Path:
    """A run folder with three previews of a video job, its results.json written and
    read back:

    - step 100 #0: a 9-frame preview; the render has frame 6 (index 5) changed, so that
      is the worst frame; the scheduler is the cause and its counterfactual (the original
      frames, losslessly) is the best one;
    - step 100 #1: the render has 5 frames at 16 fps: it plays differently;
    - step 100 #2: a one-frame item of the video job (a still WebP) against a PNG render.
    """
    run_dir = tmp_path / "reports" / "wan job" / "20260101T000000Z"
    frames = clip_frames()
    previews = [f"previews/100/1767225600000__000000100_{i}.webp" for i in range(3)]
    write_preview(run_dir / previews[0], frames, FPS)
    write_preview(run_dir / previews[1], frames, FPS)
    still = run_dir / previews[2]
    Image.fromarray(frames[0]).save(still, quality=80)
    save_render(changed(frames), run_dir / "renders/100/0.webp", fps=FPS)
    save_render(frames[:5], run_dir / "renders/100/1.webp", fps=16)
    save_render([Image.fromarray(changed(frames)[CHANGED])], run_dir / "renders/100/2.png")
    save_render(frames, run_dir / "counterfactuals/100/0/all.webp", fps=FPS)

    # What the rows' frame rates rest on: the preview's duration as read from its file.
    assert load_clip(run_dir / previews[0]).frame_ms == 1000 // FPS, (
        "parity.compare.load_clip reads no frame duration from an animated WebP (Pillow "
        "knows a frame's duration once the frame is loaded)"
    )
    video, c = scores(run_dir, previews[0], "renders/100/0.webp", FPS)
    all_video, all_c = scores(run_dir, previews[0], "counterfactuals/100/0/all.webp", FPS)
    assert video is not None and video.worst_frame == CHANGED  # the fixture is what it says
    assert all_video is not None and all_c.ssim > 0.99
    counterfactuals = [
        Counterfactual(
            name=ALL,
            switched=(Cause.SCHEDULER,),
            settings=wan_settings(),
            ssim=all_c.ssim,
            psnr=all_c.psnr,
            latent_distance=None,
            match=True,
            image="counterfactuals/100/0/all.webp",
        ),
        Counterfactual(  # one candidate: leaving it out is the reference render
            name=str(Cause.SCHEDULER),
            switched=(),
            settings=wan_settings(**SERVER),
            ssim=c.ssim,
            psnr=c.psnr,
            latent_distance=None,
            match=False,
            image="renders/100/0.webp",
            confirmed=True,
        ),
    ]
    rows = [
        ResultRow(
            job=JOB,
            step=100,
            index=0,
            preview=previews[0],
            render="renders/100/0.webp",
            width_preview=64,
            height_preview=64,
            width_render=64,
            height_render=64,
            ssim=c.ssim,
            psnr=c.psnr,
            verdict="mismatch",
            causes=(Cause.SCHEDULER,),
            candidate_causes=(Cause.SCHEDULER,),
            explained=True,
            counterfactuals=counterfactuals,
            counterfactual_renders=1,
            best_counterfactual="counterfactuals/100/0/all.webp",
            prompt=EVIL_PROMPT,
            video=video,
        )
    ]
    video, c = scores(run_dir, previews[1], "renders/100/1.webp", 16)
    rows.append(
        ResultRow(
            job=JOB,
            step=100,
            index=1,
            preview=previews[1],
            render="renders/100/1.webp",
            ssim=c.ssim,
            psnr=c.psnr,
            verdict="mismatch",
            causes=(Cause.FRAMES, Cause.FPS),
            prompt="a <b>short</b> clip",
            video=video,
        )
    )
    video, c = scores(run_dir, previews[2], "renders/100/2.png", None)
    assert video is None  # a still preview and a one-frame render: an image's scores
    rows.append(
        ResultRow(
            job=JOB,
            step=100,
            index=2,
            preview=previews[2],
            render="renders/100/2.png",
            ssim=c.ssim,
            psnr=c.psnr,
            verdict="mismatch",
            prompt="one frame",
        )
    )
    write_results(run_dir, rows)
    return run_dir


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[ResultRow], str]:
    run_dir = make_run(tmp_path_factory.mktemp("video"))
    rows = read_results(run_dir)  # what a report of a finished run reads
    info = RunInfo.from_json({"job_path": "/data/wan job", "device": "cpu"})
    out = write_report(run_dir, rows, job_name=JOB, run_info=info)
    return run_dir, rows, out.read_text(encoding="utf-8")


def article(html: str, ident: str) -> str:
    """One card's markup."""
    start = html.index(f'id="{ident}"')
    return html[start : html.index("</article>", start)]


class _Tags(HTMLParser):
    """Start tags with their attributes, in document order."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))


def tags(markup: str, name: str) -> list[dict[str, str | None]]:
    parser = _Tags()
    parser.feed(markup)
    return [attrs for tag, attrs in parser.tags if tag == name]


# ------------------------------------------------------------------------ HTML report


def test_preview_render_and_counterfactual_play_as_webp(run):
    run_dir, rows, html = run
    card = article(html, "s100-i0")
    sources = [img["src"] for img in tags(card, "img")]
    # the image grid (preview, render, heatmap, best counterfactual), then the flip pair
    assert sources == [
        rows[0].preview,
        "renders/100/0.webp",
        "diffs/100/0.png",
        "counterfactuals/100/0/all.webp",
        rows[0].preview,
        "renders/100/0.webp",
    ]
    for src in sources:
        assert (run_dir / unquote(src)).is_file()
    videos = [img for img in tags(card, "img") if img.get("class") == "video"]
    assert [v["src"] for v in videos] == [rows[0].preview, "renders/100/0.webp", sources[3]]
    plays = "9 frames at 8 fps (125 ms a frame)"
    assert all(v["data-playback"] == plays for v in videos)
    assert card.count(f'<span class="playback">{plays}</span>') == 3
    # The flip flips between the two videos, and says they loop on their own clocks.
    flip = card[card.index('<figure class="flip"') :]
    flip = flip[: flip.index("</figure>")]
    assert [i["src"] for i in tags(flip, "img")] == [rows[0].preview, "renders/100/0.webp"]
    assert "each on its own clock" in flip


def test_frame_strip_has_one_mark_per_frame_and_marks_the_worst(run):
    _, rows, html = run
    card = article(html, "s100-i0")
    strip = card[card.index('<svg class="frame-strip"') : card.index("</svg>")]
    groups = tags(strip, "g")
    assert [int(g["data-frame"]) for g in groups] == list(range(FRAMES))
    worst = [g for g in groups if "worst" in (g["class"] or "").split()]
    assert [int(w["data-frame"]) for w in worst] == [CHANGED]
    bars = [r for r in tags(strip, "rect") if r["class"] == "bar"]
    heights = [float(r["height"]) for r in bars]
    assert heights[CHANGED] == max(heights) == 40.0 and min(heights) >= 1.0
    titles = re.findall(r"<title>([^<]*)</title>", strip)
    assert len(titles) == FRAMES
    frame = rows[0].video.frames[CHANGED]
    assert titles[CHANGED] == (
        f"frame {CHANGED + 1} of {FRAMES}: SSIM {frame['ssim']:.4f}, "
        f"PSNR {frame['psnr']:.2f} dB (the worst frame)"
    )
    assert titles[0].startswith(f"frame 1 of {FRAMES}: SSIM ")
    assert f'data-worst-frame="{CHANGED + 1}"' in card
    assert f"{CHANGED + 1} of {FRAMES}</td>" in card  # the metrics table
    assert "SSIM (worst frame)" in card


def test_heatmap_is_the_worst_frames(run, tmp_path):
    run_dir, rows, html = run
    card = article(html, "s100-i0")
    assert f"Difference, frame {CHANGED + 1} of {FRAMES} (the worst)" in card
    written = np.asarray(Image.open(run_dir / "diffs/100/0.png").convert("RGB"), np.int32)
    preview, render = run_dir / rows[0].preview, run_dir / rows[0].render
    worst = write_diff_heatmap(preview, render, tmp_path / "worst.png", frame=CHANGED)
    first = write_diff_heatmap(preview, render, tmp_path / "first.png", frame=0)
    worst_px = np.asarray(Image.open(worst).convert("RGB"), np.int32)
    first_px = np.asarray(Image.open(first).convert("RGB"), np.int32)
    assert (written == worst_px).all()
    assert (written != first_px).any()
    # Bright where the frame was changed; frame 0's heatmap is codec noise there.
    assert written[BLOCK].sum(axis=2).mean() > first_px[BLOCK].sum(axis=2).mean() + 300
    with pytest.raises(ValueError, match="no frame 9"):
        write_diff_heatmap(preview, render, tmp_path / "x.png", frame=FRAMES)


def test_still_webp_of_a_video_job_is_an_image_card(run):
    run_dir, _, html = run
    card = article(html, "s100-i2")
    assert "frame-strip" not in card and 'class="video"' not in card
    assert (run_dir / "diffs/100/2.png").is_file()
    assert "<figcaption>Difference</figcaption>" in card


def test_frames_and_rate_that_differ_are_said(run):
    _, rows, html = run
    card = article(html, "s100-i1")
    assert rows[1].video.frames_render == 5 and len(rows[1].video.frames) == 5
    assert "9 frames at 8 fps (125 ms a frame)" in card
    assert "5 frames at 16 fps (62 ms a frame)" in card
    assert (
        "Plays differently: the preview has 9 frames at 8 fps (125 ms a frame), the "
        "reference render 5 frames at 16 fps (62 ms a frame); the 5 frames both have are "
        "scored (never a match)." in card
    )
    assert len(tags(card[card.index("<svg") : card.index("</svg>")], "g")) == 5


def test_sigma_schedules_of_a_scheduler_cause(run):
    _, rows, html = run
    card = article(html, "s100-i0")
    section = card[card.index('class="sigmas"') :]
    section = section[: section.index("</section>")]
    preview = ", ".join(f"{x:.3f}" for x in sigma_schedule(wan_settings()))
    server = ", ".join(f"{x:.3f}" for x in sigma_schedule(wan_settings(**SERVER)))
    assert preview != server
    assert f"<code>{preview}</code>" in section and f"<code>{server}</code>" in section
    assert "scheduler shift 3, 6 steps" in section
    assert "UniPCMultistepScheduler" in section
    assert "Sigma schedules" not in article(html, "s100-i1")


def test_user_text_is_escaped(run):
    _, _, html = run
    assert "<script>alert" not in html and "<b>dog</b>" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "wan &lt;job&gt;" in html and "a &lt;b&gt;short&lt;/b&gt; clip" in html
    assert len(re.findall(r"<script\b", html)) == 1
    assert not re.search(r"https?://", html)  # the strip is inline SVG, nothing fetched


# ------------------------------------------------------------------------ text report


def test_sigma_schedule_is_what_each_scheduler_steps_through():
    flow = sigma_schedule(wan_settings())
    unipc = sigma_schedule(wan_settings(**SERVER))
    for sigmas in (flow, unipc):
        assert len(sigmas) == 6 + 1 and sigmas[0] == 1.0 and sigmas[-1] == 0.0
        assert sigmas == sorted(sigmas, reverse=True)
        assert all(round(s, 3) == s for s in sigmas)
    # An image pipeline's default schedule, linspace(1, 1/N, N), shifted by 3:
    image = sigma_schedule(wan_settings(num_frames=None, fps=None, family="zimage"))
    linear = np.linspace(1.0, 1 / 6, 6)
    assert image[:-1] == [round(3 * t / (1 + 2 * t), 3) for t in linear]


def test_text_report_names_the_worst_frame_and_the_means(run):
    run_dir, rows, _ = run
    video = rows[0].video
    worst = video.frames[CHANGED]
    text = frame_text(video)
    assert text == (
        f"worst frame {CHANGED + 1} of {FRAMES} (lowest SSIM): SSIM {worst['ssim']:.4f}, "
        f"PSNR {worst['psnr']:.2f} dB; mean SSIM {video.mean_ssim:.4f}, "
        f"PSNR {video.mean_psnr:.2f} dB"
    )
    assert video.mean_ssim > worst["ssim"]
    assert playback_text(video) is None
    job = SimpleNamespace(name=JOB)
    case = Case(step=100, index=0, preview=None, sample=None)
    lines = explain_lines(
        job, case, rows[0], out_dir=run_dir, server_diffusers=None, lora_root=run_dir
    )
    joined = "\n".join(lines)
    assert f"reference render vs preview, frame by frame: {text}" in joined
    assert f"worst over the frames (the verdict's figures): SSIM {rows[0].ssim:.4f}" in joined
    assert "both play 9 frames at 8 fps (125 ms a frame)" in joined
    lines = explain_lines(
        job, case, rows[1], out_dir=run_dir, server_diffusers=None, lora_root=run_dir
    )
    assert any("the reference render 5 frames at 16 fps" in line for line in lines)


def test_text_report_lists_both_sigma_schedules():
    pair = SimpleNamespace(
        preview=wan_settings(),
        reference=wan_settings(**SERVER),
        differences=(Cause.SCHEDULER,),
    )
    lines = _schedule_lines(SimpleNamespace(pair=pair))
    preview = ", ".join(f"{x:.3f}" for x in sigma_schedule(pair.preview))
    server = ", ".join(f"{x:.3f}" for x in sigma_schedule(pair.reference))
    assert f"  preview (ai-toolkit)  {preview}" in lines
    assert f"  reference (server)    {server}" in lines
    no_schedule = SimpleNamespace(pair=SimpleNamespace(**{**vars(pair), "differences": ()}))
    assert _schedule_lines(no_schedule) == []


def test_playback_words():
    assert playback(1, None) == "1 frame (a still image)"
    assert playback(81, 62) == "81 frames at 16 fps (62 ms a frame)"
    assert playback(49, 41) == "49 frames at 24 fps (41 ms a frame)"
    assert playback(3, 7) == "3 frames at 142.9 fps (7 ms a frame)"  # no whole fps gives 7


# ------------------------------------------------------------------------ pytest plugin


def test_plugin_failure_text_names_the_worst_frame(run):
    from parity.pytest_plugin import _describe

    run_dir, rows, _ = run
    node = SimpleNamespace(name=JOB)
    text = _describe(node, rows[0], run_dir, run_thresholds=Thresholds())
    assert text.startswith(f"{JOB} step 100 preview 0: MISMATCH")
    assert f"  video: {frame_text(rows[0].video)} (SSIM, PSNR, latent above" in text
    assert f"worst frame {CHANGED + 1} of {FRAMES} (lowest SSIM)" in text
    assert f"  SSIM     {rows[0].ssim:.4f}" in text and "FAIL" in text
    assert "plays differently" not in text
    text = _describe(node, rows[1], run_dir, run_thresholds=Thresholds())
    assert "  plays differently: the preview has 9 frames at 8 fps" in text
    assert "video:" not in _describe(node, rows[2], run_dir, run_thresholds=Thresholds())


def test_plugin_drift_of_a_video_render_names_its_worst_frame(run):
    from parity.pytest_plugin import _drift

    run_dir, _, _ = run
    original = run_dir / "counterfactuals/100/0/all.webp"  # the frames before the change
    render = run_dir / "renders/100/0.webp"
    assert _drift(render, render) is None
    ssim, where = _drift(original, render)
    assert ssim < 0.9 and where == f", worst frame {CHANGED + 1} of {FRAMES}"
    assert _drift(render, run_dir / "renders/100/1.webp") == (
        -1.0,
        "; the baseline has 9 frames at 8 fps (125 ms a frame), the render 5 frames at "
        "16 fps (62 ms a frame)",
    )
