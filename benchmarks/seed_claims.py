"""The seed algorithm's claims, checked on our data (issue 7, parts 2 and 3). CPU, no fine-tuning.

On a shipped Fashion-MNIST model (ResNet-20 by default), with the pipeline's importance pass
(`channel_importance` / `PruningPlan`, 4 x 128 training images) and BatchNorm recalibration on
16 x 128 training images after every prune (no fine-tuning anywhere):

  replacements  shuffle / zero / reinit rank channels alike (Spearman rho per layer) and give the
                same accuracy at equal pruning (seed Table 3-3); `expected` as reference
  calibration   importance from real training images vs random images (Table 3-4)
  allocation    cr allocation vs one global keep ratio at equal MACs (Table 4-1)
  search        probes the binary search needs (the pipeline's Searcher, 1-point budget) vs the seed's 7
  site          deviation at the conv output vs after its BatchNorm
  draws         `expected` vs `shuffle` with 1 and 8 draws (rho, accuracy, time of the pass)

"Equal pruning" = allocation `uniform` at the same keep ratio: every variant keeps exactly the same
number of channels in every group, only WHICH channels differs. Keep counts are not rounded
(multiple 1), so the comparison is about the criterion, not the target.

    .venv/bin/python benchmarks/seed_claims.py --out seed_claims.json --write-docs   # full (~15 min, 2 cores)
    .venv/bin/python benchmarks/seed_claims.py --quick --docs /tmp/bench.md --write-docs
"""
from __future__ import annotations

import argparse
import json
import math
import shlex
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (DOCS, base_model, describe_machine, kept_reading, load_tensors, machine,  # noqa: E402
                     macs_params, md_table, replace_section, spearman, train_batches)

SECTION = "Seed claims"
SEED_PROBES = 7   # the seed's search cost: bisection on cr to a 0.01 interval


@dataclass
class Bench:
    model: nn.Module
    name: str
    calib: list[torch.Tensor]          # importance pass (real training images)
    bn: list[torch.Tensor]             # BN recalibration after each prune
    val_x: torch.Tensor
    val_y: torch.Tensor
    ratios: tuple[float, ...]          # keep ratios for "equal pruning"
    targets: tuple[float, ...]         # MAC fractions for "equal MACs"
    min_interval: float
    bisect_steps: int = 9              # knob resolution 2^-steps when matching MACs
    base_acc: float = 0.0
    base_macs: int = 0
    timings: dict = field(default_factory=dict)


def setup(args) -> Bench:
    data = load_tensors(args.data, train=2048 if args.quick else None, val=args.val_images)
    model, _ = base_model(args.model, data, quick_steps=40)
    b = Bench(model=model.eval(), name=args.model,
              calib=train_batches(data.train_x, count=2 if args.quick else 4, batch_size=128, seed=0),
              bn=train_batches(data.train_x, count=2 if args.quick else 16, batch_size=128, seed=1),
              val_x=data.val_x, val_y=data.val_y, ratios=(0.7,) if args.quick else (0.85, 0.7),
              targets=(0.5,) if args.quick else (0.7, 0.5, 0.35), min_interval=0.1 if args.quick else 0.01,
              bisect_steps=5 if args.quick else 9)
    b.base_acc = accuracy(b, b.model)
    b.base_macs = macs_params(b.model)[0]
    return b


def accuracy(b: Bench, model: nn.Module) -> float:
    from edgecompress.training.evaluation import model_accuracy, tensor_batches
    return model_accuracy(model, tensor_batches(b.val_x, b.val_y))


def plan_for(b: Bench, *, allocation: str, batches=None, **opts):
    from edgecompress.pruning import PruningPlan
    return PruningPlan.build(b.model, b.calib if batches is None else batches, criterion="permutation",
                             allocation=allocation, example_input=b.calib[0][:1], **opts)


def prune_eval(b: Bench, plan, knob: float) -> dict:
    """Prune at `knob`, recalibrate BN on real training batches, validation accuracy."""
    from edgecompress.pruning import recalibrate_bn
    model = recalibrate_bn(plan.prune(knob), b.bn)
    macs, params = macs_params(model)
    return {"knob": round(knob, 4), "accuracy": accuracy(b, model), "macs_ratio": macs / b.base_macs, "params": params}


