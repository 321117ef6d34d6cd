"""Stage 1, the job: an ai-toolkit job folder read the way ai-toolkit reads it.

:mod:`parity.job.folder` reads config.yaml, the samples, checkpoints and previews;
:mod:`parity.job.lora_files` reads LoRA files safely and audits their keys.
"""

from parity.job.folder import (
    IMAGE_EXTS,
    Checkpoint,
    Job,
    Preview,
    SampleSpec,
    load_job_file,
    outside_path_error,
    parse_prompt_flags,
    read_job,
    reference_model_for,
    resolve_samples,
)

__all__ = [
    "IMAGE_EXTS",
    "Checkpoint",
    "Job",
    "Preview",
    "SampleSpec",
    "load_job_file",
    "outside_path_error",
    "parse_prompt_flags",
    "read_job",
    "reference_model_for",
    "resolve_samples",
]
