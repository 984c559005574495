"""The speed a user gets, timed independently of the run (issue 26): the shipped engine loaded the
way report.html says (the runtime's own API with deploy.json's settings, not edgecompress's
loader), against the plain engines a user makes from the original without the tool, each made
with the runtime's documented recipe, at its defaults:

  torch.onnx.export(model, torch.randn(1, C, H, W), path)            # a fixed input, no onnxsim
  OpenVINO:  core.compile_model(path, "CPU", {"PERFORMANCE_HINT": "LATENCY"})
             nncf.quantize(ov.convert_model(path), nncf.Dataset(300 training images))
  ONNX Runtime: InferenceSession(path); quant_pre_process + quantize_static (defaults)

all timed side by side in the one protocol (interleaved blocks of 20 calls, shuffled order,
median of paired ratios, 95 % interval), and each one's latency over the shipped engine's set
beside the run's own figure (report.json `pruning_speedup`, against its yardstick).

    .venv/bin/python benchmarks/user_view.py --out runs/user-view --json benchmarks/results/user_view.json
        # compress --target x86-cpu --max-acc-drop 1 --model M for each of --models (resnet20 resnet56
        # mobilenetv2), each run resumed if it exists, then the timing; or time finished runs:
    .venv/bin/python benchmarks/user_view.py --runs RUN [RUN ...] --json out.json

The goal (issue 26): the shipped engine >= 1.5x over the user's fastest plain engine, pruning's
share >= 1.3x, and the run's own headline within 3 % of this independent figure.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import load_tensors, write_result  # noqa: E402

from edgecompress.targets.timing import compare  # noqa: E402
from edgecompress.zoo import pretrained  # noqa: E402

PLAIN_IMAGES = 300   # nncf.quantize's default subset_size


def user_engines(model: torch.nn.Module, images: np.ndarray, work: Path) -> dict[str, object]:
    """name -> one-argument run function of each plain engine, made the documented way."""
    import nncf
    import onnxruntime as ort
    import openvino as ov
    from onnxruntime.quantization import CalibrationDataReader, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    onnx_path = work / "model.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model.eval(), (torch.randn(1, *images.shape[1:]),), str(onnx_path), dynamo=False,
                          input_names=["input"])
    core, latency = ov.Core(), {"PERFORMANCE_HINT": "LATENCY"}
    ov_fp32 = core.compile_model(str(onnx_path), "CPU", latency)
    ov_int8 = core.compile_model(nncf.quantize(ov.convert_model(str(onnx_path)),
                                               nncf.Dataset([images[i:i + 1] for i in range(len(images))])),
                                 "CPU", latency)

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.it = iter(images[i:i + 1] for i in range(len(images)))

        def get_next(self):
            x = next(self.it, None)
            return None if x is None else {"input": x}
    pre, q = work / "pre.onnx", work / "int8.onnx"
    quant_pre_process(str(onnx_path), str(pre))
    quantize_static(str(pre), str(q), Reader())
    return {"openvino fp32": ov_fp32.create_infer_request(), "openvino nncf int8": ov_int8.create_infer_request(),
            "ort fp32": ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"]),
            "ort quantize_static int8": ort.InferenceSession(str(q), providers=["CPUExecutionProvider"])}


def shipped_engine(run_dir: Path):
    """The run's engine loaded with the runtime's own API and deploy.json's settings (report.html's snippet)."""
    deploy = json.loads((run_dir / "deploy.json").read_text())
    engine = run_dir / deploy["engine"]
    if deploy["runtime"] == "openvino":
        import openvino as ov
        core = ov.Core()
        return core.compile_model(core.read_model(str(engine)), "CPU", deploy["settings"]).create_infer_request()
    import onnxruntime as ort
    opts = ort.SessionOptions()
    for key, value in deploy["settings"].items():
        if "." in key:
            opts.add_session_config_entry(key, str(value))
        else:
            setattr(opts, key, value)
    return ort.InferenceSession(str(engine), sess_options=opts, providers=["CPUExecutionProvider"])


def call(engine, x: np.ndarray):
    if hasattr(engine, "infer"):
        return lambda: engine.infer({0: x})
    name = engine.get_inputs()[0].name
    return lambda: engine.run(None, {name: x})


def measure(run_dir: Path, data, *, max_time_s: float) -> dict:
    report = json.loads((run_dir / "report.json").read_text())
    model, _ = pretrained(report["request"]["model"] or "resnet20")   # None: the default model
    order = torch.randperm(len(data.train_x), generator=torch.Generator().manual_seed(0))[:PLAIN_IMAGES]
    images = data.train_x[order].numpy().astype(np.float32)
    x = np.random.default_rng(0).standard_normal((1, *images.shape[1:])).astype(np.float32)
    with tempfile.TemporaryDirectory() as tmp:
        engines = {"shipped": shipped_engine(run_dir), **user_engines(model, images, Path(tmp))}
        timing = compare({n: call(e, x) for n, e in engines.items()}, reference="shipped", max_time_s=max_time_s,
                         warmup=50)
    plain = {n: timing.ratios[n].to_dict() for n in engines if n != "shipped"}   # plain latency / shipped: its speed-up
    fastest = min(plain, key=lambda n: plain[n]["ratio"])
    run_says = report["pruning_speedup"]
    return {"run": str(run_dir), "model": report["model"], "code": report.get("code"),
            "shipped_ms": round(timing.ms["shipped"], 4), "plain": plain, "fastest_plain": fastest,
            "over_fastest_plain": plain[fastest], "run_says": run_says,
            "run_yardstick": f"{report['unpruned']['tool']} {report['unpruned']['precision']}",
            "run_pruning_share": report.get("pruning_share"),
            "run_vs_independent": round(run_says["ratio"] / plain[fastest]["ratio"], 4),
            "blocks": timing.blocks, "stopped": timing.stopped}


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
    args = parser.parse_args()
    walls = {}
    if not args.runs:
        for model in args.models:
            walls[args.out / model] = compress(model, args.out / model)
        args.runs = [args.out / m for m in args.models]
    data = load_tensors()
    rows = [measure(r, data, max_time_s=args.max_time_s) for r in args.runs]
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
