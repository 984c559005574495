"""How a user calls a compiled OpenVINO model moves its speed (issue 26).

OpenVINO's documentation calls a compiled model as `compiled(x)`, which shares the input array with
the request (`share_inputs=True`, its default there); `compiled.create_infer_request().infer({0: x})`
copies it (`share_inputs=False`, that method's default). Until session 22 the tool's loader and
`benchmarks/user_view.py` used the second, so every OpenVINO engine (the user's plain NNCF INT8
yardstick too) was timed slower than a user's application following the documentation runs it.
Here the run's shipped engine against the user's NNCF INT8 (made as user_view makes it) called
both ways, the three engines each in a fresh process of its own, interleaved (user_view.interleave),
`--layouts` fresh comparisons:

    .venv/bin/python benchmarks/openvino_call.py RUN --json benchmarks/results/openvino_call.json
"""
from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import user_view  # noqa: E402
from _common import write_ways  # noqa: E402

_open_spec = user_view.open_spec


class CopiedInput:
    """A compiled model called through its own request with the input copied (`infer`'s default)."""

    def __init__(self, compiled) -> None:
        self.request = compiled.create_infer_request()

    def __call__(self, x: np.ndarray):
        return self.request.infer({0: x})


def open_spec(spec: tuple):
    if spec[0] == "openvino copied input":
        return CopiedInput(_open_spec(("openvino", *spec[1:])))
    return _open_spec(spec)


user_view.open_spec = open_spec   # also in the spawned workers: they import this module as __mp_main__


def main() -> None:
    args = user_view.run_benchmark_args(__doc__, layouts=4, max_time_s=10.0)
    model, images, x = user_view.run_original(args.run)
    ways = {"compiled(x) (shares the input)": "openvino", "request.infer(x) (copies it)": "openvino copied input"}
    with tempfile.TemporaryDirectory() as tmp:
        nncf = user_view.user_engines(model, images, Path(tmp))["openvino nncf int8"]
        found = user_view.over_shipped(args.run, {way: (runtime, *nncf[1:]) for way, runtime in ways.items()}, x,
                                       layouts=args.layouts, max_time_s=args.max_time_s)
    write_ways(found, args.json, key="call", label="nncf over shipped")


if __name__ == "__main__":
    main()
