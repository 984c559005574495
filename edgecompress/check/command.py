"""`compress check RUN_DIR`: its arguments, the printed table and the exit code.

Exit codes: 0 every comparison within its limit and the outputs unchanged; 1 a regression (or
changed outputs); 2 a user error (a damaged run directory, a bad flag: one line naming the file
and the cause); 3 nothing was compared (the run cannot be timed here) and --accept-unmeasured
was not given.
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import NoReturn, Sequence

from edgecompress.check.engine import check_run
from edgecompress.check.result import print_check
from edgecompress.errors import UserError


class _Parser(argparse.ArgumentParser):
    """argparse prints usage and exits; here a bad flag is a UserError like any other."""

    def error(self, message: str) -> NoReturn:
        raise UserError(message, f"see `{self.prog} --help`")


def parser() -> argparse.ArgumentParser:
    p = _Parser(prog="compress check", description="Re-time a run's engine the way the run timed it and "
                                                   "compare with what the run recorded.")
    p.add_argument("run_dir")
    p.add_argument("--tolerance", type=float, help="allowed slowdown, e.g. 0.15 = 15 %% (default: the baseline's)")
    p.add_argument("--threads", type=int, help="measure with this many threads instead of the run's")
    p.add_argument("--accept-unmeasured", action="store_true",
                   help="pass (exit 0) when this machine cannot time the run; by default that exits 3")
    return p


def main(argv: Sequence[str]) -> int:
    """`compress check ARGV...`; UserErrors propagate (the CLI prints them and exits 2)."""
    args = parser().parse_args(list(argv))
    return check_main(args.run_dir, tolerance=args.tolerance, threads=args.threads,
                      accept_unmeasured=args.accept_unmeasured)


def check_main(run_dir: str | Path, *, tolerance: float | None = None, threads: int | None = None,
               accept_unmeasured: bool = False) -> int:
    """Check, print the table, return the exit code (see the module docstring)."""
    result = check_run(run_dir, tolerance=tolerance, threads=threads, accept_unmeasured=accept_unmeasured)
    print_check(result)
    return result.exit_code
