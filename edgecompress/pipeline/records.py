"""What each finished stage recorded, typed: `ctx.results.baseline.accuracy`, not a dict read by
string key. A stage returns its data; the runner turns it into the stage's record (an unknown or
missing field is an internal error, found at once), keeps it in the manifest as JSON (so a resumed
run restores it) and on `ctx.results`."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any

from edgecompress.errors import InternalError


@dataclass
class Record:
    @classmethod
    def from_dict(cls, data: dict) -> "Record":
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise InternalError(f"{cls.__name__} has no field(s) {', '.join(unknown)}")
        try:
            return cls(**data)
        except TypeError as exc:   # a field the stage did not record
            raise InternalError(f"{cls.__name__}: {exc}") from exc

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class BaselineRecord(Record):
    accuracy: float                 # validation top-1 of the original, percent
    test_accuracy: float | None
    flops: int                      # multiply-accumulates of one image
    params: int
    latency_ms: float               # the original at `precision`, the scale every later latency is put on
    latency_method: str             # "measured" | "estimated"
    precision: str                  # the float precision the baseline is timed at
    widths: dict[str, int]
    yardstick: str                  # the engine name (in `engines`) of the user's best plain engine
    engines: dict[str, dict]        # name -> tool, runtime, precision, plain, latency_ms, ratio to the float engine, accuracy
    timing: dict
    budget: dict = field(default_factory=dict)   # {min_accuracy, max_latency_ms}: the one Budget (Context.budget)
    runtime: str = ""               # the runtime our engines are built for (the fastest the device offers)
    probe_precision: str = ""       # the precision our engines are searched at (the faster of float and INT8)
    settings: dict | None = None    # the runtime settings our engines ship with (None: the runtime's defaults)
    settings_choice: dict = field(default_factory=dict)   # how they were chosen: candidates' ratios to the defaults
    # the original's score after its BatchNorm statistics are recomputed on training images; far
    # below `accuracy` (a model trained under heavy augmentation): statistics stay frozen throughout
    bn_recalibrated_accuracy: float | None = None
    bn_frozen: bool = False


@dataclass
class PruneRecord(Record):
    cr: float                       # the knob of what ships (1.0: the unpruned model)
    chosen: dict
    met: bool
    missed: dict
    moved_from: float | None
    notes: list[str]
    alternative: dict | None
    budget: dict
    probes: list[dict]
    probes_restored: int
    allocation: str
    criterion: str
    layers: list[dict]
    mode: str                       # "cost" | "unpruned"
    unpruned: bool                  # the unpruned model ships
    blocks: list[dict]
    blocks_removed: list[str]
    unprunable: list[dict]
    decision: dict
    probe_precision: str
    channel_multiple: int
    latency_table: list[dict]
    table_timing: dict
    removal_order: list[dict]


@dataclass
class FinetuneRecord(Record):
    accuracy_before: float
    accuracy_after: float
    kept: str                       # "finetuned" | "searched" | "unpruned"
    steps: int
    world_size: int
    images_per_epoch: int | None = None
    epochs: float | None = None
    temperature: float | None = None
    alpha: float | None = None
    lr: float | None = None
    batch_size: int | None = None
    loss_first: float | None = None
    loss_last: float | None = None


@dataclass
class ExportRecord(Record):
    parity_max_abs_diff: float
    parity_images: int


@dataclass
class CalibrateRecord(Record):
    precision: str
    precisions: list[dict]
    budget_accuracy: float
    keep_float: list[str]
    backend: str
    runtime: str = ""               # the runtime it ships on (calibrate.runtime_for; "": the baseline's)


@dataclass
class BuildRecord(Record):
    precision: str
    runtime: str
    built_here: bool
    notes: list[str]
    onnx: str                       # relative to the run directory
    engine: str
    files: dict[str, str]


@dataclass
class VerifyRecord(Record):
    result: dict
    timing: dict
    speedups: dict
    steps: list[dict] = field(default_factory=list)   # where the speed came from (verify.speed_steps)
    settings: dict | None = None    # the runtime settings the engine was timed with: deploy.json's


RECORDS: dict[str, type[Record]] = {"baseline": BaselineRecord, "prune": PruneRecord, "finetune": FinetuneRecord,
                                    "export": ExportRecord, "calibrate": CalibrateRecord, "build": BuildRecord,
                                    "verify": VerifyRecord}


@dataclass
class Records:
    """The record of every stage finished so far (None: not yet)."""
    baseline: BaselineRecord | None = None
    prune: PruneRecord | None = None
    finetune: FinetuneRecord | None = None
    export: ExportRecord | None = None
    calibrate: CalibrateRecord | None = None
    build: BuildRecord | None = None
    verify: VerifyRecord | None = None
    extra: dict[str, Any] = field(default_factory=dict)   # stages outside RECORDS (tests' own stages)

    def set(self, stage: str, data: dict | Record) -> Record | dict:
        """Keep what `stage` recorded, typed; returns the record."""
        if stage not in RECORDS:
            self.extra[stage] = data
            return data
        record = data if isinstance(data, Record) else RECORDS[stage].from_dict(data)
        setattr(self, stage, record)
        return record
