"""Stage `calibrate`: the precision chosen on the target (INT8 calibrated and accuracy-checked)."""
from __future__ import annotations

import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np

from edgecompress.calibration import (BACKENDS, CALIBRATORS, SYMMETRIC_ACTIVATIONS, artifact_evaluator,
                                      choose_precision, layer_sensitivity)
from edgecompress.pipeline.builder import search_precision
from edgecompress.pipeline.context import Context
from edgecompress.pipeline.records import CalibrateRecord
from edgecompress.pipeline.stage import StageOutput
from edgecompress.pipeline.stages.prune import PAYS_ESTIMATED
from edgecompress.pruning.search import Budget
from edgecompress.targets.timing import DECIDE_MIN_BLOCKS, decided, timed_in_layouts
from edgecompress.tasks import points

SENSITIVITY_IMAGES = 256


class CalibrateStage:
    name, what = "calibrate", "choose the precision on the target (INT8 calibrated and accuracy-checked)"

    def run(self, ctx: Context, out: Path) -> StageOutput:
        budget = budget_accuracy(ctx)
        evaluate = Evaluator(ctx, out / "work", budget)
        selection = choose_precision(evaluate=evaluate, budget_accuracy=budget, precisions=ctx.profile.precisions,
                                     precision=ctx.config.precision, layer_sensitivity=lambda: _sensitivity(ctx))
        for note in selection.notes:
            ctx.note(note)
        chosen = _measurably_faster(ctx, selection)
        runtime = runtime_for(ctx, chosen.precision)
        if runtime != ctx.target.runtime:
            ctx.note(f"{chosen.precision} ships on {runtime}: {ctx.target.runtime} was chosen for "
                     f"{ctx.results.baseline.probe_precision}, and the original at {chosen.precision} timed "
                     f"measurably faster on {runtime} in the baseline")
            ctx.use_runtime(runtime)
        files = _keep_artifact(Path(chosen.details["artifact"]), out) if chosen.precision == "int8" else {}
        records = [_record(r, chosen) for r in selection.records]
        for r in records:
            ctx.ui.say(f"  {r['precision']:<5} {r['backend'] or '':<8} val {points(ctx.task, r['accuracy'], 6)}  {_ms(r['latency_ms'])}"
                       f"  {r['ratio']['ratio']:.3f}x [{r['ratio']['low']:.3f}, {r['ratio']['high']:.3f}] of fp32"
                       f"{'  <- chosen' if r['chosen'] else ''}")
        return StageOutput(files=files, data=CalibrateRecord.from_dict({"precision": chosen.precision, "runtime": runtime,
                                              "precisions": records,
                                              "budget_accuracy": selection.budget_accuracy,
                                              "keep_float": list(chosen.keep_float), "backend": chosen.backend}))


class Evaluator:
    """`evaluate(precision, keep_float)` for the precision selector: build the exported model at
    that precision, its accuracy on the built engine, and its latency as a ratio to the FP32
    engine timed side by side (the protocol), with the interval in the record's details. INT8 is
    made by each backend the runtime has (calibration.BACKENDS: on OpenVINO ORT-QDQ and NNCF, the
    target's own tool; on TensorRT ORT-QDQ and NNCF's QDQ ONNX): the faster one, side by side (or
    by the estimate), that keeps the budget is the INT8 candidate."""

    def __init__(self, ctx: Context, work: Path, budget: float) -> None:
        self.ctx, self.work, self.budget = ctx, work, budget
        self.reference_ms: float | None = None
        runtime = ctx.profile.runtime
        self.backends = list(BACKENDS.get(runtime, ("ort",)))
        fp32 = ctx.rundir.artifact("export", "onnx")
        self.reference = self.build(fp32, "fp32", work / "reference") if "fp32" in ctx.profile.precisions else None
        self.builds = {b: artifact_evaluator(
            fp32_onnx=fp32, work_dir=work / b, calib_batches=ctx.builder.calibration(shipped=True),
            val_batches=lambda: ctx.data.batches("val"), build=self.build,
            run=ctx.target.runner, measure=lambda built: None, backend=b, method=_method(ctx, b), score=ctx.task.evaluate,
            symmetric_activations=SYMMETRIC_ACTIVATIONS.get(runtime, False)) for b in self.backends}

    def build(self, src: Path, precision: str, out: Path):
        """Built for the target and loaded with the settings it would ship with at that precision:
        accuracy and latency as the user gets them."""
        return replace(self.ctx.target.build(src, out, precision=precision), settings=self.ctx.settings_for(precision))

    def __call__(self, precision: str, keep_float: tuple[str, ...]):
        backends = self.backends if precision == "int8" else self.backends[:1]
        tried = {b: self.builds[b](precision, keep_float) for b in backends}
        builds = {b: details.pop("built") for b, (_, _, details) in tried.items()}
        if self.reference is None or precision == "fp32":   # the reference itself: ratio 1 by definition
            return tried[backends[0]]
        # a yes/no question (is it faster than FP32?), asked as the prune stage asks it, in the
        # profile's `check_layouts` fresh process layouts: in one layout our ORT INT8 timed 0.851x
        # [0.815, 1.041] of FP32 (0.68x in the baseline's five) and FP32 shipped
        timing = timed_in_layouts(self.ctx.target, {"fp32": self.reference, **builds}, reference="fp32",
                                  layouts=self.ctx.profile.benchmark.check_layouts,
                                  max_time_s=self.ctx.profile.benchmark.compare_time_s,
                                  until=decided(1.0), min_blocks=DECIDE_MIN_BLOCKS)
        keep = [b for b in backends if Budget(min_accuracy=self.budget).keeps(tried[b][0])] or backends
        best = min(keep, key=lambda b: timing.ratios[b].median)
        acc, _, details = tried[best]
        others = {b: {"accuracy": tried[b][0], "ratio": timing.ratios[b].to_dict()} for b in backends if b != best}
        # every candidate on one scale, the FP32 engine's ms in the first comparison: each candidate
        # is timed in a comparison of its own, and their ms apart differ with the machine's drift
        # (FP16 read 0.266 ms at 1.015x of FP32, INT8 0.311 ms at 0.900x, and FP16 was chosen)
        self.reference_ms = self.reference_ms or timing.ms["fp32"]
        return acc, timing.ratios[best].median * self.reference_ms, {
            **details, "ratio": timing.ratios[best].to_dict(), "others": others}


