"""Does the tool pay on the device? Each run's shipped engine against what a user gets without it.

Phase `run`: `compress --target x86-cpu --max-acc-drop 1 --model NAME` with every default, one
run directory per model under --out. Phase `time` (quiet machine; nothing else of yours running),
for every finished run found under --out (or the run directories given with --runs), with the
model, data and preprocessing read from the run's own report.json, in one process:
  - the original, OpenVINO FP32;
  - the original quantized plainly: `nncf.quantize` with its defaults on 300 training images
    (calibration/plain.py: the ten-second path a user takes instead of the tool);
  - the shipped engine;
timed in ONE run of the timing protocol (targets/timing.py: engines interleaved in blocks of 20
runs, order shuffled per block, median of paired ratios, 95 % interval), and the accuracy
(validation and test, on the built artifacts) of each. The yardstick is the faster plain engine
that keeps the promise. Goals (issue 21): ResNet-20 >= 1.3x, the others >= 1.5x over the
yardstick at <= 1 point; the run's own `pruning_speedup` agrees with this independent figure
within 3 %.

    .venv/bin/python benchmarks/vs_int8.py --phase run --models resnet20 resnet56 mobilenetv2 resnet18-64
    .venv/bin/python benchmarks/vs_int8.py --phase time --json benchmarks/results/vs_int8.raw.json
    .venv/bin/python benchmarks/vs_int8.py --runs runs/r20-default --json out.json   # any finished runs
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
GOALS = {"resnet20": 1.3}   # issue 21; every other model: 1.5
COLUMNS = ["model", "code", "pruned", "blocks_removed", "macs_kept", "precision", "val_fp32", "val_plain_int8",
           "val_shipped", "drop_points", "vs_fp32", "vs_plain_int8", "vs_yardstick", "run_says", "agree_within_3pct",
           "goal", "goal_met", "timing"]
LABELS = {"vs_fp32": "shipped vs FP32", "vs_plain_int8": "shipped vs plain NNCF INT8",
          "vs_yardstick": "**vs yardstick**", "run_says": "the run's own figure", "val_fp32": "val FP32 %",
          "val_plain_int8": "val plain INT8 %", "val_shipped": "val shipped %", "drop_points": "drop (points)"}
TIME_S, HALF_WIDTH = 60.0, 0.005


def run_phase(models: list[str], out: Path, extra: list[str]) -> None:
    for name in models:
        run = out / name
        if (run / "report.json").is_file():
            print(f"{name}: finished run in {run}, kept")
            continue
        cmd = [str(REPO / ".venv/bin/compress"), "--target", "x86-cpu", "--max-acc-drop", "1", "--model", name,
               "--out", str(run), *extra, *(["--resume"] if run.exists() else [])]
        print("$", " ".join(cmd), flush=True)
        subprocess.run(cmd, check=True)


def run_config(report: dict):
    """The run's own request (model, weights, data, preprocessing), as `compress` resolved it."""
    from edgecompress.pipeline.config import RunConfig
    req = report["request"]
    return RunConfig(**{k: v for k, v in req.items() if k in RunConfig.__dataclass_fields__})


def time_run(run: Path) -> dict:
    from edgecompress.calibration.plain import PLAIN_IMAGES, plain_int8
    from edgecompress.calibration.readers import calibration_batches
    from edgecompress.exporters import to_onnx
    from edgecompress.inputs import resolve_inputs
    from edgecompress.profiles import load_profile
    from edgecompress.targets import BuildResult, get_target
    from edgecompress.targets.engines import engine_accuracy
    from edgecompress.targets.timing import time_builds
    from edgecompress.inputs.loaders import loader
    rep = json.loads((run / "report.json").read_text())
    target = get_target(load_profile(rep["target"]))
    data, loaded, _ = resolve_inputs(run_config(rep))
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        onnx = to_onnx(loaded.model.eval(), tmp / "original.onnx", input_shape=tuple(data.input_shape))
        images = calibration_batches(data.train, count=PLAIN_IMAGES, seed=0, batch_size=1)
        builds = {"original fp32": target.build(onnx, tmp / "fp32", precision="fp32"),
                  "plain int8 (nncf)": target.build(plain_int8("openvino", onnx, tmp / "plain", images), tmp / "int8",
                                                    precision="int8"),
                  "shipped": BuildResult(engine=run / rep["engine"], onnx=run / rep["artifacts"]["onnx"],
                                         precision=rep["precision"], runtime=target.runtime)}
        acc = {k: tuple(engine_accuracy(target.runner(b), loader(s, batch_size=250)) if s is not None else None
                        for s in (data.val, data.test)) for k, b in builds.items()}
        timing = time_builds(target, builds, reference="shipped", max_time_s=TIME_S, half_width=HALF_WIDTH)
    return _row(run, rep, builds, acc, timing)


