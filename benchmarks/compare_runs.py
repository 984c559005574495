"""Finished runs' shipped engines timed side by side with the original model (one process).

The original is exported and built FP32 for the runs' target, then the original and every run's
engine are timed in alternating rounds (measure_alternating) so all see the same machine drift;
each engine's speed-up is the median over rounds of original / engine. Use it to compare runs made
at different times (a speed-up quoted by two separate runs mixes the machine's drift into it).

    .venv/bin/python benchmarks/compare_runs.py runs/quiet4 runs/quiet5 --rounds 7
"""
from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from edgecompress.exporters import to_onnx
from edgecompress.profiles import load_profile
from edgecompress.targets import BuildResult, get_target
from edgecompress.targets.base import measure_alternating, median_ratio, middle
from edgecompress.zoo import pretrained


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("runs", type=Path, nargs="+", help="finished run directories of the shipped ResNet-20, same target")
    p.add_argument("--rounds", type=int, default=7)
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
        builds = [target.build(original, Path(tmp) / "engine", precision="fp32")]
        for run, rep in zip(args.runs, reports):
            onnx = run / ("model_int8.onnx" if rep["precision"] == "int8" else "model.onnx")
            builds.append(BuildResult(engine=run / rep["engine"], onnx=onnx, precision=rep["precision"],
                                      runtime=target.runtime))
        timings = measure_alternating(target.measure, builds, args.rounds)
    print(f"{args.rounds} alternating rounds, {target.profile.name}; median ms per round shown")
    print(f"  original (fp32): {middle(timings[0]).median_ms:.3f} ms  rounds "
          + " ".join(f"{t.median_ms:.3f}" for t in timings[0]))
    for run, rep, times in zip(args.runs, reports, timings[1:]):
        crit = rep.get("search", {}).get("criterion", "?")
        print(f"  {run} ({rep['precision']}, criterion {crit}, {rep['result']['flops'] / 1e6:.2f} M MACs, "
              f"val {rep['result']['accuracy']:.2f} %): {middle(times).median_ms:.3f} ms, "
              f"speed-up {1 / median_ratio(times, timings[0]):.2f}x  rounds " + " ".join(f"{t.median_ms:.3f}" for t in times))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
