"""Stage `prune`: importance of channels and blocks once, then the search on the pruning knob per mode."""
from __future__ import annotations

import json
import zlib
from dataclasses import asdict, replace
from pathlib import Path

import torch
from torch import nn

from edgecompress.errors import UserError
from edgecompress.pipeline.builder import ORIGINAL, probe_precision
from edgecompress.pipeline.context import Context
from edgecompress.pipeline.measure import accuracy
from edgecompress.pipeline.stage import StageOutput
from edgecompress.pruning import PruningPlan
from edgecompress.pruning.depth import find_blocks as find, keep_blocks, remove_blocks, safe_blocks
from edgecompress.pruning.reconstruct import reconstruct
from edgecompress.pruning.search import Budget, ProbeResult, Searcher, SearchOutcome
from edgecompress.pruning.structure import widths_of
from edgecompress.targets.base import measure_alternating, median_ratio, relative_latency
from edgecompress.training.distill import DistillConfig, distill
from edgecompress.training.evaluation import macs_and_params, recalibrate_bn

CHECKPOINT = "prune"   # the search state, checkpointed in the run directory after every probe
PLAN_BATCHES, PLAN_BATCH_SIZE = 4, 128   # 512 training images for the one importance pass
DEPTH_BATCHES = 2                        # 256 of them score the blocks (one forward per block)
SAME_LATENCY_MEASURED = 0.03             # measured latencies within 3 % count as the same step


MODES = ("width", "depth", "width+depth")   # what the knob removes; each mode is searched
UNPRUNED = "unpruned"
PAYS = 0.03   # a pruned candidate must be this much faster than the unpruned engine, side by side


