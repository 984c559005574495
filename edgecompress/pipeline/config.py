"""Everything one `compress` run was asked to do, validated once.

Each field that is a flag declares it here, once: default, help, metavar, argument group and the
registry its choices come from. cli.py builds the `compress` parser from these declarations, so a
default or a choice is written in one place; fields declared without `option()` are not flags.
"""
from __future__ import annotations

import importlib
import math
import time
from dataclasses import MISSING, asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, get_args

from edgecompress.errors import UserError

PREPROCESSING = "the model's preprocessing (declared once; used for evaluation, calibration and latency)"


@dataclass(frozen=True)
class Flag:
    """How a RunConfig field appears on the command line. "{choices}" in `help` becomes the names."""

    help: str
    metavar: str | None = None
    group: str | None = None                            # the title of its argument group
    choices: Callable[[], list[str]] | None = None      # the registry's names, read when asked
    from_flag: Callable[[Any], Any] = lambda value: value   # command-line value -> field value


def option(default: Any = MISSING, help: str = "", **flag: Any) -> Any:
    """A RunConfig field that is also a `compress` flag (MISSING default: a required flag)."""
    return field(default=default, metadata={"flag": Flag(help, **flag)})


def choices(name: str) -> list[str]:
    """The values the flag for field `name` accepts: --help shows and `_problems` checks the same."""
    return list(RunConfig.__dataclass_fields__[name].metadata["flag"].choices())


def _names(module: str, attr: str, *first: str) -> Callable[[], list[str]]:
    """The names `module.attr` holds (a Registry, a mapping, a Literal type), after `first`; read
    when asked, so `compress --help` imports no heavy package it does not need."""
    def names() -> list[str]:
        held = getattr(importlib.import_module(module), attr)
        return [*first, *(held.names() if hasattr(held, "names") else get_args(held) or held)]
    return names


def _targets() -> list[str]:
    from edgecompress.profiles import list_profiles
    return list_profiles()


_precisions = _names("edgecompress.profiles", "Precision", "auto")
_calibrations = _names("edgecompress.calibration", "METHODS")
_criteria = _names("edgecompress.pruning", "CRITERIA")
_allocations = _names("edgecompress.pruning", "ALLOCATIONS")
_tasks = _names("edgecompress.tasks.select", "TASKS", "auto")
_presets = _names("edgecompress.inputs.preprocess", "PRESETS")


