"""The zoo detector: raw head outputs, ONNX export parity, and decoding + NMS outside the model."""
from __future__ import annotations

import pytest
import torch

from edgecompress.errors import UserError
from edgecompress.tasks.boxes import PostprocessConfig, anchor_points, box_iou, decode, nms, postprocess
from edgecompress.zoo.detector import C2f, DETECTORS, SPPF, create_detector


@pytest.mark.parametrize("name", DETECTORS.names())
def test_every_detector_gives_raw_outputs_per_cell(name):
    torch.manual_seed(0)
    model = create_detector(name, num_classes=5).eval()
    raw = model(torch.rand(2, 3, 64, 48))
    cells = 8 * 6 + 4 * 3                                   # strides 8 and 16 on 64x48
    assert raw.shape == (2, 4 + 5, cells)
    assert any(isinstance(m, C2f) for m in model.modules()) and any(isinstance(m, SPPF) for m in model.modules())


def test_unknown_detector_names_the_valid_ones():
    with pytest.raises(UserError, match="tiny-yolo"):
        create_detector("tiny-yolk")


def test_c2f_concatenates_split_halves_and_every_bottleneck():
    block = C2f(8, 8, n=2)
    seen = []
    block.cv2.conv.register_forward_hook(lambda m, i, o: seen.append(i[0].shape[1]))
    block(torch.rand(1, 8, 4, 4))
    assert seen == [(2 + 2) * 4]


def test_anchor_points_are_cell_centres_in_head_order():
    points, strides = anchor_points(16, 32, (8, 16))
    assert points.shape == (2 * 4 + 1 * 2, 2)
    assert points[0].tolist() == [4.0, 4.0] and points[1].tolist() == [12.0, 4.0]   # row-major
    assert points[8].tolist() == [8.0, 8.0] and strides[8] == 16


def test_decode_places_boxes_around_cell_centres():
    raw = torch.zeros(1, 4 + 2, 4 + 1)                      # 16x16 input, strides 8 and 16
    raw[0, :4] = torch.log(torch.expm1(torch.tensor(1.0)))  # softplus(raw) = 1: one stride each side
    raw[0, 5, 4] = 10.0                                     # class 1 certain at the stride-16 cell
    boxes, scores = decode(raw, height=16, width=16, strides=(8, 16))
    assert torch.allclose(boxes[0, 0], torch.tensor([-4.0, -4.0, 12.0, 12.0]), atol=1e-5)
    assert torch.allclose(boxes[0, 4], torch.tensor([-8.0, -8.0, 24.0, 24.0]), atol=1e-5)
    assert scores[0, 4, 1] > 0.99 and abs(scores[0, 0, 0] - 0.5) < 1e-6


def test_decode_rejects_outputs_of_another_input_size():
    with pytest.raises(ValueError, match="do not match"):
        decode(torch.zeros(1, 6, 5), height=32, width=32, strides=(8, 16))


def test_nms_keeps_the_best_of_overlapping_boxes_only():
    boxes = torch.tensor([[0, 0, 10, 10], [1, 1, 11, 11], [20, 20, 30, 30], [0, 0, 10, 9.0]])
    scores = torch.tensor([0.6, 0.9, 0.8, 0.7])
    assert nms(boxes.float(), scores, 0.5).tolist() == [1, 2]
    assert nms(boxes.float(), scores, 0.95).tolist() == [1, 2, 3, 0]
    assert torch.allclose(box_iou(boxes[:1].float(), boxes[2:3].float()), torch.zeros(1, 1))


def test_postprocess_is_per_class_and_thresholded():
    raw = torch.full((1, 4 + 2, 5), -10.0)
    raw[0, :4] = 0.5
    raw[0, 4, 0], raw[0, 5, 1] = 5.0, 4.0                  # two neighbouring cells, different classes
    raw[0, 4, 2] = 3.0                                       # same class as cell 0, overlapping it
    out = postprocess(raw, height=16, width=16, strides=(8, 16), config=PostprocessConfig(conf=0.1, iou=0.3))
    assert sorted(out[0]["labels"].tolist()) == [0, 1]       # cell 2 suppressed by cell 0, cell 1 kept
    assert out[0]["scores"].max() > 0.99


def test_onnx_export_of_raw_outputs_matches_pytorch(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    torch.manual_seed(0)
    model = create_detector("tiny-yolo-test", num_classes=3).eval()
    for m in model.modules():    # non-trivial BatchNorm statistics, as after training
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    x = torch.rand(2, 3, 64, 64)
    path = tmp_path / "det.onnx"
    torch.onnx.export(model, (x,), str(path), dynamo=False, opset_version=17, input_names=["images"],
                      output_names=["raw"])
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = torch.from_numpy(sess.run(None, {"images": x.numpy()})[0])
    with torch.no_grad():
        want = model(x)
    assert got.shape == want.shape and torch.allclose(got, want, atol=1e-4, rtol=1e-4)
    # decoding runs outside the engine: the decoded boxes and scores agree as the raw outputs do
    got_boxes, got_scores = decode(got, height=64, width=64, strides=model.strides)
    want_boxes, want_scores = decode(want, height=64, width=64, strides=model.strides)
    assert torch.allclose(got_boxes, want_boxes, atol=1e-3) and torch.allclose(got_scores, want_scores, atol=1e-5)
