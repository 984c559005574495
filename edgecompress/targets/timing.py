"""The one latency timing protocol: engines interleaved in short blocks, judged by paired ratios.

This machine's speed drifts +-40 % within minutes and two 400-run rounds of one engine differ by
+-8 %, so absolute timings taken apart cannot resolve a few percent. What does, in seconds:

    timing = compare({"fp32": run_a, "int8": run_b}, reference="fp32")
    timing.ratios["int8"]            # Ratio(median=0.62, low=0.61, high=0.63): latency int8 / fp32
    f"{timing.speedup('int8')}"      # "1.61x [1.59, 1.64]"
    timing.stopped                   # "precise" | "time cap"

Each block runs every engine `runs_per_block` times back to back, the engines in a fresh seeded
order, so all engines of a block see the same machine speed and none is always first. The ratio
engine/reference of one block cancels the drift; the median of those per-block ratios, with its
95 % interval, is the answer. A first phase finds how many blocks the decision at hand needs
(`until`, or a relative half-width; or the time cap, and says which); then as many fresh blocks
are timed and give the answer, so looking at the interval while deciding when to stop does not
shrink its coverage below 95 % (the first phase's blocks count too when the clock, not a look,
ended it and the rule was a width).

numpy only: runtimes hand in zero-argument calls (`Target.caller`), tests hand in fake ones.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Callable, Literal

import numpy as np

from edgecompress.errors import UserError

if TYPE_CHECKING:
    from edgecompress.targets.base import BuildResult, Target

Until = Callable[[dict[str, "Ratio"]], bool]
MIN_BLOCKS = 6           # the fewest blocks with a distribution-free 95 % interval of a median (1 - 2/2^6)
BLOCK_BUDGET_S = 0.5     # one engine's block: short against the drift, so paired engines share a speed
# Look at the interval at min_blocks, then each time the block count has grown by a tenth. A look
# costs nothing, but each one is a chance to stop on an interval that is narrow (or clear of the
# threshold) by luck; spacing the looks in proportion to n keeps their number logarithmic in n,
# while stopping at most ~10 % later than a look after every block would.
CHECK_FRACTION = 10
DEFAULT_MAX_TIME_S = 20.0  # `compare`'s time cap when none is given
DECIDED_MARGIN = 2.0     # `decided`: the median this many half-widths clear of the threshold
# A yes/no question (`decided`: does the pruned model ship, is INT8 faster than FP32) looks first at
# this many blocks (the time cap still applies): at 20 blocks (2 s of a ResNet-20) two default runs
# saw their first look clear 1.0 and the fresh blocks of the answer straddle it ([0.96, 1.50],
# [0.90, 1.48]) and threw a pruned model away that other runs timed 1.15-1.35x faster, and one
# shipped FP32 on 0.843x [0.791, 1.000] when INT8 was faster; 100 blocks cost ~10 s.
DECIDE_MIN_BLOCKS = 100


@dataclass(frozen=True)
class Ratio:
    """latency(engine) / latency(reference): median of the per-block ratios and its 95 % interval."""
    median: float
    low: float
    high: float

    @property
    def relative_half_width(self) -> float:
        """Half the interval's width as a fraction of the median (0.01: +-1 %)."""
        return (self.high - self.low) / (2 * self.median)

    def excludes(self, value: float) -> bool:
        return value < self.low or value > self.high

    def clear_of(self, value: float, margin: float = 1.0) -> bool:
        """Wholly on one side of `value`, with a gap of at least (margin - 1) half-widths."""
        gap = (margin - 1) * (self.high - self.low) / 2
        return value < self.low - gap or value > self.high + gap

    def inverse(self) -> Ratio:
        """reference / engine (a speed-up); the interval's ends swap when inverted."""
        return Ratio(median=1 / self.median, low=1 / self.high, high=1 / self.low)

    def to_dict(self) -> dict:
        return {"ratio": round(self.median, 4), "low": round(self.low, 4), "high": round(self.high, 4)}

    def describe(self, spec: str = ".2f") -> str:
        return f"{self.median:{spec}}x [{self.low:{spec}}, {self.high:{spec}}]"

    def __format__(self, spec: str) -> str:
        return self.describe(spec or ".2f")

    def __str__(self) -> str:
        return self.describe()


