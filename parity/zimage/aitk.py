"""ai-toolkit's rules for sampling a Z-Image preview, stated once.

What ai-toolkit (ostris/ai-toolkit, ``toolkit/models/base_model.py``,
``extensions_built_in/diffusion_models/z_image``) does when it renders a Z-Image training
preview, as data and small functions: the scheduler shift, the guidance it hands diffusers
and the size floor in each range of releases (:class:`parity.family.Era`, DOMAIN table of
section 5), and the qtypes it samples with. The rules every family shares (sample
defaults, the floor to 8, qtype names) are in :mod:`parity.aitk`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from parity.family import Era, Guidance

#: FlowMatch shift ai-toolkit samples Z-Image with, whatever the checkpoint ships.
SCHEDULER_SHIFT = 3.0


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
