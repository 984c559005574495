"""The speed a user gets, timed independently of the run (issue 26): the shipped engine loaded the
way report.html says (the runtime's own API with deploy.json's settings, not edgecompress's
loader), against the plain engines a user makes from the original without the tool, each made
with the runtime's documented recipe, at its defaults:

  torch.onnx.export(model, torch.randn(1, C, H, W), path)            # a fixed input, no onnxsim
  OpenVINO:  compiled = core.compile_model(path, "CPU", {"PERFORMANCE_HINT": "LATENCY"}); compiled(x)
             nncf.quantize(ov.convert_model(path), nncf.Dataset(300 training images))
  ONNX Runtime: InferenceSession(path).run(None, {name: x}); quant_pre_process + quantize_static (defaults)

all timed in the one protocol (interleaved blocks of 20 calls, shuffled order, median of paired
ratios, 95 % interval, each block after one untimed call and followed by a wait for a quiet CPU),
as a user compares two engines: the shipped engine against each plain engine in turn, each in a
fresh process of its own (not this one, which made them; `--one-process`: all in this process),
each plain engine's latency over the shipped engine's
beside the run's own figure (report.json `pruning_speedup`, against its yardstick).

    .venv/bin/python benchmarks/user_view.py --out runs/user-view --json benchmarks/results/user_view.json
        # compress --target x86-cpu --max-acc-drop 1 --model M for each of --models (resnet20 resnet56
        # mobilenetv2; tiny-yolo: the zoo detector on the offline detection demo, mAP50-95 as the
        # promise), each run resumed if it exists, then the timing; or time finished runs:
    .venv/bin/python benchmarks/user_view.py --runs RUN [RUN ...] --json out.json

The goal (issue 26): the shipped engine >= 1.5x over the user's fastest plain engine, pruning's
share >= 1.3x, and the run's own headline within 3 % of this independent figure.
"""
from __future__ import annotations

import argparse
import json
import os
import pickle
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import load_tensors, write_result  # noqa: E402

from _engine_worker import call, open_spec  # noqa: E402,F401 (open_spec: other benchmarks take it from here)

from edgecompress.targets.isolated import stopped  # noqa: E402
from edgecompress.targets.timing import MIN_BLOCKS, Ratio, compare, median_interval, over_layouts  # noqa: E402
from edgecompress.zoo import pretrained  # noqa: E402
from edgecompress.zoo.detector import DETECTORS, pretrained_detector  # noqa: E402

WORKER = Path(__file__).resolve().parent / "_engine_worker.py"
PLAIN_IMAGES = 300   # nncf.quantize's default subset_size


def user_engines(model: torch.nn.Module, images: np.ndarray, work: Path) -> dict[str, tuple]:
    """name -> (runtime, file, settings) of each plain engine, made the documented way, loaded at defaults."""
    import nncf
    import openvino as ov
    from onnxruntime.quantization import CalibrationDataReader, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    onnx_path = work / "model.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model.eval(), (torch.randn(1, *images.shape[1:]),), str(onnx_path), dynamo=False,
                          input_names=["input"])
    ov.save_model(nncf.quantize(ov.convert_model(str(onnx_path)),
                                nncf.Dataset([images[i:i + 1] for i in range(len(images))])), str(work / "nncf.xml"))

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.it = iter(images[i:i + 1] for i in range(len(images)))

        def get_next(self):
            x = next(self.it, None)
            return None if x is None else {"input": x}
    pre, q = work / "pre.onnx", work / "int8.onnx"
    quant_pre_process(str(onnx_path), str(pre))
    quantize_static(str(pre), str(q), Reader())
    latency = {"PERFORMANCE_HINT": "LATENCY"}
    return {"openvino fp32": ("openvino", onnx_path, latency), "openvino nncf int8": ("openvino", work / "nncf.xml", latency),
            "ort fp32": ("ort", onnx_path, {}), "ort quantize_static int8": ("ort", q, {})}


def shipped_engine(run_dir: Path) -> tuple:
    """The run's engine as (runtime, file, deploy.json's settings): what report.html's snippet loads."""
    deploy = json.loads((run_dir / "deploy.json").read_text())
    return deploy["runtime"], run_dir / deploy["engine"], deploy["settings"]


