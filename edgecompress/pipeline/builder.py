"""The one build chain: a PyTorch model -> ONNX -> (INT8 QDQ) -> the target's engine, cached per
structure and precision for the whole run (the unchanged original is built once per precision).

Also the run's precision policy: which precision probes are built and timed at.
"""
from __future__ import annotations

import os
import re
from dataclasses import replace
import shutil
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import torch
from torch import nn

from edgecompress.calibration import SYMMETRIC_ACTIVATIONS, calibration_batches, quantize_int8
from edgecompress.calibration.plain import PLAIN_IMAGES, plain_int8
from edgecompress.errors import InternalError, UserError
from edgecompress.exporters import to_onnx
from edgecompress.inputs.splits import DataSplits
from edgecompress.pipeline.rundir import process_alive, process_start
from edgecompress.profiles import Profile
from edgecompress.pruning.detection import joined
from edgecompress.targets import BuildResult, Target

PROBE_CALIBRATION = 64      # training images that calibrate an INT8 probe (its latency, not its accuracy)
SHIPPED_CALIBRATION = 512   # training images that calibrate the engine that ships (and the unpruned one)
ORIGINAL = "original"       # the build key of the user's unchanged model
PLAIN = "plain-int8"        # the original quantized by the target's own tool at its defaults
ENGINE_FORMAT = {"openvino": "openvino-ir", "ort": "onnx", "tensorrt": "tensorrt-plan"}


def plain_name(runtime: str, precision: str, main_runtime: str) -> str:
    """The baseline's name of a plain engine: plain-int8 on the target's runtime, ort-plain-int8 on another."""
    return f"plain-{precision}" if runtime == main_runtime else f"{runtime}-plain-{precision}"


def search_precision(profile: Profile, requested: str) -> str:
    """The float precision the baseline is timed at (and probes, when INT8 is not allowed): the
    requested float one, FP16 on TensorRT, else FP32."""
    prefer = [requested] if requested in ("fp32", "fp16") else []
    prefer += ["fp16"] if profile.runtime == "tensorrt" else []
    for p in [*prefer, "fp32", "fp16"]:
        if p in profile.precisions:
            return p
    raise UserError(f"target {profile.name} offers no float precision to search with",
                    "add fp32 or fp16 to the profile's precisions")


def probe_precision(profile: Profile, requested: str) -> str:
    """The precision probes are built and timed at: the one that will ship. With `--precision
    auto|int8` on a target that offers INT8, INT8 (pruning that pays in FP32 can buy nothing on
    top of INT8, and INT8 kernels block channels differently); otherwise `search_precision`."""
    if "int8" in profile.precisions and requested in ("auto", "int8"):
        return "int8"
    return search_precision(profile, requested)


