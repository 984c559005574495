"""Channel criteria: name -> fn(model, groups, batches, **opts) -> {group key: channel scores}.

"permutation" is ours (the default); the rest wrap Torch-Pruning's importances so the benchmark
of criteria compares like with like through the same groups, allocation and physical pruning.
"""
from __future__ import annotations

import copy
import inspect
from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import nn

from edgecompress.errors import UserError
from edgecompress.pruning.groups import PrunableGroup, group_scores, tp_groups
from edgecompress.pruning.importance import channel_importance, iter_inputs
from edgecompress.registry import Registry

CRITERIA: Registry = Registry("criterion")


def _first_input(batches: list) -> torch.Tensor:
    first = next(iter_inputs(batches), None)
    if first is None:
        raise UserError("no calibration batches were given", "give at least one batch of inputs")
    return first[:1]


GROUP_REDUCTIONS = ("share", "sum")
DEFAULT_CRITERION = "permutation"   # with group="share": the thesis' per-layer contribution rates (Eq. 4-3)


def parse_spec(spec: str) -> tuple[str, dict]:
    """`name` or `name:key=value,key=value` (e.g. `permutation:group=share`) -> (registry name,
    options); integers are converted. Unknown names and options are user errors."""
    name, _, rest = spec.partition(":")
    fn = CRITERIA.get(name)
    allowed = [p for p in inspect.signature(fn).parameters.values()
               if p.kind == p.KEYWORD_ONLY and not p.name.startswith("_")]
    opts = {}
    for item in filter(None, rest.split(",")):
        key, sep, value = item.partition("=")
        if not sep or key not in {p.name for p in allowed}:
            raise UserError(f"criterion {name!r} has no option {item!r}",
                            f"options: {', '.join(f'{p.name}=' for p in allowed) or 'none'}")
        opts[key] = int(value) if value.lstrip("-").isdigit() else value
    return name, opts


@CRITERIA.register("permutation")
def permutation(model: nn.Module, groups: list[PrunableGroup], batches: Iterable, *, mode: str = "expected",
                at: str | None = None, draws: int = 8, seed: int = 0, group: str = "share") -> dict[str, torch.Tensor]:
    """Weight-permutation importance (one pass), summed over each group's member layers.

    group="share" (default) first divides each member's scores by their total -- the thesis'
    contribution rate P_i = D_i / sum(D) per layer (Eq. 4-3) -- and then adds them, so every
    coupled layer weighs the same: a raw deviation is in units of its layer's output scale, which
    BatchNorm makes arbitrary, and in ResNet-56's first residual group the stem alone carries 71 %
    of the raw sum and dictates the group's keep count. group="sum" adds the raw deviations."""
    if group not in GROUP_REDUCTIONS:
        raise UserError(f"unknown group reduction {group!r} for the permutation criterion",
                        f"use one of: {', '.join(GROUP_REDUCTIONS)}")
    opts = {} if at is None else {"at": at}   # None: channel_importance's measured default
    scores = channel_importance(model, batches, mode=mode, draws=draws, seed=seed, **opts)
    if group == "share":
        scores = {k: v / v.sum() if v.sum() > 0 else v for k, v in scores.items()}
    return group_scores(groups, scores)


def _tp_scores(model: nn.Module, groups: list[PrunableGroup], batches: list, importance,
               fallback=None) -> dict[str, torch.Tensor]:
    out = {}
    for g, tg in zip(groups, tp_groups(model, groups, _first_input(batches))):
        score = importance(tg)
        if score is None and fallback is not None:
            score = fallback(tg)
        if score is None:
            score = torch.ones(g.width)   # nothing to measure: every channel counts the same
        out[g.key] = score.detach().to(torch.float64).cpu()
    return out


def _magnitude(p: int):
    import torch_pruning as tp
    return tp.importance.GroupMagnitudeImportance(p=p, group_reduction="sum", normalizer=None)


@CRITERIA.register("l1")
def l1(model: nn.Module, groups: list[PrunableGroup], batches: Iterable, **_: object) -> dict[str, torch.Tensor]:
    """Sum of |w| over every weight slice the group removes (Torch-Pruning, Li et al. 2017)."""
    return _tp_scores(model, groups, list(batches), _magnitude(1))


@CRITERIA.register("l2")
def l2(model: nn.Module, groups: list[PrunableGroup], batches: Iterable, **_: object) -> dict[str, torch.Tensor]:
    return _tp_scores(model, groups, list(batches), _magnitude(2))


@CRITERIA.register("bn_scale")
def bn_scale(model: nn.Module, groups: list[PrunableGroup], batches: Iterable, **_: object) -> dict[str, torch.Tensor]:
    """|gamma| of the group's BatchNorms (network slimming); groups without BN fall back to L1."""
    import torch_pruning as tp
    imp = tp.importance.BNScaleImportance(group_reduction="sum", normalizer=None)
    return _tp_scores(model, groups, list(batches), imp, fallback=_magnitude(1))


@CRITERIA.register("taylor")
def taylor(model: nn.Module, groups: list[PrunableGroup], batches: Iterable, **_: object) -> dict[str, torch.Tensor]:
    """|w * dL/dw| summed over the group (Molchanov et al. 2019). The loss is cross-entropy on the
    batches' labels, or on the model's own predictions when the batches carry no labels.
    Gradients are taken on a copy: the user's model and its .grad stay untouched."""
    import torch_pruning as tp
    batches = list(batches)
    work = copy.deepcopy(model).eval()
    work.zero_grad(set_to_none=True)
    device = next((p.device for p in work.parameters()), torch.device("cpu"))
    for item in batches:
        x = (item[0] if isinstance(item, (tuple, list)) else item).to(device)
        logits = work(x)
        labels = item[1].to(device) if isinstance(item, (tuple, list)) and len(item) > 1 else logits.argmax(1)
        F.cross_entropy(logits, labels).backward()
    imp = tp.importance.GroupTaylorImportance(group_reduction="sum", normalizer=None)
    return _tp_scores(work, groups, batches, imp)


@CRITERIA.register("random")
def random(model: nn.Module, groups: list[PrunableGroup], batches: Iterable, *, seed: int = 0,
           **_: object) -> dict[str, torch.Tensor]:
    """A seeded random score per channel: the floor every criterion must beat."""
    gen = torch.Generator().manual_seed(int(seed))
    return {g.key: torch.rand(g.width, generator=gen, dtype=torch.float64) for g in groups}
