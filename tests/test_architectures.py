"""Issue 15: every architecture family prunes what can be pruned, leaves the rest, never crashes.

The families are tiny re-implementations in tests/fixtures/arch_models.py, written the way the
public reference code writes them (chunk, slice, reshape by heads, attributes read in forward).
"""
from __future__ import annotations

import json
import warnings

import pytest
import torch
from torch import nn

from _faults import FIXTURES  # also puts the repository on sys.path, for tests.fixtures
from edgecompress.pruning import PruningPlan
from edgecompress.pruning.safety import Trial, screen
from tests.fixtures import arch_models as A

torch.set_num_threads(1)
X = torch.randn(8, 1, 12, 12, generator=torch.Generator().manual_seed(0))


def _params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# Groups a family legitimately keeps whole (family -> (a layer of the group, a word of the reason)).
# Every other group of every family is prunable, and every family has prunable groups: none of
# them is legitimately unprunable as a whole (the models that are: test_unprunable_models_*).
LEFT_WHOLE = {"csp": ("c2f.cv1.0", "split")}   # C2f's chunk(2) needs both halves equally wide


@pytest.fixture(scope="module")
def plans() -> dict[str, PruningPlan]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")   # Torch-Pruning's note on ViT's unwrapped pos_embed
        return {name: PruningPlan.build(factory(), [X]) for name, factory in A.FAMILIES.items()}


@pytest.mark.parametrize("family", list(A.FAMILIES))
@pytest.mark.parametrize("knob, multiple", [(0.7, 8), (0.0, 1)])
def test_family_prunes_runs_and_exports(plans, family, knob, multiple, tmp_path):
    from edgecompress.exporters.onnx import onnx_parity, to_onnx
    plan = plans[family]
    assert plan.groups, f"{family}: no prunable group"
    pruned = plan.prune(knob, multiple=multiple).eval()
    assert _params(pruned) < _params(plan.model)
    before, after = plan.widths(), plan.widths(pruned)
    assert any(after[k] < before[k] for k in before), (family, knob, after)
    assert pruned(X).shape == (8, A.CLASSES)
    assert all(m.weight.shape[0] > 0 for m in pruned.modules() if isinstance(m, (nn.Conv2d, nn.Linear)))
    path = to_onnx(pruned, tmp_path / "m.onnx", input_shape=(1, 12, 12))
    assert onnx_parity(pruned, path, X) < 1e-4


@pytest.mark.parametrize("family", list(A.FAMILIES))
def test_only_the_listed_groups_are_left_whole(plans, family):
    unprunable = plans[family].unprunable
    if family not in LEFT_WHOLE:
        assert unprunable == [], family
    else:
        layer, word = LEFT_WHOLE[family]
        assert len(unprunable) == 1 and layer in unprunable[0]["layers"] and word in unprunable[0]["reason"]


def test_grouped_convs_keep_equal_counts_per_group(plans):
    plan = plans["grouped"]
    pruned = plan.prune(0.3, multiple=1)
    for name, m in pruned.named_modules():
        if isinstance(m, nn.Conv2d) and m.groups > 1:
            original = dict(plan.model.named_modules())[name]
            assert m.groups == original.groups and m.out_channels % m.groups == 0
            assert m.out_channels < original.out_channels or name.endswith("b.0")


def test_ghost_primary_and_cheap_op_stay_paired(plans):
    pruned = plans["ghost"].prune(0.0, multiple=1)
    for m in pruned.modules():
        if isinstance(m, A.GhostModule):
            primary, cheap = m.primary_conv[0], m.cheap_operation[0]
            assert cheap.in_channels == cheap.groups == primary.out_channels >= 1
    assert not plans["ghost"].unprunable


def test_attention_prunes_head_dims_and_updates_the_module(plans):
    plan = plans["vit"]
    qkv = {g.key: g for g in plan.groups if g.key.endswith("attn.qkv")}
    assert qkv and all(len(u) == 3 * 4 for g in qkv.values() for u in g.units)   # q, k, v of 4 heads
    pruned = plan.prune(0.0, multiple=1)
    for m in pruned.modules():
        if isinstance(m, A.Attention):
            assert m.num_heads == 4 and m.head_dim == m.qkv.out_features // 12 < 8
            assert m.proj.in_features == m.num_heads * m.head_dim


def test_torch_multihead_attention_keeps_heads_equal(plans):
    pruned = plans["vit_torch_mha"].prune(0.3, multiple=1)
    for m in pruned.modules():
        if isinstance(m, nn.MultiheadAttention):
            assert m.embed_dim % m.num_heads == 0 and m.embed_dim < 32


