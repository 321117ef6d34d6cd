"""Nightly history of parity runs: one table row per preview per run, trends, regressions.

The history table is a ``.parquet`` (pandas + pyarrow) or ``.csv`` file chosen by its
extension. Appends are safe across processes: every read-modify-write holds
``<history>.lock`` (``filelock``) and the new table replaces the old one atomically, so two
nightly jobs appending at once lose no rows and readers never see half a file.
"""

from __future__ import annotations

import hashlib
import io
import logging
import math
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from parity.results import ResultRow, atomic_write_bytes, atomic_write_text

if TYPE_CHECKING:
    import pandas as pd

log = logging.getLogger(__name__)

#: Columns of the history table, in order.
HISTORY_COLUMNS: tuple[str, ...] = (
    "job",
    "step",
    "index",
    "run_time",
    "run_id",
    "verdict",
    "causes",
    "ssim",
    "psnr",
    "ms_ssim",
    "latent_distance",
    "lpips",
    "explained",
)

_STR_COLUMNS = ("job", "run_time", "run_id", "verdict", "causes")
_INT_COLUMNS = ("step", "index")
_FLOAT_COLUMNS = ("ssim", "psnr", "ms_ssim", "latent_distance", "lpips")

#: A preview regresses when its SSIM drops by more than this between the previous run
#: and the latest run of its job (SSIM is unitless, 0..1). Renders of the same settings
#: on the same device are deterministic, so a drop this size means something changed.
SSIM_DROP_THRESHOLD = 0.02

#: Seconds to wait for the history lock before giving up.
LOCK_TIMEOUT_S = 120.0


class HistoryError(RuntimeError):
    """The history file cannot be read, written or locked."""


@dataclass(frozen=True)
class Regression:
    """One preview that got worse from the previous run to the latest run of its job.

    ``reason`` is ``"verdict"`` (match became mismatch or error) or ``"ssim_drop"``
    (SSIM fell by more than the threshold while the verdict did not regress).
    """

    job: str
    step: int
    index: int
    old_run_id: str
    new_run_id: str
    old_verdict: str
    new_verdict: str
    old_ssim: float | None
    new_ssim: float | None
    reason: str

    def describe(self) -> str:
        def f(x: float | None) -> str:
            return "n/a" if x is None else f"{x:.4f}"

        return (
            f"{self.job} step {self.step} #{self.index}: {self.old_verdict} → "
            f"{self.new_verdict}, SSIM {f(self.old_ssim)} → {f(self.new_ssim)}"
        )


