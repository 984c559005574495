"""The search removes what costs time: removals ordered by importance per millisecond saved, from
a latency table (numbers given here: no model, no runtime)."""
from __future__ import annotations

from dataclasses import replace
from types import SimpleNamespace

import pytest

from edgecompress.pipeline.costs import removals
from edgecompress.pruning.cost import Removal, Structure, removal_order, structure
from edgecompress.pruning.depth import Block


def _block(name, d, s):
    return Removal(kind="block", name=name, deviation=d, saving_ms=s)


def _width(name, units, d, s, inside=None):
    return Removal(kind="width", name=name, units=units, deviation=d, saving_ms=s, inside=inside)


def _names(order):
    return [[(r.name, r.units) for r in step] for step in order]


def test_the_order_is_importance_per_millisecond_saved_not_importance_alone():
    # b1 matters least but saves nothing measurable; b3 matters 4x more than b2 but saves 10x more time
    order = removal_order([_block("b1", 0.1, 0.0), _block("b2", 1.0, 0.01), _block("b3", 4.0, 0.10)])
    assert _names(order) == [[("b3", 0)], [("b2", 0)]]


def test_width_steps_go_in_order_and_a_step_that_opens_a_saving_goes_with_it():
    # g's first step saves nothing alone (same kernel blocking), the second saves much: one step
    order = removal_order([_width("g", 48, 0.2, 0.0), _width("g", 32, 0.3, 0.05), _width("g", 16, 5.0, 0.01),
                           _block("b", 1.0, 0.02)])
    assert _names(order) == [[("g", 48), ("g", 32)], [("b", 0)], [("g", 16)]]


def test_a_removed_block_takes_its_inner_width_steps_with_it():
    order = removal_order([_block("layer1.0", 0.1, 0.05), _width("layer1.0.conv1", 8, 0.5, 0.01, inside="layer1.0")])
    assert _names(order) == [[("layer1.0", 0)]]


def test_ties_are_broken_by_name_so_the_order_is_reproducible():
    rs = [_block("b", 1.0, 0.1), _block("a", 1.0, 0.1)]
    assert _names(removal_order(rs)) == _names(removal_order(list(reversed(rs)))) == [[("a", 0)], [("b", 0)]]


def test_the_knob_keeps_a_fraction_of_the_latency_and_smaller_never_keeps_more():
    order = removal_order([_block("b1", 1.0, 0.10), _block("b2", 2.0, 0.10), _width("g", 8, 0.5, 0.05)])
    assert structure(order, 1.0, reference_ms=1.0).blocks == []
    previous = None
    for knob in [1.0, 0.95, 0.9, 0.85, 0.8, 0.75, 0.7, 0.0]:
        s = structure(order, knob, reference_ms=1.0)
        assert s.predicted_ms <= knob + 1e-9 or len(s.blocks) == 2
        removed = set(s.blocks) | set(s.counts)
        assert previous is None or previous <= removed
        previous = removed
    assert structure(order, 0.0, reference_ms=1.0).predicted_ms == pytest.approx(0.9 * 0.9 * 0.95)


def test_savings_compose_as_fractions_of_what_is_left_so_many_never_predict_below_zero():
    order = removal_order([_block(f"b{i}", 1.0, 0.03) for i in range(40)])   # 40 x 3 %: summed, -20 %
    s = structure(order, 0.0, reference_ms=0.1)
    assert len(s.blocks) == 40
    assert s.predicted_ms == pytest.approx(0.1 * 0.7 ** 40)
    assert s.predicted_ms > 0


def test_table_savings_count_only_what_the_protocol_resolves():
    blocks = [Block(name="layer1.0", stage=0, score=0.1)]
    table = {"entries": {"block:layer1.0": {"kind": "block", "name": "layer1.0", "units": 0, "deviation": 0.1},
                         "width:layer1.0.conv1:8": {"kind": "width", "name": "layer1.0.conv1", "units": 8,
                                                    "deviation": 0.3},
                         "width:layer1.0.conv1:4": {"kind": "width", "name": "layer1.0.conv1", "units": 4,
                                                    "deviation": 0.7}},
             "ratios": {"block:layer1.0": {"ratio": 0.8, "low": 0.79, "high": 0.81},       # saves 20 %
                        "width:layer1.0.conv1:8": {"ratio": 0.99, "low": 0.97, "high": 1.01},  # interval holds 1
                        "width:layer1.0.conv1:4": {"ratio": 0.9, "low": 0.89, "high": 0.91}}}
    priced = {(r.kind, r.units): r for r in removals(table, reference_ms=2.0, blocks=blocks)}
    assert priced[("block", 0)].saving_ms == pytest.approx(0.4)
    assert priced[("width", 8)].saving_ms == 0.0
    # against the group's last measurable step (here the full width: the step to 8 was not), on the 1 % grid
    assert priced[("width", 4)].saving_ms == pytest.approx(2.0 * 0.10)
    assert priced[("width", 4)].deviation == pytest.approx(0.4)              # marginal deviation
    assert priced[("width", 4)].inside == "layer1.0"


