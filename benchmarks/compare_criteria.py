"""Channel criteria compared at the same accuracy and fine-tuning budgets (issue 7).

For every base model x criterion x allocation: the pipeline's binary search on one knob (cr for
allocation `cr`, the keep ratio for `uniform`) under a 1-point validation budget, each probe
pruned -> BN-recalibrated -> briefly distilled; the chosen model then gets the same final KD.
Criteria come from `edgecompress.pruning.CRITERIA` (ours: `permutation`; Torch-Pruning's `l1`,
`l2`, `bn_scale`, `taylor`; `random`; options as `permutation:at=bn`).

Three phases, so the training can run on a GPU machine and the latency on the target CPU:

    # search (GPU machine; --jobs parallel processes; finished configurations are skipped)
    PYTHONPATH=$PWD python3 benchmarks/compare_criteria.py --phase search --device cuda \\
        --data .data --out runs/bench-criteria --jobs 6 --deadline-s 540 --pack $OUT/criteria.tar
    # here: join the parts, unpack, then latency (OpenVINO on x86, batch 1) and the report
    cat criteria.tar.part* > criteria.tar; mkdir -p runs && tar -xf criteria.tar -C runs
    .venv/bin/python benchmarks/compare_criteria.py --phase latency --out runs/bench-criteria
    .venv/bin/python benchmarks/compare_criteria.py --phase report --out runs/bench-criteria
    # smoke run of all three (tiny model, 2 criteria, seconds)
    .venv/bin/python benchmarks/compare_criteria.py --quick --phase all --docs /tmp/bench.md
"""
from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import shlex
import sys
import tarfile
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import DOCS, machine  # noqa: E402
from _criteria_search import Settings, prepare_base, run_config, settings_dict, write_json  # noqa: E402

FULL = {"models": "resnet20,resnet56", "criteria": "permutation,l1,l2,bn_scale,taylor,random",
        "allocations": "cr,uniform", "out": "runs/bench-criteria"}
QUICK = {"models": "tiny-resnet", "criteria": "permutation,l1", "allocations": "cr,uniform",
         "out": "runs/bench-criteria-quick", "probe_steps": 2, "finetune_steps": 4, "min_interval": 0.3,
         "multiple": 1, "min_channels": 1, "plan_batches": 1, "bn_batches": 2, "batch_size": 64,
         "train_images": 2048, "val_images": 400, "test_images": 400, "quick_steps": 40,
         "threads": 1}   # 1 thread: on a loaded 2-core machine two OpenMP threads run 5-30x slower


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--phase", choices=["search", "latency", "report", "all"], required=True)
    p.add_argument("--quick", action="store_true", help="tiny model, 2 criteria, few steps: a smoke run")
    p.add_argument("--out", type=Path, help=f"results folder (default {FULL['out']}; quick: {QUICK['out']})")
    p.add_argument("--models", help=f"comma-separated zoo names (default {FULL['models']})")
    p.add_argument("--criteria", help=f"comma-separated CRITERIA specs (default {FULL['criteria']})")
    p.add_argument("--allocations", help="comma-separated allocations (default cr,uniform)")
    p.add_argument("--device", default="cpu", help="torch device of the search phase (cpu, cuda)")
    p.add_argument("--data", help="Fashion-MNIST folder with the four IDX(.gz) files (default: the system's)")
    p.add_argument("--jobs", type=int, default=1, help="configurations run in parallel processes")
    p.add_argument("--deadline-s", type=float, help="start no probe after this many seconds (then pack)")
    p.add_argument("--pack", type=Path, help="after the search, write the results folder into this .tar")
    p.add_argument("--base-from", type=Path, help="search phase: take each base model (original.pt, baseline.json) "
                   "from this results folder, so runs with another --seed start from the same original")
    for flag, kind, text in (("--max-acc-drop", float, "accuracy budget, points (default 1)"),
                             ("--min-interval", float, "search stops below this knob interval (default 0.01)"),
                             ("--probe-steps", int, "KD steps per probe (default 100)"),
                             ("--finetune-steps", int, "final KD steps (default 1500)"),
                             ("--multiple", int, "keep-count multiple (default 8: x86-cpu profile)"),
                             ("--min-channels", int, "minimum channels per group (default 8)"),
                             ("--bn-batches", int, "BN recalibration batches per probe (default 16)"),
                             ("--batch-size", int, "batch size (default 128)"), ("--seed", int, "seed (default 0)")):
        p.add_argument(flag, type=kind, help=text)
    p.add_argument("--threads", type=int, help="latency phase: INFERENCE_NUM_THREADS (default OpenVINO's)")
    p.add_argument("--force", action="store_true", help="latency phase: measure again what is measured")
    p.add_argument("--max-time-s", type=float, default=None, help="latency phase: protocol cap per model (default 60; quick 5)")
    p.add_argument("--docs", type=Path, default=DOCS, help="report phase: the Markdown file to update")
    p.add_argument("--img", type=Path, help="report phase: the plot (default docs/img/criteria_comparison.png)")
    p.add_argument("--seed-runs", help="report phase: comma-separated results folders of the same benchmark run "
                   "with other --seed values (each with its own latency phase): adds a seed-spread table")
    return p.parse_args(argv)


def _pick(args, name: str):
    given = getattr(args, name, None)
    if given is not None:
        return given
    return (QUICK if args.quick else FULL).get(name)


