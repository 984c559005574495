"""The independent harness's engine process (benchmarks/user_view.py `interleave`): a fresh
interpreter that imports the runtimes and nothing of the harness (no PyTorch: a user's
application that loads an engine does not hold PyTorch's thread pools and libraries, and the
product's timing workers do not either since session 23). Started as
`python _engine_worker.py`; requests and answers are pickles on stdin / stdout.

    request 1: (specs {name: (runtime, file, settings)}, x, settled) -> "ready" once every engine warmed up
    then: (name, n) -> seconds of n timed calls of that engine; None ends the process
"""
from __future__ import annotations

import os
import pickle
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from edgecompress.targets.isolated import settle  # noqa: E402


def open_spec(spec: tuple):
    """Load (runtime, file, settings) with the runtime's own API, as a user does."""
    runtime, path, settings = spec
    if runtime == "openvino":
        import openvino as ov
        core = ov.Core()
        return core.compile_model(core.read_model(str(path)), "CPU", settings)   # called as compiled(x)
    import onnxruntime as ort
    opts = ort.SessionOptions()
    for key, value in settings.items():
        if "." in key:
            opts.add_session_config_entry(key, str(value))
        else:
            setattr(opts, key, value)
    return ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])


def call(engine, x: np.ndarray):
    """One inference and its output, as a user's application takes it."""
    if not hasattr(engine, "run"):   # OpenVINO, as its documentation calls a compiled model
        return lambda: engine(x)[0]
    name = engine.get_inputs()[0].name
    return lambda: engine.run(None, {name: x})[0]


def serve(inp, out) -> None:
    """The engines of the first request, each loaded as in a user's application: on request, n
    timed calls of one, answers their seconds. `settled`: one untimed call first and, after, a wait
    until the process is quiet (a runtime's spinning threads must not run into the next block)."""
    def send(obj) -> None:
        pickle.dump(obj, out)
        out.flush()
    specs, x, settled = pickle.load(inp)
    runs = {name: call(open_spec(spec), x) for name, spec in specs.items()}
    for run in runs.values():
        for _ in range(50):
            run()
    send("ready")
    while request := pickle.load(inp):
        name, n = request
        run = runs[name]
        if settled:
            run()
        t0 = time.perf_counter()
        for _ in range(n):
            run()
        seconds = time.perf_counter() - t0
        if settled:
            settle()
        send(seconds)


if __name__ == "__main__":
    answers = os.fdopen(os.dup(1), "wb")   # the protocol's own copy of stdout; a runtime's prints go to stderr
    os.dup2(2, 1)
    serve(sys.stdin.buffer, answers)
