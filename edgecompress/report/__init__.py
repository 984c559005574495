"""The run's outputs for people and CI: report.html, latency baseline, regression test, check.

Importing this package needs nothing heavy: matplotlib, rich and the runtimes are imported inside
the functions that use them.
"""
from __future__ import annotations

from edgecompress.report.assemble import assemble_report, pruning_phrase, summary
from edgecompress.report.baseline import write_latency_baseline, write_regression_test
from edgecompress.report.html import write_report_html

_CHECK_NAMES = ("check_run", "check_main", "print_check", "open_run", "CheckResult", "NotRunnableHere")


def __getattr__(name: str):
    """The check's names, from their package `edgecompress.check` (which imports this one: a lazy
    re-export keeps the import one-way). Until cli.py imports them from there."""
    if name in _CHECK_NAMES:
        import edgecompress.check as check
        return getattr(check, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["assemble_report", "pruning_phrase", "summary", "write_report_html", "write_latency_baseline", "write_regression_test", "check_run", "check_main",
           "print_check", "open_run", "CheckResult", "NotRunnableHere"]
