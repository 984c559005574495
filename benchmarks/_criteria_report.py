"""Phases `latency` and `report` of benchmarks/compare_criteria.py.

latency: every saved model (each base model's original.pt and every configuration's model.pt) is
exported to ONNX, built as an OpenVINO FP32 IR and timed at batch 1 by the one timing protocol
(edgecompress.targets.timing.time_builds), one run of it per base model with its original as the
reference: latency.json holds each model's median ms and its latency ratio to its original with
the 95 % interval; a rerun measures only what is missing, timed again with the original
(--force: everything).
report: tables, plots and the goal check, written into the "## Criteria comparison" section of
docs/benchmarks.md (no other section is touched).
"""
from __future__ import annotations

import inspect
import json
import tempfile
import time
from pathlib import Path

import torch

from _common import describe_machine, machine, md_table, replace_section
from _criteria_search import write_json

SECTION = "Criteria comparison"
TP_CRITERIA = ("l1", "l2", "bn_scale", "taylor")   # Torch-Pruning's importances, as named in CRITERIA


def saved_models(out: Path) -> dict[str, Path]:
    """key -> model file: `<model>/original` and `<model>/<config>` for every finished configuration."""
    found = {f"{p.parent.name}/original": p for p in sorted(out.glob("*/original.pt"))}
    for p in sorted(out.glob("*/*/model.pt")):
        if (p.parent / "result.json").is_file():
            found[f"{p.parent.parent.name}/{p.parent.name}"] = p
    return found


def x86_target(*, quick: bool, threads: int | None = None):
    from edgecompress.profiles import load_profile
    from edgecompress.targets import get_target
    profile = load_profile("x86-cpu")
    bench = {"threads": threads} if threads else {}
    if quick:
        bench.update(warmup=2, iterations=10, min_time_s=0.0)
    return get_target(profile.model_copy(update={"benchmark": profile.benchmark.model_copy(update=bench)}))


def build_file(path: Path, target, work: Path):
    """A saved model exported to ONNX and built as the target's FP32 engine."""
    from edgecompress.exporters import to_onnx
    model = torch.load(path, map_location="cpu", weights_only=False).eval()
    onnx_path = to_onnx(model, work / "model.onnx", input_shape=(1, 28, 28))
    return target.build(onnx_path, work / "engine", precision="fp32")


def latency_phase(out: Path, *, quick: bool, force: bool = False, threads: int | None = None,
                  max_time_s: float | None = None) -> dict:
    """Measure every saved model not yet in latency.json (all of them with `force`): per base model,
    its original and the configurations to measure built, then timed together by the protocol with
    the original as the reference (its entry is refreshed each time: the ratios come from the same
    blocks). The protocol stops when every ratio is within +-1 % or at `max_time_s` (default 60 s
    per base model; quick 5 s)."""
    from edgecompress.targets.timing import time_builds
    max_time_s = max_time_s or (5.0 if quick else 60.0)
    path = out / "latency.json"
    done = {} if force or not path.is_file() else json.loads(path.read_text())
    target = x86_target(quick=quick, threads=threads)
    rows = done.get("models", {})
    saved = saved_models(out)
    todo = {k: p for k, p in saved.items() if k not in rows}
    for base in sorted({k.split("/")[0] for k in todo}):
        group = {k: p for k, p in saved.items() if k.split("/")[0] == base and (k in todo or k.endswith("/original"))}
        reference = f"{base}/original"
        if reference not in group:
            print(f"  {base}: no original.pt, its configurations are not timed", flush=True)
            continue
        with tempfile.TemporaryDirectory() as tmp:
            builds = {k: build_file(p, target, Path(tmp) / k.replace("/", "__")) for k, p in group.items()}
            timing = time_builds(target, builds, reference=reference, max_time_s=max_time_s, half_width=0.01)
        for key in builds:
            rows[key] = {"median_ms": timing.ms[key], "ratio_to_original": timing.ratios[key].to_dict(),
                         "method": "measured", "device": target.profile.name,
                         "timing": {k: v for k, v in timing.to_dict().items() if k not in ("ratios", "ms")}}
            print(f"  {key}: {timing.ms[key]:.3f} ms, {timing.ratios[key]} of the original "
                  f"({timing.blocks} blocks, {timing.stopped})", flush=True)
    write_json(path, {"machine": machine(), "benchmark": target.profile.benchmark.model_dump(),
                      "precision": "fp32", "protocol": "targets.timing.time_builds", "max_time_s": max_time_s,
                      "models": rows})
    return json.loads(path.read_text())