def knob_for_macs(b: Bench, plan, fraction: float) -> float:
    """Smallest knob (to 2^-bisect_steps) whose pruned model keeps at least `fraction` of the MACs."""
    lo, hi = 0.0, 1.0
    for _ in range(b.bisect_steps):
        mid = (lo + hi) / 2
        if macs_params(plan.prune(mid))[0] >= fraction * b.base_macs:
            hi = mid
        else:
            lo = mid
    return hi


def rho_rows(scores: dict[str, dict], pairs: list[tuple[str, str]]) -> list[dict]:
    """Per pair of variants: Spearman rho of every layer's channel scores, summarised."""
    rows = []
    for a, c in pairs:
        rhos = [spearman(scores[a][n], scores[c][n]) for n in scores[a] if n in scores[c]]
        rhos = [r for r in rhos if not math.isnan(r)]
        rows.append({"pair": f"{a} vs {c}", "layers": len(rhos), "mean": statistics.fmean(rhos),
                     "median": statistics.median(rhos), "min": min(rhos), "per_layer": [round(r, 4) for r in rhos]})
    return rows


def equal_pruning(b: Bench, variants: dict[str, dict]) -> list[dict]:
    """Accuracy of each variant (PruningPlan options, `batches` for the importance pass) at the
    same uniform keep ratios."""
    rows = []
    for label, opts in variants.items():
        plan = plan_for(b, allocation="uniform", **opts)
        rows += [{"variant": label, "ratio": r, **prune_eval(b, plan, r)} for r in b.ratios]
    return rows


def importance(b: Bench, label: str, **opts) -> dict:
    from edgecompress.pruning import channel_importance
    t = time.perf_counter()
    scores = channel_importance(b.model, opts.pop("batches", b.calib), **opts)
    b.timings[label] = round(time.perf_counter() - t, 3)
    return scores


def replacements(b: Bench) -> dict:
    """Seed Table 3-3: shuffle / zero / reinit (8 draws each where random) and expected."""
    modes = ("shuffle", "zero", "reinit", "expected")
    scores = {m: importance(b, f"mode={m}", mode=m) for m in modes}
    pairs = [("shuffle", "zero"), ("shuffle", "reinit"), ("zero", "reinit"), ("expected", "shuffle")]
    return {"rho": rho_rows(scores, pairs), "accuracy": equal_pruning(b, {m: {"mode": m} for m in modes})}


def random_images(b: Bench, kind: str) -> list[torch.Tensor]:
    """Random images shaped like the calibration batches: pixel noise through the data's
    normalisation (`uniform`), or standard normal in the normalised space (`gaussian`)."""
    from edgecompress.zoo.fashion_mnist import normalise
    gen = torch.Generator().manual_seed(7)
    if kind == "uniform":
        return [normalise(torch.randint(0, 256, x.shape, generator=gen, dtype=torch.uint8)) for x in b.calib]
    return [torch.randn(x.shape, generator=gen) for x in b.calib]


def calibration(b: Bench) -> dict:
    """Seed Table 3-4: importance from real training images vs random images."""
    sets = {"real": b.calib, "random-uniform": random_images(b, "uniform"), "random-gaussian": random_images(b, "gaussian")}
    scores = {k: importance(b, f"calib={k}", batches=v) for k, v in sets.items()}
    pairs = [("real", "random-uniform"), ("real", "random-gaussian")]
    return {"rho": rho_rows(scores, pairs),
            "accuracy": equal_pruning(b, {k: {"batches": v} for k, v in sets.items()})}


def allocation(b: Bench, **opts) -> list[dict]:
    """Seed Table 4-1: cr allocation vs one global keep ratio, at equal MACs (the cr model's)."""
    plans = {a: plan_for(b, allocation=a, **opts) for a in ("cr", "uniform")}
    rows = []
    for f in b.targets:
        cr_row = prune_eval(b, plans["cr"], knob_for_macs(b, plans["cr"], f))
        u_row = prune_eval(b, plans["uniform"], knob_for_macs(b, plans["uniform"], cr_row["macs_ratio"] - 1e-9))
        rows += [{"target": f, "allocation": "cr", **cr_row}, {"target": f, "allocation": "uniform", **u_row}]
    return rows


