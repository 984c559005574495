"""ThiNet (Luo, Wu & Lin 2017) as a channel criterion: greedy selection on the next layer's input.

For a pruning group, the layers that READ its channels (the consumers: the next convs, the
classifier) decide what a channel is worth. At m sampled output positions i of each consumer,
x̂_ij is the part of that output contributed by input channel j, so the output is Σ_j x̂_ij (+ bias).
Removing a set T of channels changes the outputs by Σ_{j∈T} x̂_ij; ThiNet removes, one at a time,
the channel that adds least to Σ_i (Σ_{j∈T} x̂_ij)². The order of removal becomes the score: a
channel removed later is more important (see `removal_scores`).

`group_consumers` (which consumer input channels carry which group channel, from Torch-Pruning's
dependency graph) is shared with CURL and AutoPruner, which mask or gate exactly those inputs:
zeroing a group channel at every consumer is what removing it does.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from edgecompress.errors import UserError


@dataclass
class Consumer:
    """A conv/linear layer reading a group's channels: its input channel `layer_idx[k]` carries
    group channel `root_idx[k]` (several input features per channel after a flatten)."""

    name: str
    module: nn.Module
    layer_idx: torch.Tensor
    root_idx: torch.Tensor


def as_input(batch) -> torch.Tensor:
    """Calibration batches may be tensors, numpy arrays or (inputs, labels) pairs."""
    if isinstance(batch, (tuple, list)):
        batch = batch[0]
    return torch.as_tensor(batch).float()


def group_consumers(model: nn.Module, groups: Sequence, example: torch.Tensor) -> dict[str, list[Consumer]]:
    """For each group (objects with `.key` and `.width`), the layers whose input channels it prunes."""
    import torch_pruning as tp

    names = {m: n for n, m in model.named_modules()}
    graph = tp.DependencyGraph().build_dependency(model, example_inputs=example[:1])
    out: dict[str, list[Consumer]] = {}
    for g in groups:
        root = model.get_submodule(g.key)
        fn = tp.prune_linear_out_channels if isinstance(root, nn.Linear) else tp.prune_conv_out_channels
        group = graph.get_pruning_group(root, fn, idxs=list(range(g.width)))
        out[g.key] = [Consumer(names[item.dep.target.module], item.dep.target.module,
                               torch.as_tensor(list(item.idxs), dtype=torch.long),
                               torch.as_tensor(list(item.root_idxs), dtype=torch.long))
                      for item in group
                      if graph.is_in_channel_pruning_fn(item.dep.handler)
                      and isinstance(item.dep.target.module, (nn.Conv2d, nn.Linear))]
    return out


def _padding(conv: nn.Conv2d) -> tuple[int, int, int, int]:
    """(left, right, top, bottom) as F.pad wants it; 'same' pads the extra pixel right/bottom."""
    if isinstance(conv.padding, str):
        if conv.padding == "valid":
            return (0, 0, 0, 0)
        th, tw = (d * (k - 1) for d, k in zip(conv.dilation, conv.kernel_size))
        return (tw // 2, tw - tw // 2, th // 2, th - th // 2)
    ph, pw = conv.padding
    return (pw, pw, ph, ph)


def conv_contributions(conv: nn.Conv2d, x: torch.Tensor, n: torch.Tensor, c: torch.Tensor,
                       h: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """x̂ [m, in_channels]: input channel j's part of conv(x)[n, c, h, w] (bias excluded).

    Gathers only the sampled receptive fields instead of unfolding whole feature maps."""
    if conv.padding_mode != "zeros":
        raise UserError(f"ThiNet supports zero-padded convolutions only, got {conv.padding_mode!r}",
                        "choose another --criterion for this model")
    xp = F.pad(x, _padding(conv))
    (kh, kw), (sh, sw), (dh, dw) = conv.kernel_size, conv.stride, conv.dilation
    cpg = conv.in_channels // conv.groups
    # Grouped convs: output c reads only the input channels of its own group.
    chans = (c // (conv.out_channels // conv.groups))[:, None] * cpg + torch.arange(cpg)
    patch = torch.stack([xp[n[:, None], chans, (h * sh + a * dh)[:, None], (w * sw + b * dw)[:, None]]
                         for a in range(kh) for b in range(kw)], dim=-1)         # [m, cpg, K]
    part = (patch * conv.weight[c].reshape(len(c), cpg, kh * kw)).sum(-1)
    return torch.zeros(len(c), conv.in_channels, dtype=part.dtype).scatter_(1, chans, part)


def linear_contributions(fc: nn.Linear, x: torch.Tensor, n: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """x̂ [m, in_features] for outputs fc(x)[n, c], bias excluded."""
    return x.reshape(-1, fc.in_features)[n] * fc.weight[c]


def sample_positions(out_shape: Sequence[int], count: int, gen: torch.Generator) -> tuple[torch.Tensor, ...]:
    """`count` uniformly drawn output positions (n, c[, h, w]) of a layer output of `out_shape`."""
    return tuple(torch.randint(0, s, (count,), generator=gen) for s in out_shape)


def contributions(module: nn.Module, x: torch.Tensor, pos: tuple[torch.Tensor, ...]) -> torch.Tensor:
    if isinstance(module, nn.Linear):
        return linear_contributions(module, x, pos[0], pos[1])
    return conv_contributions(module, x, *pos)


def greedy_removal(xhat: torch.Tensor) -> tuple[list[int], list[float]]:
    """ThiNet's greedy order over all channels of xhat [m, channels], and each step's increment
    of Σ_i(Σ_{j∈T} x̂_ij)². One matrix-vector product per step: adding j to T raises the objective
    by 2·sᵀx̂_j + ‖x̂_j‖², with s the current Σ_{j∈T} x̂_j."""
    x = xhat.double()
    s = torch.zeros(x.shape[0], dtype=x.dtype)
    norms = (x * x).sum(0)
    removed = torch.zeros(x.shape[1], dtype=torch.bool)
    order, increments = [], []
    for _ in range(x.shape[1]):
        cost = (2 * (x.T @ s) + norms).masked_fill(removed, float("inf"))
        j = int(torch.argmin(cost))
        order.append(j)
        increments.append(float(cost[j]))
        s += x[:, j]
        removed[j] = True
    return order, increments


def removal_scores(order: Sequence[int], increments: Sequence[float]) -> torch.Tensor:
    """Scores whose descending order is the reverse removal order.

    Score of the k-th removed channel = running max of the (non-negative) increments up to k, so
    Σ of the kept channels' scores ≈ the objective that removing them would add: the cr knob then
    reads as "fraction of the next layers' output energy kept". A small rank term (1e-6 of the
    largest score per step, resolvable in float32) breaks ties so the keep machinery picks exactly
    the greedy keep set."""
    inc = torch.tensor(increments, dtype=torch.float64).clamp(min=0)
    ramp = torch.cummax(inc, 0).values
    tie = torch.arange(1, len(order) + 1, dtype=torch.float64) * (1e-6 * (float(ramp[-1]) + 1e-30))
    scores = torch.empty(len(order), dtype=torch.float64)
    scores[torch.as_tensor(list(order))] = ramp + tie
    return scores


class _Sampler:
    """Forward hooks that keep x̂ at `per_batch` sampled outputs of each consumer layer."""

    def __init__(self, layers: dict[str, nn.Module], per_batch: int, seed: int) -> None:
        self.layers, self.per_batch = layers, per_batch
        self.gen = torch.Generator().manual_seed(seed)
        self.xhat: dict[str, list[torch.Tensor]] = {n: [] for n in layers}

    def hook(self, name: str):
        def fn(module, inputs, output):
            rows = output if output.dim() == 4 else output.reshape(-1, output.shape[-1])
            pos = sample_positions(rows.shape, self.per_batch, self.gen)
            self.xhat[name].append(contributions(module, inputs[0].detach(), pos))
        return fn

    @torch.no_grad()
    def run(self, model: nn.Module, batches: Iterable) -> dict[str, torch.Tensor]:
        handles = [m.register_forward_hook(self.hook(n)) for n, m in self.layers.items()]
        try:
            for b in batches:
                model(as_input(b))
        finally:
            for h in handles:
                h.remove()
        return {n: torch.cat(v) for n, v in self.xhat.items()}


def group_xhat(consumers: list[Consumer], xhat: dict[str, torch.Tensor], width: int,
               normalize: bool = True) -> torch.Tensor:
    """x̂ over the group's channels [Σ m, width], rows of all consumers stacked.

    With `normalize`, each consumer's rows are divided by its RMS output so every reading layer
    counts equally (the residual stream's consumers differ in scale by orders of magnitude)."""
    rows = []
    for cons in consumers:
        full = xhat[cons.name]
        part = torch.zeros(full.shape[0], width, dtype=full.dtype)
        part.index_add_(1, cons.root_idx, full[:, cons.layer_idx])
        if normalize:
            part = part / full.sum(1).pow(2).mean().sqrt().clamp(min=1e-12)
        rows.append(part)
    return torch.cat(rows)


def thinet_scores(model: nn.Module, groups: Sequence, batches: Sequence, *, samples: int = 1024,
                  normalize: bool = True, seed: int = 0, **_: object) -> dict[str, torch.Tensor]:
    """ThiNet scores for every group: `samples` sampled outputs per consumer layer, spread over
    the calibration batches. Options meant for other criteria are ignored (CRITERIA contract)."""
    batches = list(batches)
    if not batches:
        raise UserError("ThiNet needs calibration batches", "give the data the model was trained on")
    was_training = model.training
    model.eval()
    try:
        cons = group_consumers(model, groups, as_input(batches[0]))
        layers = {c.name: c.module for cl in cons.values() for c in cl}
        per_batch = max(1, -(-samples // len(batches)))
        xhat = _Sampler(layers, per_batch, seed).run(model, batches)
    finally:
        model.train(was_training)
    scores = {}
    for g in groups:
        if not cons[g.key]:  # nothing reads these channels (should not happen): keep order neutral
            scores[g.key] = torch.ones(g.width, dtype=torch.float64)
            continue
        scores[g.key] = removal_scores(*greedy_removal(group_xhat(cons[g.key], xhat, g.width, normalize)))
    return scores


def _register() -> None:
    from edgecompress.pruning.criteria import CRITERIA
    if "thinet" not in CRITERIA:
        CRITERIA.add("thinet", thinet_scores)


_register()
