"""`compress check RUN_DIR` and the generated regression test: is the run's engine still as fast,
timed the way the run timed it? A second command, not report rendering: it reads a run directory
(trusting nothing in it, check/runfiles.py), loads the engine (check/engine.py) and compares.

    from edgecompress.check import main      # compress check's arguments -> exit code
    result = check_run("runs/NAME")          # CheckResult: comparisons, unmeasured, outputs
"""
from __future__ import annotations

from edgecompress.check.command import check_main, main
from edgecompress.check.engine import NotRunnableHere, RunEngine, check_run, load_engine, open_run
from edgecompress.check.result import EXIT_UNMEASURED, CheckResult, Comparison, print_check

__all__ = ["main", "check_main", "check_run", "open_run", "load_engine", "RunEngine", "NotRunnableHere",
           "CheckResult", "Comparison", "print_check", "EXIT_UNMEASURED"]
