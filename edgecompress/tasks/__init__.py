"""Tasks other than classification: what a score, a loss and a distillation loss mean for them."""
from __future__ import annotations

from edgecompress.tasks.detection import DetectionTask, detection_map

__all__ = ["DetectionTask", "detection_map"]
