"""Runtime settings chosen by measurement: every combination of a few settings beyond the
runtime's defaults, timed side by side with the defaults in the one protocol; only what is
measurably faster is set, then written into deploy.json with the engine (targets/deploy.py)."""
from __future__ import annotations

from dataclasses import replace
from typing import Any, Mapping

from edgecompress.targets.timing import timed_in_layouts

# Settings worth trying beyond a runtime's defaults, one axis each; every combination is timed.
# OpenVINO CPU: the plugin defaults to bf16 inference on CPUs with AVX512-BF16/AMX and pins its
# threads; measured here both slowed INT8 engines (1.34x together, issue 26), while FP32 barely
# moved, so which wins depends on the CPU and the model. ONNX Runtime: spinning intra-op threads
# and a second thread cost more than they bring on small models on a shared 2-core machine.
SETTING_AXES: dict[str, dict[str, dict[str, Any]]] = {
    "openvino": {"f32": {"INFERENCE_PRECISION_HINT": "f32"}, "unpinned": {"ENABLE_CPU_PINNING": False},
                 "1 thread": {"INFERENCE_NUM_THREADS": 1}},
    "ort": {"no spinning": {"session.intra_op.allow_spinning": "0"}, "1 thread": {"intra_op_num_threads": 1}},
}
DEFAULTS = "defaults"


def setting_candidates(runtime: str, base: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """Every combination of the runtime's axes on top of `base` (the defaults, first, named
    DEFAULTS); an axis whose key `base` already sets (the profile's thread count) is left out."""
    axes = {name: axis for name, axis in SETTING_AXES.get(runtime, {}).items() if not set(axis) & set(base)}
    candidates = {DEFAULTS: dict(base)}
    for mask in range(1, 2 ** len(axes)):
        chosen = [name for i, name in enumerate(axes) if mask >> i & 1]
        settings = dict(base)
        for name in chosen:
            settings.update(axes[name])
        candidates[" + ".join(chosen)] = settings
    return candidates


def choose_settings(target, build, *, max_time_s: float) -> tuple[dict[str, Any], dict[str, Any]]:
    """The runtime settings `build` runs fastest with on this machine, by the timing protocol:
    every candidate side by side with the defaults, in the profile's `check_layouts` fresh process
    layouts; a candidate is taken only when its interval (the median over layouts of each end) is
    wholly below the defaults' (measurably faster): the fastest such one, or one with fewer settings
    the timing cannot tell from it (`fewest_settings`). Returns (settings, record of the choice)."""
    candidates = setting_candidates(build.runtime, target.settings(replace(build, settings=None)))
    if len(candidates) == 1:
        return candidates[DEFAULTS], {"chosen": DEFAULTS, "ratios": {}}
    # in fresh process layouts, the median over them: in one, ONNX Runtime's one thread without
    # spinning beat its defaults for our INT8 ResNet-20 and shipped, 0.81x of OpenVINO INT8 where
    # the defaults run 0.57-0.66x
    timing = timed_in_layouts(target, {n: replace(build, settings=s) for n, s in candidates.items()}, reference=DEFAULTS,
                              layouts=target.profile.benchmark.check_layouts, max_time_s=max_time_s)
    chosen = fewest_settings(candidates, [n for n in candidates if timing.ratios[n].high < 1.0], timing.ratios)
    return candidates[chosen], {"chosen": chosen, "ratios": {n: r.to_dict() for n, r in timing.ratios.items()},
                                "stopped": timing.stopped, "blocks": timing.blocks}


def fewest_settings(candidates: Mapping[str, Mapping[str, Any]], faster: list[str], ratios: Mapping[str, Any]) -> str:
    """Of the measurably faster candidates, the one with the fewest settings whose interval holds
    the fastest one's median (the protocol cannot tell them apart: a setting that buys nothing
    measurable is not shipped); DEFAULTS when none is faster. Measured: OpenVINO FP32 with one
    thread 0.797x [0.724, 0.832] of the defaults, unpinned too 0.794x: one thread is what ships."""
    if not faster:
        return DEFAULTS
    best = min(faster, key=lambda n: ratios[n].median)
    same = [n for n in faster if ratios[n].low <= ratios[best].median <= ratios[n].high]
    return min(same, key=lambda n: (len(candidates[n]), ratios[n].median))
