"""What every stage reads: the request, the run directory, the data, the original model, the
target, the build chain and what earlier stages recorded. State only: measuring lives in
`pipeline/measure.py`, building in `pipeline/builder.py`."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from edgecompress.inputs.splits import DataSplits
from edgecompress.pipeline.builder import Builder
from edgecompress.pipeline.config import RunConfig
from edgecompress.pipeline.records import Records
from edgecompress.pipeline.rundir import RunDir
from edgecompress.pipeline.ui import UI
from edgecompress.profiles import Profile
from edgecompress.pruning.search import Budget
from edgecompress.targets import Target
from edgecompress.tasks import ClassificationTask, Task
from edgecompress.training.distributed import Coordinator


@dataclass
class Context:
    config: RunConfig
    rundir: RunDir
    ui: UI
    data: DataSplits
    original: nn.Module
    model_name: str
    target: Target
    builder: Builder
    device: torch.device = torch.device("cpu")    # --train-device: training work and PyTorch evaluation
    notes: list[str] = field(default_factory=list)
    results: Records = field(default_factory=Records)   # what each finished stage recorded
    dist: Coordinator | None = None               # the torchrun coordinator, when launched that way
    task: Task = field(default_factory=ClassificationTask)   # every score, fine-tuning loss and collate

    @property
    def profile(self) -> Profile:
        return self.target.profile

    @property
    def budget(self) -> Budget:
        """The user's budget, resolved once by the baseline stage (accuracy floor, latency budget)."""
        return Budget(**self.results.baseline.budget)

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.data.input_shape)

    def use_runtime(self, runtime: str) -> None:
        """From now on our engines are built and timed for `runtime` (the baseline chose it)."""
        if runtime != self.target.runtime:
            self.target = self.builder.use_runtime(runtime)

    def settings_for(self, precision: str) -> dict | None:
        """The runtime settings an engine of ours at `precision` ships with: the ones the baseline
        chose for that runtime and precision (each candidate had its own), else the probes' settings."""
        base = self.results.baseline
        candidates = (base.settings_choice or {}).get("candidates", {}) if base else {}
        chosen = candidates.get(f"{self.target.runtime} {precision}")
        return chosen["settings"] if chosen else self.builder.settings

    def note(self, text: str) -> None:
        if text not in self.notes:
            self.notes.append(text)
            self.ui.note(text)
