"""ONNX -> TensorRT plan, for TensorRT 10.x (JetPack 6) and 11.x, by feature detection.

- TensorRT 10.x: a weakly typed network; precision is chosen by builder flags (FP16, INT8). INT8
  comes from the QDQ nodes of the ONNX (explicit quantization): no calibrator is used.
- TensorRT 11.x: the FP16/INT8 builder flags and the calibrators are removed; networks are
  strongly typed (NetworkDefinitionCreationFlag.STRONGLY_TYPED) and every tensor keeps the type
  the ONNX gives it. INT8 = the QDQ ONNX; FP16 = an ONNX whose float tensors are FP16.

Engines are specific to the GPU and TensorRT version that built them, so on a machine without
TensorRT the Jetson targets write `build_engine.sh` (the same build as a trtexec command) and the
plan is built on the device.
"""
from __future__ import annotations

import shlex
from pathlib import Path

from edgecompress.errors import InternalError, UserError
from edgecompress.exporters.common import existing, is_qdq, need

# Max abs logit difference vs PyTorch, per engine precision (checked in tests/test_tensorrt.py
# when TensorRT and a GPU are present). FP32 on Ampere uses TF32 tensor cores by default.
TENSORRT_TOLERANCE = {"fp32": 5e-3, "fp16": 5e-2}


def tensorrt_has_precision_flags(trt) -> bool:
    """TensorRT <= 10 has BuilderFlag.FP16/INT8; 11 removed them (strongly typed only)."""
    return hasattr(trt.BuilderFlag, "FP16") and hasattr(trt.BuilderFlag, "INT8")


def _check_precision(src: Path, precision: str) -> None:
    if precision not in ("fp32", "fp16", "int8"):
        raise UserError(f"unknown TensorRT precision {precision!r}", "use fp32, fp16 or int8")
    if precision == "int8" and not is_qdq(src):
        raise UserError(f"{src} has no QuantizeLinear/DequantizeLinear nodes but int8 was asked",
                        "pass the QDQ ONNX written by the calibrate stage")


def _network(trt, builder, logger, src: Path, strongly_typed: bool):
    # TRT 10: explicit batch is the default, so no EXPLICIT_BATCH flag (deprecated, gone in 11).
    flags = 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED) if strongly_typed else 0
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(src)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise InternalError(f"TensorRT could not parse {src}: {errors}")
    return network, parser  # the parser owns weights the network refers to: keep it alive


def _config(trt, builder, network, *, precision: str, workspace_mb: int, batch: int,
            flags: bool):
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_mb << 20)
    if flags and precision in ("fp16", "int8"):
        config.set_flag(trt.BuilderFlag.FP16)  # int8: let non-quantized layers run in FP16 too
    if flags and precision == "int8":
        config.set_flag(trt.BuilderFlag.INT8)  # explicit quantization from the QDQ nodes
    inputs = [network.get_input(i) for i in range(network.num_inputs)]
    if any(-1 in tuple(inp.shape) for inp in inputs):   # a dynamic batch, asked for: one shape, the profile's
        profile = builder.create_optimization_profile()
        for inp in inputs:
            shape = (batch, *tuple(inp.shape)[1:])
            profile.set_shape(inp.name, shape, shape, shape)
        config.add_optimization_profile(profile)
    return config


def onnx_to_tensorrt(src: Path | str, dst_plan: Path | str, *, precision: str,
                     workspace_mb: int = 1024, batch: int = 1) -> Path:
    """Build a serialized engine (plan) from `src` on this machine's GPU."""
    trt = need("tensorrt", "tensorrt")
    src, dst_plan = existing(src, "ONNX model"), Path(dst_plan)
    _check_precision(src, precision)
    flags = tensorrt_has_precision_flags(trt)
    if not flags and precision == "fp16" and not _has_fp16_tensors(src):
        raise UserError("TensorRT 11 builds strongly typed networks: FP16 needs an FP16 ONNX",
                        "export the model in half precision, or build fp32/int8")
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network, parser = _network(trt, builder, logger, src, strongly_typed=not flags)
    config = _config(trt, builder, network, precision=precision, workspace_mb=workspace_mb,
                     batch=batch, flags=flags)
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise InternalError(f"TensorRT failed to build an engine from {src} ({precision})")
    dst_plan.parent.mkdir(parents=True, exist_ok=True)
    dst_plan.write_bytes(bytes(plan))
    return dst_plan


