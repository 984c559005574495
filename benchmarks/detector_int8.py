"""INT8 of the zoo detector (issue 28): who computes the ranges. ONNX Runtime's `quantize_static`
(the product's ORT backend: per-channel weights, MinMax) against NNCF's ONNX backend
(`nncf.quantize` on the ONNX model, which writes a QDQ ONNX), both on the same calibration images:
at their defaults (ORT's with the two first convs float too), and in TensorRT's kind, symmetric
signed INT8 activations (the product's jetson backends: `quantize_int8(symmetric_activations=True)`
with "ort" and "nncf-onnx"). mAP50-95 on the demo set's validation split, each QDQ ONNX run by
ONNX Runtime; latency over ONNX Runtime FP32 on this CPU, in one run of the timing protocol (what
TensorRT makes of them needs a GPU).

    .venv/bin/python benchmarks/detector_int8.py [--model tiny-yolo] [--json F]
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import onnx
import torch
from torch.utils.data import DataLoader

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import write_result  # noqa: E402

from edgecompress.calibration import ort_runner, quantize_int8  # noqa: E402
from edgecompress.exporters import to_onnx  # noqa: E402
from edgecompress.inputs.yolo import collate, yolo_datasets  # noqa: E402
from edgecompress.targets import get_target  # noqa: E402
from edgecompress.targets.timing import compare  # noqa: E402
from edgecompress.tasks.select import select_task  # noqa: E402
from edgecompress.zoo.detection_demo import cached_demo  # noqa: E402
from edgecompress.zoo.detector import pretrained_detector  # noqa: E402

CALIBRATION_IMAGES = 512


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="tiny-yolo")
    ap.add_argument("--imgsz", type=int, default=64)
    ap.add_argument("--max-time-s", type=float, default=60.0)
    ap.add_argument("--json")
    args = ap.parse_args()
    model, _ = pretrained_detector(args.model)
    _, sets = yolo_datasets(cached_demo(), imgsz=args.imgsz)
    task = select_task("detect", num_classes=model.num_classes, model=model)
    val = list(DataLoader(sets["val"], batch_size=64, collate_fn=collate))
    loader = DataLoader(sets["train"], batch_size=32, shuffle=True, collate_fn=collate,
                        generator=torch.Generator().manual_seed(0))
    calib = [x.numpy() for _, (x, _) in zip(range(CALIBRATION_IMAGES // 32), loader)]
    target = get_target("x86-cpu-ort")
    rows, calls = {}, {}
    with tempfile.TemporaryDirectory(prefix="detector-int8-") as tmp:
        work = Path(tmp)
        fp32 = to_onnx(model, work / "model.onnx", input_shape=(3, args.imgsz, args.imgsz))
        stem = tuple([n.name for n in onnx.load(str(fp32)).graph.node if n.op_type == "Conv"][:2])
        files = {"fp32": fp32,
                 "ort qdq": quantize_int8(fp32, work / "ort.onnx", calib),
                 "ort qdq, 2 first convs float": quantize_int8(fp32, work / "ort_stem.onnx", calib, keep_float=stem),
                 "nncf onnx": quantize_int8(fp32, work / "nncf.onnx", calib, backend="nncf-onnx"),
                 # TensorRT's kind: symmetric signed INT8 activations (the product's jetson backends)
                 "ort qdq symmetric": quantize_int8(fp32, work / "ort_sym.onnx", calib, symmetric_activations=True),
                 "nncf-onnx symmetric": quantize_int8(fp32, work / "nncf_sym.onnx", calib, backend="nncf-onnx",
                                                      symmetric_activations=True)}
        for name, path in files.items():
            rows[name] = {"map50_95": round(task.evaluate(ort_runner(path), val), 2)}
            built = target.build(path, work / name.replace(" ", "_").replace(",", ""),
                                 precision="fp32" if name == "fp32" else "int8")
            calls[name] = target.caller(built)
            print(f"  {name:32s} mAP50-95 {rows[name]['map50_95']:6.2f}", flush=True)
        timing = compare(calls, reference="fp32", max_time_s=args.max_time_s)
    print(f"timing: {timing.blocks} blocks x {timing.runs_per_block} runs, {timing.seconds:.0f} s, {timing.stopped}")
    for name, row in rows.items():
        row["latency_vs_fp32"] = timing.ratios[name].to_dict()
        print(f"  {name:32s} mAP50-95 {row['map50_95']:6.2f}  latency {timing.ratios[name]} of ORT FP32")
    if args.json:
        write_result(Path(args.json), {"model": args.model, "calibration_images": CALIBRATION_IMAGES, "rows": rows})


if __name__ == "__main__":
    main()
