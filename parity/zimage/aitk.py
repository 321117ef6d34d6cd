"""ai-toolkit's rules for sampling a Z-Image preview, stated once.

What ai-toolkit (ostris/ai-toolkit, ``toolkit/config_modules.py``,
``toolkit/models/base_model.py``, ``extensions_built_in/diffusion_models/z_image``) does
when it renders a training preview, as data and small functions: the sample config's
defaults, the size floors, the guidance it hands diffusers, the scheduler shift, and how
these changed between releases (:class:`Era`, DOMAIN table of section 5). The job reader
(:mod:`parity.job`) and the preview side (:mod:`parity.plan.sides`) apply them.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from parity.errors import QuantizationUnavailableError, UnknownQtypeError

#: SampleConfig's defaults, used where neither an item nor the sample section sets a key.
SAMPLE_DEFAULTS: dict[str, Any] = {
    "sampler": "ddpm",
    "width": 512,
    "height": 512,
    "neg": False,
    "seed": 0,
    "walk_seed": False,
    "guidance_scale": 7,
    "sample_steps": 20,
    "network_multiplier": 1,
    "format": "jpg",
}

#: FlowMatch shift ai-toolkit samples Z-Image with, whatever the checkpoint ships.
SCHEDULER_SHIFT = 3.0

#: Smallest preview side GenerateImageConfig allows, px.
MIN_SIZE = 64


def floor8(value: int) -> int:
    """GenerateImageConfig's size rule: floor to a multiple of 8, at least 64 (pixels)."""
    return max(MIN_SIZE, value - value % 8)


class Guidance(StrEnum):
    """How a release handed the sample's guidance ``g`` to diffusers."""

    #: ``max(0, g - 1)``: "CFG is 0 normalized" (0.10.21 and later).
    MINUS_ONE = "minus_one"
    #: ``g``, with the pipeline running CFG for ``g > 0`` (0.7.25 to 0.10.20).
    RAW = "raw"
    #: ``g``, with the pipeline running CFG only for ``g > 1`` (before 0.7.25).
    RAW_GT1 = "raw_gt1"


@dataclass(frozen=True)
class Era:
    """Preview semantics of one range of ai-toolkit releases (DOMAIN table, section 5).

    Attributes
    ----------
    version:
        The release the rules were chosen for (None: unknown).
    guidance:
        How the sample's guidance reached diffusers.
    size_multiple:
        The model's size floor, px (16, or 32 before 0.9.15).
    legacy_sigmas:
        True when N steps made N-1 updates (diffusers before 0.39).
    label, note:
        One line for reports; an ambiguity of the release, when there is one.
    """

    version: str | None
    guidance: Guidance
    size_multiple: int
    legacy_sigmas: bool
    label: str
    note: str = ""

    def pipeline_guidance(self, guidance_scale: float) -> float:
        """The guidance that makes the installed diffusers (CFG ``pos + g (pos - neg)`` for
        ``g > 0``) do what this release's did with ``guidance_scale``."""
        if self.guidance is Guidance.MINUS_ONE:
            return max(0.0, guidance_scale - 1.0)
        if self.guidance is Guidance.RAW_GT1:
            return guidance_scale if guidance_scale > 1.0 else 0.0
        return guidance_scale


def _version_tuple(version: str) -> tuple[int, ...]:
    parts = re.findall(r"\d+", version)
    return tuple(int(p) for p in parts[:3])


def era_for_version(version: str | None) -> Era:
    """The preview semantics of the ai-toolkit release that wrote a LoRA.

    Unknown or unparsable versions get the current semantics.
    """
    g = Guidance
    if not version or not re.match(r"^\d+\.\d+", version):
        return Era(version, g.MINUS_ONE, 16, False, "current (version unknown)")
    v = _version_tuple(version)
    if v < (0, 7, 25):
        return Era(version, g.RAW_GT1, 32, True, "<0.7.25: cfg g (runs for g>1), 32, N-1 updates")
    if v < (0, 9, 15):
        note = (
            "0.9.14 switched to 16 late in the release; 32 assumed" if v[:3] == (0, 9, 14) else ""
        )
        return Era(version, g.RAW, 32, True, "0.7.25-0.9.14: cfg g, 32, N-1 updates", note)
    if v < (0, 10, 21):
        return Era(version, g.RAW, 16, True, "0.9.15-0.10.20: cfg g, 16, N-1 updates")
    if v < (0, 10, 24):
        return Era(version, g.MINUS_ONE, 16, True, "0.10.21-0.10.23: cfg g-1, 16, N-1 updates")
    if v == (0, 10, 24):
        return Era(
            version,
            g.MINUS_ONE,
            16,
            False,
            "0.10.24: cfg g-1, 16, N updates",
            "0.10.24 shipped with both diffusers pins; N updates assumed",
        )
    return Era(version, g.MINUS_ONE, 16, False, ">=0.10.25: cfg g-1, 16, N updates")


