"""ai-toolkit's rules that every model family shares, stated once.

What ai-toolkit (ostris/ai-toolkit, ``toolkit/config_modules.py``, ``toolkit/util/quantize.py``)
does the same whatever the model: the sample config's defaults, the floor of a preview's
size to 8, where a checkpoint records the release that wrote it, and which quantization
types exist and which of them parity reproduces. Each family's own preview rules are in its
folder (``parity/zimage/aitk.py``, ``parity/flux/aitk.py``).
"""

from __future__ import annotations

import json
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
    "num_frames": 1,
    "fps": 16,
}

#: Quality of the animated WebP ai-toolkit writes a video preview as (``save_image``:
#: ``duration = 1000 // fps`` ms per frame, ``loop=0``); a one-frame item of a video
#: sample block is a still WebP at Pillow's default quality, which is the same.
PREVIEW_WEBP_QUALITY = 80

#: Smallest preview side GenerateImageConfig allows, px.
MIN_SIZE = 64


def floor8(value: int) -> int:
    """GenerateImageConfig's size rule: floor to a multiple of 8, at least 64 (pixels)."""
    return max(MIN_SIZE, value - value % 8)


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
