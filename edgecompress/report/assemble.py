"""report.json assembled from the stages' records, and the one summary line printed at the end."""
from __future__ import annotations

from pathlib import Path

from edgecompress.pruning.search import Budget

TOP1 = {"name": "top-1", "unit": "%", "task": "classify"}


def metric_label(report: dict) -> str | None:
    """The score's name when it is not top-1 accuracy ("mAP50-95"), else None (the report says "accuracy")."""
    metric = report.get("metric") or TOP1
    return None if metric["name"] == TOP1["name"] else metric["name"]


def budget_record(results, result: dict) -> dict:
    """Whether what ships meets each budget (the one Budget the baseline resolved), and by how much
    it misses one."""
    base, prune = results.baseline, results.prune
    out = {"met": True, "missed": {}, "search": {"met": prune.met, "missed": prune.missed,
                                                 "alternative": _probe(prune.alternative)}}
    budget = Budget(**base.budget)
    floor = budget.min_accuracy
    if floor is not None:
        out["accuracy_floor"] = floor
        if not budget.keeps(result["accuracy"]):
            out["missed"]["accuracy_points"] = floor - result["accuracy"]
    limit = budget.max_latency_ms
    if limit is not None:
        interval = result.get("latency_interval_ms") or [result["latency_ms"]] * 2
        # met: the median; `clear`: the whole 95 % interval is under the budget
        out["latency"] = {"budget_ms": limit, "ms": result["latency_ms"], "interval_ms": interval,
                          "clear": interval[1] <= limit}
        if result["latency_ms"] > limit:
            out["missed"]["latency_ms"] = result["latency_ms"] - limit
    out["met"] = not out["missed"]
    return out


def _probe(p: dict | None) -> dict | None:
    keys = ("cr", "accuracy", "latency_ms", "flops", "params", "accepted")
    return None if p is None else {**{k: p[k] for k in keys}, "mode": p.get("mode", "width"),
                                   "blocks_removed": len(p.get("blocks_removed") or [])}


def assemble_report(*, config, results, run: dict, result: dict, extra: dict, unpruned: dict) -> dict:
    """report.json (schema 1, DESIGN.md "Run directory and report"). `run`: facts of the run that
    no stage records: target, model, data, preprocess, train_device, notes, artifacts, and each
    stage's seconds (`timings_s`, verify's included). `results`: the stages' typed records
    (pipeline/records.py)."""
    cfg, r = config, results
    base = {k: getattr(r.baseline, k) for k in ("accuracy", "test_accuracy", "latency_ms", "latency_method", "flops", "params",
                                                "bn_recalibrated_accuracy", "bn_frozen")}
    timings = dict(run["timings_s"])
    timings["total"] = round(sum(timings.values()), 3)
    return {
        "schema": 1, "target": run["target"], "precision": r.calibrate.precision,
        "max_acc_drop": cfg.max_acc_drop, "latency_budget_ms": cfg.latency_budget_ms,
        "baseline": base, "result": result,
        "unpruned": {k: unpruned[k] for k in ("tool", "runtime", "precision", "accuracy", "test_accuracy", "latency_ms",
                                              "latency_method", "shipped", "settings")},
        "pruning_speedup": unpruned["speedup"],   # {ratio, low, high}: the yardstick's latency / the engine's
        # our unpruned engine at the same precision and settings / the engine: pruning's own share
        "pruning_share": unpruned["pruning_share"],
        "speed_steps": extra.get("steps", []),
        "deploy": {"settings": extra.get("settings"), "settings_choice": r.baseline.settings_choice},
        "pruning": {k: getattr(r.prune, k) for k in ("mode", "unpruned", "blocks_removed", "blocks", "unprunable",
                                                    "decision", "probe_precision", "channel_multiple",
                                                    "latency_table", "table_timing", "removal_order")},
        "yardstick": r.baseline.engines,
        "probes": [_probe(p) for p in r.prune.probes],
        "artifacts": run["artifacts"], "timings_s": timings,
        # extra keys (DESIGN allows them): what the report page and `compress check` read
        "layers": r.prune.layers, "precisions": r.calibrate.precisions,
        "command": cfg.command, "request": cfg.identity(), "parity_max_abs_diff": r.export.parity_max_abs_diff,
        "notes": list(run["notes"]), "budget": budget_record(r, result),
        "baseline_precision": r.baseline.precision, "engine": r.build.engine,
        "built_here": r.build.built_here, "model": run["model"], "data": run["data"],
        "seed": cfg.seed, "code": run.get("code"), "search": {k: getattr(r.prune, k) for k in ("moved_from", "allocation", "criterion", "probes_restored")},
        "finetune": r.finetune.to_dict(), "result_details": extra,
        "preprocess": run["preprocess"], "train_device": run["train_device"],
        # what `accuracy` means everywhere in this report: top-1 in %, or another score in points
        "metric": run.get("metric") or TOP1,
    }