@dataclass(frozen=True)
class Timing:
    """What `compare` measured, and why it stopped."""
    reference: str
    ratios: dict[str, Ratio]       # every engine, the reference included (exactly 1, 1, 1)
    ms: dict[str, float]           # median over blocks of each engine's mean ms per call
    blocks: int
    runs_per_block: int            # lower than asked when calls are slow (BLOCK_BUDGET_S)
    seconds: float                 # wall time of the whole comparison, warm-up included
    stopped: Literal["precise", "time cap", "estimate", "remote"]
    rows: dict[str, tuple[float, ...]] | None = None   # each engine's ms per block (None: not timed here)

    def speedup(self, name: str) -> Ratio:
        """latency(reference) / latency(name)."""
        return self.ratios[name].inverse()

    def between(self, name: str, other: str) -> Ratio:
        """latency(name) / latency(other) from the same blocks (paired), with its interval; for
        one engine against another that was not the reference. Not timed in the same blocks
        (estimated, remote, `timed_in_layouts`): the `quotient` of the two."""
        if self.rows is None:
            return quotient(self.ratios[name], self.ratios[other])
        return Ratio(*median_interval(np.asarray(self.rows[name]) / np.asarray(self.rows[other])))

    def only(self, names) -> Timing:
        """This timing with only `names` (the reference's copies in other processes left out)."""
        def keep(values: dict | None) -> dict | None:
            return None if values is None else {k: v for k, v in values.items() if k in names}
        return replace(self, ratios=keep(self.ratios), ms=keep(self.ms), rows=keep(self.rows))

    def renamed(self, names: dict[str, str]) -> Timing:
        """This timing with engines renamed (`names`: old -> new; the others keep theirs)."""
        def rename(values: dict | None) -> dict | None:
            return None if values is None else {names.get(k, k): v for k, v in values.items()}
        return replace(self, reference=names.get(self.reference, self.reference), ratios=rename(self.ratios),
                       ms=rename(self.ms), rows=rename(self.rows))

    def to_dict(self) -> dict:
        return {"reference": self.reference, "ratios": {k: r.to_dict() for k, r in self.ratios.items()},
                "ms": {k: round(v, 4) for k, v in self.ms.items()}, "blocks": self.blocks,
                "runs_per_block": self.runs_per_block, "seconds": round(self.seconds, 3),
                "stopped": self.stopped}


def quotient(a: Ratio, b: Ratio) -> Ratio:
    """a / b for two ratios measured apart (independent): the medians' quotient, each end's
    distance from it in log space the root sum of squares of the two ends' distances (the normal
    approximation; [a.low / b.high, a.high / b.low] would be the sum, twice as wide as needed when
    the two are equally precise). An estimate's interval is its point, and stays one."""
    median = a.median / b.median
    up = math.hypot(math.log(a.high / a.median), math.log(b.median / b.low))
    down = math.hypot(math.log(a.median / a.low), math.log(b.high / b.median))
    return Ratio(median, median / math.exp(down), median * math.exp(up))


def over_layouts(ratios: list[Ratio]) -> Ratio:
    """One ratio from the same comparison timed in several fresh process layouts: the median over
    layouts of its median, of its low end and of its high end (each end stays on its side of the
    median), so one layout's luck, good or bad, does not decide."""
    ends = np.array([[r.median, r.low, r.high] for r in ratios])
    return Ratio(*(float(v) for v in np.median(ends, axis=0)))


def decided(threshold: float, *, resolution: float = 0.005, margin: float = DECIDED_MARGIN) -> Until:
    """An `until` for a yes/no question about a ratio, e.g. decided(0.9): "is each engine's latency
    below 0.9x the reference's?". True once every interval lies on one side of `threshold` with a
    gap of at least `margin` - 1 half-widths between them (its median `margin` half-widths away
    when symmetric), or is narrower than +-`resolution` (then the engine sits at the threshold as
    closely as matters, and waiting longer would not decide it). The answer comes from as many fresh
    blocks (`compare`), so an interval that only just cleared the threshold is as likely as not to
    straddle it again there: on a noisy machine the first look cleared 1 at 20 blocks and the fresh
    blocks said 1.16x [0.96, 1.50], and a pruned ResNet-20 (1.15-1.34x in other runs) was thrown
    away. With the median two half-widths clear, the fresh blocks land on the same side about nine
    times in ten. The reference (1, 1, 1) never holds it back."""
    def until(ratios: dict[str, Ratio]) -> bool:
        return all(r.clear_of(threshold, margin) or r.relative_half_width <= resolution for r in ratios.values())
    return until


