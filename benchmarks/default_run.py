"""The default run as a new user makes it, twice: time, probes, what ships, and whether the same
command ships the same structure (issue 21: deterministic, <= 10 min, <= 8 trained probes).

    .venv/bin/python benchmarks/default_run.py --out runs/default --json out.json      # two runs
    .venv/bin/python benchmarks/default_run.py --runs runs/default-1 runs/default-2 --json out.json

Each run is `compress --target x86-cpu --max-acc-drop 1 --out DIR` with every default (runs that
already finished are read, not redone). The figures are the runs' own report.json. The runs share a
latency-table cache of their own (OUT-cache, emptied first): the first run measures the table, the
next ones reuse it, as a user's second run on the same machine does (`table` column).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import write_result  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def run(out: Path, cache: Path) -> float | None:
    """Wall seconds of one default run into `out` (None: it had finished before)."""
    if (out / "report.json").is_file():
        return None
    start = time.perf_counter()
    subprocess.run([str(REPO / ".venv/bin/compress"), "--target", "x86-cpu", "--max-acc-drop", "1", "--out", str(out)],
                   check=True, env={**os.environ, "EDGECOMPRESS_CACHE_DIR": str(cache)})
    return round(time.perf_counter() - start, 1)


def row(out: Path, wall_s: float | None) -> dict:
    rep = json.loads((out / "report.json").read_text())
    probes = rep["probes"]
    structures = {(p["flops"], p["blocks_removed"]) for p in probes}
    from edgecompress.report.assemble import summary
    return {"run": str(out), "code": (rep.get("code") or "?")[:12], "wall_s": wall_s, "stage_seconds": round(rep["timings_s"]["total"], 1),
            "table": "reused" if rep["pruning"]["table_timing"].get("cached") else "measured", "probes": len(probes), "trained_probes": len(structures - {(rep["baseline"]["flops"], 0)}),
            "blocks_removed": ", ".join(rep["pruning"]["blocks_removed"] or []) or "-",
            "macs_kept": round(rep["result"]["flops"] / rep["baseline"]["flops"], 3), "precision": rep["precision"],
            "val": round(rep["result"]["accuracy"], 2), "val_original": round(rep["baseline"]["accuracy"], 2),
            "speedup_vs_fp32": rep["result"]["speedup"], "pruning_speedup": rep["pruning_speedup"],
            "yardstick": f"{rep['unpruned']['precision']} ({rep['unpruned']['tool']})",
            "summary": summary(rep, out)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=Path("runs/default"), help="runs go to OUT-1, OUT-2, ...")
    p.add_argument("--times", type=int, default=2)
    p.add_argument("--runs", type=Path, nargs="*", help="read these finished runs instead")
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    runs = args.runs or [args.out.with_name(f"{args.out.name}-{i + 1}") for i in range(args.times)]
    cache = args.out.with_name(f"{args.out.name}-cache")
    if not args.runs and not any((r / "report.json").is_file() for r in runs):
        shutil.rmtree(cache, ignore_errors=True)
    rows = [row(r, None if args.runs else run(r, cache)) for r in runs]
    same = len({(r["blocks_removed"], r["macs_kept"], r["precision"]) for r in rows}) == 1
    notes = [f"the {len(rows)} runs ship {'the same' if same else 'DIFFERENT'} structures"] + \
        [f"`{r['run']}`: {r['summary']}" for r in rows]
    for line in notes:
        print(line)
    if args.json:
        cols = [k for k in rows[0] if k != "summary"]
        write_result(args.json, {"rows": [{k: r[k] for k in cols} for r in rows], "notes": notes,
                                         "summary": {"same_structure": same}})
    return 0


if __name__ == "__main__":
    sys.exit(main())
