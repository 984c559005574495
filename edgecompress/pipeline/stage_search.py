"""Stages `baseline` (the original model measured) and `prune` (importance once, then the search)."""
from __future__ import annotations

import json
import zlib
from dataclasses import asdict, replace
from pathlib import Path

import torch
from torch import nn

from edgecompress.errors import UserError
from edgecompress.pipeline.context import Context
from edgecompress.pipeline.distill import DistillConfig, distill
from edgecompress.pipeline.evaluation import macs_and_params, recalibrate_bn
from edgecompress.pipeline.rundir import write_json
from edgecompress.pipeline.search import Budget, ProbeResult, Searcher, SearchOutcome
from edgecompress.pipeline.stages import StageOutput
from edgecompress.targets.base import relative_latency

SEARCH_STATE = "search_state.json"
PLAN_BATCHES, PLAN_BATCH_SIZE = 4, 128   # 512 training images for the one importance pass
SAME_LATENCY_MEASURED = 0.03             # measured latencies within 3 % count as the same step
RETIME_ROUNDS = 3                        # alternating rounds whenever two measured latencies are compared


def widths_of(model: nn.Module) -> dict[str, int]:
    """Output channels of every conv / linear layer (what latency depends on)."""
    return {n: int(m.weight.shape[0]) for n, m in model.named_modules()
            if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear))}


class BaselineStage:
    name, what = "baseline", "the original model: validation/test accuracy, MACs, latency on the target"

    def run(self, ctx: Context, out: Path) -> StageOutput:
        model = ctx.original
        acc = ctx.original_accuracy()
        test_acc = ctx.accuracy(model, "test")
        macs, params = macs_and_params(model, ctx.input_shape)
        precision = ctx.search_precision()
        latency, _ = ctx.measure_model(model, out / "work", precision=precision)
        ctx.ui.say(f"  original: val {acc:.2f} %, test {_pct(test_acc)}, {macs / 1e6:.1f} M MACs, "
                   f"{latency.median_ms:.3f} ms ({latency.method}, {precision})")
        return StageOutput(data={
            "accuracy": acc, "test_accuracy": test_acc, "flops": macs, "params": params,
            "latency_ms": latency.median_ms, "latency_p90_ms": _finite(latency.p90_ms),
            "latency_method": latency.method, "latency_device": latency.device, "precision": precision,
            "widths": widths_of(model)})


def _pct(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.2f} %"


def _finite(v: float) -> float | None:
    return None if v != v else v