class Prober:
    """`evaluate(mode, knob)` for the searchers: prune (channels, whole residual blocks or both,
    by `mode`) -> BN recalibration -> (reconstruct) -> (short KD) -> validation accuracy -> ONNX
    -> target build at the precision that ships -> latency.

    Equal structures give the same pruned model, so a knob whose widths and removed blocks were
    probed already (in any mode) is answered from that probe: on the default run many probes land
    on a structure already measured. Latency is cached by structure too. The unpruned model is a
    probe of its own (mode "unpruned", knob 1): every mode's knob 1 is answered from it."""

    def __init__(self, ctx: Context, plan, blocks: list, *, work: Path, latency_cache: dict,
                 probes: list[dict] = ()) -> None:
        cfg, prof = ctx.config, ctx.profile
        self.ctx, self.plan, self.blocks, self.work = ctx, plan, blocks, work
        self.rounds = prof.benchmark.rounds
        self.rounding = {"multiple": prof.channel_multiple, "min_channels": prof.min_channels}
        self.bn_batches = ctx.data.train_batches(count=cfg.bn_batches, batch_size=cfg.batch_size, seed=cfg.seed + 1)
        self.recon_batches = self.bn_batches[:4]
        self.precision = probe_precision(ctx.profile, ctx.config.precision)
        self.latency_cache = latency_cache   # structure key -> {"median_ms", "method"}
        self.by_key = {structure_key(p["widths"], p.get("blocks_removed")): ProbeResult.from_dict(p)
                       for p in reversed(probes)}
        self.models: dict[tuple, nn.Module] = {}
        self.measured = ctx.results["baseline"]["latency_method"] == "measured"
        self._reference = None   # (the original built at the probe precision, its ms in baseline terms)

    def reference(self):
        """The original model built at the probe precision and its latency on the baseline stage's
        scale: the baseline figure itself at the baseline precision, else that figure times the
        side-by-side ratio of the two precisions. Measured probes are timed against it."""
        if self._reference is None:
            base, root = self.ctx.results["baseline"], self.work.parent
            ref = self.ctx.builder.build(self.ctx.original, precision=self.precision, key=ORIGINAL)
            ms = base["latency_ms"]
            if self.precision != base["precision"]:
                if self.measured:
                    at_base = self.ctx.builder.build(self.ctx.original, precision=base["precision"], key=ORIGINAL)
                    ms *= relative_latency(self.ctx.target.measure, ref, at_base, self.rounds)
                else:
                    ms = self.ctx.target.measure(ref).median_ms
            self._reference = (ref, ms)
        return self._reference

    def unpruned(self) -> ProbeResult:
        """The original at the probe precision as a candidate: its accuracy is the baseline's."""
        base = self.ctx.results["baseline"]
        widths = list(widths_of(self.ctx.original).values())
        key = structure_key(widths, [])
        if key not in self.by_key:
            self.by_key[key] = ProbeResult(cr=1.0, accuracy=base["accuracy"], latency_ms=self.reference()[1],
                                           flops=base["flops"], params=base["params"], widths=widths,
                                           mode=UNPRUNED, blocks_removed=[])
        return replace(self.by_key[key], accepted=False)

    def _pruned(self, mode: str, knob: float) -> tuple[nn.Module, str, list[str]]:
        model = self.plan.prune(knob if "width" in mode else 1.0, **self.rounding)
        removed = []
        if "depth" in mode and self.blocks:
            kept = keep_blocks(self.blocks, knob)
            removed = [b.name for b in self.blocks if b.name not in kept]
            model = remove_blocks(model, removed, copy_model=False)
        return model, structure_key(list(widths_of(model).values()), removed), removed

    def model_for(self, mode: str, knob: float) -> nn.Module:
        """The probe's model; rebuilt identically (same seeds) when it is not in memory."""
        if (mode, knob) in self.models:
            return self.models[(mode, knob)]
        if mode == UNPRUNED:
            return self.ctx.original
        cfg = self.ctx.config
        model, key, _ = self._pruned(mode, knob)
        first = self.by_key[key] if key in self.by_key else ProbeResult(cr=knob, accuracy=0, latency_ms=0, mode=mode)
        recalibrate_bn(model, self.bn_batches, device=self.ctx.device)
        if cfg.reconstruct:   # after BN recalibration: measured better than before it (docs/benchmarks.md)
            reconstruct(model, self.ctx.original, self.recon_batches, seed=cfg.seed)
        if cfg.probe_finetune_steps:
            distill(model, self.ctx.original, self.ctx.data.train, steps=cfg.probe_finetune_steps,
                    config=DistillConfig(temperature=cfg.temperature, alpha=cfg.alpha, lr=cfg.lr,
                                         batch_size=cfg.batch_size, augment=cfg.augment),
                    seed=probe_seed(cfg.seed, first.cr, first.mode), device=self.ctx.device,
                    workers=self.ctx.data.workers)
        self.models = {(mode, knob): model.eval()}  # keep only the latest: the chosen one is rebuilt if needed
        return model

    def evaluate(self, mode: str, knob: float) -> ProbeResult:
        _, key, removed = self._pruned(mode, knob)
        if key in self.by_key:
            return replace(self.by_key[key], cr=knob, mode=mode if self.by_key[key].mode != UNPRUNED else UNPRUNED,
                           accepted=False)
        model = self.model_for(mode, knob)
        acc = accuracy(self.ctx, model)
        if key not in self.latency_cache:
            self.latency_cache[key] = self._latency(model, key)
        macs, params = macs_and_params(model, self.ctx.input_shape)
        result = ProbeResult(cr=knob, accuracy=acc, latency_ms=self.latency_cache[key]["median_ms"],
                             flops=macs, params=params, widths=json.loads(key)[0], mode=mode, blocks_removed=removed)
        self.by_key[key] = result
        return result

    def _latency(self, model: nn.Module, key: str) -> dict:
        """Estimated: the estimate. Measured: timed side by side with the original at the same
        precision (`rounds` alternating rounds) and put on the baseline stage's scale, so probes
        timed minutes apart compare with each other and with the budget as if timed together."""
        if not self.measured:
            latency = self.ctx.target.measure(self.ctx.builder.build(model, precision=self.precision, key=key))
            return {"median_ms": latency.median_ms, "method": latency.method}
        build = self.ctx.builder.build(model, precision=self.precision, key=key)
        ref, ref_ms = self.reference()
        ratio = relative_latency(self.ctx.target.measure, build, ref, self.rounds)
        return {"median_ms": ref_ms * ratio, "method": "measured", "ratio_to_original": ratio}

    def _build(self, p: ProbeResult):
        if p.mode == UNPRUNED:
            return self.reference()[0]
        model, key, _ = self._pruned(p.mode, p.cr)
        return self.ctx.builder.build(model, precision=self.precision, key=key)

    def same_latency(self, candidate: ProbeResult, chosen: ProbeResult) -> bool:
        """Whether `candidate` is as fast as `chosen` when the two are built again and timed in
        alternation: the median of the per-round ratios within SAME_LATENCY_MEASURED. Structure
        alone decides latency, so the models need no distillation."""
        builds = [self._build(p) for p in (candidate, chosen)]
        ratio = relative_latency(self.ctx.target.measure, *builds, self.rounds)
        same = ratio <= 1 + SAME_LATENCY_MEASURED
        self.ctx.ui.say(f"  re-timed side by side: {candidate.mode} {candidate.cr:.4f} / {chosen.mode} {chosen.cr:.4f} "
                        f"= {ratio:.3f}x -> {'same step' if same else 'slower: not moved there'}")
        return same

    def side_by_side(self, candidates: list[ProbeResult]) -> list[float]:
        """Each candidate's latency relative to the unpruned model (candidates[0]), all timed in
        alternating rounds: `rounds` first, extended up to 3x while the fastest and the runner-up
        are not separated (their per-round ratios overlap). Estimated: the estimates' ratios."""
        if not self.measured:
            return [p.latency_ms / candidates[0].latency_ms for p in candidates]
        builds = [self._build(p) for p in candidates]
        rounds = self.rounds
        while True:
            per = measure_alternating(self.ctx.target.measure, builds, rounds)
            ratios = [[t.median_ms / r.median_ms for t, r in zip(ts, per[0])] for ts in per]
            medians = [median_ratio(ts, per[0]) for ts in per]
            ranked = sorted(range(len(candidates)), key=medians.__getitem__)
            first, second = ranked[0], ranked[1] if len(ranked) > 1 else ranked[0]
            separated = first == second or max(ratios[first]) < min(ratios[second])
            if separated or rounds >= 3 * self.rounds:
                return medians
            rounds = min(3 * self.rounds, rounds * 2)


