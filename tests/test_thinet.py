"""ThiNet: sampled contributions, greedy = exhaustive where it must be, scores, registry."""
from __future__ import annotations

import itertools

import pytest
import torch
from torch import nn

from edgecompress.pruning import CRITERIA, find_groups
from edgecompress.pruning.thinet import (contributions, greedy_removal, group_consumers, removal_scores,
                                         sample_positions, thinet_scores)
from edgecompress.zoo import create_model


def _objective(xhat: torch.Tensor, removed) -> float:
    return float(xhat[:, list(removed)].sum(1).pow(2).sum()) if removed else 0.0


def _best_subset(xhat: torch.Tensor, k: int) -> float:
    return min(_objective(xhat, t) for t in itertools.combinations(range(xhat.shape[1]), k))


@pytest.mark.parametrize("conv", [nn.Conv2d(4, 6, 3, padding=1), nn.Conv2d(4, 6, 3, stride=2, padding=2, dilation=2),
                                  nn.Conv2d(4, 6, 1, groups=2), nn.Conv2d(4, 4, (3, 1), padding="same", groups=4)])
def test_contributions_sum_to_the_layer_output(conv):
    torch.manual_seed(0)
    x = torch.randn(3, 4, 7, 7)
    with torch.no_grad():
        out = conv(x) - conv.bias[:, None, None]
        pos = sample_positions(out.shape, 40, torch.Generator().manual_seed(1))
        xhat = contributions(conv, x, pos)
    assert xhat.shape == (40, 4)
    assert torch.allclose(xhat.sum(1), out[pos], atol=1e-5)
    if conv.groups > 1:  # an output reads only its own group's inputs
        group = pos[1] // (conv.out_channels // conv.groups)
        own = torch.arange(4)[None, :] // (4 // conv.groups) == group[:, None]
        assert torch.all(xhat[~own] == 0)


def test_linear_contributions():
    fc = nn.Linear(5, 3)
    x = torch.randn(4, 5)
    with torch.no_grad():
        pos = sample_positions((4, 3), 10, torch.Generator().manual_seed(0))
        assert torch.allclose(contributions(fc, x, pos).sum(1), (fc(x) - fc.bias)[pos], atol=1e-6)


def test_greedy_first_removal_is_the_exhaustive_best_on_a_real_layer():
    # Removing ONE channel: greedy evaluates every candidate exactly, so it must be optimal for
    # any layer; checked on the sampled contributions of a dense 3x3 conv.
    torch.manual_seed(0)
    conv = nn.Conv2d(6, 5, 3, padding=1)
    x = torch.relu(torch.randn(4, 6, 6, 6))
    with torch.no_grad():
        pos = sample_positions((4, 5, 6, 6), 200, torch.Generator().manual_seed(0))
        xhat = contributions(conv, x, pos).double()
    order, inc = greedy_removal(xhat)
    assert _objective(xhat, order[:1]) == pytest.approx(_best_subset(xhat, 1))
    assert inc[0] == pytest.approx(_objective(xhat, order[:1]))


def test_greedy_equals_exhaustive_for_every_size_when_channels_do_not_overlap():
    # For k >= 2 greedy is not optimal in general (channels' contributions can cancel). It must be
    # when the contributions are orthogonal: the objective is then additive, Σ_{j∈T} ‖x̂_j‖².
    # Construction: every input channel of a 1x1 conv is non-zero in its own image column only,
    # so at every output position at most one channel contributes.
    torch.manual_seed(0)
    conv = nn.Conv2d(6, 3, 1)
    x = torch.zeros(2, 6, 4, 6)
    for j in range(6):
        x[:, j, :, j] = torch.randn(2, 4) * (j + 1) / 3
    with torch.no_grad():
        out_shape = (2, 3, 4, 6)
        pos = tuple(t.flatten() for t in torch.meshgrid(*[torch.arange(s) for s in out_shape], indexing="ij"))
        xhat = contributions(conv, x, pos).double()
    order, _ = greedy_removal(xhat)
    for k in range(1, 7):
        assert _objective(xhat, order[:k]) == pytest.approx(_best_subset(xhat, k), rel=1e-9)


def test_removal_scores_rank_later_removals_higher_and_never_tie():
    order, inc = [3, 0, 2, 1, 4], [0.0, 0.0, 5.0, 2.0, 9.0]   # a dip (2 < 5) and a tie (0, 0)
    scores = removal_scores(order, inc)
    assert torch.argsort(scores, descending=True).tolist() == order[::-1]
    assert len(set(scores.float().tolist())) == 5            # still distinct in float32


def _tiny():
    torch.manual_seed(0)
    model = create_model("tiny-resnet").eval()
    batches = [torch.randn(8, 1, 12, 12) for _ in range(2)]
    return model, batches, find_groups(model, batches[0][:1])


def test_group_consumers_follow_the_residual_stream():
    model, batches, groups = _tiny()
    cons = group_consumers(model, groups, batches[0])
    stem = next(g for g in groups if "conv1" in g.members and "layer1.0.conv2" in g.members)
    readers = {c.name for c in cons[stem.key]}
    assert {"layer1.0.conv1", "layer2.0.conv1", "layer2.0.shortcut.0"} <= readers
    assert all(len(c.layer_idx) == len(c.root_idx) == stem.width for c in cons[stem.key])


def test_thinet_is_registered_and_scores_every_group():
    model, batches, groups = _tiny()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    scores = CRITERIA.get("thinet")(model, groups, batches, samples=128)
    assert set(scores) == {g.key for g in groups}
    for g in groups:
        assert scores[g.key].shape == (g.width,) and torch.all(scores[g.key] >= 0)
        assert len(set(scores[g.key].tolist())) == g.width
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert thinet_scores(model, groups, batches, samples=128)["conv1"].equal(scores["conv1"])  # seeded
