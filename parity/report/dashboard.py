"""The nightly dashboard: an overview of every job in the history, then a page per job.

``parity report --history H --out DIR`` writes:

- ``DIR/index.html``: one table row per job (family, base model, the last run with a link
  to its ``report.html``, verdict counts and their change since the previous run, the
  regressions, the worst SSIM, the causes), regressed jobs first; it sorts, filters (by
  family, cause, regressed only, name) and pages in the browser.
- ``DIR/jobs/<job>.html``: the job's trends (mean and minimum SSIM per run, mismatches by
  cause and errors per run) as interactive plotly charts whose points name their run and
  open its report, each regression with its preview and both nights' renders, and every
  run with a link to its report.
- ``DIR/assets/plotly-<version>.min.js``: plotly's JavaScript (from the ``plotly``
  package), written once and shared by every job page.

Nothing is fetched from a network when the pages are viewed. Every link to a run folder is
relative (the history stores run folders relative to its own folder), so the pages and the
run folders can be moved or uploaded together.
"""

from __future__ import annotations

import fnmatch
import functools
import hashlib
import html
import logging
import math
import os
import re
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from parity.report.history import (
    SSIM_DROP_THRESHOLD,
    Regression,
    find_regressions,
    read_history,
    run_times,
    runs_of,
)
from parity.results import atomic_write_text

if TYPE_CHECKING:
    import pandas as pd

log = logging.getLogger(__name__)

#: Jobs per page of the overview table (the browser pages it; all rows are in the file).
PAGE_SIZE = 50

#: Verdicts in display order.
VERDICTS = ("match", "mismatch", "error")

#: The folders under the output folder.
JOBS_DIR = "jobs"
ASSETS_DIR = "assets"

_CAUSE_COLORS = (
    "#b4431f", "#2d5bd1", "#1f8a4c", "#d19a2d", "#7a4fb4", "#2da3b4", "#b42d7a",
    "#6b7a2d", "#4f6bb4", "#b47a2d",
)  # fmt: skip
_ERROR_COLOR = "#8a2be2"


@dataclass(frozen=True)
class Dashboard:
    """What :func:`build_dashboard` wrote."""

    index: Path
    job_pages: tuple[Path, ...]
    script: Path | None
    jobs: int
    regressed_jobs: int
    regressions: int


def job_slug(job: str) -> str:
    """A file-safe, unique page name for a job name."""
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", job).strip("._") or "job"
    return f"{safe[:60]}-{hashlib.sha1(job.encode('utf-8')).hexdigest()[:8]}"


def select(
    df: pd.DataFrame, *, since: str | None = None, jobs: Iterable[str] | None = None
) -> pd.DataFrame:
    """The history rows of runs at or after ``since`` (an ISO 8601 date or time, UTC
    unless it says otherwise) of the jobs named by ``jobs`` (names or shell patterns,
    ``lora_*``); all of them where a filter is None."""
    import pandas as pd

    if since:
        try:
            start = pd.Timestamp(since)
        except (ValueError, TypeError) as exc:
            raise ValueError(f"--since {since!r} is not an ISO 8601 date or time") from exc
        start = start.tz_localize("UTC") if start.tzinfo is None else start.tz_convert("UTC")
        df = df[run_times(df) >= start]
    patterns = list(jobs or [])
    if patterns:
        names = set(df["job"].unique())
        keep = {n for n in names if any(fnmatch.fnmatchcase(n, p) for p in patterns)}
        df = df[df["job"].isin(keep)]
    return df.reset_index(drop=True)


# ------------------------------------------------------------------------ links


