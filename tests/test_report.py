"""report.html: every section present, self-contained, renders in headless Chromium."""
from __future__ import annotations

import base64
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from edgecompress.errors import UserError
from edgecompress.report.html import REPORT_HTML, write_report_html

ROOT = Path(__file__).resolve().parents[1]
RESNET20_WIDTHS = ([("conv1", 16)] + [(f"layer1.{b}.conv{c}", 16) for b in range(3) for c in (1, 2)]
                   + [(f"layer2.{b}.conv{c}", 32) for b in range(3) for c in (1, 2)]
                   + [(f"layer3.{b}.conv{c}", 64) for b in range(3) for c in (1, 2)])


def synthetic_report(*, latency_method: str = "measured") -> dict:
    """A report.json shaped like DESIGN.md's contract plus the pipeline's extra keys."""
    probes = [  # a binary search on cr: accepted ones move the upper bound down
        {"cr": 0.5, "accuracy": 85.1, "latency_ms": 0.41, "flops": 9.1e6, "params": 60_000, "accepted": False},
        {"cr": 0.75, "accuracy": 90.2, "latency_ms": 0.55, "flops": 19e6, "params": 120_000, "accepted": False},
        {"cr": 0.875, "accuracy": 91.9, "latency_ms": 0.66, "flops": 26e6, "params": 170_000, "accepted": True},
        {"cr": 0.8125, "accuracy": 91.2, "latency_ms": 0.61, "flops": 23e6, "params": 150_000, "accepted": True},
        {"cr": 0.78125, "accuracy": 90.6, "latency_ms": 0.58, "flops": 21e6, "params": 135_000, "accepted": False},
    ]
    return {
        "schema": 1, "target": "x86-cpu", "precision": "int8", "max_acc_drop": 1.0,
        "latency_budget_ms": 0.7,
        "baseline": {"accuracy": 92.1, "test_accuracy": 91.7, "latency_ms": 0.93,
                     "latency_method": latency_method, "flops": 41e6, "params": 272_474},
        "result": {"accuracy": 91.4, "test_accuracy": 91.0, "latency_ms": 0.31,
                   "latency_method": latency_method, "flops": 23e6, "params": 150_000, "cr": 0.8125},
        "probes": probes,
        "artifacts": {"model_pruned": "model_pruned.pt", "onnx": "model.onnx", "engine": "model.xml",
                      "weights": "model.bin", "lost": "gone.bin"},
        "timings_s": {"prune": 120.5, "finetune": 300.0, "export": 2.1, "calibrate": 15.3,
                      "build": 4.2, "verify": 9.9, "total": 452.0},
        "layers": [{"name": n, "before": w, "after": max(8, (w * (7 + i % 5)) // 12 // 8 * 8)}
                   for i, (n, w) in enumerate(RESNET20_WIDTHS)],
        "precisions": [
            {"precision": "fp32", "accuracy": 91.9, "latency_ms": 0.61, "float_layers": [],
             "backend": "openvino", "chosen": False},
            {"precision": "int8", "accuracy": 91.4, "latency_ms": 0.31,
             "float_layers": ["conv1", "fc"], "backend": "nncf", "chosen": True},
        ],
        "command": "compress --target x86-cpu --max-acc-drop 1 --latency-budget-ms 0.7 --run runs/demo",
    }


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    (tmp_path / "report.json").write_text(json.dumps(synthetic_report()))
    for name, size in (("model_pruned.pt", 600_000), ("model.onnx", 590_000), ("model.xml", 40_000),
                       ("model.bin", 160_000)):
        (tmp_path / name).write_bytes(b"\0" * size)
    return tmp_path


def test_report_has_every_section(run_dir: Path) -> None:
    page = write_report_html(run_dir).read_text()
    for section in ("summary", "probes", "channels", "precisions", "timings", "artifacts", "command"):
        assert f"<section id={section}>" in page
    assert "cr vs validation accuracy" not in page  # plot titles live inside the PNG, not the HTML
    assert "compress --target x86-cpu --max-acc-drop 1" in page
    assert "585.9 KiB" in page and "missing" in page  # model.onnx size, and the artifact that is gone
    assert "conv1, fc" in page  # float layers of the INT8 row
    assert "3.00&times; faster" in page


def test_report_is_self_contained(run_dir: Path) -> None:
    page = write_report_html(run_dir).read_text()
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:|//)""", page)
    assert "<link" not in page and "<script" not in page
    images = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    assert len(images) == 3  # probes, channels, timings
    for data in images:
        png = base64.b64decode(data)
        assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5_000


def test_estimated_latency_is_said_plainly(tmp_path: Path) -> None:
    (tmp_path / "report.json").write_text(json.dumps(synthetic_report(latency_method="estimated")))
    page = write_report_html(tmp_path).read_text()
    assert "<b>estimated</b>" in page


def test_sparse_report_still_renders(tmp_path: Path) -> None:
    # An early-stopped run: no probes, no layers, no precisions, no command.
    (tmp_path / "report.json").write_text(json.dumps({"schema": 1, "target": "x86-cpu", "precision": "fp32"}))
    page = write_report_html(tmp_path).read_text()
    assert "No search probes were recorded" in page and "did not record its command" in page


def test_not_a_run_directory(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="no report.json"):
        write_report_html(tmp_path)


def test_text_is_escaped(run_dir: Path) -> None:
    report = synthetic_report()
    report["command"] = "compress --model '<script>alert(1)</script>'"
    (run_dir / "report.json").write_text(json.dumps(report))
    page = write_report_html(run_dir).read_text()
    assert "<script>" not in page and "&lt;script&gt;" in page


@pytest.mark.slow
def test_report_renders_in_headless_chromium(run_dir: Path, tmp_path: Path) -> None:
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        from screenshot_report import find_chromium
    finally:
        sys.path.pop(0)
    if find_chromium() is None:
        pytest.skip("chromium is not installed (Debian: apt-get install chromium)")
    html = write_report_html(run_dir)
    png = tmp_path / "shot.png"
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "screenshot_report.py"), str(html),
                           str(png), "--height", "3000"], capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr
    from matplotlib.image import imread
    pixels = imread(png)
    assert pixels.shape[:2] == (3000, 1400)
    # Non-trivial: a blank or error page is almost one colour; plots and tables are not.
    assert pixels[..., :3].std() > 0.05
    assert len({tuple(p) for p in pixels[::37, ::37, :3].reshape(-1, 3).round(2).tolist()}) > 20


