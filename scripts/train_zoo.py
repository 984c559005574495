"""Train a zoo model on Fashion-MNIST and save the checkpoint shipped in edgecompress/zoo/checkpoints.

    python scripts/train_zoo.py --model resnet20 --epochs 40
    python scripts/train_zoo.py --model resnet18-64 --resize 64 --epochs 6 --threads 1

Trains on the 55,000 training images outside the fixed validation split (the split that holds the
accuracy budget stays unseen), reports validation and test accuracy, and stores both in the file.
Runs on CUDA when available (the shipped checkpoints were trained on one H100), else on the CPU.

--resize N trains at NxN: each batch is resized bilinearly from 28x28 on the fly (memory stays that
of the 28x28 set), and the checkpoint declares its preprocessing under "preprocess". The images are
normalised at 28x28 first (zoo/data.py); that equals resizing the [0,1] image and normalising after,
because bilinear interpolation is an affine combination with weights summing to 1.
"""
from __future__ import annotations

import argparse
import math
import shlex
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from edgecompress.inputs.data import fashion_mnist
from edgecompress.zoo.fashion_mnist import MEAN, STD
from edgecompress.zoo.models import create_model

CHECKPOINTS = Path(__file__).resolve().parents[1] / "edgecompress" / "zoo" / "checkpoints"


def augment(x: torch.Tensor, pad: int = 2) -> torch.Tensor:
    """Random crop after zero-padding, and horizontal flip, on a batch (torchvision is not available)."""
    n, _, h, w = x.shape
    padded = F.pad(x, (pad, pad, pad, pad), value=float(x.min()))
    dy, dx = torch.randint(0, 2 * pad + 1, (2,)).tolist()
    x = padded[:, :, dy:dy + h, dx:dx + w]
    flip = torch.rand(n, device=x.device) < 0.5
    return torch.where(flip[:, None, None, None], x.flip(3), x)


def resize(x: torch.Tensor, size: int | None) -> torch.Tensor:
    """Bilinear resize of a batch to size x size (no-op when size is None or already the size)."""
    if size is None or x.shape[-2:] == (size, size):
        return x
    return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)


@torch.no_grad()
def accuracy(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, *, size: int | None = None,
             batch: int = 1000) -> float:
    model.eval()
    correct = sum((model(resize(x[i:i + batch], size)).argmax(1) == y[i:i + batch]).sum().item()
                  for i in range(0, len(x), batch))
    return 100.0 * correct / len(x)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="resnet20")
    ap.add_argument("--epochs", type=int, default=40)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--lr", type=float, default=0.1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--data", default=None, help="directory with the four IDX files (default: Debian's)")
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--resize", type=int, default=None, metavar="N",
                    help="train and evaluate at NxN (bilinear from 28x28); recorded as the checkpoint's preprocess")
    ap.add_argument("--threads", type=int, default=None, help="CPU threads for torch (default: torch's choice)")
    args = ap.parse_args()
    torch.manual_seed(args.seed)
    if args.threads:
        torch.set_num_threads(args.threads)
    # Crop shift scales with the image so the augmentation means the same at every size (2 px at 28).
    pad = 2 if args.resize is None else max(2, round(2 * args.resize / 28))
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    data = fashion_mnist(args.data)
    x, y = (t.to(dev) for t in data.train.tensors)
    vx, vy = (t.to(dev) for t in data.val.tensors)
    tx, ty = (t.to(dev) for t in data.test.tensors)
    model = create_model(args.model).to(dev)
    opt = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9, weight_decay=5e-4, nesterov=True)
    steps = args.epochs * math.ceil(len(x) / args.batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, args.lr, total_steps=steps, pct_start=0.15)
    start = time.time()
    for epoch in range(args.epochs):
        model.train()
        perm = torch.randperm(len(x), device=dev)
        for i in range(0, len(x), args.batch_size):
            idx = perm[i:i + args.batch_size]
            loss = F.cross_entropy(model(augment(resize(x[idx], args.resize), pad)), y[idx], label_smoothing=0.05)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
        val = accuracy(model, vx, vy, size=args.resize)
        print(f"epoch {epoch + 1}/{args.epochs} loss {loss.item():.3f} val {val:.2f}% ({time.time() - start:.0f}s)",
              flush=True)
    val_acc, test_acc = accuracy(model, vx, vy, size=args.resize), accuracy(model, tx, ty, size=args.resize)
    out = args.out or CHECKPOINTS / f"{args.model}_fashion-mnist.pt"
    out.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.cpu() for k, v in model.state_dict().items()}
    ckpt = {"model": args.model, "state_dict": state, "val_accuracy": val_acc, "test_accuracy": test_acc,
            "epochs": args.epochs, "command": shlex.join(["python", *sys.argv])}
    if args.resize is not None:
        # The key `compress` reads to feed the model what it was trained on (see the module docstring).
        ckpt["preprocess"] = {"resize": args.resize, "crop": None, "mean": [MEAN], "std": [STD]}
    torch.save(ckpt, out)
    print(f"{args.model}: val {val_acc:.2f}%  test {test_acc:.2f}%  -> {out} ({time.time() - start:.0f}s)")


if __name__ == "__main__":
    main()
