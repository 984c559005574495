"""Binary search on the pruning knob (cr) under an accuracy budget, a latency budget, or both.

The searcher never touches a model or a runtime: `evaluate(cr) -> ProbeResult` is injected (the
pipeline prunes, recalibrates, measures; tests pass a fake). Its state is the list of probes done,
checkpointed through `on_probe` after every probe. Resuming is replay: the search runs again from
the start and every cr already probed is answered from the saved state, so it continues exactly
at the first probe that was not finished and reaches the same result as an uninterrupted run.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Callable


@dataclass
class ProbeResult:
    cr: float
    accuracy: float                 # validation top-1, percent
    latency_ms: float
    flops: int = 0                  # multiply-accumulates of one image
    params: int = 0
    widths: list[int] | None = None  # per-layer out-channels; equal widths -> equal latency
    accepted: bool = False
    mode: str = "width"             # what the knob removes: "width", "depth", "width+depth"; "unpruned"
    blocks_removed: list[str] | None = None   # residual blocks replaced by identity (depth)

    @classmethod
    def from_dict(cls, d: dict) -> "ProbeResult":
        return cls(**{k: d[k] for k in cls.__dataclass_fields__ if k in d})


ACCURACY_TOLERANCE = 1e-9   # float rounding of percentages: 94.02 kept at a floor of 95.02 - 1


@dataclass
class Budget:
    """What the user asked for, resolved once after the baseline (the baseline record keeps it):
    `min_accuracy` = baseline accuracy - --max-acc-drop, `max_latency_ms` = --latency-budget-ms.
    Every stage asks it (`keeps`), so the floor and its one comparison live here only."""

    min_accuracy: float | None = None
    max_latency_ms: float | None = None

    def keeps(self, accuracy: float | None) -> bool:
        """Whether `accuracy` keeps the accuracy promise (None: not measured, nothing to hold against it)."""
        return self.min_accuracy is None or accuracy is None or accuracy >= self.min_accuracy - ACCURACY_TOLERANCE

    def accuracy_ok(self, p: ProbeResult) -> bool:
        return self.keeps(p.accuracy)

    def latency_ok(self, p: ProbeResult) -> bool:
        return self.max_latency_ms is None or p.latency_ms <= self.max_latency_ms

    def accepts(self, p: ProbeResult) -> bool:
        return self.accuracy_ok(p) and self.latency_ok(p)


@dataclass
class SearchOutcome:
    chosen: ProbeResult
    met: bool                                   # every given budget is met by `chosen`
    missed: dict = field(default_factory=dict)  # {"latency_ms": by} / {"accuracy": by}: what it misses
    alternative: ProbeResult | None = None      # the model meeting the other limit, when not met
    moved_from: float | None = None             # cr before the same-latency step move
    notes: list[str] = field(default_factory=list)


class Searcher:
    """Bisection on cr in [0, 1] until the interval is narrower than `min_interval`.

    - accuracy budget alone: the smallest cr meeting the accuracy (the fewest channels);
    - latency budget alone: the most accurate probe whose latency meets the budget;
    - both: the most accurate probe meeting both if there is one; otherwise the model that keeps
      the accuracy promise (what ships must hold it) with the latency it misses by, plus the
      most accurate model under the latency budget as the alternative.
    Afterwards it moves to the largest cr whose latency equals the chosen one's (within
    `same_latency_rel`): latency is a step function of channel counts, so that accuracy is free.
    Measured latency is noisy, so with `confirm_same` (measured latency) the move considers only
    the probes already made and is taken only when `confirm_same` agrees after timing both models
    again side by side: bisecting on noisy timings spent 4 extra probes (150 s) in one default
    run only to have every move rejected by the re-timing. With `latency_of(cr)` (a latency known
    without a probe: the latency table's prediction) the move bisects on it and probes only where it
    lands: the move's probes past the step all had another latency and trained a model each for
    nothing (40 s of a default run).
    """

    def __init__(self, evaluate: Callable[[float], ProbeResult], *, budget: Budget,
                 min_interval: float = 0.01, same_latency_rel: float = 0.0,
                 state: dict | None = None, on_probe: Callable[[dict], None] | None = None,
                 confirm_same: Callable[[ProbeResult, ProbeResult], bool] | None = None,
                 latency_of: Callable[[float], float] | None = None) -> None:
        if budget.min_accuracy is None and budget.max_latency_ms is None:
            raise ValueError("a search needs an accuracy budget, a latency budget or both")
        if not 0 < min_interval < 1:
            raise ValueError("min_interval must be in (0, 1)")
        self._evaluate = evaluate
        self.budget = budget
        self.min_interval = min_interval
        self.same_latency_rel = same_latency_rel
        self.on_probe = on_probe
        self.confirm_same = confirm_same   # (candidate, chosen) -> same latency, re-timed side by side
        self.latency_of = latency_of       # cr -> latency without a probe (None: probe it)
        self.probes: list[ProbeResult] = [ProbeResult.from_dict(p) for p in (state or {}).get("probes", [])]
        self.restored = len(self.probes)
        self.evaluated = 0  # probes evaluated by this process (not restored)

    # -- state -----------------------------------------------------------------------------
    def state(self) -> dict:
        return {"probes": [asdict(p) for p in self.probes]}

    def probe(self, cr: float) -> ProbeResult:
        for p in self.probes:
            if p.cr == cr:
                return p
        p = self._evaluate(cr)
        p.cr = cr
        p.accepted = self.budget.accepts(p)
        self.probes.append(p)
        self.evaluated += 1
        if self.on_probe:
            self.on_probe(self.state())
        return p

    # -- search ----------------------------------------------------------------------------
    def _bisect(self, lo: float, hi: float, ok: Callable[[ProbeResult], bool], *, ok_high: bool) -> None:
        """Narrow [lo, hi] around the boundary of `ok` (true above it when ok_high, below otherwise)."""
        while hi - lo >= self.min_interval:
            mid = (lo + hi) / 2
            if ok(self.probe(mid)) == ok_high:
                hi = mid
            else:
                lo = mid

    def run(self) -> SearchOutcome:
        b = self.budget
        if b.max_latency_ms is None:
            self._bisect(0.0, 1.0, b.accuracy_ok, ok_high=True)
            return self._finish(self._smallest(self._accepted()), None)
        self._bisect(0.0, 1.0, b.latency_ok, ok_high=False)
        if not any(b.latency_ok(p) for p in self.probes):
            self.probe(0.0)  # the smallest model: is the latency budget reachable at all?
        if b.min_accuracy is None:
            fits = self._accepted()
            if not fits:
                smallest = self.probe(0.0)
                return SearchOutcome(chosen=smallest, met=False,
                                     missed={"latency_ms": smallest.latency_ms - b.max_latency_ms})
            return self._finish(max(fits, key=lambda p: (p.accuracy, -p.latency_ms)), None)
        if self._accepted():
            return self._finish(max(self._accepted(), key=lambda p: (p.accuracy, -p.latency_ms)), None)
        return self._both_missed()

    def _both_missed(self) -> SearchOutcome:
        """No probe meets both budgets: ship the accuracy-keeping model, say what latency it misses."""
        b = self.budget
        fast = [p for p in self.probes if b.latency_ok(p)]
        lo = max((p.cr for p in fast), default=0.0)
        self._bisect(lo, 1.0, b.accuracy_ok, ok_high=True)
        keeps = [p for p in self.probes if b.accuracy_ok(p)]
        alternative = max((p for p in self.probes if b.latency_ok(p)), key=lambda p: p.accuracy, default=None)
        if not keeps:
            # Not even the largest probe keeps the accuracy: the unpruned model (cr = 1) does.
            keeps = [self.probe(1.0)]
        chosen = self._fastest(keeps)
        out = self._finish(chosen, alternative)
        out.met = False
        out.missed = {"latency_ms": out.chosen.latency_ms - b.max_latency_ms}
        return out

    def _accepted(self) -> list[ProbeResult]:
        return [p for p in self.probes if p.accepted]

    @staticmethod
    def _smallest(candidates: list[ProbeResult]) -> ProbeResult | None:
        """The fewest channels (smallest cr): latency falls with channels, and a noisy measurement
        must not make a larger model look like the fastest; the step move then takes any larger
        cr whose latency is the same."""
        return min(candidates, key=lambda p: p.cr, default=None)

    @staticmethod
    def _fastest(candidates: list[ProbeResult]) -> ProbeResult | None:
        return min(candidates, key=lambda p: (p.latency_ms, -p.accuracy, -p.cr), default=None)

    def _finish(self, chosen: ProbeResult | None, alternative: ProbeResult | None) -> SearchOutcome:
        notes = []
        if chosen is None:
            # Accuracy budget only and no probe kept it: nothing can be pruned; ship cr = 1.
            chosen = self.probe(1.0)
            notes.append("no pruned probe kept the accuracy budget; the model is kept at full width")
        moved = self._step_move(chosen)
        return SearchOutcome(chosen=moved, met=self.budget.accepts(moved), alternative=alternative,
                             moved_from=chosen.cr if moved is not chosen else None, notes=notes)

    # -- same-latency step move ------------------------------------------------------------------
    def _same_bound(self, ref: ProbeResult) -> float:
        return ref.latency_ms * (1 + self.same_latency_rel) + 1e-12

    def _same_latency(self, p: ProbeResult, ref: ProbeResult) -> bool:
        return p.latency_ms <= self._same_bound(ref)

    def _latency_at(self, cr: float) -> float:
        known = next((p for p in self.probes if p.cr == cr), None)
        if known is not None or self.latency_of is None:
            return (known or self.probe(cr)).latency_ms
        return self.latency_of(cr)

    def _step_move(self, chosen: ProbeResult) -> ProbeResult:
        """Largest cr above `chosen` with the same latency, bisecting between probes already known."""
        if chosen.cr >= 1.0:
            return chosen
        above = sorted((p for p in self.probes if p.cr > chosen.cr), key=lambda p: p.cr)
        lo, hi = chosen.cr, 1.0
        for p in above:
            if self._same_latency(p, chosen):
                lo = p.cr
            else:
                hi = p.cr
                break
        while hi - lo >= self.min_interval and self.confirm_same is None:
            mid = (lo + hi) / 2
            if self._latency_at(mid) <= self._same_bound(chosen):
                lo = mid
            else:
                hi = mid
        if self.latency_of is not None and lo > chosen.cr:
            self.probe(lo)   # the largest cr of the same latency: the one probe the move needs
        same = [p for p in self.probes if chosen.cr < p.cr <= lo and self._same_latency(p, chosen)
                and p.accepted == chosen.accepted and self.budget.accuracy_ok(p) >= self.budget.accuracy_ok(chosen)
                and p.accuracy > chosen.accuracy]
        for p in sorted(same, key=lambda p: (p.accuracy, p.cr), reverse=True):
            if self.confirm_same is None or self.confirm_same(p, chosen):
                return p
        return chosen
