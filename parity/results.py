"""Result rows of a parity run and how they are stored without ever being lost.

``results.json`` / ``results.csv`` are contracts other tools read: the column names and
their meaning below do not change.
"""

from __future__ import annotations

import csv
import io
import json
import os
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass, fields, replace
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any

from parity.attribute import Attribution, Counterfactual, UnconfirmedCause
from parity.settings import Cause

if TYPE_CHECKING:
    from parity.compare.noise import NoiseFloor

#: Columns of results.csv, in order.
CSV_COLUMNS: tuple[str, ...] = (
    "job",
    "step",
    "index",
    "preview",
    "render",
    "width_preview",
    "height_preview",
    "width_render",
    "height_render",
    "ssim",
    "psnr",
    "ms_ssim",
    "latent_distance",
    "lpips",
    "verdict",
    "causes",
    "explained",
    "detail",
    # Added with measured noise floors; the columns above never change.
    "below_noise_floor",
    "noise_floor_max_abs_diff",
    "noise_floor_mean_abs_diff",
    "noise_floor_ssim",
    "noise_floor_psnr",
    # Added with video previews: the frame of the lowest SSIM, 0-based (else empty); a
    # video's ssim, psnr and latent_distance are each that metric's worst over its frames.
    "worst_frame",
)


class Verdict(StrEnum):
    """A preview's outcome."""

    MATCH = "match"
    MISMATCH = "mismatch"
    ERROR = "error"  # the preview could not be judged (the row's detail says why)


VERDICTS: tuple[Verdict, ...] = tuple(Verdict)


def verdict_counts(rows: Iterable[ResultRow]) -> dict[str, int]:
    """How many ``rows`` have each verdict (every verdict present, zeros included)."""
    out = {str(v): 0 for v in VERDICTS}
    for row in rows:
        out[str(row.verdict)] += 1
    return out


def served_drift(rows: Iterable[ResultRow]) -> int:
    """How many ``rows`` have a served image that is not parity's reference render."""
    return sum(1 for r in rows if r.served is not None and r.served.drift)


def exit_code(rows: Iterable[ResultRow]) -> int:
    """The exit status of a run with these rows: 0 when there are rows, every one a match
    and no served image drifts; else 1 (a mismatch, a per-preview error or drift).

    Every front door (``parity run`` of one job or many, with or without workers, and the
    pytest plugin's session outcome) decides with this function.
    """
    rows = list(rows)
    matched = bool(rows) and all(r.verdict is Verdict.MATCH for r in rows)
    return 0 if matched and not served_drift(rows) else 1


