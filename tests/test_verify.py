"""The measured path of `compress` end to end (real OpenVINO timings on this machine): the verify
stage times the original and the shipped engine side by side and reports that pair."""
from __future__ import annotations

import json

import pytest

from _faults import REPO, tiny_argv
from edgecompress.cli import main

pytest.importorskip("openvino")


@pytest.mark.slow
def test_speedup_compares_original_and_engine_timed_side_by_side(tmp_path, monkeypatch, fault_weights):
    monkeypatch.chdir(REPO)
    argv = tiny_argv(tmp_path / "run", fault_weights)
    argv[argv.index("tiny-estimate")] = "tiny-measured"
    assert main(argv) == 0
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    base, result = report["baseline"], report["result"]
    assert base["latency_method"] == result["latency_method"] == "measured"
    assert base["latency_ms"] > 0 and base["latency_ms_at_start"] > 0 and result["latency_ms"] > 0
    assert "side by side" in base["latency_timing"]
    assert report["result_details"]["original_latency_ms"] == base["latency_ms"]
    assert not (tmp_path / "run" / "original").exists()   # the original's timing build is not left behind
    recorded = json.loads((tmp_path / "run" / "latency_baseline.json").read_text())
    assert recorded["median_ms"] == result["latency_ms"]
