"""A parity run: every preview of a job rendered the server's way, compared, attributed.

Data flow per preview: job → sample → both sides' settings → reference render →
comparison with the stored preview → (mismatch) counterfactual renders → result row.
Rows are written after every preview (atomically), so a killed run leaves a readable
``results.json`` of what was finished and ``resume=True`` continues from it.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from parity import __version__
from parity.attribute import Attribution, Evidence, attribute
from parity.correct import CorrectedRequests, corrected_requests
from parity.errors import LoraError, ModelError, ParityError, RenderError
from parity.job import IMAGE_EXTS, Job, Preview, SampleSpec
from parity.results import (
    ResultRow,
    atomic_write_text,
    read_results,
    save_png,
    write_results,
)
from parity.settings import DEFAULT_CONFIRM_MARGIN, Dtype, RenderSettings
from parity.sides import SidePair, as_configured_request, pair_for

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
    confirm_margin:
        A cause is confirmed when reverting it alone raises ``1 - SSIM`` by more than
        this (and breaks the match).
    reference_dtype:
        Override of the server's dtype rule (bf16 on CUDA, fp32 on CPU).
    latent_metric:
        Compute the VAE latent distance (needs the pipeline's VAE; cheap).
    """

    steps: str | tuple[int, ...] = "all"
    attribute: bool = True
    thresholds: Any = None  # parity.compare.Thresholds; None: defaults
    confirm_margin: float = DEFAULT_CONFIRM_MARGIN
    reference_dtype: Dtype | None = None
    latent_metric: bool = True
    progress: bool | None = None  # None: only on a terminal outside CI
    allow_outside_paths: bool = False  # previews/checkpoints resolving outside the job folder


@dataclass
class Case:
    """One preview, with everything known before rendering."""

    step: int
    index: int
    preview: Preview | None
    sample: SampleSpec | None
    pair: SidePair | None = None
    error: str | None = None


@dataclass
class RunSummary:
    out_dir: Path
    rows: list[ResultRow]
    corrected: dict[int, CorrectedRequests] = field(default_factory=dict)

    @property
    def counts(self) -> dict[str, int]:
        out = {"match": 0, "mismatch": 0, "error": 0}
        for row in self.rows:
            out[row.verdict] = out.get(row.verdict, 0) + 1
        return out

    @property
    def exit_code(self) -> int:
        return 0 if all(r.verdict == "match" for r in self.rows) and self.rows else 1


def utc_now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def default_out_dir(job: Job, root: str | Path = "reports") -> Path:
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
    return Path(root) / job.name / stamp


def select_steps(job: Job, steps: str | tuple[int, ...]) -> list[int]:
    available = job.steps
    if steps == "all":
        return available
    if steps == "last":
        return available[-1:]
    wanted = list(steps)
    missing = [s for s in wanted if s not in available]
    if missing:
        raise ParityError(
            f"{job.root}: no previews for step(s) {missing}; steps with previews: {available}"
        )
    return wanted


def parse_steps(text: str) -> str | tuple[int, ...]:
    """``"all"``, ``"last"`` or a comma-separated list of steps."""
    text = text.strip()
    if text in ("all", "last"):
        return text
    try:
        return tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise ValueError(f"--steps takes 'all', 'last' or steps like 10,20; got {text!r}") from None


# ------------------------------------------------------------------------ planning


