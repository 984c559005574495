"""The product's protocol (timing.compare through the isolated host, as verify times) on a finished
run's shipped engine and the user's NNCF INT8 made as benchmarks/user_view.py makes it, the two
alone, `--layouts` times in a row (default 4), alternately the two engines in one fresh process
("together", how verify groups them) and each in a fresh process of its own ("apart"). Does one
timing of the pair settle its ratio to 3 %, and does the median over layouts?

    .venv/bin/python benchmarks/protocol_vs_user.py RUN_DIR --json out.json [--layouts 8 --max-time-s 8]
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import write_result  # noqa: E402
from user_view import original, user_engines  # noqa: E402
from edgecompress.targets.isolated import isolated_calls  # noqa: E402
from edgecompress.targets.timing import compare  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("run", type=Path)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--max-time-s", type=float, default=20.0)
    parser.add_argument("--layouts", type=int, default=4)
    args = parser.parse_args()
    report = json.loads((args.run / "report.json").read_text())
    deploy = json.loads((args.run / "deploy.json").read_text())
    model, images = original(report)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        _, xml, settings = user_engines(model, images, Path(tmp))["openvino nncf int8"]
        engine = (args.run / deploy["engine"], deploy["runtime"], deploy["settings"], 1)
        yardstick = (xml, "openvino", settings, 1)
        for layout in ["apart", "together"] * (args.layouts // 2):
            groups = ([{"engine": engine}, {"yardstick": yardstick}] if layout == "apart"
                      else [{"engine": engine, "yardstick": yardstick}])
            t = compare(isolated_calls(groups), reference="engine", max_time_s=args.max_time_s, warmup=20)
            rows.append({"layout": layout, "yardstick / engine": t.ratios["yardstick"].to_dict(), "blocks": t.blocks,
                         "engine ms": round(t.ms["engine"], 4), "yardstick ms": round(t.ms["yardstick"], 4)})
            print(rows[-1], flush=True)
    medians = sorted(r["yardstick / engine"]["ratio"] for r in rows)
    over_layouts = {"median": float(np.median(medians)), "min": medians[0], "max": medians[-1]}
    print("over layouts:", over_layouts)
    if args.json:
        write_result(args.json, {"command": " ".join(sys.argv), "run": str(args.run),
                                 "run_says": report["pruning_speedup"], "rows": rows,
                                 "over_layouts": over_layouts})


if __name__ == "__main__":
    main()
