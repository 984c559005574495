"""PruningPlan: importance computed once, then any number of keep-count / prune probes."""
from __future__ import annotations

import copy
import math
from collections.abc import Iterable

import torch
from torch import nn

from edgecompress.errors import UserError
from edgecompress.pruning import allocation as alloc
from edgecompress.pruning.criteria import CRITERIA, DEFAULT_CRITERION, parse_spec
from edgecompress.pruning.groups import PrunableGroup, build_graph, find_groups, prune_copy
from edgecompress.pruning.importance import is_scorable, iter_inputs, run_model
from edgecompress.pruning.safety import Trial, screen


class PruningPlan:
    """Groups and their channel scores for one model; `prune(knob)` makes a smaller copy.

    `knob` is the cumulative contribution rate for allocation "cr" and the keep ratio for
    "uniform"; both in [0, 1] and monotone. The plan keeps a reference to the model (never
    modified) and one example input for tracing copies."""

    def __init__(self, model: nn.Module, groups: list[PrunableGroup], scores: dict[str, torch.Tensor], *,
                 allocation: str, example_input: torch.Tensor, criterion: str = DEFAULT_CRITERION,
                 unprunable: list[dict] | None = None) -> None:
        self.model, self.groups, self.scores = model, groups, scores
        self.allocation, self.criterion = allocation, criterion
        self.example_input = example_input
        # [{"layers": [names], "reason": "one line"}]: groups left at full width, and why
        self.unprunable = list(unprunable or [])
        self._allocate = alloc.ALLOCATIONS.get(allocation)

    @classmethod
    def build(cls, model: nn.Module, batches: Iterable, *, criterion: str | None = None,
              allocation: str = "cr", ignored: Iterable = (), example_input: torch.Tensor | None = None,
              safe: bool = True, **criterion_opts) -> "PruningPlan":
        """Groups, safety screen (`safe`: each group tried at its thinnest, failures left at full
        width in `unprunable`), then scores. A model with nothing prunable gets a plan without
        groups whose `prune` returns an unchanged copy; only a model that does not run on the
        batches is a UserError. `criterion` None: DEFAULT_CRITERION."""
        batches = list(batches) if not isinstance(batches, (list, tuple)) else batches
        criterion = criterion or DEFAULT_CRITERION
        name, spec_opts = parse_spec(criterion)   # "name" or "name:key=value,..."
        score_fn, criterion_opts = CRITERIA.get(name), {**spec_opts, **criterion_opts}
        alloc.ALLOCATIONS.get(allocation)     # fail on a bad name before the expensive part
        example = _example(batches, example_input)
        groups, unprunable = _survey(model, example, ignored)
        if safe and groups:
            groups, failed = screen(groups, Trial(model, example, next(iter_inputs(batches))[:8]))
            unprunable += failed
        if not groups and not unprunable:
            unprunable.append({"layers": [], "reason": "no Conv or Linear output besides the classifier "
                               "and the ignored layers"})
        scores = score_fn(model, groups, batches, **criterion_opts) if groups else {}
        return cls(model, groups, scores, allocation=allocation, example_input=example, criterion=criterion,
                   unprunable=unprunable)

    def _keep_units(self, knob: float, multiple: int, min_channels: int) -> dict[str, list[int]]:
        """Units kept per group: allocation over unit scores (the sum of their channels' scores),
        rounded so every member layer's width is a multiple of `multiple` and >= `min_channels`."""
        alloc.check_rounding(multiple, min_channels)
        out = {}
        for g in self.groups:
            score = torch.stack([self.scores[g.key][u].sum() for u in g.units])
            step = multiple // math.gcd(multiple, g.per_unit)
            least = math.ceil(min_channels / g.per_unit)
            count = self._allocate({g.key: score}, knob, multiple=step, min_channels=least)[g.key]
            out[g.key] = alloc.keep_indices({g.key: score}, {g.key: count})[g.key]
        return out

    def keep_counts(self, knob: float, *, multiple: int = 1, min_channels: int = 1) -> dict[str, int]:
        """Root channels each group keeps."""
        return {k: len(v) for k, v in self.keep_indices(knob, multiple=multiple, min_channels=min_channels).items()}

    def keep_indices(self, knob: float, *, multiple: int = 1, min_channels: int = 1) -> dict[str, list[int]]:
        kept = self._keep_units(knob, multiple, min_channels)
        units = {g.key: g.units for g in self.groups}
        return {k: sorted(i for u in idx for i in units[k][u]) for k, idx in kept.items()}

    def prune(self, knob: float, *, multiple: int = 1, min_channels: int = 1) -> nn.Module:
        """A new, physically smaller model; the plan's model is left as it was."""
        alloc.check_knob(knob, name="knob")
        if not self.groups:
            return copy.deepcopy(self.model)
        return self._prune_to(self.keep_indices(knob, multiple=multiple, min_channels=min_channels))

    def unit_steps(self, *, multiple: int = 1, min_channels: int = 1) -> dict[str, list[int]]:
        """Per group, the unit counts its width may take, widest first: every count the keep
        counts round to (a multiple of the group's step, at least its minimum), the full width first."""
        alloc.check_rounding(multiple, min_channels)
        out = {}
        for g in self.groups:
            n, step = len(g.units), multiple // math.gcd(multiple, g.per_unit)
            least = math.ceil(min_channels / g.per_unit)
            out[g.key] = sorted({alloc.round_keep(k, n, multiple=step, min_channels=least) for k in range(n + 1)},
                                reverse=True)
        return out

    def prune_units(self, counts: dict[str, int]) -> nn.Module:
        """A new model keeping the `counts[key]` most important units of the named groups (the
        others whole): the width steps of the latency table and of the cost-ordered search."""
        keep = {}
        for g in self.groups:
            if g.key not in counts:
                continue
            score = torch.stack([self.scores[g.key][u].sum() for u in g.units])
            kept = alloc.keep_indices({g.key: score}, {g.key: counts[g.key]})[g.key]
            keep[g.key] = sorted(i for u in kept for i in g.units[u])
        return self._prune_to(keep)

    def _prune_to(self, keep: dict[str, list[int]]) -> nn.Module:
        widths = {g.key: g.width for g in self.groups}
        removals = {k: sorted(set(range(widths[k])) - set(idx)) for k, idx in keep.items()}
        return prune_copy(self.model, self.example_input, removals)

    def widths(self, model: nn.Module | None = None) -> dict[str, int]:
        """Output channels of every conv / Linear of `model` (default: the plan's unpruned model)."""
        model = self.model if model is None else model
        return {n: int(m.weight.shape[0]) for n, m in model.named_modules() if is_scorable(m)}


def _survey(model: nn.Module, example: torch.Tensor, ignored: Iterable) -> tuple[list[PrunableGroup], list[dict]]:
    """Groups and the ones Torch-Pruning cannot map. A model that runs but that Torch-Pruning
    cannot trace is left whole (reported), not an error; one that does not run is the user's."""
    run_model(model, [example])
    unprunable: list[dict] = []
    try:
        graph = build_graph(model, example)
    except UserError as exc:
        return [], [{"layers": [], "reason": f"Torch-Pruning {exc.cause}"}]
    return find_groups(model, example, ignored=ignored, graph=graph, unprunable=unprunable), unprunable


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
