"""Shared fixtures. (Fault suites: one trained tiny model and one finished reference run per session.)"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))


@pytest.fixture(autouse=True)
def _own_latency_table_cache(tmp_path_factory, monkeypatch):
    """Each test its own latency-table cache (never ~/.cache): a table one test measured must not
    decide another's search."""
    monkeypatch.setenv("EDGECOMPRESS_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))


@pytest.fixture(scope="session")
def fault_weights(tmp_path_factory) -> Path:
    """State dict of the tiny fault-suite model, trained once per session (read-only for tests)."""
    from _faults import REPO  # noqa: F401  (puts the repository on sys.path)
    from tests.fixtures.fault_specs import train_weights
    return train_weights(tmp_path_factory.mktemp("fault-weights") / "tiny.pt")


@pytest.fixture(scope="session")
def reference_run(tmp_path_factory, fault_weights) -> Path:
    """An uninterrupted tiny run (its own process), finished. Copy it before changing anything."""
    from _faults import run_cli, tiny_argv
    out = tmp_path_factory.mktemp("reference") / "run"
    proc = run_cli(tiny_argv(out, fault_weights))
    assert proc.returncode == 0, proc.stderr
    assert json.loads((out / "manifest.json").read_text())["finished"]
    return out


def pytest_sessionstart(session):
    """The timing host (targets/isolated.py) is started before any test loads a runtime, as the
    runner starts it before its stages: a process started from one that has run OpenVINO and
    DataLoader workers crashed it."""
    from edgecompress.targets.isolated import start_host
    start_host()
