"""The measured path of `compress` end to end (real OpenVINO timings on this machine): probes and
the shipped engine are timed side by side with the original and reported on the baseline's scale."""
from __future__ import annotations

import json

import pytest

from _faults import REPO, tiny_argv
from edgecompress.cli import main

pytest.importorskip("openvino")


@pytest.mark.slow
def test_latencies_are_timed_side_by_side_with_the_original(tmp_path, monkeypatch, fault_weights):
    monkeypatch.chdir(REPO)
    argv = tiny_argv(tmp_path / "run", fault_weights)
    argv[argv.index("tiny-estimate")] = "tiny-measured"
    assert main(argv) == 0
    run = tmp_path / "run"
    report = json.loads((run / "report.json").read_text())
    base, result = report["baseline"], report["result"]
    assert base["latency_method"] == result["latency_method"] == "measured"
    timing = report["result_details"]["timing"]
    assert timing["blocks"] >= 6 and timing["stopped"] in ("precise", "time cap")
    speedup = result["speedup"]   # the original float engine's latency / the engine's, with its interval
    assert speedup["low"] <= speedup["ratio"] <= speedup["high"]
    assert result["latency_ms"] == pytest.approx(base["latency_ms"] / speedup["ratio"], rel=1e-3)  # baseline's scale
    gain = report["pruning_speedup"]
    assert gain["low"] <= gain["ratio"] <= gain["high"] and report["unpruned"]["tool"]
    recorded = json.loads((run / "latency_baseline.json").read_text())
    ref = recorded["reference"]   # what `compress check` times the engine against
    assert (run / ref["engine"]).is_file() and ref["ratio"]["ratio"] == pytest.approx(1 / speedup["ratio"], rel=2e-3)
    table = report["pruning"]["latency_table"]
    assert table and all(e["ratio"]["low"] <= e["ratio"]["ratio"] <= e["ratio"]["high"] for e in table)
    engines = report["yardstick"]
    assert {"fp32", "plain-fp32", "plain-int8"} <= set(engines) and report["unpruned"]["tool"] in \
        {e["tool"] for e in engines.values()}
