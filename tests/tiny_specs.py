"""A tiny model factory and a tiny learnable data set for end-to-end tests of `compress`.

    compress --model tests.tiny_specs:model --data tests.tiny_specs:data ...

Images are 1x12x12: class k has a bright 4x4 patch in one of four places, plus noise, so a small
CNN learns it in a few dozen steps and pruning has something to lose.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.utils.data import TensorDataset

SIZE, CLASSES = 12, 4


def _images(n: int, seed: int) -> TensorDataset:
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, CLASSES, (n,), generator=g)
    x = 1.2 * torch.randn(n, 1, SIZE, SIZE, generator=g)
    for k in range(CLASSES):
        r, c = divmod(k, 2)
        x[y == k, :, 2 + 5 * r:6 + 5 * r, 2 + 5 * c:6 + 5 * c] += 1.0
    return TensorDataset(x, y)


def data():
    return _images(768, seed=1), _images(256, seed=2), _images(256, seed=3)


def data_wrong_shape():
    train, val = _images(64, seed=1), _images(32, seed=2)
    return TensorDataset(train.tensors[0].repeat(1, 3, 1, 1), train.tensors[1]), \
        TensorDataset(val.tensors[0].repeat(1, 3, 1, 1), val.tensors[1])


class TinyNet(nn.Module):
    def __init__(self, width: int = 16) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(1, width, 3, padding=1, bias=False), nn.BatchNorm2d(width)
        self.conv2, self.bn2 = nn.Conv2d(width, 2 * width, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(2 * width)
        self.conv3, self.bn3 = nn.Conv2d(2 * width, 2 * width, 3, padding=1, bias=False), nn.BatchNorm2d(2 * width)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(2 * width, CLASSES)

    def forward(self, x):
        x = torch.relu(self.bn1(self.conv1(x)))
        x = torch.relu(self.bn2(self.conv2(x)))
        x = torch.relu(self.bn3(self.conv3(x)))
        return self.fc(torch.flatten(self.pool(x), 1))


def model() -> nn.Module:
    torch.manual_seed(0)
    return TinyNet()


def trained_weights(path, steps: int = 120) -> None:
    """Train TinyNet briefly (deterministic) and save its state dict to `path`."""
    torch.manual_seed(0)
    net = model()
    train, _, _ = data()
    x, y = train.tensors
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    for i in range(steps):
        idx = torch.arange(i * 64, i * 64 + 64) % len(x)
        loss = nn.functional.cross_entropy(net(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    torch.save(net.state_dict(), path)


def estimated_without_overhead(profile_yaml: str) -> str:
    """A measured profile's YAML turned into an estimated one with no per-layer overhead: the tiny
    model is then compute-bound, unaligned, in the estimate, so pruning pays and a run takes the pruned path
    (with the real overhead the unpruned model ships, correctly, and there is nothing to resume)."""
    import re
    text = profile_yaml.replace("\nlatency: local", "\nlatency: estimate")
    text = re.sub(r"layer_overhead_us: [0-9.]+", "layer_overhead_us: 0.0", text)
    return re.sub(r"\n  alignment: \d+", "\n  alignment: 1", text)   # 16-channel layers: every cut counts
