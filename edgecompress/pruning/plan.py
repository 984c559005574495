"""PruningPlan: importance computed once, then any number of keep-count / prune probes."""
from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from edgecompress.errors import UserError
from edgecompress.pruning import allocation as alloc
from edgecompress.pruning.criteria import CRITERIA, DEFAULT_CRITERION, parse_spec
from edgecompress.pruning.groups import PrunableGroup, find_groups, prune_copy
from edgecompress.pruning.importance import is_scorable, iter_inputs


class PruningPlan:
    """Groups and their channel scores for one model; `prune(knob)` makes a smaller copy.

    `knob` is the cumulative contribution rate for allocation "cr" and the keep ratio for
    "uniform"; both in [0, 1] and monotone. The plan keeps a reference to the model (never
    modified) and one example input for tracing copies."""

    def __init__(self, model: nn.Module, groups: list[PrunableGroup], scores: dict[str, torch.Tensor], *,
                 allocation: str, example_input: torch.Tensor, criterion: str = DEFAULT_CRITERION) -> None:
        self.model, self.groups, self.scores = model, groups, scores
        self.allocation, self.criterion = allocation, criterion
        self.example_input = example_input
        self._allocate = alloc.ALLOCATIONS.get(allocation)

    @classmethod
    def build(cls, model: nn.Module, batches: Iterable, *, criterion: str = DEFAULT_CRITERION,
              allocation: str = "cr", ignored: Iterable = (), example_input: torch.Tensor | None = None,
              **criterion_opts) -> "PruningPlan":
        batches = list(batches) if not isinstance(batches, (list, tuple)) else batches
        name, spec_opts = parse_spec(criterion)   # "name" or "name:key=value,..."
        score_fn, criterion_opts = CRITERIA.get(name), {**spec_opts, **criterion_opts}
        alloc.ALLOCATIONS.get(allocation)     # fail on a bad name before the expensive part
        example = _example(batches, example_input)
        groups = find_groups(model, example, ignored=ignored)
        scores = score_fn(model, groups, batches, **criterion_opts)
        return cls(model, groups, scores, allocation=allocation, example_input=example, criterion=criterion)

    def keep_counts(self, knob: float, *, multiple: int = 1, min_channels: int = 1) -> dict[str, int]:
        return self._allocate(self.scores, knob, multiple=multiple, min_channels=min_channels)

    def keep_indices(self, knob: float, *, multiple: int = 1, min_channels: int = 1) -> dict[str, list[int]]:
        counts = self.keep_counts(knob, multiple=multiple, min_channels=min_channels)
        return alloc.keep_indices(self.scores, counts)

    def prune(self, knob: float, *, multiple: int = 1, min_channels: int = 1) -> nn.Module:
        """A new, physically smaller model; the plan's model is left as it was."""
        keep = self.keep_indices(knob, multiple=multiple, min_channels=min_channels)
        widths = {g.key: g.width for g in self.groups}
        removals = {k: sorted(set(range(widths[k])) - set(idx)) for k, idx in keep.items()}
        return prune_copy(self.model, self.example_input, removals)

    def widths(self, model: nn.Module | None = None) -> dict[str, int]:
        """Output channels of every conv / Linear of `model` (default: the plan's unpruned model)."""
        model = self.model if model is None else model
        return {n: int(m.weight.shape[0]) for n, m in model.named_modules() if is_scorable(m)}


def _example(batches, example_input: torch.Tensor | None) -> torch.Tensor:
    if example_input is not None:
        return example_input
    first = next(iter_inputs(batches), None)
    if first is None or first.shape[0] == 0:
        raise UserError("no calibration batches were given", "give at least one non-empty batch of inputs")
    return first[:1]


def prune_model(model: nn.Module, cr: float, batches: Iterable, *, multiple: int = 1, min_channels: int = 1,
                ignored: Iterable = ()) -> nn.Module:
    """One-shot: the default criterion, cr allocation, physical pruning. Returns a new module."""
    alloc.check_knob(cr)
    plan = PruningPlan.build(model, batches, ignored=ignored)
    return plan.prune(cr, multiple=multiple, min_channels=min_channels)


def recalibrate_bn(model: nn.Module, batches: Iterable, *, max_batches: int | None = None) -> nn.Module:
    """Re-estimate BatchNorm running statistics in place from `batches` (cumulative average):
    pruning removes channels that fed the next layers, so the old statistics are stale."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None   # None: exact average over all batches seen
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    was_training = model.training
    model.train()
    try:
        with torch.no_grad():
            for i, x in enumerate(iter_inputs(batches)):
                if max_batches is not None and i >= max_batches:
                    break
                model(x.to(device))
    finally:
        for m, momentum in zip(norms, saved):
            m.momentum = momentum
        model.train(was_training)
    return model
