"""Engines timed each alone in a process of its own, as a user's application runs one.

Two runtimes' thread pools in one process disturb each other (a spinning ONNX Runtime pool, pinned
OpenVINO threads), and which plain engine is fastest changed with the company it was timed in: for
MobileNetV2 a run timed plain ONNX Runtime FP32 faster than plain OpenVINO FP32 in its process, a
fresh process holding five engines the reverse (docs/benchmarks.md, "The speed a user gets"). So
the figures a user is promised are timed with one process per engine: the protocol (timing.compare)
still interleaves blocks and pairs ratios; each block's calls run inside the engine's own process,
one process at a time, timed there (the pipe is outside the clock).

    with isolated_calls({"a": (path, "openvino", settings, 1), ...}) as calls:
        timing = compare(calls, reference="a")
"""
from __future__ import annotations

import multiprocessing as mp
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from edgecompress.errors import UserError

READY = "ready"


class IsolatedEngine:
    """A zero-argument call (one inference) whose engine lives in its own process; `timed(n)` runs
    n inferences back to back there and returns their seconds."""

    def __init__(self, path: Path | str, runtime: str, settings: dict | None, batch: int | None) -> None:
        self._conn, child = mp.get_context("spawn").Pipe()
        self._proc = mp.get_context("spawn").Process(target=_serve, args=(str(path), runtime, settings, batch, child),
                                                     daemon=True)
        self._proc.start()

    def ready(self) -> None:
        reply = self._conn.recv() if self._conn.poll(120) else "error: the engine's process did not start in 120 s"
        if reply != READY:
            raise UserError(f"could not open the engine in its own process: {reply}", "see the error above")

    def __call__(self) -> float:
        return self.timed(1)

    def timed(self, runs: int) -> float:
        self._conn.send(runs)
        return self._conn.recv()

    def close(self) -> None:
        if self._proc.is_alive():
            self._conn.send(0)
            self._proc.join(10)
        if self._proc.is_alive():
            self._proc.kill()


@contextmanager
def isolated_calls(specs: dict[str, tuple]) -> Iterator[dict[str, IsolatedEngine]]:
    """name -> (path, runtime, settings, batch): each opened by the one loader in a process of its own."""
    engines = {name: IsolatedEngine(*spec) for name, spec in specs.items()}   # they start side by side
    try:
        for engine in engines.values():
            engine.ready()
        yield engines
    finally:
        for engine in engines.values():
            engine.close()


def _serve(path: str, runtime: str, settings: dict | None, batch: int | None, conn) -> None:
    try:
        from edgecompress.targets.deploy import open_engine
        call = open_engine(path, runtime, settings, batch=batch).caller()
    except Exception as exc:  # noqa: BLE001 - reported to the parent as one line
        conn.send(f"error: {type(exc).__name__}: {exc}")
        return
    conn.send(READY)
    while runs := conn.recv():
        start = time.perf_counter()
        for _ in range(runs):
            call()
        conn.send(time.perf_counter() - start)
