"""The machinery of benchmarks/suite.py that writes, renders and checks the evidence. Checking the
stored results themselves against benchmarks/reference.json runs no code of the product, so it is
not a test here: `python benchmarks/suite.py --conformance` (issue 27)."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "benchmarks"))

import suite  # noqa: E402

from edgecompress.errors import UserError  # noqa: E402

REFERENCE = suite.load_reference()


# ---------------------------------------------------------------------------------------------- conformance

def test_reference_is_well_formed():
    runnable = {n for n in suite.BENCHMARKS if not suite.BENCHMARKS.get(n).manual}
    columns = set()
    for entry in REFERENCE["entries"]:
        assert {"model", "target", "result_file", "status", "expect"} <= entry.keys(), entry
        assert entry["status"] in ("goal", "measured"), entry
        assert entry["result_file"].removesuffix(".json") in runnable, f"{entry['result_file']}: no benchmark writes it"
        assert entry["expect"] and (entry.get("row") or entry.get("summary")), entry
        columns |= {c for c, _, _ in suite.expectations(entry["expect"])}
    assert set(REFERENCE["tolerances"]) <= columns, "a tolerance for a column no entry checks"
    ids = [suite.entry_id(e) for e in REFERENCE["entries"]]
    assert len(ids) == len(set(ids))


def _result(tmp_path: Path, name: str, rows: list[dict], **extra) -> Path:
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps({"rows": rows, "commit": "abc123", "started": "2026-12-01 10:00 UTC", **extra}))
    return path


def _entry(status: str, **expect) -> dict:
    return {"model": "m", "target": "x86-cpu", "result_file": "vs_int8.json", "row": {"model": "m"},
            "status": status, "expect": expect}


REF = {"tolerances": {"vs_yardstick": {"rel": 0.02}}}


def test_check_entry_outcomes(tmp_path):
    assert suite.check_entry(_entry("goal", vs_yardstick_min=1.5), REF, tmp_path).outcome == "skip"   # no file
    _result(tmp_path, "vs_int8", [{"model": "m", "drop_points": 0.4, "vs_yardstick": {"ratio": 1.2, "low": 1.1,
                                                                                      "high": 1.3}}])
    assert suite.check_entry(_entry("goal", vs_yardstick_min=1.1, drop_points_max=1.0), REF, tmp_path).outcome == "pass"
    missed = suite.check_entry(_entry("goal", vs_yardstick_min=1.5), REF, tmp_path)
    assert missed.outcome == "xfail" and "1.20x [1.10, 1.30]" in missed.message and "abc123" in missed.message
    regressed = suite.check_entry(_entry("measured", drop_points_max=0.2), REF, tmp_path)
    assert regressed.outcome == "fail" and "drop_points = 0.4" in regressed.message
    # the 2 % tolerance lets a measured 1.2 pass a 1.22 floor, never a goal
    assert suite.check_entry(_entry("measured", vs_yardstick_min=1.22), REF, tmp_path).outcome == "pass"
    assert suite.check_entry(_entry("goal", vs_yardstick_min=1.22), REF, tmp_path).outcome == "xfail"
    renamed = suite.check_entry(_entry("measured", speedup_min=1.0), REF, tmp_path)
    assert renamed.outcome == "fail" and "no column speedup" in renamed.message
    other = {**_entry("measured", drop_points_max=1.0), "row": {"model": "resnet56"}}
    assert suite.check_entry(other, REF, tmp_path).outcome == "skip"


def test_summary_entries_name_their_run(tmp_path):
    _result(tmp_path, "data_scale", [], summary={"images_large": 160, "tree_growth_mb": 50.0})
    entry = {"model": "cnn", "target": "x86-cpu", "result_file": "data_scale.json", "summary": True,
             "row": {"images_large": 2000}, "status": "goal", "expect": {"tree_growth_mb_max": 300}}
    assert suite.check_entry(entry, REF, tmp_path).outcome == "skip"
    entry["row"] = {"images_large": 160}
    assert suite.check_entry(entry, REF, tmp_path).outcome == "pass"


# ---------------------------------------------------------------------------------------------- rendering

def test_interval_cells_read_like_the_timing_protocol():
    from edgecompress.targets.timing import Ratio
    r = Ratio(median=1.2718, low=1.2401, high=1.3049)
    assert suite.fmt(r.to_dict()) == f"{r}" == "1.27x [1.24, 1.30]"
    assert suite.fmt(None) == "-" and suite.fmt(True) == "yes" and suite.fmt(95.02) == "95.02"
    assert suite.fmt(202456) == "202,456" and suite.fmt(2000) == "2000" and suite.fmt(0.123456) == "0.1235"


def test_generic_table_keeps_column_order_and_flattens():
    table = suite.md_table([{"model": "a", "drop_points": 0.5}, {"model": "b", "ms": {"fp32": 1.0}, "drop_points": 1}])
    lines = table.splitlines()
    assert lines[0] == "| model | drop points | ms: fp32 |"
    assert lines[2] == "| a | 0.5 | - |" and lines[3] == "| b | 1 | 1.0 |"


def test_regions_are_replaced_and_nothing_else(tmp_path):
    docs = tmp_path / "benchmarks.md"
    outside = "# Benchmarks\n\nprose kept | as is\n\n"
    docs.write_text(outside + "<!-- results:data_scale -->\nold table\n<!-- /results:data_scale -->\n\nmore prose\n"
                    "<!-- results:depth_scoring.removal -->\n| 94.3 | old figure |\n<!-- /results:depth_scoring.removal -->\n")
    _result(tmp_path, "data_scale", [{"training images": 500, "tree RSS (MB)": 1400.5}], notes=["Goal met."],
            machine={"cpu": "CPU X", "cores": 2}, command="benchmarks/data_scale.py --json x", seconds=60)
    report = suite.update_docs(docs, tmp_path)
    text = docs.read_text()
    assert report["updated"] == ["data_scale"] and report["no result yet"] == ["depth_scoring.removal"]
    assert text.startswith(outside) and "more prose\n" in text
    # a region without its result file holds no figure: it says which command writes the file
    assert "old figure" not in text and "suite.py --only depth_scoring`." in text
    assert "old table" not in text and "| 500 | 1400.5 |" in text and "Goal met." in text
    assert "data_scale.json" in text and "abc123" in text and "CPU X (2 logical CPUs)" in text
    suite.update_docs(docs, tmp_path)
    assert docs.read_text() == text                      # idempotent


def test_unknown_region_names_the_valid_ones(tmp_path):
    docs = tmp_path / "benchmarks.md"
    docs.write_text("<!-- results:data_scal -->\nx\n<!-- /results:data_scal -->\n")
    with pytest.raises(UserError, match="data_scale"):
        suite.update_docs(docs, tmp_path)


def test_one_command_per_benchmark_writes_its_json():
    for name in suite.BENCHMARKS:
        bench = suite.BENCHMARKS.get(name)
        if bench.manual:
            continue
        assert (REPO / bench.command[0]).is_file(), bench.command
        assert "{out}" in bench.command, f"{name}: the suite could not collect its result"
        assert "--quick" not in bench.command, f"{name}: a reduced variant is not what the docs show"
        assert bench.cost, f"{name}: say what makes it quick or long"
    # the end-to-end `compress` benchmarks take hours: the full suite only
    assert not any(suite.BENCHMARKS.get(n).quick for n in ("default_run", "vs_int8", "data_scale"))


def _fake_runs(tmp_path, monkeypatch) -> list[str]:
    ran = []
    monkeypatch.setattr(suite, "RESULTS", tmp_path)
    monkeypatch.setattr(suite, "python_exe", lambda: "python")
    monkeypatch.setattr(suite, "machine", lambda python: {"cpu": "CPU X", "cores": 2})
    monkeypatch.setattr(suite, "commit", lambda: "abc123")
    monkeypatch.setattr(suite, "run_one", lambda name, bench, **kw: ran.append(name) or {
        "benchmark": name, "status": "ok", "seconds": 60, "commit": "abc123", "started": "2026-12-01 10:00 UTC"})
    return ran


def test_quick_runs_the_quick_commands_and_skips_the_rest(tmp_path, monkeypatch, capsys):
    ran = _fake_runs(tmp_path, monkeypatch)
    names = suite._chosen(None)
    suite._run_all(names, quick=True, whole="quick", argv=["--quick"], extra=[])
    assert ran == [n for n in names if suite.BENCHMARKS.get(n).quick] and ran
    assert "== vs_int8: skipped under --quick" in capsys.readouterr().out
    saved = json.loads((tmp_path / "suite.json").read_text())
    assert {r["benchmark"] for r in saved["rows"]} == set(ran)
    assert saved["last_quick"]["command"] == "python benchmarks/suite.py --quick" and saved["last_full"] is None
    assert "No run of the whole suite recorded yet." in saved["notes"]
    before = len(ran)
    suite._run_all(names, quick=False, whole="full", argv=[], extra=[])
    assert ran[before:] == names                          # the full suite runs every runnable one
    saved = json.loads((tmp_path / "suite.json").read_text())
    assert saved["last_full"]["minutes"] >= 0 and saved["last_quick"] is not None
    assert not any("No run" in n for n in saved["notes"])


def test_listing_says_whether_the_code_changed_since_the_result():
    assert "unknown" in suite.code_since({"commit": "0" * 40})
    head = suite._git("rev-parse", "HEAD")
    assert f"run from {head[:12]}" in suite.code_since({"commit": head})
    assert "dirty tree" in suite.code_since({"commit": head + "-dirty"})


def test_docs_regions_name_registered_benchmarks():
    names = suite.regions(suite.DOCS.read_text())
    assert names, "docs/benchmarks.md has no generated regions"
    for name in names:
        assert name.partition(".")[0] in suite.BENCHMARKS or name == suite.SUITE, name


def test_conformance_command_fails_only_on_a_regression(tmp_path, capsys):
    _result(tmp_path, "vs_int8", [{"model": "m", "drop_points": 0.4}])
    missed_goal = {**REF, "entries": [_entry("goal", drop_points_max=0.2)]}
    assert suite.conformance(missed_goal, tmp_path) == 0
    regressed = {**REF, "entries": [_entry("goal", drop_points_max=0.2), _entry("measured", drop_points_max=0.2)]}
    assert suite.conformance(regressed, tmp_path) == 1
    assert "FAIL  vs_int8/m/x86-cpu/measured" in capsys.readouterr().out
