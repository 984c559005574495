"""Stage `build`: the target engine (OpenVINO IR / TensorRT plan or ONNX + build_engine.sh / .ort)."""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from edgecompress.pipeline.context import Context
from edgecompress.pipeline.records import BuildRecord
from edgecompress.pipeline.stage import StageOutput
from edgecompress.targets import BuildResult
from edgecompress.targets.base import input_dims
from edgecompress.targets.deploy import DEPLOY_FILE, Deployment, read_deployment, write_deployment


ENGINE_NAMES = {"engine": "engine", "weights": "engine_weights", "build_script": "build_script", "onnx": "engine_onnx"}


class BuildStage:
    name, what = "build", "the target engine"

    def run(self, ctx: Context, out: Path) -> StageOutput:
        precision = ctx.results.calibrate.precision
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
        base = ctx.results.baseline
        settings = ctx.target.settings(replace(build, settings=ctx.settings_for(precision)))
        write_deployment(out / DEPLOY_FILE, Deployment(
            engine=data["engine"], runtime=build.runtime, settings=settings, precision=precision,
            input_shape=input_dims(src, ctx.profile), chosen=base.settings_choice))
        files["deploy"] = DEPLOY_FILE
        ctx.ui.say(f"  {data['engine']} loads with {settings} ({DEPLOY_FILE}; edgecompress.load(run_dir))")
        for note in build.notes:
            ctx.note(note)
        return StageOutput(files=files, data=BuildRecord.from_dict(data))


def build_result(ctx: Context):
    """The build stage's BuildResult with the paths where its files now live (the run directory)."""
    rec, root = ctx.results.build, ctx.rundir.path
    inv = {v: k for k, v in ENGINE_NAMES.items()}
    files = {inv.get(name, name.removeprefix("engine_")): root / rel for name, rel in rec.files.items()}
    return BuildResult(engine=root / rec.engine, onnx=root / rec.onnx, precision=rec.precision,
                       runtime=rec.runtime, files=files, built_here=rec.built_here, notes=tuple(rec.notes),
                       settings=read_deployment(root).settings)   # what the user's load() applies