class _Links:
    """Relative hrefs from a page's folder to run folders and their files."""

    def __init__(self, history_dir: Path, page_dir: Path) -> None:
        self.history_dir = history_dir
        self.page_dir = page_dir.resolve()
        self._cache: dict[str, str | None] = {}

    def run(self, run_dir: str) -> str | None:
        """The run folder's path relative to the page (``/``-separated), or None."""
        if not run_dir:
            return None
        got = self._cache.get(run_dir, "")
        if got != "":
            return got
        target = Path(run_dir)
        if not target.is_absolute():
            target = self.history_dir / target
        try:
            rel: str | None = Path(os.path.relpath(target, self.page_dir)).as_posix()
        except ValueError:  # another drive
            rel = None
        self._cache[run_dir] = rel
        return rel

    def file(self, run_dir: str, name: str, anchor: str = "") -> str | None:
        """An href to ``name`` (relative to the run folder, or absolute) of a run."""
        if not name:
            return None
        if Path(name).is_absolute():
            try:
                rel = Path(os.path.relpath(name, self.page_dir)).as_posix()
            except ValueError:
                return None
        else:
            base = self.run(run_dir)
            if base is None:
                return None
            rel = f"{base}/{name}" if base != "." else name
        return quote(rel) + (f"#{anchor}" if anchor else "")


# ------------------------------------------------------------------ aggregates


def _per_run(df: pd.DataFrame) -> pd.DataFrame:
    """One row per run: the run's order and time, verdict counts, SSIM mean and minimum,
    its facts (family, base model, run folder, versions)."""
    runs = runs_of(df)
    flags = df.assign(
        n_match=df["verdict"] == "match",
        n_mismatch=df["verdict"] == "mismatch",
        n_error=df["verdict"] == "error",
    )
    agg = flags.groupby(["job", "run_id"], sort=False).agg(
        previews=("verdict", "size"),
        n_match=("n_match", "sum"),
        n_mismatch=("n_mismatch", "sum"),
        n_error=("n_error", "sum"),
        ssim_mean=("ssim", "mean"),
        ssim_min=("ssim", "min"),
        family=("family", "last"),
        base_model=("base_model", "last"),
        run_dir=("run_dir", "last"),
        parity_version=("parity_version", "last"),
        parity_git=("parity_git", "last"),
    )
    return runs.merge(agg.reset_index(), on=["job", "run_id"], how="left")


def _causes_per_run(df: pd.DataFrame) -> dict[tuple[str, str], dict[str, int]]:
    """Mismatches by cause per (job, run id): a preview counts once per cause, one
    without a confirmed cause as ``unattributed``."""
    mm = df.loc[df["verdict"] == "mismatch", ["job", "run_id", "causes"]]
    out: dict[tuple[str, str], dict[str, int]] = defaultdict(dict)
    if mm.empty:
        return out
    causes = mm["causes"].where(mm["causes"] != "", "unattributed").str.split(";")
    counts = mm.assign(cause=causes).explode("cause").groupby(["job", "run_id", "cause"]).size()
    for (job, run_id, cause), n in counts.items():
        out[(str(job), str(run_id))][str(cause)] = int(n)
    return out


def _num(x: Any) -> float | None:
    if x is None:
        return None
    x = float(x)
    return None if math.isnan(x) else x


def _short_time(ts: Any) -> str:
    try:
        return ts.strftime("%Y-%m-%d %H:%M")
    except (AttributeError, ValueError):
        return ""


def _version(parity_version: str, git: str) -> str:
    parts = [p for p in (parity_version, git) if p]
    return " ".join(parts) if parts else "unknown"


# ------------------------------------------------------------------------ charts


def _hover_text(text: str) -> str:
    """Text shown literally in a plotly hover label (which reads a few HTML tags)."""
    return html.escape(text, quote=False)


def _run_labels(runs: list[dict[str, Any]]) -> list[str]:
    """One x-axis category per run: its time, made unique where two runs share a minute."""
    seen: dict[str, int] = {}
    out = []
    for r in runs:
        label = r["time_label"] or r["run_id"]
        seen[label] = seen.get(label, 0) + 1
        out.append(label if seen[label] == 1 else f"{label} ({seen[label]})")
    return out


