"""Targets: a profile joined with its runtime (build, runner) and a latency probe.

    target = get_target(load_profile("x86-cpu"))             # latency from the profile ("local")
    target = get_target("jetson-orin", device="ssh://me@orin")  # measure on the board
    build = target.build("model.onnx", run_dir, precision="fp32")
    latency = target.measure(build)      # Latency(median_ms, p90_ms, iterations, method, ...)
    predict = target.runner(build)       # np.ndarray -> logits, for accuracy on the artifact
    timing = time_builds(target, {"fp32": build, "int8": build8}, reference="fp32")   # interleaved ratios
"""
from __future__ import annotations

from edgecompress.registry import lazy_exports

__all__ = ["get_target", "Target", "BuildResult", "Latency", "PROBES", "RUNTIMES", "SSHProbe",
           "estimate_latency", "layer_costs", "LayerCost", "Ratio", "Timing", "compare", "decided", "time_builds"]

__getattr__ = lazy_exports(__name__, __all__)   # the names load from catalog.py on first use
