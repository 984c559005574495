"""Stage `verify`: the built engine's accuracy and latency, the latency baseline + regression test,
then report.json (schema 1, DESIGN.md "Run directory and report") and report.html."""
from __future__ import annotations

import shutil
import subprocess
import time
from dataclasses import replace
from pathlib import Path

from edgecompress.inputs.splits import EVAL_BATCH
from edgecompress.pipeline.builder import ORIGINAL
from edgecompress.pipeline.stages.baseline import plain_candidates
from edgecompress.pipeline.context import Context
from edgecompress.pipeline.measure import run_accuracy
from edgecompress.pipeline.rundir import write_json
from edgecompress.pipeline.records import VerifyRecord
from edgecompress.pipeline.stage import StageOutput
from edgecompress.pipeline.stages.build import build_result
from edgecompress.report import assemble_report, write_latency_baseline, write_regression_test, write_report_html
from edgecompress.targets import Latency
from edgecompress.targets.base import host_cpu
from edgecompress.targets.deploy import OPENERS, load
from edgecompress.targets.timing import timed_in_layouts
from edgecompress.training.evaluation import macs_and_params

ENGINE, ORIGINAL_FLOAT, YARDSTICK, UNPRUNED = "engine", "original", "yardstick", "unpruned"
PLAIN = "other "   # another plain engine of the original, by its baseline name (`rival_plain_engines`)
# a plain engine the baseline did not time measurably slower than the yardstick (its interval's low
# end within this factor of the yardstick's high end: two compiles of one model time 2-5 % apart)
# is timed again in verify; each engine fewer gives the headline's engines more blocks
RIVAL_MARGIN = 1.03
TUNED = "yardstick-settings"   # the yardstick's own file loaded with our settings: what the settings alone buy
REFERENCE_DIR = "reference"   # the original's float engine: what `compress check` times the engine against
HALF_WIDTH = 0.01   # stop once every ratio is known to +-1 % (or at the time cap)
# the headline's timing: 1.5x the profile's compare_time_s, shared by the layouts (its engines'
# fresh interpreters start in ~5 s a layout; a time-capped timing reports both phases' blocks)
VERIFY_TIME_FACTOR = 1.5
VERIFY_FILES = {"report": "report.json", "report_html": "report.html", "latency_baseline": "latency_baseline.json",
                "latency_samples": "latency_baseline.npz", "regression_test": "test_latency_regression.py"}


