"""What every stage reads: the request, the run directory, the data, the original model, the target."""
from __future__ import annotations

import os
import shutil
import sys
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import torch
from torch import nn

from edgecompress.errors import InternalError, UserError
from edgecompress.pipeline.config import RunConfig
from edgecompress.pipeline.rundir import RunDir
from edgecompress.pipeline.ui import UI
from edgecompress.zoo.data import DataSplits


PROBE_CALIBRATION = 64   # training images that calibrate an INT8 probe (its latency, not its accuracy)
EVAL_BATCH = 250         # images per evaluation batch (PyTorch and engines)
CHANCE_FACTOR = 1.5      # the original below 1.5x chance accuracy: warn before the search


@dataclass
class Context:
    config: RunConfig
    rundir: RunDir
    ui: UI
    data: DataSplits
    original: nn.Module
    model_name: str
    target: Any                                   # edgecompress.targets.Target
    device: torch.device = torch.device("cpu")    # --train-device: training work and PyTorch evaluation
    notes: list[str] = field(default_factory=list)
    results: dict[str, dict] = field(default_factory=dict)   # stage name -> its recorded data
    dist: Any = None                              # the torchrun coordinator, when launched that way

    def __post_init__(self) -> None:
        pre = self.data.preprocess
        self.ui.say(f"preprocessing {pre.describe() if pre else 'as given'}; input "
                    f"{'x'.join(map(str, self.input_shape))}; training on {self.device}"
                    + (f"; {self.data.workers} data worker(s)" if self.data.workers else ""))

    @property
    def profile(self):
        return self.target.profile

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.data.input_shape)

    def note(self, text: str) -> None:
        if text not in self.notes:
            self.notes.append(text)
            self.ui.note(text)

    # -- data: everything streams through loaders (pipeline/data.py) --------------------------------

    @property
    def preprocess(self):
        return self.data.preprocess

    def split(self, name: str):
        return {"train": self.data.train, "val": self.data.val, "test": self.data.test}[name]

    def has_split(self, name: str) -> bool:
        ds = self.split(name)
        return ds is not None and len(ds) > 0

    def batches(self, split: str = "val", *, batch_size: int = EVAL_BATCH):
        """(images, labels) batches of a split in order, decoded by the loader's workers."""
        from edgecompress.pipeline.data import loader
        return loader(self.split(split), batch_size=batch_size, workers=self.data.workers)

    def accuracy(self, model: nn.Module, split: str = "val") -> float | None:
        """PyTorch top-1 accuracy in percent on a split, on the training device; None without it."""
        from edgecompress.pipeline.evaluation import stream_accuracy
        if not self.has_split(split):
            return None
        return stream_accuracy(model, self.batches(split), device=self.device)

    def val_accuracy(self, model: nn.Module) -> float:
        return self.accuracy(model, "val")

    def engine_accuracy(self, run, split: str = "val", *, batch_size: int = EVAL_BATCH, on_batch=None) -> float | None:
        """Top-1 accuracy of a built engine (`run`: NCHW float32 -> logits) on a split; None without it."""
        from edgecompress.pipeline.evaluation import stream_runner_accuracy
        if not self.has_split(split):
            return None
        return stream_runner_accuracy(run, self.batches(split, batch_size=batch_size), on_batch=on_batch)

    def val_images(self, n: int) -> torch.Tensor:
        """The first `n` validation images (parity checks, sensitivity, latency inputs)."""
        from edgecompress.pipeline.data import loader
        from torch.utils.data import Subset
        ds = self.data.val
        x, _ = next(iter(loader(Subset(ds, range(min(n, len(ds)))), batch_size=n, workers=0)))
        return x

    def original_accuracy(self) -> float:
        """The original's validation accuracy, with a loud warning when it is near chance."""
        acc = self.val_accuracy(self.original)
        chance = 100.0 / max(1, self.data.num_classes)
        if acc < CHANCE_FACTOR * chance:
            text = (f"the original model's validation accuracy is {acc:.2f} %, near chance ({chance:.1f} % for "
                    f"{self.data.num_classes} classes): likely causes are the wrong preprocessing (this run: "
                    f"{self.preprocess.describe() if self.preprocess else 'as given'}; declare the model's own with "
                    f"--preprocess / --input-size / --resize / --crop / --mean / --std), labels that do not match "
                    f"the model's classes (class folders are sorted by name), or untrained / wrong weights")
            self.ui.say("!" * 80 + "\n  WARNING: " + text + "\n" + "!" * 80)
            self.note(text)
        return acc

    def train_batches(self, *, count: int, batch_size: int, seed: int):
        """`count` batches of training images drawn without replacement, fixed by `seed`: a
        re-iterable `BatchStream` (decoded on each pass, never held), `[:k]` for the first k."""
        from edgecompress.pipeline.data import BatchStream, seeded_indices
        idx = seeded_indices(len(self.data.train), count * batch_size, seed)
        return BatchStream(self.data.train, idx, batch_size=batch_size, workers=self.data.workers)

    def search_precision(self) -> str:
        """Precision the search measures probes at: a float one (INT8 would need a calibration per probe).

        Relative order between probes is what the search needs; the shipped precision is measured
        again in the calibrate and verify stages.
        """
        prefer = [self.config.precision] if self.config.precision in ("fp32", "fp16") else []
        prefer += ["fp16"] if self.profile.runtime == "tensorrt" else []
        for p in [*prefer, "fp32", "fp16"]:
            if p in self.profile.precisions:
                return p
        raise UserError(f"target {self.profile.name} offers no float precision to search with",
                        "add fp32 or fp16 to the profile's precisions")

    def probe_precision(self) -> str:
        """Precision the search times probes at: the one that will ship. With `--precision
        auto|int8` on a target that offers INT8, INT8 (pruning that pays in FP32 can buy nothing
        on top of INT8, and INT8 kernels block channels differently); otherwise the float
        precision of `search_precision`. Costs a 64-image calibration per probe (seconds)."""
        if "int8" in self.profile.precisions and self.config.precision in ("auto", "int8"):
            return "int8"
        return self.search_precision()

    def build_model(self, model: nn.Module, work: Path, *, precision: str, calibration: list | None = None):
        """Export `model` to ONNX in a fresh `work` folder and build it for the target: BuildResult.
        INT8: quantized first (QDQ, the runtime's symmetric convention) on `calibration` batches
        (default PROBE_CALIBRATION training images: enough for a latency; the shipped INT8 and the
        unpruned engine it is compared with are calibrated on the calibrate stage's images)."""
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
        onnx_path = export_onnx(model, work / "model.onnx", input_shape=self.input_shape)
        if precision == "int8":
            from edgecompress.calibration import SYMMETRIC_ACTIVATIONS, quantize_int8
            batches = calibration or [b.numpy() for b in self.train_batches(count=1, batch_size=PROBE_CALIBRATION,
                                                                             seed=self.config.seed)]
            onnx_path = quantize_int8(onnx_path, work / "model_int8.onnx", batches, method=self.config.calibration,
                                      symmetric_activations=SYMMETRIC_ACTIVATIONS.get(self.profile.runtime, False))
        return self.target.build(onnx_path, work, precision=precision)

    def measure_model(self, model: nn.Module, work: Path, *, precision: str):
        """Export `model` to ONNX, build it for the target, measure it: (Latency, BuildResult)."""
        build = self.build_model(model, work, precision=precision)
        return self.target.measure(build), build


