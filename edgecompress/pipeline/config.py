"""Everything one `compress` run was asked to do, validated once (the CLI only fills it in)."""
from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from edgecompress.errors import UserError

PRECISIONS = ("auto", "int8", "fp16", "fp32")
CALIBRATIONS = ("minmax", "entropy", "percentile")
ALLOCATIONS = ("cr", "uniform")
TASKS = ("auto", "classify", "detect")


@dataclass(frozen=True)
class RunConfig:
    target: str
    max_acc_drop: float | None = None          # absolute points of validation top-1
    latency_budget_ms: float | None = None
    model: str | None = None                   # None: the shipped ResNet-20
    weights: str | None = None
    data: str | None = None                    # None: fashion-mnist
    out: str | None = None                     # None: runs/<target>-<timestamp>
    resume: bool = False
    seed: int = 0
    profiles: tuple[str, ...] = ()
    device: str | None = None                  # ssh://user@host[:port]
    precision: str = "auto"
    calibration: str = "minmax"
    criterion: str = "permutation"             # the seed method, per-layer contribution rates (group=share)
    allocation: str | None = None              # None: the pruning engine's default
    reconstruct: bool = False
    min_search_interval: float = 0.01
    finetune_epochs: float = 1.0
    finetune_samples: int | None = 20000       # images per fine-tuning epoch (None: the whole train split)
    probe_finetune_steps: int = 100            # distillation steps inside each probe (its accuracy predicts the fine-tuned one)
    bn_batches: int = 16                       # training batches to re-estimate BatchNorm per probe
    batch_size: int = 128
    parity_images: int = 256
    temperature: float = 4.0
    alpha: float = 0.9
    lr: float = 0.01
    threads: int | None = None
    # the model's preprocessing (inputs/preprocess.py): a preset, and fields that override it
    preprocess: str | None = None              # None: the zoo checkpoint's, else the data's default
    input_size: str | None = None              # N or HxW
    resize: int | None = None                  # shorter side
    crop: int | None = None                    # centre crop
    mean: str | None = None                    # comma-separated, one per channel
    std: str | None = None
    augment: bool = False                      # random crop + flip while distilling
    train_device: str = "auto"                 # auto | cpu | cuda[:N]
    data_workers: int | None = None            # DataLoader workers for image files (None: cores - 1, at most 4)
    task: str = "auto"                         # auto (from the model) | classify | detect
    metric: str | None = None                  # module:function(run, batches) -> points, higher is better
    imgsz: int | None = None                   # detection input size (None: the checkpoint's)
    command: str = ""

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
            yield f"--min-search-interval {self.min_search_interval:g} is outside (0, 1)", "the default is 0.01"
        for flag, value in (("--finetune-epochs", self.finetune_epochs), ("--probe-finetune-steps", self.probe_finetune_steps),
                            ("--bn-batches", self.bn_batches), ("--batch-size", self.batch_size - 1)):
            if value < 0:
                yield f"{flag} {value} is negative", "give 0 or more"
        if self.precision not in PRECISIONS:
            yield f"unknown --precision {self.precision!r}", f"valid: {', '.join(PRECISIONS)}"
        if self.calibration not in CALIBRATIONS:
            yield f"unknown --calibration {self.calibration!r}", f"valid: {', '.join(CALIBRATIONS)}"
        if self.task not in TASKS:
            yield f"unknown --task {self.task!r}", f"valid: {', '.join(TASKS)}"
        if self.imgsz is not None and self.imgsz <= 0:
            yield f"--imgsz {self.imgsz} is not positive", "give the detector's square input size in pixels, e.g. 64"
        if self.allocation is not None and self.allocation not in ALLOCATIONS:
            yield f"unknown --allocation {self.allocation!r}", f"valid: {', '.join(ALLOCATIONS)}"
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

    def out_dir(self) -> Path:
        if self.out:
            return Path(self.out)
        return Path("runs") / f"{self.target}-{time.strftime('%Y%m%d-%H%M%S')}"

    def identity(self) -> dict:
        """The fields that decide the result: a resumed run must repeat them exactly."""
        skip = {"out", "resume", "command", "threads", "data_workers"}
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(self).items() if k not in skip}
