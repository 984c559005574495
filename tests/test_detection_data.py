"""The YOLO-format reader (one-line errors naming file and line) and the offline demo set builder."""
from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader

from edgecompress.errors import UserError
from edgecompress.inputs.yolo import collate, label_dir, read_data_yaml, yolo_datasets
from edgecompress.zoo import fashion_mnist
from edgecompress.zoo.detection_demo import DemoConfig, make_detection_demo

needs_fashion = pytest.mark.skipif(not fashion_mnist.DEBIAN_DIR.is_dir(), reason="Fashion-MNIST files not installed")


def write_set(root: Path, labels: dict[str, str], *, names: str = "[a, b, c]", size: int = 20) -> Path:
    """A YOLO set with one split pair; `labels` maps image stem -> label file text."""
    from PIL import Image
    for split in ("train", "val"):
        (root / "images" / split).mkdir(parents=True)
        (root / "labels" / split).mkdir(parents=True)
        for stem, text in labels.items():
            Image.new("RGB", (size, size), (200, 30, 0)).save(root / "images" / split / f"{stem}.png")
            (root / "labels" / split / f"{stem}.txt").write_text(text)
    yaml = root / "data.yaml"
    yaml.write_text(f"path: .\ntrain: images/train\nval: images/val\nnames: {names}\n")
    return yaml


def test_reader_returns_images_and_targets(tmp_path):
    yaml = write_set(tmp_path, {"x0": "0 0.5 0.5 0.2 0.4\n2 0.1 0.2 0.1 0.1\n", "x1": ""})
    data, sets = yolo_datasets(yaml, imgsz=32)
    assert data.names == ("a", "b", "c") and set(sets) == {"train", "val"}
    image, target = sets["val"][0]
    assert image.shape == (3, 32, 32) and image.dtype == torch.float32 and 0 <= image.min() <= image.max() <= 1
    assert torch.allclose(target, torch.tensor([[0, 0.5, 0.5, 0.2, 0.4], [2, 0.1, 0.2, 0.1, 0.1]]))
    assert sets["val"][1][1].shape == (0, 5)   # an empty label file: a background image
    images, targets = next(iter(DataLoader(sets["val"], batch_size=2, collate_fn=collate)))
    assert images.shape == (2, 3, 32, 32)
    assert targets[:, 0].tolist() == [0, 0] and targets.shape == (2, 6)


@pytest.mark.parametrize("preload", [False, True])
def test_a_wide_image_is_letterboxed_and_its_boxes_move_with_it(tmp_path, preload):
    """As Ultralytics feeds its models: 40x20 -> 32x16 centred on grey rows (114), the box's
    height and centre moved with the image; a square image is only resized."""
    from PIL import Image
    yaml = write_set(tmp_path, {"wide": "0 0.5 0.25 0.5 0.5\n"})
    Image.new("RGB", (40, 20), (200, 30, 0)).save(tmp_path / "images" / "val" / "wide.png")
    _, sets = yolo_datasets(yaml, imgsz=32)
    if preload:
        sets["val"].preload()
    image, target = sets["val"][0]
    assert torch.allclose(image[:, :8], torch.full((3, 8, 32), 114 / 255), atol=1 / 255)   # padding above
    assert torch.allclose(image[:, 24:], torch.full((3, 8, 32), 114 / 255), atol=1 / 255)  # and below
    assert torch.allclose(image[:, 8:24, :, ], torch.tensor([200, 30, 0]).view(3, 1, 1) / 255 * torch.ones(3, 16, 32),
                          atol=2 / 255)
    assert torch.allclose(target, torch.tensor([[0, 0.5, 0.375, 0.5, 0.25]]))
    assert torch.allclose(sets["train"][0][1], torch.tensor([[0, 0.5, 0.25, 0.5, 0.5]]))   # square: unchanged


def test_image_without_label_file_is_background(tmp_path):
    yaml = write_set(tmp_path, {"x0": "1 0.5 0.5 0.2 0.2\n"})
    (tmp_path / "labels" / "val" / "x0.txt").unlink()
    _, sets = yolo_datasets(yaml, imgsz=16)
    assert sets["val"][0][1].shape == (0, 5)


@pytest.mark.parametrize("line, cause", [
    ("0 0.5 0.5 0.2", "expected 5 values, got 4"),
    ("0 0.5 zero 0.2 0.2", "not a number"),
    ("0 0.1 0.2 0.3 0.4 0.5 0.6", "polygon segments are not supported"),
    ("3 0.5 0.5 0.2 0.2", "class 3 out of range [0, 3)"),
    ("1.5 0.5 0.5 0.2 0.2", "class 1.5 out of range"),
    ("0 0.5 1.2 0.2 0.2", "outside [0, 1]"),
    ("0 0.5 0.5 0 0.2", "width and height must be > 0"),
])
def test_bad_label_line_is_one_line_error_naming_file_and_line(tmp_path, line, cause):
    yaml = write_set(tmp_path, {"x0": f"0 0.5 0.5 0.2 0.2\n\n{line}\n"})
    with pytest.raises(UserError) as err:
        yolo_datasets(yaml, imgsz=16)
    msg = str(err.value)
    assert "\n" not in msg and err.value.hint
    assert f"{tmp_path / 'labels' / 'train' / 'x0.txt'}:3:" in msg   # blank line 2 still counts
    assert cause in msg


