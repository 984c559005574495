"""Phase `search` of benchmarks/compare_criteria.py: one configuration (base model x criterion x
allocation) compressed with the pipeline's own pieces and the same budgets for every criterion.

    PruningPlan.build(criterion, allocation)           importance once
    Searcher (pipeline/search.py), accuracy budget      bisection on the knob (cr or keep ratio)
      probe: plan.prune(knob) -> BN recalibration on training batches -> distill(probe_steps)
             -> validation accuracy
    chosen probe -> distill(finetune_steps) -> validation and test accuracy -> model.pt

The probes carry MACs as their "latency" (ProbeResult.latency_ms holds MMACs): this phase runs on
a GPU machine, where the x86 target cannot be measured. Under an accuracy budget alone the searcher
ships the "fastest" accepted probe, i.e. the one with the fewest MACs (both allocations are
monotone, so that is the smallest accepted knob, plus the pipeline's same-step move when two knobs
give identical widths). Measured OpenVINO latency of the chosen models comes in phase `latency`.

Everything a configuration writes lives in its own folder; the search state is checkpointed after
every probe (Searcher's replay), so a run cut off by `deadline` resumes where it stopped.
"""
from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import TensorDataset

from _common import Tensors, load_tensors, macs_params, train_batches


@dataclass(frozen=True)
class Settings:
    """Budgets and sizes shared by every configuration of one benchmark run."""

    data_root: str | None = None
    device: str = "cpu"
    max_acc_drop: float = 1.0           # points of validation top-1
    min_interval: float = 0.01          # the pipeline's --min-search-interval default
    probe_steps: int = 100              # short KD per probe
    finetune_steps: int = 1500          # final KD of the chosen model
    multiple: int = 8                   # keep counts rounded up to the x86-cpu profile's channel_multiple
    min_channels: int = 8
    plan_batches: int = 4               # 4 x 128 training images for the importance pass (pipeline's)
    bn_batches: int = 16                # the pipeline's --bn-batches default
    batch_size: int = 128
    seed: int = 0
    train_images: int | None = None     # None: the whole split (quick runs keep the first N)
    val_images: int | None = None
    test_images: int | None = None
    quick_steps: int = 60               # tiny-resnet's from-scratch training in quick runs
    threads: int | None = None
    deadline: float | None = None       # time.time() after which no new probe starts


class DeadlineReached(Exception):
    """The run's deadline passed; the finished probes are checkpointed, a rerun resumes."""


def config_dir(out: Path, model: str, criterion: str, allocation: str) -> Path:
    safe = criterion.replace(":", "+").replace("=", "-").replace(",", "+")
    return out / model / f"{safe}__{allocation}"


def write_json(path: Path, data) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2))
    tmp.replace(path)


_DATA: dict = {}


def data_on(settings: Settings) -> Tensors:
    """The splits on the run's device, loaded once per process."""
    key = (settings.data_root, settings.device, settings.train_images, settings.val_images, settings.test_images)
    if key not in _DATA:
        _DATA[key] = load_tensors(settings.data_root, train=settings.train_images, val=settings.val_images,
                                  test=settings.test_images).to(settings.device)
    return _DATA[key]


