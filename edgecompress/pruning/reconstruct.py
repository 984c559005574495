"""Least-squares reconstruction after pruning (ThiNet's second step), usable after any criterion.

For every layer whose input channels were pruned, ThiNet rescales the kept input channels so the
layer's output at sampled positions matches the ORIGINAL model's output there:
    w = argmin_w ‖y − X̂ w‖²  (= (X̂ᵀX̂)⁻¹X̂ᵀy),   W[:, j] ← w_j · W[:, j]
where y is the original layer's output (bias excluded) and X̂_ij the contribution of kept channel j
in the pruned model. X̂ is taken from the pruned model's own activations, layer after layer in
forward order, so each fit also absorbs the error left by the layers before it. w = 1 is the
unchanged layer, so the fitted error on the sampled positions never exceeds the error before.

Which original channels survive is read off the weights themselves (pruning copies weight slices,
so each pruned kernel is found verbatim in the original): call this right after pruning, before
fine-tuning changes the weights.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Iterable, Sequence

import torch
from torch import nn

from edgecompress.errors import UserError
from edgecompress.pruning.thinet import as_input, contributions, sample_positions


@dataclass
class LayerFit:
    """Squared reconstruction error on the sampled positions before/after, the scales found, and
    the sampled output positions (per batch, in the pruned layer's output space)."""

    before: float
    after: float
    scales: torch.Tensor
    positions: list[tuple[torch.Tensor, ...]]


class _Stop(Exception):
    """Raised by a hook once the layer of interest has run: the rest of the forward is wasted."""


def channel_maps(w_orig: torch.Tensor, w_pruned: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(out_idx, in_idx) with w_orig[out_idx][:, in_idx] == w_pruned, found by looking up every
    pruned kernel (a kh×kw block, or one scalar for 1×1 / linear) among the original ones and
    taking each row's and column's majority vote (repeated values such as 0.0 are outvoted)."""
    o, i = w_orig.shape[:2]
    table: dict[bytes, list[tuple[int, int]]] = {}
    blocks = w_orig.detach().reshape(o, i, -1).contiguous()
    for a in range(o):
        for b in range(i):
            table.setdefault(blocks[a, b].numpy().tobytes(), []).append((a, b))
    pb = w_pruned.detach().reshape(w_pruned.shape[0], w_pruned.shape[1], -1).contiguous()
    votes_out = [Counter() for _ in range(pb.shape[0])]
    votes_in = [Counter() for _ in range(pb.shape[1])]
    for p in range(pb.shape[0]):
        for q in range(pb.shape[1]):
            for a, b in table.get(pb[p, q].numpy().tobytes(), ()):
                votes_out[p][a] += 1
                votes_in[q][b] += 1
    if any(not v for v in votes_out + votes_in):
        raise UserError("the pruned model's weights are not slices of the original's",
                        "reconstruct right after pruning, before fine-tuning")
    out_idx = torch.tensor([v.most_common(1)[0][0] for v in votes_out])
    in_idx = torch.tensor([v.most_common(1)[0][0] for v in votes_in])
    if not torch.equal(w_orig[out_idx][:, in_idx], w_pruned):
        raise UserError("could not match the pruned layer's weights to the original's",
                        "reconstruct right after pruning, before fine-tuning")
    return out_idx, in_idx


def reconstructable_layers(pruned: nn.Module, original: nn.Module) -> dict[str, torch.Tensor]:
    """name -> original output index of each pruned output channel, for every conv (groups=1) and
    linear layer whose input channels were pruned. Depthwise convs are skipped: their input
    channel is their output channel, so rescaling it is the next layer's business."""
    orig = dict(original.named_modules())
    layers = {}
    for name, m in pruned.named_modules():
        o = orig.get(name)
        if not isinstance(m, (nn.Conv2d, nn.Linear)) or type(o) is not type(m):
            continue
        if getattr(m, "groups", 1) != 1 or m.weight.shape[1] == o.weight.shape[1]:
            continue
        layers[name] = channel_maps(o.weight, m.weight)[0]
    return layers


def _flat(output: torch.Tensor) -> torch.Tensor:
    """Conv outputs stay [N, C, H, W]; linear outputs become [rows, features]."""
    return output if output.dim() == 4 else output.reshape(-1, output.shape[-1])


@torch.no_grad()
def _targets(original: nn.Module, layers: dict[str, torch.Tensor], batches: list,
             per_batch: int, seed: int) -> tuple[list[str], dict[str, list[tuple]]]:
    """One pass of the original model: the layers' call order, and for every layer and batch the
    sampled positions (in the PRUNED layer's output space) with the original outputs there,
    bias excluded."""
    found: dict[str, list[tuple]] = {n: [] for n in layers}
    order: list[str] = []
    gens = {n: torch.Generator().manual_seed(seed + k) for k, n in enumerate(layers)}

    def hook(name):
        def fn(module, inputs, output):
            out = _flat(output)
            shape = (out.shape[0], len(layers[name]), *out.shape[2:])
            pos = sample_positions(shape, per_batch, gens[name])
            orig_c = layers[name][pos[1]]
            y = out[(pos[0], orig_c, *pos[2:])]
            found[name].append((pos, y if module.bias is None else y - module.bias[orig_c]))
            if name not in order:
                order.append(name)
        return fn

    mods = dict(original.named_modules())
    handles = [mods[n].register_forward_hook(hook(n)) for n in layers]
    try:
        for b in batches:
            original(as_input(b))
    finally:
        for h in handles:
            h.remove()
    return order, found


@torch.no_grad()
def _fit_layer(model: nn.Module, name: str, batches: list, targets: list[tuple]) -> LayerFit:
    """Collect X̂ of the pruned layer at the target positions, solve, fold the scales in."""
    module = model.get_submodule(name)
    rows: list[torch.Tensor] = []

    def fn(mod, inputs, output):
        rows.append(contributions(mod, inputs[0], targets[len(rows)][0]))
        raise _Stop

    handle = module.register_forward_hook(fn)
    try:
        for b in batches:
            try:
                model(as_input(b))
            except _Stop:
                pass
    finally:
        handle.remove()
    x = torch.cat(rows).double()
    y = torch.cat([t[1] for t in targets]).double()
    w = torch.linalg.lstsq(x, y[:, None], driver="gelsd").solution[:, 0]
    before = float(((y - x.sum(1)) ** 2).sum())
    after = float(((y - x @ w) ** 2).sum())
    if not torch.isfinite(w).all() or after > before:  # rank-deficient corner: keep the layer
        w, after = torch.ones_like(w), before
    shape = (1, -1) + (1,) * (module.weight.dim() - 2)
    module.weight.mul_(w.to(module.weight.dtype).reshape(shape))
    return LayerFit(before, after, w.float(), [t[0] for t in targets])


def reconstruct(pruned_model: nn.Module, original_model: nn.Module, batches: Iterable, *,
                samples: int = 2048, seed: int = 0) -> dict[str, LayerFit]:
    """Rescale, in place, the input channels of every layer of `pruned_model` whose inputs were
    pruned so its outputs match `original_model`'s at `samples` sampled positions per layer.
    Returns each layer's fit. The original model is only read."""
    batches = list(batches)
    if not batches:
        raise UserError("reconstruction needs calibration batches", "give calibration data")
    modes = pruned_model.training, original_model.training
    pruned_model.eval(), original_model.eval()
    try:
        layers = reconstructable_layers(pruned_model, original_model)
        per_batch = max(1, -(-samples // len(batches)))
        order, targets = _targets(original_model, layers, batches, per_batch, seed)
        # In call order, so each fit sees the already corrected layers before it.
        return {n: _fit_layer(pruned_model, n, batches, targets[n]) for n in order}
    finally:
        pruned_model.train(modes[0]), original_model.train(modes[1])
