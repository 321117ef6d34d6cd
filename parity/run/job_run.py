"""One job's run, start to end: plan, render and judge every case, correct, write.

After the last preview, the corrected requests (:mod:`parity.correct`), run.json and the
report are written.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import asdict, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from parity import __version__
from parity.correct import CORRECTED_DIR, CorrectedIndex, CorrectedRequests, corrected_requests
from parity.errors import JobError, LoraError
from parity.families import family
from parity.job import Job
from parity.plan import (
    Case,
    RequestPlan,
    UserRequest,
    check_requests_in_steps,
    default_lora_root,
    plan_cases,
    plan_requests,
    select_steps,
)
from parity.results import (
    ResultRow,
    atomic_write_text,
    link_or_copy,
)
from parity.run_info import RunInfo
from parity.server import server_dtype
from parity.settings import Cause, RenderSettings, SchedulerConfig

if TYPE_CHECKING:
    from parity.render.engine import RenderEngine

from parity.compare.noise import NOISE_FLOOR_K
from parity.run.options import RunOptions, RunSummary, utc_now
from parity.run.runner import Runner

log = logging.getLogger(__name__)


# -------------------------------------------------------------------- correction


def write_corrected_requests(
    job: Job,
    cases: list[Case],
    rows: list[ResultRow],
    out_dir: Path,
    checkpoint_scheduler: SchedulerConfig | None,
    *,
    server_diffusers: str | None = None,
    lora_root: Path | None = None,
    lora_paths: dict[int, str] | None = None,
) -> dict[int, CorrectedRequests]:
    """Write ``corrected_requests/<step>/<k>.json`` (requests the server takes unchanged)
    and the index ``corrected_requests/<step>.json`` from the planned cases and their
    rows (:func:`note_uncorrected` then notes on the rows why none reproduces a preview).

    ``lora_paths`` (step -> LoRA path) name the LoRA as the user's request for that step
    did; other steps name their checkpoint relative to ``lora_root``.
    """
    row_of = {(r.step, r.index): r for r in rows}
    by_step: dict[int, dict[int, RenderSettings]] = {}
    for case in cases:
        if case.pair is not None:
            by_step.setdefault(case.step, {})[case.index] = case.pair.preview
    reference_dtype = next((c.pair.reference.dtype for c in cases if c.pair is not None), None)
    lora_paths = lora_paths or {}
    out = {}
    for step, previews in sorted(by_step.items()):
        step_rows = {i: row_of.get((step, i)) for i in previews}
        corrected = corrected_requests(
            job,
            step,
            previews,
            attributions={i: r.attribution for i, r in step_rows.items() if r is not None},
            unconfirmed={i: r.below_noise_floor for i, r in step_rows.items() if r is not None},
            lora_not_applied=any(
                r is not None and Cause.LORA_NOT_APPLIED in r.candidate_causes
                for r in step_rows.values()
            ),
            checkpoint_scheduler=checkpoint_scheduler,
            server_dtype=reference_dtype,
            server_diffusers=server_diffusers,
            lora_root=lora_root,
            lora_path=lora_paths.get(step),
        )
        out[step] = corrected
        folder = out_dir / CORRECTED_DIR
        files = corrected.request_files()
        for name, body in files.items():
            atomic_write_text(folder / name, json.dumps(body, indent=2) + "\n")
        # A request file the index no longer names (an earlier run in this folder) goes.
        for stale in sorted((folder / str(step)).glob("*.json")):
            if f"{step}/{stale.name}" not in files:
                stale.unlink()
        atomic_write_text(
            folder / f"{step}.json", json.dumps(corrected.to_json_dict(), indent=2) + "\n"
        )
    return out


def note_uncorrected(
    rows: Sequence[ResultRow], corrected: dict[int, CorrectedRequests]
) -> list[ResultRow]:
    """``rows``, each whose preview no corrected request reproduces a new row noting why
    (``corrected_request_note``)."""
    out = []
    for row in rows:
        step = corrected.get(row.step)
        reasons = step.cannot.get(row.index) if step is not None else None
        out.append(replace(row, corrected_request_note="; ".join(reasons)) if reasons else row)
    return out


# -------------------------------------------------------------------- entry point


def run_job(
    job: Job,
    engine: RenderEngine,
    out_dir: str | Path,
    options: RunOptions = RunOptions(),
    *,
    resume: bool = False,
    device: str = "cpu",
    recorded_options: dict[str, Any] | None = None,
    requests: Sequence[UserRequest] = (),
    on_row: Callable[[ResultRow], None] | None = None,
    report: bool = True,
    relative_to: str | Path | None = None,
) -> RunSummary:
    """Run parity on ``job`` with ``engine``; write everything into ``out_dir``.

    ``requests`` are requests the user sent (:func:`parity.plan.bind_requests`): the
    reference side of the steps they name comes from them instead of the as-configured
    request. ``recorded_options`` (the command line's options) are kept in run.json, so
    that ``parity run --resume DIR`` continues with the same ones. ``on_row`` is called
    with every new result row once it and its images are written (results.json included).

    A worker of :mod:`parity.fleet` renders into a private folder for a run folder that
    its driver writes: ``relative_to`` is that final folder (rows name previews relative
    to it) and ``report=False`` leaves report.html, whose links must resolve from the
    final folder, to the driver.
    """
    out_dir = Path(out_dir)
    # 1. The job can run: its steps have previews and hold every request's step, its
    # training adapter is there.
    steps = _check_job(job, options, requests)
    # 2. The user's requests meet the previews, and their LoRAs load.
    request_plan = _plan_user_requests(job, engine, requests, options)
    # 3. The reference model loads, before anything is written.
    _load_reference_model(engine, options, device)
    # 4. The run folder and its run.json (continued, on a resume).
    runner = Runner(job, engine, out_dir, options, relative_to=relative_to)
    info = _open_run_folder(
        job,
        engine,
        out_dir,
        options,
        steps=steps,
        thresholds=asdict(runner.thresholds),
        device=device,
        recorded_options=recorded_options,
        request_plan=request_plan,
        resume=resume,
    )
    # 5. Both sides' settings of every preview.
    cases = _plan_job_cases(job, engine, steps, options, device, request_plan)
    # 6. Each preview rendered the server's way, judged and, on a mismatch, explained.
    rows = runner.run(cases, resume=resume, on_row=on_row)
    # 7. The requests the server takes unchanged that reproduce the previews.
    corrected = write_corrected_requests(
        job,
        cases,
        rows,
        out_dir,
        engine.checkpoint_scheduler,
        server_diffusers=options.server_diffusers,
        lora_root=_lora_root(job, options),
        lora_paths={u.step: u.request.loras[0].path for u in requests},
    )
    # 8. The finished rows, those no request reproduces noted, written once; run.json
    # finished, then the report.
    rows = note_uncorrected(rows, corrected)
    runner.write_finished(rows)
    summary = RunSummary(out_dir, rows, corrected)
    _finish_run(info, summary, with_requests=request_plan is not None, report=report)
    return summary


# -------------------------------------------------------------------- its steps


def _check_job(job: Job, options: RunOptions, requests: Sequence[UserRequest]) -> list[int]:
    """The steps the run covers, once the job is known to be runnable.

    Raises
    ------
    JobError
        The training adapter every preview needs is missing, or there is no preview.
    RequestStepError
        A request names a step the run leaves out (:func:`parity.plan.check_requests_in_steps`).
    """
    steps = select_steps(job, options.steps)
    check_requests_in_steps(requests, steps)
    if job.adapter_problem:  # every preview needs it: the run cannot happen
        raise JobError(job.adapter_problem)
    if not job.previews:
        why = (
            "train.disable_sampling is set, so ai-toolkit rendered none"
            if job.setup.disable_sampling
            else f"no <ms>__<step>_<index> images in {job.root / 'samples'}"
        )
        raise JobError(f"{job.root}: the job has no previews to check ({why})")
    return steps


def _plan_user_requests(
    job: Job, engine: RenderEngine, requests: Sequence[UserRequest], options: RunOptions
) -> RequestPlan | None:
    """The user's requests paired with previews (None without any).

    Each request's LoRA is read before the model loads: like a model that cannot load,
    it is a problem of the whole run (exit 2), found before anything is rendered.
    """
    request_plan = plan_requests(job, requests, options.match) if requests else None
    for user in requests:
        try:
            engine.lora(str(user.lora_path))
        except LoraError as e:
            raise LoraError(f"{user.source}: {e}") from None
    return request_plan


def _load_reference_model(engine: RenderEngine, options: RunOptions, device: str) -> None:
    """Load the reference model in the server's dtype.

    Before anything is written: a model that cannot be loaded makes the whole run
    impossible (ModelLoadError), not every preview an error.
    """
    engine.variant(options.reference_dtype or server_dtype(device))


def _open_run_folder(
    job: Job,
    engine: RenderEngine,
    out_dir: Path,
    options: RunOptions,
    *,
    steps: list[int],
    thresholds: dict[str, float],
    device: str,
    recorded_options: dict[str, Any] | None,
    request_plan: RequestPlan | None,
    resume: bool,
) -> RunInfo:
    """Create ``out_dir`` and write its run.json, not finished yet.

    A resumed run continues the run.json it finds: its start time, its options when none
    are given, and what only a finished run writes (counts...) until this one finishes.
    """
    from parity.stack import stack_record

    out_dir.mkdir(parents=True, exist_ok=True)
    previous = RunInfo.read(out_dir) if resume and RunInfo.exists(out_dir) else RunInfo()
    info = replace(
        previous,
        options=dict(recorded_options or previous.options or {}),
        stack=stack_record(),
        model_source=_source_record(engine),
        job=job.name,
        job_path=str(job.root),
        started=previous.started or utc_now(),
        finished=None,
        parity_version=__version__,
        device=device,
        reference_model=job.reference_model,
        aitk_version=job.aitk_version,
        steps=tuple(steps),
        thresholds=thresholds,
        confirm_margin=options.confirm_margin,
        noise_floor_k=NOISE_FLOOR_K,
        attribution=options.attribute,
        server_diffusers=family(job.family).server_release_json(options.server_diffusers),
        lora_root=str(_lora_root(job, options)),
        match=options.match,
    )
    if request_plan is not None:
        plan = request_plan.to_json()
        info = replace(
            info,
            requests=_keep_requests(request_plan, out_dir),
            unmatched_prompts=plan["unmatched_prompts"],
            unmatched_previews=plan["unmatched_previews"],
            served_missing=plan["served_missing"],
        )
    info.write(out_dir)
    return info


def _plan_job_cases(
    job: Job,
    engine: RenderEngine,
    steps: list[int],
    options: RunOptions,
    device: str,
    request_plan: RequestPlan | None,
) -> list[Case]:
    """Both sides' settings of every preview of ``steps`` (:func:`parity.plan.plan_cases`)."""
    return plan_cases(
        job,
        steps,
        device=device,
        checkpoint_scheduler=engine.checkpoint_scheduler,
        reference_dtype=options.reference_dtype,
        allow_outside_paths=options.allow_outside_paths,
        request_plan=request_plan,
        server_diffusers=options.server_diffusers,
    )


def _finish_run(info: RunInfo, summary: RunSummary, *, with_requests: bool, report: bool) -> None:
    """Write the finished run.json (its counts; with requests, their served drift), then
    report.html unless the caller writes it (a fleet worker's driver)."""
    info = replace(
        info,
        finished=utc_now(),
        counts=summary.counts,
        served_drift=summary.served_drift if with_requests else info.served_drift,
    )
    info.write(summary.out_dir)
    if report:
        corrected = summary.corrected
        write_run_report(
            summary.out_dir,
            summary.rows,
            job_name=info.job,
            run_info=info,
            corrected_requests={s: c.index() for s, c in corrected.items()},
            request_files={
                name: body for c in corrected.values() for name, body in c.request_files().items()
            },
        )


def _lora_root(job: Job, options: RunOptions) -> Path:
    """The server's workflows folder corrected requests' LoRA paths start from."""
    return options.lora_root or default_lora_root(job)


def _keep_requests(request_plan: RequestPlan, out_dir: Path) -> list[dict[str, Any]]:
    """Copy each user request into ``requests/<k>.json`` of the run folder (the folder
    keeps its evidence when moved); their run.json records."""
    records = []
    for k, user in enumerate(request_plan.requests):
        record = user.to_json()
        copy = out_dir / "requests" / f"{k}.json"
        try:
            link_or_copy(user.source, copy, link=False)
            record["copy"] = copy.relative_to(out_dir).as_posix()
        except OSError as e:
            log.warning("%s: not copied into the run folder (%s)", user.source, e)
        records.append(record)
    return records


def append_job_history(
    history: str | Path | None,
    summary: RunSummary,
    *,
    job_name: str,
    warn: Callable[[str], None],
) -> None:
    """Append a finished one-job run to the history table ``history`` (None: none), its
    run id ``<job name>/<run folder name>``; a failure is a ``warn`` line, never raised
    (:func:`parity.report.history.append_run_history`; a fleet's driver appends its own)."""
    if not history:
        return
    from parity.report.history import append_run_history

    info = RunInfo.read(summary.out_dir)
    append_run_history(
        history,
        summary.rows,
        run_time=info.started,
        run_id=f"{job_name}/{summary.out_dir.name}",
        warn=warn,
        run_dir=summary.out_dir,
        run_info=info,
    )


def write_run_report(
    out_dir: Path,
    rows: list[ResultRow],
    *,
    job_name: str,
    run_info: RunInfo,
    corrected_requests: dict[int, CorrectedIndex],
    request_files: dict[str, Any] | None = None,
) -> None:
    """Write report.html of a finished run; a failure is logged, never raised (the
    results are already safe on disk)."""
    try:
        from parity.report import write_report

        write_report(
            out_dir,
            rows,
            job_name=job_name,
            run_info=run_info,
            corrected_requests=corrected_requests,
            request_files=request_files,
        )
    except Exception as e:
        log.error("report.html could not be written: %s", e)


def _source_record(engine: RenderEngine) -> dict[str, Any]:
    return {"transformer": engine.source.transformer, "components": engine.source.components}
