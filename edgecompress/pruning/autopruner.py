"""AutoPruner (Luo & Wu 2018/2020) as a channel criterion: trained gates read out as scores.

During a short training phase a gate sits on every pruning group: the group's activations, pooled
over the mini-batch (the paper's "mini-batch pooling": one code per batch) and max-pooled to 2×2,
go through an FC layer and a scaled sigmoid v = σ(α·z), and v multiplies the group's channels
where they are read (at every consumer layer's input, which is exactly what removing a channel
does, jointly across a residual stream). The loss is distillation from the ungated network plus
λ·Σ_g (mean v_g − r)², holding each group's kept fraction to the target r. α grows linearly from
`alpha_start` to `alpha_end` over the steps, pushing v to {0, 1}; in the last part of the phase,
while some group still has more than 10 % of its code away from 0/1, α takes an extra 10 steps
per iteration (the rule of the authors' code). The network's own weights are frozen and BatchNorm
stays in eval mode, so removing the hooks restores the model exactly.

Read-out: the code v and the pre-activation z, averaged over the calibration batches. Keep set =
channels with z̄ > 0 (for a binary code that is v > 0.5, up to channels that flip between batches).
Scores = σ(z̄ / std z̄): the keep set scores above 0.5 and the rest below, so the gates' keep set
is exactly the top of the ranking, and the margin orders channels inside and outside it; a
knob other than the training target therefore still gets a graded order (a binary v alone would
tie all kept channels and make `cr` allocation jump from "gate keep set" to "everything").
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from edgecompress.errors import UserError
from edgecompress.pruning.thinet import Consumer, as_input, group_consumers


class GateNet(nn.Module):
    """Pooled group activations -> FC -> pre-activation z (the sigmoid scale lives outside)."""

    def __init__(self, width: int, spatial: bool) -> None:
        super().__init__()
        self.pool = nn.AdaptiveMaxPool2d(2) if spatial else nn.Identity()
        self.fc = nn.Linear(width * (4 if spatial else 1), width)
        nn.init.kaiming_normal_(self.fc.weight, mode="fan_out", nonlinearity="relu")
        nn.init.zeros_(self.fc.bias)

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        z = self.pool(feats.mean(0, keepdim=True)).flatten(1)
        # Activations differ in scale by orders of magnitude between layers; normalising the
        # pooled vector lets one learning rate and one α schedule serve every gate.
        return self.fc(z / z.pow(2).mean().sqrt().clamp(min=1e-12))[0]


def _gather(x: torch.Tensor, cons: Consumer, width: int) -> torch.Tensor:
    """The group's channels out of a consumer's input, [N, width, ...] (averaged if repeated)."""
    feats = torch.zeros(x.shape[0], width, *x.shape[2:], dtype=x.dtype)
    feats = feats.index_add(1, cons.root_idx, x[:, cons.layer_idx])
    count = torch.zeros(width, dtype=x.dtype).index_add(0, cons.root_idx, torch.ones(len(cons.root_idx), dtype=x.dtype))
    return feats / count.clamp(min=1).reshape((1, width) + (1,) * (x.dim() - 2))


class Gates:
    """Gate hooks on a model's consumer layers; `remove()` leaves the model as it was."""

    def __init__(self, model: nn.Module, groups: Sequence, consumers: dict[str, list[Consumer]]) -> None:
        self.model, self.groups, self.consumers = model, list(groups), consumers
        self.nets = nn.ModuleList(GateNet(g.width, any(isinstance(c.module, nn.Conv2d) for c in consumers[g.key][:1]))
                                  for g in self.groups)
        self.alpha, self.enabled = 1.0, True
        self.z: dict[int, torch.Tensor] = {}
        self.handles = [model.register_forward_pre_hook(lambda *_: self.z.clear())]
        for gi, g in enumerate(self.groups):
            for cons in consumers[g.key]:
                self.handles.append(cons.module.register_forward_pre_hook(self._hook(gi, cons)))

    def _hook(self, gi: int, cons: Consumer):
        width = self.groups[gi].width

        def fn(module, inputs):
            if not self.enabled:
                return None
            x = inputs[0]
            if gi not in self.z:  # the first reader of the group in this forward computes the code
                self.z[gi] = self.nets[gi](_gather(x, cons, width))
            v = torch.sigmoid(self.alpha * self.z[gi])
            scale = torch.ones(x.shape[1], dtype=x.dtype).index_put((cons.layer_idx,), v[cons.root_idx])
            return (x * scale.reshape((1, -1) + (1,) * (x.dim() - 2)),) + tuple(inputs[1:])
        return fn

    def codes(self) -> list[torch.Tensor]:
        return [torch.sigmoid(self.alpha * self.z[i]) for i in range(len(self.groups)) if i in self.z]

    def remove(self) -> None:
        for h in self.handles:
            h.remove()
        self.handles = []


@dataclass
class GateResult:
    """Per-group mean code v and mean pre-activation z over the calibration batches; α history."""

    codes: dict[str, torch.Tensor]
    logits: dict[str, torch.Tensor]
    alpha: float
    history: list[dict] = field(default_factory=list)

    def keep_sets(self) -> dict[str, list[int]]:
        return {k: torch.nonzero(z > 0).flatten().tolist() for k, z in self.logits.items()}

    def scores(self) -> dict[str, torch.Tensor]:
        return {k: torch.sigmoid(z / z.std().clamp(min=1e-12)).double() for k, z in self.logits.items()}


