"""Same inputs and seed -> the same keep counts and the same report, figure for figure (timings
apart; latency is estimated on the test profile, so it is compared too)."""
from __future__ import annotations

import json

import pytest
import torch

from _faults import REPO, STAGES, comparable, manifest, tiny_argv
from edgecompress.cli import main


@pytest.fixture(autouse=True)
def _repo_cwd(monkeypatch):
    monkeypatch.chdir(REPO)
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.mark.slow
def test_two_runs_give_the_same_report_and_artifacts(tmp_path, capsys, reference_run, fault_weights):
    """A second run, in this process (other RNG history, other imports done), against the reference
    run made by its own process."""
    torch.manual_seed(12345)  # the run must seed everything it uses itself
    torch.rand(7)
    run = tmp_path / "run"
    assert main(tiny_argv(run, fault_weights)) == 0
    got, want = (json.loads((d / "report.json").read_text()) for d in (run, reference_run))
    assert [(l["name"], l["after"]) for l in got["layers"]] == [(l["name"], l["after"]) for l in want["layers"]]
    assert any(l["after"] < l["before"] for l in got["layers"]), "the tiny run should prune something"
    assert [p["widths"] for p in manifest(run)["stages"]["prune"]["data"]["probes"]] == \
           [p["widths"] for p in manifest(reference_run)["stages"]["prune"]["data"]["probes"]]
    assert comparable(got) == comparable(want)
    for stage in STAGES[:-1]:  # verify's files carry timings
        assert {k: a["sha256"] for k, a in manifest(run)["stages"][stage]["artifacts"].items()} == \
               {k: a["sha256"] for k, a in manifest(reference_run)["stages"][stage]["artifacts"].items()}, stage


def test_importance_and_keep_counts_repeat_exactly(fault_weights):
    from edgecompress.pruning import PruningPlan
    from tests.fixtures.fault_specs import data, model

    def plan():
        net = model()
        net.load_state_dict(torch.load(fault_weights, weights_only=True))
        x = data()[0].tensors[0]
        return PruningPlan.build(net.eval(), [x[:128], x[128:256]])

    a, b = plan(), plan()
    assert a.scores.keys() == b.scores.keys()
    assert all(torch.equal(a.scores[k], b.scores[k]) for k in a.scores)
    for knob in (0.3, 0.5, 0.8, 0.95):
        assert a.keep_counts(knob, multiple=4, min_channels=4) == b.keep_counts(knob, multiple=4, min_channels=4)
        assert a.keep_indices(knob, multiple=4, min_channels=4) == b.keep_indices(knob, multiple=4, min_channels=4)
    assert a.keep_counts(0.5, multiple=4, min_channels=4) != a.keep_counts(0.99, multiple=4, min_channels=4)
