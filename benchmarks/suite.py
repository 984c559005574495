"""One command regenerates the evidence: every benchmark whose figures appear in README.md or
docs/, run from the current commit at exactly the settings its docs show, each writing
benchmarks/results/<name>.json, then the marked regions of docs/benchmarks.md regenerated from
those files.

    .venv/bin/python benchmarks/suite.py                  # every benchmark (hours: quiet machine, nothing else running)
    .venv/bin/python benchmarks/suite.py --quick          # only the quick ones: same commands, same files, same regions
    .venv/bin/python benchmarks/suite.py --only int8,depth_scoring
    .venv/bin/python benchmarks/suite.py --only vs_int8 -- --runs runs/a runs/b   # extra args for ONE benchmark
    .venv/bin/python benchmarks/suite.py --docs-only      # regenerate the docs from the results present
    .venv/bin/python benchmarks/suite.py --list           # what is registered, quick or not, its result, where it shows

A benchmark is registered once (BENCHMARKS): ONE command (run with .venv/bin/python from the
repository root; `{out}` is the JSON it must write, `{work}` a per-commit folder for run
directories), whether it is quick (minutes on 2 cores: --quick runs it) or full-suite only (it
runs `compress` end to end), and a renderer. There are no reduced variants: --quick runs the
quick benchmarks with the very command the full suite runs, so it writes the same result files
and regenerates the same regions; it skips the others, saying so, and leaves their regions as
they are. Extra arguments after `--` change the settings: the result's command shows them.

The script writes `{"rows": [{column: value}], "notes": [...]}` (a bare list is taken as the rows;
optional "tables": {key: rows}, "summary": {...} for the conformance check, "labels": {key:
header}, "columns": [keys]); the suite wraps it with where it came from (commit, machine, command,
started, seconds) and writes benchmarks/results/<name>.json. docs/benchmarks.md marks each
generated table:

    <!-- results:NAME -->  ...replaced...  <!-- /results:NAME -->     (NAME.KEY: the table result["tables"][KEY])

and every region starts with the result file it came from. benchmarks/reference.json holds what the
results must show; tests/test_conformance.py checks it (`pytest -m slow`).
"""
from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import re
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "benchmarks" / "results"
DOCS = REPO / "docs" / "benchmarks.md"
REFERENCE = REPO / "benchmarks" / "reference.json"
WORK = REPO / "runs" / "suite"     # run directories of benchmarks that run `compress` (per commit: resumable)
SUITE = "suite"                    # results/suite.json: the last run of each benchmark, rendered at the top of the docs
REGION = re.compile(r"<!-- results:(?P<name>[\w.-]+) -->\n(?P<body>.*?)<!-- /results:(?P=name) -->", re.S)

sys.path.insert(0, str(REPO))
from edgecompress.errors import UserError  # noqa: E402  (edgecompress.registry needs only this: no torch)
from edgecompress.registry import Registry  # noqa: E402


# ---------------------------------------------------------------------------------------------- rendering

def fmt(value) -> str:
    """One table cell: an interval {"ratio", "low", "high"} as `1.27x [1.24, 1.30]`, numbers as the
    script rounded them (4 decimals at most; thousands separated from 10,000), None as "-"."""
    if isinstance(value, dict) and {"ratio", "low", "high"} <= value.keys():
        return f"{value['ratio']:.2f}x [{value['low']:.2f}, {value['high']:.2f}]"
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, (int, float)):
        v = round(value, 4 if abs(value) < 1000 else 1) if isinstance(value, float) else value
        return f"{v:,}" if abs(v) >= 10_000 else str(v)
    if isinstance(value, (list, tuple)):
        return ", ".join(fmt(v) for v in value)
    if isinstance(value, dict):
        return "; ".join(f"{k} {fmt(v)}" for k, v in value.items())
    return str(value).replace("|", "\\|").replace("\n", " ")


def _flat(row: dict) -> dict:
    """Nested dicts that are not intervals become `key: sub` columns (vs_int8-style {"ms", "val"} cells)."""
    out = {}
    for k, v in row.items():
        if isinstance(v, dict) and not {"ratio", "low", "high"} <= v.keys():
            out.update({f"{k}: {sk}": sv for sk, sv in v.items()})
        else:
            out[k] = v
    return out


