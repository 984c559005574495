"""Depth pruning: which blocks are removable, how they are scored and grouped, and that removing
them keeps the model running and exportable."""
from __future__ import annotations

import copy
import io

import pytest
import torch
from torch import nn

from edgecompress.pruning.depth import (find_blocks, identity_residual, keep_blocks, remove_blocks,
                                        removable_blocks, block_rates)
from edgecompress.zoo import create_model
from edgecompress.zoo.models import BasicBlock, InvertedResidual


class UserResidual(nn.Module):
    """A user's block written differently: `torch.add`, the branch in a Sequential, GELU after."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.branch = nn.Sequential(nn.Conv2d(c, c, 3, padding=1), nn.BatchNorm2d(c), nn.ReLU(), nn.Conv2d(c, c, 1))
        self.act = nn.GELU()

    def forward(self, x):
        return self.act(torch.add(self.branch(x), x))


class NotResidual(nn.Module):
    """Adds two branches of its input: no identity shortcut, so not removable."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.a, self.b = nn.Conv2d(c, c, 1), nn.Conv2d(c, c, 3, padding=1)

    def forward(self, x):
        return self.a(x) + self.b(x)


class ScaledResidual(nn.Module):
    """x + f(x) followed by a non-element-wise op: removing the branch does not give x."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.f, self.after = nn.Conv2d(c, c, 1), nn.Conv2d(c, c, 1)

    def forward(self, x):
        return self.after(x + self.f(x))


@pytest.mark.parametrize("module, removable", [
    (BasicBlock(8, 8, 1), True), (BasicBlock(8, 16, 2), False), (InvertedResidual(8, 8, 1, 6), True),
    (InvertedResidual(8, 16, 2, 6), False), (UserResidual(8), True), (NotResidual(8), False),
    (ScaledResidual(8), False), (nn.Conv2d(8, 8, 1), False)])
def test_identity_residual_is_read_from_the_forward(module, removable):
    assert identity_residual(module) is removable


def test_resnet20_blocks_are_grouped_by_stage_and_downsampling_blocks_stay():
    model = create_model("resnet20").eval()
    names = removable_blocks(model)
    assert names == ["layer1.0", "layer1.1", "layer1.2", "layer2.1", "layer2.2", "layer3.1", "layer3.2"]
    torch.manual_seed(0)
    blocks = find_blocks(model, [torch.randn(8, 1, 28, 28)])
    assert [b.stage for b in blocks] == [0, 0, 0, 1, 1, 2, 2]
    assert all(b.score > 0 for b in blocks)


def _zeroed_branch_deviation(model: nn.Module, name: str, batches: list[torch.Tensor]) -> float:
    """E||logits(block `name` replaced by nn.Identity) - logits||^2 per image, computed here from
    a patched copy of the model (not with find_blocks' forward hook, nor with remove_blocks)."""
    patched = copy.deepcopy(model).eval()
    parent, _, child = name.rpartition(".")
    setattr(patched.get_submodule(parent), child, nn.Identity())
    with torch.no_grad():
        total = sum(((patched(x) - model(x)).double() ** 2).sum().item() for x in batches)
    return total / sum(len(x) for x in batches)


def test_block_score_and_rate_are_the_measured_output_deviation():
    """Each block's score is the deviation of the logits when the block is replaced by an identity,
    measured here independently; the rates rank the blocks as those deviations do."""
    model = create_model("resnet20").eval()
    torch.manual_seed(0)
    batches = [torch.randn(8, 1, 28, 28), torch.randn(4, 1, 28, 28)]
    blocks = find_blocks(model, batches)
    measured = {b.name: _zeroed_branch_deviation(model, b.name, batches) for b in blocks}
    assert len(set(measured.values())) == len(measured)   # distinct: the ranking below is strict
    for b in blocks:
        assert b.score == pytest.approx(measured[b.name], rel=1e-6), b.name
    rates = block_rates(blocks)
    assert sorted(rates, key=rates.get) == sorted(measured, key=measured.get)
    total = sum(measured.values())
    assert rates == pytest.approx({n: d / total for n, d in measured.items()}, rel=1e-6)


def test_a_stage_with_one_removable_block_can_lose_it():
    """Rates over the whole model: the only removable block of a stage goes when it matters least."""
    from edgecompress.pruning.depth import Block
    blocks = [Block("s0.a", 0, 5.0), Block("s0.b", 0, 4.0), Block("s1.a", 1, 0.5), Block("s2.a", 2, 0.5)]
    assert keep_blocks(blocks, 0.9) == {"s0.a", "s0.b"}
    assert keep_blocks(blocks, 0.95) == {"s0.a", "s0.b", "s1.a"}


def test_keep_blocks_is_monotone_and_spans_everything_to_nothing():
    model = create_model("resnet20").eval()
    torch.manual_seed(0)
    blocks = find_blocks(model, [torch.randn(8, 1, 28, 28)])
    kept = [keep_blocks(blocks, k) for k in (0.0, 0.3, 0.6, 0.9, 1.0)]
    assert kept[0] == set() and kept[-1] == {b.name for b in blocks}
    assert all(a <= b for a, b in zip(kept, kept[1:]))


def test_removed_blocks_leave_a_model_that_runs_and_exports():
    model = create_model("mobilenetv2").eval()
    torch.manual_seed(0)
    x = torch.randn(2, 1, 28, 28)
    blocks = find_blocks(model, [x])
    assert len(blocks) >= 5
    drop = [b.name for b in blocks if b.name not in keep_blocks(blocks, 0.5)]
    assert drop
    smaller = remove_blocks(model, drop)
    assert sum(p.numel() for p in smaller.parameters()) < sum(p.numel() for p in model.parameters())
    assert all(isinstance(smaller.get_submodule(n), nn.Identity) for n in drop)
    assert not isinstance(model.get_submodule(drop[0]), nn.Identity)   # the original is left as it was
    with torch.no_grad():
        assert smaller(x).shape == (2, 10)
    torch.onnx.export(smaller, (x,), io.BytesIO(), opset_version=17, dynamo=False)


def test_the_score_is_the_output_deviation_of_the_zeroed_branch():
    """A block whose branch is exactly zero changes nothing: its score is 0 and it goes first."""
    model = create_model("resnet20").eval()
    with torch.no_grad():
        model.layer2.get_submodule("2").bn2.weight.zero_()
        model.layer2.get_submodule("2").bn2.bias.zero_()
    torch.manual_seed(0)
    blocks = {b.name: b for b in find_blocks(model, [torch.randn(8, 1, 28, 28)])}
    assert blocks["layer2.2"].score == pytest.approx(0.0, abs=1e-9)
    assert blocks["layer2.1"].score > 0
    assert "layer2.2" not in keep_blocks(list(blocks.values()), 0.99)


def test_a_model_without_residual_blocks_has_none():
    model = create_model("vgg11").eval()
    assert find_blocks(model, [torch.randn(2, 1, 28, 28)]) == []


class ReachesIntoABlock(nn.Module):
    """The parent reads a block's own layer in its forward: replacing that block breaks the model."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(1, 8, 3, padding=1)
        self.a, self.b = BasicBlock(8, 8, 1), BasicBlock(8, 8, 1)
        self.fc = nn.Linear(8, 3)

    def forward(self, x):
        x = self.b(self.a(torch.relu(self.stem(x))))
        x = x * self.a.bn2.weight.view(1, -1, 1, 1).sigmoid()
        return self.fc(x.mean((2, 3)))


def test_a_block_whose_removal_breaks_the_model_stays_and_says_why():
    from edgecompress.pruning.depth import safe_blocks
    model = ReachesIntoABlock().eval()
    x = torch.randn(2, 1, 8, 8)
    blocks = find_blocks(model, [x])
    assert {b.name for b in blocks} == {"a", "b"}
    kept, failed = safe_blocks(model, blocks, x)
    assert [b.name for b in kept] == ["b"]
    assert failed[0]["layers"] == ["a"] and "AttributeError" in failed[0]["reason"]
