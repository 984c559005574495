"""Does an OpenVINO engine time differently when another OpenVINO engine shares its process (issue 26)?

verify times the engines of its headline with every engine that has no ONNX Runtime thread pool in
one shared process (`isolated.process_groups`); a user's application, and `benchmarks/user_view.py`,
run each engine alone in its process. Here the run's shipped engine against the user's plain NNCF
INT8 of the original (made as user_view makes it), in fresh layouts, alternately:
  alone:  {shipped} {nncf}                 each engine in a process of its own
  shared: {shipped} {nncf, openvino fp32}  the NNCF engine beside the plain OpenVINO FP32, as in verify
(the FP32 engine is timed in the shared layout too, as verify times it). Same protocol as user_view
(blocks of 20 calls, shuffled, the other processes stopped, a wait for a quiet CPU after each).

    .venv/bin/python benchmarks/shared_process.py RUN --json benchmarks/results/shared_process.json
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import write_ways  # noqa: E402
from user_view import interleave, original, shipped_engine, user_engines  # noqa: E402

from edgecompress.targets.timing import Ratio, median_interval  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("run", type=Path)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--repeats", type=int, default=4)
    parser.add_argument("--max-time-s", type=float, default=8.0, help="per layout")
    args = parser.parse_args()
    import json
    report = json.loads((args.run / "report.json").read_text())
    model, images = original(report)
    x = np.random.default_rng(0).standard_normal((1, *images.shape[1:])).astype(np.float32)
    layouts = {"alone": lambda s: [{"shipped": s["shipped"]}, {"nncf": s["nncf"]}],
               "shared": lambda s: [{"shipped": s["shipped"]}, {"nncf": s["nncf"], "fp32": s["fp32"]}]}
    found: dict[str, list[Ratio]] = {name: [] for name in layouts}
    with tempfile.TemporaryDirectory() as tmp:
        plain = user_engines(model, images, Path(tmp))
        specs = {"shipped": shipped_engine(args.run), "nncf": plain["openvino nncf int8"], "fp32": plain["openvino fp32"]}
        for seed in range(args.repeats):
            for name, groups in layouts.items():
                rows = interleave(groups(specs), x, max_time_s=args.max_time_s, seed=seed)
                r = Ratio(*median_interval(np.array([ms["nncf"] / ms["shipped"] for ms, _ in rows])))
                found[name].append(r)
                print(f"layout {seed} {name:<6} nncf / shipped {r}  ({len(rows)} blocks)", flush=True)
    write_ways(found, args.json, key="layout", label="nncf over shipped")

if __name__ == "__main__":
    main()
