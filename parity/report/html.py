"""Self-contained HTML report of one parity run.

The report lives in the run folder (``reports/<job>/<UTC timestamp>/report.html``) and
links its images relatively; a run keeps copies of the previews in the folder
(``previews/<step>/``), so the folder can be moved or uploaded as a whole. Nothing is
fetched from the network: CSS and the small script (filters, the preview/render flip, a
check for images that fail to load) are inline.

Layout: a summary (counts by verdict and by cause, the run's facts, options, stack and
thresholds as tables), an overview grid of thumbnails coloured by verdict linking to each
card, then one card per preview: preview | reference render | difference heatmap | best
counterfactual (and the server's own image, where given), a view that flips between
preview and render, the metrics, verdict, causes, prompt, the counterfactuals and the
corrected request that reproduces the preview.

A video preview is an animated WebP and so are parity's renders of it: a plain ``<img>``
plays them, so the card's preview, render and best counterfactual play side by side (each
captioned with its frame count and rate) and the flip flips between two playing videos.
A video's card adds a strip of its frames' scores (an inline SVG, the worst frame
marked), and its heatmap is the worst frame's. Where the scheduler is a cause, the card
lists both schedules' sigmas (:func:`parity.report.text.sigma_schedule`).
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import numpy as np

from parity.attribute import ALL, scheduler_text
from parity.correct import CorrectedIndex, PlacedPrompt
from parity.results import (
    ResultRow,
    VideoScores,
    atomic_write_bytes,
    atomic_write_text,
    served_drift,
    verdict_counts,
)
from parity.run_info import RunInfo
from parity.settings import Cause

log = logging.getLogger(__name__)

#: Absolute difference (fraction of full scale, 0..1) shown at the top of the heatmap's
#: colour map; larger differences are clipped to it. A fixed scale keeps heatmaps of
#: different previews comparable with each other.
HEATMAP_VMAX = 0.25

#: Colour map of the difference heatmaps (a matplotlib colormap name).
HEATMAP_CMAP = "magma"

#: Size of a video card's per-frame score strip, px (the bars share the width).
STRIP_WIDTH = 260
STRIP_HEIGHT = 40

#: Labels of well-known ``run_info`` keys, in display order. Other keys follow as given.
RUN_INFO_LABELS: dict[str, str] = {
    "job_path": "Job folder",
    "started": "Started (UTC)",
    "finished": "Finished (UTC)",
    "device": "Device",
    "parity_version": "parity version",
    "reference_model": "Reference model",
    "aitk_version": "ai-toolkit version",
    "steps": "Steps",
    "server_diffusers": "Server's diffusers",
    "lora_root": "LoRA root",
    "match": "Requests matched by",
    "attribution": "Attribution",
    "confirm_margin": "Confirm margin (1 - SSIM)",
    "noise_floor_k": "Noise floor factor k (a render matches within k times its floor)",
    "model_source": "Model",
    "unmatched_prompts": "Request prompts not compared",
    "unmatched_previews": "Previews without a request prompt",
    "served_missing": "Served images not found",
}

#: run_info keys shown as their own tables, or not at all (the job is the title, counts
#: are the tiles, served drift has its own line).
_RUN_INFO_TABLES = (
    "thresholds",
    "options",
    "stack",
    "counts",
    "requests",
    "job",
    "served_drift",
)


def write_diff_heatmap(
    preview_path: str | os.PathLike[str],
    render_path: str | os.PathLike[str],
    out_path: str | os.PathLike[str],
    *,
    vmax: float = HEATMAP_VMAX,
    cmap: str = HEATMAP_CMAP,
    codec_match: bool = True,
    frame: int = 0,
) -> Path:
    """Write a colour-mapped per-pixel difference image of a preview and its render.

    Parameters
    ----------
    preview_path, render_path
        Image files (any format PIL reads), or animated WebP videos. Frames are converted
        to RGB; the render's are resized to the preview's size (Lanczos) when the sizes
        differ.
    codec_match
        Encode the render the way the preview file was encoded first, as parity scores
        it (:func:`parity.compare.encode_frames_like`: a JPEG's quality tables and
        subsampling; a lossy WebP video as one animated file at its quality, every frame,
        since the encoder carries state from frame to frame): an exact reproduction of a
        lossy preview is then black, not codec noise.
    out_path
        PNG file to write (parent folders are created).
    vmax
        Absolute difference, as a fraction of full scale (0..1), mapped to the top of
        the colour map; larger differences are clipped.
    cmap
        Matplotlib colour map name.
    frame
        The frame of a video to compare (0-based; a video row's ``worst_frame``); 0 for
        a still image.

    Returns
    -------
    Path
        ``out_path``.

    Raises
    ------
    ValueError
        ``vmax`` is not positive, ``frame`` is not a frame of both files, or a file
        cannot be read (:class:`parity.errors.ImageReadError`).

    Notes
    -----
    The difference is ``mean_c |preview - render| / 255`` over the three channels, so a
    pixel value of 0 means identical and 1 means black against white.
    """
    import io

    import matplotlib
    from PIL import Image

    from parity.compare import encode_frames_like, inspect_codec, load_clip

    if not vmax > 0:
        raise ValueError(f"vmax must be positive, got {vmax}")
    preview, render = load_clip(preview_path), load_clip(render_path)
    if not 0 <= frame < min(len(preview), len(render)):
        raise ValueError(
            f"no frame {frame} in both files ({len(preview)} and {len(render)} frames)"
        )
    height, width = preview.frames[0].shape[:2]
    rendered = [
        f
        if f.shape[:2] == (height, width)
        else np.asarray(Image.fromarray(f).resize((width, height), Image.Resampling.LANCZOS))
        for f in render.frames
    ]
    if codec_match:
        rendered = encode_frames_like(rendered, inspect_codec(preview_path), render.frame_ms)
    a = preview.frames[frame].astype(np.float32)
    b = rendered[frame].astype(np.float32)
    diff = np.abs(a - b).mean(axis=2) / 255.0
    colours = matplotlib.colormaps[cmap](np.clip(diff / vmax, 0.0, 1.0))
    rgb = (colours[..., :3] * 255.0 + 0.5).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(rgb, mode="RGB").save(buf, format="PNG")
    out_path = Path(out_path)
    atomic_write_bytes(out_path, buf.getvalue())
    return out_path


@dataclass(frozen=True)
class _Image:
    """One image slot of a result card."""

    label: str
    href: str | None  # URL-quoted link relative to the report, None when missing
    note: str = ""  # shown instead of the image when href is None
    #: How an animated file plays ("9 frames at 16 fps (62 ms a frame)"); "" for a still.
    playback: str = ""


def _resolve(run_dir: Path, path: str | None) -> Path | None:
    if not path:
        return None
    p = Path(path)
    return p if p.is_absolute() else run_dir / p


def _href(run_dir: Path, path: str | None) -> str | None:
    """Relative, URL-quoted link from the run folder to ``path`` when the file exists."""
    full = _resolve(run_dir, path)
    if full is None or not full.is_file():
        return None
    rel = os.path.relpath(os.path.abspath(full), os.path.abspath(run_dir))
    return quote(Path(rel).as_posix(), safe="/")


def _readable(path: Path) -> bool:
    """Whether ``path`` is an image a browser can show (header check)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            im.verify()
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError):
        return False
    return True


