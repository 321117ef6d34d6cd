"""Test support: tiny deterministic Z-Image checkpoints and ai-toolkit-format LoRA files.

`parity.zimage.tiny` builds random-weight Z-Image checkpoints in diffusers format that
render in well under a second on a CPU; `parity.testing.lora` writes LoRA files with the
keys and metadata ai-toolkit writes. Both are deterministic: the same arguments give the
same bytes.
"""

from __future__ import annotations

from typing import Any

__all__ = ["build_tiny_zimage", "write_aitk_lora", "write_foreign_lora"]


def __getattr__(name: str) -> Any:
    # Lazy, so that ``python -m parity.zimage.tiny`` does not import the module twice.
    if name == "build_tiny_zimage":
        from parity.zimage.tiny import build_tiny_zimage

        return build_tiny_zimage
    if name in ("write_aitk_lora", "write_foreign_lora"):
        from parity.testing import lora

        return getattr(lora, name)
    raise AttributeError(f"module 'parity.testing' has no attribute {name!r}")
