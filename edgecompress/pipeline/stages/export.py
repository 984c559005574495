"""Stage `export`: ONNX (opset 17, simplified) and numeric parity against PyTorch."""
from __future__ import annotations

from pathlib import Path

from edgecompress.errors import UserError
from edgecompress.exporters import ONNX_TOLERANCE, onnx_parity
from edgecompress.pipeline.builder import export_onnx
from edgecompress.pipeline.context import Context
from edgecompress.pipeline.records import ExportRecord
from edgecompress.pipeline.stage import StageOutput


class ExportStage:
    name, what = "export", "ONNX (opset 17, simplified) and numeric parity against PyTorch"

    def run(self, ctx: Context, out: Path) -> StageOutput:
        model = ctx.rundir.load_model("finetune", "pruned_model")
        onnx_path = export_onnx(model, out / "model.onnx", input_shape=ctx.input_shape, batch=ctx.builder.batch)
        images = ctx.data.images(ctx.config.parity_images)
        diff = onnx_parity(model, onnx_path, images)
        ctx.ui.say(f"  parity on {len(images)} validation images: max |PyTorch - ONNX Runtime| = {diff:.2e}")
        if not diff <= ONNX_TOLERANCE:
            raise UserError(f"the exported ONNX differs from PyTorch by {diff:.3g} (> {ONNX_TOLERANCE:g}) on "
                            f"validation images", "the model uses an operation whose ONNX export is not exact; "
                            "file an issue with the model")
        return StageOutput(files={"onnx": "model.onnx"},
                           data=ExportRecord.from_dict({"parity_max_abs_diff": diff, "parity_images": len(images)}))
