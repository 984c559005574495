"""The benchmarks of issue 7 run end to end in their --quick mode (tiny model, few images), and
their helpers edit only their own sections of the Markdown file."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
BENCH = REPO / "benchmarks"
sys.path.insert(0, str(BENCH))


def _run(script: str, *args: str) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, str(BENCH / script), *args], cwd=REPO, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    return proc


def test_replace_section_keeps_other_sections(tmp_path):
    from _common import replace_section
    doc = tmp_path / "b.md"
    doc.write_text("# Benchmarks\n\n## A\n\nkeep a\n\n## Criteria comparison\n\nold text\n\n## B\n\nkeep b\n")
    replace_section(doc, "Criteria comparison", "new | table")
    replace_section(doc, "Seed claims", "appended")
    text = doc.read_text()
    assert "old text" not in text and "new | table" in text
    assert "## A\n\nkeep a\n\n## Criteria comparison" in text and "## B\n\nkeep b\n" in text
    assert text.rstrip().endswith("## Seed claims\n\nappended")


def test_criterion_specs_and_folders(tmp_path):
    from _criteria_search import config_dir
    from edgecompress.pruning.criteria import parse_spec as parse_criterion
    assert parse_criterion("permutation") == ("permutation", {})
    assert parse_criterion("permutation:at=bn,draws=8") == ("permutation", {"at": "bn", "draws": 8})
    folder = config_dir(tmp_path, "resnet20", "permutation:at=bn", "cr")
    assert folder.name == "permutation+at-bn__cr" and folder.parent.name == "resnet20"


@pytest.mark.slow
def test_compare_criteria_quick_all_phases(tmp_path):
    out, docs = tmp_path / "cc", tmp_path / "bench.md"
    docs.write_text("# Benchmarks\n\n## Other\n\nuntouched\n")
    _run("compare_criteria.py", "--quick", "--phase", "all", "--out", str(out), "--docs", str(docs),
         "--img", str(tmp_path / "img" / "cc.png"))
    res = json.loads((out / "results.json").read_text())
    keys = {(r["criterion"], r["allocation"]) for r in res["results"] if r["status"] == "done"}
    assert keys == {("permutation", "cr"), ("permutation", "uniform"), ("l1", "cr"), ("l1", "uniform")}
    for r in res["results"]:
        assert 0 < r["macs_ratio"] <= 1 and r["probes"] >= 1 and 0 <= r["test_accuracy"] <= 100
        assert (out / "tiny-resnet" / f"{r['criterion']}__{r['allocation']}" / "model.pt").is_file()
    lat = json.loads((out / "latency.json").read_text())["models"]
    assert set(lat) == {"tiny-resnet/original"} | {f"tiny-resnet/{c}__{a}" for c, a in keys}
    assert all(v["method"] == "measured" and v["median_ms"] > 0 for v in lat.values())
    text = docs.read_text()
    assert "## Other\n\nuntouched" in text and "## Criteria comparison" in text
    for c, a in keys:
        assert f"| {c} | {a} |" in text
    assert "Goal check" in text and (tmp_path / "img" / "cc.png").is_file()

    # another seed from the same original, then the seed-spread table in the first run's report
    seed1 = tmp_path / "cc-seed1"
    _run("compare_criteria.py", "--quick", "--phase", "all", "--out", str(seed1), "--seed", "1", "--base-from", str(out),
         "--criteria", "permutation", "--allocations", "cr", "--docs", str(tmp_path / "seed1.md"),
         "--img", str(tmp_path / "img" / "seed1.png"))
    assert (seed1 / "tiny-resnet" / "original.pt").read_bytes() == (out / "tiny-resnet" / "original.pt").read_bytes()
    _run("compare_criteria.py", "--quick", "--phase", "report", "--out", str(out), "--seed-runs", str(seed1),
         "--docs", str(docs), "--img", str(tmp_path / "img" / "cc.png"))
    text = docs.read_text()
    assert "Seed spread" in text and "| tiny-resnet | permutation | cr | 0, 1 |" in text
    assert "| tiny-resnet | l1 | cr | 0, 1 |" not in text   # only in one folder: no spread row


@pytest.mark.slow
def test_search_resumes_and_skips_finished(tmp_path):
    """A passed deadline starts nothing; a rerun finishes the configuration, a third skips it."""
    out = tmp_path / "cc"
    args = ("--quick", "--phase", "search", "--out", str(out), "--criteria", "random", "--allocations", "uniform")
    first = _run("compare_criteria.py", *args, "--deadline-s", "0")
    assert "incomplete" in first.stdout and not list(out.glob("*/*/result.json"))
    _run("compare_criteria.py", *args, "--pack", str(tmp_path / "cc.tar"))
    result = json.loads(next(out.glob("*/*/result.json")).read_text())
    assert result["status"] == "done" and result["probes"] == result["probes_this_run"]
    from _criteria_search import Settings, run_config
    again = run_config(str(out), "tiny-resnet", "random", "uniform", Settings())   # finished: read, not redone
    assert again == result
    import tarfile
    with tarfile.open(tmp_path / "cc.tar") as tar:
        assert any(n.endswith("random__uniform/result.json") for n in tar.getnames())
    from compare_criteria import pack
    parts = pack(out, tmp_path / "split.tar", part_bytes=50_000)
    assert len(parts) > 1 and all(p.stat().st_size <= 50_000 for p in parts)
    joined = b"".join(p.read_bytes() for p in sorted(parts))
    assert joined == (tmp_path / "cc.tar").read_bytes()


@pytest.mark.slow
def test_seed_claims_quick(tmp_path):
    docs = tmp_path / "bench.md"
    _run("seed_claims.py", "--quick", "--out", str(tmp_path / "sc.json"), "--write-docs", "--docs", str(docs))
    res = json.loads((tmp_path / "sc.json").read_text())["experiments"]
    assert {r["pair"] for r in res["replacements"]["rho"]} >= {"shuffle vs zero", "shuffle vs reinit", "zero vs reinit"}
    assert all(-1 <= r["mean"] <= 1 for e in ("replacements", "calibration", "site", "draws") for r in res[e]["rho"])
    assert {r["allocation"] for r in res["allocation"]} == {"cr", "uniform"}
    assert all(r["probes"] >= r["bisection"] for r in res["search"])
    assert {r["variant"] for r in res["draws"]["accuracy"]} >= {"expected", "shuffle-1", "shuffle-8"}
    text = docs.read_text()
    assert "## Seed claims" in text and "| shuffle vs zero |" in text and "seed Table 4-1" in text