def plan_cases(
    job: Job,
    steps: Iterable[int],
    *,
    device: str,
    checkpoint_shift: float | None,
    reference_dtype: Dtype | None,
    allow_outside_paths: bool = False,
) -> list[Case]:
    """One Case per (step, index) that has a preview, with per-preview problems set.

    A preview or checkpoint that resolves outside the job folder (a symlink out of it)
    is refused unless ``allow_outside_paths``.
    """
    by_key: dict[tuple[int, int], list[Preview]] = {}
    for p in job.previews:
        by_key.setdefault((p.step, p.index), []).append(p)
    usable = [s.index for s in job.samples if not s.error]
    cases: list[Case] = []
    for step in steps:
        checkpoint = job.checkpoint_for_step(step)
        outside_checkpoint = None
        if checkpoint is not None and not allow_outside_paths:
            outside_checkpoint = outside_path_error(checkpoint.path, job.root, "LoRA checkpoint")
        request = as_configured_request(job, checkpoint)
        for (p_step, index), previews in sorted(by_key.items()):
            if p_step != step:
                continue
            preview = previews[0]
            case = Case(step, index, preview, None)
            cases.append(case)
            if len(previews) > 1:
                names = ", ".join(p.path.name for p in previews)
                case.error = f"duplicate previews for step {step} index {index}: {names}"
                continue
            if not allow_outside_paths and (
                outside := outside_path_error(preview.path, job.root, "preview")
            ):
                case.error = outside
                continue
            if preview.ext not in IMAGE_EXTS:
                case.error = f"{preview.path}: .{preview.ext} is not an image extension"
                continue
            unreadable = _unreadable_image(preview.path)
            if unreadable:
                case.error = f"{preview.path}: {unreadable}"
                continue
            if index >= len(job.samples):
                case.error = (
                    f"{preview.path}: index {index} is beyond the sample list "
                    f"({len(job.samples)} samples in {job.config_path.name})"
                )
                continue
            sample = job.samples[index]
            case.sample = sample
            if sample.error:
                case.error = f"{job.config_path}: {sample.error}"
                continue
            if checkpoint is None and step != 0:
                refused = [p for p in job.problems if f"_{step:09d}." in p]
                case.error = (
                    f"no LoRA checkpoint for step {step} in {job.root} (ai-toolkit keeps only the "
                    "last save.max_step_saves_to_keep checkpoints)"
                )
                if refused:
                    case.error = "; ".join([*refused, case.error])
                continue
            if outside_checkpoint:
                case.error = outside_checkpoint
                continue
            case.pair = pair_for(
                job,
                sample,
                checkpoint,
                request=request,
                request_index=usable.index(index),
                device=device,
                checkpoint_shift=checkpoint_shift,
                reference_dtype=reference_dtype,
            )
    return cases


def outside_path_error(
    path: Path, root: Path, what: str, place: str = "the job folder"
) -> str | None:
    """An error text when ``path`` resolves outside ``root`` (e.g. a symlink out of it)."""
    resolved = path.resolve()
    if resolved.is_relative_to(root.resolve()):
        return None
    return (
        f"{path}: {what} resolves outside {place} {root} (to {resolved}); refused, "
        "pass --allow-outside-paths to allow it"
    )


def _unreadable_image(path: Path) -> str | None:
    """Why ``path`` is not an image (header check only: cheap enough for inspect)."""
    from PIL import Image, UnidentifiedImageError

    try:
        if path.stat().st_size == 0:
            return "preview file is empty (0 bytes)"
        with Image.open(path) as image:
            image.verify()
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        return f"not a readable image ({e})"
    return None


# ----------------------------------------------------------------------- running


