"""Detection as a task: the score is COCO mAP50-95 in points, by the COCO reference code.

`detection_map(run, batches)` takes `run`, any callable from an NCHW float32 numpy batch to the
model's raw head outputs (a PyTorch module wrapped, an OpenVINO / ONNX Runtime / TensorRT
engine), so every engine is scored by the same decoding, NMS and metric code. The metric is
pycocotools' COCOeval (optional extra `detect`). torchmetrics' MeanAveragePrecision wraps the same
COCOeval but refuses to construct without torchvision, which this environment cannot install
(it pulls a CUDA torch build), so the reference code is called directly.
"""
from __future__ import annotations

import contextlib
import io
from dataclasses import dataclass, field
from collections.abc import Mapping
from typing import Callable, Iterable

import numpy as np
import torch

from edgecompress.errors import MissingBackendError
from edgecompress.inputs.yolo import collate as yolo_collate
from edgecompress.tasks.base import Run, torch_runner
from edgecompress.tasks.boxes import PostprocessConfig, postprocess, targets_to_boxes
from edgecompress.tasks.detection_loss import LossConfig, detection_distill_loss, detection_loss

__all__ = ["CocoMap", "DetectionTask", "as_tensor", "detection_map", "torch_runner"]


class CocoMap:
    """Accumulates predictions and ground truth per image; `compute()` -> mAP50-95 in points."""

    def __init__(self) -> None:
        self.images: list[dict] = []
        self.gts: list[dict] = []
        self.dets: list[dict] = []

    def update(self, preds: list[dict[str, torch.Tensor]], targets: list[dict[str, torch.Tensor]]) -> None:
        for p, t in zip(preds, targets):
            image_id = len(self.images) + 1
            self.images.append({"id": image_id})
            for box, label in zip(_xywh(t["boxes"]), t["labels"].tolist()):
                self.gts.append({"id": len(self.gts) + 1, "image_id": image_id, "category_id": label,
                                 "bbox": box, "area": box[2] * box[3], "iscrowd": 0})
            for box, score, label in zip(_xywh(p["boxes"]), p["scores"].tolist(), p["labels"].tolist()):
                self.dets.append({"image_id": image_id, "category_id": label, "bbox": box, "score": score})

    def compute(self) -> float:
        try:
            from pycocotools.coco import COCO
            from pycocotools.cocoeval import COCOeval
        except ImportError as exc:
            raise MissingBackendError("pycocotools", "detect") from exc
        if not self.gts:
            raise ValueError("no ground-truth boxes: mAP is undefined")
        if not self.dets:
            return 0.0   # COCO.loadRes refuses an empty result list
        categories = sorted({a["category_id"] for a in self.gts} | {d["category_id"] for d in self.dets})
        # COCOeval prints its progress and table; the score is returned, not printed
        with contextlib.redirect_stdout(io.StringIO()):
            gt = COCO()
            gt.dataset = {"images": self.images, "annotations": self.gts, "categories": [{"id": c} for c in categories]}
            gt.createIndex()
            ev = COCOeval(gt, gt.loadRes(self.dets), iouType="bbox")
            ev.evaluate()
            ev.accumulate()
            ev.summarize()
        return max(float(ev.stats[0]), 0.0) * 100.0


def _xywh(boxes: torch.Tensor) -> list[list[float]]:
    b = boxes.detach().float()
    return torch.cat([b[:, :2], b[:, 2:] - b[:, :2]], 1).tolist()


def as_tensor(outputs: object) -> torch.Tensor:
    """An engine's outputs -> one tensor: ONNX Runtime returns a list, OpenVINO a dict-like."""
    if isinstance(outputs, Mapping):   # OpenVINO's OVDict is a Mapping, not a dict
        outputs = next(iter(outputs.values()))
    if isinstance(outputs, (list, tuple)):
        outputs = outputs[0]
    return torch.as_tensor(np.asarray(outputs) if not isinstance(outputs, torch.Tensor) else outputs)


