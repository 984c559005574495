"""Detection as a task: COCO mAP in points through any `run`, the training loss, distillation."""
from __future__ import annotations

import importlib.util
import sys

import pytest
import torch

from edgecompress.errors import UserError
from edgecompress.tasks import DetectionTask, detection_map
from edgecompress.tasks.boxes import anchor_points
from edgecompress.tasks.detection import CocoMap
from edgecompress.tasks.detection_loss import assign, detection_distill_loss, detection_loss
from edgecompress.zoo.detector import create_detector

needs_coco = pytest.mark.skipif(importlib.util.find_spec("pycocotools") is None,
                                reason="pycocotools (extra `detect`) not installed")

SIZE, STRIDES, NC = 64, (8, 16), 4


def batch(seed: int = 0, n: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    """Images (unused by the fake runs) and 1-2 boxes of 12-30 px per image, collated [M, 6]."""
    g = torch.Generator().manual_seed(seed)
    rows = []
    for i in range(n):
        for _ in range(1 + i % 2):
            wh = (12 + torch.rand(2, generator=g) * 18) / SIZE
            c = wh / 2 + torch.rand(2, generator=g) * (1 - wh)
            rows.append([i, int(torch.randint(NC, (1,), generator=g)), *c.tolist(), *wh.tolist()])
    return torch.rand(n, 3, SIZE, SIZE, generator=g), torch.tensor(rows)


def encode(targets: torch.Tensor, n: int, *, shift: float = 0.0, wrong_class: bool = False) -> torch.Tensor:
    """Raw outputs that decode to exactly the target boxes (moved by `shift` px), one cell per box:
    the stride-8 cell nearest the box centre, which lies inside a box of 12 px or more."""
    points, strides = anchor_points(SIZE, SIZE, STRIDES)
    raw = torch.full((n, 4 + NC, len(points)), -20.0)
    for i, c, cx, cy, w, h in targets.tolist():
        cx, cy, w, h = cx * SIZE + shift, cy * SIZE, w * SIZE, h * SIZE
        cell = int(((points - torch.tensor([cx, cy])).norm(dim=1) + (strides != 8) * 1e6).argmin())
        px, py = points[cell].tolist()
        ltrb = torch.tensor([px - (cx - w / 2), py - (cy - h / 2), cx + w / 2 - px, cy + h / 2 - py]) / strides[cell]
        raw[int(i), :4, cell] = torch.log(torch.expm1(ltrb))       # softplus inverse
        raw[int(i), 4 + (int(c) + wrong_class) % NC, cell] = 10.0
    return raw


def fake_run(shift: float = 0.0, wrong_class: bool = False):
    """`run` as an engine would be: numpy batch in, raw outputs out (looked up by the batch)."""
    table = {}

    def run(images):
        return table[images.tobytes()]
    batches = [batch(seed) for seed in range(3)]
    for images, targets in batches:
        table[images.numpy().tobytes()] = [encode(targets, len(images), shift=shift, wrong_class=wrong_class).numpy()]
    return run, batches


@needs_coco
def test_perfect_predictions_score_100_and_worse_ones_less():
    run, batches = fake_run()
    assert detection_map(run, batches) == pytest.approx(100.0, abs=1e-6)
    run, batches = fake_run(shift=3.0)
    shifted = detection_map(run, batches)
    run, batches = fake_run(shift=8.0)
    far = detection_map(run, batches)
    assert 0 < far < shifted < 100
    run, batches = fake_run(wrong_class=True)
    assert detection_map(run, batches) == 0.0


@needs_coco
def test_task_evaluate_matches_detection_map_and_calibration_sees_images_only():
    run, batches = fake_run(shift=2.0)
    task = DetectionTask(num_classes=NC)
    assert task.evaluate(run, batches) == detection_map(run, batches)
    images = list(task.calibration_inputs(batches))
    assert all(isinstance(x, torch.Tensor) and x.shape == (4, 3, SIZE, SIZE) for x in images)


def test_missing_pycocotools_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "pycocotools", None)
    monkeypatch.setitem(sys.modules, "pycocotools.coco", None)
    m = CocoMap()
    m.update([{"boxes": torch.zeros(0, 4), "scores": torch.zeros(0), "labels": torch.zeros(0, dtype=torch.long)}],
             [{"boxes": torch.tensor([[0.0, 0, 5, 5]]), "labels": torch.tensor([1])}])
    with pytest.raises(UserError, match=r"edgecompress\[detect\]"):
        m.compute()


def test_assignment_gives_every_object_a_cell_and_shared_cells_to_the_smaller():
    points, strides = anchor_points(SIZE, SIZE, STRIDES)
    big = torch.tensor([[0.0, 0.0, 64.0, 64.0]])
    tiny = torch.tensor([[33.0, 33.0, 35.0, 35.0]])          # smaller than a stride, between centres
    gi = assign(points, strides, torch.cat([big, tiny]), radius=2.5)
    assert (gi == 1).sum() >= 1 and (gi == 0).sum() > 1
    assert (gi >= 0).sum() < len(points)                      # the centre prior leaves far cells out
    assert (assign(points, strides, torch.zeros(0, 4), radius=2.5) == -1).all()