def test_a_block_within_the_compile_to_compile_noise_saves_nothing():
    blocks = [Block(name="b", stage=0, score=0.1)]
    table = {"entries": {"block:b": {"kind": "block", "name": "b", "units": 0, "deviation": 0.1}},
             "ratios": {"block:b": {"ratio": 0.98, "low": 0.975, "high": 0.985}}}   # 2 %: below what resolves
    assert removals(table, reference_ms=1.0, blocks=blocks)[0].saving_ms == 0.0


def test_a_block_counts_when_real_and_beyond_the_noise_on_its_median():
    """Timed in a fresh process the intervals are +-2 %: a block saving 4 % [2.5, 6] counts (a 3 %
    bar on the interval's far end let only 4 of ResNet-20's 39 removals in); one whose interval
    holds 1, or whose median is within the noise, does not."""
    blocks = [Block(name=n, stage=0, score=0.1) for n in "abc"]
    ratios = {"a": (0.96, 0.94, 0.975), "b": (0.96, 0.93, 1.01), "c": (0.975, 0.96, 0.985)}
    table = {"entries": {f"block:{n}": {"kind": "block", "name": n, "units": 0, "deviation": 0.1} for n in "abc"},
             "ratios": {f"block:{n}": dict(zip(("ratio", "low", "high"), r)) for n, r in ratios.items()}}
    saving = {r.name: r.saving_ms for r in removals(table, reference_ms=1.0, blocks=blocks)}
    assert saving == {"a": pytest.approx(0.04), "b": 0.0, "c": 0.0}


def test_width_steps_in_the_table_are_spaced_fractions_of_the_group():
    from edgecompress.pipeline.costs import spaced
    assert spaced([64, 60, 56, 52, 48, 44, 40, 36, 32, 28, 24, 20, 16, 12, 8], 3) == [48, 32, 16]
    assert spaced([16, 12, 8], 3) == [12, 8]


def test_a_cached_table_is_reused_only_for_the_same_key_and_the_same_entries(tmp_path):
    from edgecompress.pipeline.costs import TableCache
    entries = {"block:b": {}, "width:g:8": {}}
    measured = {"ratios": {"block:b": {"ratio": 0.9, "low": 0.89, "high": 0.91},
                           "width:g:8": {"ratio": 0.97, "low": 0.96, "high": 0.98}}, "timing": {"blocks": 30}}
    path = tmp_path / "t.json"
    TableCache(path, {"model": "m1"}).save(measured)
    hit = TableCache(path, {"model": "m1"}).load(entries)
    assert hit["ratios"] == measured["ratios"] and hit["timing"]["cached"] == str(path)
    assert hit["timing"]["measured"].startswith("20")                     # when, from the file only
    assert TableCache(path, {"model": "m2"}).load(entries) is None                 # another model (or machine)
    assert TableCache(path, {"model": "m1"}).load({**entries, "block:c": {}}) is None   # an entry not timed
    assert TableCache(tmp_path / "none.json", {"model": "m1"}).load(entries) is None


def test_the_cache_key_sees_every_weight_and_is_off_when_the_directory_is_empty(monkeypatch):
    import torch
    from types import SimpleNamespace
    from edgecompress.pipeline.costs import TableCache, model_digest
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.BatchNorm2d(2))
    before = model_digest(model)
    with torch.no_grad():
        model[1].running_var[0] += 1e-3
    assert model_digest(model) != before
    ctx = SimpleNamespace(target=SimpleNamespace(latency_source="estimate"))
    assert TableCache.for_run(ctx, precision="int8", multiple=4) is None            # estimates have no noise
    monkeypatch.setenv("EDGECOMPRESS_CACHE_DIR", "")
    ctx.target.latency_source = "local"
    assert TableCache.for_run(ctx, precision="int8", multiple=4) is None