def test_csp_chunk_group_is_left_whole_and_reported(plans):
    plan = plans["csp"]
    assert len(plan.unprunable) == 1
    item = plan.unprunable[0]
    assert set(item) == {"layers", "reason"} and "c2f.cv1.0" in item["layers"] and "split" in item["reason"]
    pruned = plan.prune(0.0, multiple=1)
    assert pruned.c2f.cv1[0].out_channels == 32 and pruned.csp.cv1[0].out_channels < 16


class HardCodedWidth(nn.Module):
    """A forward that reshapes to its construction-time width: pruning conv1 breaks it."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(1, 8, 3, padding=1), nn.Conv2d(8, 8, 3, padding=1)
        self.fc = nn.Linear(8 * 144, 4)

    def forward(self, x):
        x = torch.relu(self.conv1(x))
        x = x.reshape(x.shape[0], 8, 144)[:, :, :].reshape(x.shape[0], 8, 12, 12)
        return self.fc(torch.relu(self.conv2(x)).flatten(1))


def test_a_group_that_breaks_the_forward_stays_whole():
    model = HardCodedWidth().eval()
    plan = PruningPlan.build(model, [X])
    assert [u["layers"] for u in plan.unprunable] == [["conv1"]]
    assert plan.unprunable[0]["reason"]
    pruned = plan.prune(0.0)
    assert pruned.conv1.out_channels == 8 and pruned.conv2.out_channels < 8
    assert pruned(X).shape == (8, 4)


def test_screen_finds_the_failing_group_among_many():
    plan = PruningPlan.build(HardCodedWidth().eval(), [X], safe=False)
    trial = Trial(plan.model, X[:1], X)
    good, bad = screen(plan.groups, trial)
    assert [g.key for g in good] == ["conv2"] and [b["layers"] for b in bad] == [["conv1"]]


class DataDependent(nn.Module):
    """Control flow on the data: Torch-Pruning traces the autograd graph of one forward, so the
    branch taken is followed like any other op and the conv is prunable."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.fc = nn.Conv2d(1, 4, 3), nn.Linear(4, 2)

    def forward(self, x):
        y = self.conv(x)
        if y.mean() > -1e9:   # always taken; fx could not trace this, Torch-Pruning can
            y = torch.relu(y)
        return self.fc(y.mean((2, 3)))


def test_data_dependent_forward_still_prunes():
    plan = PruningPlan.build(DataDependent(), [X])
    assert [g.key for g in plan.groups] == ["conv"] and plan.unprunable == []
    pruned = plan.prune(0.0)
    assert pruned.conv.out_channels < 4 and pruned.fc.in_features == pruned.conv.out_channels


class Detached(nn.Module):
    """The conv's output leaves autograd (a NumPy round trip): no graph links it to the classifier."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.fc = nn.Conv2d(1, 4, 3), nn.Linear(4, 2)

    def forward(self, x):
        y = torch.from_numpy(self.conv(x).detach().numpy().copy())
        return self.fc(y.mean((2, 3)))


class OnlyClassifier(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(144, 2)

    def forward(self, x):
        return self.fc(x.flatten(1))


# Models that legitimately have nothing to prune, and why: each gets an empty plan with a reason
# (and an unchanged copy from prune), not an exception.
UNPRUNABLE = {
    "detached": (Detached, "the graph Torch-Pruning traces does not reach the conv"),
    "only-classifier": (OnlyClassifier, "the classifier's outputs are the classes"),
}


@pytest.mark.parametrize("name", list(UNPRUNABLE))
def test_unprunable_models_get_an_empty_plan_that_says_why(name):
    factory, _why = UNPRUNABLE[name]
    model = factory().eval()
    plan = PruningPlan.build(model, [X])
    assert plan.groups == []
    assert [u["reason"] for u in plan.unprunable] == [
        "no Conv or Linear output besides the classifier and the ignored layers"]
    assert _params(plan.prune(0.0)) == _params(model)


# --- end to end: `compress` on each family (quick settings, random weights) ---------------------

@pytest.mark.slow
@pytest.mark.parametrize("family", list(A.FAMILIES))
def test_compress_end_to_end(family, tmp_path):
    from edgecompress.cli import main
    out = tmp_path / "run"
    argv = ["--target", "tiny-estimate", "--profiles", str(FIXTURES / "profiles"), "--max-acc-drop", "3",
            "--model", f"tests.fixtures.arch_models:{family}", "--data", "tests.tiny_specs:data",
            "--out", str(out), "--seed", "0", "--min-search-interval", "0.5", "--finetune-samples", "64",
            "--bn-batches", "1", "--batch-size", "64", "--threads", "1"]
    assert main(argv) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["result"]["params"] < report["baseline"]["params"], report["result"]
    assert all((out / path).exists() for path in report["artifacts"].values())
