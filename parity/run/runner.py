"""A parity run: every preview of a job rendered the server's way, compared, attributed.

Data flow per preview: planned case (:mod:`parity.plan`) → reference render → comparison
with the stored preview (kept in the run folder, ``previews/<step>/``) and, where given,
with the image the server returned → (mismatch) counterfactual renders
(:mod:`parity.attribute`) → result row. Rows are written after every preview (atomically), so a killed run leaves a
readable ``results.json`` of what was finished and ``resume=True`` continues from it.

Each case's verdicts allow for its own float noise: one extra render through the
alternate kernel path measures the case's noise floor (:meth:`Runner.needs_floor` says
when), and every render computed in the floor's dtype is judged with it
(:meth:`parity.compare.Thresholds.is_match`).
The job's run as a whole is :func:`parity.run.job_run.run_job`.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import sys
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from parity.attribute import (
    ALL,
    ROUNDING,
    Attribution,
    Counterfactual,
    Planned,
    UnconfirmedCause,
    attribute,
    describe_difference,
)
from parity.errors import ModelError, ParityError
from parity.families import family
from parity.job import Job, outside_path_error
from parity.plan import (
    Case,
    unreadable_image,
)
from parity.results import (
    ResultRow,
    RoundingResult,
    ServedResult,
    Verdict,
    VideoScores,
    link_or_copy,
    read_results,
    render_path,
    save_render,
    write_results,
)
from parity.settings import Cause, Dtype, RenderSettings

if TYPE_CHECKING:
    from parity.compare import Clip, Codec, Comparison, NoiseFloor
    from parity.render.engine import RenderEngine, RenderOutput

from parity.run.options import RunOptions

log = logging.getLogger(__name__)


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
        #: Renders made to measure noise floors, and their seconds (the floor's cost).
        self.floor_renders = 0
        self.floor_seconds = 0.0

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
        that cannot be used at all raises (the whole run stops).

        1. the row of what is known before rendering (a planning error ends it here);
        2. the stored preview read, with its codec;
        3. the reference render, scored (and the case's noise floor, where it needs one);
        4. its scores, candidate causes and the served image on the row; a match ends here;
        5. for a mismatch, the counterfactual proof of its causes;
        6. for a bf16-saved checkpoint left unexplained, the weighing of its rounding.

        Each step makes a new row from the last one (rows are frozen records).
        """
        row = self._planned_row(case)
        if case.error:
            return row
        scorer, row = self._scorer(case, row)
        if scorer is None:
            return row
        try:
            [(reference, (c, ref_out))] = scorer.score(
                [Planned("reference", (), case.pair.reference)],
                [f"renders/{case.step}/{case.index}"],
            )
        except ModelError:
            raise
        except ParityError as e:
            return row.noted(str(e))
        except Exception as e:  # one failing render never stops the run
            log.exception("render failed for step %s index %s", case.step, case.index)
            return row.noted(f"render failed: {type(e).__name__}: {e}")
        row = self._record_reference(row, case, reference, c, ref_out, scorer)
        if reference.match:
            return dataclasses.replace(row, verdict=Verdict.MATCH, explained=True)
        row = dataclasses.replace(row, verdict=Verdict.MISMATCH)
        if not self.options.attribute:
            return row
        if not row.candidate_causes:
            return dataclasses.replace(
                row.noted("no setting differs; unexplained residual"),
                unexplained_residual={"distance": reference.distance, "ssim": c.ssim},
            )
        row, result = self._attribute(row, case, reference, scorer)
        if result is not None:
            row = self._weigh_rounding_if_saved_rounded(row, case, result, scorer)
        return row

    def _planned_row(self, case: Case) -> ResultRow:
        """The row with what the plan knows: the preview kept in the run folder, the
        prompt, the user's request prompt, and a planning error as its note."""
        return ResultRow(
            job=self.job.name,
            step=case.step,
            index=case.index,
            preview=self.keep_preview(case) if case.preview is not None else None,
            preview_source=str(case.preview.path) if case.preview is not None else None,
            prompt=case.sample.prompt if case.sample is not None else "",
            request=case.request.to_json() if case.request is not None else None,
            notes=(case.error,) if case.error else (),
        )

    def _scorer(self, case: Case, row: ResultRow) -> tuple[_CaseScorer | None, ResultRow]:
        """The case's stored preview read for scoring, and the row with its size (None,
        and the row with a note, when it cannot be read)."""
        from parity import compare

        assert case.pair is not None and case.preview is not None
        try:
            preview = compare.load_clip(case.preview.path)
            codec = compare.inspect_codec(case.preview.path)
        except ParityError as e:
            return None, row.noted(str(e))
        height, width = preview.frames[0].shape[:2]
        row = dataclasses.replace(row, height_preview=height, width_preview=width)
        if codec.format == "JPEG" and case.preview.ext not in ("jpg", "jpeg"):
            log.warning("%s: JPEG data under a .%s name", case.preview.path, case.preview.ext)
        encode = self._encoder(case.pair.reference.dtype)
        return _CaseScorer(self, case, preview, codec, encode), row

    def _record_reference(
        self,
        row: ResultRow,
        case: Case,
        reference: Counterfactual,
        c: Comparison,
        ref_out: RenderOutput,
        scorer: _CaseScorer,
    ) -> ResultRow:
        """The row with the reference render's scores, the candidate causes, what the
        engine noted, the case's noise floor and the served image."""
        from parity import compare

        assert case.pair is not None
        codec = scorer.codec
        candidates = list(case.pair.differences)
        if ref_out.lora_not_applied and case.pair.preview.lora is not None:
            candidates.append(Cause.LORA_NOT_APPLIED)
        notes = [*row.notes, *ref_out.notes]
        if case.pair.server_prompt.random_seed:
            notes.append(
                f"the request's seed {case.pair.server_prompt.seed} asks the server for a random "
                "seed: its image cannot be reproduced; parity rendered that seed as written"
            )
        row = dataclasses.replace(
            row,
            render=reference.image,
            width_render=c.width_render,
            height_render=c.height_render,
            ssim=c.ssim,
            psnr=c.psnr,
            ms_ssim=c.ms_ssim,
            latent_distance=c.latent_distance,
            lpips=c.lpips,
            resized_for_comparison=c.resized,
            jpeg_floor=(
                compare.jpeg_floor(ref_out.rgb, codec)
                if not codec.lossless and not c.video
                else None
            ),
            video=VideoScores.of(c),
            candidate_causes=tuple(candidates),
            notes=tuple(notes),
            noise_floor=scorer.floor,
        )
        if case.served is not None:
            row = self._check_served(row, case, ref_out.rgb, scorer.alternate)
        return row

    def _attribute(
        self, row: ResultRow, case: Case, reference: Counterfactual, scorer: _CaseScorer
    ) -> tuple[ResultRow, Attribution | None]:
        """The row with the counterfactual proof of a mismatch's causes, and that proof
        (None, and the row with a note, when it fails)."""
        assert case.pair is not None
        folder = f"counterfactuals/{case.step}/{case.index}"
        try:
            result = attribute(
                reference=case.pair.reference,
                preview=case.pair.preview,
                candidates=row.candidate_causes,
                reference_render=reference,
                evaluate=lambda planned: [
                    cf for cf, _ in scorer.score(planned, [f"{folder}/{p.name}" for p in planned])
                ],
                confirm_margin=self.options.confirm_margin,
            )
        except ModelError:
            raise
        except Exception as e:
            log.exception("attribution failed for step %s index %s", case.step, case.index)
            return row.noted(f"attribution failed: {type(e).__name__}: {e}"), None
        row = dataclasses.replace(
            _fill_attribution(row, result),
            noise_floor=scorer.floor,
            below_noise_floor=tuple(
                unconfirmed_causes(
                    result, scorer.images, case.pair.reference, case.pair.preview, scorer.floor
                )
            ),
        )
        return row, result

    def _weigh_rounding_if_saved_rounded(
        self, row: ResultRow, case: Case, result: Attribution, scorer: _CaseScorer
    ) -> ResultRow:
        """For an unexplained mismatch whose checkpoint was saved rounded (bf16): the row
        with how much of the residual its rounding accounts for (:meth:`_weigh_rounding`)."""
        checkpoint = self.job.checkpoint_for_step(case.step)
        everything = result.all_switched
        if (
            result.explained
            or everything is None
            or everything.settings.lora is None
            or checkpoint is None
            or not checkpoint.rounded
        ):
            return row
        try:
            return self._weigh_rounding(row, everything, checkpoint.dtype or "", scorer)
        except ModelError:
            raise
        except Exception as e:
            log.exception("rounding renders failed for step %s index %s", case.step, case.index)
            return row.noted(f"rounding renders failed: {e}")

    def needs_floor(self, planned: Planned, comparison: Comparison, case: Case) -> bool:
        """Whether this render is the one to measure the case's noise floor on.

        At most one per case: the reference render when it is computed in bf16/fp16
        (always), or when it is float32, the preview side is float32 too and it fails the
        thresholds by so little that a floor could change its verdict
        (:meth:`~parity.compare.Thresholds.is_near`); the all-switched counterfactual when
        only the preview side is bf16/fp16 (the renders that reproduce the preview are
        then the noisy ones, and the float32 reference's floor says nothing about them).
        A float32 match needs none: the floor only widens the rule.
        """
        from parity.compare import is_half

        assert case.pair is not None
        half_reference = is_half(case.pair.reference.dtype)
        half_preview = is_half(case.pair.preview.dtype)
        if planned.name == "reference":
            if half_reference:
                return True
            return not half_preview and self.thresholds.is_near(comparison)
        return planned.name == ALL and not half_reference and is_half(planned.settings.dtype)

    def measure_case_floor(
        self, planned: Planned, output: RenderOutput, codec: Codec
    ) -> tuple[NoiseFloor, Any]:
        """Render ``planned`` once more through the alternate kernel path and score it
        against ``output`` (its default render) as the case's noise floor; the floor and
        the alternate render (RGB)."""
        from parity.compare import frame_ms, measure_floor
        from parity.render.engine import alternate_method

        alternate = self.engine.render(planned.settings, alternate=True)
        self.floor_renders += 1
        self.floor_seconds += alternate.seconds
        rgb = alternate.rgb
        floor = measure_floor(
            output.rgb,
            rgb,
            codec=codec,
            method=alternate_method(self.engine.device),
            dtype=planned.settings.dtype,
            render=planned.name,
            frame_duration=frame_ms(planned.settings.fps),
        )
        return floor, rgb

    def _weigh_rounding(
        self,
        row: ResultRow,
        everything: Counterfactual,
        checkpoint_dtype: str,
        scorer: _CaseScorer,
    ) -> ResultRow:
        """The row with how much of an unexplained residual the checkpoint's rounding can
        account for.

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
        results = scorer.score(planned, [f"{folder}/{p.name}" for p in planned])
        codec = scorer.codec
        # The spread of a video is its worst frame's.
        center = compare.load_clip(self.out_dir / (everything.image or ""))
        spread = max(
            1.0 - c.ssim
            for c in compare.compare_clips(
                center,
                [list(out.frames_rgb) for _, (_, out) in results],
                codec=codec,
                frame_ms_renders=[center.frame_ms] * len(results),
            )
        )
        residual = everything.distance
        accounts = residual <= ROUNDING_SLACK * spread
        row = dataclasses.replace(
            row,
            counterfactuals=(*row.counterfactuals, *(cf for cf, _ in results)),
            counterfactual_renders=row.counterfactual_renders + len(results),
            rounding=RoundingResult(checkpoint_dtype, len(results), spread, residual, accounts),
        )
        share = 1.0 if residual <= 0 else min(1.0, spread / residual)
        what = (
            f"checkpoint saved in {checkpoint_dtype}; previews used the fp32 training weights: "
            f"moving the LoRA within its rounding moves the render by up to {spread:.4f} "
            f"(1 - SSIM), the preview is {residual:.4f} away"
        )
        if not accounts:
            return row.noted(f"{what}: the rounding accounts for {share:.0%} of it")
        # The residual is the rounding's: its note goes, this one says why.
        notes = [n for n in row.notes if not n.startswith(RESIDUAL_NOTE)]
        return dataclasses.replace(
            row,
            explained=True,
            unexplained_residual=None,
            causes=tuple(sorted({*row.causes, Cause.PRECISION})),
            notes=(*notes, f"{what}: the rounding accounts for it"),
        )

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

    def _check_served(self, row: ResultRow, case: Case, render: Any, alternate: Any) -> ResultRow:
        """The row with the server's own image of the case's prompt compared with the
        reference render (``alternate``: its alternate-kernel twin when the case's floor
        was measured on it, else None)."""
        from parity.compare import check_served
        from parity.render.engine import alternate_method

        assert case.served is not None and case.request is not None and case.pair is not None
        kept = self.out_dir / "served" / str(case.request.request) / case.served.name
        floor = row.noise_floor
        if floor is None or floor.render != "reference":
            alternate = None
        try:
            check = check_served(
                case.served,
                render,
                dtype=case.pair.reference.dtype,
                alternate_rgb=alternate,
                method=alternate_method(self.engine.device),
            )
            link_or_copy(case.served, kept, link=False)
        except (ParityError, OSError) as e:
            return row.noted(f"served image not compared: {e}")
        served = ServedResult(
            verdict="same" if check.same else "drift",
            ssim=check.ssim,
            psnr=check.psnr,
            max_abs_diff=check.max_abs_diff,
            path=kept.relative_to(self.out_dir).as_posix(),
        )
        if check.same:
            return dataclasses.replace(row, served=served)
        return dataclasses.replace(
            row,
            served=served,
            served_note=drift_note(
                check,
                case.pair.reference,
                device=self.engine.device,
                server_diffusers=self.options.server_diffusers,
            ),
        )

    def run(
        self,
        cases: list[Case],
        *,
        resume: bool = False,
        on_row: Callable[[ResultRow], None] | None = None,
    ) -> list[ResultRow]:
        """Evaluate ``cases`` (with ``resume``, those without a row in results.json yet),
        writing results.json after each one (atomic, so that a killed run can resume);
        ``on_row`` is called with each new row once it and its images are on disk.

        The rows returned are not final until :meth:`write_finished` writes them (the
        job's later stages may make new rows of them first).
        """
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
        return sorted(rows, key=lambda r: r.key)

    def write_finished(self, rows: list[ResultRow]) -> None:
        """Write results.json and results.csv of the finished rows, once, durably."""
        write_results(self.out_dir, rows)


class _CaseScorer:
    """One case's stored preview, and the renders scored against it.

    :meth:`score` renders planned settings, saves them and scores them in one batch; it
    measures the case's noise floor on the first render that needs one
    (:meth:`Runner.needs_floor`), before any render is judged, and keeps every render's
    RGB for the attribution's effects (:attr:`images`).
    """

    def __init__(
        self, runner: Runner, case: Case, preview: Clip, codec: Codec, encode: Any
    ) -> None:
        from parity.compare.latent import encode_latents

        self.runner = runner
        self.case = case
        self.preview = preview
        self.codec = codec
        self.encode = encode
        # The preview is encoded once per case, not once per counterfactual.
        self.preview_latents = encode_latents(list(preview.frames), encode) if encode else None
        self.floor: NoiseFloor | None = None
        self.alternate: Any = None  # the render the floor was measured on, alternate path
        self.images: dict[str, Any] = {}

    def score(
        self, planned: Sequence[Planned], stems: Sequence[str]
    ) -> list[tuple[Counterfactual, tuple[Comparison, RenderOutput]]]:
        """Render each planned render and save it under its stem (relative to the run
        folder: a PNG, or a video's lossless animated WebP), then score them all against
        the preview in one batch, a video frame by frame."""
        from parity import compare

        runner = self.runner
        outputs = [runner.engine.render(p.settings) for p in planned]
        paths = [
            render_path(stem, video=p.settings.video)
            for p, stem in zip(planned, stems, strict=True)
        ]
        for out, path in zip(outputs, paths, strict=True):
            save_render(out.frames, runner.out_dir / path, fps=out.settings.fps)
        scores = compare.compare_clips(
            self.preview,
            [list(out.frames_rgb) for out in outputs],
            codec=self.codec,
            frame_ms_renders=[compare.frame_ms(out.settings.fps) for out in outputs],
            encode=self.encode,
            preview_latents=self.preview_latents,
            device=runner.engine.device,
        )
        for p, out, c in zip(planned, outputs, scores, strict=True):
            self.images[p.name] = out.rgb
            if self.floor is None and runner.needs_floor(p, c, self.case):
                self.floor, self.alternate = runner.measure_case_floor(p, out, self.codec)
        return [
            (
                Counterfactual(
                    name=p.name,
                    switched=p.switched,
                    settings=p.settings,
                    ssim=c.ssim,
                    psnr=c.psnr,
                    latent_distance=c.latent_distance,
                    match=runner.thresholds.is_match(c, _floor_for(self.floor, p.settings)),
                    image=path,
                ),
                (c, out),
            )
            for p, path, c, out in zip(planned, paths, scores, outputs, strict=True)
        ]


def drift_note(
    check: Any, reference: RenderSettings, *, device: str, server_diffusers: str | None
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
    library = ""
    era = family(reference.family).server_era(server_diffusers)
    if era is not None:  # a family whose pipeline changed between releases
        era_text = era.label
        library = (
            f"library era (parity modelled diffusers {era_text}; runcomfy's requirements pin "
            "072d15ee, N-1 updates for N steps: try --server-diffusers), "
        )
    return (
        f"the deployed server is not the reference parity renders: its image differs from "
        f"parity's render of the same request ({how}), so the causes above explain parity's "
        f"reference, not this server. Could explain it: dtype (parity rendered in "
        f"{reference.dtype} on {device}; the server renders bf16 on CUDA, fp16 where bf16 "
        f"is unsupported, fp32 on CPU: try --dtype), {library}hardware (another GPU or CPU "
        f"moves pixels by more than float noise: try --device with the server's)"
    )


def _floor_for(floor: NoiseFloor | None, settings: RenderSettings) -> NoiseFloor | None:
    """The case's floor where it applies to a render: renders computed in its dtype (a
    float32 render's own noise is within the thresholds' allowance)."""
    return floor if floor is not None and floor.dtype == settings.dtype else None


def unconfirmed_causes(
    result: Attribution,
    images: dict[str, Any],
    reference: RenderSettings,
    preview: RenderSettings,
    floor: NoiseFloor | None,
) -> list[UnconfirmedCause]:
    """Every candidate its leave-one-out render did not confirm, with its effect.

    The effect is the candidate's leave-one-out render (for a single candidate the
    reference render) against the all-switched render, lossless, judged against the
    case's noise allowance: :data:`~parity.compare.FLOAT_NOISE_LEVELS`, or
    :data:`~parity.compare.NOISE_FLOOR_K` times the floor where that allows more.
    """
    from parity.compare import (
        FLOAT_NOISE_LEVELS,
        NOISE_FLOOR_K,
        Difference,
        Rule,
        within_noise,
    )

    everything = images.get(ALL)
    out = []
    for record in result.counterfactuals[1:]:
        if not record.leaves_out_a_cause or record.confirmed:
            continue
        left_out = images.get(record.name if len(result.candidates) > 1 else "reference")
        if everything is None or left_out is None or left_out.shape != everything.shape:
            worst, mean = -1, -1.0  # a size change is never within noise
        else:
            diff = abs(left_out.astype("int16") - everything.astype("int16"))
            worst, mean = int(diff.max()), float(diff.mean())
        rule = Rule(max_abs_diff=FLOAT_NOISE_LEVELS, mean_abs_diff=FLOAT_NOISE_LEVELS)
        within = worst >= 0 and within_noise(
            Difference(max_abs_diff=worst, mean_abs_diff=mean), rule, floor
        )
        cause = Cause(record.name)
        what = describe_difference(cause, reference, preview)
        effect = f"max {worst}/255, mean {mean:.2f}" if worst >= 0 else "a change of size"
        if floor is not None:
            allowance = (
                f"this case's float noise (its noise floor: max {floor.max_abs_diff}/255, mean "
                f"{floor.mean_abs_diff:.2f}; {NOISE_FLOOR_K:g} times it counts as noise)"
            )
        else:
            allowance = f"float noise (max {FLOAT_NOISE_LEVELS}/255)"
        if within:
            verdict = f"is within {allowance}, so it is not confirmed"
        else:
            verdict = (
                f"is beyond {allowance}, but leaving it out does not move the render away "
                "from the preview beyond the rule, so it is not confirmed"
            )
        note = f"{cause}: {what}; its effect here ({effect}) {verdict}"
        out.append(UnconfirmedCause(cause, worst, mean, within, note))
    return out


def _fill_attribution(row: ResultRow, result: Attribution) -> ResultRow:
    """The row with the attribution's causes, counterfactuals and residual."""
    row = dataclasses.replace(
        row,
        counterfactual_renders=result.renders,
        # Never drop a difference: every candidate stays a cause; the unconfirmed ones are
        # also listed in below_noise_floor with their effect.
        causes=tuple(sorted(result.candidates)),
        explained=result.explained,
        counterfactuals=tuple(result.counterfactuals),
    )
    everything = result.all_switched
    if everything is None:
        return row
    row = dataclasses.replace(row, best_counterfactual=everything.image)
    if result.explained:
        return row
    return dataclasses.replace(
        row.noted(
            f"{RESIDUAL_NOTE}: with every candidate cause switched, SSIM is {everything.ssim:.4f}"
        ),
        unexplained_residual={"distance": everything.distance, "ssim": everything.ssim},
    )


#: How the note of a mismatch no candidate explains begins.
RESIDUAL_NOTE = "unexplained residual"


#: Renders with the LoRA moved within its rounding, per unexplained bf16-checkpoint preview.
ROUNDING_DRAWS = 3
#: A residual up to this many times the rounding renders' largest spread is the rounding's.
ROUNDING_SLACK = 2.0


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