def _format_of(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix in (".parquet", ".csv"):
        return suffix[1:]
    raise HistoryError(f"{path}: history file must end in .parquet or .csv, not {suffix!r}")


def _normalize_time(run_time: str) -> str:
    import pandas as pd

    try:
        ts = pd.Timestamp(run_time)
    except (ValueError, TypeError) as exc:
        raise ValueError(f"run_time {run_time!r} is not an ISO 8601 time: {exc}") from exc
    if ts.tzinfo is None:
        ts = ts.tz_localize("UTC")
    return ts.tz_convert("UTC").isoformat()


def _empty_frame() -> pd.DataFrame:
    import pandas as pd

    return _coerce(pd.DataFrame({c: [] for c in HISTORY_COLUMNS}))


def _coerce(df: pd.DataFrame) -> pd.DataFrame:
    """Give every history column its type, whatever file format it came from."""
    import pandas as pd

    df = df.reindex(columns=list(HISTORY_COLUMNS))
    for c in _STR_COLUMNS:
        df[c] = df[c].fillna("").astype(str)
    for c in _INT_COLUMNS:
        df[c] = pd.to_numeric(df[c]).astype("int64")
    for c in _FLOAT_COLUMNS:
        df[c] = pd.to_numeric(df[c], errors="coerce").astype("float64")
    truthy = {"true", "1", "yes"}
    df["explained"] = [
        (str(v).strip().lower() in truthy) if not isinstance(v, bool) else v
        for v in df["explained"]
    ]
    df["explained"] = df["explained"].astype(bool)
    return df.reset_index(drop=True)


def _read(path: Path) -> pd.DataFrame:
    import pandas as pd

    fmt = _format_of(path)
    if not path.exists():
        return _empty_frame()
    try:
        if fmt == "parquet":
            df = pd.read_parquet(path)
        else:
            df = pd.read_csv(
                path,
                dtype={c: str for c in (*_STR_COLUMNS, "explained")},
                keep_default_na=False,
                na_values={c: [""] for c in _FLOAT_COLUMNS},
            )
    except (OSError, ValueError) as exc:
        raise HistoryError(f"{path}: cannot read history table: {exc}") from exc
    missing = [c for c in HISTORY_COLUMNS if c not in df.columns]
    if missing:
        raise HistoryError(f"{path}: history table lacks columns {missing}")
    return _coerce(df)


def _write(path: Path, df: pd.DataFrame) -> None:
    if _format_of(path) == "csv":
        atomic_write_text(path, df.to_csv(index=False))
        return
    buf = io.BytesIO()
    df.to_parquet(buf, index=False)
    atomic_write_bytes(path, buf.getvalue())


def _none_to_nan(x: float | None) -> float:
    return math.nan if x is None else float(x)


def append_history(
    history_path: str | os.PathLike[str],
    rows: list[ResultRow],
    *,
    run_time: str,
    run_id: str,
) -> Path:
    """Append one run's result rows to the history table.

    Parameters
    ----------
    history_path
        ``.parquet`` or ``.csv`` file; created with its folder when missing.
    rows
        Result rows of the run.
    run_time
        UTC start time of the run, ISO 8601 (a time without zone is taken as UTC);
        stored normalized as ``YYYY-MM-DDTHH:MM:SS[.ffffff]+00:00``.
    run_id
        Identifier of the run (e.g. the run folder name).

    Returns
    -------
    Path
        ``history_path``.

    Raises
    ------
    HistoryError
        When the file has another extension, cannot be read, or the lock
        ``<history_path>.lock`` is not obtained within :data:`LOCK_TIMEOUT_S` seconds.
    """
    import filelock
    import pandas as pd

    path = Path(history_path)
    _format_of(path)
    when = _normalize_time(run_time)
    new = _coerce(
        pd.DataFrame(
            [
                {
                    "job": r.job,
                    "step": int(r.step),
                    "index": int(r.index),
                    "run_time": when,
                    "run_id": str(run_id),
                    "verdict": r.verdict,
                    "causes": ";".join(sorted(r.causes)),
                    "ssim": _none_to_nan(r.ssim),
                    "psnr": _none_to_nan(r.psnr),
                    "ms_ssim": _none_to_nan(r.ms_ssim),
                    "latent_distance": _none_to_nan(r.latent_distance),
                    "lpips": _none_to_nan(r.lpips),
                    "explained": bool(r.explained),
                }
                for r in rows
            ],
            columns=list(HISTORY_COLUMNS),
        )
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = filelock.FileLock(str(path) + ".lock", timeout=LOCK_TIMEOUT_S)
    try:
        with lock:
            old = _read(path)
            df = new if old.empty else pd.concat([old, new], ignore_index=True)
            _write(path, _coerce(df))
    except filelock.Timeout as exc:
        raise HistoryError(
            f"{path}: another process holds {lock.lock_file} for over {LOCK_TIMEOUT_S:.0f} s"
        ) from exc
    log.info("appended %d rows of run %s to %s", len(new), run_id, path)
    return path


def append_run_history(
    history_path: str | os.PathLike[str],
    rows: list[ResultRow],
    *,
    run_time: str | None,
    run_id: str,
    warn: Callable[[str], None],
    job: str | None = None,
) -> bool:
    """Append a finished run's rows (:func:`append_history`); a failure is a warning.

    The run folder is complete by then, so a history that cannot be written (locked,
    unreadable, another format) costs the run nothing: ``warn`` gets one line saying so
    (``job`` names the job in it, for a run of several) and the run goes on.

    Returns
    -------
    bool
        Whether the rows were appended.
    """
    try:
        if not run_time:
            raise HistoryError("the run has no start time in its run.json")
        append_history(history_path, rows, run_time=run_time, run_id=run_id)
    except Exception as e:
        warn(f"warning: {f'{job}: ' if job else ''}history not updated: {e}")
        return False
    return True


def read_history(path: str | os.PathLike[str]) -> pd.DataFrame:
    """The history table with typed columns (:data:`HISTORY_COLUMNS`); empty if missing."""
    return _read(Path(path))


def _runs(df: pd.DataFrame) -> list[tuple[str, str]]:
    """(run_time, run_id) pairs of ``df`` in chronological order."""
    import pandas as pd

    pairs = df[["run_time", "run_id"]].drop_duplicates()
    order = sorted(
        pairs.itertuples(index=False),
        key=lambda p: (pd.Timestamp(p.run_time), p.run_id),
    )
    return [(p.run_time, p.run_id) for p in order]


def _opt(x: Any) -> float | None:
    return None if x is None or (isinstance(x, float) and math.isnan(x)) else float(x)


def find_regressions(
    df: pd.DataFrame, *, ssim_drop: float = SSIM_DROP_THRESHOLD
) -> list[Regression]:
    """Previews that regressed from the previous run to the latest run of each job.

    Parameters
    ----------
    df
        History table (:func:`read_history`).
    ssim_drop
        SSIM decrease (unitless) above which a preview regresses even when its verdict
        did not change; default :data:`SSIM_DROP_THRESHOLD`.

    Returns
    -------
    list[Regression]
        Sorted by job, step, index. A preview regresses when its verdict went from
        ``match`` to ``mismatch`` or ``error``, or its SSIM dropped by more than
        ``ssim_drop``. Previews absent from either run are not compared; a job with a
        single run has no regressions.
    """
    out: list[Regression] = []
    for job, jdf in df.groupby("job", sort=True):
        runs = _runs(jdf)
        if len(runs) < 2:
            continue
        (_, old_id), (_, new_id) = runs[-2], runs[-1]
        old = jdf[jdf["run_id"] == old_id].drop_duplicates(["step", "index"], keep="last")
        new = jdf[jdf["run_id"] == new_id].drop_duplicates(["step", "index"], keep="last")
        merged = old.merge(new, on=["step", "index"], suffixes=("_old", "_new"))
        for r in merged.itertuples(index=False):
            ov, nv = r.verdict_old, r.verdict_new
            os_, ns = _opt(r.ssim_old), _opt(r.ssim_new)
            reason = None
            if ov == "match" and nv in ("mismatch", "error"):
                reason = "verdict"
            elif os_ is not None and ns is not None and os_ - ns > ssim_drop:
                reason = "ssim_drop"
            if reason:
                out.append(
                    Regression(
                        job=str(job),
                        step=int(r.step),
                        index=int(r.index),
                        old_run_id=old_id,
                        new_run_id=new_id,
                        old_verdict=ov,
                        new_verdict=nv,
                        old_ssim=os_,
                        new_ssim=ns,
                        reason=reason,
                    )
                )
    return sorted(out, key=lambda g: (g.job, g.step, g.index))


def _slug(job: str) -> str:
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", job).strip("._") or "job"
    return f"{safe[:60]}-{hashlib.sha1(job.encode('utf-8')).hexdigest()[:8]}"


def _tex_safe(text: str) -> str:
    """Text shown literally by matplotlib (a ``$`` would start math mode)."""
    return text.replace("$", r"\$")


def _short_time(run_time: str) -> str:
    import pandas as pd

    return pd.Timestamp(run_time).strftime("%m-%d %H:%M")


def _plot_ssim(jdf: pd.DataFrame, runs: list[tuple[str, str]], out: Path, job: str) -> None:
    from matplotlib.figure import Figure

    means, mins = [], []
    for _, run_id in runs:
        s = jdf.loc[jdf["run_id"] == run_id, "ssim"].dropna()
        means.append(s.mean() if len(s) else math.nan)
        mins.append(s.min() if len(s) else math.nan)
    x = list(range(len(runs)))
    fig = Figure(figsize=(6.4, 3.2), dpi=100, layout="constrained")
    ax = fig.add_subplot()
    ax.plot(x, means, marker="o", label="mean SSIM", color="#2d5bd1")
    ax.plot(x, mins, marker="v", label="min SSIM", color="#b4431f")
    ax.set_xticks(x, [_short_time(t) for t, _ in runs], rotation=30, ha="right", fontsize=8)
    ax.set_ylabel("SSIM")
    ax.set_xlabel("run (UTC)")
    ax.set_title(f"{_tex_safe(job)}: SSIM over runs", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.savefig(out, format="png")


def _plot_causes(jdf: pd.DataFrame, runs: list[tuple[str, str]], out: Path, job: str) -> None:
    from matplotlib.figure import Figure

    series: dict[str, list[int]] = {}
    for i, (_, run_id) in enumerate(runs):
        rdf = jdf[jdf["run_id"] == run_id]
        counts: dict[str, int] = {}
        for verdict, causes in zip(rdf["verdict"], rdf["causes"], strict=True):
            if verdict == "error":
                counts["error"] = counts.get("error", 0) + 1
            elif verdict == "mismatch":
                for c in [c for c in causes.split(";") if c] or ["unattributed"]:
                    counts[c] = counts.get(c, 0) + 1
        for name, n in counts.items():
            series.setdefault(name, [0] * len(runs))[i] = n
    x = list(range(len(runs)))
    fig = Figure(figsize=(6.4, 3.2), dpi=100, layout="constrained")
    ax = fig.add_subplot()
    if series:
        width = 0.8 / len(series)
        for k, (name, values) in enumerate(sorted(series.items())):
            ax.bar(
                [xi - 0.4 + width * (k + 0.5) for xi in x],
                values,
                width=width,
                label=_tex_safe(name),
            )
        top = max(max(v) for v in series.values())
        ax.set_ylim(0, top * 1.4 + 0.5)  # headroom for the legend
        ax.legend(fontsize=8, ncols=3, loc="upper left")
    else:
        ax.text(0.5, 0.5, "no mismatches", ha="center", va="center", transform=ax.transAxes)
    ax.set_xticks(x, [_short_time(t) for t, _ in runs], rotation=30, ha="right", fontsize=8)
    ax.set_ylabel("previews")
    ax.set_xlabel("run (UTC)")
    ax.set_title(f"{_tex_safe(job)}: mismatches by cause, and errors", fontsize=10)
    ax.yaxis.get_major_locator().set_params(integer=True)
    ax.grid(alpha=0.3, axis="y")
    fig.savefig(out, format="png")


def render_trends(
    history_path: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    *,
    ssim_drop: float = SSIM_DROP_THRESHOLD,
) -> Path:
    """Write trend plots and an index page of the history table.

    Parameters
    ----------
    history_path
        History table (``.parquet`` or ``.csv``).
    out_dir
        Folder for ``<job>-ssim.png``, ``<job>-causes.png`` (job names made file-safe)
        and ``index.html``.
    ssim_drop
        Regression threshold passed to :func:`find_regressions`.

    Returns
    -------
    Path
        ``out_dir / "index.html"``, which links the plots relatively and lists the
        regressions of each job's latest run against its previous run.
    """
    from parity.report import render_template

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    df = read_history(history_path)
    regressions = find_regressions(df, ssim_drop=ssim_drop)
    jobs = []
    for job, jdf in df.groupby("job", sort=True):
        job = str(job)
        runs = _runs(jdf)
        slug = _slug(job)
        ssim_png, causes_png = f"{slug}-ssim.png", f"{slug}-causes.png"
        _plot_ssim(jdf, runs, out_dir / ssim_png, job)
        _plot_causes(jdf, runs, out_dir / causes_png, job)
        latest = jdf[jdf["run_id"] == runs[-1][1]]
        jobs.append(
            {
                "name": job,
                "runs": len(runs),
                "latest_run": runs[-1][1],
                "latest_time": runs[-1][0],
                "latest_counts": latest["verdict"].value_counts().to_dict(),
                "ssim_png": ssim_png,
                "causes_png": causes_png,
                "regressions": [g for g in regressions if g.job == job],
            }
        )
    html = render_template(
        "history.html",
        history_path=str(history_path),
        jobs=jobs,
        total_regressions=len(regressions),
        ssim_drop=ssim_drop,
    )
    index = out_dir / "index.html"
    atomic_write_text(index, html)
    return index
