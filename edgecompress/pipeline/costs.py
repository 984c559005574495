"""The latency table: what each removable block and each width step of a channel group costs on
the target at the precision that ships, measured once per run (pruning/cost.py orders by it).

Every table entry is the original with that one removal (a block replaced by identity, or one
group narrowed to a smaller unit count), built at the probe precision and timed with the
original in one run of the timing protocol (targets/timing.py); removals that take the same work
away (`cost_signature`: like blocks of one stage, one width step of each) are one kind, timed as
one engine with all of them applied at once: k like removals save k times the time, so the saving
stands out of the noise k times as far, and each member's share is 1/k of it (latency adds up over
layers; the search predicts a structure by that sum, and its choice is timed side by side). A
removal's saving is the original's latency times (1 - its paired ratio). A saving counts when it is real (the interval lies below 1,
or below its group's last measurable step) and larger than two compiles of one model differ by
(the median at least MEASURABLE below); anything else counts as none. The kinds that pass that bar
are then timed again with the original alone (`confirm`) and priced by the second timing: picked
out of dozens for a low ratio, they were picked for their noise as much as for their saving.
Estimated targets take the estimator's figures.

The table is kept per machine (TableCache): the same model, data, seed, target, precision and
runtime versions on the same CPU (or ssh device) reuse the ratios measured the first time. The
table's entries differ by 2-6 %, about what two builds of one model differ by here, so a table
measured afresh reorders near-equal removals by noise: measured, a third default run with a fresh
table shipped another structure (1.16x instead of 1.27-1.29x). The cache makes the same command
on the same machine ship the same structure; `EDGECOMPRESS_CACHE_DIR=` (empty) turns it off.
"""
from __future__ import annotations

import datetime
import hashlib
import json
import os
from dataclasses import asdict
from pathlib import Path

import torch
from torch import nn

from edgecompress.pipeline.builder import ORIGINAL
from edgecompress.pipeline.context import Context
from edgecompress.pipeline.rundir import write_json
from edgecompress.pruning import PruningPlan
from edgecompress.pruning.cost import Removal
from edgecompress.pruning.depth import Block, remove_blocks
from edgecompress.pruning.detection import fold_removed_bottlenecks
from edgecompress.report.baseline import runtime_version
from edgecompress.util import describe_device
from edgecompress.targets.timing import Ratio, relative_timing

TABLE_HALF_WIDTH = 0.01  # stop when every entry's ratio is known to +-1 %
# Savings are counted in steps of 1 % of the original's latency, what the protocol resolves: two
# runs of the same command then price (and order) the removals alike instead of by their noise.
RESOLUTION = 0.01
WIDTH_STEPS = 3          # narrower widths per channel group in the table
# A removal saves measurable time when its interval lies wholly below 1 (or below its group's last
# measurable step) and its median at least this far below: copies of one model compiled in one
# process time up to ~2-5 % apart here. Measured on the default run: a 1 % bar on the interval let
# 18 of 39 removals in (width steps of 1-3 %) and the search shipped one block at 94.64 %; 3 %,
# 11 of 39, three blocks at 94.12 %. With the engines timed in a fresh process (wider intervals),
# 3 % on the interval's far end let 4 of 39 in (the two costliest blocks in accuracy and two
# shortcut narrowings) and no probe kept the accuracy; on the median it lets in the blocks that
# save 3-5 % ([0.94, 0.97] intervals), the cheap ones in accuracy.
MEASURABLE = 0.03
ENTRIES_PER_CAP = 40     # the table's time cap is the profile's table_time_s per 40 entries
ORIGINAL_RATIO = Ratio(1.0, 1.0, 1.0)   # the original against itself: what a block and a group's first step beat
TABLE_VERSION = 6        # bump when what a table entry means changes (6: OpenVINO called as compiled(x))


