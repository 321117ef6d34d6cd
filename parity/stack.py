"""The library stack renders depend on: what is installed, what parity pins, how they differ.

Renders are bit-identical only within one machine and one stack; another diffusers,
transformers, peft, quantization library or torch can move pixels, another Pillow can
encode a JPEG differently, another scikit-image or torchmetrics can move scores. The
pins live in one place, ``parity/constraints.txt`` (the README's setup command installs
with it); this module reads it and the installed versions without importing any of them.
"""

from __future__ import annotations

import importlib.metadata
import platform
import re
import sys
from dataclasses import dataclass
from functools import cache
from pathlib import Path

#: Distributions whose versions can change a render, its encoding or its scores.
PIXEL_LIBRARIES: tuple[str, ...] = (
    "torch",
    "diffusers",
    "transformers",
    "peft",
    "safetensors",
    "optimum-quanto",
    "torchao",
    "pillow",
    "numpy",
    "scipy",
    "scikit-image",
    "torchmetrics",
)

CONSTRAINTS_FILE = Path(__file__).with_name("constraints.txt")

_PIN = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*==\s*([^\s;#]+)")


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


@cache
def pinned_versions() -> dict[str, str]:
    """``{distribution: version}`` of every ``name==version`` line of the constraints file."""
    pins: dict[str, str] = {}
    try:
        lines = CONSTRAINTS_FILE.read_text(encoding="utf-8").splitlines()
    except OSError:
        return pins
    for line in lines:
        match = _PIN.match(line)
        if match:
            pins[_canonical(match.group(1))] = match.group(2)
    return pins


def installed_version(name: str) -> str | None:
    """Version of an installed distribution, or None when it is not installed."""
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def _public(version: str | None) -> str | None:
    # torch's CPU wheel is "2.13.0+cpu": the local label names the build, not the version.
    return version.split("+", 1)[0] if version else version


@dataclass(frozen=True)
class LibraryVersion:
    """One library of the stack.

    Attributes
    ----------
    name : str
        Distribution name.
    installed : str or None
        Installed version (None: not installed).
    pinned : str or None
        Version in ``constraints.txt`` (None: not pinned).
    """

    name: str
    installed: str | None
    pinned: str | None

    @property
    def matches(self) -> bool:
        """True when the installed version is the pinned one (local build labels aside)."""
        return self.pinned is None or _public(self.installed) == self.pinned


def stack() -> tuple[LibraryVersion, ...]:
    """The pixel libraries with their installed and pinned versions."""
    pins = pinned_versions()
    return tuple(
        LibraryVersion(name, installed_version(name), pins.get(_canonical(name)))
        for name in PIXEL_LIBRARIES
    )


def stack_differences(libraries: tuple[LibraryVersion, ...] | None = None) -> list[str]:
    """``"name installed (pinned P)"`` for each library that differs from its pin."""
    libraries = stack() if libraries is None else libraries
    return [
        f"{lib.name} {lib.installed or 'not installed'} (pinned {lib.pinned})"
        for lib in libraries
        if not lib.matches
    ]


def stack_record() -> dict[str, object]:
    """JSON-ready record of the stack for run.json."""
    libraries = stack()
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "libraries": {lib.name: lib.installed for lib in libraries},
        "differs_from_pins": stack_differences(libraries),
    }


def stack_warning() -> str | None:
    """One line saying how the installed stack differs from the pins, or None."""
    differences = stack_differences()
    if not differences:
        return None
    return (
        f"this stack differs from parity's pins ({', '.join(differences)}): renders may "
        "differ from the documented results beyond float noise; see `parity env`"
    )


def runtime_record() -> dict[str, object]:
    """What the loaded torch runs on (imports torch: only for ``parity env`` and runs)."""
    import torch

    record: dict[str, object] = {
        "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.is_available(),
    }
    if torch.cuda.is_available():
        record["cuda_devices"] = [
            torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())
        ]
        record["cuda_version"] = torch.version.cuda
    return record


def format_stack() -> str:
    """The stack as a table for ``parity env``."""
    rows = [("library", "installed", "pinned", "")]
    for lib in stack():
        rows.append(
            (lib.name, lib.installed or "-", lib.pinned or "-", "" if lib.matches else "DIFFERS")
        )
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    lines = [
        "  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row[:3])) + f"  {row[3]}"
        for row in rows
    ]
    lines.insert(1, "-" * (sum(widths) + 4))
    lines.append(f"python {platform.python_version()} on {platform.platform()}")
    lines.append(f"pins: {CONSTRAINTS_FILE}")
    return "\n".join(line.rstrip() for line in lines)


if __name__ == "__main__":  # pragma: no cover
    print(format_stack())
    sys.exit(0)