def summary(report: dict, run_dir: Path) -> str:
    """The one line printed at the end."""
    b, res = report["baseline"], report["result"]
    method = res["latency_method"]
    engine = run_dir / report["engine"]
    where = f"engine: {engine}" if report.get("built_here", True) else \
        f"ONNX for the device: {engine}; build the engine ON THE DEVICE with {run_dir / 'build_engine.sh'}"
    budget = "" if report["budget"]["met"] else "  BUDGET MISSED: " + ", ".join(
        f"{k} by {v:.3f}" for k, v in report["budget"]["missed"].items())
    latency = report["budget"].get("latency")
    if latency:
        low, high = latency["interval_ms"]
        budget += (f"  latency budget {latency['budget_ms']:g} ms: {latency['ms']:.3f} [{low:.3f}, {high:.3f}] ms"
                   + ("" if latency["clear"] or not report["budget"]["met"] else " (the interval reaches past it)"))
    label = metric_label(report)
    score = (f"accuracy {b['accuracy']:.2f} % -> {res['accuracy']:.2f} % (val)" if label is None else
             f"{label} {b['accuracy']:.2f} -> {res['accuracy']:.2f} (val)")
    return (f"{score}, latency {b['latency_ms']:.3f} -> "
            f"{res['latency_ms']:.3f} ms ({method}, {ratio_text(res['speedup'])}), {report['precision']}, "
            f"{pruning_phrase(report)}, "
            f"{where}{budget}")


def pruning_phrase(report: dict) -> str:
    """The headline: what the engine buys over the user's fastest plain engine of the unpruned
    model at its runtime's defaults (the yardstick), with the 95 % interval of the side-by-side
    ratio; then pruning's own share, at equal shape, settings and precision (never a precision
    change credited to pruning)."""
    unpruned, gain = report.get("unpruned"), report.get("pruning_speedup")
    if not unpruned or not isinstance(gain, dict):
        return "vs plain: n/a"
    estimated = " (estimated)" if unpruned.get("latency_method") == "estimated" else ""
    over = (f"{ratio_text(gain)}{estimated} over the plain {unpruned['precision']} engine "
            f"({unpruned.get('tool', '?')}, {unpruned.get('runtime', '?')} defaults)")
    share = report.get("pruning_share")
    if unpruned.get("shipped"):
        return f"{over}; pruning did not measurably pay, the unpruned model ships at {report['precision']}"
    return f"{over}; pruning: {ratio_text(share)} at equal settings and precision" if share else over


def ratio_text(r: dict) -> str:
    """{"ratio", "low", "high"} -> "1.27x [1.24, 1.30]" (a point for estimates)."""
    if r["low"] == r["high"]:
        return f"{r['ratio']:.2f}x"
    return f"{r['ratio']:.2f}x [{r['low']:.2f}, {r['high']:.2f}]"
