"""What a run is asked to do (:class:`RunOptions`) and what it found (:class:`RunSummary`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from parity.correct import CorrectedRequests
from parity.job import Job
from parity.plan import (
    Match,
    Steps,
)
from parity.results import ResultRow, exit_code, served_drift, verdict_counts
from parity.settings import DEFAULT_CONFIRM_MARGIN, Dtype

if TYPE_CHECKING:
    from parity.compare import Thresholds


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
    server_diffusers:
        The diffusers release the server runs, a version or a commit
        (``--server-diffusers``; None: the installed one); each job's family says what it
        means (:attr:`parity.family.Family.server_era`).
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
    server_diffusers: str | None = None
    match: Match = "index"
    lora_root: Path | None = None


@dataclass
class RunSummary:
    out_dir: Path
    rows: list[ResultRow]
    corrected: dict[int, CorrectedRequests] = field(default_factory=dict)

    @property
    def counts(self) -> dict[str, int]:
        return verdict_counts(self.rows)

    @property
    def served_drift(self) -> int:
        """Rows whose served image is not parity's reference render."""
        return served_drift(self.rows)

    @property
    def exit_code(self) -> int:
        return exit_code(self.rows)


def utc_now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def default_out_dir(job: Job, root: str | Path = "reports") -> Path:
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
    return Path(root) / job.name / stamp
