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
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    base, result, pair = report["baseline"], report["result"], report["result_details"]["side_by_side"]
    assert base["latency_method"] == result["latency_method"] == "measured"
    assert len(pair["original_ms"]) == len(pair["engine_ms"]) == pair["rounds"] >= 3
    ratios = sorted(e / o for o, e in zip(pair["original_ms"], pair["engine_ms"]))
    assert pair["ratio"] == ratios[len(ratios) // 2]
    assert result["latency_ms"] == pytest.approx(base["latency_ms"] * pair["ratio"])   # on the baseline's scale
    assert not (tmp_path / "run" / "original").exists()   # the original's timing build is not left behind
    recorded = json.loads((tmp_path / "run" / "latency_baseline.json").read_text())
    assert recorded["median_ms"] in pair["engine_ms"]   # the regression test compares raw timings
    probes = json.loads((tmp_path / "run" / ".checkpoints" / "prune.json").read_text())["latency_cache"].values()
    assert probes and all(p["method"] == "measured" and p["ratio_to_original"] > 0 for p in probes)
