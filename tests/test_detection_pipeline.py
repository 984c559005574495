"""`compress` on a detector end to end (issue 28): the accuracy promise is mAP50-95 in points of
the validation split, every stage runs, and the report names the metric."""
from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch

from _faults import FIXTURES, REPO
from edgecompress.cli import main

pytest.importorskip("pycocotools")


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> Path:
    """A few hundred demo canvases (Fashion-MNIST items on 64x64 noise), YOLO layout."""
    from edgecompress.zoo.detection_demo import make_detection_demo
    return make_detection_demo(tmp_path_factory.mktemp("det-demo"), train=320, val=96, seed=0)


@pytest.fixture(scope="module")
def weights(tmp_path_factory, demo) -> Path:
    """tiny-yolo-test trained briefly on the demo (no shipped checkpoint for the test model)."""
    from edgecompress.inputs.loaders import loader
    from edgecompress.inputs.yolo import collate, yolo_datasets
    from edgecompress.tasks import DetectionTask
    from edgecompress.tasks.detection_finetune import DetectorFinetuneConfig, finetune_detector
    from edgecompress.zoo.detector import create_detector
    torch.manual_seed(0)
    _, sets = yolo_datasets(demo, imgsz=64)
    model = create_detector("tiny-yolo-test")
    batches = loader(sets["train"], batch_size=32, shuffle=True, collate=collate)
    finetune_detector(model, copy.deepcopy(model), batches, task=DetectionTask(num_classes=10),
                      config=DetectorFinetuneConfig(steps=120, lr=3e-3, kd_weight=0.0))
    path = tmp_path_factory.mktemp("det-weights") / "tiny-yolo-test.pt"
    torch.save(model.state_dict(), path)
    return path


def test_a_malformed_label_is_one_error_line(capsys, tmp_path, demo, monkeypatch):
    """The reader's error (file and line) reaches the user as `error: ...`, exit 2, before any work."""
    import shutil
    monkeypatch.chdir(REPO)
    data = tmp_path / "data"
    shutil.copytree(demo.parent, data)
    label = sorted((data / "labels" / "train").iterdir())[3]
    label.write_text("1 0.5 0.5 0.2\n")
    code = main(["--target", "x86-cpu", "--max-acc-drop", "1", "--model", "tiny-yolo", "--data",
                 f"yolo:{data / 'data.yaml'}", "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert code == 2, err
    assert f"error: {label}:1: malformed line: expected 5 values, got 4" in err and "Traceback" not in err
    assert not (tmp_path / "run" / "report.json").exists()


@pytest.mark.slow
def test_detector_compress_end_to_end_with_map_as_the_promise(capsys, tmp_path, demo, weights, monkeypatch):
    pytest.importorskip("openvino")
    monkeypatch.chdir(REPO)
    run = tmp_path / "run"
    argv = ["--target", "tiny-measured-coarse", "--profiles", str(FIXTURES / "profiles"), "--max-acc-drop", "1",
            "--model", "tiny-yolo-test", "--weights", str(weights), "--data", f"yolo:{demo}", "--out", str(run),
            "--seed", "0", "--min-search-interval", "0.25", "--finetune-samples", "256", "--probe-finetune-steps", "4",
            "--bn-batches", "2", "--batch-size", "32", "--threads", "1"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    report = json.loads((run / "report.json").read_text())
    assert report["metric"] == {"name": "mAP50-95", "unit": "", "task": "detect"}
    base, result = report["baseline"], report["result"]
    for value in (base["accuracy"], result["accuracy"], *(p["accuracy"] for p in report["probes"])):
        assert 0.0 <= value <= 100.0
    assert base["accuracy"] > 0.0   # the trained model finds something: the score is not vacuous
    assert (run / report["engine"]).is_file()
    # the engine's mAP, measured in verify on the built engine, keeps the promise
    assert report["budget"]["accuracy_floor"] == pytest.approx(base["accuracy"] - 1)
    assert result["accuracy"] >= report["budget"]["accuracy_floor"] - 1e-9
    assert report["budget"]["met"]
    summary = [line for line in out.splitlines() if line.startswith("mAP50-95 ")]
    assert summary and f"{base['accuracy']:.2f} -> {result['accuracy']:.2f} (val)" in summary[-1]
    assert "mAP50-95" in (run / "report.html").read_text()
    # scores are printed as mAP points, never as a top-1 percentage
    assert not [line for line in out.splitlines() if " val " in line and line.rstrip().endswith("%")]
    # the layer table names the layers of one form (C2f unsplit): an unpruned model keeps every width
    if report["pruning"]["unpruned"]:
        assert all(layer["after"] == layer["before"] for layer in report["layers"])