def test_missing_folders_and_bad_yaml_are_one_line_errors(tmp_path):
    yaml = write_set(tmp_path, {"x0": "0 0.5 0.5 0.2 0.2\n"})
    import shutil
    shutil.rmtree(tmp_path / "labels" / "val")
    with pytest.raises(UserError, match=r"label folder .*labels/val does not exist"):
        yolo_datasets(yaml, imgsz=16)
    shutil.rmtree(tmp_path / "images" / "val")
    with pytest.raises(UserError, match=r"image folder .*images/val does not exist"):
        yolo_datasets(yaml, imgsz=16)
    yaml.write_text("train: images/train\nval: images/val\nnames: [a]\nnc: 2\n")
    with pytest.raises(UserError, match="nc is 2 but names lists 1"):
        read_data_yaml(yaml)
    yaml.write_text("train: images/train\nnames: [a]\n")
    with pytest.raises(UserError, match="no val key"):
        read_data_yaml(yaml)
    yaml.write_text("train: [images/a, images/b]\nval: val.txt\nnames: [a]\n")
    with pytest.raises(UserError, match="train must be one image folder"):
        read_data_yaml(yaml)
    with pytest.raises(UserError, match="does not exist"):
        read_data_yaml(tmp_path / "nope.yaml")


def test_names_as_mapping_or_nc(tmp_path):
    yaml = tmp_path / "data.yaml"
    yaml.write_text("path: /data/set\ntrain: images/train\nval: images/val\nnames: {1: dog, 0: cat}\n")
    data = read_data_yaml(yaml)
    assert data.names == ("cat", "dog") and data.splits["val"] == Path("/data/set/images/val")
    yaml.write_text("train: a/images/train\nval: a/images/val\nnc: 3\n")
    assert read_data_yaml(yaml).num_classes == 3


def test_label_dir_follows_ultralytics_rule():
    assert label_dir(Path("/d/images/train")) == Path("/d/labels/train")
    assert label_dir(Path("/d/train/images")) == Path("/d/train/labels")
    assert label_dir(Path("/images/d/images/val")) == Path("/images/d/labels/val")   # the last one


def _digest(root: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        if p.is_file():
            h.update(p.relative_to(root).as_posix().encode() + p.read_bytes())
    return h.hexdigest()


@needs_fashion
def test_demo_set_is_valid_yolo_and_deterministic(tmp_path):
    cfg = DemoConfig(imgsz=48, min_side=12, max_side=28)
    yaml = make_detection_demo(tmp_path / "a", train=12, val=6, seed=3, config=cfg)
    make_detection_demo(tmp_path / "b", train=12, val=6, seed=3, config=cfg)
    make_detection_demo(tmp_path / "c", train=12, val=6, seed=4, config=cfg)
    assert _digest(tmp_path / "a") == _digest(tmp_path / "b")
    assert _digest(tmp_path / "a") != _digest(tmp_path / "c")
    data, sets = yolo_datasets(yaml, imgsz=48)      # the reader's checks pass on every line
    assert data.num_classes == 10 and len(sets["train"]) == 12 and len(sets["val"]) == 6
    counts = [len(t) for t in sets["train"].targets + sets["val"].targets]
    assert min(counts) >= 1 and max(counts) <= 3
    image, target = sets["train"][0]
    # the box holds the item's ink: pixels inside are brighter than the canvas outside
    cx, cy, w, h = (target[0, 1:] * 48).tolist()
    x0, y0, x1, y1 = int(cx - w / 2), int(cy - h / 2), int(cx + w / 2), int(cy + h / 2)
    inside = image[0, y0:y1, x0:x1].mean()
    assert inside > image[0].mean()
    assert all(12 / 48 * 0.3 < t[:, 3:].max() <= 28 / 48 + 1e-6 for t in sets["train"].targets)


def _script(name: str):
    import importlib.util
    path = Path(__file__).resolve().parents[1] / "scripts" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_demo_script_reports_missing_fashion_mnist_in_one_line(tmp_path, capsys):
    rc = _script("make_detection_demo").main([str(tmp_path / "out"), "--fashion-mnist", str(tmp_path / "none")])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and "does not exist" in err


@needs_fashion
def test_demo_script_writes_a_readable_set(tmp_path, capsys):
    assert _script("make_detection_demo").main([str(tmp_path), "--train", "3", "--val", "2", "--imgsz", "48"]) == 0
    data, sets = yolo_datasets(capsys.readouterr().out.strip(), imgsz=48)
    assert len(sets["train"]) == 3 and len(sets["val"]) == 2 and sets["val"][0][0].shape == (3, 48, 48)
