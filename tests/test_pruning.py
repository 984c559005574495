"""Contribution rates, keep counts, groups and physical pruning (on tiny models)."""
from __future__ import annotations

import copy
import random

import pytest
import torch
from torch import nn

from edgecompress.errors import UserError
from edgecompress.pruning import (ALLOCATIONS, CRITERIA, PruningPlan, channel_importance, contribution_rates,
                                  find_groups, keep_counts, prune_model, recalibrate_bn)
from edgecompress.pruning.groups import group_scores
from edgecompress.zoo import create_model


def _scores(seed: int, widths=(1, 3, 8, 16, 37, 64)) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    out = {f"g{w}": torch.rand(w, generator=gen, dtype=torch.float64) ** 4 for w in widths}
    out["zeros"] = torch.zeros(12, dtype=torch.float64)   # a dead group: all channels equal
    return out


def test_contribution_rates_sum_to_one():
    rates = contribution_rates(torch.tensor([1.0, 3.0, 0.0, 4.0]))
    torch.testing.assert_close(rates, torch.tensor([0.125, 0.375, 0.0, 0.5], dtype=torch.float64))
    torch.testing.assert_close(contribution_rates(torch.zeros(4)), torch.full((4,), 0.25, dtype=torch.float64))


def test_cr_keeps_the_fewest_channels_reaching_the_rate():
    s = {"g": torch.tensor([0.1, 0.4, 0.2, 0.3])}   # sorted rates .4 .3 .2 .1 -> cumulative .4 .7 .9 1
    assert [keep_counts(s, cr)["g"] for cr in (0.0, 0.4, 0.41, 0.7, 0.9, 0.95, 1.0)] == [1, 1, 2, 2, 3, 4, 4]


@pytest.mark.parametrize("multiple, min_channels", [(1, 1), (8, 1), (8, 8), (16, 4), (4, 20)])
def test_keep_counts_invariants_over_random_sweeps(multiple, min_channels):
    """Hypothesis-style sweep: rounding, clamping and monotonicity for many random score sets."""
    rng = random.Random(multiple * 100 + min_channels)
    for seed in range(20):
        scores = _scores(seed)
        crs = sorted(rng.random() for _ in range(25)) + [0.0, 1.0]
        crs.sort()
        previous = None
        for cr in crs:
            counts = keep_counts(scores, cr, multiple=multiple, min_channels=min_channels)
            for key, k in counts.items():
                width = len(scores[key])
                assert 1 <= k <= width
                assert k % multiple == 0 or k == width
                assert k >= min(min_channels, width)
                if previous is not None:
                    assert k >= previous[key], f"cr {cr} keeps fewer than a smaller cr in {key}"
            previous = counts
        full = keep_counts(scores, 1.0, multiple=multiple, min_channels=min_channels)
        assert full == {k: len(v) for k, v in scores.items()}


def test_cr_zero_keeps_min_channels_rounded_up_to_the_multiple():
    scores = {"a": torch.rand(64, dtype=torch.float64), "b": torch.rand(5, dtype=torch.float64)}
    assert keep_counts(scores, 0.0) == {"a": 1, "b": 1}
    assert keep_counts(scores, 0.0, multiple=8, min_channels=3) == {"a": 8, "b": 5}
    assert keep_counts(scores, 0.0, multiple=8, min_channels=12) == {"a": 16, "b": 5}


def test_uniform_allocation():
    scores = {"a": torch.rand(64, dtype=torch.float64), "b": torch.rand(10, dtype=torch.float64)}
    uniform = ALLOCATIONS.get("uniform")
    assert uniform(scores, 0.5) == {"a": 32, "b": 5}
    assert uniform(scores, 0.3) == {"a": 20, "b": 3}   # 0.3 * 10 must not round up to 4
    assert uniform(scores, 0.3, multiple=8) == {"a": 24, "b": 8}
    assert uniform(scores, 0.0, multiple=8) == {"a": 8, "b": 8}
    assert uniform(scores, 1.0, multiple=8) == {"a": 64, "b": 10}


@pytest.mark.parametrize("bad", [-0.1, 1.5, float("nan"), "high", None])
def test_knob_outside_unit_interval_is_a_user_error(bad):
    with pytest.raises(UserError, match="must be"):
        keep_counts({"a": torch.rand(4)}, bad)


def test_bad_rounding_is_a_user_error():
    for kwargs in ({"multiple": 0}, {"min_channels": 0}, {"multiple": 2.5}):
        with pytest.raises(UserError):
            keep_counts({"a": torch.rand(4)}, 0.5, **kwargs)


# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    model = create_model("tiny-resnet").eval()
    batches = [torch.randn(4, 1, 16, 16) for _ in range(2)]
    return model, batches


def test_groups_couple_residual_adds(tiny):
    model, batches = tiny
    groups = {g.key: g for g in find_groups(model, batches[0][:1])}
    members = {m for g in groups.values() for m in g.members}
    assert "fc" not in members
    stem = next(g for g in groups.values() if "conv1" in g.members)
    assert set(stem.members) == {"conv1", "layer1.0.conv2"}   # identity shortcut ties them
    assert stem.width == 8
    assert all(len(set(g.members)) == len(g.members) for g in groups.values())


