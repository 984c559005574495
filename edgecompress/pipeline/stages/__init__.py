"""The stages in order, one module each (what a stage is: `pipeline/stage.py`)."""
from __future__ import annotations

from edgecompress.pipeline.stage import Stage, StageOutput
from edgecompress.pipeline.stages.baseline import BaselineStage
from edgecompress.pipeline.stages.build import BuildStage
from edgecompress.pipeline.stages.calibrate import CalibrateStage
from edgecompress.pipeline.stages.export import ExportStage
from edgecompress.pipeline.stages.finetune import FinetuneStage
from edgecompress.pipeline.stages.prune import PruneStage
from edgecompress.pipeline.stages.verify import VerifyStage

__all__ = ["Stage", "StageOutput", "all_stages"]


def all_stages() -> list[Stage]:
    return [BaselineStage(), PruneStage(), FinetuneStage(), ExportStage(), CalibrateStage(), BuildStage(),
            VerifyStage()]
