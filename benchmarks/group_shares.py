"""How much each coupled layer weighs in a residual group's permutation score, and what that does
to the MACs the cr knob can reach (the finding behind `permutation:group=share`, issue 7).

For every group with several member layers: the share of the group's summed raw deviation that
each member carries (largest shown), and the fraction of the group's score held by its top half of
channels with group="sum" vs group="share" (with channel multiple 8 a 16-channel group keeps 8
channels while cr is below that fraction). Then MACs kept vs cr (steps of 1/64, multiple 8) for
permutation (sum), permutation:group=share and l2, listing only the knobs where MACs change.
Importance from the pipeline's 4 x 128 training images (seed 0).

    .venv/bin/python benchmarks/group_shares.py --model resnet56
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import load_tensors, macs_params, train_batches  # noqa: E402

SPECS = ("permutation", "permutation:group=share", "l2")


def top_half(score: torch.Tensor) -> float:
    ranked = score.sort(descending=True).values
    return float(ranked[: len(ranked) // 2].sum() / ranked.sum())


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="resnet56", help="a shipped zoo checkpoint (default resnet56)")
    args = p.parse_args(argv)
    from edgecompress.pruning import PruningPlan, channel_importance
    from edgecompress.zoo import pretrained
    model = pretrained(args.model)[0].eval()
    batches = train_batches(load_tensors(train=2048, val=1, test=1).train_x, count=4, batch_size=128, seed=0)
    plans = {spec: PruningPlan.build(model, batches, criterion=spec) for spec in SPECS}
    raw = channel_importance(model, batches)
    print(f"{args.model}: groups with several member layers (raw deviations, conv output)")
    for g in plans["permutation"].groups:
        if len(g.members) < 2:
            continue
        totals = {m: float(raw[m].sum()) for m in g.members if m in raw}
        top = max(totals, key=totals.get)
        print(f"  {g.key} ({g.width} channels, {len(totals)} members): {top} carries "
              f"{totals[top] / sum(totals.values()):.0%} of the sum; top-half share "
              f"sum {top_half(plans['permutation'].scores[g.key]):.3f}, "
              f"share {top_half(plans['permutation:group=share'].scores[g.key]):.3f}")
    base = macs_params(model)[0]
    print("MACs kept vs cr (multiple 8), knobs where it changes:")
    for spec, plan in plans.items():
        steps, last = [], None
        for k in range(24, 64):
            frac = macs_params(plan.prune(k / 64, multiple=8, min_channels=8))[0] / base
            if last is None or round(frac, 2) != last:
                steps.append(f"{k / 64:.3f}:{frac:.0%}")
                last = round(frac, 2)
        print(f"  {spec}: " + " ".join(steps))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