class Builder:
    """`build(model, precision=..., key=...)`: export, quantize (INT8) and build for the target
    in a folder of its own under `work`; a `key` (the model's structure, "original") caches the
    result for the run. INT8 calibration: PROBE_CALIBRATION seeded training images (enough for a
    latency), or `shipped=True` the SHIPPED_CALIBRATION images the engine that ships is
    calibrated on (same seed, same method)."""

    def __init__(self, *, target: Target, data: DataSplits, seed: int, method: str, work: Path | None = None) -> None:
        # Scratch, outside the run directory by default: the run directory holds artifacts only
        # (a latency table is dozens of engines; a small disk for the run must not fill with them).
        self.work = Path(work) if work is not None else scratch_dir()
        self.target, self.data, self.seed, self.method = target, data, seed, method
        # engines are exported at the batch that ships; a dynamic batch only when the profile asks
        self.batch = None if target.profile.dynamic_batch else target.profile.batch
        # the runtime settings our engines are loaded with (chosen by the baseline stage; None:
        # the runtime's defaults until then). Plain engines always keep the defaults.
        self.settings: dict | None = None
        self._targets: dict[str, Target] = {target.runtime: target}
        # every runtime the device offers, the profile's own first (its plain engines are yardsticks)
        self.runtimes = [target.runtime, *(target.profile.other_runtimes if target.latency_source == "local" else [])]
        self._built: dict[tuple, BuildResult] = {}
        self._calibration: dict[bool, list] = {}

    def target_for(self, runtime: str) -> Target:
        """The target's device with another runtime it offers (profile `other_runtimes`), local."""
        if runtime not in self._targets:
            from edgecompress.targets import get_target
            main = self.target.profile
            precisions = [p for p in main.precisions if p != "fp16" or runtime != "ort"]   # ORT CPU: no FP16 engine
            profile = main.model_copy(update={"runtime": runtime, "engine_format": ENGINE_FORMAT[runtime],
                                              "precisions": precisions, "other_runtimes": [], "latency": "local"})
            self._targets[runtime] = get_target(profile)
        return self._targets[runtime]

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.data.input_shape)

    def calibration(self, *, shipped: bool = False) -> list:
        """The INT8 calibration batches (numpy), drawn once per run."""
        if shipped not in self._calibration:
            count = min(SHIPPED_CALIBRATION if shipped else PROBE_CALIBRATION, len(self.data.train))
            # a probe's 64 images in one batch, the shipped engine's 512 in batches of 32
            self._calibration[shipped] = calibration_batches(self.data.train, count=count, seed=self.seed,
                                                             batch_size=32 if shipped else count,
                                                             workers=self.data.workers)
        return self._calibration[shipped]

    def use_runtime(self, runtime: str) -> Target:
        """Build our engines for another runtime of the device from now on (the baseline measured it faster)."""
        self.target = self.target_for(runtime)
        return self.target

    def build(self, model: nn.Module, *, precision: str, key: str | None = None, shipped: bool = False,
              runtime: str | None = None) -> BuildResult:
        """Ours, for the target's runtime (or `runtime`, another the device offers), loaded with `settings`."""
        target = self.target_for(runtime or self.target.runtime)
        cache_key = (key, precision, shipped, target.runtime)
        if key is None or cache_key not in self._built:
            work = self.work / f"{len(self._built):04d}-{precision}"
            shutil.rmtree(work, ignore_errors=True)
            work.mkdir(parents=True)
            onnx_path = export_onnx(model, work / "model.onnx", input_shape=self.input_shape, batch=self.batch)
            if precision == "int8":
                onnx_path = quantize_int8(onnx_path, work / "model_int8.onnx", self.calibration(shipped=shipped),
                                          method=self.method,
                                          symmetric_activations=SYMMETRIC_ACTIVATIONS.get(target.runtime, False))
            built = target.build(onnx_path, work, precision=precision)
            cache_key = cache_key if key is not None else (str(work),)
            self._built[cache_key] = built
        return replace(self._built[cache_key], settings=self.settings)

    def plain(self, model: nn.Module, *, runtime: str, precision: str) -> BuildResult:
        """The engine a user makes from `model` without us, the way each runtime documents it:
        exported with a fixed input (torch.onnx.export, no onnxsim), FP32 as exported or INT8 by
        the runtime's own tool at its defaults (calibration/plain.py, on PLAIN_IMAGES seeded
        training images, one per item as its examples feed them), loaded with the runtime's
        default settings; cached."""
        cache_key = (PLAIN, runtime, precision)
        if cache_key not in self._built:
            work = self.work / f"{len(self._built):04d}-{runtime}-plain-{precision}"
            shutil.rmtree(work, ignore_errors=True)
            work.mkdir(parents=True)
            artifact = export_onnx(model, work / "model.onnx", input_shape=self.input_shape, batch=self.batch,
                                   simplify=False)
            if precision == "int8":
                images = calibration_batches(self.data.train, count=min(PLAIN_IMAGES, len(self.data.train)),
                                             seed=self.seed, batch_size=1, workers=self.data.workers)
                artifact = plain_int8(runtime, artifact, work / "plain", images)
            self._built[cache_key] = self.target_for(runtime).build(artifact, work, precision=precision)
        return self._built[cache_key]

    def engine(self, model: nn.Module, entry: dict) -> BuildResult:
        """The engine a baseline entry names ({runtime, precision, plain}): a plain one, or ours."""
        if entry.get("plain"):
            return self.plain(model, runtime=entry["runtime"], precision=entry["precision"])
        return self.build(model, precision=entry["precision"], key=ORIGINAL)

    def forget(self, prefix: str) -> None:
        """Drop the cached builds whose key starts with `prefix` (and their folders)."""
        for key in [k for k in self._built if isinstance(k[0], str) and k[0].startswith(prefix) and k[0] != PLAIN]:
            shutil.rmtree(Path(self._built.pop(key).engine).parent, ignore_errors=True)

    def close(self) -> None:
        """Remove the build folders (scratch: nothing in the run directory points into them)."""
        shutil.rmtree(self.work, ignore_errors=True)


SCRATCH_PREFIX = "edgecompress-builds-"


def scratch_dir() -> Path:
    """A new build folder in the system's temp dir, named after this process (pid and start time);
    first the folders of runs whose process is gone (SIGKILL, power loss: `close` never ran) are
    removed, so killed runs do not pile up engines in /tmp."""
    tmp = Path(tempfile.gettempdir())
    for old in tmp.glob(f"{SCRATCH_PREFIX}*-*-*"):
        pid, start = old.name[len(SCRATCH_PREFIX):].split("-")[:2]
        if pid.isdigit() and not process_alive(int(pid), start):
            shutil.rmtree(old, ignore_errors=True)
    me = os.getpid()
    return Path(tempfile.mkdtemp(prefix=f"{SCRATCH_PREFIX}{me}-{process_start(me)}-", dir=tmp))


def export_onnx(model: nn.Module, dst: Path, *, input_shape: tuple[int, ...], batch: int | None,
                simplify: bool = True) -> Path:
    """to_onnx with the export failure turned into the user's message naming the operation; a
    detector pruned in unsplit form is exported with its C2f blocks joined again (pruning/detection)."""
    model = joined(model)
    try:
        with quiet_stdout():
            return to_onnx(model, dst, input_shape=input_shape, batch=batch, simplify=simplify)
    except (UserError, InternalError):
        raise
    except OSError:
        raise  # a full or unwritable disk is not the model's fault: the runner reports it as such
    except Exception as exc:
        raise UserError(f"the model cannot be exported to ONNX: {describe_export_failure(model, exc, input_shape)}",
                        "replace that operation with one ONNX supports (opset 17), or register a symbolic") from exc


def describe_export_failure(model: nn.Module, exc: Exception, input_shape: tuple[int, ...]) -> str:
    """The unsupported operation and, by exporting each leaf module alone, the layer that holds it."""
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
