"""The detection pieces end to end, without the pipeline: shipped detector -> C2f rewrite ->
every channel group to a fraction of its width (weight L1 norm of the group root) -> BatchNorm
recalibration -> fine-tuning with detection loss + distillation from the original -> mAP50-95
at each step (PyTorch and ONNX Runtime FP32).

    nice -n 19 python scripts/prune_detector_check.py --data DIR/data.yaml [--keep 0.5 --steps 300]

A check of the groundwork, not the pipeline's importance or search (those are pruning/ and
pipeline/'s). CPU, one thread.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from edgecompress.inputs.yolo import collate, yolo_datasets
from edgecompress.pruning.detection import head_output_layers, unsplit_c2f
from edgecompress.pruning.groups import find_groups, prune_copy
from edgecompress.tasks.detection import DetectionTask, detection_map, torch_runner
from edgecompress.tasks.detection_finetune import DetectorFinetuneConfig, finetune_detector
from edgecompress.training.evaluation import macs_and_params, recalibrate_bn
from edgecompress.zoo.detector import pretrained_detector


def lowest_l1(model: torch.nn.Module, key: str, width: int, keep: float) -> list[int]:
    """The root conv's output channels with the smallest weight L1 norms, all but `keep` of them."""
    w = model.get_submodule(key).weight.detach().abs().flatten(1).sum(1)
    return w.argsort()[:width - max(1, round(width * keep))].tolist()


def onnx_map(model: torch.nn.Module, batches: list) -> float:
    import onnxruntime as ort
    with tempfile.TemporaryDirectory() as tmp:
        path = str(Path(tmp) / "m.onnx")
        torch.onnx.export(model.eval(), (batches[0][0],), path, dynamo=False, opset_version=17, input_names=["images"])
        session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
        return detection_map(lambda x: session.run(None, {"images": x}), batches)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True)
    ap.add_argument("--keep", type=float, default=0.5, help="fraction of each group's channels kept")
    ap.add_argument("--steps", type=int, default=300, help="fine-tuning batches of 32")
    ap.add_argument("--kd-weight", type=float, default=1.0)
    args = ap.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    teacher, meta = pretrained_detector()
    _, sets = yolo_datasets(args.data, imgsz=meta["imgsz"])
    val = list(DataLoader(sets["val"], batch_size=100, collate_fn=collate))
    train = DataLoader(sets["train"], batch_size=32, shuffle=True, collate_fn=collate,
                       generator=torch.Generator().manual_seed(0))
    shape = (1, 3, meta["imgsz"], meta["imgsz"])

    def report(label: str, model: torch.nn.Module) -> None:
        macs, params = macs_and_params(model, shape[1:])
        print(f"{label}: mAP50-95 {detection_map(torch_runner(model), val):.2f}  MACs {macs / 1e6:.1f} M  "
              f"params {params / 1e3:.0f} k", flush=True)
    report("original", teacher)
    student = pretrained_detector()[0]
    unsplit_c2f(student)
    x = torch.rand(shape)
    groups = find_groups(student, x, ignored=head_output_layers(student))
    student = prune_copy(student, x, {g.key: lowest_l1(student, g.key, g.width, args.keep) for g in groups})
    report(f"pruned ({len(groups)} groups, keep {args.keep})", student.eval())
    recalibrate_bn(student, train, max_batches=50)
    report("BN recalibrated", student)
    start = time.time()
    task = DetectionTask(num_classes=teacher.num_classes, strides=teacher.strides)
    losses = finetune_detector(student, teacher, train, task=task,
                               config=DetectorFinetuneConfig(steps=args.steps, kd_weight=args.kd_weight))
    report(f"fine-tuned {args.steps} steps, kd_weight {args.kd_weight} ({time.time() - start:.0f}s, "
           f"loss {losses[0]:.2f} -> {sum(losses[-20:]) / 20:.2f})", student.eval())
    print(f"ONNX Runtime FP32 of the fine-tuned model: mAP50-95 {onnx_map(student, val):.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
