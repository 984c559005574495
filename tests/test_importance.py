"""Weight-permutation importance: the closed form against literal shuffles, the batched delta
convolution against the seed's per-channel loop, the BatchNorm site, and bad input."""
from __future__ import annotations

import itertools

import pytest
import torch
from torch import nn

from edgecompress.errors import UserError
from edgecompress.pruning import channel_importance, per_channel_loop
from edgecompress.pruning.importance import delta_output

# Sized so 2,000 random permutations average to within ~0.5 % (many positions per kernel entry)
# while the whole file stays a few seconds.
LAYERS = {
    "stride2": lambda: nn.Conv2d(16, 4, 3, stride=2, padding=1),
    "dilation2": lambda: nn.Conv2d(16, 4, 3, dilation=2, padding=0),
    "padding0": lambda: nn.Conv2d(16, 4, 3, padding=0),
    "padding1": lambda: nn.Conv2d(16, 4, 3, padding=1),
    "groups4": lambda: nn.Conv2d(32, 8, 3, padding=1, groups=4),
    "depthwise": lambda: nn.Conv2d(4, 4, 9, padding=4, groups=4),  # n = 81 kernel entries
    "linear": lambda: nn.Linear(128, 4),
}


def _input(name: str, layer: nn.Module) -> torch.Tensor:
    # a non-zero mean makes the (1.x) terms of the closed form matter
    if isinstance(layer, nn.Linear):
        return torch.randn(512, 128) + 0.3
    return torch.randn(8, layer.in_channels, 12, 12) + 0.3


@pytest.mark.parametrize("name", list(LAYERS))
def test_expected_matches_mean_of_2000_shuffles(name):
    torch.manual_seed(0)
    layer = LAYERS[name]()
    model = nn.Sequential(layer, nn.Identity())
    x = _input(name, layer)
    batches = [x[: len(x) // 2], x[len(x) // 2:]]   # two batches: accumulation across batches
    expected = channel_importance(model, batches, mode="expected", exclude=[])["0"]
    shuffled = channel_importance(model, batches, mode="shuffle", draws=2000, seed=1, exclude=[])["0"]
    rel = ((expected - shuffled).abs() / shuffled).max().item()
    assert rel <= 0.01, f"{name}: expected vs 2000 shuffles differ by {rel:.2%}"


def _exact_mean_over_all_permutations(layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    w = layer.weight.detach()
    flat = w.reshape(w.shape[0], -1)
    perms = list(itertools.permutations(range(flat.shape[1])))
    total = torch.zeros(w.shape[0], dtype=torch.float64)
    with torch.no_grad():
        for perm in perms:
            delta = (flat[:, list(perm)] - flat).reshape(w.shape)
            dy = delta_output(layer, x, delta).double()
            dy = dy.transpose(0, -1) if isinstance(layer, nn.Linear) else dy.transpose(0, 1)
            total += (dy ** 2).reshape(w.shape[0], -1).sum(1)
    return total / (len(perms) * x.shape[0])


@pytest.mark.parametrize("layer", [
    nn.Conv2d(1, 3, 2, stride=2, padding=1), nn.Conv2d(1, 3, 2, dilation=2, padding=(1, 0)),
    nn.Conv2d(4, 4, (1, 2), groups=2), nn.Conv2d(3, 3, 2, groups=3, padding=1), nn.Linear(4, 3),
    nn.Conv2d(1, 2, 2, padding=1, padding_mode="reflect")], ids=lambda m: repr(m))
def test_expected_is_exact_against_every_permutation(layer):
    """Kernels of 4 entries have 24 permutations: the closed form must equal their mean exactly.
    Weights re-drawn under a fixed seed: drawn at collection time they differed per run, and a
    rare draw cancels enough in float32 to reach the 1e-5 tolerance (worst of 150 draws: 9.8e-6)."""
    torch.manual_seed(1)
    layer.reset_parameters()
    torch.manual_seed(2)
    x = torch.randn(3, 4) + 0.5 if isinstance(layer, nn.Linear) else torch.randn(2, layer.in_channels, 5, 6) + 0.5
    model = nn.Sequential(layer, nn.Identity())
    expected = channel_importance(model, [x], mode="expected", exclude=[])["0"]
    exact = _exact_mean_over_all_permutations(layer, x)
    torch.testing.assert_close(expected, exact, rtol=1e-5, atol=1e-9)


def test_bias_is_excluded_from_the_deviation():
    torch.manual_seed(0)
    layer = nn.Conv2d(3, 4, 3, padding=1)
    x = [torch.randn(2, 3, 6, 6)]
    with_bias = channel_importance(nn.Sequential(layer, nn.Identity()), x, exclude=[])["0"]
    with torch.no_grad():
        layer.bias.add_(5.0)
    moved = channel_importance(nn.Sequential(layer, nn.Identity()), x, exclude=[])["0"]
    # the outputs are float32 (a bias of 5 moves their rounding); the importance is summed in float64
    torch.testing.assert_close(with_bias, moved, rtol=1e-5, atol=0)


def _small_net() -> nn.Module:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(2, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(),
                        nn.Conv2d(6, 5, 3, stride=2, groups=1), nn.ReLU(), nn.Flatten(),
                        nn.Linear(5 * 3 * 3, 7), nn.ReLU(), nn.Linear(7, 3))
    with torch.no_grad():   # non-trivial BatchNorm statistics, as after training
        net[1].running_var.uniform_(0.5, 2.0)
        net[1].weight.uniform_(0.2, 1.5)
    return net.eval()


@pytest.mark.parametrize("mode", ["shuffle", "zero", "reinit"])
def test_batched_delta_equals_the_seeds_per_channel_loop(mode):
    """One delta convolution for all channels == one full forward per channel (same draws)."""
    net = _small_net()
    batches = [torch.randn(3, 2, 8, 8), torch.randn(2, 2, 8, 8)]
    fast = channel_importance(net, batches, mode=mode, draws=2, seed=5)
    slow = per_channel_loop(net, batches, layers=list(fast), mode=mode, draws=2, seed=5)
    assert set(fast) == {"0", "3", "6"}   # the classifier "8" is not scored
    for name in fast:
        torch.testing.assert_close(fast[name], slow[name], rtol=1e-5, atol=1e-9)


def test_per_channel_loop_leaves_weights_untouched():
    net = _small_net()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    per_channel_loop(net, [torch.randn(2, 2, 8, 8)], layers=["0"], mode="shuffle")
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())


def test_seeded_and_deterministic():
    net, batches = _small_net(), [torch.randn(2, 2, 8, 8)]
    a = channel_importance(net, batches, mode="shuffle", draws=3, seed=1)
    b = channel_importance(net, batches, mode="shuffle", draws=3, seed=1)
    c = channel_importance(net, batches, mode="shuffle", draws=3, seed=2)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], c[k]) for k in a)
    e1, e2 = channel_importance(net, batches), channel_importance(net, batches)
    assert all(torch.equal(e1[k], e2[k]) for k in e1)


