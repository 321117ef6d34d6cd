"""diffusers' ``ZImagePipeline`` across releases: what N steps and a guidance value mean.

Two behaviours of the pipeline changed between releases (read from the diffusers
history, ``src/diffusers/pipelines/z_image/pipeline_z_image.py``):

- CFG threshold: ``do_classifier_free_guidance`` is ``guidance_scale > 1`` before commit
  97c2c6e (2026-02-26, 0.37.0.dev0; first released in 0.37.0) and ``> 0`` from it on.
- Steps: before commit 32ecbe3 (2026-05-29, 0.39.0.dev0; first released in 0.39.0) the
  default schedule is ``linspace(1, 0, N)``, whose last step has zero length, so N steps
  make N-1 updates; from it on ``linspace(1, 1/N, N)``, N updates.

parity renders with the installed diffusers (``>= 0.42``: CFG for ``g > 0``, N updates).
A :class:`DiffusersEra` says how to make it behave like another release: the sigmas to
pass (:func:`parity.settings.legacy_sigmas` for N-1 eras) and the guidance to give it.
``parity --server-diffusers VERSION|COMMIT`` picks the reference side's era with
:func:`diffusers_era`; the preview side's comes with the ai-toolkit release
(:class:`parity.zimage.aitk.Era`).
"""

from __future__ import annotations

import functools
import re

from parity.errors import ParityError
from parity.family import DiffusersEra

#: The first release with ZImagePipeline.
FIRST_RELEASE = (0, 36, 0)
#: The first release whose CFG runs for ``g > 0`` (commit 97c2c6e).
CFG_ABOVE_ZERO_RELEASE = (0, 37, 0)
#: The first release whose N steps make N updates (commit 32ecbe3).
N_UPDATES_RELEASE = (0, 39, 0)


#: Commits whose pipeline behaviour was read from the diffusers history: (abbreviated
#: hash, version in setup.py, N-1 updates, CFG threshold).
KNOWN_COMMITS: tuple[tuple[str, str, bool, float], ...] = (
    ("97c2c6e397", "0.37.0.dev0", True, 0.0),  # the CFG threshold fix itself
    ("072d15ee42", "0.38.0.dev0", True, 0.0),  # runcomfy requirements-inference.txt
    ("dc8d903217", "0.38.0.dev0", True, 0.0),  # ai-toolkit 0.9.15 - 0.10.24
    ("32ecbe3836", "0.39.0.dev0", False, 0.0),  # the terminal-step fix itself
    ("c943837899", "0.39.0.dev0", False, 0.0),  # ai-toolkit 0.10.24 (late) and later
)

_VERSION = re.compile(r"^v?(\d+)\.(\d+)(?:\.(\d+))?(?:\.?(dev|rc|a|b)\d*)?(?:\+.*)?$")
_COMMIT = re.compile(r"^[0-9a-f]{7,40}$")


def era_of_commit(commit: str) -> DiffusersEra:
    """The era of a diffusers commit that parity knows (a prefix of 7+ hex digits)."""
    given = commit.lower()
    for known, version, legacy, threshold in KNOWN_COMMITS:
        if known.startswith(given) or given.startswith(known):
            return DiffusersEra(f"{known[:8]} ({version})", legacy, threshold)
    names = ", ".join(f"{c[:8]} ({v})" for c, v, _, _ in KNOWN_COMMITS)
    raise ParityError(
        f"--server-diffusers {commit}: not a diffusers commit parity knows ({names}); "
        "give the diffusers version the server runs instead (e.g. 0.38.0.dev0, 0.42.1)"
    )


def era_of_version(version: str) -> DiffusersEra:
    """The era of a diffusers version string (``0.42.1``, ``0.38.0.dev0``, ``v0.36.0``)."""
    match = _VERSION.match(version.strip())
    if not match:
        raise ParityError(
            f"--server-diffusers {version!r}: not a diffusers version or commit; give a "
            "version like 0.38.0.dev0 or 0.42.1, or a commit hash like 072d15ee"
        )
    v = (int(match.group(1)), int(match.group(2)), int(match.group(3) or 0))
    pre = match.group(4)
    label = version.strip().lstrip("v")
    if v < FIRST_RELEASE or (v == FIRST_RELEASE and pre):
        raise ParityError(
            f"--server-diffusers {version}: diffusers {label} has no ZImagePipeline "
            "(first released in 0.36.0)"
        )
    note = ""
    if v == CFG_ABOVE_ZERO_RELEASE and pre:
        note = "0.37.0 pre-releases before commit 97c2c6e ran CFG for g > 1; give the commit"
    elif v == N_UPDATES_RELEASE and pre:
        note = "0.39.0 pre-releases before commit 32ecbe3 made N-1 updates; give the commit"
    threshold = 1.0 if v < CFG_ABOVE_ZERO_RELEASE else 0.0
    return DiffusersEra(label, v < N_UPDATES_RELEASE, threshold, note)


@functools.cache
def diffusers_era(spec: str | None = None) -> DiffusersEra:
    """The era named by ``--server-diffusers`` (a version or a commit); None: installed.

    Raises
    ------
    ParityError
        Unparsable, unknown commit, or a release without ZImagePipeline.
    """
    if spec is None or not str(spec).strip():
        from parity.stack import installed_version

        installed = installed_version("diffusers")
        if installed is None:
            raise ParityError("diffusers is not installed; install parity's dependencies")
        era = era_of_version(installed)
        return DiffusersEra(f"{era.label} (installed)", era.legacy_sigmas, era.cfg_threshold)
    spec = str(spec).strip()
    if _COMMIT.match(spec.lower()) and not _VERSION.match(spec):
        return era_of_commit(spec)
    return era_of_version(spec)
