"""What a stage is: a `name`, a one-line `what`, and `run(ctx, out) -> StageOutput`.

A stage writes its files into `out` (a staging folder the run directory commits atomically) and
returns their names plus its typed record (pipeline/records.py): the small facts later stages and
the report read as `ctx.results.<stage>.<field>`, kept in the manifest so a resumed run restores
them without redoing the stage. The stage modules import this module; `stages/__init__.py`
imports them (the list in order), so nothing imports in a circle.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from edgecompress.pipeline.records import Record

if TYPE_CHECKING:
    from edgecompress.pipeline.context import Context


@dataclass
class StageOutput:
    files: dict[str, str] = field(default_factory=dict)   # artifact name -> path relative to `out`
    data: Record | dict = field(default_factory=dict)   # the stage's record (a dict: a test's own stage)


class Stage(Protocol):
    name: str
    what: str

    def run(self, ctx: "Context", out: Path) -> StageOutput: ...
