"""Stage 8, report: what a run found, for people.

:mod:`parity.report.html` (report.html of one run, diff heatmaps),
:mod:`parity.report.history` (the nightly history table, regressions, trend pages) and
:mod:`parity.report.text` (what the command line prints of a preview explained).
"""

from parity.report.html import render_template, write_diff_heatmap, write_report

__all__ = ["render_template", "write_diff_heatmap", "write_report"]
