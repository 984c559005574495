"""What a group can lose together: channel units from Torch-Pruning's own index maps.

A *unit* is a set of a group's root channels that must go together. Most groups have one channel
per unit. Two things tie channels (both read off the full Torch-Pruning group, no graph walking):

- a member layer whose own channel appears at several root positions: GhostNet's primary conv
  feeds the concat directly AND through the depthwise cheap op, so its channel i sits at root
  positions i and i + init; removing one without the other empties the layer;
- a member with channel groups (grouped conv, GroupNorm, the qkv Linear of multi-head attention,
  nn.MultiheadAttention): Torch-Pruning's pruners remove the same positions in every group
  (ConvPruner keeps `idxs[:len // groups]` of a grouped conv's input), so position j of every
  group is one unit -- "equal counts per group", as BasePruner does with `ch_groups`.

Attention is pruned by head dimension (Torch-Pruning's default `prune_head_dims`): a qkv Linear of
width 3 * heads * head_dim has 3 * heads channel groups, so a unit is one position of the head
dimension in q, k and v of every head; `num_heads` stays and `head_dim` is updated after pruning
(`sync_attention`), as Torch-Pruning's timm example does by hand.
"""
from __future__ import annotations

from collections import defaultdict

from torch import nn

from edgecompress.pruning.importance import is_scorable


def attention_heads(model: nn.Module) -> dict[nn.Module, int]:
    """qkv Linear -> number of heads, for attention modules written like timm's (an int
    `num_heads` and a `qkv` Linear of three times the attention width)."""
    out = {}
    for m in model.modules():
        qkv, heads = getattr(m, "qkv", None), getattr(m, "num_heads", None)
        if isinstance(qkv, nn.Linear) and isinstance(heads, int) and heads > 0 and qkv.out_features % (3 * heads) == 0:
            out[qkv] = heads
    return out


def sync_attention(model: nn.Module) -> None:
    """After head-dim pruning: a forward that reshapes by `self.head_dim` reads the new width."""
    for m in model.modules():
        qkv, heads = getattr(m, "qkv", None), getattr(m, "num_heads", None)
        if (isinstance(qkv, nn.Linear) and isinstance(heads, int) and heads > 0
                and isinstance(getattr(m, "head_dim", None), int)):
            m.head_dim = qkv.out_features // (3 * heads)


def channel_groups(graph, module: nn.Module, out: bool, heads: dict) -> int:
    """Channel groups of `module`'s output (out) or input side that pruning must keep equal."""
    if isinstance(module, nn.MultiheadAttention):
        return module.num_heads   # its pruner asserts embed_dim % num_heads == 0
    if out and module in heads:
        return 3 * heads[module]
    if isinstance(module, nn.modules.conv._ConvNd) and module.groups == module.in_channels:
        return 1                  # depthwise: in and out are tied one to one, not grouped
    pruner = graph.get_pruner_of_module(module)
    if pruner is None:
        return 1
    return int(pruner.get_out_channel_groups(module) if out else pruner.get_in_channel_groups(module)) or 1


class _Union:
    def __init__(self) -> None:
        self.parent: dict = {}

    def find(self, i):
        self.parent.setdefault(i, i)
        while self.parent[i] != i:
            self.parent[i] = self.parent[self.parent[i]]
            i = self.parent[i]
        return i

    def join(self, a, b) -> None:
        self.parent[self.find(b)] = self.find(a)


def channel_units(tp_group, graph, names: dict, width: int, heads: dict) -> tuple[list[list[int]], int, str | None]:
    """(units as sorted root-channel lists, the fewest channels any member layer keeps per unit,
    None) -- or ([], 0, reason) when Torch-Pruning's index map is inconsistent (it maps YOLO C2f's
    `chunk` + residual to channels beyond the layer's width, which crashes plain Torch-Pruning too).

    Nodes are root channels and (layer, side, own channel); a layer's own channel is one node
    whichever path reached it. Torch-Pruning records one root mapping per layer, so a conv and its
    BatchNorm reached by two paths (Ghost: the concat and the depthwise cheap op) carry different
    root channels for the same own channel: the out-to-out dependency between them joins them."""
    from torch_pruning import ops
    same_index = {ops.OPTYPE.ELEMENTWISE, ops.OPTYPE.BN, ops.OPTYPE.LN, ops.OPTYPE.GN, ops.OPTYPE.IN,
                  ops.OPTYPE.PRELU, ops.OPTYPE.DEPTHWISE_CONV}   # channel i in is channel i out
    union, per_member = _Union(), {}
    for item in tp_group:
        dep = item.dep
        target, module, handler = dep.target, dep.target.module, dep.handler
        out = graph.is_out_channel_pruning_fn(handler)
        side = "out" if out else "in"
        pairs = [(int(i), int(r)) for i, r in zip(item.idxs, item.root_idxs)]
        if module in names and (out or graph.is_in_channel_pruning_fn(handler)):
            own_width = graph.get_out_channels(module) if out else graph.get_in_channels(module)
            bad = [i for i, r in pairs if own_width is not None and not 0 <= i < own_width or not 0 <= r < width]
            if bad:
                return [], 0, (f"Torch-Pruning maps channel {bad[0]} onto {names[module]} ({own_width} channels "
                               "wide): its index map through split / chunk is inconsistent here")
            groups = channel_groups(graph, module, out, heads) if own_width else 1
            if own_width and own_width % groups:
                return [], 0, f"{names[module]} has {own_width} channels in {groups} groups"
            size = own_width // groups if own_width else None
            if out and is_scorable(module):
                per_member[names[module]] = len({own for own, _ in pairs})
        else:
            size = None   # tracing ops (concat, split, reshape) and unwrapped parameters: own index as is
        chained = out and target.type in same_index and graph.is_out_channel_pruning_fn(dep.trigger)
        for own, root in pairs:
            node = (target, side, own % size if size else own)
            union.join(("root", root), node)
            if chained:   # Torch-Pruning may record another root for the same channel upstream
                union.join(node, (dep.source, "out", own))
    units = defaultdict(list)
    for i in range(width):
        units[union.find(("root", i))].append(i)
    ordered = sorted(units.values(), key=lambda u: u[0])
    per_unit = min((n // len(ordered) for n in per_member.values()), default=1)
    return ordered, max(per_unit, 1), None


def widths_of(model: nn.Module) -> dict[str, int]:
    """Output channels of every conv / linear layer (what latency depends on)."""
    return {n: int(m.weight.shape[0]) for n, m in model.named_modules()
            if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear))}
