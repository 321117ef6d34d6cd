"""Logging of parity's processes: the command line's and its workers' alike."""

from __future__ import annotations

import logging

#: Libraries whose INFO and WARNING lines are progress chatter for parity's users (model
#: loading, deprecations); they are shown from ERROR on, or with ``-vv``.
NOISY_LOGGERS: tuple[str, ...] = ("diffusers", "transformers", "peft", "torchao")


def configure_logging(level: int, *, process: str = "") -> None:
    """Log at ``level`` to stderr, the :data:`NOISY_LOGGERS` from ERROR on (or ``level``
    when it is higher); ``process`` (e.g. ``"worker"``) is named in every line."""
    where = f" ({process})" if process else ""
    logging.basicConfig(level=level, format=f"%(levelname)s %(name)s{where}: %(message)s")
    for name in NOISY_LOGGERS:
        logging.getLogger(name).setLevel(max(level, logging.ERROR))