def md_table(rows: list[dict], *, columns: list[str] | None = None, labels: dict | None = None) -> str:
    """The rows as a Markdown table, columns in order of first appearance (or `columns`)."""
    rows = [_flat(r) for r in rows]
    keys = columns or list(dict.fromkeys(k for r in rows for k in r))
    labels = labels or {}
    head = [labels.get(k, k if " " in k else k.replace("_", " ")) for k in keys]   # snake_case keys read as words
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(keys)]
    lines += ["| " + " | ".join(fmt(r.get(k)) for k in keys) + " |" for r in rows]
    return "\n".join(lines)


def table_rows(result: dict, key: str | None) -> list[dict]:
    """The main `rows`, or the sub-table `key` (result["tables"][key], else a top-level list of dicts)."""
    if key is None:
        return result.get("rows", [])
    found = result.get("tables", {}).get(key, result.get(key))
    if not isinstance(found, list) or not all(isinstance(r, dict) for r in found):
        raise UserError(f"{result.get('benchmark', '?')} result has no table {key!r}",
                        f"tables: {', '.join(result.get('tables', {})) or 'none'}")
    return found


def render_rows(result: dict, key: str | None = None) -> str:
    """The generic renderer: the table, then (main table only) the notes. "summary" is for the
    conformance check (machine-readable), not rendered: what a reader needs goes in the notes."""
    parts = [md_table(table_rows(result, key), columns=result.get("columns") if key is None else None,
                      labels=result.get("labels"))]
    if key is None:
        parts += [str(n) for n in result.get("notes", [])]
    return "\n\n".join(parts)


def render_reconstruct(result: dict, key: str | None = None) -> str:
    """other_criteria.py reconstruct writes one row per knob x variant; the docs read one row per knob."""
    if key is not None:
        return render_rows(result, key)
    variants = ("none", "bn", "reconstruct", "reconstruct+bn", "bn+reconstruct")
    names = {"none": "nothing", "bn": "BN recal", "reconstruct": "reconstruct",
             "reconstruct+bn": "reconstruct → BN", "bn+reconstruct": "BN → reconstruct"}
    by_knob: dict[float, dict] = {}
    for r in result["rows"]:
        if r.get("variant") in variants:
            row = by_knob.setdefault(r["knob"], {"knob": r["knob"]})
            row[names[r["variant"]]] = r["accuracy"]
            row.setdefault("params", r.get("params"))
            if r["variant"] == "bn+reconstruct":
                row["sampled error removed by the fit"] = r.get("fit_error_reduction")
    rows = [{"knob": k, "params": v.pop("params"), **{n: v.get(n) for n in names.values()},
             "sampled error removed by the fit": v.get("sampled error removed by the fit")} for k, v in by_knob.items()]
    return "\n\n".join([md_table(rows), *map(str, result.get("notes", []))])


def provenance(result: dict, path: Path) -> str:
    """The line every generated region starts with: which file, which commit, which machine, how long."""
    rel = path.relative_to(REPO).as_posix() if path.is_relative_to(REPO) else path.as_posix()
    m = result.get("machine", {})
    minutes = f"{result['seconds'] / 60:.1f} min" if result.get("seconds") is not None else "duration unknown"
    sha = str(result.get("commit", "?"))
    sha = sha[:12] + ("-dirty" if sha.endswith("-dirty") else "")
    return (f"_Result file [`{rel}`](../{rel}): commit `{sha}`, {m.get('cpu', '?')} "
            f"({m.get('cores', '?')} logical CPUs), {result.get('started', '?')}, {minutes}: "
            f"`{result.get('command', '?')}`._")


# ---------------------------------------------------------------------------------------------- registry

@dataclass(frozen=True)
class Benchmark:
    """A benchmark the suite runs (`command`: the settings whose figures the docs show), or one it
    lists but cannot run (`manual`: why)."""
    command: tuple[str, ...] = ()
    quick: bool = False                           # minutes on 2 cores: --quick runs it; else the full suite only
    render: Callable[[dict, str | None], str] = render_rows
    about: str = ""                               # where its figures show
    cost: str = ""                                # the work that makes it quick or long
    manual: str | None = None

    def argv(self, *, out: Path, work: Path, extra: list[str] = ()) -> list[str]:
        return [a.format(out=out, work=work) for a in self.command] + list(extra)


