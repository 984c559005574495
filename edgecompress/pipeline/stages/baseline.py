"""Stage `baseline`: the original model measured (validation/test accuracy, MACs, latency on the target)."""
from __future__ import annotations

from pathlib import Path

from edgecompress.pipeline.builder import ORIGINAL, search_precision
from edgecompress.pipeline.context import Context
from edgecompress.pipeline.measure import accuracy, original_accuracy
from edgecompress.pipeline.stage import StageOutput
from edgecompress.pruning.structure import widths_of
from edgecompress.training.evaluation import macs_and_params


class BaselineStage:
    name, what = "baseline", "the original model: validation/test accuracy, MACs, latency on the target"

    def run(self, ctx: Context, out: Path) -> StageOutput:
        model = ctx.original
        acc = original_accuracy(ctx)
        test_acc = accuracy(ctx, model, "test")
        macs, params = macs_and_params(model, ctx.input_shape)
        precision = search_precision(ctx.profile, ctx.config.precision)
        latency = ctx.target.measure(ctx.builder.build(model, precision=precision, key=ORIGINAL))
        ctx.ui.say(f"  original: val {acc:.2f} %, test {_pct(test_acc)}, {macs / 1e6:.1f} M MACs, "
                   f"{latency.median_ms:.3f} ms ({latency.method}, {precision})")
        return StageOutput(data={
            "accuracy": acc, "test_accuracy": test_acc, "flops": macs, "params": params,
            "latency_ms": latency.median_ms, "latency_p90_ms": _finite(latency.p90_ms),
            "latency_method": latency.method, "latency_device": latency.device, "precision": precision,
            "widths": widths_of(model)})


def _pct(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.2f} %"


def _finite(v: float) -> float | None:
    return None if v != v else v