def _row(run: Path, rep: dict, builds: dict, acc: dict, timing) -> dict:
    model = rep["request"]["model"] or "resnet20"
    floor = acc["original fp32"][0] - 1.0
    plain = [k for k in ("original fp32", "plain int8 (nncf)") if acc[k][0] >= floor - 1e-9]
    # ratios are other / shipped: the fastest plain engine is the one with the SMALLEST speed-up over it
    yardstick = min(plain, key=lambda k: timing.ratios[k].median)
    gain = timing.ratios[yardstick]
    own = rep["pruning_speedup"]
    row = {"model": model, "run": str(run), "code": (rep.get("code") or "?")[:12], "precision": rep["precision"],
           "pruned": not rep["unpruned"]["shipped"],
           "blocks_removed": len(rep["pruning"].get("blocks_removed") or []),
           "macs_kept": round(rep["result"]["flops"] / rep["baseline"]["flops"], 3),
           "val_fp32": round(acc["original fp32"][0], 2), "val_plain_int8": round(acc["plain int8 (nncf)"][0], 2),
           "val_shipped": round(acc["shipped"][0], 2), "test_shipped": _r(acc["shipped"][1]),
           "drop_points": round(acc["original fp32"][0] - acc["shipped"][0], 2),
           "ms_fp32": round(timing.ms["original fp32"], 4), "ms_plain_int8": round(timing.ms["plain int8 (nncf)"], 4),
           "ms_shipped": round(timing.ms["shipped"], 4),
           "vs_fp32": timing.ratios["original fp32"].to_dict(),
           "vs_plain_int8": timing.ratios["plain int8 (nncf)"].to_dict(),
           "yardstick": yardstick, "vs_yardstick": gain.to_dict(), "run_says": own,
           "agree_within_3pct": abs(own["ratio"] / timing.ratios[own_name(rep)].median - 1) <= 0.03,
           "goal": GOALS.get(model, 1.5), "timing": f"{timing.blocks} blocks x {timing.runs_per_block} runs, "
                                                   f"{timing.seconds:.0f} s, {timing.stopped}"}
    row["goal_met"] = gain.median >= row["goal"] and row["drop_points"] <= 1.0
    return row


def own_name(rep: dict) -> str:
    """The engine the run's own pruning_speedup is against: its yardstick."""
    return "plain int8 (nncf)" if rep["unpruned"]["precision"] == "int8" else "original fp32"


def _r(v: float | None) -> float | None:
    return None if v is None else round(v, 2)


def _print(row: dict) -> None:
    def t(d): return f"{d['ratio']:.3f}x [{d['low']:.3f}, {d['high']:.3f}]"
    print(f"\n{row['model']}: shipped {row['precision']}, {'pruned' if row['pruned'] else 'unpruned'}, "
          f"{row['blocks_removed']} blocks removed, {100 * row['macs_kept']:.0f} % of the MACs ({row['timing']})")
    print(f"  val: fp32 {row['val_fp32']} %, plain int8 {row['val_plain_int8']} %, shipped {row['val_shipped']} % "
          f"(drop {row['drop_points']} points); ms: {row['ms_fp32']} / {row['ms_plain_int8']} / {row['ms_shipped']}")
    print(f"  shipped vs fp32 {t(row['vs_fp32'])}, vs plain int8 {t(row['vs_plain_int8'])}; vs the yardstick "
          f"({row['yardstick']}) {t(row['vs_yardstick'])}; the run said {t(row['run_says'])} "
          f"({'agrees' if row['agree_within_3pct'] else 'DISAGREES'} within 3 %); goal >= {row['goal']}x at <= 1 "
          f"point: {'met' if row['goal_met'] else 'NOT met'}")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--phase", choices=("run", "time", "all"), default="all")
    p.add_argument("--models", nargs="+", default=["resnet20", "resnet56", "mobilenetv2", "resnet18-64"])
    p.add_argument("--out", type=Path, default=Path("runs/vs-int8"))
    p.add_argument("--runs", type=Path, nargs="*", help="time these finished run directories instead of --out's")
    p.add_argument("--json", type=Path, help="write {'rows': [...]} here")
    p.add_argument("compress_args", nargs="*", help="extra compress flags after --")
    args = p.parse_args(argv)
    if args.phase in ("run", "all") and not args.runs:
        run_phase(args.models, args.out, args.compress_args)
    if args.phase in ("time", "all"):
        runs = args.runs or sorted(p for p in args.out.iterdir() if (p / "report.json").is_file())
        rows = []
        for run in runs:
            rows.append(time_run(run))
            _print(rows[-1])
        if args.json:
            write_result(args.json, {"rows": rows, "columns": COLUMNS, "labels": LABELS})
    return 0


if __name__ == "__main__":
    sys.exit(main())