BENCHMARKS: Registry[Benchmark] = Registry("benchmark")
_B = BENCHMARKS.add
# Full suite only: each runs `compress` end to end, several times.
_B("vs_int8", Benchmark(
    ("benchmarks/vs_int8.py", "--out", "{work}/vs-int8", "--json", "{out}"),
    cost="four `compress` runs (ResNet-20, ResNet-56, MobileNetV2, resnet18-64), then one timing run per model; "
         "its run directories are runs/suite/<commit>/vs-int8, resumed when the commit is the same",
    about="docs 'The shipped engine against plain INT8 of the unpruned original'"))
_B("default_run", Benchmark(
    ("benchmarks/default_run.py", "--out", "{work}/default", "--json", "{out}"),
    cost="two `compress --target x86-cpu --max-acc-drop 1` runs",
    about="README's example summary line; docs 'The default run'"))
_B("user_view", Benchmark(
    ("benchmarks/user_view.py", "--out", "{work}/user-view", "--json", "{out}"),
    cost="three `compress --target x86-cpu --max-acc-drop 1` runs (ResNet-20, ResNet-56, MobileNetV2), then one "
         "timing run per model against plain engines made and loaded independently",
    about="docs 'The speed a user gets'; issue 26's goals"))
_B("budget_and_estimate", Benchmark(
    ("benchmarks/budget_and_estimate.py", "--out", "{work}/claims", "--json", "{out}"),
    cost="two `compress` runs: x86-cpu with --latency-budget-ms at half the original's FP32 latency, and "
         "jetson-orin (estimated) with --max-acc-drop 1",
    about="docs 'A latency budget, and an estimated target'"))
_B("data_scale", Benchmark(
    ("benchmarks/data_scale.py", "--json", "{out}"),
    cost="six `compress` runs on 224x224 image folders (500 and 2,000 training images, 3 samples each)",
    about="docs 'Data at scale'; README's streaming paragraph points to it"))
_B("deviation_site", Benchmark(
    ("benchmarks/deviation_site.py", "--json", "{out}"),
    cost="ResNet-20 and MobileNetV2 on 5,000 validation images, 10 settings x 2 sites, a bisection per MACs "
         "target; its one timed run (2026-11-22, a shared machine) took over half an hour",
    about="docs 'Where the deviation is taken'"))
# Quick: minutes each on 2 cores, at the settings the docs show.
_B("alignment_int8", Benchmark(
    ("benchmarks/alignment.py", "--precision", "int8", "--knobs", "0.95", "0.8", "--sweep", "2", "--seconds", "40",
     "--json", "{out}"), quick=True,
    cost="ResNet-20: 10 small INT8 builds, two protocol runs capped at 40 s",
    about="docs 'Channel multiple in INT8 (x86-cpu)'"))
_B("depth_scoring", Benchmark(
    ("benchmarks/depth_scoring.py", "--json", "{out}", "--models", "resnet20", "--threads", "1"), quick=True,
    cost="ResNet-20 only (the script's default adds MobileNetV2 and ResNet-56, 25 blocks more for ResNet-56 "
         "alone): 7 blocks removed one at a time, BatchNorm recalibrated on 2,048 images, 2,000 validation images",
    about="docs 'Depth: which blocks, and how they are scored'"))
_B("int8", Benchmark(
    ("benchmarks/int8.py", "--out", "{out}"), quick=True,
    cost="ResNet-20 and ResNet-56: 6 artifacts each built for 2 runtimes, 5,000 validation images, one protocol "
         "run per model (40 s cap)",
    about="docs 'INT8'"))
_B("reconstruct_cr", Benchmark(
    ("benchmarks/other_criteria.py", "reconstruct", "--knobs", "0.8,0.9,0.95", "--json", "{out}"), quick=True,
    render=render_reconstruct, cost="ResNet-20, 3 knobs x 5 variants on 5,000 validation images, no training",
    about="docs 'Does least-squares reconstruction help the default?' (cr)"))
