"""Does an ONNX Runtime session with a thread pool slow another one in another process (issue 26)?
A run's shipped ONNX Runtime INT8 engine (model_int8.onnx, at ORT's defaults) against the same file
compiled by OpenVINO (LATENCY), the two in one fresh process, timed in the one protocol
(timing.compare through the isolated host), with beside them in a process of its own: nothing; the
original's FP32 ONNX on ONNX Runtime at its defaults (a two-thread pool), timed too; the same with
its threads not spinning; the same with one thread. `--repeats` fresh layouts of each, in turn.

    .venv/bin/python benchmarks/ort_pool_beside.py RUN_DIR --json benchmarks/results/ort_pool_beside.json
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import write_result  # noqa: E402
from edgecompress.targets.isolated import isolated_calls  # noqa: E402
from edgecompress.targets.timing import compare  # noqa: E402

BESIDE = {"nothing": None, "ort fp32, defaults": {}, "ort fp32, no spinning": {"session.intra_op.allow_spinning": "0"},
          "ort fp32, 1 thread": {"intra_op_num_threads": 1}}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("run", type=Path)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--max-time-s", type=float, default=6.0)
    args = parser.parse_args()
    import openvino as ov
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        xml = Path(tmp) / "int8.xml"
        ov.save_model(ov.convert_model(str(args.run / "model_int8.onnx")), str(xml))
        ours = {"openvino int8": (xml, "openvino", {"PERFORMANCE_HINT": "LATENCY"}, 1),
                "ort int8": (args.run / "model_int8.onnx", "ort", {}, 1)}
        for _ in range(args.repeats):
            for beside, settings in BESIDE.items():
                other = [] if settings is None else [{"beside": (args.run / "reference/model.onnx", "ort", settings, 1)}]
                t = compare(isolated_calls([ours, *other]), reference="openvino int8", max_time_s=args.max_time_s,
                            warmup=20)
                rows.append({"beside": beside, "ort int8 / openvino int8": t.ratios["ort int8"].to_dict(),
                             "blocks": t.blocks})
                print(rows[-1], flush=True)
    if args.json:
        write_result(args.json, {"command": " ".join(sys.argv), "run": str(args.run), "rows": rows})


if __name__ == "__main__":
    main()
