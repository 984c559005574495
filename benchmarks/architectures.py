"""Parameters and MACs per architecture family before and after pruning (docs/architectures.md).

Realistic-width versions of the compact re-implementations in tests/fixtures/arch_models.py
(torchvision / timm are not used), random weights, 3x224x224 inputs, the product's PruningPlan
with its default criterion, knob 0.7 and channel multiple 8. Counts only, no timing:

    OMP_NUM_THREADS=1 python benchmarks/architectures.py [--knob 0.7] [--multiple 8] [--families vit,csp]
"""
from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.fixtures import arch_models as A  # noqa: E402

SIZE = 224


def families() -> dict:
    """name -> (factory, what the family is close to)."""
    return {
        "grouped": (lambda: A.GroupedNet(3, 1000, width=64, group_width=16, depth=4), "ResNeXt / RegNet stage"),
        "ghost": (lambda: A.GhostNet(3, 1000, width=40, depth=4), "GhostNet stage (with SE)"),
        "csp": (lambda: A.CSPNet(3, 1000, width=64, n=2), "CSPDarknet block + YOLOv8 C2f"),
        "vit": (lambda: A.ViT(3, 1000, dim=192, depth=6, num_heads=3, patch=16, image=SIZE), "ViT-Ti / DeiT-Ti (6 of 12 blocks)"),
        "vit_torch_mha": (lambda: A.ViT(3, 1000, dim=192, depth=6, num_heads=3, patch=16, image=SIZE, torch_mha=True),
                          "ViT-Ti on nn.MultiheadAttention"),
        "mobilevit": (lambda: A.MobileViT(3, 1000, width=64, dim=96), "MobileViT-XS block"),
        "se": (lambda: A.SENet(3, 1000, width=40, expand=6), "MobileNetV3 / EfficientNet block with SE"),
    }


def measure(name: str, factory, *, knob: float, multiple: int) -> dict:
    import torch_pruning as tp
    from edgecompress.pruning import PruningPlan
    torch.manual_seed(0)
    model = factory().eval()
    x = torch.randn(4, 3, SIZE, SIZE)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        plan = PruningPlan.build(model, [x])
        pruned = plan.prune(knob, multiple=multiple)
        pruned(x[:1])
        macs0, params0 = tp.utils.count_ops_and_params(model, x[:1])
        macs1, params1 = tp.utils.count_ops_and_params(pruned, x[:1])
    return {"name": name, "params": (params0, params1), "macs": (macs0, macs1), "groups": len(plan.groups),
            "unprunable": plan.unprunable}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--knob", type=float, default=0.7)
    ap.add_argument("--multiple", type=int, default=8)
    ap.add_argument("--families", default=",".join(families()))
    args = ap.parse_args()
    torch.set_num_threads(1)
    table = families()
    print(f"knob {args.knob}, channel multiple {args.multiple}, random weights, 3x{SIZE}x{SIZE}\n")
    print("| family | like | params M (before -> after) | MMACs (before -> after) | groups pruned | left whole |")
    print("|---|---|---|---|---|---|")
    for name in args.families.split(","):
        factory, like = table[name]
        r = measure(name, factory, knob=args.knob, multiple=args.multiple)
        (p0, p1), (m0, m1) = r["params"], r["macs"]
        left = "; ".join(f"{', '.join(u['layers'][:3]) or '-'}: {u['reason'][:90]}" for u in r["unprunable"]) or "none"
        print(f"| {name} | {like} | {p0 / 1e6:.2f} -> {p1 / 1e6:.2f} ({1 - p1 / p0:.0%} less) | "
              f"{m0 / 1e6:.0f} -> {m1 / 1e6:.0f} ({1 - m1 / m0:.0%} less) | {r['groups']} | {left} |", flush=True)


if __name__ == "__main__":
    main()