def structure_key(widths: list[int], removed: list[str] | None) -> str:
    """What decides a pruned model: every layer's width and the blocks removed."""
    return json.dumps([list(widths), sorted(removed or [])])


def probe_seed(seed: int, cr: float, mode: str = "width") -> int:
    """A seed per probe that does not depend on the order probes ran in (resume gives the same)."""
    tag = repr(cr) if mode == "width" else f"{mode}:{cr!r}"
    return (seed * 1_000_003 + zlib.crc32(tag.encode())) % (2 ** 31)


class PruneStage:
    name, what = "prune", "importance of channels and blocks, then a search on the pruning knob per mode"

    def run(self, ctx: Context, out: Path) -> StageOutput:
        cfg, base = ctx.config, ctx.results["baseline"]
        plan, blocks = build_plan(ctx), find_blocks(ctx)
        for item in plan.unprunable:
            ctx.note(f"left at full width: {', '.join(item['layers'])} -- {item['reason']}")
        modes = [m for m in MODES if ("width" not in m or plan.groups) and ("depth" not in m or blocks)]
        ctx.ui.say(f"  {len(plan.groups)} channel groups, {len(blocks)} removable residual blocks; "
                   f"search modes: {', '.join(modes) or 'none'}")
        state = ctx.rundir.load_checkpoint(CHECKPOINT) or {}
        saved = [p for st in state.get("modes", {}).values() for p in st.get("probes", [])]
        prober = Prober(ctx, plan, blocks, work=out / "probe", latency_cache=state.get("latency_cache", {}),
                        probes=saved)
        budget = Budget(min_accuracy=cfg.accuracy_floor(base["accuracy"]), max_latency_ms=cfg.latency_budget_ms)
        unpruned = prober.unpruned()
        unpruned.accepted = budget.accepts(unpruned)
        ctx.ui.say(f"  probes are built and timed at {prober.precision}; unpruned at {prober.precision}: "
                   f"{unpruned.latency_ms:.3f} ms")
        searches = {mode: self._search(ctx, mode, prober, budget, state) for mode in modes}
        outcome, chosen_mode, compared = self._choose(ctx, prober, {m: o for m, (_, o) in searches.items()},
                                                      budget, unpruned)
        probes = [p for s, _ in searches.values() for p in s.probes]
        _check_outcome(outcome, budget, probes + [unpruned])
        for note in _outcome_notes(outcome, budget):
            ctx.note(note)
        model = prober.model_for(chosen_mode, outcome.chosen.cr)
        torch.save(model, out / "model_searched.pt")
        return StageOutput(files={"searched_model": "model_searched.pt"},
                           data={**_outcome_data(outcome, probes, budget, plan, model,
                                                 restored=sum(s.restored for s, _ in searches.values())),
                                 "mode": chosen_mode, "unpruned": chosen_mode == UNPRUNED,
                                 "blocks": [asdict(b) for b in blocks], "blocks_removed": outcome.chosen.blocks_removed or [],
                                 "unprunable": list(plan.unprunable), "compared": compared,
                                 "probe_precision": prober.precision})

    def _search(self, ctx: Context, mode: str, prober: Prober, budget: Budget, state: dict,
                ) -> tuple[Searcher, SearchOutcome]:
        base = ctx.results["baseline"]
        measured = base["latency_method"] == "measured"
        searcher = Searcher(lambda knob: prober.evaluate(mode, knob), budget=budget,
                            min_interval=ctx.config.min_search_interval,
                            same_latency_rel=SAME_LATENCY_MEASURED if measured else 0.0,
                            state=state.get("modes", {}).get(mode),
                            confirm_same=prober.same_latency if measured else None)

        def checkpoint(s: dict) -> None:
            state.setdefault("modes", {})[mode] = s
            ctx.rundir.save_checkpoint(CHECKPOINT, {**state, "latency_cache": prober.latency_cache})
            p = ProbeResult.from_dict(s["probes"][-1])
            ctx.ui.say(f"  {mode:<11} probe {len(s['probes']):2d}: knob {p.cr:.4f}  val {p.accuracy:6.2f} %  "
                       f"{p.latency_ms:8.3f} ms  {p.flops / 1e6:7.1f} M MACs  "
                       f"{len(p.blocks_removed or [])} blocks removed  {'accepted' if p.accepted else 'rejected'}")
        searcher.on_probe = checkpoint
        if searcher.restored:
            ctx.ui.say(f"  resuming the search: {searcher.restored} probe(s) restored from the checkpoint ({mode})")
        return searcher, searcher.run()

    @staticmethod
    def _choose(ctx: Context, prober: Prober, outcomes: dict[str, SearchOutcome], budget: Budget,
                unpruned: ProbeResult):
        """The candidate that ships: each mode's choice and the unpruned model, judged at the
        probe precision. A latency budget the unpruned model meets is met by it (nothing is more
        accurate); otherwise the fastest accepted candidate, timed side by side, when it beats the
        unpruned engine by more than PAYS; else the unpruned model, said plainly."""
        met = {m: o for m, o in outcomes.items() if o.met}
        if not outcomes:
            return _unpruned_outcome(ctx, unpruned, budget, "nothing in this model can be pruned"), UNPRUNED, []
        if unpruned.accepted and (budget.max_latency_ms is not None or not met):
            return _unpruned_outcome(ctx, unpruned, budget, "it meets the budget and nothing is more accurate"
                                     if budget.max_latency_ms is not None else "no pruned model kept the accuracy"), \
                UNPRUNED, []
        if not met:   # nothing meets every budget: the width search's report of what is missed
            fallback = outcomes.get("width") or next(iter(outcomes.values()))
            return fallback, fallback.chosen.mode, []
        if budget.min_accuracy is None:   # latency budget alone: the most accurate that meets it
            mode = max(met, key=lambda m: (met[m].chosen.accuracy, -met[m].chosen.latency_ms))
            return met[mode], mode, []
        modes = list(met)
        ratios = prober.side_by_side([unpruned] + [met[m].chosen for m in modes])
        compared = [{"mode": UNPRUNED, "cr": 1.0, "ratio": 1.0}] + [
            {"mode": m, "cr": met[m].chosen.cr, "ratio": r, "accuracy": met[m].chosen.accuracy}
            for m, r in zip(modes, ratios[1:])]
        for c in compared:
            ctx.ui.say(f"  side by side at {prober.precision}: {c['mode']:<11} knob {c['cr']:.4f}  "
                       f"{c['ratio']:.3f}x the unpruned latency")
        best = min(range(len(modes)), key=lambda i: ratios[i + 1])
        if ratios[best + 1] > 1 - PAYS:
            return _unpruned_outcome(ctx, unpruned, budget, f"the fastest pruned model ({modes[best]}) runs at "
                                     f"{ratios[best + 1]:.2f}x the unpruned {prober.precision} engine's latency"), \
                UNPRUNED, compared
        return met[modes[best]], modes[best], compared

