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
    assert speedup["ratio"] > 0 and report["pruning_speedup"]["ratio"] > 0 and report["unpruned"]["tool"]
    # What verify leaves is what `compress check` compares with, on this machine: the engine side by
    # side with the stored reference AND its absolute latency (the same device, as the probe names
    # it), never "recorded a first baseline, nothing compared" (it used to pass that way).
    from edgecompress.check import check_run
    checked = check_run(run, tolerance=50.0)
    assert checked.unmeasured is None and checked.exit_code == 0, checked.message()
    assert checked.comparison("ratio to the reference engine") is not None, checked.message()
    assert checked.comparison("engine latency") is not None, checked.message()
    assert checked.outputs_max_diff is not None and checked.outputs_ok
    assert report["pruning"]["latency_table"]
    engines = report["yardstick"]
    assert {"fp32", "plain-fp32", "plain-int8"} <= set(engines) and report["unpruned"]["tool"] in \
        {e["tool"] for e in engines.values()}
