"""Shared pieces of benchmarks/compare_criteria.py and benchmarks/seed_claims.py: data as tensors,
seeded training batches, base models, a machine description, Markdown tables, and the writer that
replaces ONE "## " section of docs/benchmarks.md (each benchmark owns its sections only)."""
from __future__ import annotations

import copy
import datetime
import os
import platform
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch import nn

REPO = Path(__file__).resolve().parent.parent
DOCS = REPO / "docs" / "benchmarks.md"


@dataclass
class Tensors:
    """Fashion-MNIST splits as in-memory tensors (the splits of edgecompress.zoo.fashion_mnist)."""

    train_x: torch.Tensor
    train_y: torch.Tensor
    val_x: torch.Tensor
    val_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor

    def to(self, device: str | torch.device) -> "Tensors":
        return Tensors(*(getattr(self, k).to(device) for k in self.__dataclass_fields__))


def load_tensors(root: str | None = None, *, train: int | None = None, val: int | None = None,
                 test: int | None = None) -> Tensors:
    """`fashion_mnist(root)` as tensors; `train/val/test` keep the first N of a split (quick runs)."""
    from edgecompress.inputs.data import fashion_mnist
    d = fashion_mnist(root)
    parts = []
    for ds, n in ((d.train, train), (d.val, val), (d.test, test)):
        x, y = ds.tensors
        parts += [x[:n], y[:n]]
    return Tensors(*parts)


def train_batches(x: torch.Tensor, *, count: int, batch_size: int, seed: int) -> list[torch.Tensor]:
    """`count` batches of images drawn without replacement, fixed by `seed` (as the pipeline draws)."""
    want = min(len(x), count * batch_size)
    idx = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))[:want]
    picked = x[idx.to(x.device)]
    return [picked[i:i + batch_size] for i in range(0, want, batch_size)]


