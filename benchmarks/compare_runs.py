"""Finished runs' shipped engines timed side by side with the original model (one process).

The original is exported and built FP32 for the runs' target, then the original and every run's
engine are timed together by the one timing protocol (edgecompress.targets.timing.time_builds:
engines interleaved in short blocks, order shuffled per block, the median of the per-block ratios
with its 95 % interval), so all see the same machine drift. Each engine's speed-up is
original / engine with that interval. Use it to compare runs made at different times (a speed-up
quoted by two separate runs mixes the machine's drift into it).

    .venv/bin/python benchmarks/compare_runs.py runs/quiet4 runs/quiet5 [--max-time-s 60] [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import write_result  # noqa: E402

from edgecompress.exporters import to_onnx
from edgecompress.profiles import load_profile
from edgecompress.targets import BuildResult, get_target
from edgecompress.targets.timing import time_builds
from edgecompress.zoo import pretrained

ORIGINAL = "original (fp32)"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("runs", type=Path, nargs="+", help="finished run directories of the shipped ResNet-20, same target")
    p.add_argument("--max-time-s", type=float, default=60.0,
                   help="the protocol's time cap; it stops earlier once every ratio is within +-1 %%")
    p.add_argument("--json", type=Path, help="write the rows here (benchmarks/suite.py's form)")
    args = p.parse_args(argv)
    reports = [json.loads((r / "report.json").read_text()) for r in args.runs]
    targets = {r["target"] for r in reports}
    if len(targets) != 1:
        raise SystemExit(f"runs of different targets: {', '.join(sorted(targets))}")
    if any(not r["model"].startswith("resnet20 (shipped") for r in reports):
        raise SystemExit("the original timed here is the shipped ResNet-20: give runs of that model")
    target = get_target(load_profile(targets.pop()))
    with tempfile.TemporaryDirectory() as tmp:
        original = to_onnx(pretrained("resnet20")[0].eval(), Path(tmp) / "original.onnx", input_shape=(1, 28, 28))
        builds = {ORIGINAL: target.build(original, Path(tmp) / "engine", precision="fp32")}
        for run, rep in zip(args.runs, reports):
            onnx = run / ("model_int8.onnx" if rep["precision"] == "int8" else "model.onnx")
            builds[str(run)] = BuildResult(engine=run / rep["engine"], onnx=onnx, precision=rep["precision"],
                                           runtime=target.runtime)
        timing = time_builds(target, builds, reference=ORIGINAL, max_time_s=args.max_time_s, half_width=0.01)
    rows = [{"engine": ORIGINAL, "precision": "fp32", "criterion": None, "MMACs": None, "val %": None,
             "median ms": round(timing.ms[ORIGINAL], 4), "speed-up over the original": None}]
    for run, rep in zip(args.runs, reports):
        rows.append({"engine": str(run), "precision": rep["precision"],
                     "criterion": rep.get("search", {}).get("criterion"),
                     "MMACs": round(rep["result"]["flops"] / 1e6, 2), "val %": rep["result"]["accuracy"],
                     "median ms": round(timing.ms[str(run)], 4),
                     "speed-up over the original": timing.ratios[str(run)].inverse().to_dict()})
    stopped = (f"{timing.blocks} blocks x {timing.runs_per_block} runs, {timing.seconds:.0f} s, stopped: "
               f"{timing.stopped} ({target.profile.name})")
    print(f"timing protocol: {stopped}")
    print(f"  {ORIGINAL}: {timing.ms[ORIGINAL]:.3f} ms")
    for row in rows[1:]:
        print(f"  {row['engine']} ({row['precision']}, criterion {row['criterion']}, {row['MMACs']} M MACs, "
              f"val {row['val %']} %): {row['median ms']:.3f} ms, speed-up {timing.speedup(row['engine'])}")
    if args.json:
        write_result(args.json, {"rows": rows, "notes": [f"Timed together: {stopped}."],
                                         "timing": timing.to_dict()})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