def search_cost(b: Bench) -> list[dict]:
    """Probes of the pipeline's Searcher (1-point budget, no fine-tuning) vs the seed's 7."""
    from edgecompress.pruning.search import Budget, ProbeResult, Searcher
    rows = []
    for alloc in ("cr", "uniform"):
        plan = plan_for(b, allocation=alloc)

        def evaluate(knob: float, plan=plan) -> ProbeResult:
            r = prune_eval(b, plan, knob)
            return ProbeResult(cr=knob, accuracy=r["accuracy"], latency_ms=r["macs_ratio"])

        s = Searcher(evaluate, budget=Budget(min_accuracy=b.base_acc - 1.0), min_interval=b.min_interval)
        out = s.run()
        rows.append({"allocation": alloc, "probes": len(s.probes), "bisection": math.ceil(math.log2(1 / b.min_interval)),
                     "seed": SEED_PROBES, "knob": out.chosen.cr, "accuracy": out.chosen.accuracy,
                     "macs_ratio": out.chosen.latency_ms, "probe_knobs": [round(p.cr, 4) for p in s.probes]})
    return rows


def site(b: Bench) -> dict:
    """Deviation at the conv output (the seed) vs after its BatchNorm (x (gamma/sigma)^2)."""
    scores = {s: importance(b, f"at={s}", at=s) for s in ("conv", "bn")}
    return {"rho": rho_rows(scores, [("conv", "bn")]),
            "accuracy": equal_pruning(b, {f"at={s}": {"at": s} for s in ("conv", "bn")}),
            "cr_equal_macs": [{"site": s, **r} for s in ("conv", "bn") for r in allocation(b, at=s) if r["allocation"] == "cr"]}


def draws(b: Bench) -> dict:
    """`expected` vs `shuffle` with 1 and 8 draws; the shuffles again with another seed show how much
    of an accuracy difference the draw alone makes."""
    variants = {"expected": {"mode": "expected"}, "shuffle-1": {"mode": "shuffle", "draws": 1},
                "shuffle-1 (seed 1)": {"mode": "shuffle", "draws": 1, "seed": 1},
                "shuffle-8": {"mode": "shuffle", "draws": 8}, "shuffle-8 (seed 1)": {"mode": "shuffle", "draws": 8, "seed": 1}}
    scores = {k: importance(b, k, **v) for k, v in variants.items()}
    pairs = [("expected", "shuffle-1"), ("expected", "shuffle-8"), ("shuffle-1", "shuffle-1 (seed 1)"),
             ("shuffle-8", "shuffle-8 (seed 1)")]
    return {"rho": rho_rows(scores, pairs), "accuracy": equal_pruning(b, variants),
            "importance_s": {k: b.timings[k] for k in variants}}


EXPERIMENTS = {"replacements": replacements, "calibration": calibration, "allocation": allocation,
               "search": search_cost, "site": site, "draws": draws}


# ---------------------------------------------------------------------------------------------
# report

RHO_COLUMNS = [("pair", lambda r: r["pair"]), ("layers", lambda r: r["layers"]), ("mean rho", lambda r: f"{r['mean']:.3f}"),
               ("median rho", lambda r: f"{r['median']:.3f}"), ("min rho", lambda r: f"{r['min']:.3f}")]


def accuracy_table(rows: list[dict]) -> str:
    """Variants as rows, keep ratios as columns: validation accuracy (MACs kept)."""
    ratios = sorted({r["ratio"] for r in rows}, reverse=True)
    by = {(r["variant"], r["ratio"]): r for r in rows}
    variants = list(dict.fromkeys(r["variant"] for r in rows))
    cols = [("variant", lambda v: v)] + [
        (f"keep {q}: val % (MACs)", lambda v, q=q: f"{by[(v, q)]['accuracy']:.2f} ({100 * by[(v, q)]['macs_ratio']:.0f} %)")
        for q in ratios]
    return md_table(variants, cols)


