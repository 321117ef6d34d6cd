"""LoRA files: reading them safely and what they hold.

A LoRA file is a safetensors state dict. parity reads two kinds of low-rank update, each
per module of the transformer:

- LoRA: ``<module>.lora_A.weight`` / ``.lora_B.weight`` (PEFT, what ai-toolkit writes for
  Z-Image) or ``.lora_down.weight`` / ``.lora_up.weight`` (kohya), optionally with an
  ``.alpha`` key; the delta is ``(alpha / rank) B A`` (scale 1 without an alpha key, which
  is every ai-toolkit Z-Image LoRA: it writes PEFT format with alpha equal to the rank,
  whatever ``linear_alpha`` the config says).
- LoKr: ``<module>.lokr_w1`` / ``.lokr_w2`` (or their ``_a``/``_b`` factors) and
  ``.alpha``; the delta is ``kron(w1, w2)`` times ``alpha / rank`` for decomposed factors
  and 1 for full ones (ai-toolkit's UI default ``lokr_full_rank`` stores alpha 1e10 and
  means scale 1). The server's diffusers loads both the same way (measured: its PEFT
  LoKr delta equals ``kron(w1, w2)`` exactly).

:func:`audit_keys` says, from the key names alone, what the server's diffusers 0.42.1
loader does with a file: which keys it takes, which it drops and why, and whether it can
load the format at all. :class:`ModuleDelta` holds one module's update with ai-toolkit's
arithmetic for merging it and for running it beside the base layer.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING

from parity.errors import PICKLED_SUFFIXES, LoraError

if TYPE_CHECKING:
    import torch

#: Key prefixes of transformer modules in LoRA files (ai-toolkit writes the first).
TRANSFORMER_PREFIXES = ("diffusion_model.", "transformer.", "base_model.model.")
#: Key prefixes of text-encoder modules.
TEXT_ENCODER_PREFIXES = ("text_encoder.", "te.", "lora_te")

_LORA_SUFFIXES = {
    ".lora_A.weight": "down",
    ".lora_B.weight": "up",
    ".lora_down.weight": "down",
    ".lora_up.weight": "up",
}
_LOKR_SUFFIXES = (".lokr_w1", ".lokr_w2", ".lokr_w1_a", ".lokr_w1_b", ".lokr_w2_a", ".lokr_w2_b")
_DORA_MARKERS = ("dora_scale", "lora_magnitude_vector")


class LoraFormat(StrEnum):
    """The kind of low-rank update a module holds."""

    LORA = "lora"
    LOKR = "lokr"


# --------------------------------------------------------------------------- files


@dataclass(frozen=True)
class Header:
    """The JSON header of a safetensors file: tensor names with dtype and shape, metadata."""

    tensors: Mapping[str, tuple[str, tuple[int, ...]]]
    metadata: Mapping[str, str]


def read_header(path: str | Path) -> Header:
    """Read a safetensors file's header alone: nothing is loaded, no tensor library imported,
    nothing is unpickled.

    Raises
    ------
    ValueError
        The file is too short, its header length implausible, truncated or not JSON.
    """
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise ValueError("file shorter than a safetensors header")
        size = int.from_bytes(head, "little")
        if size <= 0 or size > 100_000_000:
            raise ValueError(f"implausible safetensors header length {size}")
        raw = f.read(size)
    if len(raw) < size:
        raise ValueError("truncated safetensors header")
    header = json.loads(raw)
    if not isinstance(header, dict):
        raise ValueError("safetensors header is not a JSON object")
    metadata = header.pop("__metadata__", None) or {}
    tensors = {
        str(name): (str(info.get("dtype")), tuple(int(n) for n in info.get("shape", ())))
        for name, info in header.items()
        if isinstance(info, dict)
    }
    return Header(tensors, {str(k): str(v) for k, v in metadata.items()})


def read_lora(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a LoRA state dict from safetensors, refusing pickled formats.

    Raises
    ------
    LoraError
        Pickled suffix, missing, empty, truncated or non-safetensors file, NaN/inf values.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    if path.suffix.lower() in PICKLED_SUFFIXES:
        raise LoraError(
            f"{path}: pickled checkpoint formats ({path.suffix}) are refused; "
            "convert the LoRA to .safetensors"
        )
    if not path.is_file():
        raise LoraError(f"{path}: LoRA file not found")
    if path.stat().st_size == 0:
        raise LoraError(f"{path}: LoRA file is empty (0 bytes)")
    try:
        # safetensors parses a JSON header and raw buffers; it never unpickles anything.
        state = load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise LoraError(f"{path}: {_not_safetensors(path, e)}") from None
    if not state:
        raise LoraError(f"{path}: safetensors file holds no tensors")
    for key, tensor in state.items():
        if tensor.is_floating_point() and not bool(tensor.isfinite().all()):
            raise LoraError(f"{path}: tensor {key} contains NaN or inf values")
    return state


def _not_safetensors(path: Path, error: Exception) -> str:
    """What a file that safetensors could not parse looks like, for the error message.

    Only called after parsing failed: the first bytes of a valid safetensors file are a
    little-endian header length, which may by chance start with the same bytes as a zip
    archive or a pickle, so those are never judged by their first bytes alone.
    """
    with open(path, "rb") as f:
        head = f.read(8)
    if head[:4] == b"PK\x03\x04":
        return "a zip archive (torch.save format, which holds pickles), not safetensors; refused"
    if head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"):
        return "a pickle (legacy torch.save format), not safetensors; refused, never unpickled"
    return f"not a readable safetensors file, truncated or corrupt ({error})"


# ------------------------------------------------------------------------ key audit


def strip_prefix(name: str) -> str:
    """A module name without the transformer prefix of LoRA keys."""
    for prefix in TRANSFORMER_PREFIXES:
        if name.startswith(prefix):
            return name[len(prefix) :]
    return name


def module_and_part(key: str) -> tuple[str, str] | None:
    """``(module, part)`` of a LoRA or LoKr key, part one of down/up/alpha/lokr_*."""
    for suffix, part in _LORA_SUFFIXES.items():
        if key.endswith(suffix):
            return key[: -len(suffix)], part
    for suffix in _LOKR_SUFFIXES:
        if key.endswith(suffix):
            return key[: -len(suffix)], suffix[1:]
    if key.endswith(".alpha"):
        return key[: -len(".alpha")], "alpha"
    return None


@dataclass(frozen=True)
class KeyAudit:
    """What the server's diffusers loader does with a LoRA file, from its key names.

    Attributes
    ----------
    formats:
        Formats found (``lora``, ``lokr``).
    modules:
        Transformer modules the file targets (prefix stripped), sorted.
    taken:
        Keys the loader takes.
    dropped:
        Reason -> number of keys the loader drops for it.
    refused:
        Why the loader refuses the whole file (it raises), or None when it loads it.
    alpha:
        How alpha is applied: None without ``.alpha`` keys (scale 1).
    """

    formats: tuple[LoraFormat, ...]
    modules: tuple[str, ...]
    taken: int
    dropped: Mapping[str, int] = field(default_factory=dict)
    refused: str | None = None
    alpha: str | None = None

    @property
    def loadable(self) -> bool:
        return self.refused is None

    def summary(self) -> str:
        """One line for ``parity inspect``."""
        kinds = "+".join(map(str, self.formats)) or "no LoRA or LoKr"
        text = f"{kinds}, {len(self.modules)} modules; the server takes {self.taken} keys"
        if self.dropped:
            text += ", drops " + ", ".join(f"{n} ({why})" for why, n in self.dropped.items())
        if self.alpha:
            text += f"; {self.alpha}"
        if self.refused:
            text += f"; the server cannot load it: {self.refused}"
        return text


def audit_keys(keys: Iterable[str]) -> KeyAudit:
    """Audit LoRA key names against the server's loader (diffusers 0.42.1
    ``ZImageLoraLoaderMixin``, as measured on the tiny model).

    - DoRA magnitudes (``dora_scale``) are dropped with a warning; the rest loads as LoRA.
    - PEFT text-encoder keys (``text_encoder.``) are converted but reach no transformer
      module: dropped.
    - Keys in another format (LoHa ``hada_``, full weights, kohya ``lora_te_`` text-encoder
      keys) make the loader raise: the whole file is refused.
    - Keys with any other prefix load but match no module (see the engine's counts).
    """
    keys = list(keys)
    dropped: dict[str, int] = {}
    formats: set[LoraFormat] = set()
    modules: set[str] = set()
    alpha = False
    foreign: list[str] = []
    taken = 0
    for key in keys:
        if any(marker in key for marker in _DORA_MARKERS):
            why = "DoRA magnitudes, which the server's diffusers drops"
            dropped[why] = dropped.get(why, 0) + 1
            continue
        parsed = module_and_part(key)
        if parsed is None or key.startswith("lora_te"):
            foreign.append(key)
            continue
        module, part = parsed
        if part == "alpha":
            alpha = True
        elif part.startswith("lokr"):
            formats.add(LoraFormat.LOKR)
        else:
            formats.add(LoraFormat.LORA)
        if module.startswith(TEXT_ENCODER_PREFIXES):
            why = "text-encoder keys: the server applies the transformer's LoRA only"
            dropped[why] = dropped.get(why, 0) + 1
            continue
        taken += 1
        if part != "alpha":
            modules.add(strip_prefix(module).removeprefix("lora_unet_"))
    refused = None
    if foreign:
        example = ", ".join(sorted(foreign)[:2])
        refused = (
            f"{len(foreign)} keys in a format it does not load (e.g. {example}); it loads "
            "LoRA (lora_A/lora_B, lora_down/lora_up) and LoKr (lokr_w1/lokr_w2) keys"
        )
    how = None
    if alpha:
        how = (
            "alpha keys: LoKr full factors run at scale 1, LoRA at alpha / rank"
            if LoraFormat.LOKR in formats
            else "alpha keys: the delta is scaled by alpha / rank"
        )
    return KeyAudit(
        formats=tuple(f for f in LoraFormat if f in formats),
        modules=tuple(sorted(modules)),
        taken=taken,
        dropped=dropped,
        refused=refused,
        alpha=how,
    )


def describe_dtype(header: Header) -> str | None:
    """The dtype of a file's LoRA tensors (``BF16``, ``F32``...), or None when mixed/none."""
    dtypes = {dtype for name, (dtype, _) in header.tensors.items() if not name.endswith(".alpha")}
    return dtypes.pop() if len(dtypes) == 1 else None