@dataclass(frozen=True)
class ServedResult:
    """The server's own image of a prompt against parity's reference render of it.

    Attributes
    ----------
    verdict:
        ``"same"`` (within float noise and the served file's codec) or ``"drift"``.
    ssim, psnr:
        Of the render encoded like the served file against it (PSNR in dB).
    max_abs_diff:
        Largest per-channel difference, levels of 255 (None when the sizes differ).
    path:
        The served image's copy, relative to the run folder.
    """

    verdict: str
    ssim: float
    psnr: float
    max_abs_diff: int | None
    path: str

    @property
    def drift(self) -> bool:
        return self.verdict == "drift"

    def to_json(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> ServedResult:
        return cls(**{f.name: d.get(f.name) for f in fields(cls)})


@dataclass(frozen=True)
class RoundingResult:
    """How much a bf16-saved checkpoint's rounding moves the render that has every
    candidate switched (the preview used the float32 training weights).

    Attributes
    ----------
    checkpoint_dtype:
        The saved file's dtype (``BF16``...).
    draws:
        Renders with the LoRA moved within its rounding.
    spread:
        The largest distance (1 - SSIM) of those renders from the all-switched one.
    residual:
        The all-switched render's distance (1 - SSIM) from the preview.
    accounts:
        The rounding accounts for the residual (see the runner's rule).
    """

    checkpoint_dtype: str
    draws: int
    spread: float
    residual: float
    accounts: bool

    def to_json(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> RoundingResult:
        return cls(**{f.name: d[f.name] for f in fields(cls)})


@dataclass(frozen=True)
class VideoScores:
    """A video preview's scores frame by frame (the row's ``ssim``, ``psnr`` and
    ``latent_distance`` are each the worst over the frames).

    Attributes
    ----------
    frames:
        Each frame's ``{"ssim", "psnr", "latent_distance"}`` (PSNR in dB), in play order,
        for the frames both videos have.
    worst_frame:
        The frame with the lowest SSIM (0-based).
    mean_ssim, mean_psnr, mean_latent_distance:
        The means over the frames (PSNR in dB).
    frames_preview, frames_render:
        Frame counts of the preview and the reference render.
    frame_ms_preview, frame_ms_render:
        How long each frame shows, ms (``1000 // fps``).
    """

    frames: tuple[dict[str, float | None], ...]
    worst_frame: int
    mean_ssim: float
    mean_psnr: float
    mean_latent_distance: float | None
    frames_preview: int
    frames_render: int
    frame_ms_preview: int | None
    frame_ms_render: int | None

    def __post_init__(self) -> None:
        object.__setattr__(self, "frames", tuple(dict(f) for f in self.frames))

    @classmethod
    def of(cls, comparison: Any) -> VideoScores | None:
        """The video scores of a :class:`parity.compare.Comparison` (None for an image)."""
        if not comparison.video:
            return None
        return cls(
            frames=tuple(f.to_json() for f in comparison.frames),
            worst_frame=comparison.worst_frame,
            mean_ssim=comparison.mean_ssim,
            mean_psnr=comparison.mean_psnr,
            mean_latent_distance=comparison.mean_latent_distance,
            frames_preview=comparison.frames_preview,
            frames_render=comparison.frames_render,
            frame_ms_preview=comparison.frame_ms_preview,
            frame_ms_render=comparison.frame_ms_render,
        )

    def to_json(self) -> dict[str, Any]:
        d = {f.name: getattr(self, f.name) for f in fields(self)}
        d["frames"] = [dict(f) for f in self.frames]
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> VideoScores:
        return cls(**{f.name: d.get(f.name) for f in fields(cls)})


@dataclass(frozen=True)
class ResultRow:
    """One preview's outcome: a frozen record; a later stage makes a new one
    (:func:`dataclasses.replace`, :meth:`noted`) instead of editing it.

    Metric fields are None when they could not be computed (``error`` rows, LPIPS without
    local weights). ``causes`` are the sorted causes of an attributed mismatch:
    every candidate (static difference), the ones its leave-one-out render confirms and
    the ones it cannot, which ``below_noise_floor`` lists again with their effect (a
    difference is never dropped); ``explained`` is True when the all-causes-switched
    render reproduces the preview. Sequences are tuples (lists given are made tuples).
    """

    job: str
    step: int
    index: int
    preview: str | None = None
    render: str | None = None
    width_preview: int | None = None
    height_preview: int | None = None
    width_render: int | None = None
    height_render: int | None = None
    ssim: float | None = None
    psnr: float | None = None
    ms_ssim: float | None = None
    latent_distance: float | None = None
    lpips: float | None = None
    verdict: Verdict = Verdict.ERROR
    causes: tuple[Cause, ...] = ()
    explained: bool = False
    #: What else a reader should know about this row, one fact a note (results.csv's
    #: ``detail`` column joins them with "; ").
    notes: tuple[str, ...] = ()
    # Extra detail kept in results.json only.
    counterfactual_renders: int = 0
    candidate_causes: tuple[Cause, ...] = ()
    counterfactuals: tuple[Counterfactual, ...] = ()
    jpeg_floor: dict[str, float] | None = None
    resized_for_comparison: bool = False
    prompt: str = ""
    unexplained_residual: dict[str, float] | None = None
    #: For a bf16-saved checkpoint: how much its rounding moves the render.
    rounding: RoundingResult | None = None
    best_counterfactual: str | None = None
    corrected_request_note: str = ""
    #: The original preview file (``preview`` is its copy in the run folder).
    preview_source: str | None = None
    #: The user's request prompt the reference side came from: ``{"file", "prompt"}``.
    request: dict[str, Any] | None = None
    #: The server's own image of that prompt against parity's reference render.
    served: ServedResult | None = None
    #: On drift: what it means and what could explain it.
    served_note: str = ""
    #: The case's measured noise floor (:class:`parity.compare.noise.NoiseFloor`): one
    #: render through the alternate kernel path; None where none was needed.
    noise_floor: NoiseFloor | None = None
    #: Causes the leave-one-out evidence does not confirm, with their effect and a note.
    below_noise_floor: tuple[UnconfirmedCause, ...] = ()
    #: A video preview's scores frame by frame (None for an image).
    video: VideoScores | None = None

    def __post_init__(self) -> None:
        for name in _SEQUENCES:
            value = getattr(self, name)
            if not isinstance(value, tuple):
                object.__setattr__(self, name, tuple(value))

    @property
    def key(self) -> tuple[str, int, int]:
        return (self.job, self.step, self.index)

    def noted(self, *notes: str) -> ResultRow:
        """This row with ``notes`` added after its own."""
        return replace(self, notes=(*self.notes, *notes))

    @property
    def detail(self) -> str:
        """The notes as one text (results.csv's ``detail`` column)."""
        return "; ".join(self.notes)

    @property
    def attribution(self) -> Attribution | None:
        """The attribution record this row was filled from (None: no counterfactuals)."""
        if not self.counterfactuals:
            return None
        unconfirmed = {u.cause for u in self.below_noise_floor}
        return Attribution(
            candidates=tuple(self.candidate_causes),
            confirmed=tuple(c for c in self.causes if c not in unconfirmed),
            explained=self.explained,
            counterfactuals=tuple(self.counterfactuals),
            renders=self.counterfactual_renders,
        )

    def to_json(self) -> dict[str, Any]:
        d = {f.name: getattr(self, f.name) for f in fields(self)}
        d["verdict"] = str(self.verdict)
        d["notes"] = list(self.notes)
        d["causes"] = [str(c) for c in self.causes]
        d["candidate_causes"] = [str(c) for c in self.candidate_causes]
        d["counterfactuals"] = [cf.to_json() for cf in self.counterfactuals]
        d["noise_floor"] = self.noise_floor.to_json() if self.noise_floor is not None else None
        d["below_noise_floor"] = [u.to_json() for u in self.below_noise_floor]
        d["served"] = self.served.to_json() if self.served is not None else None
        d["rounding"] = self.rounding.to_json() if self.rounding is not None else None
        d["video"] = self.video.to_json() if self.video is not None else None
        d["detail"] = self.detail
        return d

    def to_csv_row(self) -> dict[str, Any]:
        d = self.to_json()
        floor = d["noise_floor"] or {}
        d["below_noise_floor"] = ";".join(sorted(u["cause"] for u in d["below_noise_floor"]))
        for name in ("max_abs_diff", "mean_abs_diff", "ssim", "psnr"):
            d[f"noise_floor_{name}"] = floor.get(name)
        d["worst_frame"] = self.video.worst_frame if self.video is not None else None
        out = {k: d[k] for k in CSV_COLUMNS}
        out["causes"] = ";".join(sorted(d["causes"]))
        out["explained"] = "true" if self.explained else "false"
        return out

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> ResultRow:
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in d.items() if k in known}
        values["verdict"] = Verdict(values.get("verdict", Verdict.ERROR))
        values["causes"] = tuple(Cause(c) for c in values.get("causes", []))
        values["candidate_causes"] = tuple(Cause(c) for c in values.get("candidate_causes", []))
        values["counterfactuals"] = tuple(
            Counterfactual.from_json(c) for c in values.get("counterfactuals", [])
        )
        if values.get("noise_floor") is not None:
            from parity.compare.noise import NoiseFloor

            values["noise_floor"] = NoiseFloor.from_json(values["noise_floor"])
        values["below_noise_floor"] = tuple(
            UnconfirmedCause.from_json(u) for u in values.get("below_noise_floor", [])
        )
        if values.get("served") is not None:
            values["served"] = ServedResult.from_json(values["served"])
        if values.get("rounding") is not None:
            values["rounding"] = RoundingResult.from_json(values["rounding"])
        if values.get("video") is not None:
            values["video"] = VideoScores.from_json(values["video"])
        if "notes" not in d and d.get("detail"):  # results.json written before notes
            values["notes"] = str(d["detail"]).split("; ")
        return cls(**values)


#: The sequence fields of :class:`ResultRow`, kept as tuples.
_SEQUENCES: tuple[str, ...] = (
    "causes",
    "notes",
    "candidate_causes",
    "counterfactuals",
    "below_noise_floor",
)


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes, *, durable: bool = True) -> None:
    """Write ``data`` to ``path`` so that readers see the old or the new file, never half.

    The data goes to a temporary file in the same folder, then is renamed over ``path``
    (atomic on POSIX and Windows). ``durable`` also flushes it to disk first (fsync), so
    it survives a power loss, not only a killed process.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        # mkstemp creates 0600 files; give the result the mode open() would (0666 less
        # the umask), so a web server or a colleague can read reports.
        os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            if durable:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def _umask() -> int:
    """The process umask (read by setting it and putting it back)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write_text(path: str | os.PathLike[str], text: str, *, durable: bool = True) -> None:
    """UTF-8 text twin of :func:`atomic_write_bytes`."""
    atomic_write_bytes(path, text.encode("utf-8"), durable=durable)


