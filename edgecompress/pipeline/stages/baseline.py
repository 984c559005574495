"""Stage `baseline`: the original model measured (validation/test accuracy, MACs); the runtime
settings our engines ship with, chosen by measurement; and the engines a user gets from the
original without us, made the way each runtime documents it (fixed-input export, the runtime's own
INT8 tool at its defaults, default settings) on every runtime the target offers, timed side by
side with ours. The yardstick is the fastest plain engine that keeps the accuracy promise."""
from __future__ import annotations

from pathlib import Path

from edgecompress.calibration.plain import TOOLS
from edgecompress.pipeline.builder import ORIGINAL, plain_name, probe_precision, search_precision
from edgecompress.pipeline.context import Context
from edgecompress.pipeline.measure import accuracy, original_accuracy, run_accuracy
from edgecompress.pipeline.records import BaselineRecord
from edgecompress.pipeline.stage import StageOutput
from edgecompress.pruning.search import Budget
from edgecompress.pruning.structure import widths_of
from edgecompress.targets.settings import DEFAULTS, choose_settings
from edgecompress.targets.timing import relative_timing
from edgecompress.training.evaluation import macs_and_params

OURS_INT8 = "int8"


class BaselineStage:
    name, what = "baseline", "the original model, our runtime settings, and the plain engines a user gets, side by side"

    def run(self, ctx: Context, out: Path) -> StageOutput:
        model = ctx.original
        acc = original_accuracy(ctx)
        test_acc = accuracy(ctx, model, "test")
        macs, params = macs_and_params(model, ctx.input_shape)
        budget = Budget(min_accuracy=ctx.config.accuracy_floor(acc), max_latency_ms=ctx.config.latency_budget_ms)
        precision = search_precision(ctx.profile, ctx.config.precision)
        settings, choice = self._settings(ctx)
        ctx.builder.settings = settings
        engines = self._engines(ctx, precision)
        timing = relative_timing(ctx.target, {n: e["build"] for n, e in engines.items()}, reference=precision,
                                 max_time_s=ctx.profile.benchmark.compare_time_s)
        base_ms = timing.ms[precision]
        for name, e in engines.items():
            e.update(latency_ms=base_ms * timing.ratios[name].median, ratio=timing.ratios[name].to_dict())
            e["accuracy"] = acc if name == precision else \
                run_accuracy(ctx, ctx.target.runner(e["build"])) if e["plain"] else None
        yardstick = self._yardstick(engines, budget)
        for name, e in engines.items():
            ctx.ui.say(f"  {name:<20} {e['tool']:<26} {e['latency_ms']:7.3f} ms  {timing.ratios[name]} of {precision}"
                       + (f"  val {e['accuracy']:.2f} %" if e.get("accuracy") is not None else "")
                       + ("  <- yardstick" if name == yardstick else ""))
        ctx.ui.say(f"  original: val {acc:.2f} %, test {_pct(test_acc)}, {macs / 1e6:.1f} M MACs ({timing.stopped}, "
                   f"{timing.blocks} blocks)")
        return StageOutput(data=BaselineRecord.from_dict({
            "accuracy": acc, "test_accuracy": test_acc, "flops": macs, "params": params,
            "latency_ms": base_ms, "latency_method": "estimated" if timing.stopped == "estimate" else "measured",
            "precision": precision, "widths": widths_of(model), "yardstick": yardstick,
            "engines": {n: {k: v for k, v in e.items() if k != "build"} for n, e in engines.items()},
            "timing": {k: v for k, v in timing.to_dict().items() if k != "ratios"},
            "budget": {"min_accuracy": budget.min_accuracy, "max_latency_ms": budget.max_latency_ms},
            "settings": settings, "settings_choice": choice}))

    @staticmethod
    def _settings(ctx: Context) -> tuple[dict | None, dict]:
        """The runtime settings our engines ship with: chosen by timing the original at the
        precision probes use under every candidate (targets/deploy.py); where nothing is timed
        here (estimated, remote), the runtime's defaults."""
        if ctx.target.latency_source != "local":
            return None, {"chosen": DEFAULTS, "why": f"latency is {ctx.target.latency_source}: nothing timed here"}
        precision = probe_precision(ctx.profile, ctx.config.precision)
        build = ctx.builder.build(ctx.original, precision=precision, key=ORIGINAL)
        settings, choice = choose_settings(ctx.target, build, max_time_s=ctx.profile.benchmark.compare_time_s)
        ratio = choice["ratios"].get(choice["chosen"])
        ctx.ui.say(f"  runtime settings ({ctx.target.runtime}, {precision}): {choice['chosen']}"
                   + (f", {ratio['ratio']:.3f}x [{ratio['low']:.3f}, {ratio['high']:.3f}] of the defaults' latency"
                      if ratio and choice["chosen"] != DEFAULTS else "") + f"  {settings}")
        return settings, {**choice, "precision": precision}

    @staticmethod
    def _engines(ctx: Context, precision: str) -> dict[str, dict]:
        """Ours: the original at the float precision (the latency scale) and, with INT8 allowed,
        our INT8 (probe calibration), both with our settings. Plain: on every runtime the target
        offers, the float engine and, with INT8 allowed, the runtime's own INT8 tool at its defaults."""
        main = ctx.profile.runtime
        engines = {precision: {"precision": precision, "tool": f"edgecompress {main} {precision}", "runtime": main,
                               "plain": False, "build": ctx.builder.build(ctx.original, precision=precision, key=ORIGINAL)}}
        int8 = probe_precision(ctx.profile, ctx.config.precision) == "int8"
        if int8:
            engines[OURS_INT8] = {"precision": "int8", "tool": f"edgecompress {main} int8", "runtime": main,
                                  "plain": False,
                                  "build": ctx.builder.build(ctx.original, precision="int8", key=ORIGINAL)}
        local = ctx.target.latency_source == "local"
        for runtime in [main, *(ctx.profile.other_runtimes if local else [])]:
            for p in [precision, *(["int8"] if int8 else [])]:
                tool = TOOLS[runtime] if p == "int8" else f"{runtime} {p}"
                engines[plain_name(runtime, p, main)] = {
                    "precision": p, "tool": tool, "runtime": runtime, "plain": True,
                    "build": ctx.builder.plain(ctx.original, runtime=runtime, precision=p)}
        return engines

    @staticmethod
    def _yardstick(engines: dict[str, dict], budget: Budget) -> str:
        """The fastest plain engine whose accuracy keeps the promise (the fastest plain one when none does)."""
        plain = [n for n, e in engines.items() if e["plain"]]
        keep = [n for n in plain if budget.keeps(engines[n].get("accuracy"))] or plain
        return min(keep, key=lambda n: engines[n]["ratio"]["ratio"])


def _pct(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.2f} %"
