"""Does the shipped engine of a finished run compute what the pruned PyTorch model computes?

Loads the run's `model_pruned.pt` (the fine-tuned PyTorch model that was exported) and its engine
(`model.ort` for mobile, `model.xml` for OpenVINO, the ONNX otherwise) through the target's own
runner, and compares them on the validation split: max |logit difference|, top-1 agreement and
both accuracies. For an INT8 engine the logits differ by quantisation, so agreement and accuracy
are the figures to read; for FP32 the difference should be float rounding (<= 1e-4).

    .venv/bin/python benchmarks/engine_parity.py runs/mobile-arm64          # the shipped engine
    .venv/bin/python benchmarks/engine_parity.py runs/mobile-arm64 --fp32   # FP32 .ort of model.onnx
"""
from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np
import torch

from edgecompress.profiles import load_profile
from edgecompress.targets import BuildResult, get_target
from edgecompress.inputs.data import fashion_mnist


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("run", type=Path, help="a finished run directory (default data: Fashion-MNIST)")
    p.add_argument("--images", type=int, default=5000)
    p.add_argument("--fp32", action="store_true",
                   help="build the run's FP32 model.onnx for the target (in a temporary folder) and compare that")
    args = p.parse_args(argv)
    report = json.loads((args.run / "report.json").read_text())
    model = torch.load(args.run / "model_pruned.pt", map_location="cpu", weights_only=False).eval()
    target = get_target(load_profile(report["target"]), device="estimate")
    tmp = tempfile.TemporaryDirectory()
    if args.fp32:
        build = target.build(args.run / "model.onnx", Path(tmp.name), precision="fp32")
    else:
        engine = args.run / report["engine"]
        build = BuildResult(engine=engine, onnx=engine, precision=report["precision"], runtime=target.runtime)
    engine = build.engine
    run = target.runner(build)
    val = fashion_mnist().val
    x = torch.stack([val[i][0] for i in range(min(args.images, len(val)))])
    y = torch.tensor([val[i][1] for i in range(len(x))])
    with torch.no_grad():
        ref = torch.cat([model(b) for b in x.split(250)]).numpy()
    got = np.concatenate([run(b.numpy()) for b in x.split(250)])   # as the verify stage feeds it
    print(f"{engine} ({build.precision}) vs PyTorch {args.run / 'model_pruned.pt'} on {len(x)} validation images:")
    print(f"  max |logit diff| {np.abs(ref - got).max():.3g}, top-1 agreement "
          f"{(ref.argmax(1) == got.argmax(1)).mean() * 100:.2f} %, accuracy PyTorch "
          f"{(ref.argmax(1) == y.numpy()).mean() * 100:.2f} % / engine {(got.argmax(1) == y.numpy()).mean() * 100:.2f} %")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