def export_onnx(model: nn.Module, dst: Path, *, input_shape: tuple[int, ...]) -> Path:
    """to_onnx with the export failure turned into the user's message naming the operation."""
    from edgecompress.exporters import to_onnx
    try:
        with quiet_stdout():
            return to_onnx(model, dst, input_shape=input_shape)
    except (UserError, InternalError):
        raise
    except OSError:
        raise  # a full or unwritable disk is not the model's fault: the runner reports it as such
    except Exception as exc:
        raise UserError(f"the model cannot be exported to ONNX: {describe_export_failure(model, exc, input_shape)}",
                        "replace that operation with one ONNX supports (opset 17), or register a symbolic") from exc


def describe_export_failure(model: nn.Module, exc: Exception, input_shape: tuple[int, ...]) -> str:
    """The unsupported operation and, by exporting each leaf module alone, the layer that holds it."""
    import re
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    op = re.search(r"operator '([\w:.]+)'", str(exc)) or re.search(r"(aten::\w+)", str(exc))
    layer = _failing_layer(model, input_shape)
    parts = [f"operation {op.group(1)}" if op else text[:200]]
    if layer:
        parts.append(f"in layer {layer}")
    return " ".join(parts)


def _failing_layer(model: nn.Module, input_shape: tuple[int, ...]) -> str | None:
    import io
    import warnings
    inputs: dict[str, tuple] = {}

    def record(name: str):
        def hook(mod, args, out) -> None:  # returns None: a returned value would replace the output
            inputs.setdefault(name, args)
        return hook
    hooks = [m.register_forward_hook(record(name)) for name, m in model.named_modules()
             if name and not list(m.children())]
    try:
        with torch.no_grad():
            model.eval()(torch.zeros(1, *input_shape))
    except Exception:
        return None
    finally:
        for h in hooks:
            h.remove()
    modules = dict(model.named_modules())
    for name, args in inputs.items():
        try:
            with warnings.catch_warnings(), quiet_stdout():
                warnings.simplefilter("ignore")
                torch.onnx.export(modules[name], args, io.BytesIO(), dynamo=False, opset_version=17)
        except Exception:
            return f"{name} ({type(modules[name]).__name__})"
    return None


@contextmanager
def quiet_stdout() -> Iterator[None]:
    """Point file descriptor 1 at /dev/null for a moment.

    When an operator has no ONNX symbolic, torch's TorchScript exporter dumps the whole graph to
    C++ std::cout ("Torch IR graph at exception: ..."): its setup_onnx_logging tests the function
    `_jit_is_onnx_log_enabled` for truth instead of calling it, so the ONNX log is always on. The
    user gets the one-line error naming the operation and the layer instead.
    """
    sys.stdout.flush()
    try:
        saved = os.dup(1)
    except OSError:  # no stdout at all: nothing to protect
        yield
        return
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 1)
        yield
    finally:
        os.dup2(saved, 1)
        os.close(saved)


def load_module(path: Path) -> nn.Module:
    return torch.load(path, map_location="cpu", weights_only=False).eval()
