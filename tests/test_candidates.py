"""The unpruned model is always a candidate: which candidate ships, and what the report says."""
from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from edgecompress.pruning.search import Budget, ProbeResult, SearchOutcome
from edgecompress.pipeline.stages.prune import UNPRUNED, PruneStage


class FakeProber:
    precision = "int8"

    def __init__(self, ratios: list[float]) -> None:
        self.ratios = ratios
        self.compared: list[list[ProbeResult]] = []

    def side_by_side(self, candidates):
        self.compared.append(candidates)
        return self.ratios[:len(candidates)]


def _ctx():
    notes: list[str] = []
    return SimpleNamespace(note=notes.append, notes=notes, ui=SimpleNamespace(say=lambda *_: None),
                           profile=SimpleNamespace(name="x86-cpu"))


def _probe(cr: float, acc: float, ms: float, mode: str = "width") -> ProbeResult:
    return ProbeResult(cr=cr, accuracy=acc, latency_ms=ms, mode=mode, accepted=True)


UNPRUNED_PROBE = dict(cr=1.0, accuracy=95.0, latency_ms=0.30, mode=UNPRUNED)


def _choose(ratios, outcomes, budget):
    ctx, prober = _ctx(), FakeProber(ratios)
    unpruned = ProbeResult(**UNPRUNED_PROBE)
    unpruned.accepted = budget.accepts(unpruned)
    outcome, mode, compared = PruneStage._choose(ctx, prober, outcomes, budget, unpruned)
    return outcome, mode, compared, ctx, prober


def test_fastest_pruned_candidate_ships_when_it_beats_the_unpruned_engine():
    outcomes = {"width": SearchOutcome(chosen=_probe(0.8, 94.2, 0.25), met=True),
                "depth": SearchOutcome(chosen=_probe(0.5, 94.5, 0.20, "depth"), met=True)}
    outcome, mode, compared, ctx, prober = _choose([1.0, 0.85, 0.62], outcomes, Budget(min_accuracy=94.0))
    assert mode == "depth" and outcome.chosen.mode == "depth"
    assert [c["mode"] for c in compared] == [UNPRUNED, "width", "depth"]
    assert prober.compared[0][0].mode == UNPRUNED        # every decision is against the unpruned engine
    assert not ctx.notes


def test_unpruned_ships_when_pruning_does_not_pay_side_by_side():
    """The probes' own latencies said faster; timed side by side it is within 3 %: unpruned ships."""
    outcomes = {"width": SearchOutcome(chosen=_probe(0.8, 94.2, 0.25), met=True)}
    outcome, mode, _, ctx, _ = _choose([1.0, 0.98], outcomes, Budget(min_accuracy=94.0))
    assert mode == UNPRUNED and outcome.chosen.cr == 1.0 and outcome.met
    assert any("pruning does not pay" in n for n in ctx.notes)


def test_a_latency_budget_the_unpruned_engine_meets_is_met_by_it():
    outcomes = {"width": SearchOutcome(chosen=_probe(0.7, 94.5, 0.2), met=True)}
    outcome, mode, _, _, prober = _choose([1.0, 0.5], outcomes, Budget(min_accuracy=94.0, max_latency_ms=0.35))
    assert mode == UNPRUNED and outcome.chosen.accuracy == 95.0
    assert not prober.compared   # nothing is more accurate: no timing needed


def test_a_latency_budget_below_the_unpruned_engine_ships_a_pruned_model():
    outcomes = {"width": SearchOutcome(chosen=_probe(0.7, 94.5, 0.2), met=True)}
    outcome, mode, _, _, _ = _choose([1.0, 0.5], outcomes, Budget(max_latency_ms=0.25))
    assert mode == "width" and outcome.chosen.cr == 0.7


def test_no_pruned_model_kept_the_accuracy():
    outcomes = {"width": SearchOutcome(chosen=_probe(1.0, 95.0, 0.3), met=False)}
    outcome, mode, _, ctx, _ = _choose([1.0], outcomes, Budget(min_accuracy=94.9))
    assert mode == UNPRUNED and outcome.met
    assert any("no pruned model kept the accuracy" in n for n in ctx.notes)


def test_nothing_prunable_ships_the_unpruned_model():
    outcome, mode, _, ctx, _ = _choose([1.0], {}, Budget(min_accuracy=94.0))
    assert mode == UNPRUNED and outcome.met
    assert any("nothing in this model can be pruned" in n for n in ctx.notes)


@pytest.mark.slow
def test_report_says_what_pruning_bought(reference_run):
    report = json.loads((reference_run / "report.json").read_text())
    unpruned, result = report["unpruned"], report["result"]
    assert set(unpruned) >= {"precision", "accuracy", "latency_ms", "latency_method"}
    assert unpruned["precision"] == report["precision"]
    if unpruned["shipped"]:
        assert report["pruning_speedup"] == 1.0 and result["params"] == report["baseline"]["params"]
    else:
        assert report["pruning_speedup"] == pytest.approx(unpruned["latency_ms"] / result["latency_ms"], rel=0.05)
    assert report["pruning"]["probe_precision"] in ("int8", "fp32", "fp16")
