"""Tasks: what a score, a training objective and a batch mean for classification, detection, or a
user's metric (tasks/base.py); the pipeline holds one, chosen by `select_task`."""
from __future__ import annotations

from edgecompress.tasks.base import Task, points, torch_runner
from edgecompress.tasks.classification import ClassificationTask
from edgecompress.tasks.detection import DetectionTask, detection_map
from edgecompress.tasks.select import MetricTask, select_task

__all__ = ["ClassificationTask", "DetectionTask", "MetricTask", "Task", "detection_map", "points", "select_task", "torch_runner"]