_B("reconstruct_uniform", Benchmark(
    ("benchmarks/other_criteria.py", "reconstruct", "--allocation", "uniform", "--knobs", "0.5,0.7,0.85",
     "--json", "{out}"), quick=True,
    render=render_reconstruct, cost="ResNet-20, 3 knobs x 5 variants on 5,000 validation images, no training",
    about="docs 'Does least-squares reconstruction help the default?' (uniform)"))
# Benchmarks the suite cannot run yet, and why (listed by --list, never run). Their docs sections
# keep the method and the command, and no figures: those went with the last commit that had them.
for _name, _why, _about in (
        ("alignment_fp32", "no renderer for part B (the estimator table and its Spearman rho) yet; register "
                           "`alignment.py --json {out}` (minutes: quick) with one",
         "docs 'Channel alignment (FP32)', 'Latency estimator'"),
        ("architectures", "prints Markdown only; needs a --json in the suite's form (counts, no timing: quick)",
         "docs/architectures.md 'Measured reduction at one knob'"),
        ("importance_cost", "writes its docs section itself; needs a --json option", "docs 'Importance cost'"),
        ("seed_claims", "its --out JSON is nested per experiment, not rows; needs a --json in the suite's form",
         "docs 'Seed claims'"),
        ("compare_criteria", "needs a GPU and hours (12 parallel searches); run its phases by hand",
         "docs 'Criteria comparison'"),
        ("compare_runs", "times finished runs named on the command line", "docs 'End to end'"),
        ("other_criteria_compress", "one full compress per model x criterion (hours)",
         "docs 'End to end through compress'"),
        ("engine_parity", "needs a finished mobile-arm64 run", "docs 'Targets on the default model'"),
        ("end_to_end_runs", "single compress runs read from their report.json (the default run is default_run)",
         "docs 'End to end', 'Targets on the default model'")):
    _B(_name, Benchmark(manual=_why, about=_about))


# ---------------------------------------------------------------------------------------------- provenance

def commit() -> str:
    """HEAD, plus "-dirty" when tracked or untracked files differ from it (results/ excepted)."""
    head = _git("rev-parse", "HEAD") or "unknown"
    dirty = _git("status", "--porcelain", "--", ".", ":(exclude)benchmarks/results")
    return head + ("-dirty" if dirty else "")


def _git(*args: str) -> str:
    try:
        return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, timeout=30).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def machine(python: str) -> dict:
    """CPU model and logical cores (lscpu), OS, and the versions the benchmarks ran with."""
    info = {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(), "os": platform.platform()}
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        fields = {k.strip(): v.strip() for k, v in (line.split(":", 1) for line in out.splitlines() if ":" in line)}
        info.update(cpu=fields.get("Model name", info["cpu"]), cores=int(fields.get("CPU(s)", info["cores"] or 0)))
    except (OSError, subprocess.SubprocessError, ValueError):
        pass
    probe = ("import importlib.metadata as m, json, platform; v = {}\n"
             "for p in ('torch', 'openvino', 'onnxruntime', 'nncf', 'numpy'):\n"
             "    try: v[p] = m.version(p)\n    except m.PackageNotFoundError: pass\n"
             "print(json.dumps({'python': platform.python_version(), **v}))")
    try:
        info["versions"] = json.loads(subprocess.run([python, "-c", probe], capture_output=True, text=True,
                                                     timeout=60).stdout)
    except (OSError, subprocess.SubprocessError, json.JSONDecodeError):
        info["versions"] = {}
    return info


def python_exe() -> str:
    venv = REPO / ".venv" / "bin" / "python"
    if venv.is_file():
        return str(venv)
    print(f"note: {venv} not found; running the benchmarks with {sys.executable}", flush=True)
    return sys.executable


# ---------------------------------------------------------------------------------------------- running

