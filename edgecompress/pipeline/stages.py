"""The stages in order. Each has a `name`, a one-line `what`, and `run(ctx, out) -> StageOutput`:
it writes its files into `out` (a staging folder the run directory commits atomically) and
returns their names plus the small facts later stages and the report need (kept in the manifest,
so a resumed run restores them without redoing the stage).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from edgecompress.pipeline.context import Context


@dataclass
class StageOutput:
    files: dict[str, str] = field(default_factory=dict)   # artifact name -> path relative to `out`
    data: dict = field(default_factory=dict)


class Stage(Protocol):
    name: str
    what: str

    def run(self, ctx: Context, out: Path) -> StageOutput: ...


def all_stages() -> list[Stage]:
    from edgecompress.pipeline.stage_deploy import BuildStage, CalibrateStage, ExportStage
    from edgecompress.pipeline.stage_search import BaselineStage, PruneStage
    from edgecompress.pipeline.stage_train import FinetuneStage
    from edgecompress.pipeline.stage_verify import VerifyStage
    return [BaselineStage(), PruneStage(), FinetuneStage(), ExportStage(), CalibrateStage(), BuildStage(),
            VerifyStage()]
