"""run.json, the facts of one run (:class:`RunInfo`), read and written in one place.

run.json is a contract (docs/run-folder.md): ``parity run --resume`` takes its options
and job back from it, the fleet's driver relays it from worker to run folder,
report.html shows it, and other tools read it. Its keys do not change:
:meth:`RunInfo.to_json` writes the keys a run has always written, and no others.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from parity.errors import ParityError
from parity.results import atomic_write_text

#: The name of a run folder's record of its run.
RUN_FILE = "run.json"


@dataclass(frozen=True)
class RunInfo:
    """What one run was asked, what it ran on and what it found: run.json as a record.

    The fields up to ``match`` are in every run.json (a run folder of an older parity
    may lack some: they read as their defaults). Those after it are written only once
    they are set (None: absent from the file), as a run has always written them.
    JSON values (options, stack, tables) stay JSON: the record is the file's contents,
    typed where parity reads them back.

    Attributes
    ----------
    options:
        The command line's resolved options, paths absolute (what ``--resume`` reuses).
    stack:
        The installed library stack (:func:`parity.stack.stack_record`).
    model_source:
        Where the reference model loaded from: ``{"transformer", "components"}``.
    job, job_path:
        The job's name and folder.
    started, finished:
        UTC times, ISO 8601; ``finished`` is None (written as null) while the run runs.
    parity_version, device, reference_model, aitk_version:
        The run's versions, torch device and the job's reference model.
    steps:
        The steps the run covers.
    thresholds:
        The match thresholds, name to value.
    confirm_margin, attribution, match:
        How causes are confirmed, whether counterfactuals are rendered, how request
        prompts meet previews.
    noise_floor_k:
        The verdict rule's factor on a case's measured noise floor
        (:data:`parity.compare.noise.NOISE_FLOOR_K`).
    server_diffusers:
        The server's diffusers release (:meth:`parity.family.Family.server_release_json`).
    lora_root:
        The server's workflows folder, where corrected requests' LoRA paths start.
    requests:
        With ``--request``: each request's record (its copy in the run folder included).
    unmatched_prompts, unmatched_previews, served_missing:
        With ``--request``: the rest of :meth:`parity.plan.RequestPlan.to_json`.
    counts:
        Once finished: how many previews have each verdict.
    served_drift:
        Once finished, with ``--request``: how many served images drift.
    worker, attempts:
        In a fleet run (written by its driver): the worker that ran the job last, and how
        many times the job was started.
    extra:
        Keys this parity does not know (a newer one wrote them), kept as read so that a
        resumed run does not drop them; written after the others.
    """

    options: dict[str, Any] = field(default_factory=dict)
    stack: dict[str, Any] = field(default_factory=dict)
    model_source: dict[str, Any] = field(default_factory=dict)
    job: str = ""
    job_path: str | None = None
    started: str | None = None
    finished: str | None = None
    parity_version: str = ""
    device: str = ""
    reference_model: str | None = None
    aitk_version: str | None = None
    steps: tuple[int, ...] = ()
    thresholds: dict[str, float] = field(default_factory=dict)
    confirm_margin: float | None = None
    noise_floor_k: float | None = None
    attribution: bool = True
    server_diffusers: dict[str, Any] = field(default_factory=dict)
    lora_root: str | None = None
    match: str = "index"
    # Written only when set.
    requests: list[dict[str, Any]] | None = None
    unmatched_prompts: list[dict[str, Any]] | None = None
    unmatched_previews: list[dict[str, Any]] | None = None
    served_missing: list[str] | None = None
    counts: dict[str, int] | None = None
    served_drift: int | None = None
    worker: str | None = None
    attempts: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    # ---- JSON

    def to_json(self) -> dict[str, Any]:
        """run.json's object: every key a run writes, in the order it writes them."""
        out: dict[str, Any] = {}
        for f in fields(self):
            if f.name == "extra":
                continue
            value = getattr(self, f.name)
            if f.name in _ALWAYS or value is not None:
                out[f.name] = list(value) if f.name == "steps" else value
        out.update((k, v) for k, v in self.extra.items() if k not in out)
        return out

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> RunInfo:
        """The record of run.json's object ``data``; unknown keys go to :attr:`extra`."""
        values = {k: v for k, v in data.items() if k in _FIELDS}
        if "steps" in values:
            values["steps"] = tuple(values["steps"] or ())
        extra = {k: v for k, v in data.items() if k not in _FIELDS}
        return cls(**values, extra=extra)

    # ---- the file

    @staticmethod
    def path(folder: str | os.PathLike[str]) -> Path:
        """Where the run.json of run folder ``folder`` is."""
        return Path(folder) / RUN_FILE

    @staticmethod
    def exists(folder: str | os.PathLike[str]) -> bool:
        """Whether ``folder`` holds a run.json (is a run folder, finished or not)."""
        return RunInfo.path(folder).is_file()

    @classmethod
    def read(cls, folder: str | os.PathLike[str]) -> RunInfo:
        """The run.json of run folder ``folder``.

        Raises
        ------
        ParityError
            The file is missing, unreadable or not a JSON object; the message names it
            and says to start the run again.
        """
        path = cls.path(folder)
        if not path.is_file():
            raise ParityError(
                f"{folder}: no {RUN_FILE} to resume from; start the run again without --resume"
            )
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise ParityError(f"{path}: unreadable ({e}); start the run again") from None
        if not isinstance(data, dict):
            raise ParityError(f"{path}: not a parity {RUN_FILE}; start the run again")
        return cls.from_json(data)

    def write(self, folder: str | os.PathLike[str]) -> Path:
        """Write run.json into ``folder`` atomically (a killed run leaves the old or the
        new file, never half of one); returns its path."""
        path = self.path(folder)
        atomic_write_text(path, self.to_text())
        return path

    def to_text(self) -> str:
        """run.json's text, as :meth:`write` writes it."""
        return json.dumps(self.to_json(), indent=2)


_FIELDS = frozenset(f.name for f in fields(RunInfo)) - {"extra"}
#: Keys written only once set (an absent key reads as None).
_WHEN_SET = frozenset(
    {
        "requests",
        "unmatched_prompts",
        "unmatched_previews",
        "served_missing",
        "counts",
        "served_drift",
        "worker",
        "attempts",
    }
)
#: Keys in every run.json, null or not.
_ALWAYS = _FIELDS - _WHEN_SET
