"""How a search probe's training recipe moves the accuracy of a near-miss structure (issue 26): the
shipped ResNet-20 with residual blocks removed (the default run's three-block structure by default),
BatchNorm recalibrated on 16 training batches as a probe does, then distillation for each
--recipes entry STEPS:LR[:SEED] (STEPS may be 100+100: a second schedule continuing from the first's
weights, as a probe continued), validation top-1 on the run's 5,000-image split.

    .venv/bin/python benchmarks/probe_recipe.py --remove layer2.2 layer2.1 layer1.1 --recipes 100:0.01 100:0.01:1 200:0.01

A probe trains 100 steps at lr 0.01 (cosine); the default run's floor is 94.02 % (95.02 - 1).
"""
from __future__ import annotations

import argparse
import copy
import time

import torch
from torch import nn

from _common import without_blocks

from edgecompress.inputs.data import fashion_mnist
from edgecompress.training.distill import DistillConfig, distill
from edgecompress.training.evaluation import model_accuracy, tensor_batches
from edgecompress.zoo import pretrained


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="resnet20")
    ap.add_argument("--remove", nargs="+", default=["layer2.2", "layer2.1", "layer1.1"],
                    help="residual blocks with an identity shortcut, replaced by nn.Identity")
    ap.add_argument("--recipes", nargs="+", default=["100:0.01", "100:0.01:1", "200:0.01", "100:0.02"])
    args = ap.parse_args()
    original, _ = pretrained(args.model)
    original.eval()
    data = fashion_mnist()
    val_x, val_y = data.val.tensors

    def score(model: nn.Module) -> float:
        return round(model_accuracy(model.eval(), tensor_batches(val_x, val_y)), 2)

    train_x = data.train.tensors[0]
    order = torch.randperm(len(train_x), generator=torch.Generator().manual_seed(1))[:16 * 128]
    bn = [train_x[order[i:i + 128]] for i in range(0, len(order), 128)]
    pruned = without_blocks(original, args.remove, bn, score)
    for recipe in args.recipes:
        steps, lr, seed = (recipe.split(":") + ["0"])[:3]
        model, start = copy.deepcopy(pruned), time.perf_counter()
        for i, part in enumerate(steps.split("+")):   # 100+100: a second cosine schedule from the first's weights
            distill(model, original, data.train, steps=int(part), seed=int(seed) + 100 * i,
                    config=DistillConfig(temperature=4.0, alpha=0.9, lr=float(lr), batch_size=128))
        print(f"{steps} steps, lr {lr}, seed {seed} ({time.perf_counter() - start:.0f} s): val {score(model)}", flush=True)


if __name__ == "__main__":
    main()