def _playback(path: Path) -> str:
    """How an animated image file plays: its frame count and its first frame's duration,
    as :func:`parity.compare.load_clip` reads them (only the first frame is decoded);
    "" for a still."""
    from PIL import Image

    from parity.report.text import playback

    with Image.open(path) as im:
        frames = int(getattr(im, "n_frames", 1))
        if frames <= 1:
            return ""
        im.load()  # an animated WebP's frame duration is known once its frame is read
        duration = int(im.info.get("duration") or 0)
    return playback(frames, duration)


def _image(run_dir: Path, label: str, path: str | None, absent: str) -> _Image:
    href = _href(run_dir, path)
    full = _resolve(run_dir, path)
    if href is not None and full is not None and _readable(full):
        return _Image(label, href, playback=_playback(full))
    if href is not None:
        return _Image(label, None, f"not a readable image: {path}")
    note = absent if not path else f"file not found: {path}"
    return _Image(label, None, note)


def _fmt(value: Any, digits: int = 4, unit: str = "") -> str:
    if value is None:
        return "n/a"
    try:
        x = float(value)
    except (TypeError, ValueError):
        return str(value)
    if math.isnan(x):
        return "n/a"
    if math.isinf(x):
        return ("∞" if x > 0 else "-∞") + unit
    return f"{x:.{digits}f}{unit}"


