"""Safe by construction: every group is tried at its thinnest setting on a copy before the search.

A trial prunes a deep copy (one unit kept per tried group), runs it on a calibration batch, checks
the output shape and exports it to ONNX with the product's exporter. Groups whose trial fails
stay at full width and are reported; nothing here is fatal. All groups are tried together first
(one trial when everything is fine); on failure the set is halved until the culprits are found,
and the survivors are confirmed together (greedily, when two groups only fail in combination).
"""
from __future__ import annotations

import tempfile
from pathlib import Path

import torch
from torch import nn

from edgecompress.pruning.groups import PrunableGroup, prune_copy


def thinnest(group: PrunableGroup) -> list[int]:
    """Root channels removed when the group keeps a single unit (its first)."""
    return [i for unit in group.units[1:] for i in unit]


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0][:200]}" if text else type(exc).__name__


class Trial:
    """Prune-run-export checks of group sets against the unpruned model's output shape."""

    def __init__(self, model: nn.Module, example: torch.Tensor, batch: torch.Tensor, *, export: bool = True) -> None:
        self.model, self.example, self.batch, self.export = model, example, batch, export
        was_training = model.training
        model.eval()
        with torch.no_grad():
            self.shape = tuple(model(batch).shape[1:])
        model.train(was_training)

    def __call__(self, groups: list[PrunableGroup]) -> str | None:
        """None when the set prunes, runs and exports at its thinnest; else a one-line reason.
        Any exception counts as a failure of the set: the user's architecture may break pruning
        anywhere (Torch-Pruning, the forward, the exporter), and a broken set must not be fatal."""
        try:
            pruned = prune_copy(self.model, self.example, {g.key: thinnest(g) for g in groups}).eval()
            with torch.no_grad():
                shape = tuple(pruned(self.batch).shape[1:])
            if shape != self.shape:
                return f"the pruned model's output is {shape}, not {self.shape}"
            if self.export:
                return self._export(pruned)
        except Exception as exc:   # noqa: BLE001  (see docstring)
            return _first_line(exc)
        return None

    def _export(self, pruned: nn.Module) -> str | None:
        from edgecompress.errors import MissingBackendError
        from edgecompress.exporters.onnx import to_onnx
        try:
            with tempfile.TemporaryDirectory() as tmp:
                to_onnx(pruned, Path(tmp) / "trial.onnx", input_shape=tuple(self.example.shape[1:]), simplify=False)
        except MissingBackendError:
            return None   # no onnx installed: the export stage will say so itself
        except Exception as exc:   # noqa: BLE001
            return "ONNX export fails: " + _first_line(exc)
        return None


def screen(groups: list[PrunableGroup], trial: Trial) -> tuple[list[PrunableGroup], list[dict]]:
    """(groups that prune safely, [{"layers", "reason"}] for those left at full width)."""
    if not groups or trial(groups) is None:
        return list(groups), []
    good, bad = _bisect(groups, trial)
    if good and trial(good) is not None:   # each half works alone, together they do not
        kept: list[PrunableGroup] = []
        for g in good:
            reason = trial([*kept, g])
            if reason is None:
                kept.append(g)
            else:
                bad.append({"layers": g.members, "reason": "fails together with the other groups: " + reason})
        good = kept
    return good, bad


def _bisect(groups: list[PrunableGroup], trial: Trial) -> tuple[list[PrunableGroup], list[dict]]:
    if len(groups) == 1:
        reason = trial(groups)
        return ([], [{"layers": groups[0].members, "reason": reason}]) if reason else (groups, [])
    half = len(groups) // 2
    good, bad = [], []
    for part in (groups[:half], groups[half:]):
        if trial(part) is None:
            good += part
        else:
            g, b = _bisect(part, trial)
            good, bad = good + g, bad + b
    return good, bad