class _Engines:
    """One engine process (`_engine_worker.py`, a fresh interpreter without PyTorch) and its pipes."""

    def __init__(self, specs: dict[str, tuple], x: np.ndarray, settled: bool) -> None:
        self.proc = subprocess.Popen([sys.executable, str(WORKER)], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        self.pid = self.proc.pid
        self.send((specs, x, settled))

    def send(self, obj) -> None:
        pickle.dump(obj, self.proc.stdin)
        self.proc.stdin.flush()

    def recv(self):
        return pickle.load(self.proc.stdout)

    def close(self) -> None:
        self.send(None)
        self.proc.wait(10)


def interleave(groups: list[dict[str, tuple]], x: np.ndarray, *, max_time_s: float, settled: bool = True,
               runs: int = 20, seed: int = 0) -> list[tuple[dict, dict]]:
    """Each group's engines in a fresh process of its own (`_engine_worker.py`: it imports the
    runtimes and no PyTorch, as a user's application), the others stopped while one times its
    block; blocks of `runs` calls, every engine in a fresh order per block, until `max_time_s` (a
    fixed rule, not a look at an interval). Rows of
    ({engine: ms per call}, {engine: the engine timed just before it})."""
    route, procs = {}, []
    for group in groups:
        procs.append(_Engines(group, x, settled))
        procs[-1].recv()   # "ready"
        route.update(dict.fromkeys(group, procs[-1]))
    names, rng, rows, previous, start = list(route), np.random.default_rng(seed), [], None, time.perf_counter()
    while len(rows) < MIN_BLOCKS or time.perf_counter() - start < max_time_s:
        ms, before = {}, {}
        for i in rng.permutation(len(names)):
            # as in the product (targets/isolated.py): one process runs at a time
            with stopped([p.pid for p in procs if p is not route[names[i]]]):
                route[names[i]].send((names[i], runs))
                ms[names[i]], before[names[i]], previous = route[names[i]].recv() * 1e3 / runs, previous, names[i]
        rows.append((ms, before))
    for p in procs:
        p.close()
    return rows


def run_benchmark_args(doc: str, *, layouts: int, max_time_s: float, plain: str | None = None) -> argparse.Namespace:
    """The arguments of a benchmark on one run directory: RUN, --json, --layouts, --max-time-s
    (and --plain, the plain engine it compares with, where the benchmark takes one)."""
    parser = argparse.ArgumentParser(description=doc)
    if plain:
        parser.add_argument("--plain", default=plain, help="the plain engine, as user_engines names it")
    parser.add_argument("run", type=Path)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--layouts", type=int, default=layouts)
    parser.add_argument("--max-time-s", type=float, default=max_time_s, help="per comparison")
    return parser.parse_args()


def run_original(run_dir: Path) -> tuple[torch.nn.Module, np.ndarray, np.ndarray]:
    """(the run's original model, its plain INT8's calibration images, one timing input)."""
    model, images = original(json.loads((run_dir / "report.json").read_text()))
    return model, images, np.random.default_rng(0).standard_normal((1, *images.shape[1:])).astype(np.float32)


def over_shipped(run_dir: Path, engines: dict[str, tuple], x: np.ndarray, *, layouts: int,
                 max_time_s: float) -> dict[str, list[Ratio]]:
    """Each engine's latency over the run's shipped engine, the engines each in a fresh process of
    its own, all interleaved in one comparison, in `layouts` fresh comparisons (one Ratio each)."""
    found: dict[str, list[Ratio]] = {name: [] for name in engines}
    groups = [{"shipped": shipped_engine(run_dir)}, *({n: s} for n, s in engines.items())]
    for seed in range(layouts):
        rows = interleave(groups, x, max_time_s=max_time_s, seed=seed)
        for name in engines:
            found[name].append(Ratio(*median_interval(np.array([ms[name] / ms["shipped"] for ms, _ in rows]))))
            print(f"layout {seed} {name:<32} {found[name][-1]} over the shipped engine", flush=True)
    return found


def isolated(specs: dict[str, tuple], x: np.ndarray, *, reference: str, max_time_s: float, layouts: int = 1) -> dict:
    """The protocol as a user compares two engines: `reference` against each other engine in a
    comparison of its own, each engine in a fresh process of its own (not this one, which made
    them), the pairs one after another, `max_time_s` shared among them: median of the per-block
    ratios with its 95 % interval. Never more than two engines alive: an ONNX Runtime session with
    a thread pool slows another even in another process (targets/isolated.py). `layouts`: each pair
    in that many fresh pairs of processes, the median over them of each end (`over_layouts`)."""
    others = [n for n in specs if n != reference]
    ratios, ms, blocks = {reference: {"ratio": 1.0, "low": 1.0, "high": 1.0}}, {reference: []}, []
    for name in others:
        per_layout = []
        for seed in range(layouts):
            rows = interleave([{reference: specs[reference]}, {name: specs[name]}], x,
                              max_time_s=max_time_s / len(others) / layouts, seed=seed)
            per_layout.append(Ratio(*median_interval(np.array([r[name] / r[reference] for r, _ in rows]))))
            ms.setdefault(name, []).append(float(np.median([r[name] for r, _ in rows])))
            ms[reference].append(float(np.median([r[reference] for r, _ in rows])))
            blocks.append(len(rows))
        ratios[name] = over_layouts(per_layout).to_dict()
        if layouts > 1:
            ratios[name]["layouts"] = [r.to_dict() for r in per_layout]
    return {"ratios": ratios, "ms": {n: float(np.median(v)) for n, v in ms.items()}, "blocks": min(blocks),
            "processes": 2 * len(others) * layouts}


def original(report: dict) -> tuple[torch.nn.Module, np.ndarray]:
    """The run's unpruned model and PLAIN_IMAGES training images (what a user's plain INT8
    calibrates on): a zoo classifier on Fashion-MNIST, or a detector (the zoo's, or an Ultralytics
    best.pt) on the YOLO set the run used (the offline detection demo when it named none)."""
    name = report["request"]["model"] or "resnet20"    # None: the default model
    pick = torch.Generator().manual_seed(0)
    if name in DETECTORS or name.endswith(".pt"):
        from edgecompress.inputs.yolo import yolo_datasets
        from edgecompress.zoo.detection_demo import cached_demo
        if name in DETECTORS:
            model, meta = pretrained_detector(name)
            imgsz = int(meta["imgsz"])
        else:   # an Ultralytics checkpoint (the extra `yolo`)
            from edgecompress.inputs.ultralytics import load_ultralytics
            ckpt = load_ultralytics(name)
            model, imgsz = ckpt.model, int(report["request"].get("imgsz") or ckpt.imgsz)
        data = report["request"].get("data")
        train = yolo_datasets(data.removeprefix("yolo:") if data else cached_demo(seed=0), imgsz=imgsz)[1]["train"]
        order = torch.randperm(len(train), generator=pick)[:PLAIN_IMAGES]
        return model.eval(), torch.stack([train[int(i)][0] for i in order]).numpy()
    model, _ = pretrained(name)
    data = load_tensors()
    order = torch.randperm(len(data.train_x), generator=pick)[:PLAIN_IMAGES]
    return model, data.train_x[order].numpy().astype(np.float32)


def measure(run_dir: Path, *, max_time_s: float, one_process: bool, layouts: int = 1) -> dict:
    report = json.loads((run_dir / "report.json").read_text())
    model, images = original(report)
    x = np.random.default_rng(0).standard_normal((1, *images.shape[1:])).astype(np.float32)
    with tempfile.TemporaryDirectory() as tmp:
        specs = {"shipped": shipped_engine(run_dir), **user_engines(model, images, Path(tmp))}
        if one_process:
            engines = {n: open_spec(s) for n, s in specs.items()}
            timing = compare({n: call(e, x) for n, e in engines.items()}, reference="shipped", max_time_s=max_time_s,
                             warmup=50)
            ratios, shipped_ms, blocks, stopped = ({n: r.to_dict() for n, r in timing.ratios.items()},
                                                   timing.ms["shipped"], timing.blocks, timing.stopped)
        else:
            t = isolated(specs, x, reference="shipped", max_time_s=max_time_s, layouts=layouts)
            ratios, shipped_ms, blocks = t["ratios"], t["ms"]["shipped"], t["blocks"]
            stopped = f"time cap, {t['processes']} fresh processes, a pair at a time"
    plain = {n: ratios[n] for n in specs if n != "shipped"}   # plain latency / shipped: its speed-up
    fastest = min(plain, key=lambda n: plain[n]["ratio"])
    run_says = report["pruning_speedup"]
    return {"run": str(run_dir), "model": report["model"], "code": report.get("code"),
            "shipped_ms": round(shipped_ms, 4), "plain": plain, "fastest_plain": fastest,
            "over_fastest_plain": plain[fastest], "run_says": run_says,
            "run_yardstick": f"{report['unpruned']['tool']} {report['unpruned']['precision']}",
            "run_pruning_share": report.get("pruning_share"),
            "run_vs_independent": round(run_says["ratio"] / plain[fastest]["ratio"], 4),
            "blocks": blocks, "stopped": stopped}


REPO = Path(__file__).resolve().parents[1]
GOALS = {"over_plain": 1.5, "pruning_share": 1.3, "agree": 0.03}


def compress(model: str, out: Path) -> float | None:
    """One default run of `model` into `out` (wall seconds; None when it had finished before)."""
    if (out / "report.json").is_file():
        return None
    import time
    start = time.perf_counter()
    subprocess.run([str(REPO / ".venv/bin/compress"), "--target", "x86-cpu", "--max-acc-drop", "1", "--model", model,
                    "--out", str(out), *(["--resume"] if out.exists() else [])], check=True, env=dict(os.environ))
    return round(time.perf_counter() - start, 1)


def row(m: dict, wall_s: float | None) -> dict:
    """One docs row: the independent figures beside the run's own."""
    report = json.loads((Path(m["run"]) / "report.json").read_text())
    share = report.get("pruning_share")
    return {"model": m["model"], "code": (m["code"] or "?")[:12],
            "run s": wall_s if wall_s is not None else report["timings_s"]["total"],   # the stages' seconds
            "precision": report["precision"], "runtime": report["deploy"]["settings_choice"].get("runtime"),
            "settings": report["deploy"]["settings"],
            "val drop": round(report["baseline"]["accuracy"] - report["result"]["accuracy"], 2),
            "fastest plain (independent)": m["fastest_plain"], "**over it (independent)**": m["over_fastest_plain"],
            "the run's headline": m["run_says"], "run's yardstick": m["run_yardstick"],
            "run / independent": m["run_vs_independent"],
            "agree within 3pct": abs(m["run_vs_independent"] - 1) <= GOALS["agree"],
            "pruning share": share, "goal 1.5x met": m["over_fastest_plain"]["low"] >= GOALS["over_plain"],
            "share 1.3x met": bool(share) and share["low"] >= GOALS["pruning_share"],
            **{f"vs {k}": v for k, v in m["plain"].items()}, "timing": f"{m['blocks']} blocks, {m['stopped']}"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", nargs="*", type=Path, default=[])
    parser.add_argument("--out", type=Path, default=Path("runs/user-view"))
    parser.add_argument("--models", nargs="*", default=["resnet20", "resnet56", "mobilenetv2"])
    parser.add_argument("--json", type=Path)
    parser.add_argument("--max-time-s", type=float, default=60.0)
    parser.add_argument("--one-process", action="store_true",
                        help="every engine in this process, which made them, instead of a fresh one")
    parser.add_argument("--layouts", type=int, default=1,
                        help="time each pair in this many fresh pairs of processes; the median over them")
    args = parser.parse_args()
    walls = {}
    if not args.runs:
        for model in args.models:
            walls[args.out / model] = compress(model, args.out / model)
        args.runs = [args.out / m for m in args.models]
    rows = [measure(r, max_time_s=args.max_time_s, one_process=args.one_process, layouts=args.layouts) for r in args.runs]
    for r in rows:
        o = r["over_fastest_plain"]
        print(f"{r['run']}: shipped {r['shipped_ms']} ms; over the fastest plain ({r['fastest_plain']}) "
              f"{o['ratio']:.3f}x [{o['low']:.3f}, {o['high']:.3f}]; the run said {r['run_says']['ratio']:.3f}x "
              f"over {r['run_yardstick']} (run / independent {r['run_vs_independent']:.3f})")
        for name, v in r["plain"].items():
            print(f"    shipped over {name:<26} {v['ratio']:.3f}x [{v['low']:.3f}, {v['high']:.3f}]")
    if args.json:
        write_result(args.json, {"command": " ".join(sys.argv), "raw": rows,
                                 "rows": [row(m, walls.get(Path(m["run"]))) for m in rows],
                                 "notes": ["`over it (independent)`: the fastest of the plain engines "
                                           "(`vs ...` columns: each one's latency over the shipped engine's), made "
                                           "and loaded by this script with each runtime's own API at its defaults, "
                                           "timed side by side with the shipped engine loaded from deploy.json."]})


if __name__ == "__main__":
    main()
