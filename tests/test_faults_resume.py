"""SIGKILL inside each stage in turn, then `--resume`: the same report as an uninterrupted run.

One chain of processes on one run directory: the first is killed inside `baseline`, its resume is
killed inside `prune` (half-way through the search), the next inside `finetune`, ... and the last
resume finishes. Each process is held inside its stage by EDGECOMPRESS_SLOW_STAGE (the runner
sleeps after the stage has staged its files, before committing them: the worst moment to die).
After every kill the stage's staged files are overwritten with garbage, so a resume that trusted
them would not reproduce the reference report.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from _faults import STAGES, kill_in_stage, manifest, comparable, run_cli, tiny_argv

pytestmark = pytest.mark.slow
GARBAGE = b"not what the stage wrote\n"


def _final_paths(ref: dict, stage: str) -> set[str]:
    """Files a stage owns under their final names (not ones an earlier stage already published)."""
    stages = ref["stages"]
    earlier = {a["path"] for s in STAGES[:STAGES.index(stage)] for a in stages[s]["artifacts"].values()}
    return {a["path"] for a in stages[stage]["artifacts"].values()} - earlier


def _poison_staging(run: Path, stage: str) -> list[str]:
    staged = [p for p in (run / ".staging" / stage).rglob("*") if p.is_file()] \
        if (run / ".staging" / stage).is_dir() else []
    for p in staged:
        p.write_bytes(GARBAGE)
    return [str(p.relative_to(run)) for p in staged]


@pytest.fixture(scope="module")
def chain(tmp_path_factory, fault_weights, reference_run) -> dict:
    work = tmp_path_factory.mktemp("kill-chain")
    run = work / "run"
    obs: dict[str, dict] = {}
    ref = manifest(reference_run)
    for i, stage in enumerate(STAGES):
        argv = tiny_argv(run, fault_weights, *(["--resume"] if i else []))
        # prune: kill half-way through the search, right after its first probe was checkpointed
        after = "probe  1:" if stage == "prune" else None
        log = kill_in_stage(argv, stage, work / f"{i}-{stage}.log", after=after)
        at_kill = manifest(run)
        obs[stage] = {"log": log, "manifest": at_kill, "visible": sorted(p for p in _final_paths(ref, stage)
                                                                          if (run / p).exists()),
                      "poisoned": _poison_staging(run, stage), "lock_left": (run / ".lock").exists()}
        if i:
            obs[STAGES[i - 1]]["resumed_log"] = log
    final = run_cli(tiny_argv(run, fault_weights, "--resume"))
    assert final.returncode == 0, final.stderr
    obs[STAGES[-1]]["resumed_log"] = final.stderr
    return {"run": run, "obs": obs, "final_manifest": manifest(run), "reference": reference_run}


@pytest.mark.parametrize("stage", STAGES)
def test_killed_stage_is_not_marked_finished_nor_visible(chain, stage):
    o = chain["obs"][stage]
    assert list(o["manifest"]["stages"]) == STAGES[:STAGES.index(stage)]
    assert not o["manifest"]["finished"]
    assert o["visible"] == [], f"{stage}'s files appeared under their final names before it finished"
    assert o["lock_left"]  # SIGKILL leaves the lock behind; the resume must not be blocked by it
    if stage not in ("prune", "baseline"):   # baseline writes no file: its builds are scratch outside the run
        assert o["poisoned"], "the slow-stage hook should hold the run with the stage's files staged"


@pytest.mark.parametrize("stage", STAGES)
def test_resume_keeps_finished_stages_and_redoes_the_killed_one(chain, stage):
    o, final = chain["obs"][stage], chain["final_manifest"]
    log = o["resumed_log"]
    done_before = STAGES[:STAGES.index(stage)]
    for earlier in done_before:
        assert f"✓ {earlier}: finished earlier, kept" in log
        assert f"▶ {earlier}:" not in log
        assert final["stages"][earlier] == o["manifest"]["stages"][earlier], f"{earlier} was redone"
    assert f"▶ {stage}:" in log and f"✓ {stage}:" not in log
    assert final["stages"][stage]["at"] > max([0] + [o["manifest"]["stages"][e]["at"] for e in done_before])


def test_search_resumes_at_its_first_unfinished_probe(chain):
    log = chain["obs"]["prune"]["resumed_log"]
    restored = re.search(r"resuming the search: (\d+) probe\(s\) restored", log)
    probes = chain["final_manifest"]["stages"]["prune"]["data"]["probes"]
    assert restored and 1 <= int(restored.group(1)) <= len(probes)


def test_resumed_run_reports_what_an_uninterrupted_run_reports(chain):
    got = json.loads((chain["run"] / "report.json").read_text())
    want = json.loads((chain["reference"] / "report.json").read_text())
    assert comparable(got) == comparable(want)
    assert got["search"]["probes_restored"] >= 1 and want["search"]["probes_restored"] == 0


def test_resumed_artifacts_are_byte_identical_to_the_uninterrupted_run(chain):
    got, want = chain["final_manifest"]["stages"], manifest(chain["reference"])["stages"]
    for stage in STAGES[:-1]:  # verify writes timings into report.json
        assert {k: a["sha256"] for k, a in got[stage]["artifacts"].items()} == \
               {k: a["sha256"] for k, a in want[stage]["artifacts"].items()}, stage
    assert not (chain["run"] / ".staging").exists() and not (chain["run"] / ".lock").exists()
