"""One preview in depth (``parity explain``): planned, rendered, judged with every
counterfactual and corrected, into a folder of its own (:func:`explain_preview`).

What it found is an :class:`Explanation`; :func:`parity.report.text.explain_lines`
words it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from parity.correct import CorrectedRequests
from parity.errors import ParityError
from parity.job import Job
from parity.plan import Case, RequestPlan, UserRequest, default_lora_root, plan_cases
from parity.results import ResultRow, exit_code
from parity.run.job_run import note_uncorrected, write_corrected_requests
from parity.run.options import RunOptions
from parity.run.runner import Runner

if TYPE_CHECKING:
    from parity.render.engine import RenderEngine


@dataclass(frozen=True)
class Explanation:
    """One preview explained.

    Attributes
    ----------
    case:
        Its planned case (both sides' settings).
    row:
        Its result row, every counterfactual included.
    out_dir:
        The folder its renders were written to (row paths are relative to it).
    server_diffusers:
        The diffusers release the server runs (``--server-diffusers``; None: installed).
    lora_root:
        Where the corrected request's LoRA path starts (the server's workflows folder).
    corrected:
        The corrected requests of its step (None: the preview has no settings to correct).
    lossless_ssim:
        SSIM of the lossless reference render against the preview as stored (None: no
        images, or of different sizes).
    """

    case: Case
    row: ResultRow
    out_dir: Path
    server_diffusers: str | None
    lora_root: Path
    corrected: CorrectedRequests | None = None
    lossless_ssim: float | None = None

    @property
    def exit_code(self) -> int:
        """0 for a match whose served image (if any) does not drift, else 1."""
        return exit_code([self.row])


def explain_preview(
    job: Job,
    engine: RenderEngine,
    out_dir: Path,
    options: RunOptions,
    *,
    step: int,
    index: int,
    device: str,
    requests: Sequence[UserRequest] = (),
    request_plan: RequestPlan | None = None,
) -> Explanation:
    """Render, judge and explain preview ``index`` of ``step``; write its renders and
    corrected requests into ``out_dir``.

    Raises
    ------
    ParityError
        The step has no preview ``index``, or a request's LoRA cannot be used.
    """
    cases = plan_cases(
        job,
        [step],
        device=device,
        checkpoint_scheduler=engine.checkpoint_scheduler,
        reference_dtype=options.reference_dtype,
        allow_outside_paths=options.allow_outside_paths,
        request_plan=request_plan,
        server_diffusers=options.server_diffusers,
    )
    case = next((c for c in cases if c.index == index), None)
    if case is None:
        raise ParityError(f"{job.root}: no preview for step {step} index {index}")
    for user in requests:  # a LoRA problem is found before the model loads
        engine.lora(str(user.lora_path))
    runner = Runner(job, engine, out_dir, options)
    row = runner.evaluate(case)
    lora_root = options.lora_root or default_lora_root(job)
    corrected = None
    if case.pair is not None:
        by_step = write_corrected_requests(
            job,
            [case],
            [row],
            out_dir,
            engine.checkpoint_scheduler,
            server_diffusers=options.server_diffusers,
            lora_root=lora_root,
            lora_paths={u.step: u.request.loras[0].path for u in requests},
        )
        corrected = by_step[step]
        [row] = note_uncorrected([row], by_step)
        runner.write_finished([row])
    return Explanation(
        case=case,
        row=row,
        out_dir=out_dir,
        server_diffusers=options.server_diffusers,
        lora_root=lora_root,
        corrected=corrected,
        lossless_ssim=_lossless_ssim(out_dir, row) if row.jpeg_floor else None,
    )


def _lossless_ssim(out_dir: Path, row: ResultRow) -> float | None:
    """SSIM of the lossless reference render against the preview as stored."""
    from parity.compare import load_rgb, ssim

    if not row.preview or not row.render:
        return None
    preview, render = load_rgb(out_dir / row.preview), load_rgb(out_dir / row.render)
    return ssim(preview, render) if preview.shape == render.shape else None