def test_skipping_ahead_looks_past_the_step_that_broke_the_accuracy_but_not_into_its_group():
    from edgecompress.pruning.cost import skip_candidates, with_step
    order = removal_order([_block("b1", 1.0, 0.10), _width("g", 12, 0.1, 0.04), _width("g", 8, 0.2, 0.04),
                           _block("b2", 3.0, 0.10), _block("b3", 9.0, 0.10)])
    assert _names(order) == [[("g", 12)], [("g", 8)], [("b1", 0)], [("b2", 0)], [("b3", 0)]]
    s = structure(order, 0.97, reference_ms=1.0)          # the bisection stopped after g -> 12
    assert s.steps == 1 and s.counts == {"g": 12}
    assert skip_candidates(order, s, 2) == [2, 3]          # step 1 (g -> 8) broke it; the blocks after it
    s2 = with_step(s, order[2], 2, reference_ms=1.0)
    assert s2.blocks == ["b1"] and s2.counts == {"g": 12} and s2.steps == 3
    assert s2.predicted_ms == pytest.approx(0.96 * 0.9)
    assert s.blocks == []                                  # with_step copies
    assert skip_candidates(order, structure(order, 0.0, reference_ms=1.0), 2) == []   # nothing past the end
    # the first step broke it: the same group's next step (which includes its narrowing) is not tried
    assert skip_candidates(order, Structure(), 3) == [2, 3, 4]


def _resnet20_table():
    """A ResNet-20, an input, its pruning plan and its latency table's entries (every channel multiple)."""
    import torch

    from edgecompress.pipeline.costs import table_entries
    from edgecompress.pruning import PruningPlan
    from edgecompress.pruning.depth import removable_blocks
    from edgecompress.zoo import create_model
    torch.manual_seed(0)
    model = create_model("resnet20").eval()
    x = torch.randn(2, 1, 28, 28)
    plan = PruningPlan.build(model, [x])
    blocks = [Block(name=n, stage=0, score=0.0) for n in removable_blocks(model)]
    return model, x, plan, table_entries(plan, blocks, multiple=1, min_channels=1)


def test_removals_that_take_the_same_work_away_share_one_timed_engine():
    """Like blocks of one stage (and one width step of each) cost the same wherever they sit: one
    signature, so the table times one engine for them; the stage's downsampling block, another
    stage's blocks and another width differ."""
    from edgecompress.pipeline.costs import cost_signature, entry_model, input_shapes
    model, x, plan, entries = _resnet20_table()
    shapes = input_shapes(model, x[:1])
    sig = {name: cost_signature(model, entry_model(plan, e), shapes) for name, e in entries.items()}
    stage1 = [n for n in sig if n.startswith("block:layer1.")]
    assert len(stage1) >= 2 and len({sig[n] for n in stage1}) == 1
    stage2 = [n for n in sig if n.startswith("block:layer2.")]
    assert sig[stage2[0]] != sig[stage1[0]]
    inner = {n: e for n, e in entries.items() if e["kind"] == "width" and ".conv1" in n and e["name"].startswith("layer1.")}
    by_units = {}
    for n, e in inner.items():
        by_units.setdefault(e["units"], set()).add(sig[n])
    assert len(by_units) >= 2 and all(len(s) == 1 for s in by_units.values())
    assert len({next(iter(s)) for s in by_units.values()}) == len(by_units)   # another width, another cost
    assert len(set(sig.values())) < len(sig)


def test_a_kind_timed_with_all_its_members_at_once_shares_the_saving_and_the_bar():
    """Four like blocks removed at once run 10 % faster: each saves 2.5 %, measurable (the joint
    engine clears the compile-noise bar); one block timed alone at the same 2.5 % does not."""
    from edgecompress.pipeline.costs import per_member
    from edgecompress.targets.timing import Ratio
    blocks = [Block(name=f"b{i}", stage=0, score=0.1) for i in range(2)]
    entries = {f"block:b{i}": {"kind": "block", "name": f"b{i}", "units": 0, "deviation": 0.1} for i in range(2)}
    share = per_member(Ratio(0.90, 0.88, 0.92), 4)
    assert (share["ratio"], share["low"], share["high"], share["members"]) == pytest.approx((0.975, 0.97, 0.98, 4))
    table = {"entries": entries, "ratios": {"block:b0": share, "block:b1": {"ratio": 0.975, "low": 0.97, "high": 0.98}}}
    saving = {r.name: r.saving_ms for r in removals(table, reference_ms=1.0, blocks=blocks)}
    assert saving == {"b0": pytest.approx(0.025), "b1": 0.0}


