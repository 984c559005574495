"""Demo models for small images (28x28 Fashion-MNIST, 32x32 CIFAR), registered by name.

Every factory takes keyword-only `in_channels` and `num_classes` and works at 28x28 and 32x32.
The final classifier is always the attribute `fc` (a `nn.Linear`), so pruning can leave its
outputs alone.

`resnet18-64` is the exception in scale: an ImageNet-style network (stride-2 stem and max-pool)
meant for larger inputs; its checkpoint is trained on Fashion-MNIST resized to 64x64.
"""
from __future__ import annotations

import torch
from torch import nn

from edgecompress.registry import Registry

MODELS: Registry = Registry("model")


def _conv_bn(cin: int, cout: int, k: int = 3, stride: int = 1, groups: int = 1) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False), nn.BatchNorm2d(cout)]


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1, self.bn1 = _conv_bn(cin, cout, 3, stride)
        self.conv2, self.bn2 = _conv_bn(cout, cout, 3, 1)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            # Option B (1x1 projection): keeps the residual add prunable as one coupled group.
            self.shortcut = nn.Sequential(*_conv_bn(cin, cout, 1, stride))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return torch.relu(out + self.shortcut(x))


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, cin: int, width: int, stride: int) -> None:
        super().__init__()
        cout = width * self.expansion
        self.conv1, self.bn1 = _conv_bn(cin, width, 1)
        self.conv2, self.bn2 = _conv_bn(width, width, 3, stride)
        self.conv3, self.bn3 = _conv_bn(width, cout, 1)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(*_conv_bn(cin, cout, 1, stride))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = torch.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return torch.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """ResNet for small images (He et al. 2016, section 4.2): 3 stages of 16/32/64 channels."""

    def __init__(self, block: type, blocks: int, *, in_channels: int, num_classes: int,
                 widths: tuple[int, ...] = (16, 32, 64)) -> None:
        super().__init__()
        self.conv1, self.bn1 = _conv_bn(in_channels, widths[0], 3)
        layers, cin = [], widths[0]
        for i, w in enumerate(widths):
            stage = []
            for j in range(blocks):
                b = block(cin, w, 2 if (i > 0 and j == 0) else 1)
                cin = w * getattr(block, "expansion", 1)
                stage.append(b)
            layers.append(nn.Sequential(*stage))
        self.layer1, self.layer2, self.layer3 = layers
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(torch.flatten(self.pool(x), 1))


class VGG(nn.Module):
    def __init__(self, cfg: list, *, in_channels: int, num_classes: int) -> None:
        super().__init__()
        layers, cin = [], in_channels
        for v in cfg:
            if v == "M":
                layers.append(nn.MaxPool2d(2, ceil_mode=True))  # ceil: 28 -> 14 -> 7 -> 4 -> 2 -> 1
            else:
                layers += [*_conv_bn(cin, v, 3), nn.ReLU(inplace=True)]
                cin = v
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(self.features(x)), 1))


class InvertedResidual(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, expand: int) -> None:
        super().__init__()
        hidden = cin * expand
        layers = [] if expand == 1 else [*_conv_bn(cin, hidden, 1), nn.ReLU6(inplace=True)]
        layers += [*_conv_bn(hidden, hidden, 3, stride, groups=hidden), nn.ReLU6(inplace=True),
                   *_conv_bn(hidden, cout, 1)]
        self.block = nn.Sequential(*layers)
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.block(x)
        return x + out if self.residual else out


class MobileNetV2(nn.Module):
    """MobileNetV2 (Sandler et al. 2018) scaled for small images: stride 1 stem, 3 down-samplings."""

    # expansion t, channels c, repeats n, stride s
    CFG = [(1, 16, 1, 1), (6, 24, 2, 1), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2),
           (6, 320, 1, 1)]

    def __init__(self, *, in_channels: int, num_classes: int, width: float = 0.5) -> None:
        super().__init__()
        c = lambda v: max(8, int(v * width + 4) // 8 * 8)  # noqa: E731 - round to 8 as in the paper
        cin = c(32)
        layers = [*_conv_bn(in_channels, cin, 3), nn.ReLU6(inplace=True)]
        for t, ch, n, s in self.CFG:
            for i in range(n):
                layers.append(InvertedResidual(cin, c(ch), s if i == 0 else 1, t))
                cin = c(ch)
        last = c(1280) if width > 1 else 1280 // 2
        layers += [*_conv_bn(cin, last, 1), nn.ReLU6(inplace=True)]
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(last, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(self.features(x)), 1))