def link_or_copy(
    src: str | os.PathLike[str], dst: str | os.PathLike[str], *, link: bool = True
) -> Path:
    """Put ``src`` at ``dst``: a hard link on the same filesystem (``link``), else a
    copy; atomic. An existing ``dst`` that already is ``src`` (the same file) is kept.
    """
    import shutil

    src, dst = Path(src), Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    if dst.exists() and os.path.samefile(src, dst):
        return dst
    tmp = dst.with_name(f".{dst.name}.{os.getpid()}.tmp")
    try:
        try:
            if not link:
                raise OSError("copy asked for")
            os.link(src, tmp)
        except OSError:  # another filesystem, or links not allowed
            shutil.copy2(src, tmp)
        os.replace(tmp, dst)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return dst


def save_png(image: Any, path: str | os.PathLike[str]) -> None:
    """Save a PIL image losslessly as PNG, atomically (a render is never half written)."""
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    atomic_write_bytes(path, buf.getvalue(), durable=False)


def save_render(frames: Any, path: str | os.PathLike[str], *, fps: int | None = None) -> None:
    """Save a render losslessly and atomically: one frame as PNG, a video (``fps`` given)
    as a lossless animated WebP that a browser plays, each frame's pixels kept."""
    if fps is None:
        save_png(frames[0], path)
        return
    from parity.compare import encode_clip, frame_ms

    atomic_write_bytes(path, encode_clip(frames, frame_ms(fps), lossless=True), durable=False)