def _figures(job: str, runs: list[dict[str, Any]], causes: list[str]) -> list[dict[str, Any]]:
    """The job page's plotly figures: SSIM per run, mismatches by cause per run."""
    x = _run_labels(runs)
    custom = [
        [
            _hover_text(r["run_id"]),
            r["time_label"],
            f"{r['n_match']} match, {r['n_mismatch']} mismatch, {r['n_error']} error",
            _hover_text(_version(r["parity_version"], r["parity_git"])),
            r["report_href"] or "",
        ]
        for r in runs
    ]
    # One trace of each chart carries the run's facts (hover shows every trace of the run
    # hovered, in one label); the others only their value.
    run_lines = (
        "<b>%{customdata[0]}</b><br>%{customdata[1]} UTC<br>%{customdata[2]}<br>"
        "parity %{customdata[3]}<br>"
    )
    base_layout: dict[str, Any] = {
        "margin": {"l": 56, "r": 16, "t": 40, "b": 48},
        "height": 320,
        "hovermode": "x unified",
        "xaxis": {"title": {"text": "run (UTC)"}, "type": "category", "automargin": True},
        "legend": {"orientation": "h", "y": -0.25},
    }

    def trace(kind: str, name: str, y: list[Any], first: bool, value: str, **style: Any):
        out = {"type": kind, "name": _hover_text(name), "x": x, "y": y, **style}
        line = f"{_hover_text(name)}: {value}"
        if first:
            out["customdata"] = custom
            line = run_lines + line
        out["hovertemplate"] = line + "<extra></extra>"
        return out

    ssim = {
        "data": [
            trace(
                "scatter",
                name,
                [r[key] for r in runs],
                k == 0,
                "%{y:.4f}",
                mode="lines+markers",
                marker={"symbol": symbol, "size": 8, "color": color},
                line={"color": color},
            )  # fmt: skip
            for k, (name, key, symbol, color) in enumerate(
                (
                    ("mean SSIM", "ssim_mean", "circle", "#2d5bd1"),
                    ("min SSIM", "ssim_min", "triangle-down", "#b4431f"),
                )
            )
        ],
        "layout": {
            **base_layout,
            "title": {"text": "SSIM per run: mean and minimum"},
            "yaxis": {"title": {"text": "SSIM"}},
        },
    }
    bars = [
        trace(
            "bar",
            "errors",
            [r["n_error"] for r in runs],
            True,
            "%{y}",
            marker={"color": _ERROR_COLOR},
        )  # fmt: skip
    ]
    for i, cause in enumerate(causes):
        bars.append(
            trace(
                "bar",
                cause,
                [r["causes"].get(cause, 0) for r in runs],
                False,
                "%{y}",
                marker={"color": _CAUSE_COLORS[i % len(_CAUSE_COLORS)]},
            )  # fmt: skip
        )
    by_cause = {
        "data": bars,
        "layout": {
            **base_layout,
            "barmode": "stack",
            "title": {"text": "Mismatches by cause (a preview counts once per cause), and errors"},
            "yaxis": {"title": {"text": "previews"}, "rangemode": "tozero"},
        },
    }
    return [ssim, by_cause]


_CLICK_SCRIPT = """
var gd = document.getElementById('{plot_id}');
gd.on('plotly_click', function (ev) {
  // Every trace shares the runs on x; the first trace holds each run's facts.
  var p = ev && ev.points && ev.points[0];
  var data = p && (gd.data[0].customdata || [])[p.pointIndex];
  if (data && data[4]) window.location.href = data[4];
});
window.parityChartReady && window.parityChartReady();
"""


def _chart_html(figure: dict[str, Any], div_id: str) -> str:
    import plotly.io as pio

    return pio.to_html(
        figure,
        include_plotlyjs=False,
        full_html=False,
        validate=False,
        div_id=div_id,
        default_height=figure["layout"]["height"],
        config={"displayModeBar": False, "responsive": True},
        post_script=_CLICK_SCRIPT,
    )


@functools.cache
def _templates() -> tuple[Any, Any]:
    """parity's template environment and stylesheet, made once (a build renders hundreds
    of pages; :func:`parity.report.render_template` compiles its template every call)."""
    from markupsafe import Markup

    from parity.report.html import _environment

    env = _environment()
    css = Markup(env.loader.get_source(env, "style.css")[0])
    return env, css


def _render(name: str, **context: Any) -> str:
    env, css = _templates()
    return env.get_template(name).render(css=css, **context)


def _write_plotly_js(out_dir: Path) -> Path:
    import plotly
    from plotly.offline import get_plotlyjs

    path = out_dir / ASSETS_DIR / f"plotly-{plotly.__version__}.min.js"
    text = get_plotlyjs()
    if not (path.is_file() and path.stat().st_size == len(text.encode("utf-8"))):
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, text, durable=False)
    return path


