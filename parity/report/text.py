"""What a run found, as lines of text for a terminal: one preview explained in depth
(:func:`explain_lines`, what ``parity explain`` prints).

The functions return lines and print nothing; the command line prints them.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from parity.correct import CORRECTED_DIR, CorrectedRequests
from parity.families import family
from parity.job import Job
from parity.plan import Case
from parity.plan.sides import era_of
from parity.results import ResultRow


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


def _score_lines(row: ResultRow, lossless_ssim: float | None) -> list[str]:
    lines = []
    if row.ssim is not None:
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
