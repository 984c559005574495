"""The searcher driven by fake evaluations: budgets, the step move, checkpoint and resume."""
import math

import pytest

from edgecompress.pruning.search import Budget, ProbeResult, Searcher

BASE = 95.0


def fake(cr: float) -> ProbeResult:
    """Accuracy rises with cr; latency is a step function of cr (channels rounded to a multiple)."""
    accuracy = BASE - 10 * (1 - cr) ** 2
    latency = 1.0 + math.ceil(cr * 7) / 7 * 4  # 7 steps between 1 and 5 ms
    return ProbeResult(cr=cr, accuracy=accuracy, latency_ms=latency, flops=int(1e6 * cr), params=int(1e3 * cr))


class Counting:
    def __init__(self, fn=fake):
        self.fn, self.calls = fn, []

    def __call__(self, cr):
        self.calls.append(cr)
        return self.fn(cr)


def test_accuracy_budget_picks_fastest_within_budget_then_moves_up_the_step():
    ev = Counting()
    out = Searcher(ev, budget=Budget(min_accuracy=BASE - 1)).run()
    assert out.met and out.chosen.accuracy >= BASE - 1
    # 10 (1-cr)^2 <= 1  <=>  cr >= 1 - sqrt(0.1) = 0.6838; the step containing it ends at cr = 5/7
    assert 5 / 7 - 0.01 < out.chosen.cr <= 5 / 7
    assert out.moved_from is not None and out.moved_from < out.chosen.cr
    assert fake(out.moved_from).latency_ms == out.chosen.latency_ms
    assert any(fake(cr).accuracy < BASE - 1 for cr in ev.calls), "the bisection probed below the boundary"
    assert len(ev.calls) == len(set(ev.calls)), "a cr is never evaluated twice"


def test_latency_budget_alone_most_accurate_meeting_it():
    out = Searcher(fake, budget=Budget(max_latency_ms=3.0)).run()
    assert out.met and out.chosen.latency_ms <= 3.0
    # latency <= 3 ms  <=>  ceil(7 cr) <= 3.5  <=>  cr <= 3/7: the most accurate is at the top of that step
    assert 3 / 7 - 0.01 < out.chosen.cr <= 3 / 7


def test_both_budgets_met_together():
    out = Searcher(fake, budget=Budget(min_accuracy=BASE - 3, max_latency_ms=4.0)).run()
    assert out.met and out.chosen.accuracy >= BASE - 3 and out.chosen.latency_ms <= 4.0
    assert 5 / 7 - 0.01 < out.chosen.cr <= 5 / 7  # most accurate under 4 ms: top of the step ending at 5/7


def test_both_budgets_unreachable_together_reports_the_missed_limit():
    out = Searcher(fake, budget=Budget(min_accuracy=BASE - 1, max_latency_ms=2.0)).run()
    assert not out.met
    assert out.chosen.accuracy >= BASE - 1, "what ships keeps the accuracy promise"
    assert out.missed["latency_ms"] == pytest.approx(out.chosen.latency_ms - 2.0) and out.missed["latency_ms"] > 0
    assert out.alternative is not None and out.alternative.latency_ms <= 2.0
    assert out.alternative.accuracy < BASE - 1


def test_latency_budget_below_the_smallest_model():
    ev = Counting()
    out = Searcher(ev, budget=Budget(max_latency_ms=0.5)).run()
    assert not out.met and out.chosen.cr == 0.0
    assert out.missed["latency_ms"] == pytest.approx(fake(0.0).latency_ms - 0.5)
    assert 0.0 in ev.calls


def test_accuracy_budget_nothing_prunable_keeps_full_width():
    flat = lambda cr: ProbeResult(cr=cr, accuracy=BASE - 5 * (cr < 1), latency_ms=1 + cr)  # noqa: E731
    out = Searcher(flat, budget=Budget(min_accuracy=BASE - 1)).run()
    assert out.chosen.cr == 1.0 and out.met and out.notes


def test_interval_controls_probe_count():
    coarse, fine = Counting(), Counting()
    Searcher(coarse, budget=Budget(min_accuracy=BASE - 1), min_interval=0.1).run()
    Searcher(fine, budget=Budget(min_accuracy=BASE - 1), min_interval=0.01).run()
    assert len(coarse.calls) < len(fine.calls)


