"""The realistic-resolution zoo model: ImageNet-style stem, 64x64 input, a shipped checkpoint that
declares its preprocessing and classifies validation images fed the declared way."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from edgecompress.zoo import CHECKPOINTS, create_model, pretrained
from edgecompress.zoo.fashion_mnist import DEBIAN_DIR, FILES, MEAN, STD, VAL_SIZE, normalise, read_idx, split_indices

NAME = "resnet18-64"
PREPROCESS = {"resize": 64, "crop": None, "mean": [MEAN], "std": [STD]}


def _stem(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return model.maxpool(torch.relu(model.bn1(model.conv1(x))))


def test_stem_and_pool_reduce_the_input_by_four():
    model = create_model(NAME).eval()
    assert model.conv1.stride == (2, 2) and isinstance(model.maxpool, nn.MaxPool2d)
    x = torch.randn(2, 1, 64, 64)
    with torch.no_grad():
        assert _stem(model, x).shape[-2:] == (16, 16)
        assert model(x).shape == (2, 10)


def test_has_identity_blocks_and_downsample_blocks():
    model = create_model(NAME)
    blocks = [b for stage in (model.layer1, model.layer2, model.layer3, model.layer4) for b in stage]
    identity = [b for b in blocks if len(b.shortcut) == 0]
    assert len(blocks) == 8 and len(identity) == 5      # layer1's two, one more per later stage
    assert [b.conv1.stride for b in blocks if len(b.shortcut)] == [(2, 2)] * 3


def test_checkpoint_is_small_and_declares_its_preprocessing():
    path = CHECKPOINTS / f"{NAME}_fashion-mnist.pt"
    assert path.is_file(), "the shipped checkpoint is missing"
    assert path.stat().st_size <= 15 * 2**20
    _, meta = pretrained(NAME)
    assert meta["preprocess"] == PREPROCESS
    assert meta["model"] == NAME and meta["test_accuracy"] >= 91.0
    assert {"val_accuracy", "epochs", "command"} <= set(meta)


def test_normalising_before_or_after_the_bilinear_resize_is_the_same():
    u8 = torch.randint(0, 256, (3, 1, 28, 28), dtype=torch.uint8)
    before = F.interpolate(normalise(u8), size=(64, 64), mode="bilinear", align_corners=False)
    after = (F.interpolate(u8.float() / 255, size=(64, 64), mode="bilinear", align_corners=False) - MEAN) / STD
    torch.testing.assert_close(before, after, rtol=0, atol=1e-5)


@pytest.mark.skipif(not DEBIAN_DIR.is_dir(), reason="dataset-fashion-mnist is not installed")
def test_pretrained_classifies_validation_images_fed_as_declared():
    model, meta = pretrained(NAME)
    pre = meta["preprocess"]
    _, val_idx = split_indices(60000, VAL_SIZE)
    idx = val_idx[:200]
    images = read_idx(DEBIAN_DIR, FILES["train_x"])[idx].unsqueeze(1).float() / 255
    labels = read_idx(DEBIAN_DIR, FILES["train_y"])[idx].long()
    size = (pre["resize"], pre["resize"])
    x = (F.interpolate(images, size=size, mode="bilinear", align_corners=False) - pre["mean"][0]) / pre["std"][0]
    with torch.no_grad():
        acc = (model(x).argmax(1) == labels).float().mean().item()
    assert acc >= 0.8, f"{acc:.1%} on 200 validation images (chance 10%)"
