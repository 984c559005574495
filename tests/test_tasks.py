"""The pipeline's one task object: chosen from --task / the model / the data, and for a classifier
exactly the calls the pipeline made before tasks existed."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from edgecompress.errors import UserError
from edgecompress.inputs.resolve import resolve_inputs, task_kind
from edgecompress.pipeline.config import RunConfig
from edgecompress.tasks import ClassificationTask, DetectionTask, MetricTask, select_task
from edgecompress.targets.engines import engine_accuracy
from edgecompress.training.distill import kd_loss


def _config(**kw) -> RunConfig:
    return RunConfig(target="x86-cpu", max_acc_drop=1, **kw)


@pytest.mark.parametrize("kw, kind", [
    ({}, "classify"),
    ({"model": "resnet20"}, "classify"),
    ({"model": "tiny-yolo"}, "detect"),
    ({"model": "tiny-yolo-test", "weights": "w.pt"}, "detect"),
    ({"data": "yolo:some/data.yaml"}, "detect"),
    ({"model": "tiny-yolo", "task": "classify"}, "classify"),   # said explicitly: as asked (the model check then refuses)
    ({"task": "detect"}, "detect"),
])
def test_task_kind_from_the_request_model_and_data(kw, kind):
    assert task_kind(_config(**kw)) == kind


def test_select_task_builds_each_kind():
    from edgecompress.zoo.detector import create_detector
    det = select_task("detect", num_classes=3, model=create_detector("tiny-yolo-test", num_classes=3))
    assert isinstance(det, DetectionTask) and det.num_classes == 3 and det.strides == (8, 16)
    assert det.metric == "mAP50-95" and det.collate is not None
    cls = select_task("classify", num_classes=10)
    assert isinstance(cls, ClassificationTask) and cls.metric == "top-1" and cls.collate is None
    with pytest.raises(UserError, match="unknown task"):
        select_task("segment", num_classes=2)


def test_classification_task_is_the_old_calls():
    """Same numbers as engine_accuracy and kd_loss (the classifier path must not change)."""
    task = ClassificationTask()
    gen = torch.Generator().manual_seed(0)
    s, t = torch.randn(8, 10, generator=gen), torch.randn(8, 10, generator=gen)
    y = torch.randint(0, 10, (8,), generator=gen)
    got = task.objective(s, t, y, images=torch.zeros(8, 1, 4, 4), temperature=4.0, alpha=0.9)
    assert torch.equal(got, kd_loss(s, t, y, temperature=4.0, alpha=0.9))
    batches = [(torch.randn(8, 1, 4, 4, generator=gen), y)]

    def run(x: np.ndarray) -> np.ndarray:
        return s.numpy()
    assert task.evaluate(run, batches) == engine_accuracy(run, batches)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 10))
    assert task.evaluate_model(model, batches) == engine_accuracy(
        lambda x: model(torch.from_numpy(x)).detach().numpy(), batches)


def half(run, batches) -> float:
    """A --metric for the test: 50 points whatever the model."""
    return 50.0


def not_a_number(run, batches):
    return "fine"


def test_metric_task_scores_with_the_users_function_and_trains_with_the_base_task():
    task = select_task("classify", num_classes=10, metric=f"{__name__}:half")
    assert isinstance(task, MetricTask) and task.metric == "half" and task.collate is None
    assert task.evaluate(lambda x: x, []) == 50.0
    s, t, y = torch.randn(4, 10), torch.randn(4, 10), torch.tensor([0, 1, 2, 3])
    assert torch.equal(task.objective(s, t, y, images=s, temperature=2.0, alpha=0.5),
                       kd_loss(s, t, y, temperature=2.0, alpha=0.5))
    bad = select_task("classify", num_classes=10, metric=f"{__name__}:not_a_number")
    with pytest.raises(UserError, match="not a number"):
        bad.evaluate(lambda x: x, [])
    with pytest.raises(UserError, match="package.module:function"):
        select_task("classify", num_classes=10, metric="no colon")


def test_detection_task_objective_mixes_distillation_and_the_detection_loss():
    task = DetectionTask(num_classes=2)
    gen = torch.Generator().manual_seed(1)
    raw = torch.randn(2, 6, 80, generator=gen)   # 64x64: 8x8 + 4x4 cells
    targets = torch.tensor([[0, 1, 0.5, 0.5, 0.3, 0.3]])
    images = torch.zeros(2, 3, 64, 64)
    only_labels = task.objective(raw, raw, targets, images=images, temperature=4.0, alpha=0.0)
    assert torch.allclose(only_labels, task.loss(raw, targets, height=64, width=64))
    # student = teacher: distillation adds nothing
    assert torch.allclose(task.objective(raw, raw, targets, images=images, temperature=4.0, alpha=1.0),
                          torch.zeros(()), atol=1e-6)


def test_yolo_data_with_task_classify_is_refused():
    with pytest.raises(UserError, match="detection data"):
        resolve_inputs(_config(data="yolo:x/data.yaml", task="classify"))
    with pytest.raises(UserError, match="needs detection data"):
        resolve_inputs(_config(task="detect", data="fashion-mnist"))


def mean_recall(run, batches) -> float:
    """A user's --metric for the end-to-end test: mean per-class recall in points."""
    hits, seen = np.zeros(10), np.zeros(10)
    for x, y in batches:
        pred = np.asarray(run(np.ascontiguousarray(torch.as_tensor(x).numpy(), dtype=np.float32))).argmax(1)
        y = torch.as_tensor(y).numpy()
        np.add.at(seen, y, 1)
        np.add.at(hits, y, pred == y)
    return float(100 * np.mean(hits[seen > 0] / seen[seen > 0]))