def build_plan(ctx: Context):
    cfg = ctx.config
    batches = ctx.data.train_batches(count=PLAN_BATCHES, batch_size=PLAN_BATCH_SIZE, seed=cfg.seed)
    opts = {} if cfg.allocation is None else {"allocation": cfg.allocation}
    return PruningPlan.build(ctx.original, batches, criterion=cfg.criterion, **opts)


def find_blocks(ctx: Context) -> list:
    """The original's removable residual blocks, scored on the first DEPTH_BATCHES importance
    batches; a block whose removal breaks the forward stays (noted, never fatal)."""
    cfg = ctx.config
    batches = list(ctx.data.train_batches(count=PLAN_BATCHES, batch_size=PLAN_BATCH_SIZE, seed=cfg.seed)[:DEPTH_BATCHES])
    blocks, failed = safe_blocks(ctx.original, find(ctx.original, batches), batches[0][:2])
    for item in failed:
        ctx.note(f"block kept: {', '.join(item['layers'])} -- {item['reason']}")
    return blocks


def _check_outcome(outcome: SearchOutcome, budget: Budget, probes: list[ProbeResult]) -> None:
    if not outcome.met and budget.min_accuracy is None:
        fastest = min(probes, key=lambda p: p.latency_ms)
        raise UserError(f"latency budget {budget.max_latency_ms:g} ms is out of reach: the fastest probe, down to the "
                        f"smallest model the target allows, measures {fastest.latency_ms:.3f} ms (cr {fastest.cr:.4f})",
                        f"raise --latency-budget-ms to at least {fastest.latency_ms:.3f}, or use a smaller model")


