"""The seeds' other criteria (ThiNet, CURL, AutoPruner) and ThiNet's least-squares step, measured.

Two measurements, each a function the criteria benchmark can call, and a CLI:

    python benchmarks/other_criteria.py reconstruct [--quick]   # does --reconstruct help our default?
    python benchmarks/other_criteria.py compress [--quick] [--models resnet20,mobilenetv2]
                                                 [--criteria thinet,curl,autopruner] [-- compress flags]

`reconstruct`: pretrained ResNet-20, pruned at a few knobs with the default criterion, validation
accuracy after (a) BatchNorm recalibration only, (b) reconstruction then BN recalibration (the
pipeline's order with --reconstruct), (c) reconstruction only, (d) BN recalibration then
reconstruction, (e) nothing.
`compress`: one full `compress` run per model x criterion at the same accuracy and fine-tuning
budget; one row per run from its report.json (MACs, latency, accuracy, wall time of the prune
stage and of the whole run). Rows print as a Markdown table and, with --json, go to a file.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

QUICK_COMPRESS = ["--precision", "fp32", "--finetune-epochs", "0.05", "--finetune-samples", "2000",
                  "--bn-batches", "2", "--batch-size", "64", "--min-search-interval", "0.2"]


def _data(val_images: int, calib_images: int, seed: int = 0):
    from edgecompress.inputs.data import fashion_mnist
    d = fashion_mnist()
    idx = torch.randperm(len(d.train), generator=torch.Generator().manual_seed(seed))[:calib_images]
    x = torch.stack([d.train[int(i)][0] for i in idx])
    calib = [x[i:i + 128] for i in range(0, len(x), 128)]
    vx = torch.stack([d.val[i][0] for i in range(val_images)])
    vy = torch.tensor([int(d.val[i][1]) for i in range(val_images)])
    return calib, vx, vy


def reconstruct_effect(*, model_name: str = "resnet20", knobs=(0.8, 0.9, 0.95), criterion: str = "permutation",
                       allocation: str | None = None, val_images: int = 5000, calib_images: int = 2048,
                       samples: int = 2048) -> list[dict]:
    """Validation accuracy with and without least-squares reconstruction, per knob."""
    import copy

    from edgecompress.training.evaluation import model_accuracy, recalibrate_bn, tensor_batches
    from edgecompress.pruning import PruningPlan
    from edgecompress.pruning.reconstruct import reconstruct
    from edgecompress.zoo import pretrained

    calib, vx, vy = _data(val_images, calib_images)
    original, _ = pretrained(model_name)
    opts = {} if allocation is None else {"allocation": allocation}
    plan = PruningPlan.build(original, calib[:4], criterion=criterion, **opts)
    rows = [{"knob": 1.0, "variant": "unpruned", "accuracy": model_accuracy(original, tensor_batches(vx, vy))}]
    for knob in knobs:
        base = plan.prune(knob)
        recon = copy.deepcopy(base)
        t = time.perf_counter()
        fits = reconstruct(recon, original, calib[:4], samples=samples)
        t = time.perf_counter() - t
        gain = sum(f.before - f.after for f in fits.values()) / max(1e-12, sum(f.before for f in fits.values()))
        bn_first = recalibrate_bn(copy.deepcopy(base), calib)
        reconstruct(bn_first, original, calib[:4], samples=samples)
        variants = {"none": copy.deepcopy(base), "bn": recalibrate_bn(copy.deepcopy(base), calib),
                    "reconstruct": copy.deepcopy(recon), "reconstruct+bn": recalibrate_bn(recon, calib),
                    "bn+reconstruct": bn_first}
        for name, model in variants.items():
            rows.append({"knob": knob, "variant": name, "accuracy": model_accuracy(model, tensor_batches(vx, vy)),
                         "params": sum(p.numel() for p in model.parameters()),
                         "fit_error_reduction": round(gain, 4) if "reconstruct" in name else None,
                         "reconstruct_s": round(t, 2) if "reconstruct" in name else None})
    return rows


def compress_rows(*, models=("resnet20", "mobilenetv2"), criteria=("thinet", "curl", "autopruner"),
                  target: str = "x86-cpu", max_acc_drop: float = 1.0, out_root: str = "runs/bench-other-criteria",
                  extra_args=(), quick: bool = False) -> list[dict]:
    """One `compress` run per model x criterion, same budgets; a row per run from report.json."""
    from edgecompress.cli import main as compress

    rows = []
    for model in models:
        for criterion in criteria:
            out = Path(out_root) / f"{model}-{criterion}{'-quick' if quick else ''}"
            argv = ["--target", target, "--max-acc-drop", str(max_acc_drop), "--model", model,
                    "--criterion", criterion, "--out", str(out), *(QUICK_COMPRESS if quick else []), *extra_args]
            if (out / "report.json").is_file():
                argv.append("--resume")      # a finished run is not redone
            t = time.perf_counter()
            rc = compress(argv)
            rows.append(_row(model, criterion, out, rc, time.perf_counter() - t))
    return rows


def _row(model: str, criterion: str, out: Path, rc: int, wall: float) -> dict:
    row = {"model": model, "criterion": criterion, "exit": rc, "wall_s": round(wall, 1), "run": str(out)}
    report = out / "report.json"
    if rc != 0 or not report.is_file():
        return row
    r = json.loads(report.read_text())
    base, res = r["baseline"], r["result"]
    row.update({"cr": res.get("cr"), "macs_M": round(res["flops"] / 1e6, 2),
                "macs_kept": round(res["flops"] / base["flops"], 3), "params": res["params"],
                "latency_ms": res["latency_ms"], "latency_method": res["latency_method"],
                "baseline_latency_ms": base["latency_ms"], "val_acc": res["accuracy"],
                "baseline_val_acc": base["accuracy"], "test_acc": res.get("test_accuracy"),
                "precision": r.get("precision"), "prune_s": r.get("timings_s", {}).get("prune"),
                "total_s": r.get("timings_s", {}).get("total")})
    return row


def _table(rows: list[dict]) -> str:
    keys = list(dict.fromkeys(k for r in rows for k in r))
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    lines += ["| " + " | ".join("" if r.get(k) is None else f"{r[k]:.2f}" if isinstance(r.get(k), float)
                                else str(r[k]) for k in keys) + " |" for r in rows]
    return "\n".join(lines)


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    extra = argv[argv.index("--") + 1:] if "--" in argv else []
    argv = argv[:argv.index("--")] if "--" in argv else argv
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("what", choices=["reconstruct", "compress"])
    p.add_argument("--quick", action="store_true", help="small data and budgets: checks the script works")
    p.add_argument("--models", default="resnet20,mobilenetv2")
    p.add_argument("--criteria", default="thinet,curl,autopruner")
    p.add_argument("--knobs", default="0.8,0.9,0.95", help="reconstruct: pruning knobs (cr, or keep ratio)")
    p.add_argument("--allocation", help="reconstruct: cr | uniform (default: the engine's)")
    p.add_argument("--json", help="also write the rows to this file")
    args = p.parse_args(argv)
    if args.what == "reconstruct":
        knobs = tuple(float(k) for k in args.knobs.split(","))
        rows = reconstruct_effect(knobs=knobs[:1] if args.quick else knobs, allocation=args.allocation,
                                  val_images=500 if args.quick else 5000, calib_images=512 if args.quick else 2048,
                                  samples=512 if args.quick else 2048)
    else:
        rows = compress_rows(models=args.models.split(","), criteria=args.criteria.split(","),
                             quick=args.quick, extra_args=extra)
    print(_table(rows))
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