def test_report_file_name(run_dir: Path) -> None:
    assert write_report_html(run_dir) == run_dir / REPORT_HTML
    assert not list(run_dir.glob("*.tmp"))


def test_staging_folder_reads_sizes_from_the_run(run_dir: Path, tmp_path: Path) -> None:
    staging = tmp_path / "staging"
    staging.mkdir()
    (run_dir / "report.json").rename(staging / "report.json")
    page = write_report_html(staging, run_dir=run_dir).read_text()
    assert (staging / REPORT_HTML).is_file() and "585.9 KiB" in page


def test_pipeline_staging_folder_is_recognised(run_dir: Path) -> None:
    staging = run_dir / ".staging" / "verify"
    staging.mkdir(parents=True)
    report = synthetic_report()
    report["budget"] = {"met": False, "missed": {"latency_ms": 0.25}, "accuracy_floor": 91.0}
    report["notes"] = ["tensorrt cannot run on this machine: latency is ESTIMATED"]
    report["search"] = {"moved_from": 0.78125}
    (staging / "report.json").write_text(json.dumps(report))
    page = write_report_html(staging).read_text()
    assert "585.9 KiB" in page  # model.onnx found in the run directory, not the staging folder
    assert "Budget missed" in page and "latency is ESTIMATED" in page
    assert "chose cr 0.781, then moved to cr 0.812" in page


def test_a_latency_budget_is_judged_on_the_median_and_reports_whether_the_interval_clears_it() -> None:
    from types import SimpleNamespace
    from edgecompress.report.assemble import budget_record
    results = SimpleNamespace(baseline=SimpleNamespace(accuracy=92.0, budget={"min_accuracy": None,
                                                                              "max_latency_ms": 0.30}),
                              prune=SimpleNamespace(met=True, missed={}, alternative=None))
    inside = budget_record(results, {"accuracy": 91.5, "latency_ms": 0.29, "latency_interval_ms": [0.28, 0.31]})
    assert inside["met"] and not inside["latency"]["clear"] and inside["latency"]["interval_ms"] == [0.28, 0.31]
    clear = budget_record(results, {"accuracy": 91.5, "latency_ms": 0.25, "latency_interval_ms": [0.24, 0.26]})
    assert clear["met"] and clear["latency"]["clear"]
    over = budget_record(results, {"accuracy": 91.5, "latency_ms": 0.32, "latency_interval_ms": [0.31, 0.33]})
    assert not over["met"] and over["missed"]["latency_ms"] == pytest.approx(0.02)