def run_one(name: str, bench: Benchmark, *, results: Path, python: str, where: dict, extra: list[str] = ()) -> dict:
    """Run one benchmark, wrap what it wrote, write results/<name>.json; the log goes to results/logs/.
    A failure leaves the previous result file as it was and is returned, not raised."""
    raw = results / f".{name}.raw.json"
    raw.unlink(missing_ok=True)
    work = (WORK / where["commit"]).relative_to(REPO)
    argv = [python, *bench.argv(out=raw.relative_to(REPO), work=work, extra=extra)]
    # shown (and recorded) with the result's final path: the script writes a hidden file first, so a
    # failed run never leaves half a result where the docs and the conformance test read
    final = (results / f"{name}.json").relative_to(REPO)
    shown = " ".join(shlex.quote(a) for a in [".venv/bin/python", *bench.argv(out=final, work=work, extra=extra)])
    log = results / "logs" / f"{name}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    print(f"\n== {name}: {shown}", flush=True)
    started, t0 = _now(), time.perf_counter()
    with log.open("w") as fh:
        proc = subprocess.Popen(argv, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for line in proc.stdout:
            sys.stdout.write(line)
            fh.write(line)
        rc = proc.wait()
    seconds = time.perf_counter() - t0
    status = {"benchmark": name, "started": started, "seconds": round(seconds, 1), "commit": where["commit"],
              "log": log.relative_to(REPO).as_posix()}
    if rc != 0 or not raw.is_file():
        why = f"exit code {rc}" if rc != 0 else f"exited 0 but wrote no {raw.name}"
        print(f"== {name}: FAILED ({why}); log {log}", flush=True)
        return {**status, "status": f"failed: {why}"}
    try:
        body = json.loads(raw.read_text())
    except json.JSONDecodeError as exc:
        return {**status, "status": f"failed: its JSON does not parse ({exc})"}
    body = {"rows": body} if isinstance(body, list) else body
    if not isinstance(body, dict) or not isinstance(body.get("rows"), list):
        return {**status, "status": "failed: its JSON has no list of rows"}
    result = {**body, "benchmark": name, "commit": where["commit"], "machine": where["machine"], "command": shown,
              "started": started, "seconds": round(seconds, 1)}
    _write_json(results / f"{name}.json", result)
    raw.unlink()
    print(f"== {name}: ok, {seconds / 60:.1f} min -> {(results / f'{name}.json').relative_to(REPO)}", flush=True)
    return {**status, "status": "ok"}


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def _write_json(path: Path, data) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=1) + "\n")
    tmp.replace(path)


def record(statuses: list[dict], *, results: Path, whole: str | None, command: str, started: str,
           seconds: float, where: dict) -> None:
    """results/suite.json: the latest status of every benchmark (rows) and, for a run of the whole
    suite (`whole`: "full" or "quick"), its command and duration (notes)."""
    path = results / f"{SUITE}.json"
    old = json.loads(path.read_text()) if path.is_file() else {}
    by_name = {r["benchmark"]: r for r in old.get("rows", [])}
    for s in statuses:
        by_name[s["benchmark"]] = {"benchmark": s["benchmark"], "result file": f"benchmarks/results/{s['benchmark']}.json",
                                   "status": s["status"], "minutes": round(s["seconds"] / 60, 1),
                                   "commit": s["commit"][:12] + ("-dirty" if s["commit"].endswith("-dirty") else ""),
                                   "started": s["started"]}
    last = {kind: old.get(f"last_{kind}") for kind in ("full", "quick")}
    if whole:
        last[whole] = {"command": command, "started": started, "minutes": round(seconds / 60, 1),
                       "commit": where["commit"], "failed": [s["benchmark"] for s in statuses if s["status"] != "ok"]}
    titles = {"full": "Last run of the whole suite", "quick": "Last run of the quick benchmarks (--quick)"}
    notes = [f"{titles[kind]}: `{run['command']}`, started {run['started']}, **{run['minutes']} min**, commit "
             f"`{run['commit']}`" + (f"; failed: {', '.join(run['failed'])}" if run["failed"] else "; every benchmark ok")
             + "." for kind, run in last.items() if run]
    if not last["full"]:
        notes.append("No run of the whole suite recorded yet.")
    _write_json(path, {"rows": [by_name[n] for n in sorted(by_name)], "notes": notes, "last_full": last["full"],
                       "last_quick": last["quick"], "benchmark": SUITE, "commit": where["commit"],
                       "machine": where["machine"], "command": command, "started": started,
                       "seconds": round(seconds, 1)})