def make_settings(args) -> Settings:
    fields = {}
    for name in ("max_acc_drop", "min_interval", "probe_steps", "finetune_steps", "multiple", "min_channels",
                 "plan_batches", "bn_batches", "batch_size", "seed", "train_images", "val_images",
                 "test_images", "quick_steps", "threads"):
        value = _pick(args, name)
        if value is not None:
            fields[name] = value
    return Settings(data_root=args.data, device=args.device, **fields)


def _check_settings(out: Path, settings: Settings, argv: list[str], jobs: int) -> None:
    """A results folder holds one benchmark: a rerun with other budgets must use another folder."""
    path = out / "settings.json"
    mine = settings_dict(settings)
    if path.is_file():
        old = json.loads(path.read_text())["settings"]
        changed = {k for k in mine if k not in ("device", "data_root") and old.get(k) != mine[k]}
        if changed:
            from edgecompress.errors import UserError
            raise UserError(f"{out} holds a run with other settings ({', '.join(sorted(changed))})",
                            "use another --out, or the same settings to resume")
        return
    out.mkdir(parents=True, exist_ok=True)
    write_json(path, {"settings": mine, "machine": machine(), "command": _command(argv), "jobs": jobs})


def _command(argv: list[str]) -> str:
    return "python3 benchmarks/compare_criteria.py " + " ".join(shlex.quote(a) for a in argv)


def search_phase(args, argv: list[str]) -> list[dict]:
    out, settings = _pick(args, "out"), make_settings(args)
    out = Path(out)
    _check_settings(out, settings, argv, args.jobs)
    if args.deadline_s is not None:
        settings = replace(settings, deadline=time.time() + args.deadline_s)
    if settings.threads:
        import torch
        torch.set_num_threads(settings.threads)
    models = _pick(args, "models").split(",")
    bases = {m: prepare_base(out, m, settings, base_from=args.base_from) for m in models}
    configs = [(m, c, a) for m in sorted(models, key=lambda m: -bases[m]["macs"])   # big models first
               for c in _pick(args, "criteria").split(",") for a in _pick(args, "allocations").split(",")]
    results = _run_all(out, configs, settings, args.jobs)
    write_json(out / "results.json", {"settings": settings_dict(settings), "baselines": bases, "results": results})
    if args.pack:
        pack(out, args.pack)
    return results


def _run_all(out: Path, configs: list[tuple], settings: Settings, jobs: int) -> list[dict]:
    def say(r: dict) -> None:
        extra = "" if r.get("status") != "done" else (
            f" knob {r['knob']:.4f}, {r['macs_ratio']:.1%} MACs, val {r['val_accuracy']:.2f} %, {r['wall_s']:.0f} s")
        print(f"  {r['model']} / {r['criterion']} / {r['allocation']}: {r.get('status')}{extra}", flush=True)

    if jobs <= 1:
        return [_say(say, run_config(str(out), *c, settings)) for c in configs]
    settings = replace(settings, threads=settings.threads or max(1, (os.cpu_count() or 2) // jobs))
    ctx = multiprocessing.get_context("spawn")   # CUDA cannot be used in forked children
    with ProcessPoolExecutor(max_workers=jobs, mp_context=ctx) as pool:
        futures = [pool.submit(run_config, str(out), *c, settings) for c in configs]
        for f in as_completed(futures):
            say(f.result())
        return [f.result() for f in futures]


def _say(say, r: dict) -> dict:
    say(r)
    return r


PART_BYTES = 15 * 2 ** 20   # the device machine returns at most 8 files of 16 MiB each


def pack(out: Path, dst: Path, *, part_bytes: int = PART_BYTES) -> list[Path]:
    """One tar of the results folder (models, states, JSON), split into `dst.partNN` pieces when
    larger than `part_bytes`; join them with `cat dst.part* > dst` before `tar -xf dst`."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(dst, "w") as tar:
        tar.add(out, arcname=out.name, filter=lambda t: None if t.name.endswith(".tmp") else t)
    size = dst.stat().st_size
    parts = [dst]
    if size > part_bytes:
        data, parts = dst.read_bytes(), []
        for i in range(0, size, part_bytes):
            parts.append(dst.with_name(f"{dst.name}.part{i // part_bytes:02d}"))
            parts[-1].write_bytes(data[i:i + part_bytes])
        dst.unlink()
    print(f"packed {out} -> {', '.join(p.name for p in parts)} ({size / 1e6:.1f} MB)", flush=True)
    return parts


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    out = Path(_pick(args, "out"))
    if args.phase in ("search", "all"):
        search_phase(args, argv)
    if args.phase in ("latency", "all"):
        from _criteria_report import latency_phase
        lat = latency_phase(out, quick=args.quick, force=args.force, threads=args.threads, max_time_s=args.max_time_s)
        lat["command"] = _command(argv)
        write_json(out / "latency.json", lat)
    if args.phase in ("report", "all"):
        from _criteria_report import report_phase
        commands = [json.loads((out / "settings.json").read_text())["command"]]
        if (out / "latency.json").is_file():
            commands.append(json.loads((out / "latency.json").read_text()).get("command", ""))
        commands.append(_command(argv))
        seed_runs = [Path(d) for d in args.seed_runs.split(",")] if args.seed_runs else []
        report_phase(out, docs=args.docs, img=args.img, commands=[c for c in dict.fromkeys(commands) if c],
                     seed_runs=seed_runs)
        print(f"wrote section '## Criteria comparison' of {args.docs}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
