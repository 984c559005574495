"""What one-pass importance costs: plain forward pass vs `expected` importance vs the batched
literal shuffle vs the seed's per-channel loop, on 512 calibration images (issue 2).

The per-channel loop runs the WHOLE model once per channel (plus one reference pass per layer).
When that would exceed 10 minutes it is timed on the first channels of a few layers and
extrapolated from the measured seconds per full pass, and the output says so.

    .venv/bin/python benchmarks/importance_cost.py           # ResNet-56 and MobileNetV2, writes docs/benchmarks.md
    .venv/bin/python benchmarks/importance_cost.py --quick   # tiny-resnet, 64 images, no docs update
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import DOCS, describe_machine, machine, md_table, replace_section  # noqa: E402

from edgecompress.pruning import channel_importance, per_channel_loop  # noqa: E402
from edgecompress.pruning.importance import run_model, scorable_layers  # noqa: E402
from edgecompress.zoo import create_model  # noqa: E402

LOOP_BUDGET_S = 600


def timed(fn, repeats: int) -> float:
    """Median seconds of `repeats` calls after one warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def loop_seconds(model, batches, forward_s: float, *, sample_layers: int, sample_channels: int,
                 budget_s: float = LOOP_BUDGET_S) -> tuple[float, bool, int]:
    """Seconds of the seed's loop over every scored layer: run when it fits the budget, else
    measured on `sample_channels` channels of `sample_layers` layers and extrapolated."""
    layers = scorable_layers(model)
    layers.pop("fc", None)
    passes = sum(m.weight.shape[0] + 1 for m in layers.values())   # one reference pass per layer
    if passes * forward_s <= budget_s:
        start = time.perf_counter()
        per_channel_loop(model, batches, layers=list(layers), mode="shuffle", draws=1)
        return time.perf_counter() - start, False, passes
    names = list(layers)
    step = max(1, len(names) // sample_layers)
    sample = names[::step][:sample_layers]
    start = time.perf_counter()
    per_channel_loop(model, batches, layers=sample, mode="shuffle", draws=1, max_channels=sample_channels)
    measured = time.perf_counter() - start
    measured_passes = sum(min(sample_channels, layers[n].weight.shape[0]) + 1 for n in sample)
    return measured / measured_passes * passes, True, passes


def measure(name: str, args) -> dict:
    torch.manual_seed(0)
    model = create_model(name).eval()
    batches = [torch.randn(args.batch, 1, 28, 28) for _ in range(args.images // args.batch)]
    forward = timed(lambda: run_model(model, batches), args.repeats)
    expected = timed(lambda: channel_importance(model, batches, mode="expected"), args.repeats)
    shuffle = timed(lambda: channel_importance(model, batches, mode="shuffle", draws=8), 1)
    loop, extrapolated, passes = loop_seconds(model, batches, forward, sample_layers=args.sample_layers,
                                              sample_channels=args.sample_channels, budget_s=args.budget)
    row = {"model": name, "images": len(batches) * args.batch, "forward": forward, "expected": expected,
           "shuffle8": shuffle, "loop": loop, "extrapolated": extrapolated, "passes": passes}
    print(f"{name}: forward {forward:.2f} s, expected {expected:.2f} s ({expected / forward:.2f}x forward), "
          f"shuffle x8 {shuffle:.2f} s, per-channel loop {loop:.0f} s "
          f"({'EXTRAPOLATED from a subset' if extrapolated else 'measured'}, {passes} full passes) "
          f"= {loop / expected:.0f}x expected", flush=True)
    return row


def report(rows: list[dict], seconds: float) -> str:
    table = md_table(rows, [
        ("model", lambda r: r["model"]), ("images", lambda r: r["images"]),
        ("forward s", lambda r: r["forward"]), ("`expected` s", lambda r: r["expected"]),
        ("expected / forward", lambda r: f"{r['expected'] / r['forward']:.2f}x"),
        ("`shuffle` 8 draws s", lambda r: r["shuffle8"]),
        ("per-channel loop s", lambda r: f"{r['loop']:.0f}" + (" (extrapolated)" if r["extrapolated"] else "")),
        ("loop / expected", lambda r: f"{r['loop'] / r['expected']:.0f}x"),
    ])
    return (f"`{' '.join(['.venv/bin/python', 'benchmarks/importance_cost.py', *sys.argv[1:]])}` "
            f"({seconds / 60:.1f} min; {describe_machine(machine())}, torch threads "
            f"{torch.get_num_threads()}).\n\nWhole-model importance of every conv / Linear (classifier "
            "excepted) on random 28×28 inputs (cost does not depend on the values); medians of "
            "repeated runs after a warm-up. The per-channel loop is the seed's procedure: one full "
            "forward pass per channel plus one reference pass per layer (1 draw); \"extrapolated\" means "
            "it was timed on the first channels of a few layers and scaled by the number of passes, "
            f"because the whole loop would exceed {LOOP_BUDGET_S // 60} minutes. Goal (issue 2): "
            f"expected ≤ 1.5× forward, ≥ 100× faster than the loop.\n\n{table}")


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="tiny-resnet on 64 images, no docs update")
    p.add_argument("--models", default=None, help="comma-separated zoo names (default resnet56,mobilenetv2)")
    p.add_argument("--no-docs", action="store_true")
    args = p.parse_args(argv)
    args.images, args.batch = (64, 32) if args.quick else (512, 32)
    args.repeats = 1 if args.quick else 3
    args.sample_layers, args.sample_channels = (2, 2) if args.quick else (6, 4)
    args.budget = 5 if args.quick else LOOP_BUDGET_S   # quick: exercise the extrapolation path
    models = args.models.split(",") if args.models else (["tiny-resnet"] if args.quick else ["resnet56", "mobilenetv2"])
    start = time.time()
    rows = [measure(name, args) for name in models]
    text = report(rows, time.time() - start)
    print(text)
    if not (args.quick or args.no_docs):
        replace_section(DOCS, "Importance cost", text)


if __name__ == "__main__":
    main()
