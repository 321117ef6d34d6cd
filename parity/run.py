"""A parity run: every preview of a job rendered the server's way, compared, attributed.

Data flow per preview: planned case (:mod:`parity.plan`) → reference render → comparison
with the stored preview (kept in the run folder, ``previews/<step>/``) and, where given,
with the image the server returned → (mismatch) counterfactual renders
(:mod:`parity.attribute`) → result row. Rows are written after every preview (atomically), so a killed run leaves a
readable ``results.json`` of what was finished and ``resume=True`` continues from it.
After the last preview, the corrected requests (:mod:`parity.correct`), run.json and the
report are written.
"""

from __future__ import annotations

import dataclasses
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
from parity.attribute import ROUNDING, Attribution, Counterfactual, Planned, attribute
from parity.correct import CorrectedRequests, corrected_requests
from parity.diffusers_era import DiffusersEra, diffusers_era
from parity.errors import JobError, LoraError, ModelError, ParityError
from parity.job import Job
from parity.plan import (
    Case,
    Match,
    RequestPlan,
    Steps,
    UserRequest,
    default_lora_root,
    outside_path_error,
    plan_cases,
    plan_requests,
    select_steps,
    unreadable_image,
)
from parity.results import (
    ResultRow,
    Verdict,
    atomic_write_text,
    link_or_copy,
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
    server_era:
        The diffusers release the server runs (None: the installed one).
    match:
        How user requests' prompts meet previews (:func:`parity.plan.plan_requests`).
    lora_root:
        The server's workflows folder, where corrected requests' LoRA paths are
        relative to (None: the job's training folder, its parent).
    """

    steps: Steps = "all"
    attribute: bool = True
    thresholds: Thresholds | None = None
    confirm_margin: float = DEFAULT_CONFIRM_MARGIN
    reference_dtype: Dtype | None = None
    latent_metric: bool = True
    progress: bool | None = None
    allow_outside_paths: bool = False
    server_era: DiffusersEra | None = None
    match: Match = "index"
    lora_root: Path | None = None


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
    def served_drift(self) -> int:
        """Rows whose served image is not parity's reference render."""
        return sum(1 for r in self.rows if r.served and r.served.get("verdict") == "drift")

    @property
    def exit_code(self) -> int:
        matched = self.rows and all(r.verdict is Verdict.MATCH for r in self.rows)
        return 0 if matched and not self.served_drift else 1


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
            row.preview = self.keep_preview(case)
            row.preview_source = str(case.preview.path)
        if case.sample is not None:
            row.prompt = case.sample.prompt
        if case.request is not None:
            row.request = case.request.to_json()
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
        if case.pair.server_prompt.random_seed:
            row.detail = _join(
                row.detail,
                f"the request's seed {case.pair.server_prompt.seed} asks the server for a random "
                "seed: its image cannot be reproduced; parity rendered that seed as written",
            )
        if case.served is not None:
            self._check_served(row, case, ref_out.image)
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
        checkpoint = self.job.checkpoint_for_step(case.step)
        everything = result.all_switched
        if (
            not result.explained
            and everything is not None
            and everything.settings.lora is not None
            and checkpoint is not None
            and checkpoint.rounded
        ):
            try:
                self._weigh_rounding(row, everything, checkpoint.dtype or "", codec, evaluate)
            except ModelError:
                raise
            except Exception as e:
                log.exception("rounding renders failed for step %s index %s", case.step, case.index)
                row.detail = _join(row.detail, f"rounding renders failed: {e}")
        return row

    def _weigh_rounding(
        self,
        row: ResultRow,
        everything: Counterfactual,
        checkpoint_dtype: str,
        codec: Any,
        evaluate: Any,
    ) -> None:
        """How much of an unexplained residual the checkpoint's rounding can account for.

        A checkpoint saved in bf16 holds the rounding of the float32 weights that rendered
        the preview. The all-switched render is repeated with the LoRA moved within that
        rounding (:data:`ROUNDING_DRAWS` seeds); the spread of those renders around it is
        what the rounding alone does. The residual counts as the rounding's when it is
        within :data:`ROUNDING_SLACK` times the largest spread (a few draws estimate the
        spread's size, not its maximum; the float32 weights are one more draw).
        """
        from parity import compare

        lora = everything.settings.lora
        assert lora is not None
        planned = [
            Planned(
                f"{ROUNDING}{seed}",
                everything.switched,
                everything.settings.replace(lora=dataclasses.replace(lora, rounding_seed=seed)),
            )
            for seed in range(1, ROUNDING_DRAWS + 1)
        ]
        folder = str(Path(everything.image or "").parent)
        results = evaluate(planned, [f"{folder}/{p.name}.png" for p in planned])
        center = compare.encode_like(compare.load_rgb(self.out_dir / everything.image), codec)
        spread = max(
            1.0 - compare.ssim(center, compare.encode_like(_to_rgb(out.image), codec))
            for _, (_, out) in results
        )
        residual = everything.distance
        accounts = residual <= ROUNDING_SLACK * spread
        row.counterfactuals.extend(cf for cf, _ in results)
        row.counterfactual_renders += len(results)
        row.rounding = {
            "checkpoint_dtype": checkpoint_dtype,
            "draws": len(results),
            "spread": spread,
            "residual": residual,
            "accounts": accounts,
        }
        share = 1.0 if residual <= 0 else min(1.0, spread / residual)
        what = (
            f"checkpoint saved in {checkpoint_dtype}; previews used the fp32 training weights: "
            f"moving the LoRA within its rounding moves the render by up to {spread:.4f} "
            f"(1 - SSIM), the preview is {residual:.4f} away"
        )
        if accounts:
            row.explained = True
            row.unexplained_residual = None
            if Cause.PRECISION not in row.causes:
                row.causes = sorted([*row.causes, Cause.PRECISION])
            row.detail = _join(_drop_residual(row.detail), f"{what}: the rounding accounts for it")
        else:
            row.detail = _join(row.detail, f"{what}: the rounding accounts for {share:.0%} of it")

    def keep_preview(self, case: Case) -> str:
        """Link or copy the case's preview into ``previews/<step>/`` of the run folder, so
        that the folder stays valid when moved; the path to use, relative to it.

        A preview refused as outside the job folder, or unreadable, is not copied (its
        original path is kept, for the error row).
        """
        assert case.preview is not None
        source = case.preview.path
        outside = outside_path_error(source, self.job.root, "preview")
        if (outside and not self.options.allow_outside_paths) or unreadable_image(source):
            return self.rel(source)
        target = self.out_dir / "previews" / str(case.step) / source.name
        try:
            link_or_copy(source, target)
        except OSError as e:
            log.warning("%s: not copied into the run folder (%s)", source, e)
            return self.rel(source)
        return target.relative_to(self.out_dir).as_posix()

    def _check_served(self, row: ResultRow, case: Case, render: Any) -> None:
        """Compare the server's own image of the case's prompt with the reference render."""
        from parity.compare import check_served

        assert case.served is not None and case.request is not None and case.pair is not None
        kept = self.out_dir / "served" / str(case.request.request) / case.served.name
        try:
            check = check_served(case.served, _to_rgb(render), dtype=case.pair.reference.dtype)
            link_or_copy(case.served, kept, link=False)
        except (ParityError, OSError) as e:
            row.detail = _join(row.detail, f"served image not compared: {e}")
            return
        row.served = {
            "verdict": "same" if check.same else "drift",
            "ssim": check.ssim,
            "psnr": check.psnr,
            "max_abs_diff": check.max_abs_diff,
            "path": kept.relative_to(self.out_dir).as_posix(),
        }
        if not check.same:
            row.served_note = drift_note(
                check, case.pair.reference, device=self.engine.device, era=self.options.server_era
            )

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


def drift_note(
    check: Any, reference: RenderSettings, *, device: str, era: DiffusersEra | None
) -> str:
    """What a served image that is not parity's reference render means, and which of
    dtype, library era or hardware could explain it."""
    if check.max_abs_diff is None:
        how = (
            f"it is {check.served_size[0]}x{check.served_size[1]}, parity's render "
            f"{check.render_size[0]}x{check.render_size[1]}"
        )
    else:
        how = (
            f"max difference {check.max_abs_diff}/255 where float noise and the codec allow "
            f"{check.limit}, SSIM {check.ssim:.4f}"
        )
    era_text = (era or diffusers_era(None)).label
    return (
        f"the deployed server is not the reference parity renders: its image differs from "
        f"parity's render of the same request ({how}), so the causes above explain parity's "
        f"reference, not this server. Could explain it: dtype (parity rendered in "
        f"{reference.dtype} on {device}; the server renders bf16 on CUDA, fp16 where bf16 "
        f"is unsupported, fp32 on CPU: try --dtype), library era (parity modelled diffusers "
        f"{era_text}; runcomfy's requirements pin 072d15ee, N-1 updates for N steps: try "
        f"--server-diffusers), hardware (another GPU or CPU moves pixels by more than float "
        f"noise: try --device with the server's)"
    )


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


def _drop_residual(detail: str) -> str:
    """``detail`` without the "unexplained residual" part (once something explains it)."""
    return "; ".join(p for p in detail.split("; ") if not p.startswith("unexplained residual"))


#: Renders with the LoRA moved within its rounding, per unexplained bf16-checkpoint preview.
ROUNDING_DRAWS = 3
#: A residual up to this many times the rounding renders' largest spread is the rounding's.
ROUNDING_SLACK = 2.0


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
