"""Nightly history of parity runs: one table row per preview per run, and regressions.

The history table is a ``.parquet`` (pandas + pyarrow) or ``.csv`` file chosen by its
extension. Appends are safe across processes: every read-modify-write holds
``<history>.lock`` (``filelock``) and the new table replaces the old one atomically, so two
nightly jobs appending at once lose no rows and readers never see half a file.

The pages drawn from it (an overview of every job, a page per job) are
:mod:`parity.report.dashboard`.
"""

from __future__ import annotations

import functools
import io
import logging
import math
import os
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from parity.results import ResultRow, atomic_write_bytes, atomic_write_text

if TYPE_CHECKING:
    import pandas as pd

    from parity.run_info import RunInfo

log = logging.getLogger(__name__)

#: Columns every history table has had; a file without one of them is not a history.
BASE_COLUMNS: tuple[str, ...] = (
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

#: Columns added since (text; empty where unknown, as in the rows of older files):
#: the job's ``family`` and ``base_model`` (the server model id it renders with), the
#: run folder ``run_dir`` (relative to the history file's folder, ``/``-separated, or
#: absolute where it is on another drive), the run's ``parity_version`` and ``parity_git``
#: (the commit of the parity checkout that ran it, ``+dirty`` with local changes), and per
#: preview its ``preview`` copy and reference ``render`` (relative to the run folder).
RUN_COLUMNS: tuple[str, ...] = (
    "family",
    "base_model",
    "run_dir",
    "parity_version",
    "parity_git",
    "preview",
    "render",
)

#: Columns of the history table, in order.
HISTORY_COLUMNS: tuple[str, ...] = BASE_COLUMNS + RUN_COLUMNS

_STR_COLUMNS = ("job", "run_time", "run_id", "verdict", "causes", *RUN_COLUMNS)
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
        df[c] = df[c].astype(object).fillna("").astype(str)
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
    missing = [c for c in BASE_COLUMNS if c not in df.columns]
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


@functools.cache
def parity_git() -> str:
    """The commit of the parity checkout this code runs from (12 hex digits, ``+dirty``
    with uncommitted changes), or ``""`` for an installed copy or without git."""
    root = Path(__file__).resolve().parents[2]
    if not (root / ".git").exists():
        return ""
    try:
        head = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "--short=12", "HEAD"],
            capture_output=True, text=True, timeout=10, check=True,
        ).stdout.strip()  # fmt: skip
        dirty = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no", "--",
             "parity"],
            capture_output=True, text=True, timeout=10, check=True,
        ).stdout.strip()  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return ""
    return f"{head}+dirty" if head and dirty else head


def _history_relative(history_path: Path, run_dir: str | os.PathLike[str]) -> str:
    """``run_dir`` relative to the history file's folder (absolute across drives)."""
    target = Path(run_dir).resolve()
    try:
        return Path(os.path.relpath(target, history_path.resolve().parent)).as_posix()
    except ValueError:  # another drive
        return target.as_posix()


def run_facts(run_info: RunInfo | None) -> dict[str, str]:
    """The history's per-run columns known from a run's run.json: ``family``,
    ``base_model``, ``parity_version`` (empty where unknown)."""
    from parity import __version__
    from parity.families import SERVER_MODELS

    model = (run_info.reference_model if run_info else None) or ""
    server = SERVER_MODELS.get(model)
    return {
        "family": server.family if server is not None else "",
        "base_model": model,
        "parity_version": (run_info.parity_version if run_info else "") or __version__,
    }


