"""Exception types. Every message names the file (or setting) and what is wrong.

Every error parity raises on purpose is a :class:`ParityError`. The command line turns
the ones that make a run impossible (job, model, request, LoRA of a request) into exit
status 2 with their one-line message; per-preview ones become ``error`` rows.
"""

from __future__ import annotations

#: File suffixes of pickled formats (torch.save and friends). parity never opens them:
#: unpickling runs code from the file.
PICKLED_SUFFIXES = frozenset({".pt", ".pth", ".ckpt", ".bin", ".pkl"})


class ParityError(Exception):
    """Base class of every error parity raises on purpose."""


class JobError(ParityError):
    """The job as a whole cannot be used (missing or unparsable config, unknown arch)."""


class SampleError(ParityError):
    """One sample item of the job's sample config is unusable."""


class PreviewError(ParityError):
    """One preview image is unusable or does not belong to the sample list."""


class ImageReadError(PreviewError, ValueError):
    """An image file could not be read completely.

    Parameters
    ----------
    path : str or os.PathLike
        The file that failed.
    reason : str
        What is wrong with it.
    """

    def __init__(self, path: object, reason: str) -> None:
        self.path = str(path)
        self.reason = reason
        super().__init__(f"cannot read image {self.path}: {reason}")


class LoraError(ParityError):
    """A LoRA file is unusable: not safetensors, truncated, pickled, NaN, wrong keys."""


class LoraNotAppliedError(LoraError):
    """No key of the LoRA matches a module of the transformer."""


class RequestError(ParityError):
    """An API request breaks the reference server's schema."""


class UnboundRequestError(RequestError):
    """A request the user sent names a checkpoint of none of the jobs given."""


class RequestStepError(RequestError):
    """A request the user sent names a step the run leaves out (it would go unused)."""


class RenderError(ParityError):
    """A render failed or produced unusable pixels (NaN, inf)."""


class ModelError(ParityError):
    """Base class of model resolution and loading errors."""


class ModelMapError(ModelError, ValueError):
    """A model map entry is malformed; the message names its source."""


class ModelNotFoundError(ModelError, FileNotFoundError):
    """A checkpoint folder or a part of it is missing."""


class WrongCheckpointError(ModelError, ValueError):
    """A folder exists but does not hold a checkpoint of the job's model family."""


class NotZImageCheckpointError(WrongCheckpointError):
    """A folder exists but does not hold a Z-Image checkpoint."""


class ModelLoadError(ModelError):
    """A checkpoint was found (or named by hub id) but could not be loaded."""


class QuantizationError(ParityError, ValueError):
    """Base class of quantization errors."""


class UnknownQtypeError(QuantizationError):
    """The qtype is not one ai-toolkit knows."""


class QuantizationUnavailableError(QuantizationError):
    """The qtype is valid for ai-toolkit but cannot be reproduced here."""
