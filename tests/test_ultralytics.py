"""Ultralytics checkpoints (`--model best.pt`, issue 28 "Bring your YOLO"), inputs/ultralytics.py.

Most tests need the optional extra (`bash scripts/setup.sh --yolo`) and skip with that reason
without it. The checkpoint is a YOLOv8n built from Ultralytics' own YAML (no weights download) at
1/8 width, saved the way Ultralytics' trainer saves best.pt (half precision, requires_grad off,
`train_args` with the input size). The first test runs without the package.
"""
from __future__ import annotations

import copy
import json
import sys
import types
from pathlib import Path

import pytest
import torch
from torch import nn

from _faults import FIXTURES, REPO
from edgecompress.cli import main

SKIP_REASON = "ultralytics is the optional extra `yolo` (bash scripts/setup.sh --yolo)"
IMGSZ = 64


def test_an_ultralytics_checkpoint_without_the_package_is_one_error_line(capsys, tmp_path, monkeypatch):
    """Unpickling best.pt needs ultralytics' classes: without them the file is still recognised and
    the run stops with the extra to install, exit 2, before any data is built."""
    monkeypatch.setenv("EDGECOMPRESS_CACHE_DIR", str(tmp_path / "cache"))
    fake = {name: types.ModuleType(name) for name in ("ultralytics", "ultralytics.nn", "ultralytics.nn.tasks")}
    fake["ultralytics.nn.tasks"].DetectionModel = type("DetectionModel", (nn.Module,), {"__module__": "ultralytics.nn.tasks"})
    for name in [n for n in sys.modules if n == "ultralytics" or n.startswith("ultralytics.")]:
        monkeypatch.setitem(sys.modules, name, None)
    for name, module in fake.items():
        monkeypatch.setitem(sys.modules, name, module)
    path = tmp_path / "best.pt"
    torch.save({"model": fake["ultralytics.nn.tasks"].DetectionModel(), "train_args": {"imgsz": IMGSZ}}, path)
    for name in fake:   # now as on a machine without the package: `import ultralytics` fails
        monkeypatch.setitem(sys.modules, name, None)

    code = main(["--target", "x86-cpu", "--max-acc-drop", "1", "--model", str(path), "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert code == 2, err
    assert f"error: {path} is an Ultralytics checkpoint and the ultralytics package is not installed" in err
    assert "hint: install the extra: bash scripts/setup.sh --yolo" in err and "Traceback" not in err
    assert not (tmp_path / "cache").exists()   # stopped before the demo set was built


# -- with the extra ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def yolo():
    return pytest.importorskip("ultralytics", reason=SKIP_REASON)


def yolov8(num_classes: int = 10) -> nn.Module:
    """What `ultralytics.YOLO("yolov8n.yaml").model` builds, at 1/8 width instead of 1/4 (fast)."""
    from ultralytics.nn.tasks import DetectionModel, yaml_model_load
    cfg = yaml_model_load("yolov8n.yaml")
    cfg["scales"] = {"n": [0.33, 0.125, 1024]}
    torch.manual_seed(0)
    model = DetectionModel(cfg, ch=3, nc=num_classes, verbose=False)
    for m in model.modules():   # BatchNorm statistics as after training, not the identity
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    return model.eval()


def save_like_ultralytics(model: nn.Module, path: Path) -> Path:
    """As the trainer's final best.pt: the model in half precision with gradients off, its args."""
    from edgecompress.zoo.detection_demo import CLASS_NAMES
    saved = copy.deepcopy(model).half()
    saved.names = dict(enumerate(CLASS_NAMES))
    for p in saved.parameters():
        p.requires_grad_(False)
    torch.save({"model": saved, "ema": None, "optimizer": None, "train_args": {"imgsz": IMGSZ, "model": "yolov8n.yaml"},
                "date": "2026-01-01", "version": "test"}, path)
    return path


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> Path:
    from edgecompress.zoo.detection_demo import make_detection_demo
    return make_detection_demo(tmp_path_factory.mktemp("yolo-demo"), train=320, val=96, seed=0)


@pytest.fixture(scope="module")
def checkpoint(yolo, tmp_path_factory) -> Path:
    return save_like_ultralytics(yolov8(), tmp_path_factory.mktemp("yolo-ckpt") / "best.pt")


def test_the_checkpoint_loads_through_the_model_resolver_and_decodes_as_ultralytics_does(checkpoint, demo):
    from edgecompress.inputs.data import resolve_data
    from edgecompress.inputs.models import resolve_model
    from edgecompress.inputs.ultralytics import UltralyticsDetector, load_ultralytics
    from edgecompress.tasks.boxes import decode
    from edgecompress.tasks.select import select_task
    data = resolve_data(f"yolo:{demo}", imgsz=load_ultralytics(checkpoint).imgsz, workers=0)
    loaded = resolve_model(str(checkpoint), weights=None, data=data)
    model = loaded.model
    assert isinstance(model, UltralyticsDetector) and "Ultralytics, trained at 64 px" in loaded.name
    assert model.strides == (8, 16, 32) and model.num_classes == 10 and not loaded.notes
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert all(p.requires_grad for n, p in model.named_parameters() if ".dfl." not in n)
    task = select_task("detect", num_classes=10, model=model)
    assert task.strides == (8, 16, 32) and task.box == "distance"

    x = data.images(2)
    with torch.no_grad():
        raw = model(x)
        want = torch.load(checkpoint, weights_only=False)["model"].float().eval()(x)[0]  # xywh px, scores
    assert raw.shape == (2, 14, 8 * 8 + 4 * 4 + 2 * 2)
    boxes, scores = decode(raw, height=IMGSZ, width=IMGSZ, strides=model.strides, box="distance")
    xywh = torch.cat([(boxes[..., :2] + boxes[..., 2:]) / 2, boxes[..., 2:] - boxes[..., :2]], -1)
    assert torch.allclose(torch.cat([xywh, scores], -1).transpose(1, 2), want, atol=1e-3)


def test_task_and_input_size_come_from_the_checkpoint(checkpoint):
    from edgecompress.inputs.resolve import detection_imgsz, task_kind
    config = types.SimpleNamespace(task="auto", model=str(checkpoint), data=None, imgsz=None, weights=None)
    assert task_kind(config) == "detect" and detection_imgsz(config) == IMGSZ
    config.imgsz = 96
    assert detection_imgsz(config) == 96


def test_weights_beside_a_checkpoint_and_a_size_off_the_stride_are_refused(checkpoint, demo):
    from edgecompress.errors import UserError
    from edgecompress.inputs.data import resolve_data
    from edgecompress.inputs.models import resolve_model
    with pytest.raises(UserError, match="holds its own weights"):
        resolve_model(str(checkpoint), weights=str(checkpoint), data=resolve_data(f"yolo:{demo}", imgsz=IMGSZ, workers=0))
    with pytest.raises(UserError, match="input size 80 is not a multiple of .* largest stride 32"):
        resolve_model(str(checkpoint), weights=None, data=resolve_data(f"yolo:{demo}", imgsz=80, workers=0))


def test_attention_blocks_and_other_tasks_are_refused_in_one_line(yolo, tmp_path):
    from ultralytics.nn.tasks import DetectionModel, SegmentationModel
    from edgecompress.errors import UserError
    from edgecompress.inputs.ultralytics import load_ultralytics
    yolo11 = save_like_ultralytics(DetectionModel("yolo11n.yaml", nc=10, verbose=False), tmp_path / "yolo11.pt")
    with pytest.raises(UserError, match="C2PSA blocks .* not supported yet"):
        load_ultralytics(yolo11)
    seg = tmp_path / "seg.pt"
    torch.save({"model": SegmentationModel("yolov8n-seg.yaml", nc=2, verbose=False)}, seg)
    with pytest.raises(UserError, match="holds a SegmentationModel, not an Ultralytics DetectionModel"):
        load_ultralytics(seg)


@pytest.fixture
def detector(checkpoint) -> nn.Module:
    from edgecompress.inputs.ultralytics import load_ultralytics
    return load_ultralytics(checkpoint).model


def test_c2f_unsplit_and_every_group_prunes_with_the_head_outputs_whole(detector):
    from edgecompress.pruning.detection import prunable_form
    from edgecompress.pruning.groups import find_groups, prune_copy
    x = torch.rand(1, 3, IMGSZ, IMGSZ)
    work, ignored, unsplit = prunable_form(detector)
    assert unsplit == ["layers.2", "layers.4", "layers.6", "layers.8", "layers.12", "layers.15", "layers.18", "layers.21"]
    with torch.no_grad():
        assert torch.allclose(work(x), detector(x), atol=1e-5)
    groups = find_groups(work, x, ignored=ignored)
    assert len(groups) > 40
    members = {m for g in groups for m in g.members}
    assert not members & {n for n, m in work.named_modules() if m in ignored}
    half = prune_copy(work, x, {g.key: list(range(0, g.width, 2)) for g in groups})
    params = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    with torch.no_grad():
        assert half(x).shape == detector(x).shape
    assert params(half) < 0.4 * params(detector)
    assert [m.out_channels for m in ignored] == [64, 64, 64, 10, 10, 10, 1]   # 4 x 16 DFL bins, classes, DFL


def test_bottlenecks_are_removable_depth_and_fold_exactly(detector):
    from edgecompress.pruning.depth import remove_blocks, removable_blocks
    from edgecompress.pruning.detection import fold_removed_bottlenecks, prunable_form
    x = torch.rand(2, 3, IMGSZ, IMGSZ)
    work, _, _ = prunable_form(detector)
    blocks = removable_blocks(work)
    assert blocks == ["layers.2.m.0", "layers.4.m.0", "layers.4.m.1", "layers.6.m.0", "layers.6.m.1", "layers.8.m.0"]
    shallow = remove_blocks(work, blocks)
    with torch.no_grad():
        want = shallow(x)
        assert len(fold_removed_bottlenecks(shallow)) == len(blocks)
        assert torch.allclose(shallow(x), want, atol=1e-5)


def test_onnx_export_runs_and_matches_pytorch(detector, tmp_path):
    pytest.importorskip("onnxruntime")
    from edgecompress.exporters.onnx import ONNX_TOLERANCE, onnx_parity, to_onnx
    path = to_onnx(detector, tmp_path / "yolov8.onnx", input_shape=(3, IMGSZ, IMGSZ), batch=None)
    assert onnx_parity(detector, path, torch.rand(3, 3, IMGSZ, IMGSZ)) < ONNX_TOLERANCE


def test_a_pruned_detector_is_loaded_back_by_the_weights_only_unpickler(detector, tmp_path):
    """A run directory's models are loaded with weights_only=True (pipeline/rundir.py): the wrapper
    holds layers and plain data only, and the pruning rewrite keeps that."""
    import importlib
    from edgecompress.pruning.detection import prunable_form
    work, _, _ = prunable_form(detector)
    path = tmp_path / "m.pt"
    torch.save(work, path)
    named = [n.rpartition(".") for n in torch.serialization.get_unsafe_globals_in_checkpoint(path)]
    classes = [getattr(importlib.import_module(module), name) for module, _, name in named]
    assert all(issubclass(c, nn.Module) for c in classes), classes   # what the run directory's loader allows
    with torch.serialization.safe_globals(classes):
        back = torch.load(path, weights_only=True)
    x = torch.rand(1, 3, IMGSZ, IMGSZ)
    with torch.no_grad():
        assert torch.equal(back.eval()(x), work.eval()(x))


@pytest.mark.slow
def test_compress_an_ultralytics_checkpoint_end_to_end(yolo, tmp_path, demo, capsys, monkeypatch):
    """A YOLOv8 briefly trained on the demo (our loss), saved as best.pt, through every stage."""
    pytest.importorskip("openvino")
    from edgecompress.inputs.loaders import loader
    from edgecompress.inputs.ultralytics import UltralyticsDetector
    from edgecompress.inputs.yolo import collate, yolo_datasets
    from edgecompress.tasks import DetectionTask
    from edgecompress.tasks.detection_finetune import DetectorFinetuneConfig, finetune_detector
    source = yolov8()
    model = UltralyticsDetector(source)     # trains the same layers
    _, sets = yolo_datasets(demo, imgsz=IMGSZ)
    batches = loader(sets["train"], batch_size=32, shuffle=True, collate=collate)
    finetune_detector(model, copy.deepcopy(model), batches, task=DetectionTask(num_classes=10, strides=model.strides,
                      box="distance"), config=DetectorFinetuneConfig(steps=120, lr=3e-3, kd_weight=0.0))
    best = save_like_ultralytics(source.eval(), tmp_path / "best.pt")

    monkeypatch.chdir(REPO)
    run = tmp_path / "run"
    argv = ["--target", "tiny-measured", "--profiles", str(FIXTURES / "profiles"), "--max-acc-drop", "1",
            "--model", str(best), "--data", f"yolo:{demo}", "--out", str(run), "--seed", "0",
            "--min-search-interval", "0.25", "--finetune-samples", "256", "--probe-finetune-steps", "4",
            "--bn-batches", "2", "--batch-size", "32", "--threads", "1"]
    assert main(argv) == 0
    report = json.loads((run / "report.json").read_text())
    assert report["metric"] == {"name": "mAP50-95", "unit": "", "task": "detect"}
    base, result = report["baseline"], report["result"]
    assert base["accuracy"] > 0.0
    assert result["accuracy"] >= report["budget"]["accuracy_floor"] - 1e-9
    assert (run / report["engine"]).is_file()
    assert "mAP50-95" in capsys.readouterr().out
