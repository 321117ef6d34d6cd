"""Which jobs a ``parity run`` covers and where each writes, for a new run of one job or
many and for the resume of a run folder or a multi-job folder (:func:`run_entries`),
and whether it runs through this package at all (:func:`is_fleet_run`).

What a resume continues comes from the folder: a run folder's run.json names its job and
options (:class:`parity.run_info.RunInfo`); a multi-job folder's summary.json names its
jobs and the run's options, else the run.json of each job folder in it does.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from parity.errors import ParityError
from parity.fleet.driver import read_summary
from parity.fleet.records import SUMMARY_FILE
from parity.run_info import RUN_FILE, RunInfo


@dataclass(frozen=True)
class RunEntry:
    """One job of a run: its job folder and its run folder (None: decided once the job
    is read, ``ROOT/<job name>`` or, for one new job, its default folder)."""

    job_path: str
    out_dir: Path | None = None


@dataclass(frozen=True)
class RunEntries:
    """The jobs of a run.

    Attributes
    ----------
    entries:
        The jobs, in the order given (or recorded).
    root:
        The multi-job folder (None for one job: its run folder is the output).
    recorded:
        The options recorded for the whole run (a resumed summary.json's).
    resume:
        Whether the run continues one already in its folders.
    """

    entries: tuple[RunEntry, ...]
    root: Path | None = None
    recorded: dict[str, Any] = field(default_factory=dict)
    resume: bool = False

    def folder_and_options(
        self, entry: RunEntry, reference_model: str | None = None
    ) -> tuple[Path | None, dict[str, Any]]:
        """Where ``entry`` writes (None: its job's default run folder) and the options
        its run recorded: a resumed job's own run.json's, else the whole run's.

        A resumed job of a multi-job folder given as a JOB writes ``ROOT/<job name>``,
        which takes reading the job (``reference_model``: ``--model``, else recorded).
        """
        from parity.job import read_job

        out_dir, recorded = entry.out_dir, dict(self.recorded)
        if not self.resume:
            return out_dir, recorded
        if out_dir is None:
            assert self.root is not None  # a resume without a folder is a multi-job one
            reference = reference_model or recorded.get("reference_model")
            out_dir = self.root / read_job(entry.job_path, reference_model=reference).name
        if RunInfo.exists(out_dir):
            recorded = RunInfo.read(out_dir).options or recorded
        return out_dir, recorded


def is_fleet_run(
    jobs: Sequence[str], *, workers: int | None, ray: str | None, resume: str | Path | None
) -> bool:
    """Whether ``parity run`` goes through :mod:`parity.fleet`: several jobs, workers,
    Ray, or the resume of a multi-job folder."""
    if len(jobs) > 1 or workers is not None or ray is not None:
        return True
    if resume is None:
        return False
    return not RunInfo.exists(resume) and is_fleet_folder(Path(resume))


def is_fleet_folder(folder: Path) -> bool:
    """Whether ``folder`` is a multi-job folder: its summary.json, or job folders with
    their run.json (a driver killed before its first summary)."""
    if (folder / SUMMARY_FILE).is_file():
        return True
    return folder.is_dir() and any(RunInfo.exists(d) for d in folder.iterdir())


def job_to_resume(folder: Path, given: str | None = None) -> tuple[str, RunInfo]:
    """The job to continue the run folder ``folder`` with (``given``, else the one its
    run.json names) and that run.json.

    Raises
    ------
    ParityError
        ``folder`` holds no readable run.json, or it names no job and none is given.
    """
    info = RunInfo.read(folder)
    job_path = given or info.job_path
    if not job_path:
        raise ParityError(f"{RunInfo.path(folder)}: names no job; give the JOB folder too")
    return job_path, info


def run_entries(jobs: Sequence[str], *, out: str | None, resume: str | None) -> RunEntries:
    """The jobs of ``parity run JOB... [--out DIR] [--resume DIR]`` and their folders.

    A new run of several jobs writes ``DIR/<job name>/`` each (by default under
    ``reports/fleet/<UTC timestamp>``). ``--resume`` of a run folder continues its job;
    of a multi-job folder, the JOBs given, else every job of its summary.json (else of
    the run.json of each job folder in it).

    Raises
    ------
    ParityError
        No job given or recorded, several JOBs for one run folder, a run.json that
        names no job, or nothing to resume; the message says what to give.
    """
    jobs = list(jobs)
    if resume is None:
        if not jobs:
            raise ParityError("give one or more JOB folders (or --resume DIR)")
        if len(jobs) == 1:
            return RunEntries((RunEntry(jobs[0], Path(out) if out else None),))
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
        root = Path(out) if out else Path("reports") / "fleet" / stamp
        return RunEntries(tuple(RunEntry(job) for job in jobs), root)
    root = Path(resume)
    if RunInfo.exists(root):  # the run folder of one job
        if len(jobs) > 1:
            raise ParityError(f"{root} is the run folder of one job; give at most one JOB with it")
        job_path, _ = job_to_resume(root, jobs[0] if jobs else None)
        return RunEntries((RunEntry(job_path, root),), resume=True)
    summary = read_summary(root / SUMMARY_FILE) if (root / SUMMARY_FILE).is_file() else None
    recorded = (summary or {}).get("options") or {}
    if jobs:
        return RunEntries(tuple(RunEntry(job) for job in jobs), root, recorded, resume=True)
    if summary is not None:
        entries = [RunEntry(str(j["job_path"]), root / str(j["run_dir"])) for j in summary["jobs"]]
    else:
        entries = [
            RunEntry(RunInfo.read(d).job_path or "", d)
            for d in sorted(root.iterdir())
            if RunInfo.exists(d)
        ]
    missing = [str(e.out_dir) for e in entries if not e.job_path]
    if missing:
        raise ParityError(f"{missing[0]}/{RUN_FILE} names no job; give the JOB folders too")
    if not entries:
        raise ParityError(
            f"{root}: nothing to resume (no {RUN_FILE}, {SUMMARY_FILE} or job folders with "
            f"{RUN_FILE}); start the run again without --resume"
        )
    return RunEntries(tuple(entries), root, recorded, resume=True)


def check_job_folders(out_dirs: Sequence[Path], root: Path | None) -> None:
    """Refuse a job whose run folder is not ``ROOT/<name>`` of the multi-job folder."""
    if root is None:
        return
    for out_dir in out_dirs:
        if out_dir.parent.resolve() != root.resolve():
            raise ParityError(f"{out_dir}: not a job folder of {root}")
