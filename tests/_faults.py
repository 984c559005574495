"""Shared helpers of the fault suites: the tiny run's command line, subprocess runs, kill at a stage.

A run of the tiny spec (tests/fixtures/fault_specs.py) on the `tiny-estimate` test profile takes a
few seconds of CPU: 3 search probes (--min-search-interval 0.2), 4 distillation steps, INT8 on 512
images, estimated latency (so reports of two runs can be compared figure by figure).
"""
from __future__ import annotations

import copy
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
FIXTURES = REPO / "tests" / "fixtures"
SPECS = "tests.fixtures.fault_specs"
STAGES = ["baseline", "prune", "finetune", "export", "calibrate", "build", "verify"]
SLOW_ENV = "EDGECOMPRESS_SLOW_STAGE"
# Printed by the runner when EDGECOMPRESS_SLOW_STAGE holds a stage: its files are staged, not committed.
SLOW_MARK = "debug: {stage}: files staged, sleeping"

if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


def tiny_argv(out: Path, weights: Path, *extra: str) -> list[str]:
    return ["--target", "tiny-estimate", "--profiles", str(FIXTURES / "profiles"), "--max-acc-drop", "3",
            "--model", f"{SPECS}:model", "--weights", str(weights), "--data", f"{SPECS}:data",
            "--out", str(out), "--seed", "0", "--min-search-interval", "0.2", "--finetune-samples", "256",
            "--bn-batches", "2", "--batch-size", "64", "--threads", "1", *extra]


def sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def env(**extra: str) -> dict:
    base = {k: v for k, v in os.environ.items() if k != SLOW_ENV}
    # one thread everywhere: the reports of separate processes are then bit-identical
    return {**base, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", **extra}


def run_cli(argv: list[str], *, timeout: float = 300, **env_extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "edgecompress.cli", *argv], cwd=REPO, env=env(**env_extra),
                          capture_output=True, text=True, timeout=timeout)


class Started:
    """A `compress` process whose stderr is collected by polling a file (no pipe to fill up)."""

    def __init__(self, argv: list[str], log: Path, **env_extra: str) -> None:
        self.log = log
        self._f = open(log, "w")
        self.proc = subprocess.Popen([sys.executable, "-m", "edgecompress.cli", *argv], cwd=REPO,
                                     env=env(**env_extra), stdout=subprocess.DEVNULL, stderr=self._f)

    def text(self) -> str:
        return self.log.read_text()

    def wait_for(self, needle: str, *, timeout: float = 300) -> str:
        """Block until `needle` is in stderr; fail with the log if the process ends first."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = self.text()
            if needle in text:
                return text
            if self.proc.poll() is not None:
                raise AssertionError(f"process exited ({self.proc.returncode}) before {needle!r}:\n{self.text()}")
            time.sleep(0.05)
        self.kill()
        raise AssertionError(f"timed out waiting for {needle!r}:\n{self.text()}")

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait()
        self._f.close()

    def wait(self, timeout: float = 300) -> int:
        code = self.proc.wait(timeout=timeout)
        self._f.close()
        return code


def kill_in_stage(argv: list[str], stage: str, log: Path, *, after: str | None = None) -> str:
    """Run until `stage` has staged its files (or until `after` is printed), SIGKILL; stderr."""
    p = Started(argv, log, **{SLOW_ENV: f"{stage}:600"})
    try:
        text = p.wait_for(after or SLOW_MARK.format(stage=stage))
    finally:
        p.kill()
    assert p.proc.returncode == -signal.SIGKILL, text
    return p.text()


def manifest(run: Path) -> dict:
    return json.loads((run / "manifest.json").read_text())


def comparable(report: dict) -> dict:
    """A report without what may differ between equal runs: timings, the command line (its --out),
    how many probes a resumed search restored, and measured latency (estimated latency stays)."""
    r = copy.deepcopy(report)
    r.pop("timings_s", None)
    r.pop("command", None)
    r.get("search", {}).pop("probes_restored", None)
    r["notes"] = [n for n in r.get("notes", []) if "is redone" not in n]
    if "measured" in (r["baseline"].get("latency_method"), r["result"].get("latency_method")):
        for part in (r["baseline"], r["result"], *r["probes"], *r.get("precisions", [])):
            part.pop("latency_ms", None)
        r.pop("result_details", None)
    return r


# -- the table of messages in docs/reliability.md ----------------------------------------------------

DOC = REPO / "docs" / "reliability.md"
DOC_ROWS_ENV = "FAULTS_DOC_TABLE"


def user_error_lines(err: str, tmp: Path, *, early: bool = True) -> tuple[str, str]:
    """The `error:` and `hint:` lines of a failed run's stderr, temporary paths shown as <tmp>.

    Asserts the shape: no traceback, exactly one error line followed by its hint as the last line;
    with `early` (refused before any stage ran) nothing else but notes."""
    assert "Traceback" not in err, err
    lines = [ln for ln in err.replace(str(tmp), "<tmp>").splitlines() if ln.strip() and not ln.startswith("  note:")]
    errors = [ln for ln in lines if ln.startswith("error: ")]
    assert len(errors) == 1 and len(lines) >= 2 and lines[-2] == errors[0] and lines[-1].startswith("hint: "), err
    if early:
        assert len(lines) == 2, err
    return lines[-2], lines[-1]


def _code(text: str) -> str:
    text = text.replace("|", "\\|")
    return f"`` {text} ``" if "`" in text else f"`{text}`"


def doc_row(case_id: str, what: str, error: str, hint: str) -> str:
    return f"| {case_id} | {what} | {_code(error)}<br>{_code(hint)} |"


def doc_row_check(case_id: str, what: str, error: str, hint: str) -> None:
    """With FAULTS_DOC_TABLE=FILE, append the row to FILE; otherwise the doc must hold it verbatim."""
    row = doc_row(case_id, what, error, hint)
    if os.environ.get(DOC_ROWS_ENV):
        with open(os.environ[DOC_ROWS_ENV], "a") as f:
            f.write(json.dumps({"id": case_id, "row": row}) + "\n")
        return
    assert row in DOC.read_text().splitlines(), \
        f"docs/reliability.md lacks (or has another message for) this row; regenerate the table:\n{row}"


if __name__ == "__main__":  # python tests/_faults.py ROWS.jsonl: print the markdown table
    rows = [json.loads(line) for line in Path(sys.argv[1]).read_text().splitlines()]
    print("| case | input | what `compress` prints (exit code 2) |\n|---|---|---|")
    print("\n".join(dict((r["id"], r["row"]) for r in rows).values()))
