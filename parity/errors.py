"""Exception types. Every message names the file (or setting) and what is wrong."""

from __future__ import annotations


class ParityError(Exception):
    """Base class of every error parity raises on purpose."""


class JobError(ParityError):
    """The job as a whole cannot be used (missing or unparsable config, unknown arch)."""


class SampleError(ParityError):
    """One sample item of the job's sample config is unusable."""


class PreviewError(ParityError):
    """One preview image is unusable or does not belong to the sample list."""


class LoraError(ParityError):
    """A LoRA file is unusable: not safetensors, truncated, pickled, NaN, wrong keys."""


class LoraNotAppliedError(LoraError):
    """No key of the LoRA matches a module of the transformer."""


class RequestError(ParityError):
    """An API request breaks the reference server's schema."""


class RenderError(ParityError):
    """A render failed or produced unusable pixels (NaN, inf)."""