def compare(calls: dict[str, Callable[[], object]], *, reference: str, runs_per_block: int = 20,
            warmup: int = 10, half_width: float = 0.01, min_blocks: int = 20, max_time_s: float = DEFAULT_MAX_TIME_S,
            until: Until | None = None, seed: int = 0, paired_with: dict[str, str] | None = None,
            clock: Callable[[], float] = time.perf_counter) -> Timing:
    """Time `calls` against `calls[reference]` in interleaved blocks (see the module docstring).

    Two phases. The first decides how many blocks are needed: it looks at the interval from
    `min_blocks` on and stops "precise" when `until(ratios)` holds (if given), else when every
    ratio's interval is within +-`half_width` of its median; it stops "time cap" once half of
    `max_time_s` (warm-up included) has passed and at least MIN_BLOCKS blocks are in. Its
    intervals are NOT reported: stopping on the first look that excludes a threshold is optional
    stopping, and an interval chosen that way covers less than 95 % (many looks, many chances to
    be wrong). The second phase times as many FRESH blocks as the first took, a count fixed before
    they start, and every figure returned (ratios, intervals, ms, `blocks`) comes from those
    alone, so their 95 % coverage is exact; when the first phase ran out of time on a width rule
    (no `until`), from its blocks and those. `seconds` is both phases. Deterministic given `seed`
    and the calls' timings. `paired_with`: engine -> the call its per-block ratio divides by
    instead of the reference's (a copy of the reference in the engine's own process)."""
    _check_args(calls, reference, runs_per_block, warmup, half_width, min_blocks, max_time_s, paired_with or {})
    pairs = {name: (paired_with or {}).get(name, reference) for name in calls}
    start = clock()
    runs = _fit_runs(runs_per_block, _warm_up(calls, warmup, clock))
    names, rng = list(calls), np.random.default_rng(seed)

    def block() -> np.ndarray:
        return _time_block([calls[n] for n in names], rng.permutation(len(names)), runs, clock)
    pilot, stopped = _pilot(block, names, pairs, min_blocks, max_time_s / 2, until, half_width,
                            elapsed=lambda: clock() - start)
    fresh = [block() for _ in range(len(pilot))]
    # A width rule that ran out of time: the clock ended the first phase, not a look at the figures,
    # and a width that never came within `half_width` says nothing of where the median lies, so
    # its blocks count too (twice the blocks in the same time). Not after `until`: it looks at
    # where the interval lies, and its blocks are those that had not yet cleared the threshold.
    rows = pilot + fresh if stopped == "time cap" and until is None else fresh
    return _timing(rows, names, reference, pairs, runs, clock() - start, stopped)