class Prober:
    """`evaluate(cr)` for the searcher: prune -> BN recalibration -> (reconstruct) -> (short KD)
    -> validation accuracy -> ONNX -> target build -> latency.

    Equal keep counts give the same pruned model, so a cr whose widths were probed already is
    answered from that probe (its model, seed and figures): on the default run the step move's
    probes often land on a step already measured. Latency is cached by widths too."""

    def __init__(self, ctx: Context, plan, *, work: Path, latency_cache: dict, probes: list[dict] = ()) -> None:
        cfg, prof = ctx.config, ctx.profile
        self.ctx, self.plan, self.work = ctx, plan, work
        self.rounding = {"multiple": prof.channel_multiple, "min_channels": prof.min_channels}
        self.bn_batches = ctx.train_batches(count=cfg.bn_batches, batch_size=cfg.batch_size, seed=cfg.seed + 1)
        self.recon_batches = self.bn_batches[:4]
        self.precision = ctx.probe_precision()
        self.latency_cache = latency_cache   # json key of widths -> {"median_ms", "method"}
        self.by_widths = {json.dumps(p["widths"]): ProbeResult.from_dict(p) for p in reversed(probes)}
        self.models: dict[float, nn.Module] = {}
        self.measured = ctx.results["baseline"]["latency_method"] == "measured"
        self._reference = None   # (the original built at the probe precision, its ms in baseline terms)

    def reference(self):
        """The original model built at the probe precision and its latency on the baseline stage's
        scale: the baseline figure itself at the baseline precision, else that figure times the
        side-by-side ratio of the two precisions. Measured probes are timed against it."""
        if self._reference is None:
            base, root = self.ctx.results["baseline"], self.work.parent
            ref = self.ctx.build_model(self.ctx.original, root / "reference", precision=self.precision)
            ms = base["latency_ms"]
            if self.precision != base["precision"]:
                at_base = self.ctx.build_model(self.ctx.original, root / "reference-base", precision=base["precision"])
                ms *= relative_latency(self.ctx.target.measure, ref, at_base, RETIME_ROUNDS)
            self._reference = (ref, ms)
        return self._reference

    def _pruned(self, cr: float) -> tuple[nn.Module, str]:
        model = self.plan.prune(cr, **self.rounding)
        return model, json.dumps(list(widths_of(model).values()))

    def model_for(self, cr: float) -> nn.Module:
        """The probe's model; rebuilt identically (same seeds) when it is not in memory."""
        if cr in self.models:
            return self.models[cr]
        cfg = self.ctx.config
        model, key = self._pruned(cr)
        first = self.by_widths[key].cr if key in self.by_widths else cr   # whose seed made this model
        recalibrate_bn(model, self.bn_batches, device=self.ctx.device)
        if cfg.reconstruct:   # after BN recalibration: measured better than before it (docs/benchmarks.md)
            from edgecompress.pruning.reconstruct import reconstruct
            reconstruct(model, self.ctx.original, self.recon_batches, seed=cfg.seed)
        if cfg.probe_finetune_steps:
            distill(model, self.ctx.original, self.ctx.data.train, steps=cfg.probe_finetune_steps,
                    config=DistillConfig(temperature=cfg.temperature, alpha=cfg.alpha, lr=cfg.lr,
                                         batch_size=cfg.batch_size, augment=cfg.augment), seed=probe_seed(cfg.seed, first), device=self.ctx.device, workers=self.ctx.data.workers)
        self.models = {cr: model.eval()}  # keep only the latest: the chosen one is rebuilt if needed
        return model

    def evaluate(self, cr: float) -> ProbeResult:
        _, key = self._pruned(cr)
        if key in self.by_widths:
            return replace(self.by_widths[key], cr=cr, accepted=False)
        model = self.model_for(cr)
        acc = self.ctx.val_accuracy(model)
        if key not in self.latency_cache:
            self.latency_cache[key] = self._latency(model)
        macs, params = macs_and_params(model, self.ctx.input_shape)
        result = ProbeResult(cr=cr, accuracy=acc, latency_ms=self.latency_cache[key]["median_ms"],
                             flops=macs, params=params, widths=json.loads(key))
        self.by_widths[key] = result
        return result

    def _latency(self, model: nn.Module) -> dict:
        """Estimated: the estimate. Measured: timed side by side with the original (RETIME_ROUNDS
        alternating rounds) and put on the baseline stage's scale, so probes timed minutes apart
        compare with each other and with the budget as if timed together with the baseline."""
        if not self.measured:
            latency, _ = self.ctx.measure_model(model, self.work, precision=self.precision)
            return {"median_ms": latency.median_ms, "method": latency.method}
        build = self.ctx.build_model(model, self.work, precision=self.precision)
        ref, ref_ms = self.reference()
        ratio = relative_latency(self.ctx.target.measure, build, ref, RETIME_ROUNDS)
        return {"median_ms": ref_ms * ratio, "method": "measured", "ratio_to_original": ratio}

    def same_latency(self, candidate: ProbeResult, chosen: ProbeResult) -> bool:
        """Whether `candidate` is as fast as `chosen` when the two are built again and timed in
        alternation (RETIME_ROUNDS rounds each): the median of the per-round ratios within
        SAME_LATENCY_MEASURED. Widths alone decide latency, so the models need no distillation."""
        builds = [self.ctx.build_model(self._pruned(p.cr)[0], self.work / f"retime{i}", precision=self.precision)
                  for i, p in enumerate((candidate, chosen))]
        ratio = relative_latency(self.ctx.target.measure, *builds, RETIME_ROUNDS)
        same = ratio <= 1 + SAME_LATENCY_MEASURED
        self.ctx.ui.say(f"  re-timed side by side: cr {candidate.cr:.4f} / cr {chosen.cr:.4f} = {ratio:.3f}x "
                        f"-> {'same step' if same else 'slower: not moved there'}")
        return same


