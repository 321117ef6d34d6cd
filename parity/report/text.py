"""What a run found, as lines of text for a terminal: one preview explained in depth
(:func:`explain_lines`, what ``parity explain`` prints).

The functions return lines and print nothing; the command line prints them. The words
for a video's scores (:func:`frame_text`, :func:`playback`) and a render's sigma schedule
(:func:`sigma_schedule`) are shared with the HTML report and the pytest plugin. Frames
are counted from 1 in words ("frame 5 of 9"); ``worst_frame`` in results.json and
results.csv counts from 0.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from parity.correct import CORRECTED_DIR, CorrectedRequests
from parity.families import family
from parity.job import Job
from parity.plan import Case
from parity.plan.sides import era_of
from parity.results import ResultRow, VideoScores
from parity.settings import Cause, RenderSettings

#: Static differences that change the sigmas a render steps through.
SCHEDULE_CAUSES: frozenset[Cause] = frozenset({Cause.SCHEDULER, Cause.STEPS, Cause.LIBRARY})


def explain_lines(
    job: Job,
    case: Case,
    row: ResultRow,
    *,
    out_dir: Path,
    server_diffusers: str | None,
    lora_root: Path,
    corrected: CorrectedRequests | None = None,
    lossless_ssim: float | None = None,
) -> list[str]:
    """One preview explained: verdict, both sides' settings, scores, served image,
    counterfactuals, causes, the corrected request and where the images are.

    Parameters
    ----------
    job, case, row
        The job, the preview's planned case and its result row (counterfactuals
        included; their images and the row's are relative to ``out_dir``).
    out_dir
        The folder the preview's renders were written to.
    server_diffusers
        The diffusers release the server runs (``--server-diffusers``; None: installed).
    lora_root
        The server's workflows folder, for the command that renders the corrected request.
    corrected
        The corrected requests of the preview's step (None: none were made).
    lossless_ssim
        SSIM of the lossless render against the stored preview (shown for a JPEG one).
    """
    return [
        *_verdict_lines(job, case, row),
        *_settings_lines(job, case, server_diffusers),
        *_schedule_lines(case),
        *_score_lines(row, lossless_ssim),
        *_served_lines(row),
        *_counterfactual_lines(row, out_dir),
        *_cause_lines(row),
        *_corrected_lines(row.index, out_dir, lora_root, corrected),
        *_image_lines(row, out_dir),
    ]


def _verdict_lines(job: Job, case: Case, row: ResultRow) -> list[str]:
    lines = [f"{job.name} step {row.step} index {row.index}: {str(row.verdict).upper()}"]
    if row.prompt:
        lines.append(f"prompt: {row.prompt}")
    if case.request is not None:
        lines.append(f"reference side: prompt {case.request.prompt} of {case.request.source}")
    return lines


def _settings_lines(job: Job, case: Case, server_diffusers: str | None) -> list[str]:
    """Both sides' settings side by side, those that differ marked."""
    if case.pair is None:
        return []
    era = era_of(job, job.checkpoint_for_step(case.step))
    server = family(job.family).describe_server_release(server_diffusers)
    lines = [
        f"ai-toolkit {job.aitk_version or 'unknown'}: {era.label}",
        f"server: {server}",
        "",
        f"{'setting':<20}{'preview (ai-toolkit)':<32}{'reference (server)':<32}",
    ]
    p, r = case.pair.preview.to_dict(), case.pair.reference.to_dict()
    for key in p:
        pv, rv = _short(p[key]), _short(r[key])
        # The generator kind is provenance only: both draw the same numbers on CPU.
        mark = "" if pv == rv or key == "generator" else "  <-"
        lines.append(f"{key:<20}{pv:<32}{rv:<32}{mark}")
    differences = ", ".join(map(str, case.pair.differences)) or "none"
    return [*lines, "", f"static differences: {differences}"]


def _schedule_lines(case: Case) -> list[str]:
    """Both sides' sigma schedules, where a static difference changes them."""
    if case.pair is None or not SCHEDULE_CAUSES & set(case.pair.differences):
        return []
    lines = ["", "sigma schedules (what each side's scheduler steps through):"]
    for label, settings in (
        ("preview (ai-toolkit)", case.pair.preview),
        ("reference (server)", case.pair.reference),
    ):
        lines.append(f"  {label:<22}{_sigmas_text(settings)}")
    return lines


def _sigmas_text(settings: RenderSettings) -> str:
    """A render's sigma schedule as one line, or why it cannot be listed."""
    try:
        sigmas = sigma_schedule(settings)
    except (ImportError, AttributeError, TypeError, ValueError) as e:
        return f"cannot be listed ({type(e).__name__}: {e})"
    return ", ".join(f"{s:.3f}" for s in sigmas)