def render_path(stem: str, *, video: bool) -> str:
    """Where a render of ``stem`` (relative, without extension) is saved: a PNG, or a
    video's animated WebP."""
    return f"{stem}.webp" if video else f"{stem}.png"


def rows_to_csv(rows: list[ResultRow]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(CSV_COLUMNS))
    writer.writeheader()
    for row in rows:
        writer.writerow(row.to_csv_row())
    return buf.getvalue()


def write_results(
    out_dir: str | os.PathLike[str], rows: list[ResultRow], *, durable: bool = True
) -> None:
    """Write ``results.json`` and ``results.csv`` atomically, rows sorted by key.

    A run calls this after every preview with ``durable=False`` (atomic: a killed process
    leaves the previous complete file) and once at the end with ``durable=True``.
    """
    rows = sorted(rows, key=lambda r: r.key)
    out_dir = Path(out_dir)
    text = json.dumps([r.to_json() for r in rows], indent=2)
    atomic_write_text(out_dir / "results.json", text, durable=durable)
    atomic_write_text(out_dir / "results.csv", rows_to_csv(rows), durable=durable)


def read_results(out_dir: str | os.PathLike[str]) -> list[ResultRow]:
    """Rows of ``results.json`` in ``out_dir``; an empty list when there is none yet."""
    path = Path(out_dir) / "results.json"
    if not path.exists():
        return []
    with open(path, encoding="utf-8") as f:
        data = json.load(f)
    if not isinstance(data, list):
        raise ValueError(f"{path}: expected a JSON list of result rows")
    return [ResultRow.from_json(d) for d in data]
