"""Does verify's headline comparison read what the independent harness reads on the same files (issue 26)?

After the fresh-interpreter change, two default runs said 1.57x over NNCF INT8 where
`benchmarks/user_view.py` said 1.61-1.63x. Here, on one run directory, alternating, each way
`--layouts` times (a fresh comparison each time), the shipped engine against the user's plain NNCF
INT8 (made as user_view makes it; `--plain` names another plain engine):
  pair:        user_view.interleave, the two engines (the independent harness's protocol)
  product:     timing.compare over isolated_calls(fresh=True), the two engines (verify's protocol)
  product+set: the same with the other plain engines verify times beside them (of NNCF INT8,
               OpenVINO FP32 and ONNX Runtime FP32 of the original, the two not --plain), each
               alone in a fresh interpreter as verify starts them since session 23: does that move it?

    .venv/bin/python benchmarks/verify_vs_user.py RUN --json benchmarks/results/verify_vs_user.json
"""
from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import user_view  # noqa: E402
from _common import write_ways  # noqa: E402
from fork_vs_spawn import forked, spawned  # noqa: E402

from edgecompress.targets import isolated  # noqa: E402
from edgecompress.targets.timing import Ratio  # noqa: E402

WAYS = ("pair", "product", "product+set")


def main() -> None:
    args = user_view.run_benchmark_args(__doc__, layouts=6, max_time_s=8.0, plain="openvino nncf int8")
    model, images, x = user_view.run_original(args.run)
    found: dict[str, list[Ratio]] = {way: [] for way in WAYS}
    with tempfile.TemporaryDirectory() as tmp:
        user = user_view.user_engines(model, images, Path(tmp))
        specs = {"shipped": user_view.shipped_engine(args.run), "plain": user[args.plain]}
        rest = {n: user[n] for n in ("openvino nncf int8", "openvino fp32", "ort fp32") if n != args.plain}
        isolated.start_host()
        for seed in range(args.layouts):
            for way in np.random.default_rng(seed).permutation(WAYS):
                r = (spawned(specs, x, max_time_s=args.max_time_s, seed=seed, plain="plain") if way == "pair"
                     else forked({**specs, **(rest if way == "product+set" else {})},
                                 max_time_s=args.max_time_s, seed=seed, fresh=True, plain="plain"))
                found[str(way)].append(r)
                print(f"layout {seed} {way:<11} {args.plain} / shipped {r}", flush=True)
    write_ways(found, args.json, key="way", label=f"{args.plain} over shipped")


if __name__ == "__main__":
    main()
