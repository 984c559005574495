"""CURL: batched KL equals the per-channel loop and physical removal; mixup."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from edgecompress.pruning import CRITERIA, find_groups
from edgecompress.pruning.curl import channel_kl, curl_scores, mixup, mixup_pairs
from edgecompress.pruning.groups import prune_copy
from edgecompress.pruning.thinet import group_consumers
from edgecompress.zoo import create_model


def _tiny(dtype=torch.float32):
    torch.manual_seed(0)
    model = create_model("tiny-resnet").eval()
    for m in model.modules():   # trained-looking BN, so removing a channel visibly moves the output
        if isinstance(m, torch.nn.BatchNorm2d):
            m.weight.data.uniform_(0.5, 2.0), m.bias.data.normal_(0, 0.5)
    x = torch.randn(5, 1, 10, 10)
    groups = find_groups(model, x[:1])
    return model.to(dtype), x.to(dtype), groups


def _loop_kl(model, consumers, x, j):
    """Reference: one forward per image with channel j zeroed where it is read."""
    def zero(module, inputs, c):
        y = inputs[0].clone()
        y[:, c.layer_idx[c.root_idx == j]] = 0
        return (y,)
    with torch.no_grad():
        ref = [F.log_softmax(model(x[i:i + 1]), 1) for i in range(x.shape[0])]
        hooks = [c.module.register_forward_pre_hook(lambda m, i, c=c: zero(m, i, c)) for c in consumers]
        try:
            masked = [F.log_softmax(model(x[i:i + 1]), 1) for i in range(x.shape[0])]
        finally:
            for h in hooks:
                h.remove()
    return torch.stack([(p.exp() * (p - q)).sum() for p, q in zip(ref, masked)]).mean()


def test_batched_kl_equals_the_per_channel_loop():
    model, x, groups = _tiny(torch.float64)
    cons = group_consumers(model, groups, x)
    x = x[:3]
    residual = next(g for g in groups if "layer1.0.conv2" in g.members)
    for g in (residual, groups[-1]):
        # chunk=7 with 3 images: 2 masked copies per forward, so chunk boundaries are crossed
        batched = channel_kl(model, cons[g.key], x, range(5), chunk=7)
        loop = torch.stack([_loop_kl(model, cons[g.key], x, j) for j in range(5)])
        assert torch.allclose(batched, loop.clamp(min=0), rtol=1e-8, atol=1e-14), g.key
        assert batched.max() > 0


def test_masking_at_the_consumers_is_physical_removal():
    # Zeroing a residual channel where it is read == deleting it (conv, BN, consumers' inputs).
    model, x, groups = _tiny()
    stem = next(g for g in groups if "layer1.0.conv2" in g.members)   # the residual stream of stage 1
    cons = group_consumers(model, groups, x)
    kl = channel_kl(model, cons[stem.key], x, [3])[0]
    smaller = prune_copy(model, x[:1], {stem.key: [3]}).eval()
    with torch.no_grad():
        p, q = F.log_softmax(model(x).double(), 1), F.log_softmax(smaller(x).double(), 1)
    assert float(kl) > 0
    assert float(kl) == pytest.approx(float((p.exp() * (p - q)).sum(1).mean()), rel=1e-3)


def test_curl_is_registered_and_scores_every_group():
    model, x, groups = _tiny()
    scores = CRITERIA.get("curl")(model, groups, [x[:2], x[2:]], images=3, chunk=96)
    assert set(scores) == {g.key for g in groups}
    assert all(scores[g.key].shape == (g.width,) and torch.all(scores[g.key] >= 0) for g in groups)
    # the chunk size only changes how many copies share a forward, not the scores
    again = curl_scores(model, groups[:1], [x], images=3, chunk=6)
    assert torch.allclose(scores[groups[0].key], again[groups[0].key], rtol=1e-3, atol=1e-9)


def test_mixup_mixes_within_the_batch():
    x = torch.stack([torch.full((1, 2, 2), float(i)) for i in range(6)])
    assert mixup(x, 0.0) is x
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    a, b = mixup(x, 0.4, generator=g1), mixup(x, 0.4, generator=g2)
    assert torch.equal(a, b)                                   # seeded: repeatable
    assert a.shape == x.shape and not torch.equal(a, x)
    # each image is λ·x_i + (1-λ)·x_perm(i): a convex mix stays within the batch's range
    assert a.min() >= 0 and a.max() <= 5 and torch.allclose(a.mean(), x.mean())


def test_mixup_pairs_say_how_to_mix_the_labels():
    x = torch.randn(8, 1, 3, 3)
    mixed, lam, perm = mixup_pairs(x, 0.3, generator=torch.Generator().manual_seed(0))
    assert 0 <= lam <= 1 and sorted(perm.tolist()) == list(range(8))
    assert torch.allclose(mixed, lam * x + (1 - lam) * x[perm])
