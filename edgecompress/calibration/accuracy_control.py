"""Accuracy-controlled precision selection: the promise holds for the engine that ships.

`PrecisionSelector` never imports a runtime: it is driven by an injected `evaluate(precision,
keep_float) -> (accuracy %, latency ms, details)` that builds the artifact for the target, runs it
in its own runtime on the validation split and measures latency; and an injected
`layer_sensitivity() -> ranked layers` used only when INT8 breaks the budget.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import asdict, dataclass, field
from typing import Callable, Sequence

from edgecompress.errors import UserError

FLOAT_PRECISIONS = ("fp16", "bf16", "fp32")
QUANTIZED = "int8"
MAX_FLOAT_LAYERS = 8

Evaluate = Callable[[str, tuple[str, ...]], tuple[float, "float | None", dict]]


@dataclass
class PrecisionRecord:
    """One built and measured artifact: a precision, with the layers that stayed float."""

    precision: str
    accuracy: float                 # percent, validation split, run in the target's runtime
    latency_ms: float | None        # None: not measured
    keep_float: tuple[str, ...]
    meets_budget: bool
    backend: str = ""               # which backend produced the artifact (e.g. "ort-qdq", "nncf")
    details: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        out = asdict(self)
        out["keep_float"] = list(self.keep_float)
        return out


@dataclass
class Selection:
    """The chosen record, every record tried (in order), and what happened, in words."""

    chosen: PrecisionRecord
    records: list[PrecisionRecord]
    budget_accuracy: float
    notes: list[str] = field(default_factory=list)
    sensitivity: list[tuple[str, float]] = field(default_factory=list)

    @property
    def precision(self) -> str:
        return self.chosen.precision

    def to_dict(self) -> dict:
        return {"precision": self.precision, "keep_float": list(self.chosen.keep_float),
                "budget_accuracy": self.budget_accuracy, "notes": list(self.notes),
                "chosen": self.chosen.to_dict(), "tried": [r.to_dict() for r in self.records],
                "sensitivity": [{"layer": n, "score": s} for n, s in self.sensitivity]}


class PrecisionSelector:
    """Pick the fastest precision whose measured accuracy meets `budget_accuracy` (percent).

    When INT8 misses it, the layers ranked most sensitive are returned to float one at a time
    (at most `max_float_layers` tries); if that fails, the best float precision is used and a
    note (and a warning) says so.
    """

    def __init__(self, *, evaluate: Evaluate, budget_accuracy: float, precisions: Sequence[str],
                 layer_sensitivity: Callable[[], Sequence] | None = None,
                 max_float_layers: int = MAX_FLOAT_LAYERS, skip_slower_fallback: bool = True) -> None:
        if not precisions:
            raise UserError("the target profile lists no precisions", "add e.g. precisions: [fp32, int8]")
        self.evaluate = evaluate
        self.budget_accuracy = budget_accuracy
        self.precisions = tuple(precisions)
        self.layer_sensitivity = layer_sensitivity
        self.max_float_layers = max_float_layers
        self.skip_slower_fallback = skip_slower_fallback
        self.records: list[PrecisionRecord] = []
        self.notes: list[str] = []
        self.sensitivity: list[tuple[str, float]] = []

    def select(self, precision: str = "auto") -> Selection:
        self.records, self.notes, self.sensitivity = [], [], []
        if precision == "auto":
            return self._auto()
        if precision not in self.precisions:
            raise UserError(f"precision {precision!r} is not supported by this target",
                            f"valid: auto, {', '.join(self.precisions)}")
        return self._forced(precision)

    # -- strategies ---------------------------------------------------------------------------

    def _auto(self) -> Selection:
        # Float first: their latency tells whether an INT8 fallback could still win.
        for p in sorted(self.precisions, key=lambda p: p == QUANTIZED):
            record = self._try(p, ())
            if p == QUANTIZED and not record.meets_budget:
                self._int8_fallback(record)
        passing = [r for r in self.records if r.meets_budget]
        if not passing:
            raise UserError(f"no precision meets the accuracy budget of {self.budget_accuracy:.2f}%: "
                            f"measured {self._summary()}",
                            "allow a larger --max-acc-drop or prune less")
        chosen = min(passing, key=lambda r: (_latency(r), -r.accuracy))
        if QUANTIZED in self.precisions and chosen.precision != QUANTIZED and not self._int8_passed():
            self._say(f"INT8 missed the budget ({self._best(QUANTIZED).accuracy:.2f}% < "
                      f"{self.budget_accuracy:.2f}%); fell back to {chosen.precision}")
        return self._selection(chosen)

    def _forced(self, precision: str) -> Selection:
        record = self._try(precision, ())
        if precision == QUANTIZED and not record.meets_budget:
            record = self._int8_fallback(record) or record
        if not record.meets_budget:
            best = self._best(precision)
            layers = f" with {len(best.keep_float)} layers kept float" if best.keep_float else ""
            raise UserError(f"--precision {precision}: measured accuracy {best.accuracy:.2f}%{layers} "
                            f"is below the budget of {self.budget_accuracy:.2f}%",
                            "use --precision auto, a larger --max-acc-drop, or prune less")
        return self._selection(record)

    def _int8_fallback(self, plain: PrecisionRecord) -> PrecisionRecord | None:
        """Return ranked layers to float one at a time; the first record meeting the budget."""
        if self._fallback_cannot_win(plain):
            return None
        ranked = self._ranking()
        for k in range(1, min(self.max_float_layers, len(ranked)) + 1):
            record = self._try(QUANTIZED, tuple(ranked[:k]))
            if record.meets_budget:
                self._say(f"INT8 met the budget with {k} layer(s) kept float: {', '.join(ranked[:k])}")
                return record
        self._say(f"INT8 missed the budget even with {min(self.max_float_layers, len(ranked))} "
                  f"most sensitive layer(s) kept float")
        return None

    def _fallback_cannot_win(self, plain: PrecisionRecord) -> bool:
        # Keeping layers float only adds float work and conversions, so a mixed engine is not
        # expected to beat plain INT8; when plain INT8 is already slower than a float precision
        # that meets the budget, the fallback's builds would be wasted.
        floats = [r for r in self.records if r.meets_budget and r.precision != QUANTIZED]
        if not (self.skip_slower_fallback and floats and plain.latency_ms is not None):
            return False
        fastest = min(floats, key=_latency)
        if plain.latency_ms >= _latency(fastest):
            self._say(f"INT8 layer fallback skipped: plain INT8 ({plain.latency_ms:.3f} ms) is "
                      f"already slower than {fastest.precision} ({_latency(fastest):.3f} ms), "
                      f"which meets the budget")
            return True
        return False

    # -- helpers ------------------------------------------------------------------------------

    def _try(self, precision: str, keep_float: tuple[str, ...]) -> PrecisionRecord:
        accuracy, latency_ms, details = self.evaluate(precision, keep_float)
        details = dict(details or {})
        record = PrecisionRecord(precision=precision, accuracy=float(accuracy),
                                 latency_ms=None if latency_ms is None else float(latency_ms),
                                 keep_float=tuple(keep_float),
                                 meets_budget=float(accuracy) >= self.budget_accuracy - 1e-9,
                                 backend=str(details.pop("backend", "")), details=details)
        self.records.append(record)
        return record

    def _ranking(self) -> list[str]:
        if self.layer_sensitivity is None:
            return []
        ranked = [(r, math.nan) if isinstance(r, str) else (r[0], float(r[1]))
                  for r in self.layer_sensitivity()]
        self.sensitivity = ranked
        return [name for name, _ in ranked]

    def _best(self, precision: str) -> PrecisionRecord:
        return max((r for r in self.records if r.precision == precision), key=lambda r: r.accuracy)

    def _int8_passed(self) -> bool:
        return any(r.meets_budget and r.precision == QUANTIZED for r in self.records)

    def _summary(self) -> str:
        return ", ".join(f"{r.precision}{'+%d float' % len(r.keep_float) if r.keep_float else ''} "
                         f"{r.accuracy:.2f}%" for r in self.records)

    def _say(self, note: str) -> None:
        self.notes.append(note)
        warnings.warn(note, UserWarning, stacklevel=3)

    def _selection(self, chosen: PrecisionRecord) -> Selection:
        return Selection(chosen=chosen, records=list(self.records), budget_accuracy=self.budget_accuracy,
                         notes=list(self.notes), sensitivity=list(self.sensitivity))


def _latency(record: PrecisionRecord) -> float:
    return math.inf if record.latency_ms is None else record.latency_ms


def choose_precision(*, evaluate: Evaluate, budget_accuracy: float, precisions: Sequence[str],
                     precision: str = "auto", layer_sensitivity: Callable[[], Sequence] | None = None,
                     max_float_layers: int = MAX_FLOAT_LAYERS) -> Selection:
    """One call: build a `PrecisionSelector` and select `precision` ("auto" or a forced one)."""
    selector = PrecisionSelector(evaluate=evaluate, budget_accuracy=budget_accuracy,
                                 precisions=precisions, layer_sensitivity=layer_sensitivity,
                                 max_float_layers=max_float_layers)
    return selector.select(precision)