def probe_seed(seed: int, cr: float) -> int:
    """A seed per probe that does not depend on the order probes ran in (resume gives the same)."""
    return (seed * 1_000_003 + zlib.crc32(repr(cr).encode())) % (2 ** 31)


class PruneStage:
    name, what = "prune", "channel importance, then binary search on the pruning knob"

    def run(self, ctx: Context, out: Path) -> StageOutput:
        cfg, base = ctx.config, ctx.results["baseline"]
        plan = build_plan(ctx)
        state_file = ctx.rundir.path / SEARCH_STATE
        state = json.loads(state_file.read_text()) if state_file.is_file() else {}
        prober = Prober(ctx, plan, work=out / "probe", latency_cache=state.get("latency_cache", {}),
                        probes=state.get("probes", []))
        budget = Budget(min_accuracy=None if cfg.max_acc_drop is None else base["accuracy"] - cfg.max_acc_drop,
                        max_latency_ms=cfg.latency_budget_ms)
        same = 0.0 if base["latency_method"] == "estimated" else SAME_LATENCY_MEASURED
        searcher = Searcher(prober.evaluate, budget=budget, min_interval=cfg.min_search_interval,
                            same_latency_rel=same, state=state,
                            confirm_same=prober.same_latency if base["latency_method"] == "measured" else None)
        searcher.on_probe = lambda s: self._checkpoint(ctx, state_file, s, prober, budget)
        if prober.precision != base["precision"]:
            ctx.ui.say(f"  probes are timed at {prober.precision} (the latency budget is on the shipped engine)")
        if searcher.restored:
            ctx.ui.say(f"  resuming the search: {searcher.restored} probe(s) restored from {SEARCH_STATE}")
        outcome = searcher.run()
        _check_outcome(outcome, budget, searcher.probes)
        for note in _outcome_notes(outcome, budget):
            ctx.note(note)
        model = prober.model_for(outcome.chosen.cr)
        torch.save(model, out / "model_searched.pt")
        return StageOutput(files={"searched_model": "model_searched.pt"},
                           data={**_outcome_data(outcome, searcher, budget, plan, model),
                                 "probe_precision": prober.precision})

    @staticmethod
    def _checkpoint(ctx: Context, state_file: Path, state: dict, prober: Prober, budget: Budget) -> None:
        write_json(state_file, {**state, "latency_cache": prober.latency_cache})
        p = ProbeResult.from_dict(state["probes"][-1])
        ctx.ui.say(f"  probe {len(state['probes']):2d}: cr {p.cr:.4f}  val {p.accuracy:6.2f} %  "
                   f"{p.latency_ms:8.3f} ms  {p.flops / 1e6:7.1f} M MACs  {'accepted' if p.accepted else 'rejected'}")


def build_plan(ctx: Context):
    from edgecompress.pruning import PruningPlan
    cfg = ctx.config
    batches = ctx.train_batches(count=PLAN_BATCHES, batch_size=PLAN_BATCH_SIZE, seed=cfg.seed)
    opts = {} if cfg.allocation is None else {"allocation": cfg.allocation}
    return PruningPlan.build(ctx.original, batches, criterion=cfg.criterion, **opts)


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


def _outcome_data(outcome: SearchOutcome, searcher: Searcher, budget: Budget, plan, model: nn.Module) -> dict:
    before, after = widths_of(plan.model), widths_of(model)
    return {"cr": outcome.chosen.cr, "chosen": asdict(outcome.chosen), "met": outcome.met,
            "missed": outcome.missed, "moved_from": outcome.moved_from, "notes": outcome.notes,
            "alternative": asdict(outcome.alternative) if outcome.alternative else None,
            "budget": asdict(budget), "probes": [asdict(p) for p in searcher.probes],
            "probes_restored": searcher.restored, "allocation": plan.allocation, "criterion": plan.criterion,
            "layers": [{"name": n, "before": before[n], "after": after.get(n, before[n])} for n in before]}