def _method(ctx: Context, backend: str) -> str:
    """The requested calibration method, or NNCF's default where NNCF does not offer it."""
    method = ctx.config.calibration
    return method if method in CALIBRATORS.get(backend).methods else "minmax"


def _measurably_faster(ctx: Context, selection):
    """INT8 ships only when the protocol says it is faster than FP32 (its ratio's interval below
    1); else the target's own float precision (FP16 on TensorRT: what its plain engine is, and
    what a user gets from trtexec --fp16; FP32 elsewhere), when it keeps the budget, and the run
    says so. That float precision itself always may ship: a Jetson run that weighed FP16 against
    FP32 shipped FP32, 0.99x of the user's plain FP16 engine by its own estimate."""
    chosen = selection.chosen
    ratio = chosen.details.get("ratio")
    own = search_precision(ctx.profile, ctx.config.precision)
    fallback = [r for r in selection.records if r.precision == own and r.meets_budget]
    # timed here: the interval below 1; estimated or over ssh (one figure each, no interval): 5 % faster
    faster = ratio is not None and (ratio["high"] < 1 if ctx.target.latency_source == "local"
                                    else ratio["ratio"] <= 1 / PAYS_ESTIMATED)
    if chosen.precision in ("fp32", own) or ratio is None or faster or not fallback:
        return chosen
    ctx.note(f"{chosen.precision} is not measurably faster than fp32 here ({ratio['ratio']:.3f}x "
             f"[{ratio['low']:.3f}, {ratio['high']:.3f}] of its latency, side by side): {own} ships")
    return fallback[0]


def runtime_for(ctx: Context, precision: str) -> str:
    """The runtime the engine ships on at `precision`: the baseline chose the runtime for the
    precision it searched at (INT8 when allowed), timing the original at each precision on every
    runtime the device offers; when another precision ships, the runtime whose original at that
    precision was measurably faster (intervals apart) than the current one's in that timing.
    Measured: YOLOv8n on x86, ORT INT8 chosen (0.70x of OpenVINO INT8, OpenVINO FP32 0.71x), INT8
    missed the mAP budget, and ORT FP32 shipped at 0.71x of the user's plain OpenVINO FP32.
    INT8 stays where it was calibrated: its accuracy was checked on that runtime's kernels."""
    if precision == "int8":
        return ctx.target.runtime
    candidates = (ctx.results.baseline.settings_choice or {}).get("candidates", {})
    ours = candidates.get(f"{ctx.target.runtime} {precision}")
    others = [c for c in candidates.values() if c["precision"] == precision and "ratio" in c]
    if ours is None or "ratio" not in ours or not others:
        return ctx.target.runtime
    best = min(others, key=lambda c: c["ratio"]["ratio"])
    return best["runtime"] if best["ratio"]["high"] < ours["ratio"]["low"] else ctx.target.runtime


def budget_accuracy(ctx: Context) -> float:
    """The accuracy the shipped engine must keep: baseline - max-acc-drop; with a latency budget
    alone, one point below the fine-tuned model (so INT8 cannot quietly cost more than that)."""
    floor = ctx.budget.min_accuracy
    if floor is not None:
        return floor
    ctx.note("no --max-acc-drop: the precision choice allows 1 point below the fine-tuned model")
    return ctx.results.finetune.accuracy_after - 1.0


def _sensitivity(ctx: Context):
    probe = ctx.data.images(SENSITIVITY_IMAGES).numpy().astype(np.float32)
    return layer_sensitivity(ctx.rundir.artifact("export", "onnx"), ctx.builder.calibration(shipped=True), [probe],
                             method=ctx.config.calibration)


def _keep_artifact(src: Path, out: Path) -> dict[str, str]:
    """Move the chosen INT8 artifact (a QDQ ONNX, or NNCF's IR with its .bin) into the staging folder."""
    name = "model_int8" + src.suffix
    shutil.move(src, out / name)
    files = {"int8_model": name}
    if src.suffix == ".xml":
        shutil.move(src.with_suffix(".bin"), out / "model_int8.bin")
        files["int8_weights"] = "model_int8.bin"
    return files


def _record(r, chosen) -> dict:
    one = {"ratio": 1.0, "low": 1.0, "high": 1.0}
    return {"precision": r.precision, "accuracy": r.accuracy, "latency_ms": r.latency_ms,
            "ratio": r.details.get("ratio", one), "others": r.details.get("others", {}),
            "float_layers": list(r.keep_float), "backend": r.backend, "chosen": r is chosen,
            "meets_budget": r.meets_budget}


def _ms(v: float | None) -> str:
    return "latency n/a" if v is None else f"{v:8.3f} ms"
