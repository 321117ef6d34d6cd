"""Stage 8, report: what a run found, for people.

:mod:`parity.report.html` (report.html of one run, diff heatmaps) and
:mod:`parity.report.history` (the nightly history table, regressions, trend pages).
"""

from parity.report.html import render_template, write_diff_heatmap, write_report

__all__ = ["render_template", "write_diff_heatmap", "write_report"]
