"""From group scores and one knob to a keep count per group (DESIGN.md, "Contribution rates").

`cr`: keep the fewest highest-contribution channels whose rates sum to >= cr (the seed's
cumulative contribution rate; a different count per group). `uniform`: keep ceil(ratio * width)
in every group. Both then round UP to the target's channel multiple, never above the original
width and never below `min_channels` (nor below one channel, so cr = 0 keeps
max(min_channels, 1) rounded up to the multiple). Both are monotone: a smaller knob never keeps
more channels in any group.
"""
from __future__ import annotations

import math

import torch

from edgecompress.errors import UserError
from edgecompress.registry import Registry

ALLOCATIONS: Registry = Registry("allocation")
_TOLERANCE = 1e-6   # float32 scores give rates off by ~1e-8: 0.4 must reach a channel of rate 0.4


def check_knob(knob: float, *, name: str = "cr") -> float:
    try:
        value = float(knob)
    except (TypeError, ValueError):
        raise UserError(f"{name} must be a number in [0, 1], got {knob!r}", f"e.g. {name}=0.9") from None
    if not 0.0 <= value <= 1.0:   # NaN fails this too
        raise UserError(f"{name} must be in [0, 1], got {knob!r}",
                        "cr is a cumulative contribution rate (1 keeps everything), the uniform knob a keep ratio")
    return value


def check_rounding(multiple: int, min_channels: int) -> None:
    for name, value in (("multiple", multiple), ("min_channels", min_channels)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise UserError(f"{name} must be a positive integer, got {value!r}",
                            "take it from the target profile (channel_multiple, min_channels)")


def contribution_rates(score: torch.Tensor) -> torch.Tensor:
    """eps_i = score_i / sum(score); all-zero or non-finite scores count as equal contributions."""
    s = score.to(torch.float64).clamp_min(0)
    total = s.sum()
    if not torch.isfinite(total) or total <= 0:
        return torch.full_like(s, 1.0 / max(len(s), 1))
    return s / total


def order(score: torch.Tensor) -> torch.Tensor:
    """Channels from most to least important; ties broken by index, so results are reproducible."""
    return torch.sort(score.to(torch.float64), descending=True, stable=True).indices


def round_keep(count: int, width: int, *, multiple: int, min_channels: int) -> int:
    k = max(count, min_channels, 1)
    k = math.ceil(k / multiple) * multiple
    return min(k, width)


def cr_count(score: torch.Tensor, cr: float) -> int:
    """Fewest highest-rate channels whose rates sum to >= cr (before rounding)."""
    if cr <= 0:
        return 0
    if cr >= 1:
        return len(score)   # everything, zero-rate channels included
    rates = contribution_rates(score)[order(score)]
    cumulative = torch.cumsum(rates, 0)
    k = int(torch.searchsorted(cumulative, torch.tensor([cr - _TOLERANCE], dtype=torch.float64)).item()) + 1
    return min(k, len(score))


@ALLOCATIONS.register("cr")
def cr_keep_counts(scores: dict[str, torch.Tensor], cr: float, *, multiple: int = 1,
                   min_channels: int = 1) -> dict[str, int]:
    cr = check_knob(cr, name="cr")
    check_rounding(multiple, min_channels)
    return {key: round_keep(cr_count(s, cr), len(s), multiple=multiple, min_channels=min_channels)
            for key, s in scores.items()}


@ALLOCATIONS.register("uniform")
def uniform_keep_counts(scores: dict[str, torch.Tensor], ratio: float, *, multiple: int = 1,
                        min_channels: int = 1) -> dict[str, int]:
    ratio = check_knob(ratio, name="keep ratio")
    check_rounding(multiple, min_channels)
    # round() first: 0.3 * 10 is 3.0000000000000004 in floats, which ceil would make 4
    return {key: round_keep(math.ceil(round(ratio * len(s), 9)), len(s), multiple=multiple,
                            min_channels=min_channels) for key, s in scores.items()}


def keep_counts(scores: dict[str, torch.Tensor], cr: float, *, multiple: int = 1,
                min_channels: int = 1) -> dict[str, int]:
    """Channels each group keeps at cumulative contribution rate `cr` (see module docstring)."""
    return cr_keep_counts(scores, cr, multiple=multiple, min_channels=min_channels)


def keep_indices(scores: dict[str, torch.Tensor], counts: dict[str, int]) -> dict[str, list[int]]:
    """The `counts[key]` most important channels of each group, in ascending channel order."""
    return {key: sorted(order(scores[key])[:k].tolist()) for key, k in counts.items()}
