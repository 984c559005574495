"""Least-squares reconstruction: channel recovery from weights, error never increases, folding."""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from edgecompress.errors import UserError
from edgecompress.pruning import PruningPlan
from edgecompress.pruning.reconstruct import channel_maps, reconstruct
from edgecompress.pruning.thinet import contributions
from edgecompress.zoo import create_model


def test_channel_maps_recovers_the_kept_indices():
    torch.manual_seed(0)
    w = torch.randn(10, 7, 3, 3)
    out_idx, in_idx = torch.tensor([9, 2, 4, 5]), torch.tensor([0, 3, 6])
    got = channel_maps(w, w[out_idx][:, in_idx].clone())
    assert got[0].tolist() == out_idx.tolist() and got[1].tolist() == in_idx.tolist()
    lin = torch.randn(6, 8)
    lin[:, 2] = 0.0                                       # repeated values are outvoted
    assert channel_maps(lin, lin[:, [1, 2, 5]].clone())[1].tolist() == [1, 2, 5]
    with pytest.raises(UserError):
        channel_maps(w, w[out_idx][:, in_idx] + 0.01)     # fine-tuned weights: refuse, do not guess


def _pruned_tiny():
    torch.manual_seed(0)
    model = create_model("tiny-resnet").eval()
    for m in model.modules():   # non-trivial BN so the pruned outputs really differ
        if isinstance(m, nn.BatchNorm2d):
            m.weight.data.uniform_(0.5, 1.5), m.bias.data.normal_(0, 0.5), m.running_mean.normal_(0, 0.2)
    batches = [torch.randn(8, 1, 12, 12) for _ in range(2)]
    plan = PruningPlan.build(model, batches, criterion="l1", allocation="uniform")
    return model, plan.prune(0.5), batches


def _sampled_error(pruned, original, name, fit, batches, out_idx) -> float:
    """Recompute the layer's squared error at the fit's positions from scratch."""
    got = {}
    for tag, model in (("p", pruned), ("o", original)):
        mod = model.get_submodule(name)
        h = mod.register_forward_hook(lambda m, i, o, tag=tag: got.setdefault(tag, []).append(o - m.bias[:, None, None]
                                                                                                 if m.bias is not None else o))
        with torch.no_grad():
            for b in batches:
                model(b)
        h.remove()
    yp, yo, pos = torch.cat(got["p"]), torch.cat(got["o"]), fit.positions
    return float(((yo[(pos[0], out_idx[pos[1]], *pos[2:])] - yp[pos]).double() ** 2).sum())


def test_least_squares_never_increases_the_sampled_error():
    original, pruned, batches = _pruned_tiny()
    snapshot = copy.deepcopy(original.state_dict())
    before = copy.deepcopy(pruned)
    fits = reconstruct(pruned, original, batches, samples=256)
    assert fits, "tiny-resnet at half the channels has layers with pruned inputs"
    for name, fit in fits.items():
        assert fit.after <= fit.before * (1 + 1e-9), name
    assert any(f.after < 0.99 * f.before for f in fits.values())
    # The fitted scales were folded into the weights, column by column.
    for name, fit in fits.items():
        w0, w1 = before.get_submodule(name).weight, pruned.get_submodule(name).weight
        assert torch.allclose(w1, w0 * fit.scales.reshape((1, -1) + (1,) * (w0.dim() - 2)), atol=1e-6)
    # The first fitted layer sees the same inputs before and after: recompute its error directly.
    first = next(iter(fits))
    if pruned.get_submodule(first).weight.dim() == 4:
        out_idx = channel_maps(original.get_submodule(first).weight, before.get_submodule(first).weight)[0]
        assert _sampled_error(pruned, original, first, fits[first], batches, out_idx) == pytest.approx(
            fits[first].after, rel=1e-4)
        assert _sampled_error(before, original, first, fits[first], batches, out_idx) == pytest.approx(
            fits[first].before, rel=1e-4)
    assert all(torch.equal(snapshot[k], v) for k, v in original.state_dict().items())


def test_reconstruct_refuses_weights_changed_after_pruning():
    original, pruned, batches = _pruned_tiny()
    with torch.no_grad():
        for p in pruned.parameters():
            p.add_(0.01)
    with pytest.raises(UserError):
        reconstruct(pruned, original, batches)


def test_contributions_use_the_scaled_weights():
    conv = nn.Conv2d(3, 2, 3, padding=1, bias=False)
    x = torch.randn(1, 3, 4, 4)
    pos = (torch.tensor([0]), torch.tensor([1]), torch.tensor([2]), torch.tensor([3]))
    with torch.no_grad():
        base = contributions(conv, x, pos)
        conv.weight.mul_(torch.tensor([1.0, 2.0, -1.0]).reshape(1, 3, 1, 1))
        assert torch.allclose(contributions(conv, x, pos), base * torch.tensor([1.0, 2.0, -1.0]))