class VerifyStage:
    name, what = "verify", "accuracy and latency of the built engine; baseline, regression test, report"

    def run(self, ctx: Context, out: Path) -> StageOutput:
        start = time.perf_counter()
        build = build_result(ctx)
        # the engine as the user loads it (deploy.json); a TensorRT ONNX not built here runs on ONNX Runtime
        run = load(ctx.rundir.path) if build.built_here and build.runtime in OPENERS else ctx.target.runner(build)
        with ctx.ui.progress("validation on the engine", len(ctx.data.val)) as bar:
            val_acc = run_accuracy(ctx, run, "val", on_batch=bar.update)
        test_acc = run_accuracy(ctx, run, "test")
        builds = engines_to_time(ctx, build)
        # in fresh process layouts, the median over them: one layout moved our ONNX Runtime INT8
        # against OpenVINO's INT8 from 0.47x to 0.84x, each interval +-1 %; each process a fresh
        # interpreter, as the user's application (a fork of the host was 2.4 % off, isolated.py)
        timing = timed_in_layouts(ctx.target, builds, reference=ENGINE, half_width=HALF_WIDTH, layouts=ctx.profile.benchmark.check_layouts,
                                  max_time_s=ctx.profile.benchmark.compare_time_s * VERIFY_TIME_FACTOR, fresh=True)
        base = ctx.results.baseline
        for name in builds:
            if name != ENGINE:
                ctx.ui.say(f"  engine vs {name:<10} {timing.ratios[name]} faster ({timing.stopped}, {timing.blocks} blocks)")
        yardstick, builds, timing = fastest_plain(ctx, builds, timing)
        speedups = {name: timing.ratios[name] for name in builds if name != ENGINE}   # other / engine
        vs_float = speedups[ORIGINAL_FLOAT]   # the original's float latency / the engine's
        latency_ms = base.latency_ms / vs_float.median
        method = base.latency_method
        reference = keep_reference(builds[ORIGINAL_FLOAT], out)
        write_latency_baseline(out, target=ctx.target, build=build, latency=Latency(
            median_ms=latency_ms, p90_ms=float("nan"), iterations=timing.blocks * timing.runs_per_block,
            method=method, runtime=build.runtime, device=probe_device(ctx)), precision=build.precision,
            inputs=ctx.data.images(EVAL_BATCH).numpy(), run_dir=ctx.rundir.path,
            reference={**reference, "ratio": timing.ratios[ORIGINAL_FLOAT].inverse().to_dict()})
        write_regression_test(out)
        macs, params = macs_and_params(ctx.rundir.load_model("finetune", "pruned_model"), ctx.input_shape)
        result = {"accuracy": val_acc, "test_accuracy": test_acc, "latency_ms": latency_ms, "latency_method": method,
                  # the ratio's 95 % interval on the baseline's float latency (that one is a single measurement)
                  "latency_interval_ms": [base.latency_ms / vs_float.high, base.latency_ms / vs_float.low],
                  "flops": macs, "params": params, "cr": ctx.results.prune.cr,
                  "speedup": vs_float.to_dict()}
        unpruned = yardstick_record(ctx, builds, speedups, latency_ms, yardstick)
        steps = speed_steps(ctx, builds, timing, latency_ms, yardstick)
        for step in steps:
            ctx.ui.say(f"  {step['step']:<22} {step['latency_ms']:7.3f} ms  {_ratio(step['gain'])} this step, "
                       f"{_ratio(step['total'])} in all  ({step['tool']}, {step['runtime']} {step['settings']})")
        extra = {"timing": timing.to_dict(), "speedups": {n: r.to_dict() for n, r in speedups.items()},
                 "steps": steps, "settings": build.settings}
        report = assemble_report(config=ctx.config, results=ctx.results, run=run_facts(ctx, time.perf_counter() - start),
                                 result=result, extra=extra, unpruned=unpruned)
        write_json(out / "report.json", report)
        write_report_html(out)
        return StageOutput(files={**VERIFY_FILES, **reference["files"]}, data=VerifyRecord.from_dict({"result": result, **extra}))


def probe_device(ctx: Context) -> str:
    """The device the latency was taken on, named as its probe names it (what `compress check` matches)."""
    source = ctx.target.latency_source
    if source == "estimate":
        return f"{ctx.profile.device.name} (estimated)"
    if source.startswith("ssh://"):
        from edgecompress.targets.ssh import SSHDevice
        return f"{SSHDevice.parse(source).host} (ssh)"
    return host_cpu()


def engines_to_time(ctx: Context, build) -> dict:
    """The engine (loaded as deploy.json says), the original at the baseline's float precision
    (the reference engine `compress check` keeps), the yardstick (the user's fastest plain engine,
    at its runtime's defaults) and the same file with our settings, and, when something was
    pruned, our INT8 of the unpruned model with the engine's calibration and settings: all timed
    in one run of the protocol, ratios to the engine."""
    base = ctx.results.baseline
    builds = {ENGINE: build,
              ORIGINAL_FLOAT: ctx.builder.build(ctx.original, precision=base.precision, key=ORIGINAL),
              YARDSTICK: ctx.builder.engine(ctx.original, base.engines[base.yardstick])}
    tuned = replace(builds[YARDSTICK], settings=build.settings)
    if tuned.runtime == build.runtime and ctx.target.settings(tuned) != ctx.target.settings(builds[YARDSTICK]):
        builds[TUNED] = tuned
    builds.update(rival_plain_engines(ctx))
    if not ctx.results.prune.unpruned:   # our unpruned engine at the engine's precision and settings
        # (the builder's settings are the baseline's choice for its precision: an FP32 engine that
        # ships at ONNX Runtime's defaults was set against its unpruned twin at INT8's 1 thread,
        # and pruning's share read 2.50x "at equal settings")
        builds[UNPRUNED] = replace(ctx.builder.build(ctx.original, precision=build.precision, key=ORIGINAL,
                                                     shipped=build.precision == "int8"), settings=build.settings)
    return builds


