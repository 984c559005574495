"""The realistic-resolution zoo model: ImageNet-style stem, 64x64 input, a shipped checkpoint that
declares its preprocessing and, fed the declared way, measures the test accuracy it claims."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from edgecompress.zoo import CHECKPOINTS, create_model, pretrained
from edgecompress.zoo.fashion_mnist import DEBIAN_DIR, FILES, MEAN, STD, normalise, read_idx

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


TEST_IMAGES, TOLERANCE = 2000, 1.5   # binomial s.e. of 2,000 images at 93 %: 0.57 points


@pytest.mark.skipif(not DEBIAN_DIR.is_dir(), reason="dataset-fashion-mnist is not installed")
def test_pretrained_measures_its_claimed_test_accuracy_fed_as_declared():
    """Measured here, on a fixed random 2,000 of the 10,000 TEST images (none of them seen in
    training or model selection), preprocessed as the checkpoint declares: within 1.5 points of the
    test accuracy written into the checkpoint by the training script."""
    model, meta = pretrained(NAME)
    pre, claimed = meta["preprocess"], meta["test_accuracy"]
    assert pre["crop"] is None and len(pre["mean"]) == len(pre["std"]) == 1   # what is applied below
    images, labels = read_idx(DEBIAN_DIR, FILES["test_x"]), read_idx(DEBIAN_DIR, FILES["test_y"]).long()
    assert len(images) == len(labels) == 10000
    idx = torch.randperm(len(images), generator=torch.Generator().manual_seed(0))[:TEST_IMAGES]
    correct = 0
    with torch.no_grad():
        for chunk in idx.split(500):
            x = images[chunk].unsqueeze(1).float() / 255
            x = F.interpolate(x, size=(pre["resize"], pre["resize"]), mode="bilinear", align_corners=False)
            x = (x - pre["mean"][0]) / pre["std"][0]
            correct += int((model(x).argmax(1) == labels[chunk]).sum())
    measured = 100.0 * correct / TEST_IMAGES
    assert abs(measured - claimed) <= TOLERANCE, \
        f"measured {measured:.2f} % on {TEST_IMAGES} test images, the checkpoint claims {claimed:.2f} %"
