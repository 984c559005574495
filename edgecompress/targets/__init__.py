"""Targets: a profile joined with its runtime (build, runner) and a latency probe.

    target = get_target(load_profile("x86-cpu"))             # latency from the profile ("local")
    target = get_target("jetson-orin", device="ssh://me@orin")  # measure on the board
    build = target.build("model.onnx", run_dir, precision="fp32")
    latency = target.measure(build)      # Latency(median_ms, p90_ms, iterations, method, ...)
    predict = target.runner(build)       # np.ndarray -> logits, for accuracy on the artifact
    timing = time_builds(target, {"fp32": build, "int8": build8}, reference="fp32")   # interleaved ratios
"""
from __future__ import annotations

__all__ = ["get_target", "Target", "BuildResult", "Latency", "PROBES", "RUNTIMES", "SSHProbe",
           "estimate_latency", "layer_costs", "LayerCost", "Ratio", "Timing", "compare", "decided", "time_builds"]


def __getattr__(name: str):
    """The names of `__all__`, imported from `edgecompress.targets.catalog` on first use (PEP 562): a process that
    only runs an engine (a timing worker, a user's `edgecompress.load`) imports `targets.deploy` and `targets.isolated` without PyTorch
    (a fresh interpreter started in 2.4 s with them, 0.5 s with the runtimes alone)."""
    if name not in __all__:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from edgecompress.targets import catalog
    return getattr(catalog, name)
