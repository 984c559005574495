"""Train the zoo's tiny YOLO-style detector on a YOLO-format set (default: the offline demo set).

    nice -n 19 python scripts/train_detector.py --data DIR/data.yaml [--epochs 12 --minutes 9]
        [--out edgecompress/zoo/checkpoints/tiny-yolo_fashion-mnist-det.pt]

CPU, one torch thread (the machine is shared with latency measurements). The learning rate decays
(cosine) to zero at `--epochs` or at `--minutes`, whichever comes first, and training stops there.
Per-epoch lines and the final mAP go to stdout; the checkpoint holds the weights, the validation
mAP50-95 and the command that made it.
"""
from __future__ import annotations

import argparse
import math
import shlex
import sys
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from edgecompress.inputs.yolo import collate, yolo_datasets
from edgecompress.tasks.detection import detection_map, torch_runner
from edgecompress.tasks.detection_loss import detection_loss
from edgecompress.zoo.detector import create_detector

MAX_CHECKPOINT_BYTES = 2 * 1024 * 1024   # shipped in the package: keep the wheel small


def flip(images: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Horizontal flip of every second image, labels mirrored (cx -> 1 - cx)."""
    images, targets = images.clone(), targets.clone()
    chosen = torch.arange(len(images)) % 2 == 1
    images[chosen] = images[chosen].flip(-1)
    rows = chosen[targets[:, 0].long()]
    targets[rows, 2] = 1 - targets[rows, 2]
    return images, targets


def train(args: argparse.Namespace) -> tuple[torch.nn.Module, float]:
    data, sets = yolo_datasets(args.data, imgsz=args.imgsz)
    torch.manual_seed(args.seed)
    model = create_detector(args.model, num_classes=data.num_classes)
    model.head.init_bias(imgsz=args.imgsz)
    train_dl = DataLoader(sets["train"], batch_size=args.batch, shuffle=True, collate_fn=collate,
                          generator=torch.Generator().manual_seed(args.seed))
    steps, budget_s = args.epochs * len(train_dl), args.minutes * 60
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=5e-4)
    start, step = time.time(), 0
    for epoch in range(1, args.epochs + 1):
        total, batches = 0.0, 0
        model.train()
        for images, targets in train_dl:
            # Cosine decay over whichever ends first, the steps or the time cap: on a shared CPU an
            # epoch's time varies 2x, and a schedule cut off at full learning rate wastes the run.
            progress = max(step / steps, (time.time() - start) / budget_s)
            if progress >= 1:
                break
            for group in opt.param_groups:
                group["lr"] = args.lr * 0.5 * (1 + math.cos(math.pi * progress))
            images, targets = flip(images, targets)
            loss, _ = detection_loss(model(images), targets, height=args.imgsz, width=args.imgsz, strides=model.strides)
            opt.zero_grad()
            loss.backward()
            opt.step()
            total, batches, step = total + float(loss.detach()), batches + 1, step + 1
        print(f"epoch {epoch}/{args.epochs} loss {total / max(batches, 1):.3f} ({time.time() - start:.0f}s)", flush=True)
        if batches < len(train_dl):
            print(f"stopped in epoch {epoch}: the time cap ({args.minutes} min) ended the schedule", flush=True)
            break
    val_dl = DataLoader(sets["val"], batch_size=64, collate_fn=collate)
    return model.eval(), detection_map(torch_runner(model), val_dl, strides=model.strides)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True, help="data.yaml (scripts/make_detection_demo.py writes one)")
    ap.add_argument("--model", default="tiny-yolo")
    ap.add_argument("--imgsz", type=int, default=64)
    ap.add_argument("--epochs", type=int, default=12)
    ap.add_argument("--minutes", type=float, default=9.0, help="time cap for training")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None, help="checkpoint path (written only if under 2 MB)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    start = time.time()
    model, val_map = train(args)
    print(f"{args.model}: val mAP50-95 {val_map:.2f} ({time.time() - start:.0f}s)")
    if args.out:
        ckpt = {"state_dict": model.state_dict(), "val_map": val_map, "imgsz": args.imgsz,
                "model": args.model, "command": shlex.join(["python", *sys.argv])}
        out = Path(args.out)
        torch.save(ckpt, out)
        size = out.stat().st_size
        if size > MAX_CHECKPOINT_BYTES:
            out.unlink()
            print(f"checkpoint is {size} bytes, over 2 MB: not kept", file=sys.stderr)
            return 1
        print(f"-> {out} ({out.stat().st_size // 1024} KiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
