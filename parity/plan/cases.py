"""Planning: the cases of a job, with everything known before anything renders.

One :class:`Case` per (step, preview index): the preview file, its sample, both sides'
settings (:class:`parity.plan.sides.SidePair`) and, where the preview cannot be judged, why
(``error``). ``parity run``, ``parity preview`` and ``parity inspect`` all plan through
:func:`plan_cases`, so they agree on which previews are usable and why the others are not.

The reference side of a step comes from the request a user writes from the sample config
(:func:`parity.plan.sides.as_configured_request`), or from a request the user really sent
(``--request``, bound and paired with previews by :mod:`parity.plan.requests`).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from parity.errors import ParityError, RequestStepError
from parity.job import IMAGE_EXTS, Job, Preview, SampleSpec, outside_path_error
from parity.plan.requests import PromptRef, RequestPlan, UserRequest
from parity.plan.sides import SidePair, as_configured_request, era_of, pair_for
from parity.settings import Dtype, SchedulerConfig

#: ``--steps`` values: every step with previews, the last one, or explicit steps.
Steps = str | tuple[int, ...]


@dataclass(frozen=True)
class Case:
    """One preview, with everything known before rendering.

    ``pair`` is None exactly when ``error`` says why the preview cannot be judged.
    ``request`` names the user's request prompt the reference side comes from (None:
    the as-configured request); ``served`` is the image the server returned for it.
    """

    step: int
    index: int
    preview: Preview | None
    sample: SampleSpec | None
    pair: SidePair | None = None
    error: str | None = None
    request: PromptRef | None = None
    served: Path | None = None


def parse_steps(text: str) -> Steps:
    """``"all"``, ``"last"`` or a comma-separated list of steps."""
    text = text.strip()
    if text in ("all", "last"):
        return text
    try:
        return tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise ValueError(f"--steps takes 'all', 'last' or steps like 10,20; got {text!r}") from None


def select_steps(job: Job, steps: Steps) -> list[int]:
    """The steps of ``job`` that ``steps`` names; ParityError for a step without previews."""
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


def steps_with_requests(
    job: Job,
    steps: str | None,
    requests: Sequence[UserRequest],
    *,
    given: bool = True,
) -> str | None:
    """The ``--steps`` text of a run with ``requests``: ``steps`` as given or, when not
    ``given`` and there are requests, the steps they name.

    Every front door (``parity run`` of one job or many, the pytest plugin,
    :func:`parity.run.run_job`) decides with this function.

    Raises
    ------
    RequestStepError
        A request names a step the steps leave out (it would go unused).
    """
    if requests and not given:
        steps = ",".join(str(s) for s in step_of_each(requests))
    check_requests_in_steps(requests, select_steps(job, parse_steps(steps or "all")))
    return steps


def step_of_requests(requests: Sequence[UserRequest]) -> int:
    """The one step ``requests`` name (``parity explain`` without ``--step``).

    Raises
    ------
    ParityError
        They name no step or several.
    """
    steps = list(step_of_each(requests))
    if len(steps) != 1:
        raise ParityError(
            "give --step N (with --request it defaults to the step the request names"
            + (f"; these name steps {steps})" if steps else ")")
        )
    return steps[0]


def step_of_each(requests: Sequence[UserRequest]) -> tuple[int, ...]:
    """The steps ``requests`` name, sorted, each once."""
    return tuple(sorted({u.step for u in requests}))


def check_requests_in_steps(
    requests: Sequence[UserRequest], steps: Sequence[int], option: str = "--steps"
) -> None:
    """Refuse a request that names a step ``steps`` leave out: it would go unused.

    Raises
    ------
    RequestStepError
        Naming the request's file, its step, the steps of ``option`` and the fix.
    """
    for user in requests:
        if user.step not in steps:
            raise RequestStepError(
                f"{user.source}: names the checkpoint of step {user.step}, which {option} "
                f"leaves out ({', '.join(map(str, steps))}); add it or drop the request"
            )


def unreadable_image(path: Path) -> str | None:
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


def _preview_problem(job: Job, step: int, index: int, previews: list[Preview]) -> str | None:
    """Why the preview file(s) of (step, index) cannot be compared, or None."""
    if len(previews) > 1:
        names = ", ".join(p.path.name for p in previews)
        return f"duplicate previews for step {step} index {index}: {names}"
    preview = previews[0]
    if preview.ext not in IMAGE_EXTS:
        return f"{preview.path}: .{preview.ext} is not an image extension"
    unreadable = unreadable_image(preview.path)
    return f"{preview.path}: {unreadable}" if unreadable else None


def plan_cases(
    job: Job,
    steps: Iterable[int],
    *,
    device: str,
    checkpoint_scheduler: SchedulerConfig | None,
    reference_dtype: Dtype | None,
    allow_outside_paths: bool = False,
    check_previews: bool = True,
    request_plan: RequestPlan | None = None,
    server_diffusers: str | None = None,
) -> list[Case]:
    """One Case per (step, index) that has a preview, with per-preview problems set.

    A preview or checkpoint that resolves outside the job folder (a symlink out of it)
    is refused unless ``allow_outside_paths``. ``check_previews=False`` skips the checks
    of the preview files themselves (``parity preview`` renders without reading them).
    The reference side of a step that ``request_plan`` covers comes from the user's
    request prompts it assigns; ``server_diffusers`` is the server's diffusers release (None:
    the installed one).
    """
    by_key: dict[tuple[int, int], list[Preview]] = {}
    for p in job.previews:
        by_key.setdefault((p.step, p.index), []).append(p)
    usable = [s.index for s in job.samples if not s.error]
    cases: list[Case] = []
    for step in steps:
        checkpoint = job.checkpoint_for_step(step)
        checkpoint_problem = None
        if checkpoint is None and step != 0:
            checkpoint_problem = (
                f"no LoRA checkpoint for step {step} in {job.root} (ai-toolkit keeps only the "
                "last save.max_step_saves_to_keep checkpoints)"
            )
            if step in job.refused_checkpoints:
                checkpoint_problem = f"{job.refused_checkpoints[step]}; {checkpoint_problem}"
        elif checkpoint is not None and not allow_outside_paths:
            checkpoint_problem = outside_path_error(checkpoint.path, job.root, "LoRA checkpoint")
        user_step = request_plan is not None and step in request_plan.steps
        request = as_configured_request(job, checkpoint)
        for (p_step, index), previews in sorted(by_key.items()):
            if p_step != step:
                continue
            preview = previews[0]
            sample = job.samples[index] if index < len(job.samples) else None
            error = None
            if not allow_outside_paths:
                error = outside_path_error(preview.path, job.root, "preview")
            if error is None and check_previews:
                error = _preview_problem(job, step, index, previews)
            if error is None and sample is None:
                error = (
                    f"{preview.path}: index {index} is beyond the sample list "
                    f"({len(job.samples)} samples in {job.config_path.name})"
                )
            if error is None and sample is not None and sample.error:
                error = f"{job.config_path}: {sample.error}"
            # Without its training adapter the preview side cannot be rendered.
            error = error or checkpoint_problem or job.adapter_problem
            ref = None
            if user_step and error is None:
                assert request_plan is not None
                ref = request_plan.assignment.get((step, index))
                if ref is None:
                    error = request_plan.unmatched.get((step, index), "no request prompt")
            if error is not None:
                cases.append(Case(step, index, preview, sample, error=error, request=ref))
                continue
            assert sample is not None
            if ref is not None:
                assert request_plan is not None
                user = request_plan.requests[ref.request]
                pair = pair_for(
                    job,
                    sample,
                    checkpoint,
                    request=user.request,
                    request_index=ref.prompt,
                    device=device,
                    checkpoint_scheduler=checkpoint_scheduler,
                    reference_dtype=reference_dtype,
                    lora_paths=[str(user.lora_path)],
                    server_diffusers=server_diffusers,
                )
                served = request_plan.served_for(ref)
                cases.append(Case(step, index, preview, sample, pair, request=ref, served=served))
                continue
            pair = pair_for(
                job,
                sample,
                checkpoint,
                request=request,
                request_index=usable.index(index),
                device=device,
                checkpoint_scheduler=checkpoint_scheduler,
                reference_dtype=reference_dtype,
                server_diffusers=server_diffusers,
            )
            cases.append(Case(step, index, preview, sample, pair))
    return cases


def describe_cases(job: Job, cases: list[Case]) -> list[dict[str, Any]]:
    """One JSON-ready dict per case: both sides' settings and the static differences
    (what ``parity inspect`` shows)."""
    rows = []
    for case in cases:
        row: dict[str, Any] = {
            "step": case.step,
            "index": case.index,
            "preview": os.path.relpath(case.preview.path, job.root) if case.preview else None,
            "prompt": case.sample.prompt if case.sample else None,
            "negative_prompt": case.sample.negative_prompt if case.sample else None,
            "aitk": None,
            "reference": None,
            "differences": [],
            "aitk_version": job.aitk_version,
            "error": case.error,
        }
        if case.pair is not None and case.sample is not None:
            p, r, sp = case.pair.preview, case.pair.reference, case.pair.server_prompt
            checkpoint = job.checkpoint_for_step(case.step)
            era = era_of(job, checkpoint)
            row["aitk_version"] = (
                checkpoint.aitk_version if checkpoint else None
            ) or job.aitk_version
            row["era"] = era.label + (f" ({era.note})" if era.note else "")
            row["aitk"] = {
                "width": p.width,
                "height": p.height,
                "guidance_scale": case.sample.guidance_scale,
                "pipeline_guidance": p.pipeline_guidance,
                "steps": p.steps,
                "seed": p.seed,
                "network_multiplier": p.lora.scale if p.lora else None,
                "lora_merged": p.lora.merged if p.lora else None,
                "scheduler_shift": p.scheduler_shift,
                "scheduler_class": p.scheduler_class,
                "num_frames": p.num_frames,
                "fps": p.fps,
                "dynamic_shift": dataclasses.asdict(p.dynamic_shift) if p.dynamic_shift else None,
                "legacy_sigmas": p.sigmas is not None,
                "dtype": p.dtype,
                "quantization": {
                    "qtype": p.quantization.qtype,
                    "qtype_te": p.quantization.qtype_te,
                },
            }
            row["request"] = case.request.to_json() if case.request else None
            row["reference"] = {
                "model": job.reference_model,
                "prompt": r.prompt,
                "negative_prompt": r.negative_prompt,
                "width": r.width,
                "height": r.height,
                "guidance_scale": sp.guidance_scale,
                "pipeline_guidance": r.pipeline_guidance,
                "steps": r.steps,
                "seed": r.seed,
                "network_multiplier": r.lora.scale if r.lora else None,
                "scheduler_shift": r.scheduler_shift,
                "scheduler_class": r.scheduler_class,
                "num_frames": r.num_frames,
                "fps": r.fps,
                "dynamic_shift": dataclasses.asdict(r.dynamic_shift) if r.dynamic_shift else None,
                "legacy_sigmas": r.sigmas is not None,
                "dtype": r.dtype,
            }
            row["differences"] = [str(c) for c in case.pair.differences]
        if checkpoint := job.checkpoint_for_step(case.step):
            audit = checkpoint.audit
            row["checkpoint"] = {
                "file": checkpoint.path.name,
                "dtype": checkpoint.dtype,
                "rounded": checkpoint.rounded,
                "formats": [str(f) for f in audit.formats] if audit else None,
                "modules": len(audit.modules) if audit else None,
                "server_takes": audit.taken if audit else None,
                "server_drops": dict(audit.dropped) if audit else None,
                "server_refuses": audit.refused if audit else None,
            }
        rows.append(row)
    return rows