def test_group_score_is_the_sum_over_members(tiny):
    model, batches = tiny
    groups = find_groups(model, batches[0][:1])
    layer = channel_importance(model, batches)
    scores = group_scores(groups, layer)
    for g in groups:
        torch.testing.assert_close(scores[g.key], sum(layer[m] for m in g.members))


def test_plan_prunes_a_new_smaller_model_and_leaves_the_input_alone(tiny):
    model, batches = tiny
    before = copy.deepcopy(model.state_dict())
    plan = PruningPlan.build(model, batches)
    pruned = plan.prune(0.5)
    assert pruned is not model
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    widths, original = plan.widths(pruned), plan.widths()
    assert sum(widths.values()) < sum(original.values())
    assert widths["fc"] == original["fc"]
    counts = plan.keep_counts(0.5)
    for g in plan.groups:
        for m in g.members:
            assert widths[m] == counts[g.key]
    assert pruned(batches[0]).shape == model(batches[0]).shape


def _masked_copy(model: nn.Module, plan: PruningPlan, removals: dict[str, list[int]]) -> nn.Module:
    """The unpruned model with every consumer's input weights on removed channels zeroed: the
    function a correct physical pruning must reproduce exactly."""
    import torch_pruning as tp
    masked = copy.deepcopy(model)
    graph = tp.DependencyGraph().build_dependency(masked, example_inputs=plan.example_input)
    modules = dict(masked.named_modules())
    for key, idxs in removals.items():
        if not idxs:
            continue
        root = modules[key]
        group = graph.get_pruning_group(root, graph.get_pruner_of_module(root).prune_out_channels, idxs)
        for item in group:
            module = item.dep.target.module
            depthwise = isinstance(module, nn.Conv2d) and module.groups > 1   # its own channel, masked downstream
            if isinstance(module, (nn.Conv2d, nn.Linear)) and not depthwise \
                    and graph.is_in_channel_pruning_fn(item.dep.handler):
                with torch.no_grad():
                    module.weight[:, item.idxs] = 0
    return masked


@pytest.mark.parametrize("name", ["tiny-resnet", "densenet-small", pytest.param("resnet29-bottleneck", marks=pytest.mark.slow),
                                  pytest.param("mobilenetv2", marks=pytest.mark.slow)])
def test_pruned_model_computes_what_the_masked_original_computes(name):
    """Index mapping check, concatenation offsets (DenseNet) and depthwise ties included."""
    torch.manual_seed(1)
    model = create_model(name).eval()
    batches = [torch.randn(2, 1, 16, 16)]
    plan = PruningPlan.build(model, batches)
    keep = plan.keep_indices(0.6)
    removals = {g.key: sorted(set(range(g.width)) - set(keep[g.key])) for g in plan.groups}
    assert any(removals.values())
    pruned = plan.prune(0.6)
    masked = _masked_copy(model, plan, removals)
    with torch.no_grad():
        torch.testing.assert_close(pruned(batches[0]), masked(batches[0]), rtol=1e-4, atol=1e-4)


def test_smaller_knob_never_keeps_more_channels(tiny):
    model, batches = tiny
    plan = PruningPlan.build(model, batches)
    previous = None
    for cr in [0.0, 0.2, 0.5, 0.8, 0.95, 1.0]:
        counts = plan.keep_counts(cr, multiple=4)
        if previous:
            assert all(counts[k] >= previous[k] for k in counts)
        previous = counts
    assert plan.widths(plan.prune(1.0)) == plan.widths()