def _plain(value: Any) -> str:
    """A run fact as one line of text (no JSON): lists joined, mappings as key: value."""
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, dict):
        if {"label", "legacy_sigmas", "cfg_threshold"} <= set(value):  # a diffusers era
            rule = "N-1 updates for N steps" if value["legacy_sigmas"] else "N updates for N steps"
            text = f"{value['label']}: {rule}, CFG for g > {value['cfg_threshold']:g}"
            return f"{text} ({value['note']})" if value.get("note") else text
        return "; ".join(f"{k}: {_plain(v)}" for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return ", ".join(_plain(v) for v in value) or "—"
    return str(value)


def _options_table(options: dict[str, Any]) -> list[tuple[str, str]]:
    """The recorded command-line options as (flag, value) rows."""
    return [("--" + str(k).replace("_", "-"), _plain(v)) for k, v in sorted(options.items())]


def _stack_table(stack: dict[str, Any]) -> tuple[list[tuple[str, str]], list[str]]:
    """(library, version) rows and the differences from parity's pins."""
    rows = [(str(k), _plain(v)) for k, v in (stack.get("libraries") or {}).items()]
    for key in ("python", "platform"):
        if key in stack:
            rows.append((key, _plain(stack[key])))
    return rows, [str(d) for d in stack.get("differs_from_pins") or []]


def _environment():
    import jinja2

    env = jinja2.Environment(
        loader=jinja2.PackageLoader("parity.report", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["num"] = _fmt
    return env


def _noise_floor_k() -> float:
    from parity.compare.noise import NOISE_FLOOR_K

    return NOISE_FLOOR_K


def render_template(name: str, **context: Any) -> str:
    """Render one of parity's HTML templates (autoescaped) with the shared stylesheet."""
    from markupsafe import Markup

    env = _environment()
    # The stylesheet is package text, not user data: inline it verbatim.
    css = Markup(env.loader.get_source(env, "style.css")[0])  # type: ignore[union-attr]
    return env.get_template(name).render(css=css, **context)


def _cause_counts(rows: list[ResultRow]) -> dict[str, int]:
    counts: Counter[str] = Counter()
    for row in rows:
        if row.verdict != "mismatch":
            continue
        if row.causes:
            counts.update(row.causes)
        else:
            counts["unattributed"] += 1
    return dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))


def write_report(
    run_dir: str | os.PathLike[str],
    rows: list[ResultRow],
    *,
    job_name: str,
    run_info: RunInfo,
    corrected_requests: Mapping[int, CorrectedIndex] | None = None,
    request_files: Mapping[str, dict[str, Any]] | None = None,
    out_name: str = "report.html",
) -> Path:
    """Render the HTML report of a run and the difference heatmaps it shows.

    Parameters
    ----------
    run_dir
        The run's output folder. Image paths in ``rows`` are relative to it (a preview
        may also be absolute); links in the report are made relative to ``run_dir``.
    rows
        One result row per preview; shown sorted by (step, index).
    job_name
        Shown in the title and summary.
    run_info
        Run facts for the summary: the record of run.json
        (:class:`parity.run_info.RunInfo`, :meth:`~parity.run_info.RunInfo.read`). Its
        ``thresholds``, ``options`` (the recorded command-line options), ``stack``
        (:func:`parity.stack.stack_record`) and ``requests`` are shown as tables, the
        keys of :data:`RUN_INFO_LABELS` under their labels, any other key as plain text.
    corrected_requests
        Per training step, the index of its corrected requests
        (:class:`parity.correct.CorrectedIndex`, :meth:`~parity.correct.CorrectedIndex.read_all`).
    request_files
        The corrected requests by file name (``"<step>/<k>.json"``): a card shows the
        request its preview is placed in.
    out_name
        File name of the report inside ``run_dir``.

    Returns
    -------
    Path
        The written report (``run_dir / out_name``), written atomically.

    Notes
    -----
    Heatmaps go to ``run_dir/diffs/<step>/<index>.png`` for rows that have both a
    preview and a render on disk; an unreadable image is logged and skipped.
    """
    run_dir = Path(run_dir)
    rows = sorted(rows, key=lambda r: (r.step, r.index))
    cards = [_card(run_dir, row, corrected_requests or {}, request_files or {}) for row in rows]
    html = render_template(
        "report.html",
        job_name=job_name,
        total=len(rows),
        **_summary(rows),
        **_run_panel(run_info),
        served_drift=served_drift(rows),
        lora_root=str(run_info.lora_root or "LORA_ROOT"),
        heatmap_vmax=HEATMAP_VMAX,
        heatmap_cmap=HEATMAP_CMAP,
        noise_floor_k=run_info.noise_floor_k or _noise_floor_k(),
        cards=cards,
    )
    out = run_dir / out_name
    atomic_write_text(out, html)
    return out


def _heatmap(run_dir: Path, row: ResultRow) -> tuple[str | None, str]:
    """The row's difference heatmap written into ``diffs/`` (a video's worst frame's):
    (its path relative to the run folder, or None, and what to say where there is none)."""
    preview_file = _resolve(run_dir, row.preview)
    render_file = _resolve(run_dir, row.render)
    if not (
        preview_file is not None
        and render_file is not None
        and preview_file.is_file()
        and render_file.is_file()
    ):
        return None, "needs preview and render"
    diff_rel = f"diffs/{row.step}/{row.index}.png"
    try:
        frame = row.video.worst_frame if row.video is not None else 0
        write_diff_heatmap(preview_file, render_file, run_dir / diff_rel, frame=frame)
    except (OSError, ValueError) as exc:
        log.warning("heatmap of step %s index %s failed: %s", row.step, row.index, exc)
        return None, f"heatmap failed: {exc}"
    return diff_rel, ""


def _card(
    run_dir: Path,
    row: ResultRow,
    corrected_requests: Mapping[int, CorrectedIndex],
    request_files: Mapping[str, dict[str, Any]],
) -> dict[str, Any]:
    """What one preview's card shows: its images, counterfactuals and corrected request."""
    diff_rel, diff_note = _heatmap(run_dir, row)
    preview_image = _image(run_dir, "Preview (training)", row.preview, "no preview")
    render_image = _image(run_dir, "Reference render", row.render, "no render")
    difference = "Difference"
    if row.video is not None:
        frames = len(row.video.frames)
        difference = f"Difference, frame {row.video.worst_frame + 1} of {frames} (the worst)"
    images = [
        preview_image,
        render_image,
        _image(run_dir, difference, diff_rel, diff_note),
        _image(run_dir, "Best counterfactual", row.best_counterfactual, "none"),
    ]
    if row.served:
        images.append(_image(run_dir, "Served by your server", row.served.path, "not found"))
    counterfactuals = [
        {
            "label": cf.label,
            "everything": not cf.leaves_out_a_cause,
            "href": _href(run_dir, cf.image),
            "ssim": cf.ssim,
            "psnr": cf.psnr,
            "latent_distance": cf.latent_distance,
            "match": cf.match,
            "confirmed": cf.confirmed,
        }
        for cf in row.counterfactuals
    ]
    index = corrected_requests.get(row.step)
    place: PlacedPrompt | None = index.placement.get(row.index) if index is not None else None
    closest = index.closest.get(row.index) if index is not None and place is None else None
    shown = place or closest
    request = request_files.get(shown.file) if shown is not None else None
    return {
        "row": row,
        "images": images,
        "flip": (preview_image, render_image) if preview_image.href and render_image.href else None,
        "thumb": preview_image.href or render_image.href,
        "counterfactuals": counterfactuals,
        "placement": place,
        "closest": closest,
        "request_json": (
            json.dumps(request, indent=2, ensure_ascii=False, default=str)
            if request is not None
            else None
        ),
        "failure": row.verdict != "match",
        "causes_attr": " ".join(row.causes) if row.causes else "",
        "unconfirmed": {str(u.cause) for u in row.below_noise_floor},
        "video": _video_panel(row.video) if row.video is not None else None,
        "sigmas": _sigma_schedules(row),
    }


def _video_panel(video: VideoScores) -> dict[str, Any]:
    """What a video card shows of its scores: the worst frame and means in words, how the
    two videos play where that differs, and the per-frame strip (:func:`_frame_strip`)."""
    from parity.report.text import frame_text, playback_text

    return {
        "scores": video,
        "frames": len(video.frames),
        "worst": video.worst_frame + 1,
        "text": frame_text(video),
        "plays_differently": playback_text(video),
        "strip": _frame_strip(video),
    }


def _frame_strip(video: VideoScores) -> dict[str, Any]:
    """A video's per-frame scores as the bars of an inline SVG strip.

    One bar a frame, in play order, across :data:`STRIP_WIDTH`; its height is the frame's
    distance ``1 - SSIM`` over the worst frame's (the worst frame is full height; every
    bar at least 1 px, so an exact frame still shows), its title the frame's number
    (from 1) and scores. The worst frame's bar is marked.
    """
    n = len(video.frames)
    ssims = [float(f.get("ssim") or 0.0) for f in video.frames]
    worst_distance = max((1.0 - x for x in ssims), default=0.0)
    slot = STRIP_WIDTH / max(n, 1)
    gap = 1.0 if slot >= 4 else 0.0
    bars = []
    for i, (scores, ssim) in enumerate(zip(video.frames, ssims, strict=True)):
        share = (1.0 - ssim) / worst_distance if worst_distance > 0 else 0.0
        height = max(1.0, share * STRIP_HEIGHT)
        latent = scores.get("latent_distance")
        title = (
            f"frame {i + 1} of {n}: SSIM {_fmt(ssim)}, PSNR {_fmt(scores.get('psnr'), 2, ' dB')}"
        )
        if latent is not None:
            title += f", latent distance {_fmt(latent)}"
        if i == video.worst_frame:
            title += " (the worst frame)"
        bars.append(
            {
                "frame": i,
                "x": round(i * slot, 2),
                "width": round(max(slot - gap, 0.5), 2),
                "y": round(STRIP_HEIGHT - height, 2),
                "height": round(height, 2),
                "title": title,
                "worst": i == video.worst_frame,
            }
        )
    return {
        "bars": bars,
        "width": STRIP_WIDTH,
        "height": STRIP_HEIGHT,
        "worst_distance": worst_distance,
    }


def _sigma_schedules(row: ResultRow) -> list[dict[str, str]]:
    """Both schedules where the scheduler is a cause: per side, its ``side``, its
    ``scheduler`` and steps in words, and its ``sigmas``. The preview's are the
    all-switched render's settings; the server's scheduler is the render's that leaves
    the scheduler out (the reference render itself when it is the only candidate;
    otherwise its other settings, such as the steps, are the preview's). Empty without
    those renders."""
    # text.py imports the planner and the job reader; only a card with a scheduler
    # cause needs it (and diffusers, which building a scheduler imports).
    from parity.report.text import sigma_schedule

    if Cause.SCHEDULER not in row.candidate_causes:
        return []
    by_name = {cf.name: cf for cf in row.counterfactuals}
    sides = (
        ("preview (all causes switched)", by_name.get(ALL)),
        ("server's scheduler (all but the scheduler)", by_name.get(str(Cause.SCHEDULER))),
    )
    if any(cf is None for _, cf in sides):
        return []
    out = []
    for label, cf in sides:
        assert cf is not None
        try:
            sigmas = ", ".join(f"{x:.3f}" for x in sigma_schedule(cf.settings))
        except (ImportError, AttributeError, TypeError, ValueError) as exc:
            sigmas = f"cannot be listed ({type(exc).__name__}: {exc})"
        scheduler = f"{scheduler_text(cf.settings)}, {cf.settings.steps} steps"
        out.append({"side": label, "scheduler": scheduler, "sigmas": sigmas})
    return out


def _summary(rows: list[ResultRow]) -> dict[str, Any]:
    """The summary's counts: by verdict, by cause, explained, the causes to filter by."""
    return {
        "verdicts": list(verdict_counts(rows).items()),
        "cause_counts": _cause_counts(rows),
        "explained": sum(1 for r in rows if r.verdict == "mismatch" and r.explained),
        "causes_all": sorted({c for r in rows for c in r.causes}),
        "has_unattributed": any(r.verdict == "mismatch" and not r.causes for r in rows),
    }


def _run_panel(run_info: RunInfo) -> dict[str, Any]:
    """The run's facts as the run panel's tables (the record of run.json)."""
    info = {k: v for k, v in run_info.to_json().items() if k not in _RUN_INFO_TABLES}
    info = {k: v for k, v in info.items() if v not in ([], {}, "")}
    info_items = [(label, _plain(info.pop(k))) for k, label in RUN_INFO_LABELS.items() if k in info]
    info_items += [(str(k), _plain(v)) for k, v in info.items()]
    stack_rows, stack_differences = _stack_table(run_info.stack or {})
    requests = [
        (str(r.get("file")), f"step {r.get('step')}, LoRA {r.get('lora')}, "
         f"{r.get('prompts')} prompts" + (f", served {r['served']}" if r.get("served") else ""))
        for r in run_info.requests or []
    ]  # fmt: skip
    return {
        "info_items": info_items,
        "thresholds": [(str(k), _plain(v)) for k, v in (run_info.thresholds or {}).items()],
        "options": _options_table(run_info.options or {}),
        "stack_rows": stack_rows,
        "stack_differences": stack_differences,
        "requests": requests,
    }
