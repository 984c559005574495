"""Model specs given with `--model` (+ `--weights`), resolved to an nn.Module checked against the data.

- nothing: the embedded default, the shipped ResNet-20 trained on Fashion-MNIST;
- a zoo name (`resnet20`, `mobilenetv2`, ...): shipped weights for Fashion-MNIST, or `--weights`;
- `package.module:factory`: `factory()` builds the model, `--weights` holds its state dict;
- a file saved with `torch.save(model)`: the whole module;
- an Ultralytics checkpoint (`best.pt`, YOLOv8 / YOLO11 detect; extra `yolo`): inputs/ultralytics.py.
The user's files are only read, never written.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from edgecompress import zoo
from edgecompress.errors import UserError
from edgecompress.inputs.loaders import as_tensors
from edgecompress.inputs.specs import IMPORT_SPEC, call_spec
from edgecompress.inputs.ultralytics import is_ultralytics_checkpoint, load_ultralytics
from edgecompress.inputs.splits import DataSplits

MODEL_HINT = "use a zoo name, package.module:factory with --weights FILE, or a file saved with torch.save(model)"


@dataclass
class LoadedModel:
    model: nn.Module
    name: str
    notes: list[str] = field(default_factory=list)


def resolve_model(spec: str | None, *, weights: str | None, data: DataSplits) -> LoadedModel:
    from edgecompress.zoo.detector import DETECTORS
    if spec in DETECTORS:
        loaded = _zoo_detector(spec, weights=weights, data=data)
    elif spec is None or spec in zoo.MODELS:
        loaded = _zoo_model(spec or "resnet20", weights=weights, data=data)
    elif IMPORT_SPEC.match(spec):
        loaded = _factory_model(spec, weights=weights)
    elif is_ultralytics_checkpoint(spec):
        loaded = _ultralytics_model(Path(spec), weights=weights, data=data)
    elif Path(spec).exists():
        loaded = _file_model(Path(spec), weights=weights)
    else:
        raise UserError(f"cannot resolve the model {spec!r}: not a zoo name, module:factory or file",
                        f"{MODEL_HINT}; zoo: {', '.join(zoo.MODELS.names())}")
    check_model(loaded.model, data=data, name=loaded.name)
    return loaded


def _zoo_model(name: str, *, weights: str | None, data: DataSplits) -> LoadedModel:
    if weights is None:
        if data.name != "fashion-mnist":
            raise UserError(f"the shipped {name} weights are for Fashion-MNIST, not {data.name}",
                            "give --weights FILE with weights trained on your data")
        model, meta = zoo.pretrained(name)
        return LoadedModel(model, f"{name} (shipped, test {meta.get('test_accuracy', '?')} %)")
    model = zoo.create_model(name, in_channels=data.input_shape[0], num_classes=data.num_classes)
    load_weights(model, Path(weights))
    return LoadedModel(model, f"{name} + {weights}")


def _zoo_detector(name: str, *, weights: str | None, data: DataSplits) -> LoadedModel:
    """A zoo detector: its shipped weights (trained on the Fashion-MNIST detection demo, so only for
    data with the demo's classes), or `--weights` for a detector built for the data's classes."""
    from edgecompress.zoo.detection_demo import CLASS_NAMES
    from edgecompress.zoo.detector import create_detector, pretrained_detector
    if weights is None:
        if data.classes != CLASS_NAMES:
            raise UserError(f"the shipped {name} weights are for the Fashion-MNIST detection demo's classes, "
                            f"not those of {data.name}", "give --weights FILE with weights trained on your data")
        model, meta = pretrained_detector(name)
        return LoadedModel(model, f"{name} (shipped, val mAP50-95 {meta.get('val_map', float('nan')):.2f} "
                                  f"at {meta.get('imgsz', '?')} px)")
    model = create_detector(name, in_channels=data.input_shape[0], num_classes=data.num_classes)
    load_weights(model, Path(weights))
    return LoadedModel(model, f"{name} + {weights}")


def _ultralytics_model(path: Path, *, weights: str | None, data: DataSplits) -> LoadedModel:
    if weights:
        raise UserError(f"{path} is an Ultralytics checkpoint, which holds its own weights", "drop --weights")
    ckpt = load_ultralytics(path)
    size, stride = data.input_shape[-1], max(ckpt.model.strides)
    if size % stride:   # the feature maps would round up, the cell grid decoded outside would not
        raise UserError(f"input size {size} is not a multiple of {path}'s largest stride {stride}",
                        f"give --imgsz a multiple of {stride}, e.g. {(size // stride + 1) * stride}")
    notes = []
    if data.classes and len(data.classes) == len(ckpt.names) and list(data.classes) != ckpt.names:
        notes.append(f"{path}'s class names {ckpt.names} differ from {data.name}'s {list(data.classes)}: "
                     f"matched by index")
    return LoadedModel(ckpt.model, f"{path} (Ultralytics, trained at {ckpt.imgsz or '?'} px)", notes)


def _factory_model(spec: str, *, weights: str | None) -> LoadedModel:
    model = call_spec(spec, what="model factory", called="the model factory",
                      hint="it must build the model when called with no arguments")
    if not isinstance(model, nn.Module):
        raise UserError(f"the model factory {spec} returned {type(model).__name__}, not a torch.nn.Module",
                        "return the model instance")
    notes = []
    if weights:
        load_weights(model, Path(weights))
    else:
        notes.append(f"no --weights given: {spec} is used with the weights its factory gave it")
    return LoadedModel(model, spec + (f" + {weights}" if weights else ""), notes)


def _file_model(path: Path, *, weights: str | None) -> LoadedModel:
    obj = _torch_load(path, full=True)
    if isinstance(obj, dict):
        raise UserError(f"{path} holds a state dict, not a whole model",
                        "give --model package.module:factory --weights " + str(path))
    if not isinstance(obj, nn.Module):
        raise UserError(f"{path} holds a {type(obj).__name__}, not a torch.nn.Module", MODEL_HINT)
    if weights:
        load_weights(obj, Path(weights))
    return LoadedModel(obj, str(path) + (f" + {weights}" if weights else ""))


def _torch_load(path: Path, *, full: bool):
    if not path.is_file():
        raise UserError(f"{path} does not exist", "check the path")
    try:
        return torch.load(path, map_location="cpu", weights_only=not full)
    except Exception as exc:
        raise UserError(f"cannot load {path}: {_load_problem(path, exc)}",
                        "the file is missing, truncated or not a PyTorch checkpoint") from exc


def _load_problem(path: Path, exc: Exception) -> str:
    """What is wrong with the file, in the user's terms. torch.load's own words mislead here: random
    bytes get its "weights_only default changed in 2.6" notice, a truncated zip `[Errno 22]`."""
    import re
    import zipfile
    with open(path, "rb") as f:
        head = f.read(2)
    if head == b"PK" and not zipfile.is_zipfile(path):
        return "the zip archive torch.save writes is truncated or damaged"
    if head != b"PK" and head[:1] != b"\x80":  # neither torch.save's zip nor a (legacy) pickle
        return "not a PyTorch checkpoint (neither a torch.save zip archive nor a pickle)"
    text = str(exc)
    unpickler = re.search(r"WeightsUnpickler error:\s*(.+?)(?: Please use|\n\n|$)", text, re.S)
    if unpickler:  # a checkpoint holding Python objects besides tensors
        return "it holds more than tensors (" + " ".join(unpickler.group(1).split())[:200] + ")"
    first = text.strip().splitlines()[0] if text.strip() else type(exc).__name__
    return first[:200]


def load_weights(model: nn.Module, path: Path) -> None:
    """Load a state dict (or a checkpoint dict holding one) strictly; a mismatch is the user's."""
    state = _torch_load(path, full=False)
    if isinstance(state, dict):
        for key in ("state_dict", "model_state_dict", "model"):
            if isinstance(state.get(key), dict):
                state = state[key]
                break
    if not isinstance(state, dict) or not all(torch.is_tensor(v) for v in state.values()):
        raise UserError(f"{path} is not a state dict of tensors", "save it with torch.save(model.state_dict(), path)")
    state = {k.removeprefix("module."): v for k, v in state.items()}  # saved from DataParallel/DDP
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
        detail = "; ".join(lines[1:3]) if len(lines) > 1 else lines[0]
        raise UserError(f"the weights in {path} do not fit the model: {detail[:300]}",
                        "give the weights trained for this architecture") from exc


@torch.no_grad()
def check_model(model: nn.Module, *, data: DataSplits, name: str) -> None:
    """Weights are finite, the forward pass accepts the data's images, the outputs cover its classes."""
    for pname, p in list(model.named_parameters()) + list(model.named_buffers()):
        if p.is_floating_point() and not torch.isfinite(p).all():
            raise UserError(f"the model {name} has NaN or infinite values in {pname}",
                            "give weights from a training run that did not diverge")
    x = data.images(2) if data.kind == "detect" else as_tensors(data.val, limit=2)[0]
    model.eval()
    try:
        out = model(x)
    except Exception as exc:
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(f"the model {name} rejects images of shape {tuple(x.shape[1:])} from {data.name}: "
                        f"{msg[:200]}", "give data the model was built for (channels, size)") from exc
    if data.kind == "detect":
        _check_detector(out, data=data, name=name)
        return
    if not torch.is_tensor(out) or out.dim() != 2:
        raise UserError(f"the model {name} returns {tuple(out.shape) if torch.is_tensor(out) else type(out).__name__}"
                        ", not class scores of shape (batch, classes)", "use a classification model")
    if out.shape[1] < data.num_classes:
        raise UserError(f"{data.name} has labels up to {data.num_classes - 1} but the model {name} has "
                        f"{out.shape[1]} outputs", "give data whose labels are the model's classes")


def _check_detector(out, *, data: DataSplits, name: str) -> None:
    """A detector returns raw head outputs [N, 4 + classes, cells] (zoo/detector.py)."""
    if not torch.is_tensor(out) or out.dim() != 3:
        raise UserError(f"the model {name} returns {tuple(out.shape) if torch.is_tensor(out) else type(out).__name__}"
                        ", not raw detection outputs of shape (batch, 4 + classes, cells)",
                        "use a detector whose forward returns its raw head outputs (the zoo's tiny-yolo does)")
    if out.shape[1] != 4 + data.num_classes:
        raise UserError(f"{data.name} has {data.num_classes} classes but the detector {name} predicts "
                        f"{out.shape[1] - 4}", "give data whose classes are the detector's, or weights for them")