def table_entries(plan: PruningPlan, blocks: list[Block], *, multiple: int, min_channels: int) -> dict[str, dict]:
    """name -> {"kind", "name", "units"} for every single removal from the original: each block,
    and each group at up to WIDTH_STEPS narrower widths (about 3/4, 1/2, 1/4 of it, rounded as keep
    counts are), so the table stays a few dozen engines on a ResNet-20 and ~100 on a ResNet-56."""
    entries = {f"block:{b.name}": {"kind": "block", "name": b.name, "units": 0} for b in blocks}
    for key, counts in plan.unit_steps(multiple=multiple, min_channels=min_channels).items():
        for units in spaced(counts, WIDTH_STEPS):
            entries[f"width:{key}:{units}"] = {"kind": "width", "name": key, "units": units}
    return entries


def spaced(counts: list[int], steps: int) -> list[int]:
    """Up to `steps` of the allowed counts (widest first, the full width first), near evenly
    spaced fractions of the full width: the largest allowed count at or below each."""
    full, out = counts[0], []
    for i in range(1, steps + 1):
        below = [c for c in counts[1:] if c <= full * (steps + 1 - i) / (steps + 1) + 1e-9]
        if below and below[0] not in out:
            out.append(below[0])
    return out


def entry_model(plan: PruningPlan, entry: dict) -> nn.Module:
    return entries_applied(plan, [entry])


def applied(plan: PruningPlan, counts: dict[str, int], blocks: list[str]) -> nn.Module:
    """The original with groups narrowed to `counts` and `blocks` removed: how the table's engines
    and the search's probes (stages/prune.py Prober.pruned) are built."""
    model = plan.prune_units(counts) if counts else plan.model
    model = remove_blocks(model, blocks, copy_model=not counts)
    fold_removed_bottlenecks(model)   # a detector's removed C2f bottlenecks leave its concat (exact)
    return model


def entries_applied(plan: PruningPlan, entries: list[dict]) -> nn.Module:
    """The original with every table entry in `entries` applied at once."""
    return applied(plan, {e["name"]: e["units"] for e in entries if e["kind"] == "width"},
                   [e["name"] for e in entries if e["kind"] == "block"])


def kind_model(plan: PruningPlan, members: list[dict], x: torch.Tensor, *, alone: nn.Module) -> tuple[nn.Module, int]:
    """The engine that prices one kind: all its `members` applied at once, and how many that is;
    `alone` (the first member's model) when the kind has one member or together they break the
    forward (each was checked alone)."""
    if len(members) > 1:
        try:
            model = entries_applied(plan, members)
            with torch.no_grad():
                model.eval()(x)
            return model, len(members)
        except Exception:   # noqa: BLE001 -- any failure of the joint forward: price the kind by one member
            pass
    return alone, 1


@torch.no_grad()
def input_shapes(model: nn.Module, x: torch.Tensor) -> dict[str, tuple]:
    """Each leaf layer's input shape in one forward pass of `x`."""
    shapes, hooks = {}, []

    def record(name: str, args: tuple) -> None:   # returns None: a hook's return value replaces the output
        shapes.setdefault(name, tuple(args[0].shape) if args and torch.is_tensor(args[0]) else ())

    for name, m in model.named_modules():
        if not any(True for _ in m.children()):
            hooks.append(m.register_forward_hook(lambda mod, args, out, name=name: record(name, args)))
    try:
        model.eval()(x)
    finally:
        for h in hooks:
            h.remove()
    return shapes


def cost_signature(original: nn.Module, model: nn.Module, shapes: dict[str, tuple]) -> str:
    """What a removal changes, wherever it sits: each leaf layer of `original` that `model` drops
    or reshapes, with its input shape. Two removals of one signature (two like blocks of one stage,
    or one width step of each) take the same work away, so they cost the same: the latency table
    times one engine for both, and the time saved goes to narrower intervals. Measured on
    ResNet-56 at INT8 on a noisy machine: 105 entries, one engine each, 17 blocks in 124 s, and 1
    of 105 removals resolved as saving time."""
    now = dict(model.named_modules())

    def params(m: nn.Module | None) -> tuple | None:
        return None if m is None else tuple((n, tuple(t.shape)) for n, t in [*m.named_parameters(), *m.named_buffers()])

    changed = sorted((repr(m), params(m), params(now.get(name)), shapes.get(name))
                     for name, m in original.named_modules()
                     if not any(True for _ in m.children()) and params(now.get(name)) != params(m))
    return hashlib.sha256(repr(changed).encode()).hexdigest()[:16]