@pytest.fixture
def one_thread():
    """A shared CPU: more threads than cores only slows training down."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_loss_prefers_the_right_boxes_and_falls_when_training(one_thread):
    images, targets = batch(1)
    perfect = detection_loss(encode(targets, 4), targets, height=SIZE, width=SIZE, strides=STRIDES)[0]
    shifted = detection_loss(encode(targets, 4, shift=6.0), targets, height=SIZE, width=SIZE, strides=STRIDES)[0]
    assert perfect < shifted
    torch.manual_seed(0)
    model = create_detector("tiny-yolo-test", num_classes=NC)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(30):
        loss, parts = detection_loss(model(images), targets, height=SIZE, width=SIZE, strides=STRIDES)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert parts["positives"] >= len(targets)
    assert losses[-1] < 0.5 * losses[0]


def test_distill_loss_is_zero_when_agreeing_and_weights_boxes_by_teacher_confidence():
    torch.manual_seed(0)
    teacher = torch.randn(2, 4 + NC, 80)
    teacher[:, 4:, :40] = -8.0                                # cells 0..39: background for the teacher
    teacher[:, 4, 40:] = 8.0                                  # cells 40..79: confident objects
    assert float(detection_distill_loss(teacher.clone(), teacher)) == pytest.approx(0.0, abs=1e-5)
    background = teacher.clone()
    background[:, :4, :40] += 1.0
    objects = teacher.clone()
    objects[:, :4, 40:] += 1.0
    assert 0 < float(detection_distill_loss(background, teacher)) < 0.05 * float(detection_distill_loss(objects, teacher))
    student = teacher.clone()
    student[:, 4:] = 0.0
    student.requires_grad_(True)
    loss = detection_distill_loss(student, teacher, temperature=2.0)
    loss.backward()
    assert float(loss) > 0 and student.grad[:, 4:].abs().sum() > 0
    with pytest.raises(ValueError, match="differ"):
        detection_distill_loss(teacher[:, :, :10], teacher)


@needs_coco
def test_shipped_detector_finds_the_demo_objects(tmp_path, one_thread):
    """The shipped checkpoint on freshly built validation canvases (seed 1: other canvases than
    the ones it was scored on, items from Fashion-MNIST's validation part it never trained on)."""
    from torch.utils.data import DataLoader

    from edgecompress.inputs.yolo import collate, yolo_datasets
    from edgecompress.tasks.detection import torch_runner
    from edgecompress.zoo import fashion_mnist
    from edgecompress.zoo.detection_demo import make_detection_demo
    from edgecompress.zoo.detector import CHECKPOINTS, DEMO_DATASET, pretrained_detector
    if not (CHECKPOINTS / f"tiny-yolo_{DEMO_DATASET}.pt").is_file() or not fashion_mnist.DEBIAN_DIR.is_dir():
        pytest.skip("no shipped detector checkpoint or no Fashion-MNIST files")
    model, meta = pretrained_detector()
    yaml = make_detection_demo(tmp_path, train=1, val=200, seed=1)
    _, sets = yolo_datasets(yaml, imgsz=meta["imgsz"])
    batches = list(DataLoader(sets["val"], batch_size=50, collate_fn=collate))
    score = detection_map(torch_runner(model), batches)
    assert score > 0.8 * meta["val_map"]     # within sampling noise of its recorded score, far above 0
    # the same score code for an engine: the ONNX export of the raw outputs, run by onnxruntime
    ort = pytest.importorskip("onnxruntime")
    path = tmp_path / "det.onnx"
    torch.onnx.export(model, (batches[0][0],), str(path), dynamo=False, opset_version=17,
                      input_names=["images"], output_names=["raw"])
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    engine_score = detection_map(lambda x: session.run(None, {"images": x}), batches)
    assert engine_score == pytest.approx(score, abs=0.5)


def test_finetuning_pulls_the_student_to_the_teacher_and_leaves_the_teacher(one_thread):
    import copy

    from edgecompress.tasks.detection_finetune import DetectorFinetuneConfig, finetune_detector
    torch.manual_seed(0)
    teacher = create_detector("tiny-yolo-test", num_classes=NC).eval()
    student = copy.deepcopy(teacher)
    with torch.no_grad():
        for p in student.parameters():
            p.add_(0.2 * torch.randn_like(p))
    batches = [batch(seed) for seed in range(2)]
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    task = DetectionTask(num_classes=NC)

    def gap() -> float:
        with torch.no_grad():
            return float(task.distill_loss(student.eval()(batches[0][0]), teacher(batches[0][0])))
    start = gap()
    losses = finetune_detector(student, teacher, batches, task=task,
                               config=DetectorFinetuneConfig(steps=20, lr=3e-3, task_weight=0.0))
    assert len(losses) == 20 and gap() < 0.5 * start
    assert all(torch.equal(before[k], v) for k, v in teacher.state_dict().items())
    with pytest.raises(ValueError, match="no training batches"):
        finetune_detector(student, teacher, [], task=task)
