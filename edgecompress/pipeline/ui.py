"""What the user sees while a run works: one line per stage, progress bars on long work (stderr)."""
from __future__ import annotations

import sys
import time
from contextlib import contextmanager
from typing import Iterator

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn


class UI:
    """Silent on ranks other than 0 under torchrun; everything goes to stderr except the summary."""

    def __init__(self, *, quiet: bool = False) -> None:
        self.quiet = quiet
        self.console = Console(stderr=True, highlight=False, soft_wrap=True)

    def say(self, text: str) -> None:
        if not self.quiet:
            self.console.print(text, markup=False)

    def note(self, text: str) -> None:
        if not self.quiet:
            self.console.print(f"  note: {text}", style="yellow", markup=False)

    @contextmanager
    def stage(self, name: str, what: str) -> Iterator[None]:
        self.say(f"▶ {name}: {what}")
        start = time.perf_counter()
        yield
        self.say(f"  {name} done in {time.perf_counter() - start:.1f} s")

    @contextmanager
    def progress(self, description: str, total: int | None) -> Iterator["Bar"]:
        if self.quiet or not total:
            yield Bar(None, None)
            return
        if not self.console.is_terminal:   # a log file gets one line, so long work is not silence
            self.say(f"  {description} ({total}) ...")
        bar = Progress(TextColumn("  {task.description}"), BarColumn(), MofNCompleteColumn(),
                       TimeElapsedColumn(), TextColumn("{task.fields[info]}"), console=self.console,
                       transient=not self.console.is_terminal, disable=not self.console.is_terminal)
        with bar:
            task = bar.add_task(description, total=total, info="")
            yield Bar(bar, task)


class Bar:
    def __init__(self, progress: Progress | None, task) -> None:
        self._p, self._t = progress, task

    def update(self, completed: int | None = None, *, advance: int = 0, info: str = "") -> None:
        if self._p is None:
            return
        if completed is not None:
            self._p.update(self._t, completed=completed, info=info)
        else:
            self._p.update(self._t, advance=advance, info=info)


def summary_line(text: str) -> None:
    print(text, file=sys.stdout, flush=True)