def load_rows(out: Path) -> tuple[dict, list[dict], dict]:
    """(baselines by model, result rows with latency joined in, latency file)."""
    lat_file = out / "latency.json"
    lat = json.loads(lat_file.read_text()) if lat_file.is_file() else {"models": {}}
    bases = {p.parent.name: json.loads(p.read_text()) for p in sorted(out.glob("*/baseline.json"))}
    rows = []
    for p in sorted(out.glob("*/*/result.json")):
        r = json.loads(p.read_text())
        m = lat["models"].get(f"{p.parent.parent.name}/{p.parent.name}")
        base_ms = lat["models"].get(f"{p.parent.parent.name}/original", {}).get("median_ms")
        r["latency_ms"] = m["median_ms"] if m else None
        if m and "ratio_to_original" in m:       # the protocol's paired ratio (latency.json since the port)
            r["latency_ratio"] = m["ratio_to_original"]["ratio"]
            r["latency_interval"] = m["ratio_to_original"]
        else:                                     # an older latency.json: ratio of two medians
            r["latency_ratio"] = m["median_ms"] / base_ms if m and base_ms else None
        rows.append(r)
    for name, b in bases.items():
        b["latency_ms"] = lat["models"].get(f"{name}/original", {}).get("median_ms")
    return bases, rows, lat


def product_default() -> tuple[str, str]:
    """(criterion, allocation) that `compress` uses when the user names none."""
    from edgecompress.pipeline.config import RunConfig
    from edgecompress.pruning import PruningPlan
    return RunConfig.criterion, inspect.signature(PruningPlan.build).parameters["allocation"].default


def within_budget(r: dict, base: dict, drop: float) -> bool:
    """The promise on what ships: the final model's validation accuracy within the budget."""
    return r["val_accuracy"] >= base["val_accuracy"] - drop - 1e-9


def goal_check(bases: dict, rows: list[dict], drop: float) -> list[dict]:
    """Per base model: our default vs the fastest Torch-Pruning criterion with uniform allocation,
    and the fastest variant overall (all at the same accuracy budget, measured latency)."""
    ours_crit, ours_alloc = product_default()
    out = []
    for name, base in bases.items():
        mine = [r for r in rows if r["model"] == name and r.get("latency_ms") is not None]
        ok = [r for r in mine if within_budget(r, base, drop)]
        ours = next((r for r in mine if r["criterion"] == ours_crit and r["allocation"] == ours_alloc), None)
        tp = [r for r in ok if r["criterion"] in TP_CRITERIA and r["allocation"] == "uniform"]
        best_tp = min(tp, key=lambda r: r["latency_ms"], default=None)
        best = min(ok, key=lambda r: r["latency_ms"], default=None)
        gain = None
        if ours and best_tp:
            gain = 100.0 * (1 - ours["latency_ms"] / best_tp["latency_ms"])
        out.append({"model": name, "ours": ours, "ours_ok": bool(ours and within_budget(ours, base, drop)),
                    "best_tp": best_tp, "best": best, "gain_pct": gain})
    return out


def _label(r: dict | None) -> str:
    return "n/a" if r is None else f"{r['criterion']} / {r['allocation']}"


def goal_text(checks: list[dict]) -> str:
    lines = []
    for c in checks:
        if c["gain_pct"] is None:
            lines.append(f"- **{c['model']}**: not enough measured rows for the goal check.")
            continue
        verdict = "is met" if c["gain_pct"] >= 20 and c["ours_ok"] else "is NOT met"
        lines.append(
            f"- **{c['model']}**: our default ({_label(c['ours'])}) {c['ours']['latency_ms']:.3f} ms vs the best "
            f"Torch-Pruning criterion with uniform ratio ({_label(c['best_tp'])}) {c['best_tp']['latency_ms']:.3f} ms: "
            f"**{c['gain_pct']:+.1f} %** lower latency; the goal (>= 20 %) {verdict}"
            + ("" if c["ours_ok"] else " (and our model's final validation accuracy is outside the budget)") + ". "
            f"Fastest variant within the budget: {_label(c['best'])} "
            f"({c['best']['latency_ms']:.3f} ms, test {c['best']['test_accuracy']:.2f} %).")
    return "\n".join(lines)


