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


def paired(base, candidate, repeats: int) -> tuple[float, float, float]:
    """Medians of `base` and `candidate` seconds and of their per-pair ratio, the two run in
    alternation after a warm-up: this machine's speed drifts by tens of percent between minutes,
    and a ratio of two back-to-back timings is far steadier than a ratio of two medians."""
    base(), candidate()
    pairs = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        base()
        t1 = time.perf_counter()
        candidate()
        t2 = time.perf_counter()
        pairs.append((t1 - t0, t2 - t1))
    return (statistics.median(a for a, _ in pairs), statistics.median(b for _, b in pairs),
            statistics.median(b / a for a, b in pairs))


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
    forward, expected, ratio = paired(lambda: run_model(model, batches),
                                      lambda: channel_importance(model, batches, mode="expected"), args.repeats)
    shuffle = timed(lambda: channel_importance(model, batches, mode="shuffle", draws=8), 1)
    loop, extrapolated, passes = loop_seconds(model, batches, forward, sample_layers=args.sample_layers,
                                              sample_channels=args.sample_channels, budget_s=args.budget)
    row = {"model": name, "images": len(batches) * args.batch, "batch": args.batch, "forward": forward,
           "expected": expected, "ratio": ratio,
           "shuffle8": shuffle, "loop": loop, "extrapolated": extrapolated, "passes": passes}
    print(f"{name}: forward {forward:.2f} s, expected {expected:.2f} s ({ratio:.2f}x forward, median of pairs), "
          f"shuffle x8 {shuffle:.2f} s, per-channel loop {loop:.0f} s "
          f"({'EXTRAPOLATED from a subset' if extrapolated else 'measured'}, {passes} full passes) "
          f"= {loop / expected:.0f}x expected", flush=True)
    return row


def report(rows: list[dict], seconds: float) -> str:
    table = md_table(rows, [
        ("model", lambda r: r["model"]), ("images", lambda r: r["images"]), ("batch", lambda r: r["batch"]),
        ("forward s", lambda r: r["forward"]), ("`expected` s", lambda r: r["expected"]),
        ("expected / forward (median of pairs)", lambda r: f"{r['ratio']:.2f}x"),
        ("`shuffle` 8 draws s", lambda r: r["shuffle8"]),
        ("per-channel loop s", lambda r: f"{r['loop']:.0f}" + (" (extrapolated)" if r["extrapolated"] else "")),
        ("loop / expected", lambda r: f"{r['loop'] / r['expected']:.0f}x"),
    ])
    return (f"`{' '.join(['.venv/bin/python', 'benchmarks/importance_cost.py', *sys.argv[1:]])}` "
            f"({seconds / 60:.1f} min; {describe_machine(machine())}, torch threads "
            f"{torch.get_num_threads()}).\n\nWhole-model importance of every conv / Linear (classifier "
            "excepted) on random 28×28 inputs (cost does not depend on the values), in batches of "
            f"{rows[0]['batch'] if rows else ''} (the pipeline's importance pass uses 4 x 128); forward and `expected` "
            "run in alternation 7 times after a warm-up, the ratio is the median of the 7 pair ratios. The per-channel loop is the seed's procedure: one full "
            "forward pass per channel plus one reference pass per layer (1 draw); \"extrapolated\" means "
            "it was timed on the first channels of a few layers and scaled by the number of passes, "
            f"because the whole loop would exceed {LOOP_BUDGET_S // 60} minutes. Goal (issue 2): "
            f"expected ≤ 1.5× forward, ≥ 100× faster than the loop.\n\n{table}\n\n" + READING)


READING = """Reading. The hooks read each layer's input (T, and the channel sum behind U) and output (V,
|Y|²) once or twice and compute one all-ones convolution of the per-group channel sums. For a
groups=1 layer that is a one-channel box sum, done with strided slice sums (`_box_sum_2d`)
instead of oneDNN's convolution, which took ResNet-56 from 1.75x to 1.3-1.4x its forward pass
(paired runs at batch 32 and 128). A depthwise layer's input has as many groups as channels, so
its box sum is as large as the layer itself, and a depthwise layer is memory-bound: the hook's
four passes over tensors the size of its input and output cost ~2-3x the layer (MobileNetV2's
96-channel 28×28 depthwise layer: 229 ms of hooks against 80 ms of layer over 512 images). The
goal holds for the plain and residual networks (ResNet-20/56), NOT for MobileNetV2 (1.8-1.9x);
the per-channel loop is three orders of magnitude slower for both."""


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="tiny-resnet on 64 images, no docs update")
    p.add_argument("--models", default=None, help="comma-separated zoo names (default resnet56,mobilenetv2)")
    p.add_argument("--no-docs", action="store_true")
    p.add_argument("--batch", type=int, default=128, help="images per batch (default 128, as the pipeline's plan)")
    args = p.parse_args(argv)
    args.images = 64 if args.quick else 512
    args.batch = 32 if args.quick else args.batch
    args.repeats = 1 if args.quick else 7
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
