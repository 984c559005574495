"""Two end-to-end claims of issue 21, each one `compress` run of the default model:

- a latency budget at half the original's FP32 latency (`--latency-budget-ms`, no accuracy budget)
  is met in verify, with the interval of the engine's latency;
- on an estimated target (jetson-orin, `--max-acc-drop 1`) no accuracy is spent for a predicted
  gain under 1.05x (the pruned model ships only at >= 1.05x over the unpruned and the yardstick).

    .venv/bin/python benchmarks/budget_and_estimate.py --out runs/claims --json out.json
    .venv/bin/python benchmarks/budget_and_estimate.py --runs runs/b runs/j --json out.json   # finished runs

The budget is half the FP32 latency of the original measured here first (the protocol's median
of the engine timed alone, `targets/timing.py`), so it moves with the machine; the row gives it
as a fraction of the FP32 latency the run itself measured in its baseline. The figures are the
runs' own report.json.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import write_result  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
FRACTION = 0.5


def fp32_ms() -> float:
    """The default model's FP32 OpenVINO engine, timed by the protocol (its median block, ms)."""
    from edgecompress.exporters import to_onnx
    from edgecompress.inputs import resolve_inputs
    from edgecompress.pipeline.config import RunConfig
    from edgecompress.profiles import load_profile
    from edgecompress.targets import get_target
    from edgecompress.targets.timing import time_builds
    target = get_target(load_profile("x86-cpu"))
    data, loaded, _ = resolve_inputs(RunConfig(target="x86-cpu", max_acc_drop=1.0))
    with tempfile.TemporaryDirectory() as tmp:
        onnx = to_onnx(loaded.model.eval(), Path(tmp) / "original.onnx", input_shape=tuple(data.input_shape))
        builds = {"fp32": target.build(onnx, Path(tmp) / "fp32", precision="fp32")}
        return time_builds(target, builds, reference="fp32", max_time_s=10.0).ms["fp32"]


def compress(out: Path, *args: str) -> None:
    if (out / "report.json").is_file():
        print(f"{out}: finished, kept")
        return
    cmd = [str(REPO / ".venv/bin/compress"), *args, "--out", str(out)]
    print("$", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)


def row(run: Path) -> dict:
    from edgecompress.report.assemble import summary
    rep = json.loads((run / "report.json").read_text())
    decision = rep["pruning"].get("decision") or {}
    speedups = decision.get("speedups") or {}
    out = {"run": str(run), "target": rep["target"], "code": (rep.get("code") or "?")[:12],
           "latency": rep["result"]["latency_method"], "max_acc_drop": rep["max_acc_drop"],
           "budget_ms": rep["latency_budget_ms"], "fp32_ms": round(rep["baseline"]["latency_ms"], 4),
           "budget_of_fp32": round(rep["latency_budget_ms"] / rep["baseline"]["latency_ms"], 3)
           if rep["latency_budget_ms"] else None,
           "ms": round(rep["result"]["latency_ms"], 4),
           "interval_ms": [round(v, 4) for v in rep["result"].get("latency_interval_ms") or []],
           "budget_met": rep["budget"]["met"], "budget_clear": (rep["budget"].get("latency") or {}).get("clear"),
           "pruned": not rep["pruning"]["unpruned"], "blocks_removed": len(rep["pruning"]["blocks_removed"] or []),
           "val": round(rep["result"]["accuracy"], 2), "val_original": round(rep["baseline"]["accuracy"], 2),
           "vs_unpruned": speedups.get("unpruned"), "vs_yardstick": rep["pruning_speedup"],
           "table_rescaled": decision.get("latency_scale", 1.0) != 1.0,
           "summary": summary(rep, run)}
    if rep["result"]["latency_method"] == "estimated":
        gains = [g["ratio"] for g in speedups.values()]
        out["spent_accuracy_below_1_05x"] = out["pruned"] and bool(gains) and min(gains) < 1.05
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=Path("runs/claims"))
    p.add_argument("--runs", type=Path, nargs="*", help="read these finished runs instead")
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    runs = args.runs
    if not runs:
        budget, estimate = args.out / "budget", args.out / "jetson-orin"
        if not (budget / "report.json").is_file():
            ms = fp32_ms()
            print(f"original FP32 here: {ms:.4f} ms; budget {FRACTION} x = {FRACTION * ms:.4f} ms", flush=True)
            compress(budget, "--target", "x86-cpu", "--latency-budget-ms", f"{FRACTION * ms:.4f}")
        compress(estimate, "--target", "jetson-orin", "--max-acc-drop", "1")
        runs = [budget, estimate]
    rows = [row(r) for r in runs]
    for r in rows:
        print(r["summary"])
    if args.json:
        cols = [k for k in rows[0] if k != "summary"] + ["spent_accuracy_below_1_05x"]
        write_result(args.json, {"rows": [{k: r.get(k) for k in cols} for r in rows],
                                 "notes": [f"`{r['run']}`: {r['summary']}" for r in rows]})
    return 0


if __name__ == "__main__":
    sys.exit(main())
