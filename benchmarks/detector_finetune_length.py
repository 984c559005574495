"""How much of a removed block's mAP a longer fine-tune wins back (issue 28): the zoo detector with
C2f bottlenecks removed, each trained the way a search probe trains (BatchNorm recalibrated on 16
training batches, then distillation at the task's learning rate) for each of --steps, mAP50-95 on
the offline demo's validation split.

    .venv/bin/python benchmarks/detector_finetune_length.py --remove stage2.1.m.0 stage3.1.m.0 --steps 16 100 400

A probe trains 100 steps; the fine-tune after the search trains `--finetune-epochs` (1) epochs of
the training split: 16 steps on the demo's 2,000 images.
"""
from __future__ import annotations

import argparse
import copy
import time

import torch
from torch import nn
from torch.utils.data import DataLoader

from _common import without_blocks

from edgecompress.inputs.yolo import collate, yolo_datasets
from edgecompress.tasks.select import select_task
from edgecompress.training.distill import DistillConfig, distill
from edgecompress.zoo.detection_demo import cached_demo
from edgecompress.zoo.detector import pretrained_detector


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="tiny-yolo")
    ap.add_argument("--remove", nargs="+", default=["stage2.1.m.0", "stage3.1.m.0"], help="bottlenecks to remove")
    ap.add_argument("--steps", nargs="+", type=int, default=[16, 100, 400])
    ap.add_argument("--lr", type=float, default=0.001)
    args = ap.parse_args()
    original, meta = pretrained_detector(args.model)
    original.eval()
    _, sets = yolo_datasets(cached_demo(seed=0), imgsz=int(meta["imgsz"]))
    task = select_task("detect", num_classes=original.num_classes, model=original)
    val = list(DataLoader(sets["val"], batch_size=64, collate_fn=collate))
    bn = [x for _, (x, _) in zip(range(16), DataLoader(sets["train"], batch_size=128, shuffle=True, collate_fn=collate,
                                                      generator=torch.Generator().manual_seed(0)))]

    def score(model: nn.Module) -> float:
        return round(task.evaluate_model(copy.deepcopy(model).eval(), val), 2)

    pruned = without_blocks(original, args.remove, bn, score)
    for steps in args.steps:
        model, start = copy.deepcopy(pruned), time.perf_counter()
        distill(model, original, sets["train"], steps=steps, seed=0, device=torch.device("cpu"), task=task,
                config=DistillConfig(temperature=4.0, alpha=0.9, lr=args.lr, batch_size=128))
        print(f"{steps} distillation steps ({time.perf_counter() - start:.0f} s)", score(model), flush=True)


if __name__ == "__main__":
    main()
