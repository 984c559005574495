"""What goes is decided by what it costs: removals ordered by importance per millisecond saved.

A *removal* is a whole residual block, or one width step of a channel group (the group keeps
the next smaller unit count its channel multiple allows, its least important channels going
first: the criterion's order). Each has
- an importance D: the seed's zero replacement taken at the network's output,
  E||logits(without it) - logits||^2 per image (the depth score; for width steps the deviation
  of the group narrowed by that step beyond the previous one), so blocks and channels are
  weighed in one unit;
- a price S: the latency it saves on the target at the shipped precision, from a table measured
  once per run (HALP's lookup table; estimated targets: the estimator).

One knob orders nothing: the order is fixed by D / S (least importance per millisecond saved
first; a group's width steps in order, merged where a later step pays for an earlier one; a
removal that saves nothing measurable never goes; the width steps of a group inside a removed
block go with it). The knob is the fraction of the original's latency to keep: `structure(knob)`
takes the shortest prefix of the order whose predicted latency reaches it, so a smaller knob
never keeps more. The binary search on the knob is the seed's.

Pure: no model, no runtime (the pipeline measures the table; tests pass numbers).
"""
from __future__ import annotations

import heapq
from dataclasses import asdict, dataclass, field


@dataclass(frozen=True)
class Removal:
    kind: str                    # "block" | "width"
    name: str                    # the block's module name, or the group's key
    deviation: float             # D (marginal for a width step)
    saving_ms: float             # S: latency saved (marginal for a width step); <= 0: nothing measurable
    units: int = 0               # width: the unit count the group keeps after this step
    inside: str | None = None    # width: the removable block that holds every layer of the group

    @classmethod
    def from_dict(cls, d: dict) -> "Removal":
        return cls(**d)


@dataclass
class Structure:
    """What a knob removes: unit counts per narrowed group, blocks replaced by identity."""
    counts: dict[str, int] = field(default_factory=dict)
    blocks: list[str] = field(default_factory=list)
    predicted_ms: float = 0.0
    steps: int = 0               # how far into the order it reaches (the last step taken + 1)
    schedules: int = 1           # probe-length trainings it gets (2: a near miss trained on once more)

    def key(self) -> str:
        key = repr((sorted(self.counts.items()), sorted(self.blocks)))
        return key if self.schedules == 1 else f"{key} x{self.schedules}"

    def describe(self) -> str:
        """How the run's output names it: `layer2.2, layer1.1 removed; layer1.0.conv1 to 8`."""
        parts = [f"{', '.join(self.blocks)} removed"] if self.blocks else []
        return "; ".join(parts + [f"{n} to {c}" for n, c in sorted(self.counts.items())])


def removal_order(removals: list[Removal]) -> list[list[Removal]]:
    """Steps of removals, cheapest importance per millisecond first (each step: one block, or one
    or more consecutive width steps of one group). Ties: by name, so the order is reproducible."""
    blocks = [r for r in removals if r.kind == "block" and r.saving_ms > 0]
    chains: dict[str, list[Removal]] = {}
    for r in removals:
        if r.kind == "width":
            chains.setdefault(r.name, []).append(r)
    heap: list[tuple[float, str, int, list[Removal]]] = []
    for b in blocks:
        heapq.heappush(heap, (_price(b.deviation, b.saving_ms), b.name, 0, [b]))
    for name, chain in chains.items():
        _push_chain(heap, name, chain, 0)
    order, gone = [], set()
    while heap:
        _, name, at, step = heapq.heappop(heap)
        if step[0].kind == "width":
            if step[0].inside in gone:
                continue   # its block went: nothing of it is left to narrow
            _push_chain(heap, name, chains[name], at + len(step))
        else:
            gone.add(name)
        order.append(step)
    return order


def _price(deviation: float, saving_ms: float) -> float:
    return max(deviation, 0.0) / saving_ms


