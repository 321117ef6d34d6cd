"""``parity`` command line: inspect, preview, render, run, explain, report.

Exit status: 0 everything matched (or the command succeeded), 1 a mismatch or a
per-preview error, 2 bad usage or an unusable job/request.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any

from parity import __version__
from parity.errors import ParityError
from parity.logs import configure_logging

log = logging.getLogger("parity")

EXIT_OK, EXIT_MISMATCH, EXIT_USAGE = 0, 1, 2


# ------------------------------------------------------------------ shared options


def _add_options(p: argparse.ArgumentParser, command: str) -> None:
    """The arguments of ``command`` from the one option table (:mod:`parity.options`).

    argparse leaves each at None when it is not given, so that :func:`_resolve` can take
    it from the next source (a resumed run's options, the environment, pyproject.toml).
    """
    from parity.options import options_of

    for option in options_of(command):
        kwargs: dict[str, Any] = {"dest": option.name, "default": None, "help": option.help}
        if option.kind == "bool":
            kwargs["action"] = "store_true"
        else:
            kwargs["metavar"] = option.metavar
            kwargs["choices"] = option.choices
            if option.is_list:
                kwargs["action"] = "append"
            if option.kind == "int":
                kwargs["type"] = int
            elif option.kind == "float":
                kwargs["type"] = float
        p.add_argument(option.flag, **kwargs)


def _resolve(args: argparse.Namespace, recorded: dict[str, Any] | None = None) -> dict[str, Any]:
    """Every option of the command from its sources (:func:`parity.options.resolve`:
    the command line, ``recorded`` (a resumed run's options), the environment, then
    ``[tool.parity]`` of ./pyproject.toml); set on ``args`` and returned (what a resumed
    run must reuse: paths absolute, so that ``--resume`` works from any folder)."""
    from parity.options import Layer, options_of, resolve, standard_layers

    names = [o.name for o in options_of(args.command)]
    cwd = Path.cwd()
    flags = Layer("the command line", {n: getattr(args, n, None) for n in names}, cwd)
    between = [Layer("the resumed run's options", recorded, cwd)] if recorded else []
    values = resolve(standard_layers(flags, *between, pyproject=cwd / "pyproject.toml"), names)
    for name, value in values.items():
        setattr(args, name, value)
    return values


def _model_map(args: argparse.Namespace) -> Any:
    """The model map of the command line, the environment and ./pyproject.toml."""
    from parity.model_map import ModelMap

    return ModelMap.load(args.model_map or [])


def _open(
    args: argparse.Namespace,
    path: str | None = None,
    *,
    validate: bool = True,
    model_required: bool = True,
) -> Any:
    """The job of ``args`` (or at ``path``) and its model source
    (:func:`parity.run.open_job.open_job`, as every front door opens a job)."""
    from parity.run.open_job import open_job

    return open_job(
        path or args.job,
        _model_map(args),
        base_model=args.base_model,
        reference_model=args.reference_model,
        validate=validate,
        model_required=model_required,
    )


def _device(args: argparse.Namespace) -> str:
    if getattr(args, "threads", None):
        import torch

        torch.set_num_threads(args.threads)
    if args.device:
        return args.device
    from parity.render.engine import default_device

    return default_device()


def _dtype(args: argparse.Namespace) -> Any:
    from parity.plan.sides import normalize_dtype

    return normalize_dtype(args.dtype) if args.dtype else None


def _server_diffusers(args: argparse.Namespace) -> str | None:
    """--server-diffusers, checked (None: the installed release)."""
    from parity.families import check_server_diffusers

    return check_server_diffusers(getattr(args, "server_diffusers", None) or None)


def _requests(jobs: list[Any], args: argparse.Namespace) -> dict[str, list[Any]]:
    """The --request files bound to the jobs whose checkpoints they name (job name ->
    its requests; :func:`parity.plan.bind_requests`, as every front door binds them)."""
    from parity.plan import bind_requests

    return bind_requests(
        jobs,
        [Path(p) for p in args.request or []],
        served=[Path(p) for p in args.served or []],
        lora_root=Path(args.lora_root) if args.lora_root else None,
        allow_outside_paths=args.allow_outside_paths,
    )


def _request_plan(job: Any, args: argparse.Namespace, requests: list[Any]) -> Any:
    """Requests paired with previews; its warnings printed (prompts with no preview)."""
    from parity.plan import plan_requests

    if not requests:
        return None
    request_plan = plan_requests(job, requests, args.match)
    for line in request_plan.warnings():
        print(f"warning: {line}", file=sys.stderr)
    return request_plan


# --------------------------------------------------------------------- inspect


def _shift_text(side: dict) -> str:
    """A side's scheduler in one cell: its shift, ``dynamic``, or its class (UniPC)."""
    if side.get("dynamic_shift"):
        return "dynamic"
    if side.get("scheduler_shift") is None:
        return str(side.get("scheduler_class", "?")).removesuffix("Scheduler")
    return f"{side['scheduler_shift']:g}"


def _format_table(rows: list[dict]) -> str:
    fields = [
        ("size", lambda s: f"{s['width']}x{s['height']}"),
        ("cfg", lambda s: f"{s['pipeline_guidance']:g}"),
        ("steps", lambda s: str(s["steps"])),
        ("seed", lambda s: str(s["seed"])),
        (
            "lora",
            lambda s: "-" if s["network_multiplier"] is None else f"{s['network_multiplier']:g}",
        ),
        # Dynamic shifting (FLUX.1) moves the shift with the image size.
        ("shift", _shift_text),
    ]
    if any(row["aitk"] and row["aitk"].get("num_frames") is not None for row in rows):
        # A video job: frames and frames per second.
        fields.insert(1, ("frames", lambda s: f"{s['num_frames']}@{s['fps']}fps"))
    header = (
        f"{'step':>6} {'idx':>3}  "
        + "  ".join(f"{name:>15}" for name, _ in fields)
        + "  differences"
    )
    lines = [header, "-" * len(header)]
    for row in rows:
        if row["aitk"] is None:
            lines.append(f"{row['step']:>6} {row['index']:>3}  error: {row['error']}")
            continue
        cells = []
        for _name, fmt in fields:
            a, r = fmt(row["aitk"]), fmt(row["reference"])
            cells.append(f"{a if a == r else a + '|' + r:>15}")
        lines.append(
            f"{row['step']:>6} {row['index']:>3}  "
            + "  ".join(cells)
            + "  "
            + (",".join(row["differences"]) or "-")
        )
    lines.append(
        "cells show 'preview|server' where the two sides differ; cfg is the value diffusers receives"
    )
    return "\n".join(lines)


def cmd_inspect(args: argparse.Namespace) -> int:
    from parity.plan import describe_cases, plan_cases
    from parity.render.models import checkpoint_scheduler

    _resolve(args)
    opened = _open(args, validate=False, model_required=False)
    job = opened.job
    requests = _requests([job], args).get(job.name, [])
    scheduler = None
    if opened.source is None:  # inspect works without the weights
        log.info("checkpoint scheduler unknown: %s", opened.model_problem)
    else:
        scheduler = checkpoint_scheduler(opened.source)
    cases = plan_cases(
        job,
        job.steps,
        device=args.device or "cpu",
        checkpoint_scheduler=scheduler,
        reference_dtype=_dtype(args),
        allow_outside_paths=args.allow_outside_paths,
        request_plan=_request_plan(job, args, requests),
        server_diffusers=_server_diffusers(args),
    )
    rows = describe_cases(job, cases)
    if args.format == "json":
        print(json.dumps(rows, indent=2))
    else:
        print(f"job {job.name}  ({job.root})")
        print(
            f"ai-toolkit {job.aitk_version or 'unknown'}  arch {job.arch}  reference model {job.reference_model}  "
            f"LoRA {'merged' if job.merged_lora else 'unmerged'} in previews  train dtype {job.train_dtype}"
        )
        for problem in job.problems:
            print(f"warning: {problem}")
        for note in job.setup.notes():
            print(f"note: {note}")
        for checkpoint in job.checkpoints:
            print(f"checkpoint step {checkpoint.step}: {_describe_checkpoint(checkpoint)}")
        print(_format_table(rows))
    return EXIT_OK


def _describe_checkpoint(checkpoint: Any) -> str:
    dtype = checkpoint.dtype or "mixed dtypes"
    if checkpoint.rounded:
        dtype += " (a rounding of the fp32 training weights the previews used)"
    audit = checkpoint.audit.summary() if checkpoint.audit else "keys unreadable"
    return f"{checkpoint.path.name}, {dtype}; {audit}"


# ------------------------------------------------------------------- rendering


def _warn_line(line: str) -> None:
    print(line, file=sys.stderr)


def _print_renders(renders: Any) -> int:
    print(f"{renders.rendered} {renders.what} rendered into {renders.out}")
    return renders.exit_code


def cmd_preview(args: argparse.Namespace) -> int:
    from parity.plan import parse_steps, select_steps
    from parity.run.renders import render_previews

    _resolve(args)
    opened = _open(args)
    engine, _ = _engine_for_job(opened, args)
    renders = render_previews(
        opened.job,
        engine,
        Path(args.out),
        steps=select_steps(opened.job, parse_steps(args.step)),
        reference_dtype=_dtype(args),
        allow_outside_paths=args.allow_outside_paths,
        warn=_warn_line,
    )
    return _print_renders(renders)


def cmd_render(args: argparse.Namespace) -> int:
    from parity.run.renders import render_request

    _resolve(args)
    renders = render_request(
        args.request_file,
        _model_map(args),
        Path(args.out),
        base_model=args.base_model,
        lora_root=args.lora_root,
        allow_outside_paths=args.allow_outside_paths,
        device=_device(args),
        dtype=_dtype(args),
        server_diffusers=_server_diffusers(args),
        warn=_warn_line,
    )
    return _print_renders(renders)


# ------------------------------------------------------------------------- run


def _engine_for_job(opened: Any, args: argparse.Namespace) -> tuple[Any, str]:
    from parity.run.open_job import open_engine

    device = _device(args)
    return open_engine(opened.job, opened.source, device=device), device


def _run_options(args: argparse.Namespace, **fixed: Any) -> Any:
    from parity.options import run_options

    return run_options(vars(args), **fixed)


def _steps_of_requests(
    job: Any, args: argparse.Namespace, used: dict[str, Any], requests: list
) -> None:
    """--steps of a run with --request (:func:`parity.plan.steps_with_requests`), set on
    ``args`` and, where the requests chose them, on the options the run records."""
    from parity.plan import steps_with_requests

    steps = steps_with_requests(job, args.steps, requests, given=args.steps_given)
    if requests and not args.steps_given:
        args.steps = used["steps"] = steps


def cmd_run(args: argparse.Namespace) -> int:
    from parity.fleet import is_fleet_run, job_to_resume
    from parity.options import history_of
    from parity.run import default_out_dir, run_job
    from parity.run.job_run import append_job_history

    if is_fleet_run(args.job, workers=args.workers, ray=args.ray, resume=args.resume):
        return cmd_run_fleet(args)
    args.job = args.job[0] if args.job else None
    resume = args.resume is not None
    recorded: dict[str, Any] = {}
    if resume:
        out_dir = Path(args.resume)
        job_path, info = job_to_resume(out_dir, args.job)
        recorded = info.options or {}
    else:
        if args.job is None:
            raise ParityError("give a JOB folder (or --resume DIR)")
        job_path = args.job
    args.steps_given = args.steps is not None or "steps" in recorded
    used = _resolve(args, recorded)
    opened = _open(args, job_path)
    job = opened.job
    requests = _requests([job], args).get(job.name, [])
    _steps_of_requests(job, args, used, requests)
    options = _run_options(args)
    if not resume:
        out_dir = Path(args.out) if args.out else default_out_dir(job)
    for problem in job.problems:
        print(f"warning: {problem}", file=sys.stderr)
    _request_plan(job, args, requests)  # unusable pairings stop here; warnings printed
    _warn_stack()
    engine, device = _engine_for_job(opened, args)
    summary = run_job(
        job,
        engine,
        out_dir,
        options,
        resume=resume,
        device=device,
        recorded_options=used,
        requests=requests,
    )
    append_job_history(history_of(vars(args)), summary, job_name=job.name, warn=_warn_line)
    _print_summary(summary)
    return summary.exit_code


# ------------------------------------------------------------------ many jobs


def cmd_run_fleet(args: argparse.Namespace) -> int:
    """``parity run`` of several jobs, or with ``--workers`` / ``--ray`` (parity.fleet)."""
    import copy

    from parity import fleet
    from parity.options import history_of
    from parity.run import default_out_dir

    plan = fleet.run_entries(args.job, out=args.out, resume=args.resume)
    root = plan.root
    jobs: list[Any] = []
    shared: dict[str, Any] = {}
    readied = []
    for entry in plan.entries:
        job_args = copy.copy(args)
        out_dir, recorded = plan.folder_and_options(entry, args.reference_model)
        job_args.steps_given = job_args.steps is not None or "steps" in recorded
        used = _resolve(job_args, recorded)
        shared = shared or used
        opened = _open(job_args, entry.job_path)
        job = opened.job
        if out_dir is None:
            out_dir = default_out_dir(job) if root is None else root / job.name
        readied.append((entry.job_path, out_dir, job_args, used, opened))
    # --request, --served and --lora-root are run-wide: as given, or as every job recorded.
    requests = _requests([r[4].job for r in readied], readied[0][2] if readied else args)
    for job_path, out_dir, job_args, used, opened in readied:
        job = opened.job
        mine = requests.get(job.name, [])
        _steps_of_requests(job, job_args, used, mine)
        _request_plan(job, job_args, mine)  # unusable pairings stop here; warnings printed
        history = history_of(vars(job_args))
        planned = fleet.plan_job(
            job_path,
            out_dir=out_dir,
            options=_run_options(job_args, progress=False),
            recorded_options=used,
            opened=opened,
            reference_model=job_args.reference_model,
            model_map=job_args.model_map,
            history=history,
            run_label=None if root is None else root.name,
            requests=mine,
        )
        jobs.append(planned)
    fleet.check_unique_names([(j.name, j.job_path) for j in jobs])
    fleet.check_job_folders([j.out_dir for j in jobs], root)
    for job in jobs:
        for problem in job.problems:
            print(f"warning: {job.name}: {problem}", file=sys.stderr)
    _warn_stack()

    run = fleet.start_fleet_run(
        jobs,
        root=root,
        resume=plan.resume,
        options=shared,
        workers=args.workers,
        ray=args.ray,
        device=args.device,
        threads=args.threads,
        log_level=logging.getLogger("parity").getEffectiveLevel(),
    )
    states = run.run()
    if root is None:
        from parity.run import RunSummary

        [state] = states
        if state.status == "failed":
            print(f"parity: {state.job.name}: {state.error}", file=sys.stderr)
        _print_summary(RunSummary(state.job.out_dir, state.sorted_rows()))
    else:
        _print_fleet_summary(run, root)
    return run.exit_code


def _print_fleet_summary(run: Any, root: Path) -> None:
    states = list(run.states.values())
    counts = run.counts()
    finished = sum(s.status == "finished" for s in states)
    failed = sum(s.status == "failed" for s in states)
    print(
        f"{len(states)} jobs: {finished} finished, {failed} failed; {counts['match']} match, "
        f"{counts['mismatch']} mismatch, {counts['error']} error  ->  {root}"
    )
    width = max(len(s.job.name) for s in states)
    for s in states:
        if s.status == "failed":
            print(f"  {s.job.name:<{width}}  FAILED: {s.error}")
            continue
        c = s.counts
        retried = f"  (attempt {s.attempts})" if s.attempts > 1 else ""
        print(
            f"  {s.job.name:<{width}}  {c['match']} match, {c['mismatch']} mismatch, "
            f"{c['error']} error  {s.job.out_dir / 'report.html'}{retried}"
        )
    from parity.fleet import SUMMARY_FILE

    print(f"summary: {root / SUMMARY_FILE}")


def _warn_stack() -> None:
    from parity.stack import stack_warning

    warning = stack_warning()
    if warning:
        print(f"warning: {warning}", file=sys.stderr)


def _print_summary(summary: Any) -> None:
    counts = summary.counts
    print(
        f"{counts['match']} match, {counts['mismatch']} mismatch, {counts['error']} error  ->  {summary.out_dir}"
    )
    if summary.served_drift:
        print(
            f"{summary.served_drift} served image(s) differ from parity's reference render: "
            "the deployed server is not the reference parity renders, so the causes explain "
            "parity's reference, not that server; dtype, library era or hardware could "
            "explain it (--dtype, --server-diffusers, --device; see results.json served_note)"
        )
    for row in summary.rows:
        if row.verdict == "match" and not row.served_note:
            continue
        what = ",".join(map(str, row.causes)) or (
            "no cause confirmed" if row.verdict == "mismatch" else "-"
        )
        if row.below_noise_floor:  # present in the settings, effect within float noise
            what += f" ({','.join(str(u.cause) for u in row.below_noise_floor)} below noise floor)"
        state = (
            "explained" if row.explained else ("unexplained" if row.verdict == "mismatch" else "")
        )
        ssim = f"ssim {row.ssim:.3f}" if row.ssim is not None else ""
        print(
            f"  step {row.step} #{row.index}: {row.verdict} {ssim} causes={what} {state}".rstrip()
        )
        if row.detail:
            print(f"      {row.detail}")
        if row.served is not None and row.served.drift:
            diff = row.served.max_abs_diff
            print(
                f"      served image: drift, SSIM {row.served.ssim:.4f}, "
                + ("sizes differ" if diff is None else f"max difference {diff}/255")
            )
    print(f"report: {summary.out_dir / 'report.html'}")


def cmd_explain(args: argparse.Namespace) -> int:
    from parity.plan import check_requests_in_steps, step_of_requests
    from parity.report.text import explain_lines
    from parity.run import utc_now
    from parity.run.explain import explain_preview

    _resolve(args)
    opened = _open(args)
    job = opened.job
    requests = _requests([job], args).get(job.name, [])
    step = args.step if args.step is not None else step_of_requests(requests)
    check_requests_in_steps(requests, [step], "--step")
    request_plan = _request_plan(job, args, requests)
    engine, device = _engine_for_job(opened, args)
    out_dir = (
        Path(args.out)
        if args.out
        else Path("reports") / job.name / f"explain-{utc_now().replace(':', '')}"
    )
    explained = explain_preview(
        job,
        engine,
        out_dir,
        _run_options(args, steps=(step,)),
        step=step,
        index=args.index,
        device=device,
        requests=requests,
        request_plan=request_plan,
    )
    lines = explain_lines(
        job,
        explained.case,
        explained.row,
        out_dir=out_dir,
        server_diffusers=explained.server_diffusers,
        lora_root=explained.lora_root,
        corrected=explained.corrected,
        lossless_ssim=explained.lossless_ssim,
    )
    print("\n".join(lines))
    return explained.exit_code


# ------------------------------------------------------------------------- env


def cmd_noise(args: argparse.Namespace) -> int:
    """``parity noise JOB``: the noise floor of one preview per step, both sides."""
    from parity.compare import NOISE_FLOOR_K, Thresholds
    from parity.plan import parse_steps
    from parity.render.engine import alternate_method
    from parity.run import format_noise_table, measure_job_noise

    _resolve(args)
    opened = _open(args)
    job = opened.job
    engine, device = _engine_for_job(opened, args)
    rows = measure_job_noise(
        job,
        engine,
        steps=parse_steps(args.steps or "all"),
        reference_dtype=_dtype(args),
        allow_outside_paths=bool(args.allow_outside_paths),
    )
    t = Thresholds()
    print(f"{job.name}: noise floor per case on {device} ({alternate_method(device)})")
    print(format_noise_table(rows))
    print(
        f"k = {NOISE_FLOOR_K:g}: a render matches when it is within the thresholds (SSIM >= "
        f"{t.ssim_min:g}, PSNR >= {t.psnr_min:g} dB) or within {NOISE_FLOOR_K:g} times its "
        f"own noise floor, whichever allows more (columns 'SSIM >=', 'PSNR >=')"
    )
    return EXIT_OK


def cmd_env(args: argparse.Namespace) -> int:
    from parity.stack import format_stack, runtime_record, stack_record

    if args.format == "json":
        print(json.dumps({**stack_record(), **runtime_record()}, indent=2))
        return EXIT_OK
    print(f"parity {__version__}")
    print(format_stack())
    runtime = runtime_record()
    print(
        f"torch CPU kernels {runtime['torch_cpu_capability']}, {runtime['torch_threads']} "
        f"threads; CUDA {'yes: ' + ', '.join(runtime['cuda_devices']) if runtime['cuda'] else 'no'}"
    )
    return EXIT_OK


# ---------------------------------------------------------------------- report


def cmd_report(args: argparse.Namespace) -> int:
    """``parity report``: the nightly dashboard of a history table (parity.report.dashboard)."""
    from parity.report.dashboard import build_dashboard
    from parity.report.history import SSIM_DROP_THRESHOLD

    if args.ssim_drop is None:
        args.ssim_drop = SSIM_DROP_THRESHOLD
    board = build_dashboard(
        args.history, args.out, ssim_drop=args.ssim_drop, since=args.since, jobs=args.job
    )
    print(
        f"{board.jobs} job{'' if board.jobs == 1 else 's'}, {board.regressed_jobs} regressed "
        f"({board.regressions} preview{'' if board.regressions == 1 else 's'})"
    )
    if board.jobs == 0 and (args.job or args.since):
        print("warning: no run of the history passes --job/--since", file=sys.stderr)
    print(f"dashboard: {board.index}")
    return EXIT_OK


# ------------------------------------------------------------------------ main


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="parity",
        description="Check that the reference inference server reproduces the training previews "
        "of an ai-toolkit LoRA job (Z-Image, Z-Image-Turbo, De-Turbo, FLUX.1-dev), and explain "
        "every mismatch.",
    )
    parser.add_argument("--version", action="version", version=f"parity {__version__}")
    parser.add_argument(
        "-v",
        "--verbose",
        action="count",
        default=0,
        help="more logging and tracebacks of errors (-vv: debug)",
    )
    # -v also after the subcommand: a subparser's value replaces the main parser's only
    # when given (SUPPRESS leaves it out of the namespace otherwise).
    verbose = argparse.ArgumentParser(add_help=False)
    verbose.add_argument(
        "-v", "--verbose", action="count", default=argparse.SUPPRESS, help=argparse.SUPPRESS
    )
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser(
        "inspect", parents=[verbose], help="both sides' settings per preview, without rendering"
    )
    p.add_argument("job", help="ai-toolkit job folder or job file (YAML/JSON)")
    p.add_argument("--format", choices=["table", "json"], default="table")
    _add_options(p, "inspect")
    p.set_defaults(func=cmd_inspect)

    p = sub.add_parser(
        "preview", parents=[verbose], help="render the job's samples the way ai-toolkit did"
    )
    p.add_argument("job")
    p.add_argument("--step", default="all", help="N, last or all (default all)")
    p.add_argument(
        "--out",
        required=True,
        help="output folder: <step>/<index>.png (a video: .webp) and effective.json",
    )
    _add_options(p, "preview")
    p.set_defaults(func=cmd_preview)

    p = sub.add_parser(
        "render", parents=[verbose], help="render an API request the way the reference server does"
    )
    p.add_argument("request_file", metavar="REQUEST", help="request JSON (the server's schema)")
    p.add_argument(
        "--out",
        required=True,
        help="output folder: <i>.png (a video: <i>.webp) and effective.json",
    )
    # The request's LoRA paths resolve under --lora-root, by default the request's folder.
    _add_options(p, "render")
    p.set_defaults(func=cmd_render)

    p = sub.add_parser(
        "run", parents=[verbose], help="render, compare and explain every preview of a job"
    )
    p.add_argument("job", nargs="*", help="ai-toolkit job folder(s) (optional with --resume)")
    p.add_argument(
        "--out",
        metavar="DIR",
        help="output folder: one job's run folder (default reports/<job>/<UTC timestamp>); "
        "with several jobs DIR/<job name>/ each and DIR/summary.json "
        "(default reports/fleet/<UTC timestamp>)",
    )
    p.add_argument(
        "--resume",
        metavar="DIR",
        help="continue an interrupted run in DIR: a run folder, or a multi-job folder "
        "(every job of its summary.json, or the JOBs given)",
    )
    p.add_argument(
        "--workers",
        type=int,
        metavar="N",
        default=None,
        help="N worker processes, each on its own device (cuda:0..N-1, or on CPU an equal "
        "share of the cores) loading each base model once; with --ray: N actors",
    )
    p.add_argument(
        "--ray",
        metavar="ADDRESS|auto|local",
        default=None,
        help="run the jobs on Ray actors (one per GPU): 'local' starts a one-machine "
        "cluster on 127.0.0.1, 'auto' joins this machine's cluster, or a head address "
        "(needs the extra parity[ray])",
    )
    _add_options(p, "run")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser(
        "explain", parents=[verbose], help="one preview in depth, with every counterfactual"
    )
    p.add_argument("job")
    p.add_argument(
        "--step", type=int, default=None, help="the step (default with --request: its step)"
    )
    p.add_argument("--index", type=int, required=True)
    p.add_argument("--out", help="where the renders go (default reports/<job>/explain-<time>)")
    _add_options(p, "explain")
    p.set_defaults(func=cmd_explain)

    p = sub.add_parser(
        "noise",
        parents=[verbose],
        help="how far one preview per step moves through other kernels: the noise floors",
    )
    p.add_argument("job", help="ai-toolkit job folder")
    _add_options(p, "noise")
    p.set_defaults(func=cmd_noise)

    p = sub.add_parser(
        "env",
        parents=[verbose],
        help="the installed library stack and how it differs from the pins",
    )
    p.add_argument("--format", choices=["table", "json"], default="table")
    p.set_defaults(func=cmd_env)

    p = sub.add_parser(
        "report",
        parents=[verbose],
        help="the nightly dashboard of the run history: an overview of every job, a page per job",
        description="Write the nightly dashboard of a history table: OUT/index.html (every "
        "job, regressed jobs first, with links to each last run's report.html) and "
        "OUT/jobs/<job>.html (trends, regressed previews). Links are relative: move OUT "
        "and the run folders together.",
    )
    p.add_argument(
        "--history",
        default="reports/history.parquet",
        metavar="FILE",
        help="history table that 'parity run --history' appends to, .parquet or .csv "
        "(default reports/history.parquet); its run folders are found relative to it",
    )
    p.add_argument(
        "--out", required=True, metavar="DIR", help="folder for index.html, jobs/ and assets/"
    )
    p.add_argument(
        "--since",
        metavar="DATE",
        help="only runs at or after DATE (ISO 8601: 2026-12-01 or 2026-12-01T02:00; UTC "
        "unless it gives a zone)",
    )
    p.add_argument(
        "--job",
        action="append",
        metavar="NAME",
        help="only this job (its config.name, or a shell pattern such as 'lora_*'); repeat "
        "for several",
    )
    p.add_argument(
        "--ssim-drop",
        type=float,
        default=None,
        metavar="X",
        help="a preview whose SSIM fell by more than X since the previous run regresses "
        "even with the same verdict (default 0.02)",
    )
    p.set_defaults(func=cmd_report)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    level = logging.WARNING - 10 * min(args.verbose, 2)
    configure_logging(level)
    try:
        return args.func(args)
    except KeyboardInterrupt:
        print(
            "parity: interrupted; finished results are saved (resume with --resume DIR)",
            file=sys.stderr,
        )
        return 130
    except (ParityError, ValueError, OSError) as e:
        # The run cannot happen as asked: one line naming what and how to fix it.
        _print_error(str(e), args.verbose)
        return EXIT_USAGE
    except Exception as e:  # a bug: still one line (the traceback with -v), never exit 1
        _print_error(f"internal error: {type(e).__name__}: {e}", args.verbose, hint=True)
        return EXIT_USAGE


def _print_error(message: str, verbose: int, *, hint: bool = False) -> None:
    if verbose:
        import traceback

        traceback.print_exc()
    line = " ".join(message.split())  # one line, whatever the message holds
    if hint and not verbose:
        line += " (run with -v for the traceback)"
    print(f"parity: error: {line}", file=sys.stderr)