def spread(rows: list[dict]) -> str:
    """Largest accuracy difference between variants at each keep ratio."""
    parts = []
    for q in sorted({r["ratio"] for r in rows}, reverse=True):
        accs = [r["accuracy"] for r in rows if r["ratio"] == q]
        parts.append(f"{max(accs) - min(accs):.2f} points at keep {q}")
    return ", ".join(parts)


def _alloc_table(rows: list[dict], label: str = "allocation") -> str:
    return md_table(rows, [("MACs target", lambda r: f"{100 * r['target']:.0f} %"), (label, lambda r: r[label]),
                           ("knob", lambda r: f"{r['knob']:.4f}"), ("MACs kept", lambda r: f"{100 * r['macs_ratio']:.1f} %"),
                           ("val %", lambda r: r["accuracy"])])


def _alloc_verdict(rows: list[dict], a: str, c: str, key: str = "allocation") -> str:
    wins = []
    for t in dict.fromkeys(r["target"] for r in rows):
        x = next(r for r in rows if r["target"] == t and r[key] == a)
        y = next(r for r in rows if r["target"] == t and r[key] == c)
        wins.append(f"{100 * t:.0f} % MACs: {a} {x['accuracy']:.2f} vs {c} {y['accuracy']:.2f} ({x['accuracy'] - y['accuracy']:+.2f})")
    return "; ".join(wins)


def markdown(res: dict) -> str:
    b, out = res["bench"], []
    out += ["`benchmarks/seed_claims.py` (issue 7, parts 2 and 3): the seed algorithm's claims on our data, with the "
            f"pipeline's importance pass ({b.get('calib_images', 512)} training images) and BatchNorm recalibration on "
            "16 x 128 training images after every prune, **no fine-tuning anywhere** (the fine-tuned comparison is the "
            "section above). \"Equal pruning\" = allocation `uniform` at the same keep ratio: every variant keeps "
            "exactly as many channels in every group, only which ones differs; keep counts are not rounded "
            "(multiple 1). Accuracy is on the validation split.", "",
            "Command (`--from-json FILE --write-docs` rewrites this section from its output, keeping the reading):", "",
            f"    {res['command']}", "",
            f"Machine: {describe_machine(res['machine'])}. Model: {b['model']} (validation {b['val_images']} images, "
            f"original {b['base_acc']:.2f} %). Wall time of the whole script: {res['seconds']:.0f} s.", ""]
    e = res["experiments"]
    if "replacements" in e:
        r = e["replacements"]
        out += ["**Weight replacements (seed Table 3-3).** Spearman rho per layer between the channel scores:", "",
                md_table(r["rho"], RHO_COLUMNS), "", "Accuracy at equal pruning (uniform keep ratio, BN recalibrated):", "",
                accuracy_table(r["accuracy"]), "", f"Spread between replacements: {spread(r['accuracy'])}.", ""]
    if "calibration" in e:
        r = e["calibration"]
        out += [f"**Calibration data (seed Table 3-4).** Importance from {b['calib_images']} real training images vs as many random images "
                "(uniform pixel noise through the data normalisation; standard normal in the normalised space):", "",
                md_table(r["rho"], RHO_COLUMNS), "", accuracy_table(r["accuracy"]), "",
                f"Spread: {spread(r['accuracy'])}.", ""]
    if "allocation" in e:
        out += ["**cr allocation vs one global ratio at equal MACs (seed Table 4-1).** The cr knob is bisected to the "
                "MACs target, then the uniform ratio to the cr model's MACs (so uniform keeps at least as many):", "",
                _alloc_table(e["allocation"]), "", f"cr minus uniform: {_alloc_verdict(e['allocation'], 'cr', 'uniform')}.", ""]
    if "search" in e:
        out += ["**Search cost.** The pipeline's `Searcher` under a 1-point budget (probe = prune + BN recalibration, "
                "no fine-tuning; MACs as the latency proxy), against the seed's 7 probes:", "",
                md_table(e["search"], [("allocation", lambda r: r["allocation"]), ("probes", lambda r: r["probes"]),
                                        ("of which bisection", lambda r: r["bisection"]), ("seed", lambda r: r["seed"]),
                                        ("chosen knob", lambda r: f"{r['knob']:.4f}"),
                                        ("MACs kept", lambda r: f"{100 * r['macs_ratio']:.1f} %"),
                                        ("val %", lambda r: r["accuracy"])]), "",
                "Probes beyond the bisection are the same-latency step move (DESIGN.md, Search) looking for a larger "
                "knob with the same cost.", ""]
    out += _site_and_draws(res)
    return "\n".join(out)


