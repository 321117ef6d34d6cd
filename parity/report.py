"""Self-contained HTML report of one parity run.

The report lives in the run folder (``reports/<job>/<UTC timestamp>/report.html``) and
links its images relatively, so the folder can be moved or uploaded as a whole as long as
the job folder holding the previews keeps its place next to it. Nothing is fetched from
the network: CSS and the small filter script are inline.

Layout: a summary (counts by verdict and by cause, run information, thresholds), then
one card per preview with preview | reference render | difference heatmap | best
counterfactual, the metrics, verdict, causes, prompt and the corrected request of its step.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import numpy as np

from parity.results import VERDICTS, ResultRow, atomic_write_bytes, atomic_write_text

log = logging.getLogger(__name__)

#: Absolute difference (fraction of full scale, 0..1) shown at the top of the heatmap's
#: colour map; larger differences are clipped to it. A fixed scale keeps heatmaps of
#: different previews comparable with each other.
HEATMAP_VMAX = 0.25

#: Colour map of the difference heatmaps (a matplotlib colormap name).
HEATMAP_CMAP = "magma"

#: Labels of well-known ``run_info`` keys, in display order. Other keys follow as given.
RUN_INFO_LABELS: dict[str, str] = {
    "job_path": "Job folder",
    "started": "Started (UTC)",
    "finished": "Finished (UTC)",
    "device": "Device",
    "parity_version": "parity version",
}


def write_diff_heatmap(
    preview_path: str | os.PathLike[str],
    render_path: str | os.PathLike[str],
    out_path: str | os.PathLike[str],
    *,
    vmax: float = HEATMAP_VMAX,
    cmap: str = HEATMAP_CMAP,
) -> Path:
    """Write a colour-mapped per-pixel difference image of a preview and its render.

    Parameters
    ----------
    preview_path, render_path
        Image files (any format PIL reads). Both are converted to RGB; the render is
        resized to the preview's size (Lanczos) when the sizes differ.
    out_path
        PNG file to write (parent folders are created).
    vmax
        Absolute difference, as a fraction of full scale (0..1), mapped to the top of
        the colour map; larger differences are clipped.
    cmap
        Matplotlib colour map name.

    Returns
    -------
    Path
        ``out_path``.

    Notes
    -----
    The difference is ``mean_c |preview - render| / 255`` over the three channels, so a
    pixel value of 0 means identical and 1 means black against white.
    """
    import io

    import matplotlib
    from PIL import Image

    if not vmax > 0:
        raise ValueError(f"vmax must be positive, got {vmax}")
    with Image.open(preview_path) as im:
        preview = im.convert("RGB")
    with Image.open(render_path) as im:
        render = im.convert("RGB")
    if render.size != preview.size:
        render = render.resize(preview.size, Image.Resampling.LANCZOS)
    a = np.asarray(preview, dtype=np.float32)
    b = np.asarray(render, dtype=np.float32)
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


def _image(run_dir: Path, label: str, path: str | None, absent: str) -> _Image:
    href = _href(run_dir, path)
    if href is not None:
        return _Image(label, href)
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


def _info_value(value: Any) -> str:
    if isinstance(value, (dict, list, tuple)):
        return json.dumps(value, indent=2, sort_keys=True, default=str)
    return str(value)


def _environment():
    import jinja2

    env = jinja2.Environment(
        loader=jinja2.PackageLoader("parity", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["num"] = _fmt
    return env


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
    run_info: dict[str, Any],
    corrected_requests: dict[int, dict[str, Any]] | None = None,
    out_name: str = "report.html",
) -> Path:
    """Render the HTML report of a run and the difference heatmaps it shows.

    Parameters
    ----------
    run_dir
        The run's output folder. Image paths in ``rows`` are relative to it, except
        ``preview`` which may also be absolute (it lives in the job folder); links in
        the report are made relative to ``run_dir`` either way.
    rows
        One result row per preview; shown sorted by (step, index).
    job_name
        Shown in the title and summary.
    run_info
        Run facts for the summary. Known keys (all optional): ``job_path``,
        ``started``, ``finished``, ``device``, ``parity_version`` and ``thresholds``
        (a dict of name to value, shown as its own table). Any other key is shown
        too, dicts and lists as JSON.
    corrected_requests
        Corrected reference request per training step, shown as pretty JSON on every
        card of that step.
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
    corrected_requests = corrected_requests or {}
    rows = sorted(rows, key=lambda r: (r.step, r.index))

    cards = []
    for row in rows:
        preview_file = _resolve(run_dir, row.preview)
        render_file = _resolve(run_dir, row.render)
        diff_rel: str | None = None
        diff_note = "needs preview and render"
        if (
            preview_file is not None
            and render_file is not None
            and preview_file.is_file()
            and render_file.is_file()
        ):
            diff_rel = f"diffs/{row.step}/{row.index}.png"
            try:
                write_diff_heatmap(preview_file, render_file, run_dir / diff_rel)
            except (OSError, ValueError) as exc:
                log.warning("heatmap of step %s index %s failed: %s", row.step, row.index, exc)
                diff_note = f"heatmap failed: {exc}"
                diff_rel = None
        images = [
            _image(run_dir, "Preview (training)", row.preview, "no preview"),
            _image(run_dir, "Reference render", row.render, "no render"),
            _image(run_dir, "Difference", diff_rel, diff_note),
            _image(run_dir, "Best counterfactual", row.best_counterfactual, "none"),
        ]
        counterfactuals = [
            {
                "cause": cf.name,
                "href": _href(run_dir, cf.image),
                "ssim": cf.ssim,
                "psnr": cf.psnr,
                "latent_distance": cf.latent_distance,
                "confirmed": cf.confirmed,
            }
            for cf in row.counterfactuals
        ]
        request = corrected_requests.get(row.step)
        cards.append(
            {
                "row": row,
                "images": images,
                "counterfactuals": counterfactuals,
                "request_json": (
                    json.dumps(request, indent=2, ensure_ascii=False, default=str)
                    if request is not None
                    else None
                ),
                "failure": row.verdict != "match",
                "causes_attr": " ".join(row.causes) if row.causes else "",
            }
        )

    verdict_counts = Counter(r.verdict for r in rows)
    info = dict(run_info)
    thresholds = info.pop("thresholds", None) or {}
    info_items = [
        (label, _info_value(info.pop(k))) for k, label in RUN_INFO_LABELS.items() if k in info
    ]
    info_items += [(str(k), _info_value(v)) for k, v in info.items()]

    html = render_template(
        "report.html",
        job_name=job_name,
        total=len(rows),
        verdicts=[(v, verdict_counts.get(v, 0)) for v in VERDICTS]
        + [(v, n) for v, n in sorted(verdict_counts.items()) if v not in VERDICTS],
        cause_counts=_cause_counts(rows),
        explained=sum(1 for r in rows if r.verdict == "mismatch" and r.explained),
        causes_all=sorted({c for r in rows for c in r.causes}),
        has_unattributed=any(r.verdict == "mismatch" and not r.causes for r in rows),
        info_items=info_items,
        thresholds=[(str(k), _info_value(v)) for k, v in thresholds.items()],
        heatmap_vmax=HEATMAP_VMAX,
        heatmap_cmap=HEATMAP_CMAP,
        cards=cards,
    )
    out = run_dir / out_name
    atomic_write_text(out, html)
    return out