def _pilot(block: Callable[[], np.ndarray], names: list[str], pairs: dict[str, str], min_blocks: int, cap_s: float,
           until: Until | None, half_width: float, *, elapsed: Callable[[], float]) -> tuple[list[np.ndarray], str]:
    """(its blocks, why it stopped): the adaptive first phase of `compare`."""
    rows: list[np.ndarray] = []
    next_check = min_blocks
    while True:
        rows.append(block())
        if len(rows) >= next_check:
            next_check = len(rows) + max(1, len(rows) // CHECK_FRACTION)
            if _precise(_ratios(rows, names, pairs), until, half_width):
                return rows, "precise"
        if len(rows) >= MIN_BLOCKS and elapsed() >= cap_s:
            return rows, "time cap"


def time_builds(target: Target, builds: dict[str, BuildResult], *, reference: str, fresh: bool = False,
                **kw) -> Timing:
    """`compare` the engines of `builds` on this machine, each loaded with its own settings, in
    fresh processes, not the run's (targets/isolated.py; in this process only where the profile's
    benchmark says `isolate: false`): each ONNX Runtime session with a thread pool in a process of
    its own, the other processes stopped while one runs its block (`process_groups`); `fresh`:
    each engine alone in a fresh interpreter, as a user's application (`isolated_calls`). The warm-up
    defaults to the profile's (a runtime's first calls compile and allocate)."""
    if target.latency_source != "local":
        raise UserError(f"{target.profile.name} latency is {target.latency_source}, not timed on this machine",
                        "interleaved timing needs engines that run here; use target.measure for the device")
    kw.setdefault("warmup", target.profile.benchmark.warmup)
    if not target.profile.benchmark.isolate:
        return compare({name: target.caller(b) for name, b in builds.items()}, reference=reference, **kw)
    from edgecompress.targets.isolated import isolated_calls, process_groups
    groups = process_groups({name: (b.engine, b.runtime, target.settings(b), target.profile.batch)
                             for name, b in builds.items()}, each_alone=fresh)
    return compare(isolated_calls(groups, fresh=fresh), reference=reference, **kw)


def _combined(timings: list[Timing], reference: str, ratios: dict[str, Ratio], ms: dict[str, float]) -> Timing:
    """One Timing of `ratios` and `ms` from `timings` taken one after another (not paired, no rows):
    `blocks` the fewest of one, `seconds` their sum, `stopped` "time cap" when one stopped on it."""
    return Timing(reference=reference, ratios=ratios, ms=ms, blocks=min(t.blocks for t in timings),
                  runs_per_block=min(t.runs_per_block for t in timings), seconds=sum(t.seconds for t in timings),
                  stopped="time cap" if any(t.stopped == "time cap" for t in timings) else "precise")


def relative_timing(target: Target, builds: dict[str, BuildResult], *, reference: str, **kw) -> Timing:
    """Every engine's latency relative to `reference`'s, in the one form whatever the source:
    local targets by `time_builds` (the protocol), estimated and remote (ssh) ones by their own
    probe, one measurement per engine (`stopped` "estimate" / "remote": an estimate has no
    noise, so its interval is the point; a remote probe's own iterations are its precision)."""
    if target.latency_source == "local":
        return time_builds(target, builds, reference=reference, **kw)
    start = time.perf_counter()
    latency = {name: target.measure(b) for name, b in builds.items()}
    ref = latency[reference].median_ms
    ratios = {name: Ratio(median=x.median_ms / ref, low=x.median_ms / ref, high=x.median_ms / ref)
              for name, x in latency.items()}
    # an estimate costs no device time (and its report must not vary from run to run)
    seconds = 0.0 if target.latency_source == "estimate" else time.perf_counter() - start
    return Timing(reference=reference, ratios=ratios, ms={n: x.median_ms for n, x in latency.items()}, blocks=1,
                  runs_per_block=0, seconds=seconds,
                  stopped="estimate" if target.latency_source == "estimate" else "remote")


def timed_in_layouts(target: Target, builds: dict[str, BuildResult], *, reference: str, layouts: int,
                     max_time_s: float = DEFAULT_MAX_TIME_S, **kw) -> Timing:
    """`relative_timing` in `layouts` fresh process layouts one after another (`max_time_s`
    shared), each ratio the median over them of each end (`over_layouts`), `ms` the median, `rows`
    none (`between` takes two ratios' intervals). Estimated or remote: once (no layout to luck)."""
    if target.latency_source != "local":
        return relative_timing(target, builds, reference=reference, max_time_s=max_time_s, **kw)
    timings = [relative_timing(target, builds, reference=reference, max_time_s=max_time_s / layouts, seed=seed, **kw)
               for seed in range(layouts)]
    return _combined(timings, reference, {n: over_layouts([t.ratios[n] for t in timings]) for n in builds},
                     ms={n: float(np.median([t.ms[n] for t in timings])) for n in builds})


def median_interval(values: np.ndarray) -> tuple[float, float, float]:
    """(median, low, high): the median and its distribution-free 95 % interval [s[k], s[n-1-k]] of
    the sorted values. Order statistics rather than a bootstrap: the bootstrap distribution of a
    median sits on a few order statistics anyway, so its percentile interval is a resampling-noisy
    copy of this exact one. This needs no rng and no resamples, and its coverage (for independent
    blocks) is exact at every n, not only asymptotically."""
    s = np.sort(np.asarray(values, dtype=float))
    k = _lower_rank(len(s))
    return float(np.median(s)), float(s[k]), float(s[len(s) - 1 - k])


def _lower_rank(n: int) -> int:
    """Largest k with P(Binomial(n, 1/2) <= k) <= 2.5 %: then [s[k], s[n-1-k]] covers the median
    with probability >= 95 %. 0 (the whole range, below 95 %) when n < MIN_BLOCKS."""
    i = np.arange(n)
    log_pmf = np.concatenate([[0.0], np.cumsum(np.log((n - i) / (i + 1)))]) - n * math.log(2)
    cdf = np.cumsum(np.exp(log_pmf))
    return max(int(np.searchsorted(cdf, 0.025, side="right")) - 1, 0)


def _check_args(calls, reference, runs_per_block, warmup, half_width, min_blocks, max_time_s, paired_with) -> None:
    problems = []
    if reference not in calls:
        problems.append(f"reference {reference!r} is not one of the engines ({', '.join(calls) or 'none'})")
    if not set(paired_with) | set(paired_with.values()) <= set(calls):
        problems.append(f"an engine is paired with one that is not timed ({paired_with})")
    if runs_per_block < 1 or warmup < 0:
        problems.append(f"runs_per_block must be >= 1 and warmup >= 0, got {runs_per_block} and {warmup}")
    if not half_width > 0 or not max_time_s > 0:
        problems.append(f"half_width and max_time_s must be > 0, got {half_width} and {max_time_s}")
    if min_blocks < MIN_BLOCKS:
        problems.append(f"min_blocks must be >= {MIN_BLOCKS} (no 95 % interval of a median below), got {min_blocks}")
    if problems:
        raise UserError("; ".join(problems), "fix the timing arguments")


def _warm_up(calls: dict[str, Callable[[], object]], warmup: int, clock: Callable[[], float]) -> float:
    """Run each call `warmup` times; the slowest engine's median warm-up call in seconds (0: none)."""
    slowest = 0.0
    for call in calls.values():
        seconds = [_seconds(call, 1, clock) for _ in range(warmup)]
        if seconds:
            slowest = max(slowest, float(np.median(seconds)))
    return slowest


def _fit_runs(runs_per_block: int, call_s: float) -> int:
    """Runs per block, lowered (min 1) so one engine's block stays within BLOCK_BUDGET_S: a block
    as long as the drift's timescale no longer pairs the engines under one machine speed."""
    if call_s * runs_per_block <= BLOCK_BUDGET_S:
        return runs_per_block
    return max(1, int(BLOCK_BUDGET_S // call_s))


def _time_block(calls: list[Callable[[], object]], order: np.ndarray, runs: int,
                clock: Callable[[], float]) -> np.ndarray:
    """Mean ms per call of each engine (indexed like `calls`), the engines run in `order`."""
    ms = np.empty(len(calls))
    for i in order:
        ms[i] = _seconds(calls[i], runs, clock) * 1e3 / runs
    return ms


def _seconds(call: Callable[[], object], runs: int, clock: Callable[[], float]) -> float:
    """Seconds of `runs` calls back to back; an engine in its own process (`timed`) times them there."""
    if hasattr(call, "timed"):
        return call.timed(runs)
    t0 = clock()
    for _ in range(runs):
        call()
    return clock() - t0


def _ratios(rows: list[np.ndarray], names: list[str], pairs: dict[str, str]) -> dict[str, Ratio]:
    blocks = np.stack(rows)
    # x / x is exactly 1: the reference is (1, 1, 1)
    paired = blocks / blocks[:, [names.index(pairs[name]) for name in names]]
    return {name: Ratio(*median_interval(paired[:, j])) for j, name in enumerate(names)}


def _precise(ratios: dict[str, Ratio], until: Until | None, half_width: float) -> bool:
    if until is not None:
        return bool(until(ratios))
    return all(r.relative_half_width <= half_width for r in ratios.values())


def _timing(rows: list[np.ndarray], names: list[str], reference: str, pairs: dict[str, str], runs: int,
            seconds: float, stopped: Literal["precise", "time cap"]) -> Timing:
    ms = np.median(np.stack(rows), axis=0)
    return Timing(reference=reference, ratios=_ratios(rows, names, pairs),
                  ms={name: float(ms[j]) for j, name in enumerate(names)}, blocks=len(rows),
                  runs_per_block=runs, seconds=seconds, stopped=stopped,
                  rows={name: tuple(float(r[j]) for r in rows) for j, name in enumerate(names)})
