"""``parity`` command line (:func:`main`); ``python -m parity.cli`` runs it too."""

from parity.cli.main import build_parser, main

__all__ = ["build_parser", "main"]