class Runner:
    """Renders, compares and attributes the cases of one job into one output folder."""

    def __init__(self, job: Job, engine: Any, out_dir: str | Path, options: RunOptions) -> None:
        from parity import compare

        self.job = job
        self.engine = engine
        self.out_dir = Path(out_dir)
        self.options = options
        self.thresholds = options.thresholds or compare.Thresholds()
        self._encode = None

    # ---- helpers

    def rel(self, path: str | Path) -> str:
        return os.path.relpath(Path(path).resolve(), self.out_dir.resolve())

    def _encoder(self, dtype: Dtype) -> Any:
        """The VAE encoder of the reference pipeline (loaded anyway for its renders)."""
        from parity.compare import make_vae_encoder

        if not self.options.latent_metric:
            return None
        if self._encode is None:
            self._encode = make_vae_encoder(self.engine.variant(dtype).pipe.vae)
        return self._encode

    # ---- one preview

    def evaluate(self, case: Case) -> ResultRow:
        """The result row of one case. Per-preview problems become ``error`` rows."""
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
        except compare.ImageReadError as e:
            row.detail = str(e)
            return row
        row.height_preview, row.width_preview = preview_rgb.shape[:2]
        if codec.format == "JPEG" and case.preview.ext not in ("jpg", "jpeg"):
            log.warning("%s: JPEG data under a .%s name", case.preview.path, case.preview.ext)
        encode = self._encoder(case.pair.reference.dtype)
        # The preview is encoded once per case, not once per counterfactual.
        preview_latent = compare.encode_latent(preview_rgb, encode) if encode else None

        def evaluate_settings(
            name: str, settings: RenderSettings, relpath: str
        ) -> tuple[Evidence, Any]:
            out = self.engine.render(settings)
            rgb = _to_rgb(out.image)
            comparison = compare.compare(
                preview_rgb, rgb, codec=codec, encode=encode, preview_latent=preview_latent
            )
            save_png(out.image, self.out_dir / relpath)
            ev = Evidence(
                name=name,
                settings=settings,
                comparison=comparison,
                distance=compare.distance(comparison),
                match=self.thresholds.is_match(comparison),
                image_path=relpath,
            )
            return ev, out

        try:
            ref_ev, ref_out = evaluate_settings(
                "reference", case.pair.reference, f"renders/{case.step}/{case.index}.png"
            )
        except ModelError:
            raise  # the model itself cannot be used: the whole run stops (exit 2)
        except (LoraError, RenderError, ParityError) as e:
            row.detail = str(e)
            return row
        except Exception as e:  # one failing render never stops the run
            log.exception("render failed for step %s index %s", case.step, case.index)
            row.detail = f"render failed: {type(e).__name__}: {e}"
            return row
        c = ref_ev.comparison
        row.render = ref_ev.image_path
        row.width_render, row.height_render = c.width_render, c.height_render
        row.ssim, row.psnr, row.ms_ssim = c.ssim, c.psnr, c.ms_ssim
        row.latent_distance, row.lpips = c.latent_distance, c.lpips
        row.resized_for_comparison = c.resized
        row.jpeg_floor = (
            compare.jpeg_floor(_to_rgb(ref_out.image), codec) if not codec.lossless else None
        )
        row.candidate_causes = list(case.pair.differences)
        if ref_out.lora_not_applied and case.pair.preview.lora is not None:
            row.candidate_causes.append("lora_not_applied")
        if ref_out.notes:
            row.detail = "; ".join(ref_out.notes)
        if ref_ev.match:
            row.verdict = "match"
            row.explained = True
            return row
        row.verdict = "mismatch"
        if not self.options.attribute:
            return row
        if not row.candidate_causes:
            row.unexplained_residual = {"distance": ref_ev.distance, "ssim": c.ssim}
            row.detail = _join(row.detail, "no setting differs; unexplained residual")
            return row

        def evaluate_cf(name: str, settings: RenderSettings) -> Evidence:
            ev, _ = evaluate_settings(
                name, settings, f"counterfactuals/{case.step}/{case.index}/{name}.png"
            )
            return ev

        try:
            result = attribute(
                reference=case.pair.reference,
                preview=case.pair.preview,
                candidates=tuple(row.candidate_causes),
                reference_evidence=ref_ev,
                evaluate=evaluate_cf,
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

    # ---- the whole job

    def run(self, cases: list[Case], *, resume: bool = False) -> list[ResultRow]:
        done: dict[tuple[int, int], ResultRow] = {}
        if resume:
            for row in read_results(self.out_dir):
                done[(row.step, row.index)] = row
        rows = list(done.values())
        todo = [c for c in cases if (c.step, c.index) not in done]
        for case in _progress(todo, self.options.progress, desc=f"parity {self.job.name}"):
            rows.append(self.evaluate(case))
            write_results(self.out_dir, rows, durable=False)
        write_results(self.out_dir, rows)
        return sorted(rows, key=lambda r: r.key)


def _fill_attribution(row: ResultRow, result: Attribution) -> None:
    row.counterfactual_renders = result.renders
    row.causes = sorted(result.confirmed)
    row.explained = result.explained
    evidence = ([result.all_switched] if result.all_switched else []) + result.left_out
    for ev in evidence:
        c = ev.comparison
        row.counterfactuals.append(
            {
                "cause": ev.name,
                "kind": "all causes switched" if ev.name == "all" else "all but this cause",
                "image": ev.image_path,
                "ssim": c.ssim,
                "psnr": c.psnr,
                "latent_distance": c.latent_distance,
                "match": ev.match,
                "confirmed": ev.name in result.confirmed,
                "settings": ev.settings.to_dict(),
            }
        )
    if result.all_switched is not None:
        row.best_counterfactual = result.all_switched.image_path
    if not result.explained and result.all_switched is not None:
        c = result.all_switched.comparison
        row.unexplained_residual = {"distance": result.all_switched.distance, "ssim": c.ssim}
        row.detail = _join(
            row.detail,
            f"unexplained residual: with every candidate cause switched, SSIM is {c.ssim:.4f}",
        )


def _join(a: str, b: str) -> str:
    return f"{a}; {b}" if a else b


def _to_rgb(image: Any) -> Any:
    import numpy as np

    return np.asarray(image.convert("RGB"))


def _progress(items: list[Any], enabled: bool | None, *, desc: str) -> Iterable[Any]:
    if enabled is None:
        enabled = sys.stderr.isatty() and not os.environ.get("CI")
    if not enabled:
        return items
    from tqdm import tqdm

    return tqdm(items, desc=desc, unit="preview")


# -------------------------------------------------------------------- entry point


def run_job(
    job: Job,
    engine: Any,
    out_dir: str | Path,
    options: RunOptions = RunOptions(),
    *,
    resume: bool = False,
    device: str = "cpu",
    recorded_options: dict[str, Any] | None = None,
) -> RunSummary:
    """Run parity on ``job`` with ``engine``; write everything into ``out_dir``.

    ``recorded_options`` (the command line's options) are kept in run.json, so that
    ``parity run --resume DIR`` continues with the same ones.
    """
    from parity.sides import server_dtype
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
    runner = Runner(job, engine, out_dir, options)
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
    cases = plan_cases(
        job,
        steps,
        device=device,
        checkpoint_shift=_checkpoint_shift(engine),
        reference_dtype=options.reference_dtype,
        allow_outside_paths=options.allow_outside_paths,
    )
    rows = runner.run(cases, resume=resume)
    corrected = write_corrected_requests(job, cases, rows, out_dir, _checkpoint_shift(engine))
    run_info["finished"] = utc_now()
    run_info["counts"] = RunSummary(out_dir, rows).counts
    atomic_write_text(run_info_path, json.dumps(run_info, indent=2))
    try:
        from parity.report import write_report

        write_report(
            out_dir,
            rows,
            job_name=job.name,
            run_info=run_info,
            corrected_requests={s: c.to_json_dict() for s, c in corrected.items()},
        )
    except Exception as e:  # the results are already safe on disk
        log.error("report.html could not be written: %s", e)
    return RunSummary(out_dir, rows, corrected)


def _source_record(engine: Any) -> dict[str, Any] | None:
    source = getattr(engine, "source", None)
    if source is None:
        return None
    return {"transformer": source.transformer, "components": source.components}


def _checkpoint_shift(engine: Any) -> float | None:
    return getattr(engine, "checkpoint_scheduler_shift", None)


def _closest_without_precision(row: ResultRow | None) -> str | None:
    """How close the server's full-precision render gets with every other cause corrected.

    Uses the "all but precision" counterfactual of ``row`` (with precision the only
    candidate, that is the reference render itself). None when it was not rendered.
    """
    if row is None:
        return None
    for cf in row.counterfactuals:
        if cf.get("cause") == "precision" and cf.get("ssim") is not None:
            psnr = f", PSNR {cf['psnr']:.1f} dB" if cf.get("psnr") is not None else ""
            return (
                f"closest the server gets: with every other setting corrected, its unquantized "
                f"render reaches SSIM {cf['ssim']:.4f}{psnr} against the preview"
            )
    return None


def write_corrected_requests(
    job: Job,
    cases: list[Case],
    rows: list[ResultRow],
    out_dir: Path,
    checkpoint_shift: float | None,
) -> dict[int, CorrectedRequests]:
    not_applied = {(r.step, r.index) for r in rows if "lora_not_applied" in r.candidate_causes}
    by_step: dict[int, dict[int, RenderSettings]] = {}
    for case in cases:
        if case.pair is not None:
            by_step.setdefault(case.step, {})[case.index] = case.pair.preview
    out = {}
    row_of = {(r.step, r.index): r for r in rows}
    for step, previews in sorted(by_step.items()):
        corrected = corrected_requests(
            job,
            step,
            previews,
            lora_not_applied=any((step, i) in not_applied for i in previews),
            checkpoint_shift=checkpoint_shift,
            server_dtype=next((c.pair.reference.dtype for c in cases if c.pair is not None), None),
        )
        for index, reasons in corrected.cannot.items():
            closest = _closest_without_precision(row_of.get((step, index)))
            if closest is not None and previews[index].quantization.active:
                reasons.append(closest)
        out[step] = corrected
        atomic_write_text(
            out_dir / "corrected_requests" / f"{step}.json",
            json.dumps(corrected.to_json_dict(), indent=2),
        )
    by_key = {(r.step, r.index): r for r in rows}
    for step, corrected in out.items():
        for index, reasons in corrected.cannot.items():
            row = by_key.get((step, index))
            if row is not None:
                row.corrected_request_note = "; ".join(reasons)
    if by_key:
        write_results(out_dir, list(by_key.values()))
    return out
