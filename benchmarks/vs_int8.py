"""Does pruning pay on the device? The shipped engine against what a user gets without the tool.

For each zoo model: `compress --target x86-cpu --max-acc-drop 1` with every default (phase `run`,
one run directory per model), then (phase `time`, on a quiet machine) in ONE process:
  - the original, OpenVINO FP32;
  - the original quantized plainly: NNCF post-training INT8 (nncf.quantize, 300 training images,
    its defaults: the ten-second path a user would take instead of this tool);
  - the shipped engine;
timed in alternating rounds (measure_alternating), each speed-up the median of per-round ratios,
and the accuracy (validation and test, on the built artifacts) of each. Goal of the issue "Pruning
that pays on the device": shipped >= 1.5x faster than the unpruned INT8 at <= 1 point drop.

    .venv/bin/python benchmarks/vs_int8.py --phase run  --models resnet20 resnet56 mobilenetv2 --out runs/vs-int8
    .venv/bin/python benchmarks/vs_int8.py --phase time --out runs/vs-int8 --rounds 9
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
NNCF_IMAGES = 300   # nncf.quantize's default subset_size


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


def _plain_int8(model, data, onnx_path: Path, dst: Path) -> Path:
    """NNCF's own post-training quantization of the unpruned original (an OpenVINO IR)."""
    from edgecompress.calibration import quantize_int8
    from edgecompress.calibration.readers import calibration_batches
    batches = calibration_batches(data.train, count=NNCF_IMAGES, seed=0)
    return quantize_int8(onnx_path, dst, batches, backend="nncf")


def _accuracy(run, split) -> float | None:
    if split is None:
        return None
    from edgecompress.inputs.loaders import loader
    correct = total = 0
    for x, y in loader(split, batch_size=250, workers=0):
        logits = np.asarray(run(x.numpy().astype(np.float32)))
        correct += int((logits.argmax(1) == y.numpy()).sum())
        total += len(y)
    return 100.0 * correct / max(total, 1)


def time_phase(out: Path, rounds: int) -> list[dict]:
    from edgecompress.exporters import to_onnx
    from edgecompress.pipeline.config import RunConfig
    from edgecompress.inputs.resolve import resolve_inputs
    from edgecompress.profiles import load_profile
    from edgecompress.targets import BuildResult, get_target
    from edgecompress.targets.base import measure_alternating, median_ratio, middle
    rows = []
    for run in sorted(p for p in out.iterdir() if (p / "report.json").is_file()):
        rep = json.loads((run / "report.json").read_text())
        target = get_target(load_profile(rep["target"]))
        name = run.name
        # the run's own data, preprocessing and model, resolved as `compress` resolves them
        data, loaded, _ = resolve_inputs(RunConfig(target=rep["target"], max_acc_drop=1, model=name))
        model = loaded.model.eval()
        shape = tuple(data.input_shape)
        with tempfile.TemporaryDirectory() as tmp:
            tmp = Path(tmp)
            onnx = to_onnx(model, tmp / "original.onnx", input_shape=shape)
            fp32 = target.build(onnx, tmp / "fp32", precision="fp32")
            ir = _plain_int8(model, data, onnx, tmp / "plain_int8.xml")
            plain = BuildResult(engine=ir, onnx=onnx, precision="int8", runtime=target.runtime)
            shipped_onnx = run / ("model_int8.onnx" if rep["precision"] == "int8" else "model.onnx")
            shipped = BuildResult(engine=run / rep["engine"], onnx=shipped_onnx, precision=rep["precision"],
                                  runtime=target.runtime)
            builds = {"original fp32": fp32, "unpruned int8 (NNCF)": plain, "shipped": shipped}
            acc = {k: (_accuracy(target.runner(b), data.val), _accuracy(target.runner(b), data.test))
                   for k, b in builds.items()}
            per = dict(zip(builds, measure_alternating(target.measure, list(builds.values()), rounds)))
        row = {"model": name, "rounds": rounds, "mode": rep.get("pruning", {}).get("mode"),
               "blocks_removed": len(rep.get("pruning", {}).get("blocks_removed") or []),
               "macs_kept": rep["result"]["flops"] / rep["baseline"]["flops"], "precision": rep["precision"]}
        for k in builds:
            row[k] = {"ms": middle(per[k]).median_ms, "val": acc[k][0], "test": acc[k][1],
                      "rounds_ms": [round(t.median_ms, 4) for t in per[k]]}
        row["shipped_vs_plain_int8"] = 1 / median_ratio(per["shipped"], per["unpruned int8 (NNCF)"])
        row["shipped_vs_fp32"] = 1 / median_ratio(per["shipped"], per["original fp32"])
        row["plain_int8_vs_fp32"] = 1 / median_ratio(per["unpruned int8 (NNCF)"], per["original fp32"])
        row["drop_val"] = acc["original fp32"][0] - acc["shipped"][0]
        row["goal_met"] = row["shipped_vs_plain_int8"] >= 1.5 and row["drop_val"] <= 1.0
        rows.append(row)
        _print(row)
    (out / "vs_int8.json").write_text(json.dumps(rows, indent=1))
    return rows


def _print(row: dict) -> None:
    print(f"\n{row['model']} ({row['rounds']} alternating rounds; shipped: {row['precision']}, mode {row['mode']}, "
          f"{row['blocks_removed']} blocks removed, {100 * row['macs_kept']:.0f} % of the MACs)")
    for k in ("original fp32", "unpruned int8 (NNCF)", "shipped"):
        r = row[k]
        test = "n/a" if r["test"] is None else f"{r['test']:.2f} %"
        print(f"  {k:<22} {r['ms']:.3f} ms  val {r['val']:.2f} %  test {test}  rounds {r['rounds_ms']}")
    print(f"  shipped vs unpruned INT8: {row['shipped_vs_plain_int8']:.2f}x   vs FP32: {row['shipped_vs_fp32']:.2f}x   "
          f"plain INT8 vs FP32: {row['plain_int8_vs_fp32']:.2f}x   val drop {row['drop_val']:.2f} points   "
          f"goal (>= 1.5x at <= 1 point): {'met' if row['goal_met'] else 'NOT met'}")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--phase", choices=("run", "time", "all"), default="all")
    p.add_argument("--models", nargs="+", default=["resnet20", "resnet56", "mobilenetv2"])
    p.add_argument("--out", type=Path, default=Path("runs/vs-int8"))
    p.add_argument("--rounds", type=int, default=9)
    p.add_argument("compress_args", nargs="*", help="extra compress flags after --, e.g. -- --min-search-interval 0.05")
    args = p.parse_args(argv)
    if args.phase in ("run", "all"):
        run_phase(args.models, args.out, args.compress_args)
    if args.phase in ("time", "all"):
        time_phase(args.out, args.rounds)
    return 0


if __name__ == "__main__":
    sys.exit(main())