def _train_step(gates: Gates, model: nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor,
                target: float, reg: float) -> tuple[float, list[torch.Tensor]]:
    with torch.no_grad():
        gates.enabled = False
        teacher = F.log_softmax(model(x), dim=1)
        gates.enabled = True
    student = F.log_softmax(model(x), dim=1)
    codes = gates.codes()
    loss = F.kl_div(student, teacher, log_target=True, reduction="batchmean")
    loss = loss + reg * sum((v.mean() - target) ** 2 for v in codes)
    opt.zero_grad()
    loss.backward()
    opt.step()
    return float(loss.detach()), [v.detach() for v in codes]


def _alpha_schedule(step: int, steps: int, alpha: float, delta: float, codes: list[torch.Tensor],
                    late: float) -> float:
    """Linear growth, plus 10 extra increments per step late in training while not yet binary."""
    alpha += delta
    if step >= late * steps and any(((v > 0.1) & (v < 0.9)).float().mean() > 0.1 for v in codes):
        alpha += 10 * delta
    return alpha


@torch.no_grad()
def _read_out(gates: Gates, model: nn.Module, xs: list[torch.Tensor]) -> tuple[dict, dict]:
    sums_v: dict[int, torch.Tensor] = {}
    sums_z: dict[int, torch.Tensor] = {}
    for x in xs:
        model(x)
        for i, z in gates.z.items():
            sums_v[i] = sums_v.get(i, 0) + torch.sigmoid(gates.alpha * z)
            sums_z[i] = sums_z.get(i, 0) + z
    keys = [g.key for g in gates.groups]
    return ({keys[i]: v / len(xs) for i, v in sums_v.items()},
            {keys[i]: z / len(xs) for i, z in sums_z.items()})


def train_gates(model: nn.Module, groups: Sequence, batches: Sequence, *, target: float = 0.5,
                steps: int = 50, batch_size: int = 32, lr: float = 0.05, alpha_start: float = 0.1,
                alpha_end: float = 100.0, reg: float = 10.0, late: float = 0.8, seed: int = 0) -> GateResult:
    """Train AutoPruner gates for `steps` mini-batches of `batch_size` images cut from `batches`
    (cycling); the model's parameters, modes and hooks are restored afterwards. Each step costs
    two forwards and one backward of the whole network, hence the small defaults (CPU)."""
    if not 0 < target <= 1:
        raise UserError(f"AutoPruner target kept fraction must be in (0, 1], got {target}",
                        "e.g. target=0.5 keeps half the channels of every group")
    xs = [part for b in batches for part in torch.split(as_input(b), max(1, batch_size))]
    if not xs or steps < 1:
        raise UserError("AutoPruner needs calibration batches and steps >= 1", "give data and steps")
    torch.manual_seed(seed)
    was_training, frozen = model.training, [(p, p.requires_grad) for p in model.parameters()]
    model.eval()
    consumers = group_consumers(model, groups, xs[0])  # before freezing: the graph is traced via autograd
    for p, _ in frozen:
        p.requires_grad_(False)
    gates = Gates(model, groups, consumers)
    try:
        opt = torch.optim.Adam(gates.nets.parameters(), lr=lr)
        gates.alpha, delta, history = alpha_start, (alpha_end - alpha_start) / steps, []
        for step in range(steps):
            loss, codes = _train_step(gates, model, opt, xs[step % len(xs)], target, reg)
            gates.alpha = _alpha_schedule(step, steps, gates.alpha, delta, codes, late)
            history.append({"step": step, "loss": loss, "alpha": gates.alpha,
                            "kept": float(torch.cat(codes).gt(0.5).float().mean())})
        codes, logits = _read_out(gates, model, xs)
        return GateResult(codes, logits, gates.alpha, history)
    finally:
        gates.remove()
        for p, flag in frozen:
            p.requires_grad_(flag)
        model.train(was_training)


def autopruner_scores(model: nn.Module, groups: Sequence, batches: Sequence, *, target: float = 0.5,
                      steps: int = 50, batch_size: int = 32, lr: float = 0.05, alpha_start: float = 0.1,
                      alpha_end: float = 100.0, reg: float = 10.0, seed: int = 0,
                      **_: object) -> dict[str, torch.Tensor]:
    """Gate values as channel scores (see the module docstring for how they encode the keep set).
    Options meant for other criteria are ignored (CRITERIA contract)."""
    scores = train_gates(model, groups, batches, target=target, steps=steps, batch_size=batch_size, lr=lr,
                         alpha_start=alpha_start, alpha_end=alpha_end, reg=reg, seed=seed).scores()
    # A group no layer reads (none in the zoo) never gets a code: every channel counts the same.
    return {g.key: scores.get(g.key, torch.ones(g.width, dtype=torch.float64)) for g in groups}


def _register() -> None:
    from edgecompress.pruning.criteria import CRITERIA
    if "autopruner" not in CRITERIA:
        CRITERIA.add("autopruner", autopruner_scores)


_register()
