"""How should a residual block be scored for depth pruning? Three rules measured against the truth.

Every rule is the seed's zero replacement at block granularity (the block's branch zeroed, y = x),
scored on the same 256 training images (as the pipeline scores them); they differ in WHERE the
deviation is taken:

- block output: E||y - x||^2 at the block's own output; its unit differs from stage to stage, so
  it only ranks blocks within a stage (DESIGN.md's first shape: contribution rates per stage);
- output, squared logits: E||logits(zeroed) - logits||^2 at the network output, one unit for
  every block (edgecompress.pruning.depth.find_blocks, the shipped score; called, not copied);
- output, KL: E KL(p || p(zeroed)) of the class distribution at the network output.

The truth: validation accuracy with each block removed alone (BatchNorm recalibrated on 2,048
training images, no fine-tuning). A rule is judged by what the search does with it: the accuracy
after removing the k blocks it ranks least important, k = 1 .. K (BN recalibrated), with the
oracle (the k whose single removal costs least) beside it; and by Spearman's rho between its
score and the accuracy each block's removal loses (1: it orders the blocks as the truth does).

    .venv/bin/python benchmarks/depth_scoring.py --json out.json      # resnet20, mobilenetv2, resnet56
    .venv/bin/python benchmarks/depth_scoring.py --quick --json q.json  # ResNet-20, 200 val images: a smoke run
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import write_result, base_model, load_tensors, train_batches  # noqa: E402

from edgecompress.pruning.depth import find_blocks, remove_blocks  # noqa: E402
from edgecompress.training.evaluation import model_accuracy, recalibrate_bn, tensor_batches  # noqa: E402

RULES = {"block": "block output (rates per stage)", "sq": "output, squared logits (shipped)", "kl": "output, KL"}


@torch.no_grad()
def alternative_scores(model: torch.nn.Module, names: list[str], batches: list[torch.Tensor]) -> dict[str, dict]:
    """Per block: the deviation at its own output and the KL at the network output, branch zeroed."""
    model.eval()
    reference = [torch.log_softmax(model(x), 1) for x in batches]
    images = sum(len(x) for x in batches)
    out = {}
    for name in names:
        dev = [0.0]

        def zeroed(mod, args, y):   # y = x: the branch replaced by zero; its effect on the block output
            dev[0] += float(((y - args[0]).double() ** 2).sum())
            return args[0]
        handle = model.get_submodule(name).register_forward_hook(zeroed)
        try:
            kl = sum(float(torch.nn.functional.kl_div(torch.log_softmax(model(x), 1), ref, log_target=True,
                                                      reduction="sum")) for x, ref in zip(batches, reference))
        finally:
            handle.remove()
        out[name] = {"block": dev[0] / images, "kl": kl / images}
    return out


def stage_rates(blocks, scores: dict[str, float]) -> dict[str, float]:
    """Each block's share of its stage's total (DESIGN.md's first allocation: rates within a stage)."""
    totals: dict[int, float] = {}
    for b in blocks:
        totals[b.stage] = totals.get(b.stage, 0.0) + scores[b.name]
    return {b.name: scores[b.name] / totals[b.stage] if totals[b.stage] > 0 else 1.0 for b in blocks}


def ranks(values: dict[str, float], groups: dict[str, int] | None = None) -> dict[str, int]:
    """1 = the least important (first to remove); within `groups` when given."""
    out = {}
    for g in set((groups or {n: 0 for n in values}).values()):
        members = [n for n in values if (groups or {}).get(n, 0) == g]
        for i, n in enumerate(sorted(members, key=lambda n: values[n]), start=1):
            out[n] = i
    return out


class Judge:
    """Accuracy of the model with a set of blocks removed (BN recalibrated), each set measured once."""

    def __init__(self, model, recal, val_x, val_y):
        self.model, self.recal, self.val = model, recal, (val_x, val_y)
        self.cache: dict[frozenset, float] = {}

    def __call__(self, names) -> float:
        key = frozenset(names)
        if key not in self.cache:
            pruned = recalibrate_bn(remove_blocks(self.model, sorted(key)), self.recal)
            self.cache[key] = round(model_accuracy(pruned, tensor_batches(*self.val)), 2)
        return self.cache[key]


def run_model(name: str, data, args) -> tuple[list[dict], list[dict], dict]:
    model, _ = base_model(name, data)
    model.eval()
    scoring = train_batches(data.train_x, count=args.score_images // 128 or 1, batch_size=min(128, args.score_images),
                            seed=0)
    recal = train_batches(data.train_x, count=args.recal_images // 128 or 1, batch_size=min(128, args.recal_images),
                          seed=1)
    t0 = time.perf_counter()
    blocks = find_blocks(model, scoring)                      # the shipped score, as the pipeline computes it
    score_s = time.perf_counter() - t0
    names = [b.name for b in blocks]
    alt = alternative_scores(model, names, scoring)
    scores = {"block": stage_rates(blocks, {n: alt[n]["block"] for n in names}),
              "sq": {b.name: b.score for b in blocks}, "kl": {n: alt[n]["kl"] for n in names}}
    stage = {b.name: b.stage for b in blocks}
    judge = Judge(model, recal, data.val_x, data.val_y)
    base = round(model_accuracy(model, tensor_batches(data.val_x, data.val_y)), 2)
    alone = {n: judge([n]) for n in names}
    loss = {n: round(base - alone[n], 2) for n in names}
    rank = {"block": ranks(scores["block"], stage), "sq": ranks(scores["sq"]), "kl": ranks(scores["kl"])}
    rows = [{"model": name, "block": n, "stage": stage[n], "removed alone: val %": alone[n], "points lost": loss[n],
             "deviation at the block's output": round(alt[n]["block"], 1),
             "its rank in the stage": f"{rank['block'][n]} of {sum(s == stage[n] for s in stage.values())}",
             "squared logit distance at the output (shipped)": round(scores["sq"][n], 3),
             "its rank": rank["sq"][n], "KL at the output": round(scores["kl"][n], 4), "KL rank": rank["kl"][n]}
             for n in names]
    removal = removal_rows(name, names, scores, loss, judge, args.k)
    summary = {"model": name, "unpruned val %": base, "blocks": len(names), "score s": round(score_s, 1),
               "rho": {rule: spearman([scores[rule][n] for n in names], [loss[n] for n in names]) for rule in RULES}}
    print(f"{name}: unpruned {base} %, {len(names)} removable blocks, rho "
          + ", ".join(f"{RULES[r]} {v:.2f}" for r, v in summary["rho"].items()), flush=True)
    return rows, removal, summary


def removal_rows(model: str, names: list[str], scores: dict, loss: dict, judge: Judge, k_max: int) -> list[dict]:
    """Per rule (and the oracle): the accuracy after removing its k least important blocks, k = 1 .. K."""
    orders = {RULES[r]: sorted(names, key=lambda n: scores[r][n]) for r in RULES}
    orders["oracle (fewest points lost alone)"] = sorted(names, key=lambda n: loss[n])
    rows = []
    for rule, ordered in orders.items():
        row = {"model": model, "rule": rule}
        for k in range(1, min(k_max, len(names)) + 1):
            row[f"k={k}: val %"] = judge(ordered[:k])
        row["removed first"] = ", ".join(ordered[:min(k_max, len(names))])
        rows.append(row)
    return rows


def spearman(a: list[float], b: list[float]) -> float | None:
    from scipy.stats import spearmanr
    if len(a) < 3:
        return None
    return round(float(spearmanr(a, b).statistic), 3)


def verdict(removal: list[dict], summaries: list[dict]) -> list[str]:
    """Which rule won, from the figures: mean accuracy over every model and k of its removals."""
    means = {}
    for rule in RULES.values():
        accs = [v for r in removal if r["rule"] == rule for k, v in r.items() if k.startswith("k=")]
        means[rule] = sum(accs) / len(accs)
    rho = {RULES[r]: [s["rho"][r] for s in summaries if s["rho"][r] is not None] for r in RULES}
    mean_rho = {rule: sum(v) / len(v) if v else float("-inf") for rule, v in rho.items()}
    # accuracy decides; equal accuracy (the same blocks removed) falls back to the rank agreement
    ranking = sorted(means, key=lambda r: (round(means[r], 2), mean_rho[r]), reverse=True)
    tied = [r for r in ranking if round(means[r], 2) == round(means[ranking[0]], 2)]
    same = all(len({r["removed first"] for r in removal if r["model"] == m and r["rule"] in tied}) == 1
               for m in {r["model"] for r in removal})
    why = (f" (tied on accuracy with {', '.join(tied[1:])}"
           + (": the same blocks removed first" if same else "") + "; ahead on mean Spearman rho)"
           if len(tied) > 1 else "")
    notes = [f"Mean validation accuracy over every model and k after removing each rule's k least important blocks: "
             + "; ".join(f"{r} {means[r]:.2f} %" for r in ranking) + f". **Winner: {ranking[0]}**{why}."]
    for s in summaries:
        rho = s["rho"]
        notes.append(f"{s['model']} ({s['blocks']} removable blocks, unpruned {s['unpruned val %']} %): Spearman rho "
                     f"between score and points lost: " + ", ".join(f"{RULES[r]} {fmt_rho(v)}" for r, v in rho.items())
                     + f"; the shipped score took {s['score s']} s.")
    for r in removal:
        if r["rule"] == RULES["block"]:
            first = r["removed first"].split(", ")[0]
            notes.append(f"{r['model']}: the block-output rule removes {first} first "
                         f"({r['k=1: val %']} % with it removed).")
    return notes


def fmt_rho(v) -> str:
    return "n/a" if v is None else f"{v:.2f}"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="ResNet-20, 200 val, 256 BN images, 64 scoring images, K=2")
    p.add_argument("--models", help="comma-separated shipped zoo models (default resnet20,mobilenetv2,resnet56)")
    p.add_argument("--val-images", type=int, default=2000)
    p.add_argument("--recal-images", type=int, default=2048)
    p.add_argument("--score-images", type=int, default=256, help="as the pipeline scores blocks (2 x 128)")
    p.add_argument("--k", type=int, default=3, help="removals per rule to judge (K)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default torch's)")
    p.add_argument("--json", type=Path, help="write the rows here")
    args = p.parse_args(argv)
    if args.quick:
        args.val_images, args.recal_images, args.score_images, args.k = 200, 256, 64, 2
    if args.threads:
        torch.set_num_threads(args.threads)
    models = args.models.split(",") if args.models else (["resnet20"] if args.quick else
                                                         ["resnet20", "mobilenetv2", "resnet56"])
    data = load_tensors(val=args.val_images, test=0)
    rows, removal, summaries = [], [], []
    for name in models:
        r, rm, s = run_model(name, data, args)
        rows, removal, summaries = rows + r, removal + rm, summaries + [s]
    result = {"rows": rows, "tables": {"removal": removal}, "notes": verdict(removal, summaries),
              "rho": {s["model"]: {RULES[r]: v for r, v in s["rho"].items()} for s in summaries},
              "settings": {"val_images": args.val_images, "recal_images": args.recal_images,
                           "score_images": args.score_images, "k": args.k, "models": models}}
    print("\n".join(result["notes"]))
    if args.json:
        write_result(args.json, result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
