"""One job's run, start to end: plan, render and judge every case, correct, write.

After the last preview, the corrected requests (:mod:`parity.correct`), run.json and the
report are written.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from parity import __version__
from parity.correct import CorrectedRequests, corrected_requests
from parity.errors import JobError, LoraError
from parity.job import Job
from parity.plan import (
    Case,
    RequestPlan,
    UserRequest,
    default_lora_root,
    plan_cases,
    plan_requests,
    select_steps,
)
from parity.results import (
    ResultRow,
    atomic_write_text,
    link_or_copy,
    write_results,
)
from parity.settings import Cause, RenderSettings
from parity.zimage.diffusers_era import DiffusersEra, diffusers_era
from parity.zimage.server import server_dtype

if TYPE_CHECKING:
    from parity.render.engine import RenderEngine

from parity.run.options import RunOptions, RunSummary, utc_now
from parity.run.runner import Runner

log = logging.getLogger(__name__)


# -------------------------------------------------------------------- correction


def write_corrected_requests(
    job: Job,
    cases: list[Case],
    rows: list[ResultRow],
    out_dir: Path,
    checkpoint_shift: float | None,
    *,
    server_era: DiffusersEra | None = None,
    lora_root: Path | None = None,
    lora_paths: dict[int, str] | None = None,
) -> dict[int, CorrectedRequests]:
    """Write ``corrected_requests/<step>/<k>.json`` (requests the server takes unchanged)
    and the index ``corrected_requests/<step>.json`` from the planned cases and their
    rows, and note on each row why no request reproduces its preview, where none does.

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
            checkpoint_shift=checkpoint_shift,
            server_dtype=reference_dtype,
            server_era=server_era,
            lora_root=lora_root,
            lora_path=lora_paths.get(step),
        )
        out[step] = corrected
        folder = out_dir / "corrected_requests"
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
        for index, reasons in corrected.cannot.items():
            if step_rows.get(index) is not None:
                step_rows[index].corrected_request_note = "; ".join(reasons)
    if row_of:
        write_results(out_dir, list(row_of.values()))
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
    from parity.stack import stack_record

    steps = select_steps(job, options.steps)
    if job.adapter_problem:  # every preview needs it: the run cannot happen
        raise JobError(job.adapter_problem)
    if not job.previews:
        why = (
            "train.disable_sampling is set, so ai-toolkit rendered none"
            if job.setup.disable_sampling
            else f"no <ms>__<step>_<index> images in {job.root / 'samples'}"
        )
        raise JobError(f"{job.root}: the job has no previews to check ({why})")
    request_plan = plan_requests(job, requests, options.match) if requests else None
    # A request's LoRA is checked before the model loads (both are exit-2 problems).
    for user in requests:
        try:
            engine.lora(str(user.lora_path))
        except LoraError as e:
            raise LoraError(f"{user.source}: {e}") from None
    # Load the reference model before anything is written: a model that cannot be loaded
    # makes the whole run impossible (ModelLoadError), not every preview an error.
    engine.variant(options.reference_dtype or server_dtype(device))
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    run_info_path = out_dir / "run.json"
    run_info: dict[str, Any] = {}
    if resume and run_info_path.exists():
        run_info = json.loads(run_info_path.read_text(encoding="utf-8"))
    runner = Runner(job, engine, out_dir, options, relative_to=relative_to)
    era = options.server_era or diffusers_era(None)
    lora_root = options.lora_root or default_lora_root(job)
    run_info.update(
        {
            "options": dict(recorded_options or run_info.get("options") or {}),
            "stack": stack_record(),
            "model_source": _source_record(engine),
            "job": job.name,
            "job_path": str(job.root),
            "started": run_info.get("started") or utc_now(),
            "finished": None,
            "parity_version": __version__,
            "device": device,
            "reference_model": job.reference_model,
            "aitk_version": job.aitk_version,
            "steps": steps,
            "thresholds": asdict(runner.thresholds),
            "confirm_margin": options.confirm_margin,
            "noise_floor_k": _noise_floor_k(),
            "attribution": options.attribute,
            "server_diffusers": era.to_json(),
            "lora_root": str(lora_root),
            "match": options.match,
        }
    )
    if request_plan is not None:
        run_info["requests"] = _keep_requests(request_plan, out_dir)
        run_info.update({k: v for k, v in request_plan.to_json().items() if k != "requests"})
    atomic_write_text(run_info_path, json.dumps(run_info, indent=2))
    shift = engine.checkpoint_scheduler_shift
    cases = plan_cases(
        job,
        steps,
        device=device,
        checkpoint_shift=shift,
        reference_dtype=options.reference_dtype,
        allow_outside_paths=options.allow_outside_paths,
        request_plan=request_plan,
        server_era=options.server_era,
    )
    rows = runner.run(cases, resume=resume, on_row=on_row)
    corrected = write_corrected_requests(
        job,
        cases,
        rows,
        out_dir,
        shift,
        server_era=options.server_era,
        lora_root=lora_root,
        lora_paths={u.step: u.request.loras[0].path for u in requests},
    )
    summary = RunSummary(out_dir, rows, corrected)
    run_info["finished"] = utc_now()
    run_info["counts"] = summary.counts
    if request_plan is not None:
        run_info["served_drift"] = summary.served_drift
    atomic_write_text(run_info_path, json.dumps(run_info, indent=2))
    if report:
        write_run_report(
            out_dir,
            rows,
            job_name=job.name,
            run_info=run_info,
            corrected_requests={s: c.to_json_dict() for s, c in corrected.items()},
            request_files={
                name: body for c in corrected.values() for name, body in c.request_files().items()
            },
        )
    return summary


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


def write_run_report(
    out_dir: Path,
    rows: list[ResultRow],
    *,
    job_name: str,
    run_info: dict[str, Any],
    corrected_requests: dict[int, Any],
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


def _noise_floor_k() -> float:
    from parity.compare.noise import NOISE_FLOOR_K

    return NOISE_FLOOR_K
