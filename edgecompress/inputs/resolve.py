"""The run's inputs composed once: the declared preprocessing, the data, the model checked against it."""
from __future__ import annotations

import torch

from edgecompress import zoo
from edgecompress.inputs.data import resolve_data
from edgecompress.inputs.models import resolve_model
from edgecompress.inputs.preprocess import Preprocess, from_record


def declared_preprocess(config) -> Preprocess | None:
    """The flags' declaration; else a shipped zoo checkpoint's `"preprocess"` metadata (used with
    its shipped weights only); else None (the data's own default)."""
    pre = config.declared_preprocess()
    if pre is not None:
        return pre
    name = config.model or "resnet20"
    if config.weights is None and name in zoo.MODELS:
        path = zoo.CHECKPOINTS / f"{name}_fashion-mnist.pt"
        if path.is_file():
            record = torch.load(path, map_location="cpu", weights_only=True).get("preprocess")
            if record:
                return from_record(record, name=f"checkpoint:{name}")
    return None


def resolve_inputs(config):
    """(DataSplits in the run's preprocessing, LoadedModel, notes to record): the same on every rank."""
    pre = declared_preprocess(config)
    data = resolve_data(config.data, preprocess=pre, workers=config.data_workers)
    notes = []
    if pre is None and data.name.startswith("imagefolder:"):
        notes.append(f"no preprocessing declared: images are normalised with the training folder's own statistics "
                     f"({data.preprocess.describe()}); declare the model's own with --preprocess "
                     f"(e.g. imagenet) or --input-size/--resize/--crop/--mean/--std")
    loaded = resolve_model(config.model, weights=config.weights, data=data)
    return data, loaded, notes
