"""BatchNorm statistics of a detector trained under augmentation (issue 28): the unpruned model's
mAP50-95 after what every search probe does to it before any channel is removed, on the run's own
data: its BatchNorm statistics recomputed on plain training (or validation) images, and 100
distillation steps of the probe's recipe with BatchNorm updating or frozen.

    .venv/bin/python benchmarks/detector_bn.py --model best.pt --data data.yaml [--steps 100]

Needs the extra `yolo` for an Ultralytics best.pt (scripts/setup.sh --yolo); a zoo detector name
works without it. Session 19, YOLOv8n from yolov8n.yaml trained by scripts/train_yolov8n.py:
original 40.95; recomputed on training images 27.0, on validation images 27.09; 100 steps SGD
lr 0.01 (the probe's) 29.37, lr 0.001 37.99, lr 0 (statistics only) 31.37; BatchNorm frozen + lr
0.01 38.97.
"""
from __future__ import annotations

import argparse
import copy

import torch
from torch.utils.data import DataLoader

from edgecompress.inputs.yolo import collate, yolo_datasets
from edgecompress.tasks.select import select_task
from edgecompress.training.distill import DistillConfig, distill
from edgecompress.training.evaluation import recalibrate_bn


def load(name: str) -> torch.nn.Module:
    if name.endswith(".pt"):
        from edgecompress.inputs.ultralytics import load_ultralytics
        return load_ultralytics(name).model.float().eval()
    from edgecompress.zoo.detector import pretrained_detector
    return pretrained_detector(name)[0].eval()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--data", required=True, help="YOLO data.yaml")
    ap.add_argument("--imgsz", type=int, default=64)
    ap.add_argument("--steps", type=int, default=100)
    args = ap.parse_args()
    original = load(args.model)
    _, sets = yolo_datasets(args.data, imgsz=args.imgsz)
    task = select_task("detect", num_classes=original.num_classes, model=original)
    val = list(DataLoader(sets["val"], batch_size=64, collate_fn=collate))
    train = [x for _, (x, _) in zip(range(16), DataLoader(sets["train"], batch_size=128, shuffle=True, collate_fn=collate,
                                                         generator=torch.Generator().manual_seed(0)))]

    def score(model: torch.nn.Module) -> float:
        return round(task.evaluate_model(copy.deepcopy(model).eval(), val), 2)

    print("original", score(original), flush=True)
    for name, batches in (("statistics recomputed on training images", train),
                          ("statistics recomputed on validation images", [x for x, _ in val])):
        print(name, score(recalibrate_bn(copy.deepcopy(original), batches)), flush=True)
    for name, lr, frozen in (("SGD lr 0.01 (the probe's)", 0.01, False), ("SGD lr 0.001", 0.001, False),
                             ("lr 0 (statistics only)", 0.0, False), ("BatchNorm frozen, SGD lr 0.01", 0.01, True)):
        model = copy.deepcopy(original)
        distill(model, original, sets["train"], steps=args.steps, seed=0, device=torch.device("cpu"), task=task,
                config=DistillConfig(temperature=4.0, alpha=0.9, lr=lr, batch_size=128, freeze_bn=frozen))
        print(f"{args.steps} distillation steps, {name}", score(model), flush=True)


if __name__ == "__main__":
    main()