class DenseLayer(nn.Module):
    def __init__(self, cin: int, growth: int) -> None:
        super().__init__()
        self.bn1, self.conv1 = nn.BatchNorm2d(cin), nn.Conv2d(cin, 4 * growth, 1, bias=False)
        self.bn2, self.conv2 = nn.BatchNorm2d(4 * growth), nn.Conv2d(4 * growth, growth, 3, 1, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv1(torch.relu(self.bn1(x)))
        out = self.conv2(torch.relu(self.bn2(out)))
        return torch.cat([x, out], 1)


class SmallDenseNet(nn.Module):
    """A DenseNet-BC style network (concatenation coupling) with 3 dense blocks."""

    def __init__(self, *, in_channels: int, num_classes: int, growth: int = 12, layers: int = 4) -> None:
        super().__init__()
        cin = 2 * growth
        mods: list[nn.Module] = [nn.Conv2d(in_channels, cin, 3, 1, 1, bias=False)]
        for stage in range(3):
            for _ in range(layers):
                mods.append(DenseLayer(cin, growth))
                cin += growth
            if stage < 2:
                cout = cin // 2
                mods += [nn.BatchNorm2d(cin), nn.ReLU(inplace=True), nn.Conv2d(cin, cout, 1, bias=False),
                         nn.AvgPool2d(2, ceil_mode=True)]
                cin = cout
        mods += [nn.BatchNorm2d(cin), nn.ReLU(inplace=True)]
        self.features = nn.Sequential(*mods)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(self.features(x)), 1))


class ImageNetResNet(nn.Module):
    """ResNet-18/34 as for ImageNet (He et al. 2016, table 1): 7x7 stride-2 stem and 3x3 stride-2
    max-pool (output 1/4 of the input), then 4 stages; `widths` narrower than 64..512 to train on a CPU."""

    def __init__(self, blocks: tuple[int, ...], *, in_channels: int, num_classes: int,
                 widths: tuple[int, ...] = (64, 128, 256, 512)) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, widths[0], 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        stages, cin = [], widths[0]
        for i, (w, n) in enumerate(zip(widths, blocks)):
            # The first block of stages 2..4 down-samples (1x1 projection); the others are identity
            # blocks that depth pruning can remove whole.
            stages.append(nn.Sequential(*[BasicBlock(cin if j == 0 else w, w, 2 if (i > 0 and j == 0) else 1)
                                          for j in range(n)]))
            cin = w
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(torch.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.pool(x), 1))


_VGG = {"vgg11": [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512],
        "vgg16": [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512]}

MODELS.add("resnet20", lambda *, in_channels=1, num_classes=10: CifarResNet(
    BasicBlock, 3, in_channels=in_channels, num_classes=num_classes))
MODELS.add("resnet56", lambda *, in_channels=1, num_classes=10: CifarResNet(
    BasicBlock, 9, in_channels=in_channels, num_classes=num_classes))
MODELS.add("resnet29-bottleneck", lambda *, in_channels=1, num_classes=10: CifarResNet(
    Bottleneck, 3, in_channels=in_channels, num_classes=num_classes))
for _name, _cfg in _VGG.items():
    MODELS.add(_name, lambda *, in_channels=1, num_classes=10, _cfg=_cfg: VGG(
        _cfg, in_channels=in_channels, num_classes=num_classes))
MODELS.add("mobilenetv2", lambda *, in_channels=1, num_classes=10: MobileNetV2(
    in_channels=in_channels, num_classes=num_classes))
MODELS.add("densenet-small", lambda *, in_channels=1, num_classes=10: SmallDenseNet(
    in_channels=in_channels, num_classes=num_classes))
MODELS.add("resnet18-64", lambda *, in_channels=1, num_classes=10: ImageNetResNet(
    (2, 2, 2, 2), in_channels=in_channels, num_classes=num_classes, widths=(32, 64, 128, 256)))
# Tiny models for fast tests live next to the real ones (STYLE 9).
MODELS.add("tiny-resnet", lambda *, in_channels=1, num_classes=10: CifarResNet(
    BasicBlock, 1, in_channels=in_channels, num_classes=num_classes, widths=(8, 16, 16)))


def create_model(name: str, *, in_channels: int = 1, num_classes: int = 10) -> nn.Module:
    return MODELS.get(name)(in_channels=in_channels, num_classes=num_classes)