# ---------------------------------------------------------------------------------------------- docs

def regions(text: str) -> list[str]:
    return [m.group("name") for m in REGION.finditer(text)]


def render_region(name: str, results: Path) -> str | None:
    """The body of region `name` ("bench" or "bench.table") from results/bench.json; None if absent."""
    bench, _, key = name.partition(".")
    path = results / f"{bench}.json"
    if not path.is_file():
        return None
    result = json.loads(path.read_text())
    renderer = render_rows if bench == SUITE else BENCHMARKS.get(bench).render
    return provenance(result, path) + "\n\n" + renderer(result, key or None)


def placeholder(name: str) -> str:
    """The body of a region whose result file is absent: no figure without a result file."""
    bench = name.partition(".")[0]
    if bench == SUITE:
        return f"No run recorded yet: `benchmarks/results/{SUITE}.json` is written by every run of the suite."
    return (f"No result yet: `benchmarks/results/{bench}.json` is written by "
            f"`.venv/bin/python benchmarks/suite.py --only {bench}`.")


def update_docs(docs: Path, results: Path) -> dict[str, list[str]]:
    """Regenerate every marked region from its result file, or, where that file is absent, say so
    (whatever the region held goes: no figure without a result file); text outside the regions is
    kept byte for byte. Returns what was updated, missing and unknown."""
    text = docs.read_text()
    found = regions(text)
    unknown = [n for n in found if n.partition(".")[0] not in BENCHMARKS and n.partition(".")[0] != SUITE]
    if unknown:
        raise UserError(f"{docs.name} marks regions of unknown benchmarks: {', '.join(unknown)}",
                        BENCHMARKS.suggest(unknown[0].partition(".")[0]))
    done, missing = [], []

    def replace(m: re.Match) -> str:
        body = render_region(m.group("name"), results)
        (done if body is not None else missing).append(m.group("name"))
        body = placeholder(m.group("name")) if body is None else body
        return f"<!-- results:{m.group('name')} -->\n{body.strip()}\n<!-- /results:{m.group('name')} -->"

    new = REGION.sub(replace, text)
    tmp = docs.with_name(f".{docs.name}.tmp")
    tmp.write_text(new)
    tmp.replace(docs)
    runnable = [n for n in BENCHMARKS if not BENCHMARKS.get(n).manual]
    unshown = [n for n in runnable if not any(r.partition(".")[0] == n for r in found)]
    return {"updated": done, "no result yet": missing, "registered but shown nowhere": unshown}


# ---------------------------------------------------------------------------------------------- conformance

@dataclass(frozen=True)
class Verdict:
    outcome: str     # "pass" | "fail" | "xfail" | "skip"
    message: str


def load_reference(path: Path = REFERENCE) -> dict:
    return json.loads(path.read_text())


def expectations(expect: dict) -> list[tuple[str, str, object]]:
    """`{"drop_points_max": 1.0, "vs_yardstick_min": 1.3, "pruned": true}` -> [(column, "max"|"min"|"eq", bound)]."""
    out = []
    for key, bound in expect.items():
        for suffix in ("_min", "_max"):
            if key.endswith(suffix):
                out.append((key[:-len(suffix)], suffix[1:], bound))
                break
        else:
            out.append((key, "eq", bound))
    return out


def entry_id(entry: dict) -> str:
    return f"{entry['result_file'].removesuffix('.json')}/{entry['model']}/{entry['target']}/{entry['status']}"


