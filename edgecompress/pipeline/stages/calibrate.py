"""Stage `calibrate`: the precision chosen on the target (INT8 calibrated and accuracy-checked)."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np

from edgecompress.calibration import (CALIBRATORS, DEFAULT_BACKEND, SYMMETRIC_ACTIVATIONS, artifact_evaluator,
                                      choose_precision, layer_sensitivity)
from edgecompress.pipeline.context import Context
from edgecompress.pipeline.stage import StageOutput

SENSITIVITY_IMAGES = 256


class CalibrateStage:
    name, what = "calibrate", "choose the precision on the target (INT8 calibrated and accuracy-checked)"

    def run(self, ctx: Context, out: Path) -> StageOutput:
        selection = choose_precision(evaluate=_evaluator(ctx, out / "work"), budget_accuracy=budget_accuracy(ctx),
                                     precisions=ctx.profile.precisions, precision=ctx.config.precision,
                                     layer_sensitivity=lambda: _sensitivity(ctx))
        for note in selection.notes:
            ctx.note(note)
        files = {}
        chosen = selection.chosen
        if chosen.precision == "int8":
            files = _keep_artifact(Path(chosen.details["artifact"]), out)
        records = [_record(r, chosen) for r in selection.records]
        for r in records:
            ctx.ui.say(f"  {r['precision']:<5} val {r['accuracy']:6.2f} %  {_ms(r['latency_ms'])}"
                       f"{'  <- chosen' if r['chosen'] else ''}")
        return StageOutput(files=files, data={"precision": chosen.precision, "precisions": records,
                                              "budget_accuracy": selection.budget_accuracy,
                                              "keep_float": list(chosen.keep_float)})


def budget_accuracy(ctx: Context) -> float:
    """The accuracy the shipped engine must keep: baseline - max-acc-drop; with a latency budget
    alone, one point below the fine-tuned model (so INT8 cannot quietly cost more than that)."""
    floor = ctx.config.accuracy_floor(ctx.results["baseline"]["accuracy"])
    if floor is not None:
        return floor
    ctx.note("no --max-acc-drop: the precision choice allows 1 point below the fine-tuned model")
    return ctx.results["finetune"]["accuracy_after"] - 1.0


def _backend(runtime: str) -> str:
    """The runtime's default INT8 backend when it writes a QDQ ONNX, else ONNX Runtime's QDQ.

    The build stage takes an ONNX (DESIGN: model_int8.onnx) and every target builds from QDQ; a
    backend that writes another format (NNCF -> OpenVINO IR) is not fed to Target.build.
    """
    name = DEFAULT_BACKEND.get(runtime, "ort")
    return name if CALIBRATORS.get(name).artifact == "onnx-qdq" else "ort"


def _evaluator(ctx: Context, work: Path):
    runtime, target = ctx.profile.runtime, ctx.target
    return artifact_evaluator(
        fp32_onnx=ctx.rundir.artifact("export", "onnx"), work_dir=work, calib_batches=ctx.builder.calibration(shipped=True),
        val_batches=lambda: ctx.data.batches("val"),
        build=lambda src, precision, d: target.build(src, d, precision=precision),
        run=target.runner, measure=lambda b: target.measure(b).median_ms,
        backend=_backend(runtime), method=ctx.config.calibration,
        symmetric_activations=SYMMETRIC_ACTIVATIONS.get(runtime, False))


def _sensitivity(ctx: Context):
    probe = ctx.data.images(SENSITIVITY_IMAGES).numpy().astype(np.float32)
    return layer_sensitivity(ctx.rundir.artifact("export", "onnx"), ctx.builder.calibration(shipped=True), [probe],
                             method=ctx.config.calibration)


def _keep_artifact(src: Path, out: Path) -> dict[str, str]:
    """Move the chosen INT8 artifact (a QDQ ONNX: `_backend` picks only those) into the staging folder."""
    name = "model_int8" + src.suffix
    shutil.move(src, out / name)
    return {"int8_model": name}


def _record(r, chosen) -> dict:
    return {"precision": r.precision, "accuracy": r.accuracy, "latency_ms": r.latency_ms,
            "float_layers": list(r.keep_float), "backend": r.backend, "chosen": r is chosen,
            "meets_budget": r.meets_budget}


def _ms(v: float | None) -> str:
    return "latency n/a" if v is None else f"{v:8.3f} ms"
