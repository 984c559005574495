"""CURL (Luo & Wu 2020) as a channel criterion: KL divergence at the network output.

A group channel's score is the mean over calibration images of KL(p ‖ p₋ⱼ), p the network's
softmax output and p₋ⱼ the output with channel j removed. Removal is simulated exactly as
physical pruning acts: the channel is zeroed at the input of every layer that reads it (the
group's consumers), so a residual channel is removed jointly from all the blocks sharing it.

Batched: each forward carries `chunk // images` masked copies of the image batch stacked along
the batch dimension, copy k with channel j_k zeroed, so a group of width w costs ⌈w·images/chunk⌉
forwards instead of w·images. BatchNorm runs in eval mode, so the copies do not interact.

`mixup` is the data side of CURL's distillation with few images: the student and the teacher see
the same convex mix of two images, and the student matches the teacher's output on it.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from edgecompress.errors import UserError
from edgecompress.pruning.thinet import Consumer, as_input, group_consumers


def mixup_pairs(x: torch.Tensor, alpha: float, *, generator: torch.Generator | None = None
                ) -> tuple[torch.Tensor, float, torch.Tensor]:
    """(λ·x + (1−λ)·x[perm], λ, perm), λ ~ Beta(α, α) per batch (Zhang et al. 2018): a hard-label
    loss on the mix is λ·CE(y) + (1−λ)·CE(y[perm]). α <= 0: no mixing (λ = 1, identity perm)."""
    if alpha <= 0:
        return x, 1.0, torch.arange(x.shape[0])
    import numpy as np

    # torch has no seeded Beta sampler; numpy's is seeded from torch's RNG (or `generator`), so
    # torch.manual_seed still makes a run repeatable.
    seed = int(torch.randint(0, 2**62, (1,), generator=generator))
    lam = float(np.random.default_rng(seed).beta(alpha, alpha))
    perm = torch.randperm(x.shape[0], generator=generator)
    return lam * x + (1 - lam) * x[perm], lam, perm


def mixup(x: torch.Tensor, alpha: float, *, generator: torch.Generator | None = None) -> torch.Tensor:
    """x mixed with a shuffled copy of itself. For distillation no labels are needed: the
    teacher's output on the mixed batch is the student's target (CURL's small-data recipe)."""
    return mixup_pairs(x, alpha, generator=generator)[0]


def _mask_hook(mask: torch.Tensor):
    """Multiply a consumer's input by `mask` [batch, channels] (broadcast over H, W)."""
    def fn(module, inputs):
        x = inputs[0]
        m = mask.reshape(mask.shape + (1,) * (x.dim() - 2)) if x.dim() > 2 else mask
        return (x * m.to(x.dtype),) + tuple(inputs[1:])
    return fn


def _consumer_mask(cons: Consumer, channels: torch.Tensor, images: int) -> torch.Tensor:
    """Mask [len(channels)·images, in_channels]: copy k zeroes the inputs carrying channels[k]."""
    n_in = cons.module.weight.shape[1] * getattr(cons.module, "groups", 1)
    mask = torch.ones(len(channels), n_in)
    hit = cons.root_idx[None, :] == channels[:, None]                        # [k, pairs]
    rows, pairs = hit.nonzero(as_tuple=True)
    mask[rows, cons.layer_idx[pairs]] = 0
    return mask.repeat_interleave(images, dim=0)


@torch.no_grad()
def channel_kl(model: nn.Module, consumers: list[Consumer], x: torch.Tensor, channels: Sequence[int],
               *, chunk: int = 1024) -> torch.Tensor:
    """Mean over the images x of KL(p ‖ p with channel j zeroed at all consumers), per channel j."""
    # float64 softmax: the KL of a weak channel is ~1e-7, float32 round-off would swamp it
    logp = F.log_softmax(model(x).double(), dim=1)
    per_fwd = max(1, chunk // x.shape[0])
    channels = torch.as_tensor(list(channels), dtype=torch.long)
    out = []
    for start in range(0, len(channels), per_fwd):
        js = channels[start:start + per_fwd]
        handles = [c.module.register_forward_pre_hook(_mask_hook(_consumer_mask(c, js, x.shape[0])))
                   for c in consumers]
        try:
            logq = F.log_softmax(model(x.repeat(len(js), *[1] * (x.dim() - 1))).double(), dim=1)
        finally:
            for h in handles:
                h.remove()
        kl = (logp.exp().repeat(len(js), 1) * (logp.repeat(len(js), 1) - logq)).sum(1)
        out.append(kl.reshape(len(js), x.shape[0]).mean(1).clamp(min=0))
    return torch.cat(out)


def curl_scores(model: nn.Module, groups: Sequence, batches: Sequence, *, images: int = 32,
                chunk: int = 1024, **_: object) -> dict[str, torch.Tensor]:
    """CURL scores for every group from the first `images` calibration images (options meant
    for other criteria are ignored, CRITERIA contract). Cost: Σ group widths × `images` image
    forwards (ResNet-20: 448 × 32), the price of measuring at the network output."""
    xs = [as_input(b) for b in batches]
    if not xs:
        raise UserError("CURL needs calibration batches", "give the data the model was trained on")
    x = torch.cat(xs)[:images]
    was_training = model.training
    model.eval()
    try:
        cons = group_consumers(model, groups, x)
        return {g.key: channel_kl(model, cons[g.key], x, range(g.width), chunk=chunk)
                for g in groups}
    finally:
        model.train(was_training)


def _register() -> None:
    from edgecompress.pruning.criteria import CRITERIA
    if "curl" not in CRITERIA:
        CRITERIA.add("curl", curl_scores)


_register()