def _has_fp16_tensors(src: Path) -> bool:
    onnx = need("onnx", "onnx")
    model = onnx.load(str(src), load_external_data=False)
    return any(t.data_type == onnx.TensorProto.FLOAT16 for t in model.graph.initializer)


_SCRIPT = """#!/usr/bin/env bash
# Build the TensorRT engine ON THE DEVICE (engines are specific to the GPU and TensorRT version).
# Written by edgecompress. Usage: bash build_engine.sh [path/to/trtexec]
set -euo pipefail
cd "$(dirname "$0")"
TRTEXEC="${{1:-$(command -v trtexec || echo /usr/src/tensorrt/bin/trtexec)}}"
ONNX={onnx}
SHAPES="{shapes}"
# TensorRT 10.x (JetPack 6) takes precision flags; 11.x removed them and builds strongly typed
# networks, where precision comes from the ONNX itself (QDQ nodes for INT8).
# (help captured first: with pipefail, `trtexec --help | grep -q` fails when grep exits early)
HELP="$("$TRTEXEC" --help 2>&1 || true)"
if grep -q -- '--int8' <<<"$HELP"; then
  PRECISION_FLAGS="{flags10}"
else
  PRECISION_FLAGS="--stronglyTyped"{warn11}
fi
"$TRTEXEC" --onnx="$ONNX" --saveEngine={plan} $SHAPES $PRECISION_FLAGS --memPoolSize=workspace:{workspace}M
echo "engine written to $(pwd)/{plan}"
# Time it: "$TRTEXEC" --loadEngine={plan} $SHAPES --warmUp=500 --iterations=500 --duration=3
"""


def write_trtexec_script(onnx_name: str, dst_sh: Path | str, *, precision: str,
                         input_shape: tuple[int, ...] | list[int], input_name: str = "input",
                         plan_name: str = "model.plan", workspace_mb: int = 1024,
                         dynamic_batch: bool = False) -> Path:
    """Write build_engine.sh with the trtexec equivalent of `onnx_to_tensorrt`.

    `input_shape` is the full [N, C, H, W] the engine is built for (N = the profile's batch). A
    fixed-shape ONNX takes no shape flags (trtexec rejects explicit shapes for a static model);
    a dynamic batch gets one optimization profile at that shape.
    """
    flags10 = {"fp32": "", "fp16": "--fp16", "int8": "--fp16 --int8"}
    if precision not in flags10:
        raise UserError(f"unknown TensorRT precision {precision!r}", "use fp32, fp16 or int8")
    dims = "x".join(str(int(d)) for d in input_shape)
    shapes = f"--minShapes={input_name}:{dims} --optShapes={input_name}:{dims} --maxShapes={input_name}:{dims}" \
        if dynamic_batch else ""
    warn11 = ""
    if precision == "fp16":
        warn11 = ('\n  echo "warning: TensorRT 11 is strongly typed; this FP32 ONNX builds an FP32 '
                  'engine (export an FP16 ONNX for FP16)" >&2')
    dst_sh = Path(dst_sh)
    dst_sh.parent.mkdir(parents=True, exist_ok=True)
    dst_sh.write_text(_SCRIPT.format(onnx=shlex.quote(onnx_name), shapes=shapes, flags10=flags10[precision],
                                     warn11=warn11, plan=shlex.quote(plan_name), workspace=workspace_mb))
    dst_sh.chmod(0o755)
    return dst_sh