def check_entry(entry: dict, reference: dict, results: Path = RESULTS) -> Verdict:
    """One reference entry against the latest result file (see reference.json's _comment)."""
    path = results / entry["result_file"]
    if not path.is_file():
        shown = path.relative_to(REPO) if path.is_relative_to(REPO) else path
        return Verdict("skip", f"{shown} is absent: run `python benchmarks/suite.py --only "
                               f"{entry['result_file'].removesuffix('.json')}` on a quiet machine")
    result = json.loads(path.read_text())
    found = _select(result, entry)
    if isinstance(found, str):
        return Verdict("skip", found)
    where = f"{path.name} (commit {result.get('commit', '?')}, {result.get('started', '?')})"
    problems, missing = [], []
    for column, kind, bound in expectations(entry["expect"]):
        if column not in found:
            missing.append(column)
            continue
        ok, shown, limit = _holds(found[column], kind, bound, _tolerance(column, entry, reference))
        if not ok:
            problems.append(f"{column} = {shown}, expected {'>=' if kind == 'min' else '<=' if kind == 'max' else '=='} "
                            f"{bound}" + (f" (tolerated: {limit})" if limit != bound else ""))
    if missing:
        return Verdict("fail", f"{where} has no column {', '.join(missing)} for {entry_id(entry)}; its columns: "
                               f"{', '.join(found)} (reference and benchmark disagree on names)")
    if not problems:
        return Verdict("pass", f"{entry_id(entry)}: {where} meets {entry['expect']}")
    text = f"{entry_id(entry)}: {'; '.join(problems)} in {where}"
    return Verdict("xfail" if entry["status"] == "goal" else "fail",
                   ("goal not met: " if entry["status"] == "goal" else "measured figure regressed: ") + text)


def _select(result: dict, entry: dict) -> dict | str:
    """The entry's row (or summary) of `result`, or why there is none."""
    want = entry.get("row", {})
    if entry.get("summary"):
        summary = result.get("summary")
        if not summary:
            return f"{entry['result_file']} has no summary"
        differ = {k: summary.get(k) for k, v in want.items() if summary.get(k) != v}
        return summary if not differ else f"{entry['result_file']} summary is not the run the entry names: {differ}"
    rows = [r for r in result.get("rows", []) if all(r.get(k) == v for k, v in want.items())]
    if len(rows) == 1:
        return rows[0]
    keys = sorted({str(r.get(k)) for r in result.get("rows", []) for k in want})
    return (f"{entry['result_file']} has {'no' if not rows else len(rows)} rows matching {want} "
            f"(values present: {', '.join(keys) or 'none'})")


def _tolerance(column: str, entry: dict, reference: dict) -> dict:
    """Tolerances apply to "measured" entries only: a goal is met or it is not."""
    if entry["status"] != "measured":
        return {}
    return {**reference.get("tolerances", {}).get(column, {}), **entry.get("tolerance", {}).get(column, {})}


def _holds(value, kind: str, bound, tol: dict) -> tuple[bool, str, object]:
    """(holds, the value as shown, the tolerated bound). An interval is judged on its median."""
    if kind == "eq":
        return value == bound, fmt(value), bound
    x = value["ratio"] if isinstance(value, dict) else value
    if x is None:
        return False, "missing (null)", bound
    sign = -1 if kind == "min" else 1
    limit = bound + sign * tol.get("abs", 0.0)
    limit = limit * (1 + sign * tol.get("rel", 0.0))
    limit = round(limit, 6)
    return (x >= limit if kind == "min" else x <= limit), fmt(value), limit


# ---------------------------------------------------------------------------------------------- CLI

def code_since(result: dict) -> str:
    """Whether the code behind a result (edgecompress/, benchmarks/ but the suite's own files)
    differs now, working tree included, from the commit it was run at."""
    sha = str(result.get("commit", "")).removesuffix("-dirty")
    if not sha or _git("cat-file", "-t", sha) != "commit":
        return "run at a commit unknown here"
    changed = _git("diff", "--name-only", sha, "--", "edgecompress", "benchmarks", ":(exclude)benchmarks/results",
                   ":(exclude)benchmarks/suite.py", ":(exclude)benchmarks/reference.json").splitlines()
    where = "a dirty tree at " if str(result.get("commit", "")).endswith("-dirty") else ""
    return (f"run from {where}{sha[:12]}; "
            + (f"{len(changed)} code file(s) changed since" if changed else "the code is unchanged since"))


