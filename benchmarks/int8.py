"""INT8 on this CPU: FP32 vs INT8 accuracy and latency in OpenVINO and ONNX Runtime, and
ORT-QDQ vs NNCF as the INT8 backend for OpenVINO (issue 5).

For each model (ResNet-20, ResNet-56 when its checkpoint is shipped) on Fashion-MNIST:
  accuracy  : the built artifact, run in its own runtime, on the 5,000-image validation split
              (calibration: 512 training images, never validation);
  latency   : batch 1, every engine of a model relative to OpenVINO FP32 of that model, all timed
              in ONE run of the timing protocol (targets/timing.py: interleaved blocks, median of
              paired ratios, 95 % interval; x86-cpu = OpenVINO, x86-cpu-ort = ONNX Runtime).

    .venv/bin/python benchmarks/int8.py                # full run (about 2 min on 2 cores)
    .venv/bin/python benchmarks/int8.py --quick        # smoke run: ResNet-20, 500 val images
    .venv/bin/python benchmarks/int8.py --skip-latency # accuracy only
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
import warnings
from pathlib import Path

from edgecompress.targets.engines import engine_accuracy
from edgecompress.calibration import (array_batches, calibration_batches, dataset_arrays, openvino_runner,
                                      ort_runner, quantize_int8)
from edgecompress.exporters import onnx_parity, to_onnx
from edgecompress.targets import BuildResult, get_target
from edgecompress.targets.timing import compare
from edgecompress.zoo import CHECKPOINTS, pretrained
from edgecompress.inputs.data import fashion_mnist

MODELS = ("resnet20", "resnet56")
REFERENCE = "openvino fp32"   # the ratios' reference: what a user of the x86 target gets without quantizing
TIME_S = 40.0


def cpu_flags() -> str:
    try:
        flags = next(l for l in Path("/proc/cpuinfo").read_text().splitlines() if l.startswith("flags")).split()
    except (OSError, StopIteration):
        return platform.machine()
    wanted = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_int8")
    return " ".join(f for f in wanted if f in flags) or "no AVX2"


def targets(args):
    out = {}
    for name in ("x86-cpu", "x86-cpu-ort"):
        target = get_target(name)
        bench = {"threads": args.threads} if args.threads else {}
        if args.quick:
            bench.update(warmup=5, iterations=30, min_time_s=0.2)
        if bench:  # profiles are frozen: override on a copy, as CLI flags do
            profile = target.profile.model_copy(
                update={"benchmark": target.profile.benchmark.model_copy(update=bench)})
            target = get_target(profile)
        out[target.profile.runtime] = target
    return out


def artifacts(name: str, work: Path, calib, *, quick: bool) -> dict[str, tuple[Path, str]]:
    """Every artifact to compare: label -> (path, kind)."""
    model, _ = pretrained(name)
    fp32 = to_onnx(model, work / "model.onnx", input_shape=(1, 28, 28))
    print(f"  parity torch vs ONNX: {onnx_parity(model, fp32, calib[0][:8]):.2e}")
    out = {"fp32": (fp32, "fp32")}
    methods = ("minmax",) if quick else ("minmax", "entropy", "percentile")
    for method in methods:
        t = time.perf_counter()
        out[f"ort-qdq/{method}"] = (quantize_int8(fp32, work / f"qdq_{method}.onnx", calib, method=method), "qdq")
        print(f"  ORT-QDQ {method}: {time.perf_counter() - t:.1f} s")
    for method in methods[:1] if quick else ("minmax", "percentile"):
        t = time.perf_counter()
        out[f"nncf/{method}"] = (quantize_int8(fp32, work / f"nncf_{method}.xml", calib, method=method,
                                               backend="nncf"), "ir")
        print(f"  NNCF {method}: {time.perf_counter() - t:.1f} s")
    return out


def build(target, path: Path, kind: str, fp32: Path, out: Path) -> BuildResult:
    if kind == "ir":  # NNCF already wrote the OpenVINO INT8 engine
        return BuildResult(engine=path, onnx=fp32, precision="int8", runtime="openvino",
                           files={"engine": path})
    return target.build(path, out, precision="int8" if kind == "qdq" else "fp32")


def int8_layers(xml: Path) -> str:
    """How many conv/FC layers the OpenVINO CPU plugin actually runs in INT8 ("int8/total")."""
    from edgecompress.calibration import openvino_runner
    kinds = ("Convolution", "FullyConnected", "MatMul")
    ops = [op.get_rt_info() for op in openvino_runner(xml).handle.get_runtime_model().get_ordered_ops()]
    layers = [i["runtimePrecision"].astype(str) for i in ops if i["layerType"].astype(str) in kinds]
    return f"{sum(p in ('u8', 'i8') for p in layers)}/{len(layers)}"


def measure_model(name: str, args, tgts, splits) -> list[dict]:
    calib = calibration_batches(splits.train, count=args.calibration_images)
    images, labels = dataset_arrays(splits.val, limit=500 if args.quick else None)
    rows, calls = [], {}
    with tempfile.TemporaryDirectory(prefix=f"int8-{name}-") as tmp:
        work = Path(tmp)
        arts = artifacts(name, work, calib, quick=args.quick)
        fp32 = arts["fp32"][0]
        for label, (path, kind) in arts.items():
            for runtime, target in tgts.items():
                if kind == "ir" and runtime != "openvino":
                    continue
                built = build(target, path, kind, fp32, work / f"{runtime}_{label.replace('/', '_')}")
                run = openvino_runner(built.engine) if runtime == "openvino" else ort_runner(built.engine)
                rows.append({"model": name, "runtime": runtime, "artifact": label,
                             "accuracy": round(engine_accuracy(run, array_batches(images, labels)), 2),
                             "latency_vs_openvino_fp32": None,
                             "int8_layers": int8_layers(built.engine) if runtime == "openvino" else None})
                calls[f"{runtime} {label}"] = target.caller(built)
        if not args.skip_latency:
            timing = compare(calls, reference=REFERENCE, max_time_s=TIME_S)
            print(f"  timing: {timing.blocks} blocks x {timing.runs_per_block} runs, {timing.seconds:.0f} s, "
                  f"{timing.stopped}")
            for row in rows:
                row["latency_vs_openvino_fp32"] = timing.ratios[f"{row['runtime']} {row['artifact']}"].to_dict()
    for row in rows:
        lat = row["latency_vs_openvino_fp32"]
        shown = "-" if lat is None else f"{lat['ratio']:.3f}x [{lat['low']:.3f}, {lat['high']:.3f}]"
        print(f"  {row['runtime']:8s} {row['artifact']:18s} acc {row['accuracy']:6.2f}%  latency {shown} of "
              f"{REFERENCE}  int8 layers {row['int8_layers'] or '-'}")
    return rows


def markdown(rows: list[dict]) -> str:
    lines = [f"| model | runtime | artifact | val accuracy % | latency / {REFERENCE} (95 % interval) | INT8 conv/FC |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        lat = r["latency_vs_openvino_fp32"]
        shown = "-" if lat is None else f"{lat['ratio']:.3f} [{lat['low']:.3f}, {lat['high']:.3f}]"
        lines.append(f"| {r['model']} | {r['runtime']} | {r['artifact']} | {r['accuracy']:.2f} | {shown} | "
                     f"{r['int8_layers'] or '-'} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="ResNet-20 only, 500 val images, short timing")
    ap.add_argument("--skip-latency", action="store_true", help="accuracy only")
    ap.add_argument("--threads", type=int, default=None, help="runtime threads (default: runtime's own)")
    ap.add_argument("--calibration-images", type=int, default=512)
    ap.add_argument("--markdown", action="store_true", help="print the table for docs/benchmarks.md")
    ap.add_argument("--out", type=Path, default=None, help="write the rows as JSON here")
    args = ap.parse_args(argv)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    print(f"CPU: {platform.processor() or platform.machine()} [{cpu_flags()}]")
    splits, tgts = fashion_mnist(), targets(args)
    rows = []
    for name in MODELS[:1] if args.quick else MODELS:
        if not (CHECKPOINTS / f"{name}_fashion-mnist.pt").is_file():
            print(f"{name}: no checkpoint at {CHECKPOINTS}/{name}_fashion-mnist.pt, skipped")
            continue
        print(f"{name}:")
        rows += measure_model(name, args, tgts, splits)
    if args.markdown:
        print(markdown(rows))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"cpu_flags": cpu_flags(), "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
