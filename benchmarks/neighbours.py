"""Engines beside each other in one timing process (issue 26): does the engine timed before a
block change the block? The plain engines of the unpruned model (user_view's recipes: ONNX
Runtime FP32 and quantize_static INT8 at ORT's defaults, OpenVINO FP32 at LATENCY) and a
reference (the same FP32 ONNX on ORT with one thread, no spinning), timed in three ways:

  one process               all engines in one fresh process, blocks back to back
  one process, settled      + one untimed call before each block, a wait for a quiet CPU after it
  grouped, settled          + each further ORT session with a thread pool in a process of its own,
                            paired with a copy of the reference (what the run and user_view do)

Each engine's ratio to the reference (paired per block, median, 95 % interval), overall and by the
engine timed just before it.

    .venv/bin/python benchmarks/neighbours.py --model mobilenetv2 --seconds 60 --json benchmarks/results/neighbours.json
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import load_tensors, write_result  # noqa: E402
from user_view import PLAIN_IMAGES, interleave, user_engines  # noqa: E402

from edgecompress.targets.timing import median_interval  # noqa: E402
from edgecompress.zoo import pretrained  # noqa: E402

REFERENCE = "ort fp32, 1 thread, no spinning"


def grouped(specs: dict, reference: str) -> tuple[list[dict], dict]:
    """How the run grouped engines when this was measured: one process for all, but each further
    ORT session with a thread pool in a process of its own with a copy of `reference` to pair with."""
    pooled = [n for n, (rt, _, st) in specs.items() if rt == "ort" and int(st.get("intra_op_num_threads", 0)) != 1]
    groups, pairs = [{n: s for n, s in specs.items() if n not in pooled[1:]}], {}
    for name in pooled[1:]:
        pairs[name] = f"{reference} (beside {name})"
        groups.append({name: specs[name], pairs[name]: specs[reference]})
    return groups, pairs


def session(specs: dict, x: np.ndarray, *, grouped_: bool, settled: bool, seconds: float) -> dict:
    groups, pairs = grouped(specs, REFERENCE) if grouped_ else ([specs], {})
    rows = interleave(groups, x, max_time_s=seconds, settled=settled)
    out = {}
    for name in specs:
        ratio = lambda ms: ms[name] / ms[pairs.get(name, REFERENCE)]  # noqa: E731
        by = {}
        for ms, before in rows:
            by.setdefault(before[name], []).append(ratio(ms))
        out[name] = {"all": _interval([ratio(ms) for ms, _ in rows]),
                     **{f"after {b}": _interval(v) for b, v in by.items() if b and b != name and len(v) >= 12}}
    return {"blocks": len(rows), "processes": len(groups), "ratios": out}


def _interval(values: list[float]) -> str:
    med, low, high = median_interval(np.array(values))
    return f"{med:.3f} [{low:.3f}, {high:.3f}]"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="mobilenetv2")
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    model, _ = pretrained(args.model)
    data = load_tensors()
    order = torch.randperm(len(data.train_x), generator=torch.Generator().manual_seed(0))[:PLAIN_IMAGES]
    images = data.train_x[order].numpy().astype(np.float32)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        plain = user_engines(model, images, Path(tmp))
        specs = {REFERENCE: ("ort", plain["ort fp32"][1], {"session.intra_op.allow_spinning": "0",
                                                           "intra_op_num_threads": 1}),
                 "ort fp32 (defaults)": plain["ort fp32"], "ort quantize_static int8 (defaults)":
                 plain["ort quantize_static int8"], "openvino fp32 (LATENCY)": plain["openvino fp32"]}
        x = np.random.default_rng(0).standard_normal((1, *images.shape[1:])).astype(np.float32)
        for way, grouped_, settled in (("one process", False, False), ("one process, settled", False, True),
                                      ("grouped, settled", True, True)):
            result = session(specs, x, grouped_=grouped_, settled=settled, seconds=args.seconds)
            for name, r in result["ratios"].items():
                if name != REFERENCE:
                    rows.append({"timed": way, "engine": name, "over the reference": r["all"],
                                 "by the engine before it": "; ".join(f"{k}: {v}" for k, v in r.items() if k != "all"),
                                 "blocks": result["blocks"], "processes": result["processes"]})
                    print(rows[-1], flush=True)
    if args.json:
        write_result(args.json, {"command": " ".join(sys.argv), "rows": rows,
                                 "notes": [f"{args.model}; latency over `{REFERENCE}` (the same FP32 ONNX), paired "
                                           "per block of 20 calls, median and 95 % interval."]})


if __name__ == "__main__":
    main()