def rival_plain_engines(ctx: Context) -> dict:
    """The baseline's other plain engines that keep the promise and that the baseline did not time
    measurably slower than the yardstick (RIVAL_MARGIN) ("other <name>"): timed again beside the
    engine, the headline is over whichever plain engine is fastest in verify's own timing, not over
    the baseline's pick alone (one baseline, timed in a single process layout, took plain ONNX
    Runtime FP32 for a user's machine where NNCF INT8 was 1.18x faster)."""
    base = ctx.results.baseline
    yard = base.engines[base.yardstick]["ratio"]
    return {PLAIN + n: ctx.builder.engine(ctx.original, base.engines[n]) for n in plain_candidates(base.engines, ctx.budget)
            if n != base.yardstick and _low(base.engines[n]["ratio"]) <= RIVAL_MARGIN * _high(yard)}


def _low(ratio: dict) -> float:
    return ratio.get("low", ratio["ratio"])


def _high(ratio: dict) -> float:
    return ratio.get("high", ratio["ratio"])


def fastest_plain(ctx: Context, builds: dict, timing) -> tuple[str, dict, object]:
    """(the baseline's name of the fastest plain engine in `timing`, builds and timing with it
    under YARDSTICK): the baseline's yardstick unless a rival was faster here (then the yardstick
    file with our settings, TUNED, is no step on the way from it and is left out)."""
    base = ctx.results.baseline
    fastest = min([YARDSTICK, *(n for n in builds if n.startswith(PLAIN))], key=lambda n: timing.ratios[n].median)
    if fastest == YARDSTICK:
        return base.yardstick, builds, timing
    name = fastest[len(PLAIN):]
    ctx.ui.say(f"  the fastest plain engine beside the engine: {name}, not the baseline's {base.yardstick}; "
               f"the headline is over it")
    names = {fastest: YARDSTICK, YARDSTICK: PLAIN + base.yardstick}
    builds = {names.get(n, n): b for n, b in builds.items() if n != TUNED}
    return name, builds, timing.renamed(names)


def speed_steps(ctx: Context, builds: dict, timing, latency_ms: float, yardstick: str) -> list[dict]:
    """Where the speed came from, each step timed in the one session above with its interval:
    the user's fastest plain engine at its defaults -> the same file with our runtime settings ->
    our precision (the unpruned model) -> pruning (the engine). A step whose engine was not timed
    (settings the same as the defaults, nothing pruned) is left out."""
    base, chain = ctx.results.baseline, [n for n in (YARDSTICK, TUNED, UNPRUNED, ENGINE) if n in builds]
    yard = base.engines[yardstick]
    tools = {YARDSTICK: f"{yard['tool']} (plain {yard['precision']})", TUNED: f"{yard['tool']} (plain {yard['precision']})",
             UNPRUNED: f"edgecompress {builds[ENGINE].precision}, unpruned",
             ENGINE: f"edgecompress {builds[ENGINE].precision}, shipped"}
    names = {YARDSTICK: "plain engine, defaults", TUNED: "runtime settings", UNPRUNED: "our precision and export",
             ENGINE: "pruning" if UNPRUNED in builds else "our precision and export (unpruned: pruning did not pay)"}
    steps = []
    for i, name in enumerate(chain):
        gain = timing.between(chain[i - 1], name) if i else timing.between(name, name)
        steps.append({"step": names[name], "engine": name, "tool": tools[name], "runtime": builds[name].runtime,
                      "precision": builds[name].precision, "settings": ctx.target.settings(builds[name]),
                      "latency_ms": latency_ms * timing.ratios[name].median,
                      "gain": gain.to_dict(), "total": timing.between(YARDSTICK, name).to_dict()})
    return steps


