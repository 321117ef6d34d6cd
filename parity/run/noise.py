"""A job's float noise: how far its renders move through the alternate kernel path.

:func:`measure_job_noise` renders one preview of each step, both sides' settings, through
the default kernels and through :func:`parity.render.engine.alternate_kernels`, and scores
each pair as that render's :class:`~parity.compare.NoiseFloor`, in the preview's domain
(codec-matched for a JPEG). With it, the limits a run's verdict applies to such a render:
the thresholds, or :data:`~parity.compare.NOISE_FLOOR_K` times the floor where that
allows more. ``parity noise JOB`` prints it.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from parity.errors import ParityError
from parity.job import Job
from parity.plan import Steps, plan_cases, select_steps
from parity.settings import Dtype

if TYPE_CHECKING:
    from parity.compare import NoiseFloor, Thresholds
    from parity.render.engine import RenderEngine


@dataclass(frozen=True)
class CaseNoise:
    """One render's noise floor and the verdict limits it sets.

    Attributes
    ----------
    step, index:
        The preview (case) whose settings were rendered.
    side:
        ``"preview"`` (ai-toolkit's settings) or ``"reference"`` (the server's).
    floor:
        The render against its alternate-kernel twin.
    ssim_min, psnr_min:
        What a match of a render with this floor needs (PSNR in dB): the thresholds, or
        ``k`` times the floor where that allows more.
    seconds:
        Wall time of the two renders, s.
    """

    step: int
    index: int
    side: str
    floor: NoiseFloor
    ssim_min: float
    psnr_min: float
    seconds: float


def measure_job_noise(
    job: Job,
    engine: RenderEngine,
    *,
    steps: Steps = "all",
    reference_dtype: Dtype | None = None,
    thresholds: Thresholds | None = None,
    allow_outside_paths: bool = False,
) -> list[CaseNoise]:
    """The noise floors of one preview per step, both sides.

    Parameters
    ----------
    job:
        The job.
    engine:
        Renders both paths (its device decides the alternate path's switches).
    steps:
        ``"all"``, ``"last"`` or explicit steps.
    reference_dtype:
        Override of the server's dtype rule, as for a run.
    thresholds:
        The fixed part of the verdict (default: :class:`~parity.compare.Thresholds`).
    allow_outside_paths:
        Accept previews and checkpoints that resolve outside the job folder.

    Returns
    -------
    list of CaseNoise
        Per step, the first preview that can be rendered: its preview side, then its
        reference side (four renders a step).

    Raises
    ------
    ParityError
        No step has a preview that can be rendered.
    """
    from parity.compare import Thresholds

    thresholds = thresholds or Thresholds()
    cases = plan_cases(
        job,
        select_steps(job, steps),
        device=engine.device,
        checkpoint_scheduler=engine.checkpoint_scheduler,
        reference_dtype=reference_dtype,
        allow_outside_paths=allow_outside_paths,
        check_previews=False,
    )
    chosen: dict[int, Any] = {}
    for case in cases:
        if case.pair is not None and case.step not in chosen:
            chosen[case.step] = case
    if not chosen:
        problems = "; ".join(sorted({c.error or "no settings" for c in cases})) or "no previews"
        raise ParityError(f"{job.root}: no preview to measure the noise of ({problems})")
    out = []
    for step in sorted(chosen):
        case = chosen[step]
        codec = _codec(case.preview.path if case.preview is not None else None)
        for side in ("preview", "reference"):
            out.append(_measure(engine, case, side, getattr(case.pair, side), codec, thresholds))
    return out


def _measure(
    engine: RenderEngine, case: Any, side: str, settings: Any, codec: Any, thresholds: Any
) -> CaseNoise:
    from parity.compare import frame_ms, measure_floor, widened
    from parity.render.engine import alternate_method

    started = time.perf_counter()
    # A video's floor is measured over all its frames.
    default = engine.render(settings).rgb
    alternate = engine.render(settings, alternate=True).rgb
    seconds = time.perf_counter() - started
    floor = measure_floor(
        default,
        alternate,
        codec=codec,
        method=alternate_method(engine.device),
        dtype=settings.dtype,
        render=side,
        frame_duration=frame_ms(settings.fps),
    )
    limits = widened(thresholds.rule, floor)
    assert limits.ssim_min is not None and limits.psnr_min is not None
    return CaseNoise(case.step, case.index, side, floor, limits.ssim_min, limits.psnr_min, seconds)


def _codec(path: Any) -> Any:
    """How the preview is stored (None: unreadable or absent, scored lossless)."""
    from parity.compare import inspect_codec

    if path is None:
        return None
    try:
        return inspect_codec(path)
    except ParityError:
        return None


def format_noise_table(rows: Sequence[CaseNoise]) -> str:
    """A plain-text table of :func:`measure_job_noise`'s rows, one line each."""
    header = (
        f"{'step':>6} {'index':>5}  {'side':<9} {'dtype':<9} {'max':>4} {'mean':>6} "
        f"{'SSIM':>7} {'PSNR':>6}  {'SSIM >=':>7} {'PSNR >=':>7} {'s':>6}"
    )
    lines = [header]
    for r in rows:
        f = r.floor
        lines.append(
            f"{r.step:>6} {r.index:>5}  {r.side:<9} {f.dtype:<9} {f.max_abs_diff:>4} "
            f"{f.mean_abs_diff:>6.2f} {f.ssim:>7.4f} {f.psnr:>6.1f}  {r.ssim_min:>7.4f} "
            f"{r.psnr_min:>7.1f} {r.seconds:>6.2f}"
        )
    return "\n".join(lines)