@dataclass(frozen=True)
class RunConfig:
    target: str = option(help="target profile: {choices} (details: `compress targets`)", choices=_targets)
    max_acc_drop: float | None = option(None, "accuracy budget: absolute points of validation top-1")
    latency_budget_ms: float | None = option(None, "latency budget on the target, batch 1, ms")
    model: str | None = option(None, "zoo name, package.module:factory, or a file saved with torch.save(model) "
                               "(default: the shipped ResNet-20)")
    weights: str | None = option(None, "state dict for --model (the file is only read)")
    data: str | None = option(None, "fashion-mnist[:DIR] (default), imagefolder:DIR, or package.module:function")
    out: str | None = option(None, "run directory (default runs/<target>-<timestamp>)")
    resume: bool = option(False, "continue the run in --out at its first unfinished step")
    seed: int = option(0, "random seed of the run")
    profiles: tuple[str, ...] = option((), "extra directory of profile YAMLs (repeatable)", metavar="DIR")
    device: str | None = option(None, "measure on a remote device: ssh://user@host[:port]")
    precision: str = option("auto", "{choices} (auto: fastest within the budget)", choices=_precisions)
    calibration: str = option("minmax", "INT8 calibration: {choices}", choices=_calibrations)
    # the seed method, per-layer contribution rates (group=share)
    criterion: str | None = option(None, "channel importance criterion: NAME or NAME:OPTION=VALUE,... "
                                   "(e.g. permutation:group=share); NAME: {choices} (default: the pruning "
                                   "engine's)", choices=_criteria)
    allocation: str | None = option(None, "how one knob becomes per-layer keep counts: {choices} "
                                    "(default: the pruning engine's)", choices=_allocations)
    reconstruct: bool = option(False, "least-squares reconstruction of the next layer after pruning")
    min_search_interval: float = option(0.01, "stop the search below this cr interval")
    finetune_epochs: float = option(1.0, "distillation epochs after the search (at least a probe's "
                                          "steps; 0: none)")
    # None: the whole train split (the flag's 0)
    finetune_samples: int | None = option(20000, "training images per fine-tuning epoch (0: all)",
                                          from_flag=lambda n: n or None)
    # its accuracy predicts the fine-tuned one
    probe_finetune_steps: int = option(100, "distillation steps inside each search probe")
    bn_batches: int = option(16, "training batches to recalibrate BatchNorm per probe")
    batch_size: int = option(128, "batch size for fine-tuning and BN recalibration")
    parity_images: int = 256                   # not a flag: images the exported artifact is compared on
    temperature: float = option(4.0, "distillation temperature")
    alpha: float = option(0.9, "weight of the distillation (soft) loss")
    lr: float | None = option(None, "fine-tuning learning rate (cosine schedule); default: the task's, "
                                    "0.01 for a classifier, 0.001 for a detector")
    threads: int | None = option(None, "PyTorch threads (default: the CPU cores this process may use)")
    # the model's preprocessing (inputs/preprocess.py): a preset, and fields that override it
    preprocess: str | None = option(
        None, "{choices}: imagenet = resize 256, crop 224, ImageNet mean/std; folder-stats = the training "
        "folder's own mean/std. Default: the zoo checkpoint's declaration, else fashion-mnist for it, "
        "folder-stats for an image folder, none for a function's data. The flags below override the "
        "preset's fields", metavar="PRESET", group=PREPROCESSING, choices=_presets)
    input_size: str | None = option(None, "the model's input size (images are resized to it last)",
                                    metavar="N|HxW", group=PREPROCESSING)
    resize: int | None = option(None, "resize the shorter side to N pixels (aspect kept)", metavar="N",
                                group=PREPROCESSING)
    crop: int | None = option(None, "centre crop NxN after --resize", metavar="N", group=PREPROCESSING)
    mean: str | None = option(None, "per-channel mean of images scaled to [0, 1]", metavar="M[,M,M]",
                              group=PREPROCESSING)
    std: str | None = option(None, "per-channel std of images scaled to [0, 1]", metavar="S[,S,S]",
                             group=PREPROCESSING)
    augment: bool = option(False, "random crop + horizontal flip while distilling", group=PREPROCESSING)
    train_device: str = option("auto", "auto | cpu | cuda[:N]: where pruning's training work and evaluation "
                               "run (auto: CUDA when present, mixed precision there); latency is always "
                               "measured on the target", metavar="DEVICE", group=PREPROCESSING)
    data_workers: int | None = option(None, "processes decoding image files (default: cores - 1, at most 4; "
                                      "0: none)", metavar="N", group=PREPROCESSING)
    task: str = option("auto", "{choices} (auto: from the model)", choices=_tasks)
    metric: str | None = option(None, "the accuracy promise's score: FUNCTION(run, batches) -> points, "
                                "higher is better", metavar="MODULE:FUNCTION")
    imgsz: int | None = option(None, "detection input size in pixels (default: the checkpoint's)")
    command: str = ""                          # not a flag: the command line, as the CLI received it

    def __post_init__(self) -> None:
        problems = list(self._problems())
        if problems:
            cause, hint = problems[0]
            raise UserError(cause, hint)

    def _problems(self):
        if self.max_acc_drop is None and self.latency_budget_ms is None:
            yield "no budget given", "add --max-acc-drop POINTS and/or --latency-budget-ms MS"
        if self.max_acc_drop is not None and not (0 <= self.max_acc_drop <= 100 and math.isfinite(self.max_acc_drop)):
            yield (f"--max-acc-drop {self.max_acc_drop:g} is outside 0..100",
                   "it is in absolute percentage points, e.g. --max-acc-drop 1 for one point")
        if self.latency_budget_ms is not None and not (self.latency_budget_ms > 0 and math.isfinite(self.latency_budget_ms)):
            yield f"--latency-budget-ms {self.latency_budget_ms:g} is not positive", "give milliseconds > 0"
        if not 0 < self.min_search_interval < 1:
            default = RunConfig.__dataclass_fields__["min_search_interval"].default
            yield f"--min-search-interval {self.min_search_interval:g} is outside (0, 1)", f"the default is {default:g}"
        for flag, value in (("--finetune-epochs", self.finetune_epochs), ("--probe-finetune-steps", self.probe_finetune_steps),
                            ("--bn-batches", self.bn_batches), ("--batch-size", self.batch_size - 1)):
            if value < 0:
                yield f"{flag} {value} is negative", "give 0 or more"
        # --target is checked where profiles load (--profiles adds some), --criterion by parse_spec
        # (NAME:OPTIONS) and --preprocess by from_flags, below, against the same registries
        for name in ("precision", "calibration", "task", "allocation"):
            value, valid = getattr(self, name), choices(name)
            if value is not None and value not in valid:
                yield f"unknown --{name} {value!r}", f"valid: {', '.join(valid)}"
        if self.imgsz is not None and self.imgsz <= 0:
            yield f"--imgsz {self.imgsz} is not positive", "give the detector's square input size in pixels, e.g. 64"
        from edgecompress.training.device import HINT, check_spec
        if check_spec(self.train_device):
            yield check_spec(self.train_device), HINT
        if self.data_workers is not None and self.data_workers < 0:
            yield f"--data-workers {self.data_workers} is negative", "give 0 (read in this process) or more"
        try:
            self.declared_preprocess()
        except UserError as exc:
            yield exc.cause, exc.hint
        from edgecompress.pruning.criteria import parse_spec
        try:
            if self.criterion is not None:
                parse_spec(self.criterion)
        except UserError as exc:
            yield f"--criterion: {exc.cause}", exc.hint

    def declared_preprocess(self):
        """The Preprocess the flags declare, or None when none was given."""
        from edgecompress.inputs.preprocess import from_flags
        return from_flags(preset=self.preprocess, input_size=self.input_size, resize=self.resize,
                          crop=self.crop, mean=self.mean, std=self.std)

    def accuracy_floor(self, baseline_accuracy: float) -> float | None:
        """The validation accuracy what ships must keep (`--max-acc-drop` below the original), or None."""
        return None if self.max_acc_drop is None else baseline_accuracy - self.max_acc_drop

    def finetune_lr(self, task) -> float:
        """`--lr`, else the task's own fine-tuning learning rate."""
        return self.lr if self.lr is not None else task.finetune_lr

    def out_dir(self) -> Path:
        if self.out:
            return Path(self.out)
        return Path("runs") / f"{self.target}-{time.strftime('%Y%m%d-%H%M%S')}"

    def identity(self) -> dict:
        """The fields that decide the result: a resumed run must repeat them exactly."""
        skip = {"out", "resume", "command", "threads", "data_workers"}
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(self).items() if k not in skip}
