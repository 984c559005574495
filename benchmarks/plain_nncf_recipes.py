"""Is the run's plain NNCF INT8 (calibration/plain.py) as fast as the one a user makes (issue 26)?

verify's headline is over the yardstick the product builds; `benchmarks/user_view.py` makes its own
NNCF INT8 from the original. If the two files differ in speed, run and independent figures differ
by that much. Each NNCF INT8 of the original, in a fresh process of its own, against the run's
shipped engine (user_view.interleave, `--layouts` fresh comparisons):
  user:            user_view.user_engines (torch.onnx.export at its default opset, ov.save_model defaults)
  product:         the product's recipe (builder.plain: to_onnx(simplify=False), plain_int8)
  product, fp16 constants: the same saved with ov.save_model's default compress_to_fp16=True

    .venv/bin/python benchmarks/plain_nncf_recipes.py RUN --json benchmarks/results/plain_nncf_recipes.json
"""
from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import user_view  # noqa: E402
from _common import write_ways  # noqa: E402

from edgecompress.calibration.plain import plain_int8  # noqa: E402
from edgecompress.exporters.onnx import to_onnx  # noqa: E402


def main() -> None:
    args = user_view.run_benchmark_args(__doc__, layouts=4, max_time_s=10.0)
    model, images, x = user_view.run_original(args.run)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        latency = {"PERFORMANCE_HINT": "LATENCY"}
        src = to_onnx(model, work / "product.onnx", input_shape=images.shape[1:], batch=1, simplify=False)
        product = plain_int8("openvino", src, work / "product", [images[i:i + 1] for i in range(len(images))])
        import openvino as ov
        ov.save_model(ov.Core().read_model(str(product)), str(work / "product_fp16.xml"))
        (work / "user").mkdir()
        engines = {"user": user_view.user_engines(model, images, work / "user")["openvino nncf int8"],
                   "product": ("openvino", product, latency),
                   "product, fp16 constants": ("openvino", work / "product_fp16.xml", latency)}
        found = user_view.over_shipped(args.run, engines, x, layouts=args.layouts, max_time_s=args.max_time_s)
    write_ways(found, args.json, key="recipe", label="nncf over shipped")


if __name__ == "__main__":
    torch.manual_seed(0)
    main()