def _ratio(r: dict) -> str:
    return f"{r['ratio']:.3f}x [{r['low']:.3f}, {r['high']:.3f}]"


def yardstick_record(ctx: Context, builds: dict, speedups: dict, latency_ms: float, yardstick: str) -> dict:
    """report.json's `unpruned`: the yardstick (the fastest plain engine of the original a user
    gets without us, at its runtime's defaults), its accuracy on the built artifact, and its
    latency timed with the engine; `pruning_share`: our unpruned engine at the same precision and
    settings over the engine (what pruning alone buys; None when nothing was pruned)."""
    base = ctx.results.baseline
    engine = base.engines[yardstick]
    test = run_accuracy(ctx, ctx.target.runner(builds[YARDSTICK]), "test")
    speedup = speedups[YARDSTICK]
    share = speedups[UNPRUNED].to_dict() if UNPRUNED in speedups else None
    return {"tool": engine["tool"], "runtime": engine["runtime"], "precision": engine["precision"],
            "accuracy": engine["accuracy"], "test_accuracy": test, "latency_ms": latency_ms * speedup.median,
            "latency_method": base.latency_method, "shipped": bool(ctx.results.prune.unpruned),
            "settings": ctx.target.settings(builds[YARDSTICK]), "speedup": speedup.to_dict(), "pruning_share": share}


def keep_reference(build, out: Path) -> dict:
    """Copy the reference engine (the original at the float precision) into the run directory:
    `compress check` and the regression test time the engine against it."""
    folder = out / REFERENCE_DIR
    folder.mkdir(exist_ok=True)
    files = {}
    for name, path in build.files.items():
        path = Path(path)
        if path.is_file():
            shutil.copy(path, folder / path.name)
            files[f"reference_{name}"] = f"{REFERENCE_DIR}/{path.name}"
    onnx = folder / Path(build.onnx).name
    if not onnx.is_file():
        shutil.copy(build.onnx, onnx)
        files["reference_onnx"] = f"{REFERENCE_DIR}/{onnx.name}"
    return {"files": files, "engine": f"{REFERENCE_DIR}/{Path(build.engine).name}", "precision": build.precision,
            "onnx": f"{REFERENCE_DIR}/{onnx.name}", "settings": build.settings}   # loaded as the run timed it


def run_facts(ctx: Context, verify_seconds: float) -> dict:
    """What the report needs that no stage recorded."""
    timings = {name: rec["seconds"] for name, rec in ctx.rundir.manifest["stages"].items()}
    timings["verify"] = round(verify_seconds, 3)
    pre = ctx.data.preprocess
    return {"target": ctx.profile.name, "model": ctx.model_name, "data": ctx.data.name, "code": CODE,
            "preprocess": pre.record() if pre else None, "train_device": str(ctx.device), "notes": list(ctx.notes),
            "metric": {"name": ctx.task.metric, "unit": ctx.task.unit, "task": ctx.task.name},
            "artifacts": {**ctx.rundir.artifacts(), **VERIFY_FILES}, "timings_s": timings}


def code_version() -> str | None:
    """The git commit the package runs from (+ "-dirty" when edgecompress/ differs from it); None
    outside a checkout. Benchmarks quote it beside every figure taken from a run."""
    root = Path(__file__).resolve().parents[3]
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10)
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "edgecompress"], cwd=root, capture_output=True,
                               text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    if head.returncode != 0:
        return None
    return head.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")


CODE = code_version()   # at import: the code this process started with, not the tree at verify time