def detection_map(run: Run, batches: Iterable[tuple[torch.Tensor, torch.Tensor]], *, strides: tuple[int, ...] = (8, 16),
                  box: str = "softplus", config: PostprocessConfig = PostprocessConfig(),
                  on_batch: Callable[[int], None] | None = None) -> float:
    """COCO mAP50-95 in points (0..100) of `run` over (images [B, C, H, W], targets [M, 6]) batches."""
    metric = CocoMap()
    seen = 0
    for images, targets in batches:
        x = images.numpy() if isinstance(images, torch.Tensor) else np.asarray(images)
        n, _, h, w = x.shape
        raw = as_tensor(run(np.ascontiguousarray(x, dtype=np.float32)))
        preds = postprocess(raw.float(), height=h, width=w, strides=strides, box=box, config=config)
        metric.update(preds, targets_to_boxes(torch.as_tensor(targets), batch_size=n, height=h, width=w))
        seen += n
        if on_batch:
            on_batch(seen)
    return metric.compute()


@dataclass(frozen=True)
class DetectionTask:
    """What the pipeline needs to treat a detector like a classifier: a score in points, the
    task's loss, a distillation loss on raw outputs. Calibration inputs are the images alone."""

    num_classes: int
    strides: tuple[int, ...] = (8, 16)
    box: str = "softplus"     # the head's box encoding (boxes.BOX_ENCODINGS): the model's `box_encoding`
    postprocess: PostprocessConfig = field(default_factory=PostprocessConfig)
    loss_config: LossConfig = field(default_factory=LossConfig)
    name: str = field(default="detect", init=False)
    metric: str = field(default="mAP50-95", init=False)
    unit: str = field(default="", init=False)
    # sigmoid outputs: Hinton's T = 4 (the classifier's --temperature, tuned for a softmax) flattens
    # every class score towards 0.5; distillation here uses its own
    distill_temperature: float = 1.0
    # SGD at the classifier's 0.01 cost an unpruned YOLOv8n 2 mAP in 100 distillation steps
    # (BatchNorm frozen; 0.003: 1.4), 0.001 gained 1 (benchmarks/detector_bn.py)
    finetune_lr: float = field(default=0.001, init=False)

    @property
    def collate(self) -> Callable:
        """Targets differ in length per image: (images [B, C, H, W], targets [M, 6]). A property: a
        dataclass field holding a function would be read back as a bound method."""
        return yolo_collate

    def evaluate(self, run: Run, batches: Iterable, *, on_batch: Callable[[int], None] | None = None) -> float:
        return detection_map(run, batches, strides=self.strides, box=self.box, config=self.postprocess,
                             on_batch=on_batch)

    def evaluate_model(self, model: torch.nn.Module, batches: Iterable, *, device: torch.device | str = "cpu") -> float:
        """On the CPU in float32, as the engines' outputs are decoded (the score decides what ships)."""
        return self.evaluate(torch_runner(model.cpu()), batches)

    def objective(self, student: torch.Tensor, teacher: torch.Tensor, targets: torch.Tensor, *,
                  images: torch.Tensor, temperature: float, alpha: float) -> torch.Tensor:
        """`alpha` x distillation from the teacher's raw outputs + (1 - alpha) x the detection loss
        against the labels (`--alpha` weighs them as for a classifier; `temperature`, the softmax's,
        is not used: see `distill_temperature`)."""
        h, w = images.shape[-2:]
        hard = self.loss(student, targets.to(student.device), height=h, width=w)
        soft = detection_distill_loss(student, teacher, temperature=self.distill_temperature)
        return alpha * soft + (1 - alpha) * hard

    def loss(self, raw: torch.Tensor, targets: torch.Tensor, *, height: int, width: int) -> torch.Tensor:
        return detection_loss(raw, targets, height=height, width=width, strides=self.strides, box=self.box,
                              config=self.loss_config)[0]

    def distill_loss(self, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        return detection_distill_loss(student, teacher)

    @staticmethod
    def calibration_inputs(batches: Iterable) -> Iterable[torch.Tensor]:
        """INT8 calibration reads images only; labels never reach the quantiser."""
        for images, _ in batches:
            yield images