def listing(results: Path) -> str:
    text = DOCS.read_text() if DOCS.is_file() else ""
    found = regions(text)
    lines = []
    for name in BENCHMARKS:
        b = BENCHMARKS.get(name)
        path = results / f"{name}.json"
        if path.is_file():
            r = json.loads(path.read_text())
            have = f"result of {r.get('started', '?')}, {code_since(r)}"
        else:
            have = "no result"
        shown = [r for r in found if r.partition(".")[0] == name]
        lines.append(f"{name:24s} {'MANUAL' if b.manual else 'quick' if b.quick else 'full only':9s} {have}; "
                     f"regions: {', '.join(shown) or 'none'}\n    {b.about}"
                     + (f"\n    not run by the suite: {b.manual}" if b.manual else
                        f"\n    {b.cost}\n    $ .venv/bin/python {' '.join(b.command)}"))
    return "\n".join(lines)


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    extra = argv[argv.index("--") + 1:] if "--" in argv else []
    own = argv[:argv.index("--")] if "--" in argv else argv
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true",
                   help="run only the quick benchmarks (minutes each), with the same commands as the full suite: "
                        "their result files and doc regions are regenerated; the full-suite-only ones (`compress` "
                        "runs end to end, long sweeps) are skipped, saying so, and their regions left as they are")
    p.add_argument("--only", help="comma-separated benchmark names (default: every runnable one)")
    p.add_argument("--docs-only", action="store_true", help="run nothing: regenerate the docs from the results present")
    p.add_argument("--list", action="store_true",
                   help="list the benchmarks: quick or full only, their result and its code, their doc regions")
    p.add_argument("--conformance", action="store_true",
                   help="check the latest results against benchmarks/reference.json (runs nothing; exit 1 on a "
                        "regression of a `measured` entry, a missed `goal` is reported)")
    args = p.parse_args(own)
    if args.list:
        print(listing(RESULTS))
        return 0
    if args.conformance:
        return conformance()
    try:
        names = _chosen(args.only)
        if extra and len(names) != 1:
            raise UserError("arguments after -- go to one benchmark", "name it alone with --only NAME")
        whole = None if args.only else "quick" if args.quick else "full"
        statuses = [] if args.docs_only else _run_all(names, quick=args.quick, whole=whole, argv=argv, extra=extra)
        report = update_docs(DOCS, RESULTS)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for what, items in report.items():
        if items:
            print(f"docs, {what}: {', '.join(items)}")
    failed = [s["benchmark"] for s in statuses if s["status"] != "ok"]
    if failed:
        print(f"FAILED: {', '.join(failed)} (logs in {RESULTS.relative_to(REPO)}/logs/)", file=sys.stderr)
    return 1 if failed else 0


def conformance(reference: dict | None = None, results: Path = RESULTS) -> int:
    """Every reference entry against the latest results, one line each; 1 when one fails."""
    reference = reference or load_reference()
    verdicts = [(entry_id(e), check_entry(e, reference, results)) for e in reference["entries"]]
    for name, v in verdicts:
        print(f"{v.outcome.upper():<5} {name}: {v.message}")
    return 1 if any(v.outcome == "fail" for _, v in verdicts) else 0


def _chosen(only: str | None) -> list[str]:
    if only is None:
        return [n for n in BENCHMARKS if not BENCHMARKS.get(n).manual]
    names = [n.strip() for n in only.split(",") if n.strip()]
    for n in names:
        if BENCHMARKS.get(n).manual:     # .get raises, with the valid names, for an unknown one
            raise UserError(f"{n} is not run by the suite: {BENCHMARKS.get(n).manual}", "run it by hand")
    return names


def _run_all(names: list[str], *, quick: bool, whole: str | None, argv: list[str], extra: list[str]) -> list[dict]:
    python = python_exe()
    where = {"commit": commit(), "machine": machine(python)}
    started, t0, statuses = _now(), time.perf_counter(), []
    for name in names:
        bench = BENCHMARKS.get(name)
        if quick and not bench.quick:
            print(f"\n== {name}: skipped under --quick (full suite only: {bench.cost}); its docs regions are left "
                  f"as they are", flush=True)
            continue
        statuses.append(run_one(name, bench, results=RESULTS, python=python, where=where, extra=extra))
    command = "python benchmarks/suite.py " + " ".join(shlex.quote(a) for a in argv)
    record(statuses, results=RESULTS, whole=whole, command=command.strip(), started=started,
           seconds=time.perf_counter() - t0, where=where)
    return statuses


if __name__ == "__main__":
    raise SystemExit(main())