def aitk_version_from_metadata(metadata: dict[str, str]) -> str | None:
    """The ai-toolkit release in a LoRA's safetensors metadata (``software`` JSON)."""
    software = metadata.get("software")
    if not software:
        return None
    try:
        info = json.loads(software)
    except (json.JSONDecodeError, TypeError):
        return None
    if isinstance(info, dict) and isinstance(info.get("version"), str):
        return info["version"]
    return None


# ------------------------------------------------------------------ quantization

#: optimum-quanto weight qtypes ai-toolkit passes through to quanto by name.
QUANTO_QTYPES: tuple[str, ...] = (
    "qfloat8",
    "qfloat8_e4m3fn",
    "qfloat8_e4m3fnuz",
    "qfloat8_e5m2",
    "qint8",
    "qint4",
    "qint2",
)

#: ai-toolkit qtypes handled by torchao.
TORCHAO_QTYPES: tuple[str, ...] = ("float8", "int8")

#: ai-toolkit qtypes handled by its own quantization backends.
AITK_BACKEND_QTYPES: tuple[str, ...] = (
    *(f"uint{bits}" for bits in range(2, 9)),
    "orbit2",
    "orbit3",
    "orbit4",
    "orbitvq2",
    "orbitvq3",
    "orbitvq4",
    "convrot4",
    "convrot8",
    "convrotbitnet",
    "convrotcomfyw4a4",
    *(f"convrotint{bits}" for bits in range(2, 9)),
    "nvfp4",
)


def parse_qtype(qtype: str) -> tuple[str, str | None]:
    """Split ai-toolkit's ``qtype`` into ``(qtype, accuracy recovery adapter or None)``.

    ai-toolkit accepts ``"uint3|ostris/accuracy_recovery_adapters/file.safetensors"``:
    the part after ``|`` is an adapter loaded beside the quantized weights.

    Raises
    ------
    UnknownQtypeError
        Empty qtype or empty adapter part.
    """
    name, sep, adapter = qtype.strip().partition("|")
    name, adapter = name.strip(), adapter.strip()
    if not name or (sep and not adapter):
        raise UnknownQtypeError(f"malformed qtype {qtype!r}, expected NAME or NAME|ADAPTER")
    return name, (adapter or None)


def check_qtype(qtype: str) -> str:
    """Return ai-toolkit's ``qtype`` when parity reproduces it, or raise.

    Raises
    ------
    QuantizationUnavailableError
        ai-toolkit-backend qtypes, or an accuracy recovery adapter.
    UnknownQtypeError
        A name ai-toolkit does not know.
    """
    name, adapter = parse_qtype(qtype)
    if adapter is not None:
        raise QuantizationUnavailableError(
            f"qtype {qtype!r} uses the accuracy recovery adapter {adapter!r} "
            "(ai-toolkit's own quantization plus an adapter); parity cannot reproduce it"
        )
    if name in QUANTO_QTYPES or name in TORCHAO_QTYPES:
        return name
    if name in AITK_BACKEND_QTYPES:
        raise QuantizationUnavailableError(
            f"qtype {name!r} uses ai-toolkit's own quantization backend, which parity does "
            "not reproduce"
        )
    raise UnknownQtypeError(
        f"unknown qtype {name!r}; known: {', '.join(QUANTO_QTYPES + TORCHAO_QTYPES)}, "
        "uint2..uint8 and ai-toolkit's custom backends"
    )


def preview_qtypes(model_config: Mapping[str, Any]) -> tuple[str | None, str | None]:
    """The qtypes ai-toolkit actually sampled with, from the job's ``model`` section.

    Returns ``(transformer qtype or None, text encoder qtype or None)``. Applies
    ai-toolkit's defaults (``quantize`` False, ``quantize_te`` = ``quantize``, ``qtype``
    and ``qtype_te`` ``qfloat8``) and its substitutions: ``qfloat8`` becomes torchao
    ``float8`` for both with ``layer_offloading``, and for the transformer with an
    ``assistant_lora_path``. The result may still be unavailable here; see
    :func:`check_qtype`.
    """
    quantize = bool(model_config.get("quantize", False))
    quantize_te = bool(model_config.get("quantize_te", quantize))
    qtype = model_config.get("qtype") or "qfloat8"
    qtype_te = model_config.get("qtype_te") or "qfloat8"
    if model_config.get("layer_offloading"):
        qtype = "float8" if qtype == "qfloat8" else qtype
        qtype_te = "float8" if qtype_te == "qfloat8" else qtype_te
    if model_config.get("assistant_lora_path") and qtype == "qfloat8":
        qtype = "float8"
    return (str(qtype) if quantize else None, str(qtype_te) if quantize_te else None)
