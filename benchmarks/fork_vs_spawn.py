"""Does the product's way of starting an engine's process move its speed (issue 26)?

verify times engines in processes forked from a host interpreter (targets/isolated.py: the host
imports the loader, then forks one worker per process group for each comparison); a user's
application, and `benchmarks/user_view.py`, start a fresh interpreter (spawn). Here the run's
shipped engine against the user's plain NNCF INT8 of the original (made as user_view makes it),
the same protocol both ways (blocks of 20 calls, shuffled, the other process stopped, a wait for
a quiet CPU after each), each `--rounds` times with a new host, `--layouts` fresh comparisons a way:
  forked:  timing.compare over isolated_calls (fresh workers forked from the host)
  spawned: user_view.interleave (fresh interpreters)

    .venv/bin/python benchmarks/fork_vs_spawn.py RUN --json benchmarks/results/fork_vs_spawn.json
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


def forked(specs: dict, *, max_time_s: float, seed: int, fresh: bool = False, plain: str = "nncf") -> Ratio:
    """`plain` over "shipped" in the product's protocol (the engines grouped as `process_groups`
    groups them); `fresh`: the workers fresh interpreters, each engine alone, as verify starts them."""
    calls = isolated.isolated_calls(isolated.process_groups(
        {n: (path, runtime, settings, 1) for n, (runtime, path, settings) in specs.items()}, each_alone=fresh),
        fresh=fresh)
    timing = compare(calls, reference="shipped", max_time_s=max_time_s, half_width=1e-9, warmup=50, seed=seed)
    return timing.ratios[plain]


def spawned(specs: dict, x: np.ndarray, *, max_time_s: float, seed: int, plain: str = "nncf") -> Ratio:
    rows = interleave([{"shipped": specs["shipped"]}, {plain: specs[plain]}], x, max_time_s=max_time_s, seed=seed)
    return Ratio(*median_interval(np.array([ms[plain] / ms["shipped"] for ms, _ in rows])))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("run", type=Path)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--layouts", type=int, default=2)
    parser.add_argument("--max-time-s", type=float, default=8.0, help="per comparison")
    args = parser.parse_args()
    report = json.loads((args.run / "report.json").read_text())
    model, images = original(report)
    x = np.random.default_rng(0).standard_normal((1, *images.shape[1:])).astype(np.float32)
    found: dict[str, list[Ratio]] = {"forked": [], "spawned": []}
    with tempfile.TemporaryDirectory() as tmp:
        specs = {"shipped": shipped_engine(args.run), "nncf": user_engines(model, images, Path(tmp))["openvino nncf int8"]}
        for round_ in range(args.rounds):
            if isolated._host is not None:   # a new host interpreter each round
                isolated._host.process.kill()
                isolated._host.process.wait()
            isolated.start_host()
            for seed in range(args.layouts):
                for way in found:
                    r = (forked(specs, max_time_s=args.max_time_s, seed=seed) if way == "forked"
                         else spawned(specs, x, max_time_s=args.max_time_s, seed=seed))
                    found[way].append(r)
                    print(f"host {round_} layout {seed} {way:<7} nncf / shipped {r}", flush=True)
    write_ways(found, args.json, key="way", label="nncf over shipped")

if __name__ == "__main__":
    main()