def test_checkpoint_after_every_probe_and_resume_continues_from_it():
    states = []
    full = Counting()
    ref = Searcher(full, budget=Budget(min_accuracy=BASE - 1), on_probe=states.append).run()
    assert len(states) == len(full.calls) and [len(s["probes"]) for s in states] == list(range(1, len(states) + 1))
    # "Kill" after the third probe: a new searcher built from that state evaluates only the rest.
    rest = Counting()
    resumed = Searcher(rest, budget=Budget(min_accuracy=BASE - 1), state=states[2])
    out = resumed.run()
    assert resumed.restored == 3 and rest.calls == full.calls[3:]
    assert out.chosen == ref.chosen and resumed.state() == states[-1]


def test_invalid_configuration():
    with pytest.raises(ValueError):
        Searcher(fake, budget=Budget())
    with pytest.raises(ValueError):
        Searcher(fake, budget=Budget(min_accuracy=90), min_interval=0)


def test_a_noisy_fast_measurement_of_a_larger_model_is_not_chosen():
    def noisy(cr):
        p = fake(cr)
        p.latency_ms = 1.0 + 4 * cr if cr != 0.875 else 0.5  # one probe measured during a lull
        return p
    out = Searcher(noisy, budget=Budget(min_accuracy=BASE - 1)).run()
    assert 0.6838 <= out.chosen.cr < 0.6838 + 0.01 and out.moved_from is None


def test_step_move_is_taken_only_when_the_side_by_side_retiming_agrees():
    """A single timing of cr 0.75 (the next step) read as fast as the chosen model; re-timed next
    to it, it is not, and the move goes to cr 0.70, which is on the chosen model's step."""
    def noisy(cr):
        p = fake(cr)
        if cr == 0.75:
            p.latency_ms = fake(0.7).latency_ms   # measured during a lull
        return p
    asked = []

    def confirm(candidate, chosen):
        asked.append(candidate.cr)
        return fake(candidate.cr).latency_ms == fake(chosen.cr).latency_ms   # the true step function
    earlier = noisy(0.70)
    earlier.accepted = True
    from dataclasses import asdict
    out = Searcher(noisy, budget=Budget(min_accuracy=BASE - 1), confirm_same=confirm,
                   state={"probes": [asdict(earlier)]}).run()
    assert asked[:2] == [0.75, 0.70], "the most accurate candidate is re-timed first"
    assert out.moved_from is not None and out.chosen.cr == 0.70


def test_no_move_when_the_retiming_disagrees_with_every_candidate():
    out = Searcher(fake, budget=Budget(min_accuracy=BASE - 1), confirm_same=lambda a, b: False).run()
    assert out.moved_from is None and 0.6838 <= out.chosen.cr < 0.6838 + 0.01


def test_with_retiming_the_step_move_probes_nothing_new():
    """Measured latency: the move only considers probes already made (each extra probe costs a
    distillation), so the search makes exactly the accuracy bisection's probes."""
    plain, confirmed = Counting(), Counting()
    Searcher(plain, budget=Budget(min_accuracy=BASE - 1)).run()
    Searcher(confirmed, budget=Budget(min_accuracy=BASE - 1), confirm_same=lambda a, b: True).run()
    bisection = [cr for cr in plain.calls if cr in confirmed.calls]
    assert confirmed.calls == bisection and len(confirmed.calls) < len(plain.calls)


def test_with_a_known_latency_the_step_move_probes_only_where_it_lands():
    """The table's prediction gives a probe's latency without training it: the move bisects on
    that and probes one cr, the largest of the chosen latency, and lands where probing would."""
    plain, predicted, bisection = Counting(), Counting(), Counting()
    ref = Searcher(plain, budget=Budget(min_accuracy=BASE - 1)).run()
    out = Searcher(predicted, budget=Budget(min_accuracy=BASE - 1), latency_of=lambda cr: fake(cr).latency_ms).run()
    Searcher(bisection, budget=Budget(min_accuracy=BASE - 1), confirm_same=lambda a, b: False).run()
    assert out.chosen.cr == ref.chosen.cr and out.moved_from == ref.moved_from
    assert predicted.calls == bisection.calls + [out.chosen.cr], "one probe for the move: where it lands"
    assert len(predicted.calls) < len(plain.calls)
