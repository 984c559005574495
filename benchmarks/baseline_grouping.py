"""Does sharing a process bias the baseline's runtime choice (issue 26)?

The baseline decides which runtime our engines are built for, and which plain engine is the
yardstick, by timing OpenVINO and ONNX Runtime engines side by side; `process_groups` put the
OpenVINO engines of a comparison in one process (ONNX Runtime sessions each alone). Session 22
found the user's NNCF INT8 timed ~4 % faster against our ONNX Runtime INT8 while it shared its
process with OpenVINO FP32 than alone (verify_vs_user.py): a bias toward OpenVINO in exactly the
comparisons that choose the runtime. Here, on one run directory, the run's shipped engine and the
user's plain engines of the original (OpenVINO FP32, NNCF INT8, ONNX Runtime FP32; user_view's
recipes), alternating, `--layouts` comparisons a way, the product's protocol each time:
  grouped:      workers forked from the host, grouped as the baseline groups them
  alone:        workers forked from the host, every engine in a process of its own
  alone fresh:  every engine alone in a fresh interpreter (verify's and a user's way)

    .venv/bin/python benchmarks/baseline_grouping.py RUN --json benchmarks/results/baseline_grouping.json
"""
from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import user_view  # noqa: E402
from _common import write_result  # noqa: E402

from edgecompress.targets import isolated  # noqa: E402
from edgecompress.targets.timing import compare, over_layouts  # noqa: E402

WAYS = {"grouped": (False, False), "alone": (True, False), "alone fresh": (True, True)}   # (each_alone, fresh)
PLAIN = ("openvino nncf int8", "openvino fp32", "ort fp32")


def main() -> None:
    args = user_view.run_benchmark_args(__doc__, layouts=6, max_time_s=12.0)
    model, images, _ = user_view.run_original(args.run)
    found = {way: {name: [] for name in PLAIN} for way in WAYS}
    with tempfile.TemporaryDirectory() as tmp:
        user = user_view.user_engines(model, images, Path(tmp))
        specs = {n: (path, runtime, settings, 1) for n, (runtime, path, settings) in
                 {"shipped": user_view.shipped_engine(args.run), **{n: user[n] for n in PLAIN}}.items()}
        isolated.start_host()
        for seed in range(args.layouts):
            for way in np.random.default_rng(seed).permutation(list(WAYS)):
                each_alone, fresh = WAYS[str(way)]
                calls = isolated.isolated_calls(isolated.process_groups(specs, each_alone=each_alone), fresh=fresh)
                timing = compare(calls, reference="shipped", max_time_s=args.max_time_s, half_width=1e-9,
                                 warmup=50, seed=seed)
                for name in PLAIN:
                    found[str(way)][name].append(timing.ratios[name])
                print(f"layout {seed} {way:<11} " + "  ".join(f"{n} {timing.ratios[n]}" for n in PLAIN), flush=True)
    rows = [{"way": way, **{f"{n} / shipped": over_layouts(rs).to_dict() for n, rs in by.items()}}
            for way, by in found.items()]
    for row in rows:
        print(row)
    if args.json:
        write_result(args.json, {"command": " ".join(sys.argv), "rows": rows,
                                 "each": {w: {n: [r.to_dict() for r in rs] for n, rs in by.items()}
                                          for w, by in found.items()}})


if __name__ == "__main__":
    main()
