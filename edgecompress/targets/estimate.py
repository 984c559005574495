"""Analytical latency estimate: a per-layer roofline from the profile's published device figures.

Works from the ONNX file (the artifact every target builds from), after shape inference with the
profile's batch. For each compute layer (Conv, Gemm/MatMul, pooling):
    t = max(FLOPs_aligned / peak[precision], bytes / bandwidth) + layer_overhead
where FLOPs_aligned rounds channel counts UP to the device's alignment (a 20-channel conv costs a
24- or 32-channel one: the kernels are built for blocks of channels), and bytes are the input,
output and weight tensors at the precision's element size. Elementwise ops that engines fuse into
the preceding layer (Relu, BatchNorm, Add, Clip, Q/DQ, ...) cost only the extra tensor they read.
Always reported as method="estimated", never as measured.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from edgecompress.util import need
from edgecompress.profiles import Profile
from edgecompress.targets.base import PROBES, BuildResult, Latency, Probe

ELEMENT_BYTES = {"fp32": 4, "fp16": 2, "int8": 1}
POOL_OPS = {"MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool"}
FUSED_READS = {"Add", "Mul", "Sub", "Concat"}   # fused, but read a second tensor


@dataclass(frozen=True)
class LayerCost:
    name: str
    op: str
    flops: float          # aligned FLOPs (2 per MAC)
    bytes: float
    ms: float


def _round_up(n: int, m: int) -> int:
    return int(math.ceil(n / m) * m)


def _shapes(model, batch: int) -> tuple[dict[str, list[int]], dict]:
    """Tensor name -> static shape (batch dims fixed to `batch`), and the initializers."""
    onnx = need("onnx", "onnx")
    for inp in model.graph.input:
        for d in inp.type.tensor_type.shape.dim:
            if not d.dim_value:          # the dynamic batch dim
                d.dim_value = batch
    model = onnx.shape_inference.infer_shapes(model)
    shapes = {}
    for vi in [*model.graph.input, *model.graph.value_info, *model.graph.output]:
        shapes[vi.name] = [d.dim_value for d in vi.type.tensor_type.shape.dim]
    inits = {t.name: list(t.dims) for t in model.graph.initializer}
    shapes.update(inits)
    return shapes, inits


def _weight_shape(node, producers: dict, shapes: dict) -> list[int]:
    """The weight's shape, looking through a DequantizeLinear (QDQ models)."""
    name = node.input[1]
    src = producers.get(name)
    if src is not None and src.op_type == "DequantizeLinear":
        name = src.input[0]
    return shapes.get(name) or shapes[node.input[1]]


def _is_int8(node, producers: dict) -> bool:
    src = producers.get(node.input[0])
    return src is not None and src.op_type == "DequantizeLinear"


def _conv_flops(node, w: list[int], out: list[int], align: int) -> float:
    group = next((a.i for a in node.attribute if a.name == "group"), 1)
    cout, cin_g, *k = w
    cout_a = _round_up(cout, align)
    cin_a = _round_up(cin_g, align) if group == 1 else cin_g   # depthwise/grouped: 1 input per group
    return 2.0 * out[0] * math.prod(out[2:]) * cout_a * cin_a * math.prod(k)


def _gemm_flops(node, w: list[int], out: list[int], align: int) -> float:
    trans_b = next((a.i for a in node.attribute if a.name == "transB"), 0)
    k_dim, n_dim = (w[1], w[0]) if (node.op_type == "Gemm" and trans_b) else (w[0], w[1])
    return 2.0 * math.prod(out[:-1]) * _round_up(k_dim, align) * _round_up(n_dim, align)


def _numel(shape: list[int] | None) -> int:
    return math.prod(shape) if shape else 0


def layer_costs(onnx_path: Path | str, profile: Profile, *, precision: str) -> list[LayerCost]:
    onnx = need("onnx", "onnx")
    model = onnx.load(str(onnx_path))
    shapes, inits = _shapes(model, profile.batch)
    producers = {o: n for n in model.graph.node for o in n.output}
    dev = profile.device
    costs = []
    for node in model.graph.node:
        if node.op_type in ("Conv", "Gemm", "MatMul") and len(node.input) > 1:
            prec = "int8" if _is_int8(node, producers) else precision
            w, out = _weight_shape(node, producers, shapes), shapes[node.output[0]]
            flops = (_conv_flops if node.op_type == "Conv" else _gemm_flops)(node, w, out, dev.alignment)
            act = ELEMENT_BYTES[prec] if profile.runtime == "tensorrt" or prec == "int8" else 4
            nbytes = act * (_numel(shapes.get(node.input[0])) + _numel(out)) + ELEMENT_BYTES[prec] * _numel(w)
            costs.append(_cost(node, flops, nbytes, prec, profile))
        elif node.op_type in POOL_OPS:
            nbytes = 4 * (_numel(shapes.get(node.input[0])) + _numel(shapes.get(node.output[0])))
            costs.append(_cost(node, 0.0, nbytes, precision, profile))
        elif node.op_type in FUSED_READS:
            extra = [i for i in node.input[1:] if i not in inits]
            nbytes = sum(4 * _numel(shapes.get(i)) for i in extra)
            costs.append(LayerCost(node.name, node.op_type, 0.0, nbytes,
                                   nbytes / (dev.memory_bandwidth_gbs * 1e9) * 1e3))
    return costs


def _cost(node, flops: float, nbytes: float, prec: str, profile: Profile) -> LayerCost:
    dev = profile.device
    peak = dev.peak_tops.get(prec) or dev.peak_tops[profile.precisions[0]]
    seconds = max(flops / (peak * 1e12), nbytes / (dev.memory_bandwidth_gbs * 1e9)) + dev.layer_overhead_us * 1e-6
    return LayerCost(node.name, node.op_type, flops, nbytes, seconds * 1e3)


def estimate_latency(onnx_path: Path | str, profile: Profile, *, precision: str) -> Latency:
    ms = sum(c.ms for c in layer_costs(onnx_path, profile, precision=precision))
    return Latency(median_ms=ms, p90_ms=ms, iterations=0, method="estimated",
                   runtime=profile.runtime, device=f"{profile.device.name} (estimated)")


@PROBES.register("estimate")
def estimate_probe(profile: Profile) -> Probe:
    def probe(build: BuildResult) -> Latency:
        return estimate_latency(build.onnx, profile, precision=build.precision)
    return probe
