"""Stage orchestration for one job: every preview rendered the server's way, compared,
attributed, corrected, written (:func:`run_job`).

:mod:`parity.run.options` (what a run is asked to do and what it found),
:mod:`parity.run.runner` (one case at a time: render, compare, attribute),
:mod:`parity.run.job_run` (the job from start to end), :mod:`parity.run.explain` (one
preview in depth), :mod:`parity.run.noise` (a job's noise floors, for ``parity noise``),
:mod:`parity.run.renders` (renders without judging, for ``parity preview`` and ``parity
render``) and :mod:`parity.run.open_job` (a job, its model and its engine, for every
front door).
"""

from parity.run.job_run import run_job, write_corrected_requests, write_run_report
from parity.run.noise import CaseNoise, format_noise_table, measure_job_noise
from parity.run.options import RunOptions, RunSummary, default_out_dir, utc_now
from parity.run.runner import Runner, progress, progress_enabled

__all__ = [
    "CaseNoise",
    "RunOptions",
    "RunSummary",
    "Runner",
    "default_out_dir",
    "format_noise_table",
    "measure_job_noise",
    "progress",
    "progress_enabled",
    "run_job",
    "utc_now",
    "write_corrected_requests",
    "write_run_report",
]
