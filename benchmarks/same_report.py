"""Are two runs' reports the same apart from timings? (issue 20: a move that changes no behaviour)

    .venv/bin/python benchmarks/same_report.py RUN_A/report.json RUN_B/report.json

Prints every key whose value differs (stage timings, seconds and the command line excluded) and
exits 1 when any does.
"""
from __future__ import annotations

import json
import sys

IGNORED = {"timings_s", "seconds", "at", "command"}


def differences(a, b, path: str = "") -> list[str]:
    if type(a) is not type(b):
        return [f"{path}: {a!r:.80} != {b!r:.80}"]
    if isinstance(a, dict):
        out = [f"{path}.{k}: only in one" for k in set(a) ^ set(b) if k not in IGNORED]
        for k in sorted(set(a) & set(b) - IGNORED):
            out += differences(a[k], b[k], f"{path}.{k}")
        return out
    if isinstance(a, list):
        out = [f"{path}: {len(a)} != {len(b)} items"] if len(a) != len(b) else []
        for i, (x, y) in enumerate(zip(a, b)):
            out += differences(x, y, f"{path}[{i}]")
        return out
    return [] if a == b else [f"{path}: {a!r:.80} != {b!r:.80}"]


def main(argv: list[str]) -> int:
    a, b = (json.loads(open(p).read()) for p in argv[:2])
    found = differences(a, b)
    print("\n".join(found) if found else f"same report ({len(a)} keys; timings excluded)")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
