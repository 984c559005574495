"""Where should the permutation deviation be measured: at the convolution output (the seed) or
after its BatchNorm (scaled by (gamma/sigma)^2)? DESIGN.md asks to measure, not assume.

For each shipped model, importance is computed both ways on 512 calibration images; the model is
pruned to the SAME MACs with each (cr allocation: the largest cr within the MACs target, found by
bisection; uniform allocation: identical keep counts, so identical MACs), BatchNorm statistics are
recalibrated on 8 training batches, and top-1 accuracy is measured on the validation split.
No fine-tuning: this isolates the channel choice.

    .venv/bin/python benchmarks/deviation_site.py --json out.json          # ResNet-20 and MobileNetV2, 5,000 val images
    .venv/bin/python benchmarks/deviation_site.py --quick --json q.json    # ResNet-20 only, 500 val images

It prints its table; benchmarks/suite.py runs it and renders region `deviation_site` of
docs/benchmarks.md from the --json file (the script no longer edits the docs itself).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (base_model, write_result, describe_machine, load_tensors, machine, macs_params,  # noqa: E402
                     md_table, train_batches)

from edgecompress.pruning import PruningPlan, recalibrate_bn  # noqa: E402
from edgecompress.training.evaluation import model_accuracy, tensor_batches  # noqa: E402

SITES = ("conv", "bn")


def accuracy(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    return model_accuracy(model, tensor_batches(x, y))


def largest_cr_within(plan: PruningPlan, target_macs: float, *, multiple: int, steps: int) -> tuple[float, int]:
    """Bisection on cr: MACs grow with cr (keep counts are monotone)."""
    lo, hi, best = 0.0, 1.0, (0.0, macs_params(plan.prune(0.0, multiple=multiple))[0])
    for _ in range(steps):
        mid = (lo + hi) / 2
        macs = macs_params(plan.prune(mid, multiple=multiple))[0]
        if macs <= target_macs:
            lo, best = mid, (mid, macs)
        else:
            hi = mid
    return best


def evaluate(plan: PruningPlan, knob: float, data, recal, *, multiple: int) -> tuple[float, int]:
    pruned = plan.prune(knob, multiple=multiple)
    recalibrate_bn(pruned, recal)
    return accuracy(pruned, data.val_x, data.val_y), macs_params(pruned)[0]


def run_model(name: str, data, args) -> list[dict]:
    model, _ = base_model(name, data)
    calib = train_batches(data.train_x, count=16, batch_size=32, seed=0)       # 512 images
    recal = train_batches(data.train_x, count=8, batch_size=64, seed=1)
    base_macs = macs_params(model)[0]
    base_acc = accuracy(model, data.val_x, data.val_y)
    plans = {at: PruningPlan.build(model, calib, at=at) for at in SITES}
    uniform = {at: PruningPlan(model, p.groups, p.scores, allocation="uniform", example_input=p.example_input)
               for at, p in plans.items()}
    rows = []
    for frac in args.macs:
        row = {"model": name, "alloc": "cr", "target": frac, "base": base_acc}
        for at in SITES:
            cr, _ = largest_cr_within(plans[at], frac * base_macs, multiple=args.multiple, steps=args.steps)
            acc, macs = evaluate(plans[at], cr, data, recal, multiple=args.multiple)
            row.update({f"{at}_acc": acc, f"{at}_macs": macs / base_macs, f"{at}_cr": cr})
        rows.append(row)
        print(row, flush=True)
    for ratio in args.ratios:
        row = {"model": name, "alloc": "uniform", "target": ratio, "base": base_acc}
        for at in SITES:
            acc, macs = evaluate(uniform[at], ratio, data, recal, multiple=args.multiple)
            row.update({f"{at}_acc": acc, f"{at}_macs": macs / base_macs, f"{at}_cr": ratio})
        rows.append(row)
        print(row, flush=True)
    return rows


def json_rows(rows: list[dict]) -> list[dict]:
    """The table's rows keyed by their column headers (the suite renders any such rows)."""
    return [{"model": r["model"], "allocation": r["alloc"],
             "target": f"{r['target']:.2f} MACs" if r["alloc"] == "cr" else f"keep {r['target']:.2f}",
             "unpruned %": round(r["base"], 2),
             **{f"at={at}: {what}": round(r[f"{at}_{key}"], nd) for at in SITES
                for what, key, nd in (("knob", "cr", 3), ("MACs", "macs", 3), ("acc %", "acc", 2))},
             "bn − conv (points)": round(r["bn_acc"] - r["conv_acc"], 2)} for r in rows]


def verdict(rows: list[dict]) -> str:
    wins = sum(r["bn_acc"] > r["conv_acc"] for r in rows)
    return (f"at=bn is better in {wins} of {len(rows)} rows, so the default of "
            f"`channel_importance(at=...)` is `{'bn' if wins > len(rows) / 2 else 'conv'}`.")


def report(rows: list[dict], args, seconds: float) -> str:
    table = md_table(rows, [
        ("model", lambda r: r["model"]), ("allocation", lambda r: r["alloc"]),
        ("target", lambda r: f"{r['target']:.2f} MACs" if r["alloc"] == "cr" else f"keep {r['target']:.2f}"),
        ("unpruned %", lambda r: r["base"]),
        ("at=conv: knob / MACs / acc %", lambda r: f"{r['conv_cr']:.3f} / {r['conv_macs']:.3f} / {r['conv_acc']:.2f}"),
        ("at=bn: knob / MACs / acc %", lambda r: f"{r['bn_cr']:.3f} / {r['bn_macs']:.3f} / {r['bn_acc']:.2f}"),
        ("bn − conv (points)", lambda r: r["bn_acc"] - r["conv_acc"]),
    ])
    return (f"`{' '.join(['.venv/bin/python', 'benchmarks/deviation_site.py', *sys.argv[1:]])}` "
            f"({seconds / 60:.1f} min; {describe_machine(machine())}).\n\n"
            "Permutation importance (`expected` mode) at the conv output vs after the following "
            "BatchNorm; pruned to equal MACs (cr: largest cr within the target, by bisection; "
            f"uniform: identical keep counts), channel multiple {args.multiple}, BatchNorm statistics "
            "recalibrated on 8×64 training images, **no fine-tuning**, top-1 on the "
            f"{len(args.data.val_y)}-image validation split.\n\n{table}\n\n{verdict(rows)}")


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="ResNet-20 only, 500 val images")
    p.add_argument("--models", default=None, help="comma-separated (default resnet20,mobilenetv2)")
    p.add_argument("--multiple", type=int, default=1)
    p.add_argument("--json", type=Path, help="write the rows here (benchmarks/suite.py renders them)")
    args = p.parse_args(argv)
    args.macs = [0.5] if args.quick else [0.7, 0.5, 0.35]
    args.ratios = [0.5] if args.quick else [0.7, 0.5]
    args.steps = 5 if args.quick else 8
    models = args.models.split(",") if args.models else (["resnet20"] if args.quick else ["resnet20", "mobilenetv2"])
    args.data = load_tensors(val=500 if args.quick else None, test=0)
    start, rows = time.time(), []
    for name in models:
        rows += run_model(name, args.data, args)
    text = report(rows, args, time.time() - start)
    print(text)
    if args.json:
        write_result(args.json, {"rows": json_rows(rows), "notes": [verdict(rows)],
                                         "settings": {"multiple": args.multiple, "val_images": len(args.data.val_y),
                                                      "models": models}})


if __name__ == "__main__":
    main()