def test_bn_site_scales_by_gamma_over_sigma_squared():
    net, batches = _small_net(), [torch.randn(2, 2, 8, 8)]
    conv = channel_importance(net, batches, at="conv")
    bn = channel_importance(net, batches, at="bn")
    bn1 = net[1]
    scale = (bn1.weight.detach().double() ** 2 / (bn1.running_var.double() + bn1.eps))
    torch.testing.assert_close(bn["0"], conv["0"] * scale)
    torch.testing.assert_close(bn["3"], conv["3"])   # no BatchNorm follows: unscaled


def test_bn_site_matches_a_literal_shuffle_measured_after_the_bn():
    """The (gamma/sigma)^2 scaling is the deviation measured at the BatchNorm's output."""
    net, batches = _small_net(), [torch.randn(4, 2, 8, 8)]
    scores = channel_importance(net, batches, mode="zero", at="bn")["0"]
    body = net[:2]
    x = batches[0]
    with torch.no_grad():
        ref = body(x)
        literal = []
        for i in range(6):
            saved = net[0].weight[i].clone()
            net[0].weight[i].zero_()
            literal.append(((body(x) - ref) ** 2).sum().item() / x.shape[0])
            net[0].weight[i].copy_(saved)
    torch.testing.assert_close(scores, torch.tensor(literal, dtype=torch.float64), rtol=1e-4, atol=1e-8)


def test_model_and_training_flag_are_untouched():
    net = _small_net().train()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    channel_importance(net, [torch.randn(2, 2, 8, 8)], at="bn")
    assert net.training
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())


def test_batches_may_be_pairs_with_labels():
    net, x = _small_net(), torch.randn(2, 2, 8, 8)
    a = channel_importance(net, [x])
    b = channel_importance(net, [(x, torch.tensor([0, 1]))])
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("batches, needle", [
    ([], "no calibration batches"),
    ([torch.randn(2, 3, 8, 8)], "rejected calibration batch 0 of shape (2, 3, 8, 8)"),
    (["not a tensor"], "not a tensor"),
])
def test_bad_batches_are_user_errors(batches, needle):
    with pytest.raises(UserError) as err:
        channel_importance(_small_net(), batches)
    assert needle in str(err.value)
    assert err.value.hint


def test_bad_options_are_user_errors():
    net, batches = _small_net(), [torch.randn(2, 2, 8, 8)]
    for kwargs, needle in [({"mode": "shufle"}, "mode"), ({"at": "relu"}, "at="), ({"draws": 0}, "draws")]:
        with pytest.raises(UserError, match=needle):
            channel_importance(net, batches, **kwargs)


def test_nothing_prunable_is_a_user_error():
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 2))   # the only layer is the classifier
    with pytest.raises(UserError, match="nothing prunable"):
        channel_importance(model, [torch.randn(2, 4)])