@torch.no_grad()
def output_deviation(model: nn.Module, batches: list[torch.Tensor], reference: list[torch.Tensor]) -> float:
    """E||logits(model) - logits(original)||^2 per image (the depth score's measure)."""
    model.eval()
    dev = sum(float(((model(x) - ref).double() ** 2).sum()) for x, ref in zip(batches, reference))
    return dev / max(1, sum(len(x) for x in batches))


def measure_table(ctx: Context, plan: PruningPlan, blocks: list[Block], batches: list[torch.Tensor], *,
                  precision: str, multiple: int) -> dict:
    """{"ratios": {entry: ratio dict}, "entries": {...}, "timing": {...}}: every entry's latency
    relative to the original at `precision` (measured, or reused from this machine's cache), and
    its output deviation (always computed: it is exact)."""
    entries = table_entries(plan, blocks, multiple=multiple, min_channels=ctx.profile.min_channels)
    with torch.no_grad():
        reference = [plan.model.eval()(x) for x in batches]
    shapes, kinds = input_shapes(plan.model, batches[0][:1]), {}
    models = {name: entry_model(plan, entry) for name, entry in entries.items()}   # narrowing needs autograd
    for name, entry in entries.items():
        entry["deviation"] = output_deviation(models[name], batches, reference)
        entry["same_cost_as"] = kinds.setdefault(cost_signature(plan.model, models[name], shapes), name)
    cache = TableCache.for_run(ctx, precision=precision, multiple=multiple)
    cached = cache.load(entries) if cache else None
    if cached is not None:
        ctx.ui.say(f"  latency table: {len(entries)} removals at {precision}, reused from this machine's table "
                   f"measured {cached['timing'].get('measured', '?')} ({cache.path})")
        return {"entries": entries, **cached}
    builds = {ORIGINAL: ctx.builder.build(ctx.original, precision=precision, key=ORIGINAL)}
    timed = sorted(set(kinds.values()), key=list(entries).index)   # one engine per kind of removal
    members = {}
    with ctx.ui.progress("latency table: building", len(timed)) as bar:
        for i, name in enumerate(timed):
            model, members[name] = kind_model(plan, [e for e in entries.values() if e["same_cost_as"] == name],
                                              batches[0][:1], alone=models[name])
            builds[name] = ctx.builder.build(model, precision=precision, key=f"table:{name}")
            bar.update(i + 1)
    # the time of a table of every entry, on fewer engines: each block is shorter, so more of them
    cap = ctx.profile.benchmark.table_time_s * max(1.0, len(entries) / ENTRIES_PER_CAP)
    timing = relative_timing(ctx.target, builds, reference=ORIGINAL, max_time_s=cap, half_width=TABLE_HALF_WIDTH)
    ctx.ui.say(f"  latency table: {len(entries)} removals of {len(timed)} kinds timed with the original at {precision} "
               f"({timing.blocks} blocks, {timing.seconds:.0f} s, {timing.stopped})")
    ratios, confirmed = confirm(ctx, builds, timing.ratios, members, per_engine_s=cap / len(builds))
    ctx.builder.forget("table:")
    measured = {"ratios": {n: per_member(ratios[e["same_cost_as"]], members[e["same_cost_as"]])
                           for n, e in entries.items()},
                "timing": {**{k: v for k, v in timing.to_dict().items() if k != "ratios"}, "confirmed": confirmed}}
    if cache:
        cache.save(measured)
    return {"entries": entries, **measured}


