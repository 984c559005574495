"""The run's inputs composed once: the declared preprocessing, the data, the model checked against it."""
from __future__ import annotations

import torch

from edgecompress import zoo
from edgecompress.errors import UserError
from edgecompress.inputs.data import resolve_data
from edgecompress.inputs.models import resolve_model
from edgecompress.inputs.preprocess import Preprocess, from_record
from edgecompress.inputs.ultralytics import is_ultralytics_checkpoint, load_ultralytics


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


DEFAULT_DETECTOR = "tiny-yolo"


def task_kind(config) -> str:
    """`--task`, or for `auto`: detection when the model is a zoo detector or an Ultralytics
    checkpoint, or the data is `yolo:`."""
    if config.task != "auto":
        return config.task
    from edgecompress.zoo.detector import DETECTORS
    if (config.model in DETECTORS or (config.data or "").startswith("yolo:")
            or (config.model and is_ultralytics_checkpoint(config.model))):
        return "detect"
    return "classify"


def detection_imgsz(config) -> int | None:
    """--imgsz, else the checkpoint's input size (a zoo detector used with its own weights, or an
    Ultralytics checkpoint's training size)."""
    if config.imgsz:
        return config.imgsz
    if config.model and is_ultralytics_checkpoint(config.model):
        return load_ultralytics(config.model).imgsz
    from edgecompress.zoo.detector import CHECKPOINTS, DEMO_DATASET, DETECTORS
    name = config.model or DEFAULT_DETECTOR
    path = CHECKPOINTS / f"{name}_{DEMO_DATASET}.pt"
    if config.weights is None and name in DETECTORS and path.is_file():
        return int(torch.load(path, map_location="cpu", weights_only=True).get("imgsz") or 0) or None
    return None


def detection_inputs(config):
    """`--task detect`: YOLO-layout data (or the demo canvases, built into the cache on first use)
    and a detector (the zoo's tiny-yolo by default)."""
    # first: an Ultralytics checkpoint is read here (its input size), so a missing extra or a bad
    # file stops the run before the demo set is built
    imgsz = detection_imgsz(config)
    spec = config.data
    notes = []
    if spec is None:
        from edgecompress.zoo.detection_demo import cached_demo
        spec = f"yolo:{cached_demo(seed=0)}"
        notes.append(f"no --data: the offline detection demo (Fashion-MNIST items on canvases), {spec}")
    elif not spec.startswith("yolo:"):
        raise UserError(f"--task detect needs detection data, not {spec!r}", "give --data yolo:PATH/data.yaml")
    data = resolve_data(spec, preprocess=config.declared_preprocess(), workers=config.data_workers,
                        imgsz=imgsz)
    loaded = resolve_model(config.model or DEFAULT_DETECTOR, weights=config.weights, data=data)
    return data, loaded, notes


def resolve_inputs(config):
    """(DataSplits in the run's preprocessing, LoadedModel, notes to record): the same on every rank.
    `data.kind` is the task (`task_kind`): the pipeline's task object is chosen from it."""
    if task_kind(config) == "detect":
        return detection_inputs(config)
    if (config.data or "").startswith("yolo:"):
        raise UserError("--data yolo: is detection data but --task classify was asked",
                        "drop --task (auto) or give --task detect")
    pre = declared_preprocess(config)
    data = resolve_data(config.data, preprocess=pre, workers=config.data_workers)
    notes = []
    if pre is None and data.name.startswith("imagefolder:"):
        notes.append(f"no preprocessing declared: images are normalised with the training folder's own statistics "
                     f"({data.preprocess.describe()}); declare the model's own with --preprocess "
                     f"(e.g. imagenet) or --input-size/--resize/--crop/--mean/--std")
    loaded = resolve_model(config.model, weights=config.weights, data=data)
    return data, loaded, notes
