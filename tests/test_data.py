"""Data specs (--data) and model specs (--model/--weights) resolve, or fail with the user's message."""
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from edgecompress.errors import UserError
from edgecompress.inputs.data import resolve_data
from edgecompress.inputs.loaders import as_tensors
from edgecompress.inputs.models import resolve_model
from edgecompress.zoo.fashion_mnist import DEBIAN_DIR

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from tests import tiny_specs  # noqa: E402


@pytest.fixture
def tiny():
    return resolve_data("tests.tiny_specs:data")


@pytest.fixture(autouse=True)
def _repo_cwd(monkeypatch):
    monkeypatch.chdir(REPO)


def _png_tree(root: Path, classes: dict[str, int], *, mode="L", size=(10, 8)) -> None:
    from PIL import Image
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for cls, n in classes.items():
            (root / split / cls).mkdir(parents=True, exist_ok=True)
            for i in range(n):
                shape = (size[1], size[0]) if mode == "L" else (size[1], size[0], 3)
                Image.fromarray(rng.integers(0, 255, shape, dtype=np.uint8), mode).save(root / split / cls / f"{i}.png")


def test_function_spec_returns_splits_with_shape_and_classes(tiny):
    assert tiny.input_shape == (1, 12, 12) and tiny.num_classes == 4
    assert len(tiny.train) == 768 and len(tiny.val) == 256 and len(tiny.test) == 256


@pytest.mark.skipif(not DEBIAN_DIR.is_dir(), reason="dataset-fashion-mnist is not installed")
def test_fashion_mnist_default_has_a_5000_image_validation_split():
    data = resolve_data(None)
    assert data.name == "fashion-mnist" and len(data.val) == 5000 and len(data.train) == 55000
    assert data.input_shape == (1, 28, 28) and data.num_classes == 10


def test_image_folder_grayscale_resized_and_normalised(tmp_path):
    _png_tree(tmp_path, {"cat": 3, "dog": 2})
    from PIL import Image
    Image.fromarray(np.zeros((20, 20), np.uint8), "L").save(tmp_path / "train" / "dog" / "big.png")
    data = resolve_data(f"imagefolder:{tmp_path}")
    x, y = as_tensors(data.train)
    assert data.num_classes == 2 and data.input_shape == (1, 8, 10) and x.shape == (6, 1, 8, 10)
    assert sorted(y.tolist()) == [0, 0, 0, 1, 1, 1]
    assert abs(float(x.mean())) < 1e-4 and abs(float(x.std()) - 1) < 0.1  # normalised on train


def test_image_folder_rgb(tmp_path):
    _png_tree(tmp_path, {"a": 2, "b": 2, "c": 1}, mode="RGB")
    data = resolve_data(f"imagefolder:{tmp_path}")
    assert data.input_shape == (3, 8, 10) and data.num_classes == 3


@pytest.mark.parametrize("layout, expected", [
    ({"only": 3}, "1 class folder"),
    ({}, "0 class folder"),
])
def test_image_folder_with_too_few_classes(tmp_path, layout, expected):
    _png_tree(tmp_path, layout)
    (tmp_path / "train").mkdir(exist_ok=True)
    (tmp_path / "val").mkdir(exist_ok=True)
    with pytest.raises(UserError, match=expected):
        resolve_data(f"imagefolder:{tmp_path}")


def test_image_folder_without_val(tmp_path):
    (tmp_path / "train" / "a").mkdir(parents=True)
    with pytest.raises(UserError, match="no val/ subfolder"):
        resolve_data(f"imagefolder:{tmp_path}")


def test_image_folder_broken_image(tmp_path):
    _png_tree(tmp_path, {"a": 1, "b": 1})
    (tmp_path / "val" / "b" / "broken.png").write_bytes(b"not a png")
    with pytest.raises(UserError, match="cannot read image"):
        resolve_data(f"imagefolder:{tmp_path}")


def test_zoo_default_needs_fashion_mnist_for_shipped_weights(tiny):
    with pytest.raises(UserError, match="shipped resnet20 weights are for Fashion-MNIST"):
        resolve_model(None, weights=None, data=tiny)


def test_factory_with_weights_and_a_whole_model_file(tiny, tmp_path):
    net = tiny_specs.model()
    torch.save({"state_dict": net.state_dict()}, tmp_path / "ckpt.pt")
    loaded = resolve_model("tests.tiny_specs:model", weights=str(tmp_path / "ckpt.pt"), data=tiny)
    assert torch.equal(loaded.model.conv1.weight, net.conv1.weight)
    torch.save(net, tmp_path / "whole.pt")
    assert isinstance(resolve_model(str(tmp_path / "whole.pt"), weights=None, data=tiny).model, tiny_specs.TinyNet)


def test_state_dict_given_as_model_file(tiny, tmp_path):
    torch.save(tiny_specs.model().state_dict(), tmp_path / "sd.pt")
    with pytest.raises(UserError, match="holds a state dict, not a whole model"):
        resolve_model(str(tmp_path / "sd.pt"), weights=None, data=tiny)


def test_labels_outside_the_model_classes(tmp_path):
    data = resolve_data("tests.tiny_specs:data")

    net = tiny_specs.model()
    net.fc = nn.Linear(net.fc.in_features, 2)
    torch.save(net, tmp_path / "two.pt")
    with pytest.raises(UserError, match="labels up to 3 but the model .* has 2 outputs"):
        resolve_model(str(tmp_path / "two.pt"), weights=None, data=data)


def test_unknown_model_spec(tiny):
    with pytest.raises(UserError, match="cannot resolve the model"):
        resolve_model("no/such/file.pt", weights=None, data=tiny)
