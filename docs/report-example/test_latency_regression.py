"""Latency regression test for the engine in this run directory (written by edgecompress 0.1.0).

    pytest path/to/this/run          # or: compress check path/to/this/run  (a table, exit 1 on regression)

Target x86-cpu, precision int8, runtime openvino 2026.4.1, threads runtime default.
Baseline: median 0.2689 ms (measured) on AMD EPYC (local).
Where the engine runs here, the latency test times it side by side with the reference engine stored
in reference/ (the original at its float precision) in the timing protocol, and fails when its
latency ratio exceeds the run's ratio x (1 + 0.15) (tolerance 15 %, the profile's
benchmark.tolerance): a ratio holds on a loaded machine as on a quiet one. On a remote device it
measures like the run did (up to 3 attempts, best median); on a device other than the baseline's
(or when the run's latency was estimated) the first run records its measurement as this device's
baseline (latency_baseline.device.json) and says so.

Environment overrides: EDGECOMPRESS_TOLERANCE=0.1 (fraction), EDGECOMPRESS_THREADS=N.
"""
import os
from pathlib import Path

import pytest

from edgecompress.errors import MissingBackendError
from edgecompress.report.check import NotRunnableHere, open_run

RUN_DIR = Path(__file__).resolve().parent


def _env(name, kind):
    value = os.environ.get(name)
    return kind(value) if value else None


@pytest.fixture(scope="module")
def run():
    try:
        return open_run(RUN_DIR, threads=_env("EDGECOMPRESS_THREADS", int))
    except (MissingBackendError, NotRunnableHere) as exc:
        pytest.skip(f"cannot run this engine here: {exc}")


def test_stored_outputs_match(run):
    diff, tol = run.compare_outputs()
    assert diff <= tol, (f"engine outputs changed: max abs diff {diff:.3g} on the stored inputs "
                         f"> {tol:.3g} allowed for {run.baseline['precision']}")


def test_latency_not_regressed(run):
    result = run.check_latency(tolerance=_env("EDGECOMPRESS_TOLERANCE", float))
    if result.unmeasurable:
        pytest.skip(result.message())
    print(result.message())
    assert result.latency_ok, result.message()