def test_uniform_plan_keeps_the_same_ratio_everywhere(tiny):
    model, batches = tiny
    plan = PruningPlan.build(model, batches, allocation="uniform")
    counts = plan.keep_counts(0.5)
    assert counts == {g.key: g.width // 2 for g in plan.groups}


@pytest.mark.parametrize("criterion", ["permutation", "l1", "l2", "bn_scale", "taylor", "random"])
def test_every_criterion_scores_every_group(tiny, criterion):
    model, batches = tiny
    labelled = [(x, torch.randint(0, 10, (len(x),))) for x in batches]
    before = copy.deepcopy(model.state_dict())
    plan = PruningPlan.build(model, labelled, criterion=criterion)
    assert set(plan.scores) == {g.key for g in plan.groups}
    for g in plan.groups:
        assert plan.scores[g.key].shape == (g.width,)
        assert torch.isfinite(plan.scores[g.key]).all()
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(p.grad is None for p in model.parameters())
    assert plan.prune(0.5)(batches[0]).shape == (4, 10)


def test_share_reduction_ignores_a_members_output_scale(tiny):
    """Scaling the stem conv by 0.01 and its BatchNorm's statistics to match leaves the network's
    function unchanged; "share" must score the residual group the same, "sum" does not."""
    model, batches = tiny
    scaled = copy.deepcopy(model)
    with torch.no_grad():
        scaled.conv1.weight.mul_(0.01)
        scaled.bn1.running_mean.mul_(0.01)
        scaled.bn1.running_var.mul_(1e-4)
        scaled.bn1.eps *= 1e-4
    torch.testing.assert_close(scaled(batches[0]), model(batches[0]), rtol=1e-4, atol=1e-4)
    key = next(g.key for g in find_groups(model, batches[0][:1]) if "conv1" in g.members)
    before, after = (CRITERIA.get("permutation")(m, find_groups(m, batches[0][:1]), batches, group="share")[key]
                     for m in (model, scaled))
    torch.testing.assert_close(after, before, rtol=1e-4, atol=0)
    raw = [CRITERIA.get("permutation")(m, find_groups(m, batches[0][:1]), batches, group="sum")[key]
           for m in (model, scaled)]
    assert not torch.allclose(raw[0] / raw[0].sum(), raw[1] / raw[1].sum(), rtol=1e-2)
    with pytest.raises(UserError, match="group reduction"):
        CRITERIA.get("permutation")(model, find_groups(model, batches[0][:1]), batches, group="mean")


def test_criterion_spec_carries_options(tiny):
    model, batches = tiny
    from edgecompress.pruning.criteria import parse_spec
    assert parse_spec("permutation:group=share,draws=4") == ("permutation", {"group": "share", "draws": 4})
    by_spec = PruningPlan.build(model, batches, criterion="permutation:group=share")
    by_kwarg = PruningPlan.build(model, batches, criterion="permutation", group="share")
    assert all(torch.equal(by_spec.scores[k], by_kwarg.scores[k]) for k in by_kwarg.scores)
    with pytest.raises(UserError, match="has no option"):
        parse_spec("l1:p=3")


def test_one_default_criterion_for_the_library_and_the_pipeline(tiny):
    import inspect
    from edgecompress.pipeline.config import RunConfig
    from edgecompress.pruning.criteria import DEFAULT_CRITERION
    # both say "the engine's default", which is written once, in pruning.criteria
    assert inspect.signature(PruningPlan.build).parameters["criterion"].default is None is RunConfig.criterion
    assert DEFAULT_CRITERION in CRITERIA.names()
    model, batches = tiny
    assert PruningPlan.build(model, batches).criterion == DEFAULT_CRITERION


def test_registries_have_the_required_names():
    assert {"permutation", "l1", "l2", "bn_scale", "taylor", "random"} <= set(CRITERIA.names())
    assert {"cr", "uniform"} <= set(ALLOCATIONS.names())
    with pytest.raises(UserError, match="did you mean 'taylor'"):
        CRITERIA.get("tailor")


def test_ignored_layers_keep_their_channels(tiny):
    model, batches = tiny
    plan = PruningPlan.build(model, batches, ignored=["layer2.0.conv1"])
    pruned = plan.prune(0.3)
    assert plan.widths(pruned)["layer2.0.conv1"] == 16
    with pytest.raises(UserError, match="not a module"):
        PruningPlan.build(model, batches, ignored=["layer9.conv"])


def test_prune_model_one_shot(tiny):
    model, batches = tiny
    pruned = prune_model(model, 0.5, batches, multiple=4)
    widths = {n: m.weight.shape[0] for n, m in pruned.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))}
    assert all(w % 4 == 0 or w in (8, 16, 10) for w in widths.values())
    with pytest.raises(UserError, match="cr must be in"):
        prune_model(model, 1.2, batches)


@pytest.mark.parametrize("batches, needle", [
    ([], "no calibration batches"),
    ([torch.randn(2, 3, 16, 16)], "shape (1, 3, 16, 16)"),
])
def test_plan_bad_input(tiny, batches, needle):
    with pytest.raises(UserError) as err:
        PruningPlan.build(tiny[0], batches)
    assert needle in str(err.value)


def test_nothing_prunable_model_gets_a_plan_that_keeps_it_whole():
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 3))
    x = torch.randn(2, 1, 4, 4)
    plan = PruningPlan.build(model, [x])
    assert plan.groups == [] and plan.scores == {}
    assert plan.unprunable and "classifier" in plan.unprunable[0]["reason"]
    same = plan.prune(0.0, multiple=8)
    assert same is not model
    torch.testing.assert_close(same(x), model(x))


def test_recalibrate_bn_restores_statistics():
    torch.manual_seed(0)
    model = create_model("tiny-resnet")
    batches = [torch.randn(8, 1, 16, 16) * 3 + 1 for _ in range(3)]
    model.eval()
    recalibrate_bn(model, batches)
    bn = model.bn1
    with torch.no_grad():
        y = model.conv1(torch.cat(batches))
    torch.testing.assert_close(bn.running_mean, y.mean((0, 2, 3)), rtol=1e-4, atol=1e-4)
    assert not model.training and bn.momentum == 0.1
