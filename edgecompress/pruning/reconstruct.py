"""Least-squares reconstruction after pruning (ThiNet's second step), usable after any criterion.

For every layer whose input channels were pruned, ThiNet rescales the kept input channels so the
layer's output at sampled positions matches the ORIGINAL model's output there:
    w = argmin_w ‖y − X̂ w‖²  (= (X̂ᵀX̂)⁻¹X̂ᵀy),   W[:, j] ← w_j · W[:, j]
where y is the original layer's output (bias excluded) and X̂_ij the contribution of kept channel j
in the pruned model. X̂ is taken from the pruned model's own activations, layer after layer in
forward order (one forward: each layer is fitted when it runs and passes on its corrected
output), so each fit also absorbs the error left by the layers before it. w = 1 is the
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
import torch.nn.functional as F
from torch import nn

from edgecompress.errors import UserError
from edgecompress.pruning.thinet import as_input, contributions, sample_positions


@dataclass
class LayerFit:
    """Squared reconstruction error on the sampled positions before/after, the scales found, and
    the sampled output positions (n, c[, h, w]) in the pruned layer's output space, n indexing the
    calibration images concatenated in order."""

    before: float
    after: float
    scales: torch.Tensor
    positions: tuple[torch.Tensor, ...]


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
def _targets(original: nn.Module, layers: dict[str, torch.Tensor], x: torch.Tensor, samples: int,
             seed: int) -> dict[str, tuple]:
    """One pass of the original model: for every layer, `samples` positions (in the PRUNED
    layer's output space) and the original outputs there, bias excluded."""
    found: dict[str, tuple] = {}
    gens = {n: torch.Generator().manual_seed(seed + k) for k, n in enumerate(layers)}

    def hook(name):
        def fn(module, inputs, output):
            if name in found:      # a module called twice per forward is fitted at its first call
                return
            out = _flat(output)
            pos = sample_positions((out.shape[0], len(layers[name]), *out.shape[2:]), samples, gens[name])
            orig_c = layers[name][pos[1]]
            y = out[(pos[0], orig_c, *pos[2:])]
            found[name] = (pos, y if module.bias is None else y - module.bias[orig_c])
        return fn

    mods = dict(original.named_modules())
    handles = [mods[n].register_forward_hook(hook(n)) for n in layers]
    try:
        original(x)
    finally:
        for h in handles:
            h.remove()
    return found


def _solve(module: nn.Module, inp: torch.Tensor, pos: tuple, y: torch.Tensor) -> LayerFit:
    """Least squares on the layer's sampled contributions; the scales are folded into the weights."""
    x = contributions(module, inp, pos).double()
    y = y.double()
    w = torch.linalg.lstsq(x, y[:, None], driver="gelsd").solution[:, 0]
    before = float(((y - x.sum(1)) ** 2).sum())
    after = float(((y - x @ w) ** 2).sum())
    if not torch.isfinite(w).all() or after > before:  # rank-deficient corner: keep the layer
        w, after = torch.ones_like(w), before
    module.weight.mul_(w.to(module.weight.dtype).reshape((1, -1) + (1,) * (module.weight.dim() - 2)))
    return LayerFit(before, after, w.float(), pos)


@torch.no_grad()
def _fit_all(model: nn.Module, targets: dict[str, tuple], x: torch.Tensor) -> dict[str, LayerFit]:
    """One forward of the pruned model: each layer, when it runs, is fitted and its output
    recomputed with the new weights, so every later layer is fitted on corrected activations."""
    fits: dict[str, LayerFit] = {}

    def hook(name):
        def fn(module, inputs, output):
            if name in fits:
                return None
            fits[name] = _solve(module, inputs[0], *targets[name])
            if isinstance(module, nn.Linear):
                return F.linear(inputs[0], module.weight, module.bias)
            return module._conv_forward(inputs[0], module.weight, module.bias)
        return fn

    mods = dict(model.named_modules())
    handles = [mods[n].register_forward_hook(hook(n)) for n in targets]
    try:
        model(x)
    finally:
        for h in handles:
            h.remove()
    return fits


def reconstruct(pruned_model: nn.Module, original_model: nn.Module, batches: Iterable, *,
                samples: int = 2048, seed: int = 0) -> dict[str, LayerFit]:
    """Rescale, in place, the input channels of every layer of `pruned_model` whose inputs were
    pruned so its outputs match `original_model`'s at `samples` sampled positions per layer.
    Returns each layer's fit, in call order. The original model is only read.

    The batches are run as ONE batch (two forwards in all: original, then pruned with the fits
    made on the fly), so give a few hundred images, not a data set."""
    xs = [as_input(b) for b in batches]
    if not xs:
        raise UserError("reconstruction needs calibration batches", "give calibration data")
    x = torch.cat(xs)
    modes = pruned_model.training, original_model.training
    pruned_model.eval(), original_model.eval()
    try:
        layers = reconstructable_layers(pruned_model, original_model)
        return _fit_all(pruned_model, _targets(original_model, layers, x, samples, seed), x)
    finally:
        pruned_model.train(modes[0]), original_model.train(modes[1])