# ------------------------------------------------------------------------ build


def _delta(new: int, old: int | None) -> str:
    if old is None:
        return ""
    d = new - old
    return "±0" if d == 0 else f"{d:+d}".replace("-", "−")


def _regression_view(
    g: Regression,
    rows: dict[tuple[str, str, int, int], dict[str, str]],
    run_dirs: dict[tuple[str, str], str],
    links: _Links,
) -> dict[str, Any]:
    card = f"s{g.step}-i{g.index}"
    old_dir = run_dirs.get((g.job, g.old_run_id), "")
    new_dir = run_dirs.get((g.job, g.new_run_id), "")
    old_row = rows.get((g.job, g.old_run_id, g.step, g.index), {})
    new_row = rows.get((g.job, g.new_run_id, g.step, g.index), {})
    return {
        "g": g,
        "card": card,
        "preview": links.file(new_dir, new_row.get("preview", "")),
        "old_render": links.file(old_dir, old_row.get("render", "")),
        "new_render": links.file(new_dir, new_row.get("render", "")),
        "old_card": links.file(old_dir, "report.html", card),
        "new_card": links.file(new_dir, "report.html", card),
    }


def build_dashboard(
    history_path: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    *,
    ssim_drop: float = SSIM_DROP_THRESHOLD,
    since: str | None = None,
    jobs: Iterable[str] | None = None,
    page_size: int = PAGE_SIZE,
) -> Dashboard:
    """Write the dashboard of a history table (module docstring).

    Parameters
    ----------
    history_path
        History table (``.parquet`` or ``.csv``); its run folders are read relative to
        its folder.
    out_dir
        Folder for ``index.html``, ``jobs/`` and ``assets/`` (created).
    ssim_drop
        Regression threshold of :func:`parity.report.history.find_regressions`.
    since, jobs
        Only runs at or after ``since``, only the jobs ``jobs`` names (:func:`select`).
    page_size
        Rows per page of the overview table.

    Returns
    -------
    Dashboard
        The pages written and what they count.

    Raises
    ------
    FileNotFoundError
        No history table at ``history_path``.
    ValueError
        ``since`` is not a date or time.
    """
    history_path = Path(history_path)
    if not history_path.is_file():
        raise FileNotFoundError(
            f"{history_path}: no history table (parity run --history writes it)"
        )
    out_dir = Path(out_dir)
    jobs_dir = out_dir / JOBS_DIR
    jobs_dir.mkdir(parents=True, exist_ok=True)
    df = select(read_history(history_path), since=since, jobs=jobs)
    history_dir = history_path.resolve().parent
    index_links = _Links(history_dir, out_dir)
    page_links = _Links(history_dir, jobs_dir)

    per_run = _per_run(df) if not df.empty else None
    causes_by_run = _causes_per_run(df)
    regressions = find_regressions(df, ssim_drop=ssim_drop)
    by_job: dict[str, list[Regression]] = defaultdict(list)
    for g in regressions:
        by_job[g.job].append(g)
    # The rows of regressed previews in both runs: their preview and render files.
    wanted = {
        (g.job, rid, g.step, g.index) for g in regressions for rid in (g.old_run_id, g.new_run_id)
    }
    reg_rows: dict[tuple[str, str, int, int], dict[str, str]] = {}
    if wanted:
        jobs_with = {k[0] for k in wanted}
        sub = df[df["job"].isin(jobs_with)]
        for r in sub[["job", "run_id", "step", "index", "preview", "render"]].itertuples(
            index=False
        ):
            key = (r.job, r.run_id, int(r.step), int(r.index))
            if key in wanted:
                reg_rows[key] = {"preview": r.preview, "render": r.render}

    script = _write_plotly_js(out_dir) if per_run is not None else None
    script_href = quote(f"../{ASSETS_DIR}/{script.name}") if script else ""

    overview: list[dict[str, Any]] = []
    pages: list[Path] = []
    all_families: set[str] = set()
    all_causes: set[str] = set()
    latest_time = None
    groups = per_run.groupby("job", sort=True) if per_run is not None else []
    for job, jruns in groups:
        job = str(job)
        slug = job_slug(job)
        run_dirs = {
            (job, str(r)): str(d) for r, d in zip(jruns["run_id"], jruns["run_dir"], strict=True)
        }
        runs: list[dict[str, Any]] = []
        for r in jruns.itertuples(index=False):
            rid = str(r.run_id)
            runs.append(
                {
                    "run_id": rid,
                    "time": r.time,
                    "time_iso": r.time.isoformat() if r.time == r.time else r.run_time,
                    "time_label": _short_time(r.time) or str(r.run_time),
                    "previews": int(r.previews),
                    "n_match": int(r.n_match),
                    "n_mismatch": int(r.n_mismatch),
                    "n_error": int(r.n_error),
                    "ssim_mean": _num(r.ssim_mean),
                    "ssim_min": _num(r.ssim_min),
                    "family": r.family,
                    "base_model": r.base_model,
                    "parity_version": r.parity_version,
                    "parity_git": r.parity_git,
                    "causes": causes_by_run.get((job, rid), {}),
                    "report_href": page_links.file(r.run_dir, "report.html"),
                }
            )
        last = runs[-1]
        prev = runs[-2] if len(runs) > 1 else None
        job_causes = sorted({c for r in runs for c in r["causes"]})
        last_causes = dict(sorted(last["causes"].items(), key=lambda kv: (-kv[1], kv[0])))
        regs = [_regression_view(g, reg_rows, run_dirs, page_links) for g in by_job.get(job, [])]
        family = next((r["family"] for r in reversed(runs) if r["family"]), "")
        base_model = next((r["base_model"] for r in reversed(runs) if r["base_model"]), "")
        all_families.add(family)
        all_causes.update(last_causes)
        if latest_time is None or (last["time"] == last["time"] and last["time"] > latest_time):
            latest_time = last["time"]

        figures = _figures(job, runs, job_causes)
        charts = [_chart_html(fig, f"chart-{k}") for k, fig in enumerate(figures)]
        page = jobs_dir / f"{slug}.html"
        atomic_write_text(
            page,
            _render(
                "dashboard_job.html",
                job=job,
                family=family,
                base_model=base_model,
                runs=list(reversed(runs)),
                last=last,
                regressions=regs,
                charts=charts,
                script_href=script_href,
                ssim_drop=ssim_drop,
                version=_version,
            ),
            durable=False,  # derived pages: a crash costs a rebuild, not data
        )
        pages.append(page)
        last_dir = str(jruns["run_dir"].iloc[-1])
        overview.append(
            {
                "job": job,
                "href": quote(f"{JOBS_DIR}/{slug}.html"),
                "family": family,
                "base_model": base_model,
                "runs": len(runs),
                "last": last,
                "report_href": index_links.file(last_dir, "report.html"),
                "counts": [
                    (v, last[f"n_{v}"], _delta(last[f"n_{v}"], prev[f"n_{v}"] if prev else None))
                    for v in VERDICTS
                ],
                "regressions": by_job.get(job, []),
                "worst": last["ssim_min"],
                "causes": last_causes,
            }
        )
    # Regressed jobs first (most regressions first), then by name.
    overview.sort(key=lambda j: (-len(j["regressions"]), j["job"]))
    index = out_dir / "index.html"
    atomic_write_text(
        index,
        _render(
            "dashboard.html",
            history_name=history_path.name,
            jobs=overview,
            families=sorted(all_families - {""}),
            unknown_family="" in all_families,
            causes=sorted(all_causes),
            regressed_jobs=sum(1 for j in overview if j["regressions"]),
            total_regressions=len(regressions),
            latest=_short_time(latest_time) if latest_time is not None else "",
            since=since,
            job_filters=list(jobs or []),
            ssim_drop=ssim_drop,
            page_size=page_size,
        ),
    )
    log.info("dashboard of %d jobs written to %s", len(overview), index)
    return Dashboard(
        index=index,
        job_pages=tuple(pages),
        script=script,
        jobs=len(overview),
        regressed_jobs=sum(1 for j in overview if j["regressions"]),
        regressions=len(regressions),
    )
