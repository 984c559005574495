"""torchrun support: rank 0 runs the pipeline; the other ranks join only the fine-tuning (a leaf:
the ranks' work itself is `pipeline/stages/finetune.py`'s `worker`).

    torchrun --nproc_per_node=2 -m edgecompress.cli --target x86-cpu --max-acc-drop 1

The search, export and build are single-process work (they measure latency, which other
processes on the same cores would disturb), so ranks > 0 wait for one message from rank 0: either
the student to distill (then they train it with DDP on their shard and exit) or "nothing to do".
Only rank 0 opens the run directory; the others never write.

Messages go over gloo (CPU objects, a generous timeout); with `--train-device cuda` the DDP
gradients go over a second group on NCCL (`training_group`), each rank on its LOCAL_RANK GPU.
"""
from __future__ import annotations

import datetime
import io
import os

import torch

# The search before fine-tuning takes minutes; gloo's default 30-minute timeout is kept generous.
WAIT = datetime.timedelta(hours=12)


def launched_by_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


_GROUPS: dict = {}


def training_group(device: torch.device):
    """The process group DDP averages gradients over: NCCL for CUDA tensors, else the default
    (gloo). Collective: every rank calls it, in the same order (the first distill of each)."""
    if device.type != "cuda":
        return None
    if "nccl" not in _GROUPS:
        import torch.distributed as dist
        _GROUPS["nccl"] = dist.new_group(backend="nccl")
    return _GROUPS["nccl"]


class Coordinator:
    def __init__(self) -> None:
        import torch.distributed as dist
        self.dist = dist
        if not dist.is_initialized():
            dist.init_process_group("gloo", timeout=WAIT)
        self.rank, self.world_size = dist.get_rank(), dist.get_world_size()
        self._sent = False

    def _send(self, message: dict) -> None:
        self._sent = True
        self.dist.broadcast_object_list([message], src=0)

    def start_finetune(self, student: torch.nn.Module) -> None:
        """Rank 0: give the student (whole module, pickled) to the other ranks."""
        buf = io.BytesIO()
        torch.save(student, buf)
        self._send({"cmd": "finetune", "student": buf.getvalue()})

    def finish(self) -> None:
        """Rank 0, at the end (also after an error): release ranks still waiting."""
        if not self._sent:
            self._send({"cmd": "exit"})
        self.dist.destroy_process_group()

    def wait(self) -> dict:
        """Ranks > 0: the one message from rank 0."""
        box = [None]
        self.dist.broadcast_object_list(box, src=0)
        return box[0]