def append_history(
    history_path: str | os.PathLike[str],
    rows: list[ResultRow],
    *,
    run_time: str,
    run_id: str,
    run_dir: str | os.PathLike[str] | None = None,
    family: str = "",
    base_model: str = "",
    parity_version: str = "",
    git: str | None = None,
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
    run_dir
        The run folder, stored relative to the history file's folder.
    family, base_model, parity_version
        The run's facts (:func:`run_facts`).
    git
        The parity checkout's commit; default :func:`parity_git`.

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
    folder = _history_relative(path, run_dir) if run_dir is not None else ""
    commit = parity_git() if git is None else git
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
                    "family": family,
                    "base_model": base_model,
                    "run_dir": folder,
                    "parity_version": parity_version,
                    "parity_git": commit,
                    "preview": r.preview or "",
                    "render": r.render or "",
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
    run_dir: str | os.PathLike[str] | None = None,
    run_info: RunInfo | None = None,
) -> bool:
    """Append a finished run's rows (:func:`append_history`); a failure is a warning.

    The run folder is complete by then, so a history that cannot be written (locked,
    unreadable, another format) costs the run nothing: ``warn`` gets one line saying so
    (``job`` names the job in it, for a run of several) and the run goes on. ``run_dir``
    (the run folder) and ``run_info`` (its run.json) fill the per-run columns the
    dashboard links and groups by (:data:`RUN_COLUMNS`).

    Returns
    -------
    bool
        Whether the rows were appended.
    """
    try:
        if not run_time:
            raise HistoryError("the run has no start time in its run.json")
        append_history(
            history_path,
            rows,
            run_time=run_time,
            run_id=run_id,
            run_dir=run_dir,
            **run_facts(run_info),
        )
    except Exception as e:
        warn(f"warning: {f'{job}: ' if job else ''}history not updated: {e}")
        return False
    return True


def read_history(path: str | os.PathLike[str]) -> pd.DataFrame:
    """The history table with typed columns (:data:`HISTORY_COLUMNS`); empty if missing."""
    return _read(Path(path))


def run_times(df: pd.DataFrame) -> pd.Series:
    """``df["run_time"]`` as UTC timestamps (unparseable times are NaT)."""
    import pandas as pd

    return pd.to_datetime(df["run_time"], utc=True, format="ISO8601", errors="coerce")


def runs_of(df: pd.DataFrame) -> pd.DataFrame:
    """One row per run of each job: ``job``, ``run_id``, ``run_time``, ``time`` (a UTC
    timestamp), ``order`` (0 for a job's first run) and ``n_runs``, sorted by job then
    time (then run id, for runs of one time)."""
    runs = (
        df[["job", "run_id", "run_time"]]
        .drop_duplicates(["job", "run_id"], keep="last")
        .assign(time=lambda d: run_times(d))
        .sort_values(["job", "time", "run_id"], kind="stable")
        .reset_index(drop=True)
    )
    runs["order"] = runs.groupby("job", sort=False).cumcount()
    runs["n_runs"] = runs.groupby("job", sort=False)["run_id"].transform("size")
    return runs


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
        single run has no regressions. Runs are ordered by their time (then run id).
    """
    if df.empty:
        return []
    runs = runs_of(df)
    last = runs[runs["n_runs"] >= 2]
    new_ids = last[last["order"] == last["n_runs"] - 1][["job", "run_id"]]
    old_ids = last[last["order"] == last["n_runs"] - 2][["job", "run_id"]]
    keys = ["job", "step", "index"]
    cols = [*keys, "run_id", "verdict", "ssim"]
    old = df[cols].merge(old_ids, on=["job", "run_id"]).drop_duplicates(keys, keep="last")
    new = df[cols].merge(new_ids, on=["job", "run_id"]).drop_duplicates(keys, keep="last")
    merged = old.merge(new, on=keys, suffixes=("_old", "_new"))
    verdict = (merged["verdict_old"] == "match") & merged["verdict_new"].isin(["mismatch", "error"])
    dropped = (merged["ssim_old"] - merged["ssim_new"]) > ssim_drop  # NaN compares False
    merged = merged[verdict | dropped].assign(reason=(verdict[verdict | dropped]))
    out = [
        Regression(
            job=str(r.job),
            step=int(r.step),
            index=int(r.index),
            old_run_id=str(r.run_id_old),
            new_run_id=str(r.run_id_new),
            old_verdict=str(r.verdict_old),
            new_verdict=str(r.verdict_new),
            old_ssim=_opt(r.ssim_old),
            new_ssim=_opt(r.ssim_new),
            reason="verdict" if r.reason else "ssim_drop",
        )
        for r in merged.itertuples(index=False)
    ]
    return sorted(out, key=lambda g: (g.job, g.step, g.index))