def losses_text(bases: dict, rows: list[dict], drop: float) -> str:
    """Every variant that beats our default on measured latency within the budget, by how much."""
    crit, alloc = product_default()
    lines = []
    for name, base in bases.items():
        ours = next((r for r in rows if r["model"] == name and r["criterion"] == crit and r["allocation"] == alloc
                     and r.get("latency_ms") is not None), None)
        if ours is None:
            continue
        better = sorted((r for r in rows if r["model"] == name and r is not ours and r.get("latency_ms") is not None
                         and within_budget(r, base, drop) and r["latency_ms"] < ours["latency_ms"]),
                        key=lambda r: r["latency_ms"])
        for r in better:
            lines.append(f"- {name}: {_label(r)} is {100 * (1 - r['latency_ms'] / ours['latency_ms']):.1f} % faster "
                         f"than our default ({r['latency_ms']:.3f} vs {ours['latency_ms']:.3f} ms; test "
                         f"{r['test_accuracy']:.2f} vs {ours['test_accuracy']:.2f} %).")
        if not better:
            lines.append(f"- {name}: no variant within the budget is faster than our default.")
    return "\n".join(lines)


COLUMNS = [
    ("criterion", lambda r: r.get("criterion", "original")),
    ("allocation", lambda r: r.get("allocation", "")),
    ("knob", lambda r: None if r.get("knob") is None else f"{r['knob']:.4f}"),
    ("probes", lambda r: r.get("probes")),
    ("MMACs (% orig)", lambda r: f"{r['macs'] / 1e6:.2f} ({100 * r.get('macs_ratio', 1):.0f} %)"),
    ("params (k)", lambda r: f"{r['params'] / 1e3:.1f}"),
    ("val % after probe KD", lambda r: r.get("probe_val_accuracy")),
    ("val %", lambda r: r["val_accuracy"]),
    ("test %", lambda r: r["test_accuracy"]),
    ("latency ms", lambda r: None if r.get("latency_ms") is None else f"{r['latency_ms']:.3f}"),
    ("ratio to orig", lambda r: _ratio_cell(r)),
    ("compression s", lambda r: r.get("wall_s")),
]


def _ratio_cell(r: dict) -> str | None:
    """Latency / the original's: with the protocol's 95 % interval when latency.json has one."""
    q = r.get("latency_interval")
    if q:
        return f"{q['ratio']:.3f} [{q['low']:.3f}, {q['high']:.3f}]"
    return None if r.get("latency_ratio") is None else f"{r['latency_ratio']:.3f}"


def tables(bases: dict, rows: list[dict]) -> str:
    parts = []
    for name, base in bases.items():
        mine = sorted((r for r in rows if r["model"] == name),
                      key=lambda r: (r.get("latency_ms") or float("inf"), r["criterion"], r["allocation"]))
        orig = {**base, "latency_ratio": 1.0 if base.get("latency_ms") else None}
        parts.append(f"**{name}** (original: val {base['val_accuracy']:.2f} %, test {base['test_accuracy']:.2f} %)\n\n"
                     + md_table([orig, *mine], COLUMNS))
    return "\n\n".join(parts)