def confirm(ctx: Context, builds: dict, ratios: dict[str, Ratio], members: dict[str, int], *,
            per_engine_s: float) -> tuple[dict, dict | None]:
    """The table's ratios with every kind that looked measurable timed again, with the original
    only, and priced by that second timing: a kind picked out of dozens for its low ratio was
    picked for its luck as much as for its saving (the winner's curse), and a timing taken after
    the pick does not share that luck. Measured on YOLOv8n at 64 px: 11 of 179 removals looked
    measurable, together predicted 1.146 ms against the original's 1.420, and the structure built
    of them timed 1.02x [0.99, 1.04] side by side. The second timing's cap gives each engine the
    table's time per engine (the default run: 10 of 15 kinds again, 9 kept, ~40 s). Estimated
    targets have no noise: as they are."""
    if ctx.target.latency_source == "estimate":
        return ratios, None

    def saves(kinds: dict[str, Ratio], name: str) -> bool:   # a member's share beats the original
        return _measurable(_ratio(per_member(kinds[name], members[name])), ORIGINAL_RATIO, members[name])

    picked = [n for n in ratios if n != ORIGINAL and saves(ratios, n)]
    if not picked:
        return ratios, None
    again = relative_timing(ctx.target, {ORIGINAL: builds[ORIGINAL], **{n: builds[n] for n in picked}},
                            reference=ORIGINAL, max_time_s=per_engine_s * (len(picked) + 1), half_width=TABLE_HALF_WIDTH)
    kept = [n for n in picked if saves(again.ratios, n)]
    ctx.ui.say(f"  latency table: the {len(picked)} kinds that looked measurable timed again with the original: "
               f"{len(kept)} still are ({again.blocks} blocks, {again.seconds:.0f} s, {again.stopped})")
    record = {"picked": picked, "kept": kept, "blocks": again.blocks, "seconds": round(again.seconds, 3),
              "stopped": again.stopped}
    return {**ratios, **{n: again.ratios[n] for n in picked}}, record


class TableCache:
    """One file per (machine, runtime versions, target, precision, multiple, model, data, seed)
    under $EDGECOMPRESS_CACHE_DIR (default ~/.cache/edgecompress/latency-tables): the table's ratios
    and how they were timed. Estimated targets have no cache (their table has no noise)."""

    def __init__(self, path: Path, key: dict) -> None:
        self.path, self.key = path, key

    @classmethod
    def for_run(cls, ctx: Context, *, precision: str, multiple: int) -> "TableCache | None":
        folder = os.environ.get("EDGECOMPRESS_CACHE_DIR", str(Path.home() / ".cache" / "edgecompress"))
        if not folder or ctx.target.latency_source == "estimate":
            return None
        cfg = ctx.config
        key = {"version": TABLE_VERSION, "target": ctx.profile.name, "precision": precision, "multiple": multiple,
               "where": describe_device() if ctx.target.latency_source == "local" else ctx.target.latency_source,
               "runtime": [ctx.target.runtime, runtime_version(ctx.target.runtime)],
               "model": model_digest(ctx.original),
               "input": list(ctx.input_shape), "data": ctx.data.name, "seed": cfg.seed, "width_steps": WIDTH_STEPS,
               # timed how (in a process per engine or not, caps) and loaded with which settings
               "benchmark": ctx.profile.benchmark.model_dump(), "settings": ctx.settings_for(precision)}
        digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:24]
        return cls(Path(folder) / "latency-tables" / f"{digest}.json", key)

    def load(self, entries: dict) -> dict | None:
        """The cached ratios and timing, when the file is there, is for this key and has every entry."""
        try:
            data = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return None
        if data.get("key") != self.key or set(data.get("ratios", {})) != set(entries):
            return None
        when = data.get("measured") or data["timing"].get("measured", "?")   # older files kept it in the timing
        return {"ratios": data["ratios"], "timing": {**data["timing"], "cached": str(self.path), "measured": when}}

    def save(self, measured: dict) -> None:
        """Atomically (a table half written is never read); a cache that cannot be written is skipped."""
        when = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            write_json(self.path, {"key": self.key, "measured": when, **measured})
        except OSError:
            pass


