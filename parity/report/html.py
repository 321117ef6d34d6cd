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

from parity.correct import CorrectedIndex, PlacedPrompt
from parity.results import (
    ResultRow,
    atomic_write_bytes,
    atomic_write_text,
    served_drift,
    verdict_counts,
)
from parity.run_info import RunInfo

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
) -> Path:
    """Write a colour-mapped per-pixel difference image of a preview and its render.

    Parameters
    ----------
    preview_path, render_path
        Image files (any format PIL reads). Both are converted to RGB; the render is
        resized to the preview's size (Lanczos) when the sizes differ.
    codec_match
        Encode the render the way the preview file was encoded first (JPEG quality
        tables and subsampling, :func:`parity.compare.encode_like`), as parity scores
        it: an exact reproduction of a JPEG preview is then black, not JPEG noise.
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
    rendered = np.asarray(render)
    if codec_match:
        from parity.compare import encode_like, inspect_codec

        rendered = encode_like(rendered, inspect_codec(preview_path))
    a = np.asarray(preview, dtype=np.float32)
    b = rendered.astype(np.float32)
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


def _readable(path: Path) -> bool:
    """Whether ``path`` is an image a browser can show (header check)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            im.verify()
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError):
        return False
    return True


def _image(run_dir: Path, label: str, path: str | None, absent: str) -> _Image:
    href = _href(run_dir, path)
    full = _resolve(run_dir, path)
    if href is not None and full is not None and _readable(full):
        return _Image(label, href)
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
    """The row's difference heatmap written into ``diffs/``: (its path relative to the
    run folder, or None, and what to say where there is none)."""
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
        write_diff_heatmap(preview_file, render_file, run_dir / diff_rel)
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
    images = [
        preview_image,
        render_image,
        _image(run_dir, "Difference", diff_rel, diff_note),
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
    }


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
