"""Build the offline detection demo set (Fashion-MNIST items on 64x64 canvases) in YOLO format.

    python scripts/make_detection_demo.py OUT_DIR [--train 2000 --val 500 --seed 0 --imgsz 64]
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import replace

from edgecompress.errors import UserError
from edgecompress.zoo.detection_demo import DemoConfig, make_detection_demo


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out_dir")
    ap.add_argument("--train", type=int, default=2000, help="training canvases")
    ap.add_argument("--val", type=int, default=500, help="validation canvases")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--imgsz", type=int, default=64, help="canvas side in pixels")
    ap.add_argument("--fashion-mnist", default=None, help="folder of the Fashion-MNIST IDX files")
    args = ap.parse_args(argv)
    try:
        path = make_detection_demo(args.out_dir, train=args.train, val=args.val, seed=args.seed,
                                   config=replace(DemoConfig(), imgsz=args.imgsz), fashion_root=args.fashion_mnist)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