def test_the_engine_that_prices_a_kind_has_all_its_members_removed():
    from edgecompress.pipeline.costs import entry_model, kind_model
    from edgecompress.training.evaluation import macs_and_params
    model, x, plan, entries = _resnet20_table()
    stage1 = [e for n, e in entries.items() if n.startswith("block:layer1.")]
    joint, k = kind_model(plan, stage1, x[:1], alone=entry_model(plan, stage1[0]))
    one, k1 = kind_model(plan, stage1[:1], x[:1], alone=entry_model(plan, stage1[0]))
    full = macs_and_params(model, (1, 28, 28))[0]
    assert (k, k1) == (len(stage1), 1) and k >= 2
    saved = full - macs_and_params(joint, (1, 28, 28))[0]
    assert saved == pytest.approx(k * (full - macs_and_params(one, (1, 28, 28))[0]))
    assert joint(x).shape == model(x).shape


def test_a_probed_structure_is_trained_once_and_comes_back_as_trained(monkeypatch):
    """The chosen structure is rarely the last one probed: asked for again, the prober rebuilds it
    with the weights its probe trained instead of distilling it a second time (40 s of a default run)."""
    import torch

    from edgecompress.pipeline.stages import prune
    model, x, plan, _ = _resnet20_table()
    trained = []

    def fake_distill(student, *args, **kwargs):   # training moves the weights, differently each time
        trained.append(student)
        with torch.no_grad():
            next(student.parameters()).add_(len(trained))
    monkeypatch.setattr(prune, "distill", fake_distill)
    monkeypatch.setattr(prune, "recalibrate_bn", lambda *a, **k: None)
    config = SimpleNamespace(bn_batches=1, batch_size=2, seed=0, reconstruct=False, probe_finetune_steps=1,
                             temperature=4.0, alpha=0.9, finetune_lr=lambda task: 0.01, augment=False)
    data = SimpleNamespace(train_batches=lambda **k: [x], train=None, workers=0)
    ctx = SimpleNamespace(config=config, data=data, original=model, device="cpu", task=None,
                          results=SimpleNamespace(baseline=SimpleNamespace(bn_frozen=False)))
    prober = prune.Prober(ctx, plan, [], reference_ms=1.0)
    chosen, other = Structure(blocks=["layer1.1"]), Structure(blocks=["layer2.1"])
    first = {k: v.clone() for k, v in prober.model_for(chosen).state_dict().items()}
    prober.model_for(other)
    again = prober.model_for(chosen)
    assert len(trained) == 2, "asked for again, the chosen structure was trained again"
    assert all(torch.equal(first[k], v) for k, v in again.state_dict().items())
    longer = prober.model_for(replace(chosen, schedules=2))   # a near miss trained on: from its probe's weights
    assert len(trained) == 3 and prober.model_for(chosen) is not longer
    name = next(iter(first))
    assert torch.equal(longer.state_dict()[name], first[name] + 3)   # the probe's weights, one more schedule
    assert torch.equal(prober.model_for(chosen).state_dict()[name], first[name])   # the probe's own are kept


