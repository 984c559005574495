"""What one `compress check` found: its comparisons, the verdict, the printed table."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

EXIT_OK, EXIT_REGRESSION, EXIT_UNMEASURED = 0, 1, 3


@dataclass(frozen=True)
class Comparison:
    """One figure now against the run's, and its limit = the run's x (1 + tolerance).

    `judged` says how a regression is called: "point" (now > limit: a ratio, whose drift cancels;
    an estimate, which has no noise; a remote median, whose tool gives no interval) or "interval"
    (low > limit: an absolute time on this machine, which drifts, is a regression only when its
    95 % interval lies wholly above the limit)."""
    what: str
    unit: Literal["x", "ms"]
    baseline: float
    now: float
    limit: float
    low: float | None = None
    high: float | None = None
    judged: Literal["point", "interval"] = "point"
    how: str = ""                    # how `now` was obtained, e.g. "side by side, 40 blocks, precise"

    @property
    def ok(self) -> bool:
        if self.judged == "interval" and self.low is not None:
            return self.low <= self.limit
        return self.now <= self.limit

    def now_text(self) -> str:
        spec = ".3f" if self.unit == "x" else ".4f"
        interval = "no interval" if self.low is None else f"[{self.low:{spec}}, {self.high:{spec}}]"
        return f"{self.now:{spec}}{self.unit if self.unit == 'x' else ' ms'} {interval}"

    def line(self) -> str:
        spec = ".3f" if self.unit == "x" else ".4f"
        unit = "x" if self.unit == "x" else " ms"
        rule = "its interval's low end" if self.judged == "interval" and self.low is not None else "now"
        verdict = "ok" if self.ok else "REGRESSION"
        return (f"{self.what}: now {self.now_text()} vs limit {self.limit:{spec}}{unit} = the run's "
                f"{self.baseline:{spec}}{unit} x (1 + tolerance) [{rule} judged; {self.how}]: {verdict}")


@dataclass
class CheckResult:
    """Baseline vs now for one run directory."""
    run_dir: Path
    target: str
    precision: str
    timed: str                          # "side by side here" | "here" | "over ssh" | "estimated"
    tolerance: float
    run_device: str                     # the device the run timed on, as its probe names it
    device: str = ""                    # the device timed on now, as the probe names it
    comparisons: list[Comparison] = field(default_factory=list)
    unmeasured: str | None = None       # why nothing was compared (then no comparison is made)
    accept_unmeasured: bool = False     # the user's explicit "a check that compares nothing passes"
    outputs_max_diff: float | None = None
    outputs_tol: float | None = None
    notes: list[str] = field(default_factory=list)
    threads: int | None = None
    baseline_threads: int | None = None

    @property
    def latency_ok(self) -> bool:
        if self.unmeasured is not None or not self.comparisons:
            return self.accept_unmeasured
        return all(c.ok for c in self.comparisons)

    @property
    def outputs_ok(self) -> bool:
        return self.outputs_max_diff is None or self.outputs_max_diff <= self.outputs_tol

    @property
    def passed(self) -> bool:
        return self.latency_ok and self.outputs_ok

    @property
    def exit_code(self) -> int:
        if not self.outputs_ok or (self.comparisons and not all(c.ok for c in self.comparisons)):
            return EXIT_REGRESSION
        return EXIT_OK if self.latency_ok else EXIT_UNMEASURED

    @property
    def unmeasurable(self) -> bool:
        """Regression tests written before edgecompress.check read this name (and skip on it)."""
        return self.unmeasured is not None

    def comparison(self, what_starts: str) -> Comparison | None:
        return next((c for c in self.comparisons if c.what.startswith(what_starts)), None)

    def message(self) -> str:
        """What a person reads: each comparison with its verdict, or why nothing was compared."""
        if self.unmeasured is not None or not self.comparisons:
            why = self.unmeasured or "nothing to compare"
            if self.accept_unmeasured:
                return f"latency NOT checked ({why}); passing because --accept-unmeasured was given"
            return (f"LATENCY NOT CHECKED: {why}. A check that compares nothing does not pass; "
                    f"add --accept-unmeasured (EDGECOMPRESS_ACCEPT_UNMEASURED=1 for pytest) to accept that")
        head = "latency ok" if self.latency_ok else "LATENCY REGRESSION"
        body = "; ".join(c.line() for c in self.comparisons)
        return f"{head} [{self.target}, {self.precision}, timed {self.timed} on {self.device}]: {body}"


def print_check(result: CheckResult, *, console: Any = None) -> None:
    """The table of baseline vs now, the notes, then the verdict line."""
    from rich.console import Console
    from rich.markup import escape  # device names may hold [brackets]
    from rich.table import Table
    console = console or Console()
    table = Table(title=f"compress check {result.run_dir}", title_justify="left")
    for col, justify in (("", "left"), ("run", "right"), ("now", "right"), ("limit / verdict", "left")):
        table.add_column(col, justify=justify)
    for c in result.comparisons:
        unit = "x" if c.unit == "x" else " ms"
        spec = ".3f" if c.unit == "x" else ".4f"
        table.add_row(escape(c.what), f"{c.baseline:{spec}}{unit}", escape(c.now_text()),
                      f"<= {c.limit:{spec}}{unit}: " + ("[green]ok" if c.ok else "[red]REGRESSION"))
    if result.unmeasured is not None:
        table.add_row("latency", "", "not timed", escape(result.unmeasured))
    table.add_row("tolerance", f"{result.tolerance:g}", "", f"limit = the run's figure x {1 + result.tolerance:g}")
    table.add_row("threads", _threads(result.baseline_threads), _threads(result.threads), "")
    table.add_row("device", escape(result.run_device), escape(result.device or "-"), escape(f"timed {result.timed}"))
    outputs = ("not checked" if result.outputs_max_diff is None else
               f"<= {result.outputs_tol:.3g}: " + ("[green]ok" if result.outputs_ok else "[red]CHANGED"))
    table.add_row("outputs max abs diff", "0", "-" if result.outputs_max_diff is None else
                  f"{result.outputs_max_diff:.3g}", outputs)
    console.print(table)
    for note in result.notes:
        console.print(f"note: {note}", highlight=False, markup=False)
    console.print(result.message(), style="bold green" if result.passed else "bold red", highlight=False, markup=False)
    if not result.outputs_ok:
        console.print(f"OUTPUTS CHANGED: max abs diff {result.outputs_max_diff:.3g} > "
                      f"{result.outputs_tol:.3g} on the stored inputs", style="bold red", highlight=False)


def _threads(threads: int | None) -> str:
    return "default" if threads is None else str(threads)
