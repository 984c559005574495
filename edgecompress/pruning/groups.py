"""Coupled channels from Torch-Pruning's dependency graph, and physical removal through it.

A group is what Torch-Pruning removes together: the root layer's output channels, the BatchNorm
after it, the consumers' input channels, every other layer tied to it by a residual add or a
depthwise convolution, and concatenation offsets (DenseNet) mapped by Torch-Pruning itself.
Channels a group must lose together (grouped convs, Ghost modules, attention heads) are its
`units` (structure.py).
"""
from __future__ import annotations

import copy
from collections.abc import Iterable
from dataclasses import dataclass, field

import torch
from torch import nn

from edgecompress.errors import UserError
from edgecompress.pruning.importance import final_layer, is_scorable
from edgecompress.pruning.structure import attention_heads, channel_units, sync_attention


@dataclass
class PrunableGroup:
    """One Torch-Pruning group: channels removed together."""

    key: str            # qualified name of the module whose out-channels define the group
    members: list[str]  # conv / linear layers whose OUTPUT channels belong to the group
    width: int          # channels of the root layer
    # member -> (member's own channel index, root channel index) pairs: a member may cover the
    # root's channels at other positions (concatenation offsets), so scores are mapped, not zipped
    index_map: dict[str, list[tuple[int, int]]] = field(default_factory=dict, repr=False)
    # root channels removed together (structure.py); default: one unit per channel
    units: list[list[int]] = field(default_factory=list, repr=False)
    per_unit: int = 1   # fewest channels a member layer keeps per unit (for channel-multiple rounding)

    def __post_init__(self) -> None:
        if not self.units:
            self.units = [[i] for i in range(self.width)]


def _tp():
    import torch_pruning as tp   # a hard dependency, but heavy to import: only when pruning
    return tp


def build_graph(model: nn.Module, example_input: torch.Tensor):
    """Trace `model` once on `example_input` into a Torch-Pruning DependencyGraph."""
    was_training = model.training
    model.eval()
    try:
        return _tp().DependencyGraph().build_dependency(model, example_inputs=example_input)
    except (RuntimeError, ValueError, IndexError, TypeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(f"could not trace the model on an input of shape {tuple(example_input.shape)}: {first}",
                        "give calibration batches shaped like the model's input (N, C, H, W)") from exc
    finally:
        model.train(was_training)


def resolve_ignored(model: nn.Module, ignored: Iterable, example_input: torch.Tensor) -> list[nn.Module]:
    """Modules whose output channels stay: the final classifier plus the user's `ignored` (names
    or modules)."""
    by_name = dict(model.named_modules())
    out = []
    for item in ignored:
        if isinstance(item, nn.Module):
            out.append(item)
        elif item in by_name:
            out.append(by_name[item])
        else:
            raise UserError(f"ignored layer {item!r} is not a module of the model",
                            "give qualified names as in model.named_modules(), e.g. 'layer1.0.conv1'")
    last = final_layer(model, example_input)
    if last is not None:
        out.append(by_name[last])
    return out


def find_groups(model: nn.Module, example_input: torch.Tensor, *, ignored: Iterable = (), graph=None,
                unprunable: list | None = None) -> list[PrunableGroup]:
    """Every prunable group, rooted at Conv / Linear layers, the final classifier's outputs kept.

    Groups whose Torch-Pruning index map is inconsistent are left out and, when `unprunable` is
    given, described there as {"layers": [...], "reason": "..."}. May return no group at all."""
    graph = graph or build_graph(model, example_input)
    names = {m: n for n, m in model.named_modules()}
    skip = resolve_ignored(model, ignored, example_input)
    heads = attention_heads(model)
    roots = [nn.modules.conv._ConvNd, nn.Linear]
    groups = []
    for tp_group in graph.get_all_groups(ignored_layers=skip, root_module_types=roots):
        group, reason = _describe(tp_group, graph, names, heads)
        if reason is not None and unprunable is not None:
            unprunable.append({"layers": group.members or [group.key], "reason": reason})
        elif reason is None and group.members:
            groups.append(group)
    return groups


def _describe(group, graph, names: dict, heads: dict) -> tuple[PrunableGroup, str | None]:
    root = group[0].dep.target.module
    index_map: dict[str, list[tuple[int, int]]] = {}
    for item in group:
        module = item.dep.target.module
        if is_scorable(module) and graph.is_out_channel_pruning_fn(item.dep.handler):
            pairs = index_map.setdefault(names[module], [])
            pairs += [(int(i), int(r)) for i, r in zip(item.idxs, item.root_idxs)]
    width = int(graph.get_out_channels(root))
    units, per_unit, reason = channel_units(group, graph, names, width, heads)
    return PrunableGroup(key=names[root], members=list(index_map), width=width, index_map=index_map,
                         units=units, per_unit=per_unit), reason


def group_scores(groups: list[PrunableGroup], layer_scores: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A group's channel score: the sum of its member layers' scores for that channel."""
    out = {}
    for g in groups:
        total = torch.zeros(g.width, dtype=torch.float64)
        for member, pairs in g.index_map.items():
            if member not in layer_scores:
                continue
            own = torch.tensor([p[0] for p in pairs])
            root = torch.tensor([p[1] for p in pairs])
            total.index_add_(0, root, layer_scores[member].to(torch.float64)[own])
        out[g.key] = total
    return out


def tp_groups(model: nn.Module, groups: list[PrunableGroup], example_input: torch.Tensor) -> list:
    """The Torch-Pruning Group (all channels) of each PrunableGroup, for Torch-Pruning importances."""
    graph = build_graph(model, example_input)
    modules = dict(model.named_modules())
    out = []
    for g in groups:
        root = modules[g.key]
        pruner = graph.get_pruner_of_module(root)
        out.append(graph.get_pruning_group(root, pruner.prune_out_channels, list(range(g.width))))
    return out


def prune_copy(model: nn.Module, example_input: torch.Tensor, removals: dict[str, list[int]]) -> nn.Module:
    """A deep copy of `model` with, for each group key, the listed root channels removed.

    Index lists are in each root's own channel numbering, which pruning other groups never
    shifts; concatenation offsets are recomputed by Torch-Pruning at each get_pruning_group."""
    pruned = copy.deepcopy(model)
    graph = build_graph(pruned, example_input)
    modules = dict(pruned.named_modules())
    for key, idxs in removals.items():
        if not idxs:
            continue
        root = modules[key]
        pruner = graph.get_pruner_of_module(root)
        graph.get_pruning_group(root, pruner.prune_out_channels, idxs=sorted({int(i) for i in idxs})).prune()
    sync_attention(pruned)
    return pruned