def model_digest(model: nn.Module) -> str:
    """The model's architecture and weights, hashed."""
    h = hashlib.sha256(repr(model).encode())
    for name, tensor in model.state_dict().items():
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().flatten().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:24]


def per_member(joint: Ratio, members: int) -> dict:
    """One member's share of a kind timed with all `members` applied: 1 - (1 - ratio) / members,
    its interval likewise, and the count (the measurable bar is the joint engine's)."""
    share = lambda r: 1 - (1 - r) / members   # noqa: E731
    return {"ratio": round(share(joint.median), 5), "low": round(share(joint.low), 5),
            "high": round(share(joint.high), 5), "members": members}


def removals(table: dict, *, reference_ms: float, blocks: list[Block]) -> list[Removal]:
    """The table as priced removals: savings in ms on the probe precision's scale; width steps
    marginal (each against the group's previous step); below the protocol's resolution: none.
    An estimated table has no noise, so no compile-noise bar: every saving of a resolution step
    counts (YOLOv8n on jetson-orin: a C2f bottleneck saves ~2.8 % of the estimate, under the 3 %
    bar, and at 64 px nothing else saves time); the pruned model must still be predicted
    PAYS_ESTIMATED faster to ship."""
    inside = _inside(table["entries"], blocks)
    bar = 0.0 if table.get("timing", {}).get("stopped") == "estimate" else MEASURABLE
    out, previous = [], {}
    for name, entry in table["entries"].items():
        r, k = _ratio(table["ratios"][name]), table["ratios"][name].get("members", 1)
        if entry["kind"] == "block":
            saving = _resolved(1 - r.median, reference_ms, k) if _measurable(r, ORIGINAL_RATIO, k, bar) else 0.0
            out.append(Removal(kind="block", name=entry["name"], deviation=entry["deviation"], saving_ms=saving))
            continue
        # a width step saves what it runs faster than the group's last measurably faster step (the
        # anchor): small steps that each save nothing resolvable add up to one that does
        anchor, prev_dev = previous.get(entry["name"], (ORIGINAL_RATIO, 0.0))
        measurable = _measurable(r, anchor, k, bar)
        saving = _resolved(anchor.median - r.median, reference_ms, k) if measurable else 0.0
        out.append(Removal(kind="width", name=entry["name"], units=entry["units"], inside=inside.get(entry["name"]),
                           deviation=max(entry["deviation"] - prev_dev, 0.0), saving_ms=saving))
        previous[entry["name"]] = (r if measurable else anchor, entry["deviation"])
    return out


def _measurable(r: Ratio, anchor: Ratio, members: int = 1, bar: float = MEASURABLE) -> bool:
    """Faster than `anchor` for real (interval below its median) and by more than compile noise
    (`bar`), which one engine of `members` like removals divides among them."""
    return r.high < anchor.median and r.median <= anchor.median - bar / members + 1e-9


def _resolved(fraction: float, reference_ms: float, members: int = 1) -> float:
    """A member's saving in ms: its kind's (members x fraction) in steps of the protocol's resolution, shared."""
    return round(fraction * members / RESOLUTION) * RESOLUTION * reference_ms / members


def _ratio(d: dict) -> Ratio:
    return Ratio(median=d["ratio"], low=d["low"], high=d["high"])


def _inside(entries: dict, blocks: list[Block]) -> dict[str, str]:
    """Group key -> the removable block whose module holds the group's root layer."""
    out = {}
    for entry in entries.values():
        if entry["kind"] == "width":
            holder = [b.name for b in blocks if entry["name"].startswith(b.name + ".")]
            if holder:
                out[entry["name"]] = holder[0]
    return out


def table_record(table: dict, priced: list[Removal]) -> list[dict]:
    """Each table entry with its ratio, deviation and marginal saving (report.json `latency_table`)."""
    by_entry = list(table["entries"])
    return [{"entry": name, **asdict(r), "ratio": table["ratios"][name]} for name, r in zip(by_entry, priced)]
