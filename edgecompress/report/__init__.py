"""The run's outputs for people and CI: report.html, latency baseline, regression test, check.

Importing this package needs nothing heavy: matplotlib, rich and the runtimes are imported inside
the functions that use them.
"""
from __future__ import annotations

from edgecompress.report.assemble import assemble_report, pruning_phrase, summary
from edgecompress.report.baseline import write_latency_baseline, write_regression_test
from edgecompress.report.check import CheckResult, NotRunnableHere, check_main, check_run, open_run, print_check
from edgecompress.report.html import write_report_html

__all__ = ["assemble_report", "pruning_phrase", "summary", "write_report_html", "write_latency_baseline", "write_regression_test", "check_run", "check_main",
           "print_check", "open_run", "CheckResult", "NotRunnableHere"]