def plot(bases: dict, rows: list[dict], png: Path) -> Path | None:
    """Per base model: test accuracy vs measured latency of every chosen model (filled: cr,
    hollow: uniform), and the search probes' validation accuracy vs MACs per criterion."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    criteria = sorted({r["criterion"] for r in rows})
    colours = {c: plt.cm.tab10(i % 10) for i, c in enumerate(criteria)}
    fig, axes = plt.subplots(len(bases), 2, figsize=(12, 4.2 * len(bases)), squeeze=False)
    for (name, base), (ax_lat, ax_probe) in zip(bases.items(), axes):
        _plot_latency(ax_lat, name, base, [r for r in rows if r["model"] == name], colours)
        _plot_probes(ax_probe, name, base, [r for r in rows if r["model"] == name], colours)
    fig.tight_layout()
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=110)
    plt.close(fig)
    return png


def _plot_latency(ax, name: str, base: dict, rows: list[dict], colours: dict) -> None:
    for r in rows:
        if r.get("latency_ms") is None:
            continue
        filled = r["allocation"] == "cr"
        ax.scatter(r["latency_ms"], r["test_accuracy"], s=60, marker="o" if filled else "s",
                   facecolors=colours[r["criterion"]] if filled else "none", edgecolors=colours[r["criterion"]],
                   label=f"{r['criterion']} / {r['allocation']}")
    if base.get("latency_ms"):
        ax.scatter(base["latency_ms"], base["test_accuracy"], marker="*", s=140, c="k", label="original")
    ax.set(xlabel="measured OpenVINO latency, batch 1 (ms)", ylabel="test accuracy (%)",
           title=f"{name}: chosen models (filled o: cr, hollow []: uniform)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)


def _plot_probes(ax, name: str, base: dict, rows: list[dict], colours: dict) -> None:
    for r in rows:
        probes = sorted(r.get("probe_list", []), key=lambda p: p["macs"])
        ax.plot([p["macs"] / 1e6 for p in probes], [p["val_accuracy"] for p in probes],
                "-o" if r["allocation"] == "cr" else "--s", ms=3, color=colours[r["criterion"]],
                label=f"{r['criterion']} / {r['allocation']}")
    ax.axhline(base["val_accuracy"] - 1.0, color="k", lw=0.8, ls=":", label="budget (val - 1 point)")
    ax.set(xlabel="MMACs", ylabel="val accuracy after probe KD (%)", title=f"{name}: search probes",
           ylim=(max(0, base["val_accuracy"] - 15), base["val_accuracy"] + 1))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)


def seed_table(folders: list[Path]) -> str:
    """Configurations found in two or more results folders (runs with different --seed): MACs,
    latency as a ratio to the original timed in the same folder's rounds, and test accuracy per
    seed, with their means."""
    runs = []
    for folder in folders:
        seed = json.loads((folder / "settings.json").read_text())["settings"]["seed"]
        runs.append((seed, {(r["model"], r["criterion"], r["allocation"]): r for r in load_rows(folder)[1]}))
    runs.sort(key=lambda run: run[0])
    keys = sorted({k for _, by_key in runs for k in by_key}, key=lambda k: (k[0], k[2], k[1]))
    lines = []
    for key in keys:
        found = [(seed, by_key[key]) for seed, by_key in runs if key in by_key]
        if len(found) < 2:
            continue
        lines.append({"model": key[0], "criterion": key[1], "allocation": key[2],
                      "seeds": ", ".join(str(seed) for seed, _ in found),
                      **{name: [get(r) for _, r in found] for name, get in (
                          ("macs", lambda r: 100 * r["macs_ratio"]), ("ratio", lambda r: r.get("latency_ratio")),
                          ("test", lambda r: r["test_accuracy"]))}})

    def cells(values: list, fmt: str) -> str:
        shown = [v for v in values if v is not None]
        mean = f" (mean {format(sum(shown) / len(shown), fmt)})" if len(shown) == len(values) else ""
        return " / ".join("n/a" if v is None else format(v, fmt) for v in values) + mean

    return md_table(lines, [("model", lambda r: r["model"]), ("criterion", lambda r: r["criterion"]),
                            ("allocation", lambda r: r["allocation"]), ("seeds", lambda r: r["seeds"]),
                            ("MACs % of orig", lambda r: cells(r["macs"], ".0f")),
                            ("latency ratio to orig", lambda r: cells(r["ratio"], ".3f")),
                            ("test %", lambda r: cells(r["test"], ".2f"))])


BINS = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8)   # MACs fractions: [0.3, 0.4), [0.4, 0.5), ...


def probe_bins_table(folders: list[Path], allocation: str = "cr") -> str:
    """Every search probe of every seed pooled per model x criterion: mean validation accuracy
    after probe KD (and the number of probes) by MACs kept. Compares criteria on more points than
    the one model each search ships."""
    pooled: dict[tuple[str, str], dict[float, list[float]]] = {}
    for folder in folders:
        bases, rows, _ = load_rows(folder)
        for r in rows:
            if r["allocation"] != allocation:
                continue
            bins = pooled.setdefault((r["model"], r["criterion"]), {})
            for p in r.get("probe_list", []):
                frac = p["macs"] / bases[r["model"]]["macs"]
                lo = next((b for b in reversed(BINS[:-1]) if b <= frac), None)
                if lo is not None and frac < BINS[-1]:
                    bins.setdefault(lo, []).append(p["val_accuracy"])
    columns = [("model", lambda r: r[0]), ("criterion", lambda r: r[1])]
    for lo, hi in zip(BINS, BINS[1:]):
        columns.append((f"{lo:.0%}-{hi:.0%} MACs", lambda r, lo=lo: (
            f"{sum(v) / len(v):.2f} ({len(v)})" if (v := pooled[r].get(lo)) else None)))
    return md_table(sorted(pooled), columns)


def report_phase(out: Path, *, docs: Path, commands: list[str], img: Path | None = None,
                 seed_runs: list[Path] = ()) -> str:
    bases, rows, lat = load_rows(out)
    settings = json.loads((out / "settings.json").read_text())
    drop = settings["settings"]["max_acc_drop"]
    img = img or docs.parent / "img" / "criteria_comparison.png"
    png = plot(bases, rows, img) if rows else None
    body = _body(bases, rows, lat, settings, commands, drop, png, docs)
    if seed_runs:
        body += ("\n\nSeed spread (the same configurations searched again with other --seed values from the same "
                 "original; latency as a ratio to the original timed in the same rounds):\n\n"
                 + seed_table([out, *seed_runs])
                 + "\n\nEvery search probe with `cr` allocation, pooled over the seeds: mean validation accuracy "
                 "after probe KD (number of probes) by MACs kept:\n\n" + probe_bins_table([out, *seed_runs]))
    replace_section(docs, SECTION, body)
    return body


def _body(bases, rows, lat, settings, commands, drop, png, docs: Path) -> str:
    s = settings["settings"]
    search_machine = describe_machine(settings["machine"])
    lat_machine = describe_machine(lat["machine"]) if lat.get("machine") else "not measured yet"
    rel = png.relative_to(docs.parent) if png and png.is_relative_to(docs.parent) else png
    return "\n".join([
        "`benchmarks/compare_criteria.py` (issue 7). Every base model x criterion x allocation goes through the "
        "same binary search (the pipeline's `Searcher`, minimum interval "
        f"{s['min_interval']}) on its one knob (cr for `cr`, the keep ratio for `uniform`) with the same "
        f"accuracy budget ({drop} point of validation top-1 below the original) and the same fine-tuning "
        f"budget: each probe is prune (keep counts rounded up to {s['multiple']}, at least {s['min_channels']}) -> "
        f"BatchNorm recalibration on {s['bn_batches']} x {s['batch_size']} training images -> "
        f"{s['probe_steps']} steps of KD -> validation accuracy; the chosen model (fewest MACs among the "
        f"accepted probes) then gets {s['finetune_steps']} steps of KD (batch {s['batch_size']}, the pipeline's "
        "DistillConfig). Latency: OpenVINO FP32 IR, batch 1, the `x86-cpu` target's probe (median). "
        f"Compression wall time per configuration with {settings.get('jobs', 1)} configuration(s) sharing the "
        "search machine at once (importance + search + final KD).",
        "", "Commands:", "", *[f"    {c}" for c in commands], "",
        f"Search machine: {search_machine}. Latency machine: {lat_machine}.", "",
        tables(bases, rows), "",
        f"![accuracy vs measured latency]({rel})" if png else "(no plot: matplotlib missing or no rows)", "",
        "Goal check (our default vs the best Torch-Pruning criterion with uniform ratio, same budgets):", "",
        goal_text(goal_check(bases, rows, drop)), "",
        "Where our default loses (variants faster at the same budget):", "",
        losses_text(bases, rows, drop), "",
        f"_Generated {time.strftime('%Y-%m-%d %H:%M %Z')} by `compare_criteria.py --phase report`._"])
