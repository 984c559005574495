"""Train an Ultralytics YOLOv8n, built from Ultralytics' own YAML (no weights download), on a
YOLO-format set (default: the offline demo set) with Ultralytics' own trainer: the best.pt a YOLOv8
user brings to `compress --model best.pt --data yolo:data.yaml` (issue 28).

    bash scripts/setup.sh --yolo     # once: the optional extra
    .venv/bin/python scripts/train_yolov8n.py --out runs/yolov8n [--data DIR/data.yaml --epochs 30 --imgsz 64]

CPU, offline (no plots: they fetch a font). Prints the path of best.pt and of the data.yaml it
trained on (the demo set's, with an absolute `path:` as Ultralytics reads a relative one under its
own datasets folder).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import yaml


def absolute_data_yaml(data: Path, out: Path) -> Path:
    """A copy of `data` whose `path:` is absolute (Ultralytics resolves a relative one under its
    datasets folder, not beside the file)."""
    spec = yaml.safe_load(data.read_text())
    spec["path"] = str((data.parent / spec.get("path", ".")).resolve())
    copy = out / "data.yaml"
    copy.write_text(yaml.safe_dump(spec, sort_keys=False))
    return copy


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True, help="folder for Ultralytics' run and the data.yaml copy")
    ap.add_argument("--data", type=Path, default=None, help="a YOLO data.yaml (default: the offline demo set)")
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--imgsz", type=int, default=64)
    ap.add_argument("--batch", type=int, default=64)
    args = ap.parse_args(argv)
    from ultralytics import YOLO

    from edgecompress.zoo.detection_demo import cached_demo
    args.out.mkdir(parents=True, exist_ok=True)
    data = absolute_data_yaml(args.data or cached_demo(), args.out.resolve())
    model = YOLO("yolov8n.yaml")
    model.train(data=str(data), epochs=args.epochs, imgsz=args.imgsz, batch=args.batch, device="cpu",
                workers=2, plots=False, amp=False, seed=0, deterministic=True,
                project=str(args.out.resolve()), name="train", exist_ok=True, verbose=False)
    print(model.trainer.best)
    print(data)
    return 0


if __name__ == "__main__":
    sys.exit(main())
