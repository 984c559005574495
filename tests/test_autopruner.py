"""AutoPruner: gates go binary at the target kept fraction, read out consistently, leave no trace."""
from __future__ import annotations

import copy

import pytest
import torch

from edgecompress.errors import UserError
from edgecompress.pruning import CRITERIA, PruningPlan, find_groups
from edgecompress.pruning.autopruner import train_gates
from edgecompress.zoo import create_model


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    model = create_model("tiny-resnet").eval()
    batches = [torch.randn(6, 1, 8, 8) for _ in range(2)]
    return model, batches, find_groups(model, batches[0][:1])


@pytest.fixture(scope="module")
def trained(tiny):
    model, batches, groups = tiny
    state = copy.deepcopy(model.state_dict())
    return state, train_gates(model, groups, batches, target=0.5, steps=25, alpha_end=60.0)


def test_gates_converge_to_a_binary_mask_at_the_target(tiny, trained):
    model, batches, groups = tiny
    state, result = trained
    assert set(result.codes) == {g.key for g in groups}
    for key, v in result.codes.items():
        undecided = ((v > 0.05) & (v < 0.95)).float().mean()
        assert undecided <= 0.15, (key, v)
        assert abs(float((v > 0.5).float().mean()) - 0.5) <= 0.2, (key, v)
    assert result.alpha >= 60.0 - 1e-6                  # α grew at least along its schedule
    assert result.history[-1]["alpha"] > result.history[0]["alpha"]
    # gates removed, network weights, requires_grad and mode restored
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    assert all(not m._forward_pre_hooks for m in model.modules())
    assert all(p.requires_grad for p in model.parameters()) and not model.training


def test_scores_put_the_gate_keep_set_first(tiny, trained):
    _, _, groups = tiny
    result = trained[1]
    scores, keep = result.scores(), result.keep_sets()
    agree = total = 0
    for g in groups:
        top = torch.argsort(scores[g.key], descending=True)[:len(keep[g.key])]
        assert sorted(top.tolist()) == keep[g.key]
        assert len(set(scores[g.key].tolist())) == g.width          # graded, not binary ties
        agree += int(((result.codes[g.key] > 0.5) == (result.logits[g.key] > 0)).sum())
        total += g.width
    assert agree >= 0.9 * total       # the keep set is the binary code's


def test_autopruner_is_a_criterion_of_the_plan(tiny):
    model, batches, _ = tiny
    plan = PruningPlan.build(model, batches, criterion="autopruner", allocation="uniform", steps=5, target=0.5)
    pruned = plan.prune(0.5)
    assert sum(p.numel() for p in pruned.parameters()) < sum(p.numel() for p in model.parameters())
    assert pruned(batches[0]).shape == (6, 10)
    assert "autopruner" in CRITERIA


def test_bad_target_is_a_user_error(tiny):
    model, batches, groups = tiny
    with pytest.raises(UserError):
        train_gates(model, groups, batches, target=0.0, steps=1)