def sigma_schedule(settings: RenderSettings) -> list[float]:
    """The sigmas a render of ``settings`` steps through, rounded to 3 decimals.

    The scheduler is built as the engine builds it
    (:attr:`~parity.settings.RenderSettings.scheduler_config`) and given the steps the
    way the family's diffusers pipeline gives them: an image pipeline (Z-Image, FLUX,
    Qwen-Image) passes ``settings.sigmas`` or else its default ``linspace(1, 1/N, N)``; a
    video pipeline (WanPipeline) passes only ``settings.steps`` (and ``settings.sigmas``
    where the engine passes them). With dynamic shifting, ``mu`` is interpolated for the
    image's ``(height // 16) * (width // 16)`` tokens, as the image pipelines do.

    Returns
    -------
    list of float
        ``scheduler.sigmas`` after ``set_timesteps``: one a step, then the terminal sigma
        the scheduler appends (0 for FlowMatch Euler and UniPC).

    Raises
    ------
    ImportError, AttributeError, TypeError, ValueError
        diffusers is missing, has no such scheduler class, or rejects the settings.
    """
    scheduler = settings.scheduler_config.build()
    kwargs: dict[str, Any] = {}
    if settings.dynamic_shift is not None:
        d = settings.dynamic_shift
        tokens = (settings.height // 16) * (settings.width // 16)
        slope = (d.max_shift - d.base_shift) / (d.max_image_seq_len - d.base_image_seq_len)
        kwargs["mu"] = d.base_shift + slope * (tokens - d.base_image_seq_len)
    sigmas = settings.sigmas
    if sigmas is None and not settings.video:
        sigmas = tuple(np.linspace(1.0, 1.0 / settings.steps, settings.steps))
    if sigmas is not None:
        scheduler.set_timesteps(sigmas=list(sigmas), **kwargs)
    else:
        scheduler.set_timesteps(settings.steps, **kwargs)
    return [round(float(s), 3) for s in scheduler.sigmas]


def playback(frames: int, frame_ms: int | None) -> str:
    """How a clip plays, in words: ``"9 frames at 16 fps (62 ms a frame)"``, or
    ``"1 frame (a still image)"``; the rate is the whole ``fps`` whose ``1000 // fps`` is
    the frame duration, else ``1000 / frame_ms`` to one decimal."""
    count = f"{frames} frame{'' if frames == 1 else 's'}"
    if frame_ms is None:
        return f"{count} (a still image)" if frames == 1 else count
    if frame_ms <= 0:
        return f"{count}, no frame duration"
    fps = round(1000 / frame_ms)
    rate = f"{fps}" if fps > 0 and 1000 // fps == frame_ms else f"{1000 / frame_ms:.1f}"
    return f"{count} at {rate} fps ({frame_ms} ms a frame)"


def frame_text(video: VideoScores) -> str:
    """A video's worst frame and means in words: ``"worst frame 5 of 9 (lowest SSIM):
    SSIM 0.9100, PSNR 28.10 dB; mean SSIM 0.9500, PSNR 30.00 dB"`` (the worst frame's own
    scores; frames counted from 1, of the frames both videos have)."""
    worst = video.frames[video.worst_frame]
    return (
        f"worst frame {video.worst_frame + 1} of {len(video.frames)} (lowest SSIM): "
        f"SSIM {_fmt(worst.get('ssim'))}, PSNR {_db(worst.get('psnr'))}; "
        f"mean SSIM {_fmt(video.mean_ssim)}, PSNR {_db(video.mean_psnr)}"
    )


def playback_text(video: VideoScores) -> str | None:
    """How the preview and the render play, when they play differently (another frame
    count or rate; never a match); None when they play alike."""
    preview = playback(video.frames_preview, video.frame_ms_preview)
    render = playback(video.frames_render, video.frame_ms_render)
    if preview == render:
        return None
    scored = len(video.frames)
    return (
        f"the preview has {preview}, the reference render {render}; the {scored} "
        f"frame{'' if scored == 1 else 's'} both have {'is' if scored == 1 else 'are'} "
        "scored (never a match)"
    )


def _score_lines(row: ResultRow, lossless_ssim: float | None) -> list[str]:
    lines = []
    if row.video is not None and row.ssim is not None:
        lines += _video_score_lines(row, row.video)
    elif row.ssim is not None:
        lines += [
            f"reference render vs preview: SSIM {row.ssim:.4f}  PSNR {row.psnr:.2f} dB  "
            f"latent {_fmt(row.latent_distance)}  LPIPS {_fmt(row.lpips)}",
            "  (the render encoded like the preview before scoring: an exact reproduction "
            "scores SSIM 1.0000)",
        ]
    if row.jpeg_floor:
        measured = f"{lossless_ssim:.4f}" if lossless_ssim is not None else "n/a"
        lines.append(
            f"  without that encoding, the lossless render scores SSIM {measured}; best "
            f"possible SSIM against this JPEG preview (a perfect reproduction): "
            f"{row.jpeg_floor.get('ssim', float('nan')):.4f}"
        )
    if row.noise_floor is not None:
        from parity.compare import NOISE_FLOOR_K

        lines.append(
            f"noise floor ({row.noise_floor.render} render): {row.noise_floor}; "
            f"verdicts of {row.noise_floor.dtype} renders allow {NOISE_FLOOR_K:g} times it"
        )
    return lines


def _video_score_lines(row: ResultRow, video: VideoScores) -> list[str]:
    """A video's scores: the worst frame and the means, each metric's worst (the
    verdict's figures) and how the two play where that differs."""
    lines = [
        f"reference render vs preview, frame by frame: {frame_text(video)}",
        f"  worst over the frames (the verdict's figures): SSIM {row.ssim:.4f}  "
        f"PSNR {_db(row.psnr)}  latent {_fmt(row.latent_distance)}  LPIPS {_fmt(row.lpips)}",
        "  (each frame of the render encoded like the preview's before scoring: an exact "
        "reproduction scores SSIM 1.0000)",
    ]
    differs = playback_text(video)
    if differs is None:
        lines.append(f"  both play {playback(video.frames_preview, video.frame_ms_preview)}")
    else:
        lines.append(f"  {differs}")
    return lines


def _served_lines(row: ResultRow) -> list[str]:
    served = row.served
    if served is None:
        return []
    diff = served.max_abs_diff
    lines = [
        f"served image {served.path}: {served.verdict.upper()} against parity's "
        f"reference render (SSIM {served.ssim:.4f}, max difference "
        f"{'n/a (sizes differ)' if diff is None else f'{diff}/255'})"
    ]
    if row.served_note:
        lines.append(f"  {row.served_note}")
    return lines


def _counterfactual_lines(row: ResultRow, out_dir: Path) -> list[str]:
    if not row.counterfactuals:
        return []
    lines = ["counterfactuals (renders of the reference with the preview's values for):"]
    for cf in row.counterfactuals:
        flag = ""
        if cf.leaves_out_a_cause:
            flag = "  CONFIRMED cause" if cf.confirmed else "  not confirmed"
        lines.append(
            f"  {cf.label:<24} SSIM {cf.ssim:.4f}  {'match' if cf.match else 'mismatch':<8}"
            f"{flag}  {out_dir / (cf.image or '')}"
        )
    return lines


def _cause_lines(row: ResultRow) -> list[str]:
    lines = []
    if row.verdict == "mismatch":
        state = "complete" if row.explained else "INCOMPLETE (unexplained residual)"
        causes = ", ".join(map(str, row.causes)) or "none confirmed"
        lines.append(f"causes: {causes}; explanation {state}")
        lines += [f"  below noise floor: {u.note}" for u in row.below_noise_floor]
    if row.detail:
        lines.append(f"detail: {row.detail}")
    return lines


def _corrected_lines(
    index: int, out_dir: Path, lora_root: Path, corrected: CorrectedRequests | None
) -> list[str]:
    """The request that reproduces the preview (else the closest one), and why the
    server cannot reproduce it exactly, where it cannot."""
    if corrected is None:
        return []
    lines = []
    placed = corrected.placement.get(index) or corrected.closest.get(index)
    if placed is not None:
        request_file = out_dir / CORRECTED_DIR / corrected.file(placed[0])
        label = "corrected request" if index in corrected.placement else "closest request"
        lines += [
            "",
            f"{label}: {request_file} prompt {placed[1]}",
            json.dumps(corrected.requests[placed[0]].to_json_dict(), indent=2),
            f"render it as the server would: parity render {request_file} "
            f"--lora-root {lora_root} --out DIR",
        ]
    for reason in corrected.cannot.get(index, []):
        lines.append(f"  the server cannot reproduce this preview exactly: {reason}")
    return lines


def _image_lines(row: ResultRow, out_dir: Path) -> list[str]:
    lines = []
    if row.preview:
        lines += ["", f"preview: {(out_dir / row.preview).resolve()}"]
    if row.render:
        lines.append(f"reference render: {(out_dir / row.render).resolve()}")
    return lines


def _short(value: Any) -> str:
    """A setting's value in at most 30 characters (a LoRA as its file, scale and how)."""
    if isinstance(value, dict) and "applier" in value:  # a LoRA
        how = "merged" if value["merged"] else value["applier"]
        return f"{Path(value['path']).name[:16]} x{value['scale']:g} {how}"
    if isinstance(value, dict):
        value = {k: v for k, v in value.items() if v is not None}
        if "path" in value:
            value["path"] = Path(value["path"]).name
    text = json.dumps(value) if not isinstance(value, str) else value
    return text if len(text) <= 30 else text[:27] + "..."


def _fmt(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.4f}"


def _db(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.2f} dB"