def test_removals_that_looked_measurable_are_priced_by_a_second_timing_of_them_alone(monkeypatch):
    """The winner's curse: the kinds picked out of the table for a low ratio are timed again with
    the original only, and that timing (which did not pick them) prices them; the others are not
    timed again, and an estimate (no noise) is taken as it is."""
    from edgecompress.pipeline import costs
    from edgecompress.pipeline.builder import ORIGINAL
    from edgecompress.targets.timing import Ratio
    ratios = {ORIGINAL: Ratio(1.0, 1.0, 1.0), "lucky": Ratio(0.88, 0.80, 0.95), "real": Ratio(0.90, 0.88, 0.92),
              "slow": Ratio(0.99, 0.95, 1.03), "pair": Ratio(0.92, 0.90, 0.94)}
    members = {ORIGINAL: 1, "lucky": 1, "real": 1, "slow": 1, "pair": 2}
    timed = []

    def second(target, builds, *, reference, **kw):
        timed.append(sorted(builds))
        again = {ORIGINAL: Ratio(1.0, 1.0, 1.0), "lucky": Ratio(1.0, 0.97, 1.03), "real": Ratio(0.91, 0.90, 0.92),
                 "pair": Ratio(0.93, 0.92, 0.94)}
        return SimpleNamespace(ratios={n: again[n] for n in builds}, blocks=12, seconds=3.0, stopped="precise")

    monkeypatch.setattr(costs, "relative_timing", second)
    ctx = SimpleNamespace(target=SimpleNamespace(latency_source="local"), ui=SimpleNamespace(say=lambda s: None))
    builds = {n: f"engine {n}" for n in ratios}
    out, record = costs.confirm(ctx, builds, ratios, members, per_engine_s=1.0)
    assert timed == [sorted([ORIGINAL, "lucky", "real", "pair"])]          # "slow" never looked measurable
    assert out["lucky"] == Ratio(1.0, 0.97, 1.03) and out["real"] == Ratio(0.91, 0.90, 0.92)
    assert out["slow"] == ratios["slow"]
    assert record["picked"] == ["lucky", "real", "pair"] and record["kept"] == ["real", "pair"]
    table = {"entries": {f"block:{n}": {"kind": "block", "name": n, "units": 0, "deviation": 0.1} for n in ("lucky", "real")},
             "ratios": {f"block:{n}": costs.per_member(out[n], 1) for n in ("lucky", "real")}}
    saving = {r.name: r.saving_ms for r in removals(table, reference_ms=1.0, blocks=[])}
    assert saving == {"lucky": 0.0, "real": pytest.approx(0.09)}
    ctx.target.latency_source = "estimate"
    assert costs.confirm(ctx, builds, ratios, members, per_engine_s=1.0) == (ratios, None) and len(timed) == 1


def test_an_estimated_table_counts_savings_under_the_compile_noise_bar():
    """A 2 % saving is under what two compiles differ by when timed, so it counts for nothing; an
    estimate has no compile noise, so there it counts (rounded to the 1 % resolution)."""
    table = {"entries": {"block:b": {"kind": "block", "name": "b", "units": 0, "deviation": 0.1},
                         "width:g:8": {"kind": "width", "name": "g", "units": 8, "deviation": 0.1}},
             "ratios": {"block:b": {"ratio": 0.98, "low": 0.98, "high": 0.98},
                        "width:g:8": {"ratio": 0.996, "low": 0.996, "high": 0.996}}}
    for stopped, expected in [("time cap", 0.0), ("remote", 0.0), ("estimate", pytest.approx(0.02))]:
        saving = {r.name: r.saving_ms for r in removals({**table, "timing": {"stopped": stopped}},
                                                         reference_ms=1.0, blocks=[])}
        assert saving == {"b": expected, "g": 0.0}


def test_blocks_only_keeps_the_chosen_blocks_adds_the_next_and_drops_every_width_cut():
    """Where the order put width cuts before a block, the structure with the chosen blocks and the
    next block and no cut is the one the bisection never reaches (an OpenVINO INT8 table did so)."""
    from edgecompress.pruning.cost import blocks_only
    order = removal_order([_block("b1", 1.0, 0.10), _width("g", 12, 0.1, 0.04), _width("h", 8, 0.2, 0.04),
                           _block("b2", 3.0, 0.10), _block("b3", 9.0, 0.10)])
    assert _names(order) == [[("g", 12)], [("h", 8)], [("b1", 0)], [("b2", 0)], [("b3", 0)]]
    chosen = structure(order, 0.9, reference_ms=1.0)     # g, h and b1
    assert chosen.counts == {"g": 12, "h": 8} and chosen.blocks == ["b1"]
    got = blocks_only(order, chosen, reference_ms=1.0)
    assert got.blocks == ["b1", "b2"] and got.counts == {} and got.predicted_ms == pytest.approx(0.9 * 0.9)
    assert got.predicted_ms < chosen.predicted_ms
    assert blocks_only(order, Structure(blocks=["b1"], predicted_ms=0.9), reference_ms=1.0) is None   # no cut: nothing to drop
    every = Structure(counts={"g": 12}, blocks=["b1", "b2", "b3"])
    assert blocks_only(order, every, reference_ms=1.0) is None                                        # no block left
