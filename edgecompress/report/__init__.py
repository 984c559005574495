"""The run's outputs for people and CI: report.html, latency baseline, regression test, check."""
from __future__ import annotations

from edgecompress.report.html import write_report_html

__all__ = ["write_report_html"]