def _site_and_draws(res: dict) -> list[str]:
    e, out = res["experiments"], []
    if "site" in e:
        r = e["site"]
        out += ["**Where the deviation is taken: conv output vs after BatchNorm.**", "", md_table(r["rho"], RHO_COLUMNS), "",
                accuracy_table(r["accuracy"]), "", "With cr allocation at equal MACs:", "",
                _alloc_table(r["cr_equal_macs"], "site"), "",
                f"conv minus bn (cr allocation): {_alloc_verdict(r['cr_equal_macs'], 'conv', 'bn', 'site')}.", ""]
    if "draws" in e:
        r = e["draws"]
        times = ", ".join(f"{k} {v:.2f} s" for k, v in r["importance_s"].items())
        out += ["**`expected` vs `shuffle` with 1 and 8 draws.**", "", md_table(r["rho"], RHO_COLUMNS), "",
                accuracy_table(r["accuracy"]), "", f"Spread: {spread(r['accuracy'])}. Time of one importance pass "
                f"({res['bench']['calib_images']} images; the machine was shared with other processes, so these are indicative only): {times}.", ""]
    return out


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="tiny-resnet, 400 validation images: a smoke run")
    p.add_argument("--model", help="zoo model with a shipped checkpoint (default resnet20; quick: tiny-resnet)")
    p.add_argument("--data", help="Fashion-MNIST folder (default: the system's)")
    p.add_argument("--val-images", type=int, help="validation images (default all 5,000; quick 400)")
    p.add_argument("--only", help=f"comma-separated subset of {','.join(EXPERIMENTS)}")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1: fastest on a shared 2-core machine)")
    p.add_argument("--out", type=Path, help="write the results as JSON here")
    p.add_argument("--write-docs", action="store_true", help="write the '## Seed claims' section of --docs")
    p.add_argument("--docs", type=Path, default=DOCS)
    p.add_argument("--from-json", type=Path, help="no experiments: write the text of an earlier --out file")
    args = p.parse_args(argv)
    args.model = args.model or ("tiny-resnet" if args.quick else "resnet20")
    args.val_images = args.val_images or (300 if args.quick else None)
    return args


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    res = json.loads(args.from_json.read_text()) if args.from_json else run(args, argv)
    text = markdown(res)
    if args.write_docs:
        replace_section(args.docs, SECTION, text + "\n\n" + kept_reading(args.docs, SECTION))
    print(text)
    return 0


def run(args, argv: list[str]) -> dict:
    t0 = time.perf_counter()
    b = setup(args)
    names = args.only.split(",") if args.only else list(EXPERIMENTS)
    results = {}
    for name in names:
        t = time.perf_counter()
        results[name] = EXPERIMENTS[name](b)
        print(f"  {name}: {time.perf_counter() - t:.0f} s", flush=True)
    res = {"schema": 1, "command": "python3 benchmarks/seed_claims.py " + " ".join(shlex.quote(a) for a in argv),
           "machine": machine(), "seconds": round(time.perf_counter() - t0, 1), "experiments": results,
           "bench": {"model": b.name, "val_images": len(b.val_x), "base_acc": b.base_acc, "base_macs": b.base_macs,
                     "ratios": b.ratios, "calib_images": sum(len(x) for x in b.calib), "targets": b.targets, "min_interval": b.min_interval}}
    if args.out:
        args.out.write_text(json.dumps(res, indent=2))
    return res


if __name__ == "__main__":
    raise SystemExit(main())