def train_steps(model: nn.Module, data: Tensors, *, steps: int, seed: int = 0, lr: float = 0.05) -> nn.Module:
    """A few SGD steps from scratch: gives `--quick` runs a tiny model that is better than chance."""
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    model.train()
    for _ in range(steps):
        idx = torch.randint(len(data.train_x), (64,), generator=gen).to(data.train_x.device)
        loss = nn.functional.cross_entropy(model(data.train_x[idx]), data.train_y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


def without_blocks(original: nn.Module, names: list[str], bn: list, score: Callable[[nn.Module], float]) -> nn.Module:
    """A copy of `original` with the blocks `names` replaced by identity and BatchNorm recalibrated
    on `bn`, as a search probe starts; the scores before and after printed."""
    from edgecompress.training.evaluation import recalibrate_bn
    print("original", score(original), flush=True)
    pruned = copy.deepcopy(original)
    for name in names:
        pruned.set_submodule(name, nn.Identity())
    recalibrate_bn(pruned, bn)
    print(f"removed {', '.join(names)}, BatchNorm recalibrated", score(pruned), flush=True)
    return pruned


def base_model(name: str, data: Tensors, *, quick_steps: int = 60) -> tuple[nn.Module, dict]:
    """A shipped checkpoint (`pretrained(name)`), or for `tiny-resnet` (no checkpoint) a seeded
    model trained for `quick_steps` steps."""
    from edgecompress.zoo import create_model, pretrained
    if name == "tiny-resnet":
        torch.manual_seed(0)
        model = train_steps(create_model(name).to(data.train_x.device), data, steps=quick_steps)
        return model.cpu(), {"trained": f"{quick_steps} SGD steps (quick mode)"}
    return pretrained(name)


def macs_params(model: nn.Module, input_shape=(1, 28, 28)) -> tuple[int, int]:
    """MACs of one image and parameters, counted on a CPU copy (the counter feeds CPU zeros)."""
    import copy

    from edgecompress.training.evaluation import macs_and_params
    return macs_and_params(copy.deepcopy(model).cpu(), tuple(input_shape))


def machine() -> dict:
    """CPU model and cores (lscpu), OS, versions and date: the provenance of every figure."""
    info = {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
            "python": platform.python_version(), "torch": torch.__version__,
            "date": datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")}
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        out = ""
    fields = dict(line.split(":", 1) for line in out.splitlines() if ":" in line)
    fields = {k.strip(): v.strip() for k, v in fields.items()}
    info["cpu"] = fields.get("Model name", info["cpu"])
    info["cores"] = int(fields.get("CPU(s)", info["cores"] or 0))
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    try:
        import openvino
        info["openvino"] = openvino.__version__ if hasattr(openvino, "__version__") else openvino.get_version()
    except ImportError:
        pass
    return info


def describe_machine(info: dict) -> str:
    gpu = f", GPU {info['gpu']}" if info.get("gpu") else ""
    return f"{info['cpu']}, {info['cores']} logical CPUs{gpu}; torch {info['torch']}; {info['date']}"


def md_table(rows: list[dict], columns: list[tuple[str, Callable[[dict], object]]]) -> str:
    """A Markdown table: one column per (header, getter); None prints as an empty cell."""
    lines = ["| " + " | ".join(h for h, _ in columns) + " |", "|" + "---|" * len(columns)]
    for r in rows:
        cells = []
        for _, get in columns:
            v = get(r)
            cells.append("" if v is None else f"{v:.2f}" if isinstance(v, float) else str(v))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def replace_section(path: Path, heading: str, body: str) -> None:
    """Replace the text under `## heading` (up to the next `## `) with `body`; append the section
    when absent. Other sections are left byte for byte as they were."""
    path = Path(path)
    text = path.read_text() if path.is_file() else "# Benchmarks\n"
    lines = text.splitlines(keepends=True)
    title = f"## {heading}"
    start = next((i for i, line in enumerate(lines) if line.rstrip() == title), None)
    block = f"{title}\n\n{body.strip()}\n\n"
    if start is None:
        new = text.rstrip("\n") + "\n\n" + block
    else:
        end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines))
        new = "".join(lines[:start]) + block + "".join(lines[end:])
    tmp = path.with_suffix(".tmp")
    tmp.write_text(new.rstrip("\n") + "\n")
    tmp.replace(path)


READING_MARKER = "<!-- kept on rewrite: the reading below is written by hand -->"


def kept_reading(path: Path, heading: str) -> str:
    """The hand-written part of a section (from READING_MARKER to the section's end), so that a
    rerun that regenerates the tables keeps it; "" when there is none."""
    path = Path(path)
    if not path.is_file():
        return ""
    text, title = path.read_text(), f"## {heading}"
    start = text.find("\n" + title + "\n")
    if start < 0:
        return ""
    end = text.find("\n## ", start + len(title) + 2)
    section = text[start:end if end >= 0 else len(text)]
    at = section.find(READING_MARKER)
    return section[at:].strip() if at >= 0 else ""


def spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    """Spearman's rho of two score vectors (nan when one is constant)."""
    from scipy.stats import spearmanr
    if len(a) < 2:
        return float("nan")
    return float(spearmanr(a.double().cpu().numpy(), b.double().cpu().numpy()).statistic)


def write_result(path: Path, result: dict) -> None:
    """A benchmark's result JSON (what benchmarks/suite.py wraps and renders), folders made."""
    import json
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=1) + "\n")


def write_ways(found: dict, path: Path | None, *, key: str, label: str) -> None:
    """Print and write (`path`) one ratio per way of timing a pair: the median over its comparisons
    of each end (`over_layouts`) beside every comparison's ratio (`found`: way -> [Ratio])."""
    import sys
    from edgecompress.targets.timing import over_layouts
    rows = [{key: way, f"{label} (median)": over_layouts(rs).to_dict(), "each": [r.to_dict() for r in rs]}
            for way, rs in found.items()]
    for row in rows:
        print(row[key], row[f"{label} (median)"])
    if path:
        write_result(path, {"command": " ".join(sys.argv), "rows": rows})