def accuracy_on(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    from edgecompress.training.evaluation import model_accuracy, tensor_batches
    return model_accuracy(model, tensor_batches(x, y))


class Prober:
    """evaluate(knob) for the Searcher: prune -> BN recalibration -> short KD -> val accuracy."""

    def __init__(self, plan, teacher: nn.Module, data: Tensors, settings: Settings) -> None:
        self.plan, self.teacher, self.data, self.s = plan, teacher, data, settings
        self.bn_batches = train_batches(data.train_x, count=settings.bn_batches, batch_size=settings.batch_size,
                                        seed=settings.seed + 1)
        self.train_set = TensorDataset(data.train_x, data.train_y)   # on the device: no copy per step
        self.models: dict[float, nn.Module] = {}

    def model_for(self, knob: float) -> nn.Module:
        """The probe's model; rebuilt with the same seeds when it is not in memory (resumed run)."""
        if knob not in self.models:
            from edgecompress.training.distill import DistillConfig, distill
            from edgecompress.pipeline.stages.prune import probe_seed
            from edgecompress.pruning import recalibrate_bn
            model = self.plan.prune(knob, multiple=self.s.multiple, min_channels=self.s.min_channels)
            recalibrate_bn(model, self.bn_batches)
            distill(model, self.teacher, self.train_set, steps=self.s.probe_steps,
                    config=DistillConfig(batch_size=self.s.batch_size), seed=probe_seed(self.s.seed, repr(knob)))
            self.models[knob] = model.eval()
        return self.models[knob]

    def evaluate(self, knob: float):
        from edgecompress.pruning.search import ProbeResult
        if self.s.deadline is not None and time.time() > self.s.deadline:
            raise DeadlineReached()
        model = self.model_for(knob)
        macs, params = macs_params(model)
        widths = [int(m.weight.shape[0]) for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
        return ProbeResult(cr=knob, accuracy=accuracy_on(model, self.data.val_x, self.data.val_y),
                           latency_ms=macs / 1e6, flops=macs, params=params, widths=widths)


def prepare_base(out: Path, model_name: str, settings: Settings, *, base_from: Path | None = None) -> dict:
    """original.pt and baseline.json of one base model (once; every configuration reads them),
    copied from `base_from` when that results folder has them."""
    from _common import base_model
    folder = out / model_name
    if (folder / "baseline.json").is_file():
        return json.loads((folder / "baseline.json").read_text())
    folder.mkdir(parents=True, exist_ok=True)
    source = None if base_from is None else Path(base_from) / model_name
    if source is not None and (source / "baseline.json").is_file():
        shutil.copyfile(source / "original.pt", folder / "original.pt")
        shutil.copyfile(source / "baseline.json", folder / "baseline.json")   # last: it marks the base done
        return json.loads((folder / "baseline.json").read_text())
    data = data_on(settings)
    model, meta = base_model(model_name, data, quick_steps=settings.quick_steps)
    model = model.to(settings.device).eval()
    macs, params = macs_params(model)
    base = {"model": model_name, "val_accuracy": accuracy_on(model, data.val_x, data.val_y),
            "test_accuracy": accuracy_on(model, data.test_x, data.test_y), "macs": macs, "params": params,
            "checkpoint": {k: v for k, v in meta.items() if isinstance(v, (int, float, str))}}
    torch.save(model.cpu(), folder / "original.pt")
    write_json(folder / "baseline.json", base)
    return base


def run_config(out: str, model_name: str, criterion: str, allocation: str, settings: Settings) -> dict:
    """Compress one configuration (or return its finished result). Safe to call in a subprocess."""
    folder = config_dir(Path(out), model_name, criterion, allocation)
    if (folder / "result.json").is_file():
        return json.loads((folder / "result.json").read_text())
    if settings.deadline is not None and time.time() > settings.deadline:
        return {"model": model_name, "criterion": criterion, "allocation": allocation, "status": "incomplete"}
    if settings.threads:
        torch.set_num_threads(settings.threads)
    folder.mkdir(parents=True, exist_ok=True)
    base = json.loads((Path(out) / model_name / "baseline.json").read_text())
    teacher = torch.load(Path(out) / model_name / "original.pt", weights_only=False).to(settings.device).eval()
    try:
        result = _compress(folder, teacher, base, criterion, allocation, settings)
    except DeadlineReached:
        return {"model": model_name, "criterion": criterion, "allocation": allocation, "status": "incomplete"}
    write_json(folder / "result.json", result)
    return result


def _search(folder: Path, prober: Prober, base: dict, settings: Settings):
    from edgecompress.pruning.search import Budget, Searcher
    state_file = folder / "state.json"
    state = json.loads(state_file.read_text()) if state_file.is_file() else None
    searcher = Searcher(prober.evaluate, budget=Budget(min_accuracy=base["val_accuracy"] - settings.max_acc_drop),
                        min_interval=settings.min_interval, same_latency_rel=0.0, state=state,
                        on_probe=lambda s: write_json(state_file, s))
    return searcher, searcher.run()


def _compress(folder: Path, teacher: nn.Module, base: dict, criterion: str, allocation: str,
              settings: Settings) -> dict:
    from edgecompress.training.distill import DistillConfig, distill
    from edgecompress.pruning import PruningPlan
    data = data_on(settings)
    t0 = time.perf_counter()
    plan_batches = train_batches(data.train_x, count=settings.plan_batches, batch_size=settings.batch_size,
                                 seed=settings.seed)
    plan = PruningPlan.build(teacher, plan_batches, criterion=criterion, allocation=allocation)   # a spec: name:opts
    t_plan = time.perf_counter()
    prober = Prober(plan, teacher, data, settings)
    searcher, outcome = _search(folder, prober, base, settings)
    t_search = time.perf_counter()
    if settings.deadline is not None and time.time() > settings.deadline:
        raise DeadlineReached()
    model = prober.model_for(outcome.chosen.cr)
    distill(model, teacher, prober.train_set, steps=settings.finetune_steps,
            config=DistillConfig(batch_size=settings.batch_size), seed=settings.seed)
    t_end = time.perf_counter()
    torch.save(model.cpu(), folder / "model.pt")
    model.to(settings.device)
    macs, params = macs_params(model)
    return {"model": base["model"], "criterion": criterion, "allocation": allocation, "status": "done",
            "knob": outcome.chosen.cr, "moved_from": outcome.moved_from, "met": outcome.met,
            "probe_val_accuracy": outcome.chosen.accuracy,
            "val_accuracy": accuracy_on(model, data.val_x, data.val_y),
            "test_accuracy": accuracy_on(model, data.test_x, data.test_y),
            "macs": macs, "params": params, "macs_ratio": macs / base["macs"], "params_ratio": params / base["params"],
            "probes": len(searcher.probes), "probes_this_run": searcher.evaluated,
            "probe_list": [{"knob": p.cr, "val_accuracy": p.accuracy, "macs": p.flops, "params": p.params,
                            "accepted": p.accepted} for p in searcher.probes],
            "wall_s": round(t_end - t0, 2), "importance_s": round(t_plan - t0, 2),
            "search_s": round(t_search - t_plan, 2), "finetune_s": round(t_end - t_search, 2),
            "resumed": searcher.restored > 0, "device": _device_name(settings.device), "pid": os.getpid()}


def _device_name(device: str) -> str:
    if str(device).startswith("cuda") and torch.cuda.is_available():
        return torch.cuda.get_device_name(torch.device(device))
    from _common import machine
    return machine()["cpu"]


def settings_dict(settings: Settings) -> dict:
    return {k: v for k, v in asdict(settings).items() if k not in ("deadline", "threads")}