def _push_chain(heap: list, name: str, chain: list[Removal], start: int) -> None:
    """Push the group's next step: from `start`, the run of width steps with the best cumulative
    price (a step that saves nothing alone may open a step that saves much)."""
    best, total_d, total_s = None, 0.0, 0.0
    for end in range(start, len(chain)):
        total_d, total_s = total_d + max(chain[end].deviation, 0.0), total_s + chain[end].saving_ms
        if total_s > 0 and (best is None or _price(total_d, total_s) < best[0]):
            best = (_price(total_d, total_s), end)
    if best is not None:
        heapq.heappush(heap, (best[0], name, start, chain[start:best[1] + 1]))


def structure(order: list[list[Removal]], knob: float, *, reference_ms: float) -> Structure:
    """The shortest prefix of `order` whose predicted latency is at most `knob` x the original's
    (all of it when none is); knob 1 removes nothing.

    Savings compose multiplicatively: a removal that saved a fraction f of the original saves f of
    what is left. Added up, a deep net's savings (ResNet-56: 105 entries of 1-3 % each) predicted
    negative latencies for its probes; a product never reaches zero, and for a few removals (the
    measured ResNet-20 case) it differs from the sum by under 1 % of the original."""
    out = Structure(predicted_ms=reference_ms)
    for i, step in enumerate(order):
        if out.predicted_ms <= knob * reference_ms + 1e-12:
            break
        out = with_step(out, step, i, reference_ms=reference_ms)
    return out


def with_step(s: Structure, step: list[Removal], index: int, *, reference_ms: float) -> Structure:
    """`s` with one more step of the order (the one at `index`) removed."""
    out = Structure(counts=dict(s.counts), blocks=list(s.blocks), predicted_ms=s.predicted_ms, steps=index + 1)
    for r in step:
        if r.kind == "block":
            out.blocks.append(r.name)
        else:
            out.counts[r.name] = r.units
        out.predicted_ms *= max(0.0, 1.0 - r.saving_ms / reference_ms)
    return out


def skip_candidates(order: list[list[Removal]], s: Structure, tries: int) -> list[int]:
    """Where to look past the step the bisection stopped at (the order's next step after `s`,
    which broke the accuracy): the indices of the next `tries` steps that touch neither that step's
    groups nor its blocks (a later step of the same group would include the skipped narrowing)."""
    if s.steps >= len(order):
        return []
    skipped = {r.name for r in order[s.steps]}
    out = [i for i in range(s.steps + 1, len(order)) if not {r.name for r in order[i]} & skipped]
    return out[:tries]


def blocks_only(order: list[list[Removal]], s: Structure, *, reference_ms: float) -> Structure | None:
    """`s`'s blocks and the order's next block not in it, and no width cut (None when `s` narrows
    nothing or no block is left): the order ranks steps by importance per millisecond, and where the
    table prices width cuts the bisection can stop at a structure whose cuts cost the accuracy a
    block would not. Measured: on OpenVINO INT8 a default run's order put width cuts before the
    third block, and three blocks with them fell under the floor (93.58 %, 93.68 % < 94.02 %) where
    three blocks alone, on ONNX Runtime's table, kept it (94.08 %)."""
    upcoming = next((step for step in order if step[0].kind == "block" and step[0].name not in s.blocks), None)
    if not s.counts or upcoming is None:
        return None
    out = Structure(predicted_ms=reference_ms, steps=s.steps)
    for step in order:
        if step[0].kind == "block" and (step[0].name in s.blocks or step is upcoming):
            out = with_step(out, step, out.steps - 1, reference_ms=reference_ms)
    return out


def describe(order: list[list[Removal]]) -> list[dict]:
    """The order for the report: each step's removals with their importance and price."""
    return [{"removals": [asdict(r) for r in step],
             "deviation": sum(r.deviation for r in step), "saving_ms": sum(r.saving_ms for r in step)}
            for step in order]
