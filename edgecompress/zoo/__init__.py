"""Embedded default: demo models, data loaders and shipped checkpoints."""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from edgecompress.errors import UserError
from edgecompress.zoo.models import MODELS, create_model

CHECKPOINTS = Path(__file__).parent / "checkpoints"


def pretrained(name: str = "resnet20", dataset: str = "fashion-mnist") -> tuple[nn.Module, dict]:
    """A zoo model with its shipped weights, and the checkpoint's metadata (accuracies, command)."""
    path = CHECKPOINTS / f"{name}_{dataset}.pt"
    if not path.is_file():
        shipped = sorted(p.stem for p in CHECKPOINTS.glob("*.pt"))
        raise UserError(f"no shipped checkpoint for {name} on {dataset}", f"shipped: {', '.join(shipped)}")
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    model = create_model(name)
    model.load_state_dict(ckpt["state_dict"])
    meta = {k: v for k, v in ckpt.items() if k != "state_dict"}
    return model.eval(), meta


__all__ = ["MODELS", "create_model", "pretrained", "CHECKPOINTS"]