@pytest.mark.slow
def test_compress_with_a_users_metric_judges_every_model_by_it(tmp_path, fault_weights):
    """`compress --metric module:function` end to end: the run finishes, its scores are the user's
    function's (points, not "%"), and the report, the stage lines and the summary name it."""
    import json

    from _faults import run_cli, tiny_argv
    out = tmp_path / "run"
    here = Path(__file__).parent  # the user's metric module is importable as it would be for a user
    proc = run_cli(tiny_argv(out, fault_weights, "--metric", f"{__name__}:mean_recall"),
                   PYTHONPATH=os.pathsep.join([str(here.parent), str(here)]))
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads((out / "report.json").read_text())
    assert report["metric"]["name"] == "mean_recall" and report["metric"]["unit"] == ""
    assert 0 < report["baseline"]["accuracy"] <= 100 and 0 < report["result"]["accuracy"] <= 100
    lines = proc.stdout + proc.stderr
    assert "validation mean_recall" in proc.stderr and proc.stdout.startswith("mean_recall ")  # the summary
    assert not [line for line in lines.splitlines() if " val " in line and line.rstrip().endswith("%")]


def test_fine_tuning_learning_rate_is_the_tasks_unless_given():
    """--lr unset: 0.01 for a classifier, 0.001 for a detector (the classifier's rate cost an
    unpruned YOLOv8n 2 mAP in 100 steps); a user's metric trains like its base task; --lr wins."""
    classify, detect = select_task("classify", num_classes=10), select_task("detect", num_classes=10)
    metric = select_task("detect", num_classes=10, metric="math:fsum")
    config = RunConfig(target="x86-cpu", max_acc_drop=1)
    assert [config.finetune_lr(t) for t in (classify, detect, metric)] == [0.01, 0.001, 0.001]
    assert RunConfig(target="x86-cpu", max_acc_drop=1, lr=0.05).finetune_lr(detect) == 0.05


def test_the_fine_tune_after_the_search_never_trains_less_than_a_probe():
    """An epoch of a small set (the detection demo's 2,000 images: 16 steps of 128) is fewer steps
    than each search probe trained (100): the fine-tune meant to recover most trained least."""
    from torch.utils.data import TensorDataset
    from edgecompress.pipeline.stages.finetune import finetune_plan
    detect, small = select_task("detect", num_classes=10), TensorDataset(torch.zeros(2000, 1))

    def steps(world_size: int = 1, **kw) -> int:
        return finetune_plan(_config(**kw), small, world_size, task=detect, freeze_bn=False)[1]
    assert steps() == 100 and steps(world_size=2) == 50 and steps(probe_finetune_steps=10) == 16
    assert steps(finetune_epochs=20) == 313 and steps(finetune_epochs=0) == 0
