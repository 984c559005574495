"""Does verify's headline comparison read what the independent harness reads on the same files (issue 26)?

After the fresh-interpreter change, two default runs said 1.57x over NNCF INT8 where
`benchmarks/user_view.py` said 1.61-1.63x. Here, on one run directory, alternating, each way
`--layouts` times (a fresh comparison each time), the shipped engine against the user's plain NNCF
INT8 (made as user_view makes it):
  pair:        user_view.interleave, the two engines (the independent harness's protocol)
  product:     timing.compare over isolated_calls(fresh=True), the two engines (verify's protocol)
  product+set: the same with the other plain engines verify times beside them (OpenVINO FP32,
               ONNX Runtime FP32 of the original): does timing more engines in one comparison move it?

    .venv/bin/python benchmarks/verify_vs_user.py RUN --json benchmarks/results/verify_vs_user.json
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import write_ways  # noqa: E402
from user_view import interleave, original, shipped_engine, user_engines  # noqa: E402

from edgecompress.targets import isolated  # noqa: E402
from edgecompress.targets.timing import Ratio, compare, median_interval  # noqa: E402

WAYS = ("pair", "product", "product+set")


def product(specs: dict, *, max_time_s: float, seed: int) -> Ratio:
    calls = isolated.isolated_calls(isolated.process_groups(
        {n: (path, runtime, settings, 1) for n, (runtime, path, settings) in specs.items()}), fresh=True)
    timing = compare(calls, reference="shipped", max_time_s=max_time_s, half_width=1e-9, warmup=50, seed=seed)
    return timing.ratios["nncf"]


def pair(specs: dict, x: np.ndarray, *, max_time_s: float, seed: int) -> Ratio:
    rows = interleave([{"shipped": specs["shipped"]}, {"nncf": specs["nncf"]}], x, max_time_s=max_time_s, seed=seed)
    return Ratio(*median_interval(np.array([ms["nncf"] / ms["shipped"] for ms, _ in rows])))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("run", type=Path)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--layouts", type=int, default=6)
    parser.add_argument("--max-time-s", type=float, default=8.0, help="per comparison")
    args = parser.parse_args()
    report = json.loads((args.run / "report.json").read_text())
    model, images = original(report)
    x = np.random.default_rng(0).standard_normal((1, *images.shape[1:])).astype(np.float32)
    found: dict[str, list[Ratio]] = {way: [] for way in WAYS}
    with tempfile.TemporaryDirectory() as tmp:
        user = user_engines(model, images, Path(tmp))
        specs = {"shipped": shipped_engine(args.run), "nncf": user["openvino nncf int8"]}
        rest = {"ov fp32": user["openvino fp32"], "ort fp32": user["ort fp32"]}
        isolated.start_host()
        for seed in range(args.layouts):
            for way in np.random.default_rng(seed).permutation(WAYS):
                r = (pair(specs, x, max_time_s=args.max_time_s, seed=seed) if way == "pair"
                     else product({**specs, **(rest if way == "product+set" else {})},
                                  max_time_s=args.max_time_s, seed=seed))
                found[str(way)].append(r)
                print(f"layout {seed} {way:<11} nncf / shipped {r}", flush=True)
    write_ways(found, args.json, key="way", label="nncf over shipped")


if __name__ == "__main__":
    main()
