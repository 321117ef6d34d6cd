"""A parity run: every preview of a job rendered the server's way, compared, attributed.

Data flow per preview: planned case (:mod:`parity.plan`) → reference render → comparison
with the stored preview → (mismatch) counterfactual renders (:mod:`parity.attribute`) →
result row. Rows are written after every preview (atomically), so a killed run leaves a
readable ``results.json`` of what was finished and ``resume=True`` continues from it.
After the last preview, the corrected requests (:mod:`parity.correct`), run.json and the
report are written.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from parity import __version__
from parity.attribute import Attribution, Counterfactual, Planned, attribute
from parity.correct import CorrectedRequests, corrected_requests
from parity.errors import ModelError, ParityError
from parity.job import Job
from parity.plan import Case, Steps, plan_cases, select_steps
from parity.results import (
    ResultRow,
    Verdict,
    atomic_write_text,
    read_results,
    save_png,
    write_results,
)
from parity.server import server_dtype
from parity.settings import DEFAULT_CONFIRM_MARGIN, Cause, Dtype, RenderSettings

if TYPE_CHECKING:
    from parity.compare import Thresholds
    from parity.engine import RenderEngine

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RunOptions:
    """How a run renders and judges.

    Attributes
    ----------
    steps:
        ``"all"``, ``"last"`` or explicit steps.
    attribute:
        Render counterfactuals for mismatches (False: verdicts only).
    thresholds:
        Match thresholds (None: :class:`parity.compare.Thresholds` defaults).
    confirm_margin:
        Without a complete explanation, a cause is confirmed when reverting it alone
        raises ``1 - SSIM`` by more than this.
    reference_dtype:
        Override of the server's dtype rule (bf16 on CUDA, fp32 on CPU).
    latent_metric:
        Compute the VAE latent distance (needs the pipeline's VAE; cheap).
    progress:
        Show a progress bar (None: only on a terminal outside CI).
    allow_outside_paths:
        Accept previews and checkpoints that resolve outside the job folder.
    """

    steps: Steps = "all"
    attribute: bool = True
    thresholds: Thresholds | None = None
    confirm_margin: float = DEFAULT_CONFIRM_MARGIN
    reference_dtype: Dtype | None = None
    latent_metric: bool = True
    progress: bool | None = None
    allow_outside_paths: bool = False


@dataclass
class RunSummary:
    out_dir: Path
    rows: list[ResultRow]
    corrected: dict[int, CorrectedRequests] = field(default_factory=dict)

    @property
    def counts(self) -> dict[str, int]:
        out = {str(v): 0 for v in Verdict}
        for row in self.rows:
            out[str(row.verdict)] += 1
        return out

    @property
    def exit_code(self) -> int:
        return 0 if self.rows and all(r.verdict is Verdict.MATCH for r in self.rows) else 1


def utc_now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def default_out_dir(job: Job, root: str | Path = "reports") -> Path:
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
    return Path(root) / job.name / stamp


# ----------------------------------------------------------------------- execution


class Runner:
    """Renders, compares and attributes the cases of one job into one output folder."""

    def __init__(
        self,
        job: Job,
        engine: RenderEngine,
        out_dir: str | Path,
        options: RunOptions,
        *,
        relative_to: str | Path | None = None,
    ) -> None:
        from parity import compare

        self.job = job
        self.engine = engine
        self.out_dir = Path(out_dir)
        self.options = options
        self.thresholds = options.thresholds or compare.Thresholds()
        # Rows name previews relative to the run folder. A worker that renders into a
        # private folder for another one (parity.fleet) gives that final folder here.
        self.relative_to = Path(relative_to) if relative_to is not None else self.out_dir
        self._encode = None

    def rel(self, path: str | Path) -> str:
        """``path`` relative to the run folder (:attr:`relative_to`)."""
        return os.path.relpath(Path(path).resolve(), self.relative_to.resolve())

    def _encoder(self, dtype: Dtype) -> Any:
        """The VAE encoder of the reference pipeline (loaded anyway for its renders)."""
        from parity.compare import make_vae_encoder

        if not self.options.latent_metric:
            return None
        if self._encode is None:
            self._encode = make_vae_encoder(self.engine.variant(dtype).pipe.vae)
        return self._encode

    def evaluate(self, case: Case) -> ResultRow:
        """The result row of one case. Per-preview problems become ``error`` rows; a model
        that cannot be used at all raises (the whole run stops)."""
        from parity import compare

        row = ResultRow(job=self.job.name, step=case.step, index=case.index)
        if case.preview is not None:
            row.preview = self.rel(case.preview.path)
        if case.sample is not None:
            row.prompt = case.sample.prompt
        if case.error:
            row.detail = case.error
            return row
        assert case.pair is not None and case.preview is not None
        try:
            preview_rgb = compare.load_rgb(case.preview.path)
            codec = compare.inspect_codec(case.preview.path)
        except ParityError as e:
            row.detail = str(e)
            return row
        row.height_preview, row.width_preview = preview_rgb.shape[:2]
        if codec.format == "JPEG" and case.preview.ext not in ("jpg", "jpeg"):
            log.warning("%s: JPEG data under a .%s name", case.preview.path, case.preview.ext)
        encode = self._encoder(case.pair.reference.dtype)
        # The preview is encoded once per case, not once per counterfactual.
        preview_latent = compare.encode_latent(preview_rgb, encode) if encode else None

        def evaluate(
            planned: Sequence[Planned], paths: Sequence[str]
        ) -> list[tuple[Counterfactual, Any]]:
            """Render each planned render and save it at its path (relative to the run
            folder), then score them all in one batch."""
            outputs = [self.engine.render(p.settings) for p in planned]
            for out, path in zip(outputs, paths, strict=True):
                save_png(out.image, self.out_dir / path)
            scores = compare.compare_many(
                preview_rgb,
                [_to_rgb(out.image) for out in outputs],
                codec=codec,
                encode=encode,
                preview_latent=preview_latent,
                device=self.engine.device,
            )
            return [
                (
                    Counterfactual(
                        name=p.name,
                        switched=p.switched,
                        settings=p.settings,
                        ssim=c.ssim,
                        psnr=c.psnr,
                        latent_distance=c.latent_distance,
                        match=self.thresholds.is_match(c),
                        image=path,
                    ),
                    (c, out),
                )
                for p, path, c, out in zip(planned, paths, scores, outputs, strict=True)
            ]

        try:
            [(reference, (c, ref_out))] = evaluate(
                [Planned("reference", (), case.pair.reference)],
                [f"renders/{case.step}/{case.index}.png"],
            )
        except ModelError:
            raise
        except ParityError as e:
            row.detail = str(e)
            return row
        except Exception as e:  # one failing render never stops the run
            log.exception("render failed for step %s index %s", case.step, case.index)
            row.detail = f"render failed: {type(e).__name__}: {e}"
            return row
        row.render = reference.image
        row.width_render, row.height_render = c.width_render, c.height_render
        row.ssim, row.psnr, row.ms_ssim = c.ssim, c.psnr, c.ms_ssim
        row.latent_distance, row.lpips = c.latent_distance, c.lpips
        row.resized_for_comparison = c.resized
        row.jpeg_floor = (
            compare.jpeg_floor(_to_rgb(ref_out.image), codec) if not codec.lossless else None
        )
        row.candidate_causes = list(case.pair.differences)
        if ref_out.lora_not_applied and case.pair.preview.lora is not None:
            row.candidate_causes.append(Cause.LORA_NOT_APPLIED)
        if ref_out.notes:
            row.detail = "; ".join(ref_out.notes)
        if reference.match:
            row.verdict = Verdict.MATCH
            row.explained = True
            return row
        row.verdict = Verdict.MISMATCH
        if not self.options.attribute:
            return row
        if not row.candidate_causes:
            row.unexplained_residual = {"distance": reference.distance, "ssim": c.ssim}
            row.detail = _join(row.detail, "no setting differs; unexplained residual")
            return row
        folder = f"counterfactuals/{case.step}/{case.index}"
        try:
            result = attribute(
                reference=case.pair.reference,
                preview=case.pair.preview,
                candidates=row.candidate_causes,
                reference_render=reference,
                evaluate=lambda planned: [
                    cf for cf, _ in evaluate(planned, [f"{folder}/{p.name}.png" for p in planned])
                ],
                confirm_margin=self.options.confirm_margin,
            )
        except ModelError:
            raise
        except Exception as e:
            log.exception("attribution failed for step %s index %s", case.step, case.index)
            row.detail = _join(row.detail, f"attribution failed: {type(e).__name__}: {e}")
            return row
        _fill_attribution(row, result)
        return row

    def run(
        self,
        cases: list[Case],
        *,
        resume: bool = False,
        on_row: Callable[[ResultRow], None] | None = None,
    ) -> list[ResultRow]:
        """Evaluate ``cases`` (with ``resume``, those without a row in results.json yet),
        writing results.json after each one; ``on_row`` is called with each new row once
        it and its images are on disk."""
        done: dict[tuple[int, int], ResultRow] = {}
        if resume:
            for row in read_results(self.out_dir):
                done[(row.step, row.index)] = row
        rows = list(done.values())
        todo = [c for c in cases if (c.step, c.index) not in done]
        for case in progress(todo, self.options.progress, desc=f"parity {self.job.name}"):
            row = self.evaluate(case)
            rows.append(row)
            write_results(self.out_dir, rows, durable=False)
            if on_row is not None:
                on_row(row)
        write_results(self.out_dir, rows)
        return sorted(rows, key=lambda r: r.key)


def _fill_attribution(row: ResultRow, result: Attribution) -> None:
    row.counterfactual_renders = result.renders
    row.causes = sorted(result.confirmed)
    row.explained = result.explained
    row.counterfactuals = list(result.counterfactuals)
    everything = result.all_switched
    if everything is None:
        return
    row.best_counterfactual = everything.image
    if not result.explained:
        row.unexplained_residual = {"distance": everything.distance, "ssim": everything.ssim}
        row.detail = _join(
            row.detail,
            f"unexplained residual: with every candidate cause switched, SSIM is "
            f"{everything.ssim:.4f}",
        )


def _join(a: str, b: str) -> str:
    return f"{a}; {b}" if a else b


def _to_rgb(image: Any) -> Any:
    import numpy as np

    return np.asarray(image.convert("RGB"))


def progress_enabled(enabled: bool | None = None) -> bool:
    """Whether to draw progress bars: ``enabled``, or when None, on a terminal outside CI."""
    if enabled is None:
        return sys.stderr.isatty() and not os.environ.get("CI")
    return enabled


def progress(items: list[Any], enabled: bool | None, *, desc: str) -> Iterable[Any]:
    """``items`` behind a progress bar when ``enabled`` (None: on a terminal outside CI)."""
    if not progress_enabled(enabled):
        return items
    from tqdm import tqdm

    return tqdm(items, desc=desc, unit="preview")


# -------------------------------------------------------------------- correction


def write_corrected_requests(
    job: Job,
    cases: list[Case],
    rows: list[ResultRow],
    out_dir: Path,
    checkpoint_shift: float | None,
) -> dict[int, CorrectedRequests]:
    """Write ``corrected_requests/<step>.json`` from the planned cases and their rows, and
    note on each row why no request reproduces its preview, where none does."""
    row_of = {(r.step, r.index): r for r in rows}
    by_step: dict[int, dict[int, RenderSettings]] = {}
    for case in cases:
        if case.pair is not None:
            by_step.setdefault(case.step, {})[case.index] = case.pair.preview
    reference_dtype = next((c.pair.reference.dtype for c in cases if c.pair is not None), None)
    out = {}
    for step, previews in sorted(by_step.items()):
        step_rows = {i: row_of.get((step, i)) for i in previews}
        corrected = corrected_requests(
            job,
            step,
            previews,
            attributions={i: r.attribution for i, r in step_rows.items() if r is not None},
            lora_not_applied=any(
                r is not None and Cause.LORA_NOT_APPLIED in r.candidate_causes
                for r in step_rows.values()
            ),
            checkpoint_shift=checkpoint_shift,
            server_dtype=reference_dtype,
        )
        out[step] = corrected
        atomic_write_text(
            out_dir / "corrected_requests" / f"{step}.json",
            json.dumps(corrected.to_json_dict(), indent=2),
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
    on_row: Callable[[ResultRow], None] | None = None,
    report: bool = True,
    relative_to: str | Path | None = None,
) -> RunSummary:
    """Run parity on ``job`` with ``engine``; write everything into ``out_dir``.

    ``recorded_options`` (the command line's options) are kept in run.json, so that
    ``parity run --resume DIR`` continues with the same ones. ``on_row`` is called with
    every new result row once it and its images are written (results.json included).

    A worker of :mod:`parity.fleet` renders into a private folder for a run folder that
    its driver writes: ``relative_to`` is that final folder (rows name previews relative
    to it) and ``report=False`` leaves report.html, whose links must resolve from the
    final folder, to the driver.
    """
    from parity.stack import stack_record

    steps = select_steps(job, options.steps)
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
            "attribution": options.attribute,
        }
    )
    atomic_write_text(run_info_path, json.dumps(run_info, indent=2))
    shift = engine.checkpoint_scheduler_shift
    cases = plan_cases(
        job,
        steps,
        device=device,
        checkpoint_shift=shift,
        reference_dtype=options.reference_dtype,
        allow_outside_paths=options.allow_outside_paths,
    )
    rows = runner.run(cases, resume=resume, on_row=on_row)
    corrected = write_corrected_requests(job, cases, rows, out_dir, shift)
    run_info["finished"] = utc_now()
    run_info["counts"] = RunSummary(out_dir, rows).counts
    atomic_write_text(run_info_path, json.dumps(run_info, indent=2))
    if report:
        write_run_report(
            out_dir,
            rows,
            job_name=job.name,
            run_info=run_info,
            corrected_requests={s: c.to_json_dict() for s, c in corrected.items()},
        )
    return RunSummary(out_dir, rows, corrected)


def write_run_report(
    out_dir: Path,
    rows: list[ResultRow],
    *,
    job_name: str,
    run_info: dict[str, Any],
    corrected_requests: dict[int, Any],
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
        )
    except Exception as e:
        log.error("report.html could not be written: %s", e)


def _source_record(engine: RenderEngine) -> dict[str, Any]:
    return {"transformer": engine.source.transformer, "components": engine.source.components}