def _outcome_notes(outcome: SearchOutcome, budget: Budget) -> list[str]:
    notes = list(outcome.notes)
    if outcome.moved_from is not None:
        notes.append(f"same latency up to cr {outcome.chosen.cr:.4f}: moved there from cr {outcome.moved_from:.4f} "
                     f"(free accuracy)")
    if not outcome.met and "latency_ms" in outcome.missed:
        alt = outcome.alternative
        notes.append(f"the accuracy and latency budgets cannot be met together: the model that keeps the accuracy "
                     f"measures {outcome.chosen.latency_ms:.3f} ms, {outcome.missed['latency_ms']:.3f} ms over "
                     f"{budget.max_latency_ms:g} ms" + (f"; the most accurate model under {budget.max_latency_ms:g} ms "
                                                        f"reaches {alt.accuracy:.2f} % (below the floor of "
                                                        f"{budget.min_accuracy:.2f} %)" if alt else ""))
    return notes


def _outcome_data(outcome: SearchOutcome, probes: list[ProbeResult], budget: Budget, plan, model: nn.Module, *,
                  restored: int) -> dict:
    before, after = widths_of(plan.model), widths_of(model)
    return {"cr": outcome.chosen.cr, "chosen": asdict(outcome.chosen), "met": outcome.met,
            "missed": outcome.missed, "moved_from": outcome.moved_from, "notes": outcome.notes,
            "alternative": asdict(outcome.alternative) if outcome.alternative else None,
            "budget": asdict(budget), "probes": [asdict(p) for p in probes],
            "probes_restored": restored, "allocation": plan.allocation, "criterion": plan.criterion,
            "layers": [{"name": n, "before": before[n], "after": after.get(n, 0)} for n in before]}


def _unpruned_outcome(ctx: Context, unpruned: ProbeResult, budget: Budget, why: str) -> SearchOutcome:
    ctx.note(f"pruning does not pay for this model on {ctx.profile.name}: {why}; the unpruned model ships "
             f"(quantized the same way)")
    unpruned.accepted = budget.accepts(unpruned)
    missed = {} if budget.latency_ok(unpruned) else {"latency_ms": unpruned.latency_ms - budget.max_latency_ms}
    return SearchOutcome(chosen=unpruned, met=unpruned.accepted, missed=missed)
