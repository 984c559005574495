"""Stages `export` (ONNX + parity), `calibrate` (precision choice, INT8), `build` (target engine)."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np

from edgecompress.errors import UserError
from edgecompress.pipeline.context import Context, export_onnx, load_module
from edgecompress.pipeline.stage import StageOutput

CALIBRATION_IMAGES = 512
SENSITIVITY_IMAGES = 256


class ExportStage:
    name, what = "export", "ONNX (opset 17, simplified) and numeric parity against PyTorch"

    def run(self, ctx: Context, out: Path) -> StageOutput:
        from edgecompress.exporters import ONNX_TOLERANCE, onnx_parity
        model = load_module(ctx.rundir.artifact("finetune", "pruned_model"))
        onnx_path = export_onnx(model, out / "model.onnx", input_shape=ctx.input_shape)
        images = ctx.val_images(ctx.config.parity_images)
        diff = onnx_parity(model, onnx_path, images)
        ctx.ui.say(f"  parity on {len(images)} validation images: max |PyTorch - ONNX Runtime| = {diff:.2e}")
        if not diff <= ONNX_TOLERANCE:
            raise UserError(f"the exported ONNX differs from PyTorch by {diff:.3g} (> {ONNX_TOLERANCE:g}) on "
                            f"validation images", "the model uses an operation whose ONNX export is not exact; "
                            "file an issue with the model")
        return StageOutput(files={"onnx": "model.onnx"},
                           data={"parity_max_abs_diff": diff, "parity_images": len(images)})


class CalibrateStage:
    name, what = "calibrate", "choose the precision on the target (INT8 calibrated and accuracy-checked)"

    def run(self, ctx: Context, out: Path) -> StageOutput:
        from edgecompress.calibration import choose_precision
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
    base = ctx.results["baseline"]["accuracy"]
    if ctx.config.max_acc_drop is not None:
        return base - ctx.config.max_acc_drop
    ctx.note("no --max-acc-drop: the precision choice allows 1 point below the fine-tuned model")
    return ctx.results["finetune"]["accuracy_after"] - 1.0


def _calibration(ctx: Context) -> list[np.ndarray]:
    from edgecompress.calibration import calibration_batches
    return calibration_batches(ctx.data.train, count=min(CALIBRATION_IMAGES, len(ctx.data.train)),
                               seed=ctx.config.seed, workers=ctx.data.workers)


def _backend(runtime: str) -> str:
    """The runtime's default INT8 backend when it writes a QDQ ONNX, else ONNX Runtime's QDQ.

    The build stage takes an ONNX (DESIGN: model_int8.onnx) and every target builds from QDQ; a
    backend that writes another format (NNCF -> OpenVINO IR) is not fed to Target.build.
    """
    from edgecompress.calibration import CALIBRATORS, DEFAULT_BACKEND
    name = DEFAULT_BACKEND.get(runtime, "ort")
    return name if CALIBRATORS.get(name).artifact == "onnx-qdq" else "ort"


def _evaluator(ctx: Context, work: Path):
    from edgecompress.calibration import SYMMETRIC_ACTIVATIONS, artifact_evaluator
    runtime, target = ctx.profile.runtime, ctx.target
    return artifact_evaluator(
        fp32_onnx=ctx.rundir.artifact("export", "onnx"), work_dir=work, calib_batches=_calibration(ctx),
        val_batches=lambda: ctx.batches("val"),
        build=lambda src, precision, d: target.build(src, d, precision=precision),
        run=target.runner, measure=lambda b: target.measure(b).median_ms,
        backend=_backend(runtime), method=ctx.config.calibration,
        symmetric_activations=SYMMETRIC_ACTIVATIONS.get(runtime, False))


def _sensitivity(ctx: Context):
    from edgecompress.calibration import layer_sensitivity
    probe = ctx.val_images(SENSITIVITY_IMAGES).numpy().astype(np.float32)
    return layer_sensitivity(ctx.rundir.artifact("export", "onnx"), _calibration(ctx), [probe],
                             method=ctx.config.calibration)


def _keep_artifact(src: Path, out: Path) -> dict[str, str]:
    """Move the chosen INT8 artifact (QDQ ONNX, or an IR with its .bin) into the staging folder."""
    name = "model_int8" + src.suffix
    shutil.move(src, out / name)
    files = {"int8_model": name}
    if src.suffix == ".xml" and src.with_suffix(".bin").is_file():
        shutil.move(src.with_suffix(".bin"), out / "model_int8.bin")
        files["int8_weights"] = "model_int8.bin"
    return files


def _record(r, chosen) -> dict:
    return {"precision": r.precision, "accuracy": r.accuracy, "latency_ms": r.latency_ms,
            "float_layers": list(r.keep_float), "backend": r.backend, "chosen": r is chosen,
            "meets_budget": r.meets_budget}


def _ms(v: float | None) -> str:
    return "latency n/a" if v is None else f"{v:8.3f} ms"


ENGINE_NAMES = {"engine": "engine", "weights": "engine_weights", "build_script": "build_script", "onnx": "engine_onnx"}


class BuildStage:
    name, what = "build", "the target engine"

    def run(self, ctx: Context, out: Path) -> StageOutput:
        precision = ctx.results["calibrate"]["precision"]
        src = ctx.rundir.artifact("calibrate", "int8_model") if precision == "int8" else ctx.rundir.artifact("export", "onnx")
        build = ctx.target.build(src, out, precision=precision)
        files, data = {}, {"precision": precision, "runtime": build.runtime, "built_here": build.built_here,
                           "notes": list(build.notes), "onnx": str(src.relative_to(ctx.rundir.path))}
        for name, path in build.files.items():
            path = Path(path)
            if path.resolve().is_relative_to(out.resolve()):
                files[ENGINE_NAMES.get(name, f"engine_{name}")] = str(path.resolve().relative_to(out.resolve()))
        data["engine"] = str(Path(build.engine).resolve().relative_to(out.resolve())) \
            if Path(build.engine).resolve().is_relative_to(out.resolve()) else data["onnx"]
        data["files"] = dict(files)
        for note in build.notes:
            ctx.note(note)
        return StageOutput(files=files, data=data)


def build_result(ctx: Context):
    """The build stage's BuildResult with the paths where its files now live (the run directory)."""
    from edgecompress.targets import BuildResult
    rec, root = ctx.results["build"], ctx.rundir.path
    inv = {v: k for k, v in ENGINE_NAMES.items()}
    files = {inv.get(name, name.removeprefix("engine_")): root / rel for name, rel in rec["files"].items()}
    return BuildResult(engine=root / rec["engine"], onnx=root / rec["onnx"], precision=rec["precision"],
                       runtime=rec["runtime"], files=files, built_here=rec["built_here"], notes=tuple(rec["notes"]))
