"""Reading datasets: DataLoaders with worker processes for files, seeded batches, labels.

Nothing is materialised: image folders decode one file per item in the loader's workers, and only
the small embedded default lives in memory (`in_memory`).
"""
from __future__ import annotations

import os
from functools import partial
from typing import Callable

import torch
from torch.utils.data import DataLoader, Dataset, Subset, TensorDataset, default_collate

from edgecompress.errors import UserError

MAX_WORKERS = 4


def usable_cores() -> int:
    """The cores this process may run on (its affinity mask, else the machine's count)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def default_workers() -> int:
    return max(1, min(MAX_WORKERS, usable_cores() - 1))


WORKER_START = "forkserver"


def in_memory(ds: Dataset) -> bool:
    """Items are cheap to get (no decoding): read in this process, no workers."""
    while isinstance(ds, Subset):
        ds = ds.dataset
    return isinstance(ds, TensorDataset) or bool(getattr(ds, "in_memory", False))


def loader(ds: Dataset, *, batch_size: int, workers: int = 0, shuffle: bool = False, seed: int = 0,
           sampler=None, drop_last: bool = False, pin_memory: bool = False,
           collate: Callable | None = None) -> DataLoader:
    """A DataLoader over `ds`: worker processes for files, none for tensors in memory.
    Shuffled order is fixed by `seed`; `pin_memory` (CUDA training) makes `non_blocking` copies real.
    `collate`: how items become a batch (None: torch's default; a detection set's targets differ in
    length per image, so it brings its own, a module-level function that workers can unpickle).

    Workers start from a fork server, not by forking this process: after the latency table has
    built and timed a dozen OpenVINO engines, a worker forked from this (threaded) process crashed
    the run with SIGSEGV (reproduced on a 224x224 image folder; with 0 workers, or with the table
    reused so nothing was built first, the same run finished)."""
    workers = 0 if in_memory(ds) else workers
    gen = torch.Generator().manual_seed(seed) if shuffle and sampler is None else None
    return _Loader(_PassUserErrors(ds), batch_size=batch_size, shuffle=shuffle and sampler is None,
                   generator=gen, sampler=sampler, drop_last=drop_last, num_workers=workers,
                   persistent_workers=False, prefetch_factor=2 if workers else None, pin_memory=pin_memory,
                   multiprocessing_context=WORKER_START if workers else None,
                   collate_fn=_collate if collate is None else partial(_collate, collate=collate))


class _Failed:
    """A UserError raised in a worker, carried to the main process as data: torch re-raises a
    worker's exception as `type(exc)(formatted traceback)`, which loses the hint and prints
    "Caught UserError in DataLoader worker process 0. Original Traceback ..." to the user."""

    def __init__(self, exc: UserError) -> None:
        self.cause, self.hint = exc.cause, exc.hint


class _PassUserErrors(Dataset):
    """`ds` with a UserError of one item returned as a `_Failed` (module level: workers get it pickled)."""

    def __init__(self, ds: Dataset) -> None:
        self.ds = ds

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, i):
        try:
            return self.ds[i]
        except UserError as exc:
            return _Failed(exc)


def _collate(items: list, collate: Callable = default_collate):
    failed = next((item for item in items if isinstance(item, _Failed)), None)
    return failed if failed is not None else collate(items)


class _Loader(DataLoader):
    """A DataLoader that raises a worker's UserError in this process with its cause and hint."""

    def __iter__(self):
        for batch in super().__iter__():
            if isinstance(batch, _Failed):
                raise UserError(batch.cause, batch.hint)
            yield batch


class BatchStream:
    """Fixed batches of one dataset's images (seeded indices), decoded again on every pass, never
    held: what `ctx.train_batches` gives importance, BatchNorm recalibration and INT8 calibration.
    Re-iterable; `[:k]` is the first k batches; `list(stream)` materialises (small counts only)."""

    def __init__(self, ds: Dataset, indices: list[int], *, batch_size: int, workers: int = 0,
                 collate: Callable | None = None) -> None:
        self.ds, self.indices, self.batch_size, self.workers = ds, list(indices), batch_size, workers
        self.collate = collate

    def __len__(self) -> int:
        return -(-len(self.indices) // self.batch_size)

    def __iter__(self):
        for x, _ in loader(Subset(self.ds, self.indices), batch_size=self.batch_size, workers=self.workers,
                           collate=self.collate):
            yield x

    def __getitem__(self, key):
        if isinstance(key, slice):
            start, stop, step = key.indices(len(self))
            if step != 1:
                raise IndexError("BatchStream slices take consecutive batches")
            b = self.batch_size
            return BatchStream(self.ds, self.indices[start * b:stop * b], batch_size=b, workers=self.workers,
                               collate=self.collate)
        i = range(len(self))[key]
        chunk = self.indices[i * self.batch_size:(i + 1) * self.batch_size]
        return torch.stack([torch.as_tensor(self.ds[j][0], dtype=torch.float32) for j in chunk])


def seeded_indices(n: int, count: int, seed: int) -> list[int]:
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:min(n, count)].tolist()


def labels_of(ds: Dataset, *, workers: int = 0) -> torch.Tensor:
    """All labels of `ds`: from its tensors / `targets` when it has them, else read item by item
    (through a loader, images dropped batch by batch)."""
    if isinstance(ds, TensorDataset):
        return ds.tensors[1].long()
    for attr in ("targets", "labels"):
        values = getattr(ds, attr, None)
        if values is not None and len(values) == len(ds):
            return torch.as_tensor(list(values) if not torch.is_tensor(values) else values).long()
    out = []
    for batch in loader(ds, batch_size=256, workers=workers):
        out.append(torch.as_tensor(batch[1]).long().reshape(-1))
    return torch.cat(out)


def as_tensors(ds: Dataset, *, limit: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The whole dataset (or its first `limit` items) as an image tensor and a label tensor.
    Only for small counts (a model check, tests): the pipeline streams through `loader`."""
    if isinstance(ds, TensorDataset):
        x, y = ds.tensors[0], ds.tensors[1]
        return (x[:limit], y[:limit].long()) if limit else (x, y.long())
    n = len(ds) if limit is None else min(limit, len(ds))
    xs, ys = [], []
    for i in range(n):
        x, y = ds[i]
        xs.append(torch.as_tensor(x, dtype=torch.float32))
        ys.append(int(y))
    try:
        return torch.stack(xs), torch.tensor(ys, dtype=torch.long)
    except RuntimeError as exc:
        raise UserError(f"images in the data set have different shapes ({exc})",
                        "resize every image to one shape (--input-size)") from exc
