"""The stages in order (each one is described in `pipeline/stage.py`)."""
from __future__ import annotations

from edgecompress.pipeline.stage import Stage, StageOutput
from edgecompress.pipeline.stage_deploy import BuildStage, CalibrateStage, ExportStage
from edgecompress.pipeline.stage_search import BaselineStage, PruneStage
from edgecompress.pipeline.stage_train import FinetuneStage
from edgecompress.pipeline.stage_verify import VerifyStage

__all__ = ["Stage", "StageOutput", "all_stages"]


def all_stages() -> list[Stage]:
    return [BaselineStage(), PruneStage(), FinetuneStage(), ExportStage(), CalibrateStage(), BuildStage(),
            VerifyStage()]
