"""Channel alignment and the latency estimator on x86 (OpenVINO), issue 4.

Part A, alignment: the shipped ResNet-20 pruned by edgecompress.pruning (permutation importance,
the default allocation) at fixed knobs, with every group's keep count rounded UP to a multiple of
1, 4, 8, 16. Each variant is exported, built as an OpenVINO IR and timed with the unpruned
original in ONE run of the timing protocol (targets/timing.py: blocks of 20 runs, order shuffled
per block, median of paired ratios with a 95 % interval). Rounding up keeps MORE channels, so the
question is whether the extra FLOPs are free (or even faster) on this CPU.

Part B, estimator: for the probes of a cr sweep (the models a search would try, rounded to the
profile's channel multiple), the roofline estimate (x86-cpu profile figures) against the measured
OpenVINO latency; Spearman rho says how well the estimate ranks them.

    .venv/bin/python benchmarks/alignment.py                 # full run (minutes; quiet machine)
    .venv/bin/python benchmarks/alignment.py --quick         # smoke run
    .venv/bin/python benchmarks/alignment.py --out results.json --markdown
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

from edgecompress.exporters import to_onnx
from edgecompress.profiles import load_profile
from edgecompress.pruning import PruningPlan
from edgecompress.targets import get_target, layer_costs
from edgecompress.targets.base import host_cpu
from edgecompress.targets.timing import time_builds
from edgecompress.zoo import pretrained
from edgecompress.inputs.data import fashion_mnist

MULTIPLES = (1, 4, 8, 16)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="few knobs, short timing: a smoke run")
    p.add_argument("--model", default="resnet20")
    p.add_argument("--profile", default="x86-cpu", help="x86-cpu (OpenVINO) or x86-cpu-ort (ONNX Runtime)")
    p.add_argument("--knobs", type=float, nargs="*", help="knobs for part A (default 0.95 0.8)")
    p.add_argument("--sweep", type=int, default=10, help="probes in part B's cr sweep")
    p.add_argument("--threads", type=int, default=None, help="INFERENCE_NUM_THREADS (default: OpenVINO's)")
    p.add_argument("--seconds", type=float, default=None, help="protocol time cap per part (default 60; quick 5)")
    p.add_argument("--precision", default="fp32", choices=["fp32", "fp16", "int8"],
                   help="int8: QDQ from ONNX Runtime's quantizer (64 training images), as the search's probes")
    p.add_argument("--out", "--json", type=Path, default=None, help="write the results as JSON here")
    p.add_argument("--markdown", action="store_true", help="print the tables as Markdown")
    return p.parse_args(argv)


def x86_target(args):
    profile = load_profile(args.profile)
    bench = {"threads": args.threads} if args.threads else {}
    if args.quick:
        bench.update(warmup=5, iterations=30, min_time_s=0.2)
    profile = profile.model_copy(update={"benchmark": profile.benchmark.model_copy(update=bench)})
    return get_target(profile)


def calibration(n_batches: int) -> list[torch.Tensor]:
    train = fashion_mnist().train
    g = torch.Generator().manual_seed(0)
    idx = torch.randperm(len(train), generator=g)[: n_batches * 32].tolist()
    xs = torch.stack([train[i][0] for i in idx])
    return list(xs.split(32))


def macs(onnx_path: Path, profile) -> float:
    """Unaligned multiply-accumulates of the convs and the fc (alignment 1)."""
    flat = profile.model_copy(update={"device": profile.device.model_copy(update={"alignment": 1})})
    return sum(c.flops for c in layer_costs(onnx_path, flat, precision="fp32")) / 2


def build(model, name: str, work: Path, target, precision: str) -> tuple[dict, object]:
    """Export and build one model; its static figures and the estimate (timing comes later)."""
    onnx_path = to_onnx(model, work / f"{name}.onnx", input_shape=(1, 28, 28))
    source = onnx_path
    if precision == "int8":   # INT8 kernels (VNNI) block channels differently from FP32: measure, don't assume
        from edgecompress.calibration import SYMMETRIC_ACTIVATIONS, quantize_int8
        source = quantize_int8(onnx_path, work / f"{name}_int8.onnx", [b.numpy() for b in calibration(2)],
                               symmetric_activations=SYMMETRIC_ACTIVATIONS.get(target.profile.runtime, False))
    built = target.build(source, work / name, precision=precision)
    est = get_target(target.profile, device="estimate").measure(built)
    channels = sum(int(m.weight.shape[0]) for m in model.modules() if isinstance(m, torch.nn.Conv2d))
    return {"name": name, "conv_channels": channels, "macs_m": round(macs(onnx_path, target.profile) / 1e6, 3),
            "estimated_ms": round(est.median_ms, 4)}, built


def time_together(rows: list[dict], builds: list, reference, target, seconds: float) -> None:
    """Every build and the unpruned original in one run of the protocol; each row gets its latency
    ratio to the original (95 % interval) and its median ms."""
    names = [f"v{i}" for i in range(len(builds))]
    timing = time_builds(target, {"original": reference, **dict(zip(names, builds))}, reference="original",
                         max_time_s=seconds, half_width=0.005)
    for row, name in zip(rows, names):
        row.update(ratio=timing.ratios[name].to_dict(), median_ms=round(timing.ms[name], 4),
                   timing=f"{timing.blocks} blocks, {timing.stopped}")


def part_a(plan, target, work: Path, knobs, precision: str, seconds: float) -> list[dict]:
    rows, builds = [], []
    for knob in knobs:
        for m in MULTIPLES:
            row, built = build(plan.prune(knob, multiple=m, min_channels=m), f"k{knob}_m{m}", work, target, precision)
            rows.append({"knob": knob, "multiple": m, **row})
            builds.append(built)
    _, reference = build(plan.model, "original", work, target, precision)
    time_together(rows, builds, reference, target, seconds)
    for row in rows:
        r = row["ratio"]
        print(f"  A knob={row['knob']} multiple={row['multiple']:>2}: {row['conv_channels']} ch, {row['macs_m']} MMAC, "
              f"{row['median_ms']:.3f} ms, {r['ratio']:.3f}x [{r['low']:.3f}, {r['high']:.3f}] of the original",
              flush=True)
    return rows


def part_b(plan, target, work: Path, n: int, precision: str, seconds: float) -> tuple[list[dict], float]:
    from scipy.stats import spearmanr
    multiple = target.profile.channel_multiple
    knobs = [round(0.5 + 0.5 * i / max(1, n - 1), 4) for i in range(n)]   # cr 0.5 .. 1.0
    rows, builds = [], []
    for knob in knobs:
        row, built = build(plan.prune(knob, multiple=multiple, min_channels=target.profile.min_channels),
                           f"sweep{knob}", work, target, precision)
        rows.append({"knob": knob, **row})
        builds.append(built)
    _, reference = build(plan.model, "original", work, target, precision)
    time_together(rows, builds, reference, target, seconds)
    for row in rows:
        print(f"  B cr={row['knob']}: measured {row['median_ms']:.3f} ms, estimated {row['estimated_ms']:.4f} ms",
              flush=True)
    rho = spearmanr([r["median_ms"] for r in rows], [r["estimated_ms"] for r in rows]).statistic
    return rows, float(rho)


def markdown(result: dict) -> str:
    out = ["| knob | multiple | conv channels | MMAC | latency / original (95 % interval) | median ms |",
           "|---|---|---|---|---|---|"]
    for r in result["alignment"]:
        q = r["ratio"]
        out.append(f"| {r['knob']} | {r['multiple']} | {r['conv_channels']} | {r['macs_m']} | {q['ratio']:.3f} "
                   f"[{q['low']:.3f}, {q['high']:.3f}] | {r['median_ms']:.3f} |")
    out += ["", "| cr | conv channels | MMAC | measured ms | estimated ms |", "|---|---|---|---|---|"]
    for r in result["estimator"]:
        out.append(f"| {r['knob']} | {r['conv_channels']} | {r['macs_m']} | {r['median_ms']:.3f} | {r['estimated_ms']:.4f} |")
    out.append(f"\nSpearman rho (estimated vs measured, {len(result['estimator'])} probes): {result['spearman_rho']:.3f}")
    return "\n".join(out)


def main(argv=None) -> int:
    args = parse_args(argv)
    t0 = time.time()
    model, _ = pretrained(args.model)
    plan = PruningPlan.build(model, calibration(2 if args.quick else 8))
    target = x86_target(args)
    knobs = args.knobs or ([0.9] if args.quick else [0.95, 0.8])
    with tempfile.TemporaryDirectory() as tmp:
        print(f"Part A: alignment ({host_cpu()}, {target.profile.runtime} {args.precision})", flush=True)
        seconds = args.seconds or (5.0 if args.quick else 60.0)
        rows_a = part_a(plan, target, Path(tmp), knobs, args.precision, seconds)
        print("Part B: estimator vs measured", flush=True)
        rows_b, rho = part_b(plan, target, Path(tmp), 4 if args.quick else args.sweep, args.precision, seconds)
    rows = [{"knob": r["knob"], "multiple": r["multiple"], "conv_channels": r["conv_channels"], "macs_m": r["macs_m"],
             "latency_vs_original": r["ratio"]} for r in rows_a]   # ms (in `alignment`) move with the machine
    result = {"schema": 1, "rows": rows, "quick": args.quick, "cpu": host_cpu(), "threads": args.threads,
              "benchmark": target.profile.benchmark.model_dump(), "precision": args.precision, "seconds_cap": seconds,
              "alignment": rows_a, "estimator": rows_b, "spearman_rho": rho, "seconds": round(time.time() - t0, 1),
              "command": " ".join(["benchmarks/alignment.py", *(argv if argv is not None else sys.argv[1:])])}
    if args.out:
        args.out.write_text(json.dumps(result, indent=2))
    print(markdown(result) if args.markdown else f"Spearman rho = {rho:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
