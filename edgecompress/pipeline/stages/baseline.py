"""Stage `baseline`: the original model measured (validation/test accuracy, MACs), and the engines
a user gets from it without us, timed side by side: the float engine, the target's own INT8 tool
at its defaults, and our INT8 of the unpruned model (what probes are priced against). The
yardstick is the fastest plain engine that keeps the accuracy promise."""
from __future__ import annotations

from pathlib import Path

from edgecompress.calibration.plain import TOOLS
from edgecompress.pipeline.builder import ORIGINAL, PLAIN, probe_precision, search_precision
from edgecompress.pipeline.context import Context
from edgecompress.pipeline.measure import accuracy, original_accuracy, run_accuracy
from edgecompress.pipeline.records import BaselineRecord
from edgecompress.pipeline.stage import StageOutput
from edgecompress.pruning.structure import widths_of
from edgecompress.targets.timing import relative_timing
from edgecompress.training.evaluation import macs_and_params

class BaselineStage:
    name, what = "baseline", "the original model, and the plain engines a user gets from it, side by side"

    def run(self, ctx: Context, out: Path) -> StageOutput:
        model = ctx.original
        acc = original_accuracy(ctx)
        test_acc = accuracy(ctx, model, "test")
        macs, params = macs_and_params(model, ctx.input_shape)
        precision = search_precision(ctx.profile, ctx.config.precision)
        engines = self._engines(ctx, precision)
        timing = relative_timing(ctx.target, {n: e["build"] for n, e in engines.items()}, reference=precision,
                                 max_time_s=ctx.profile.benchmark.compare_time_s)
        base_ms = timing.ms[precision]
        for name, e in engines.items():
            e.update(latency_ms=base_ms * timing.ratios[name].median, ratio=timing.ratios[name].to_dict())
        engines[precision]["accuracy"] = acc
        if PLAIN in engines:
            engines[PLAIN]["accuracy"] = run_accuracy(ctx, ctx.target.runner(engines[PLAIN]["build"]))
        yardstick = self._yardstick(ctx, engines, acc)
        for name, e in engines.items():
            ctx.ui.say(f"  {name:<10} {e['tool']:<22} {e['latency_ms']:7.3f} ms  {timing.ratios[name]} of {precision}"
                       + (f"  val {e['accuracy']:.2f} %" if e.get("accuracy") is not None else "")
                       + ("  <- yardstick" if name == yardstick else ""))
        ctx.ui.say(f"  original: val {acc:.2f} %, test {_pct(test_acc)}, {macs / 1e6:.1f} M MACs ({timing.stopped}, "
                   f"{timing.blocks} blocks)")
        return StageOutput(data=BaselineRecord.from_dict({
            "accuracy": acc, "test_accuracy": test_acc, "flops": macs, "params": params,
            "latency_ms": base_ms, "latency_method": "estimated" if timing.stopped == "estimate" else "measured",
            "precision": precision, "widths": widths_of(model), "yardstick": yardstick,
            "engines": {n: {k: v for k, v in e.items() if k != "build"} for n, e in engines.items()},
            "timing": {k: v for k, v in timing.to_dict().items() if k != "ratios"}}))

    @staticmethod
    def _engines(ctx: Context, precision: str) -> dict[str, dict]:
        """The float engine; with INT8 allowed, the target tool's plain INT8 and ours (probe calibration)."""
        engines = {precision: {"precision": precision, "tool": f"{ctx.profile.runtime} {precision}",
                               "build": ctx.builder.build(ctx.original, precision=precision, key=ORIGINAL)}}
        probe = probe_precision(ctx.profile, ctx.config.precision)
        if probe == "int8":
            engines[PLAIN] = {"precision": "int8", "tool": TOOLS[ctx.profile.runtime],
                              "build": ctx.builder.plain(ctx.original)}
            engines["int8"] = {"precision": "int8", "tool": "edgecompress int8",
                               "build": ctx.builder.build(ctx.original, precision="int8", key=ORIGINAL)}
        return engines

    @staticmethod
    def _yardstick(ctx: Context, engines: dict[str, dict], acc: float) -> str:
        """The fastest plain engine (not ours) whose accuracy keeps the promise."""
        floor = ctx.config.accuracy_floor(acc)
        plain = [n for n, e in engines.items() if n != "int8"
                 and (floor is None or e.get("accuracy") is None or e["accuracy"] >= floor - 1e-9)]
        return min(plain, key=lambda n: engines[n]["ratio"]["ratio"])


def _pct(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.2f} %"
