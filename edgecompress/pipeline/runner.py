"""Run the stages in order in one run directory, skipping those already finished (`--resume`)."""
from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import time
from pathlib import Path

import torch

from edgecompress.errors import EdgeCompressError, UserError
from edgecompress.inputs import resolve_inputs
from edgecompress.inputs.loaders import usable_cores
from edgecompress.pipeline.builder import Builder
from edgecompress.pipeline.config import RunConfig
from edgecompress.pipeline.context import Context
from edgecompress.pipeline.records import Record
from edgecompress.pipeline.rundir import RunDir, check_writable, sha256_file
from edgecompress.pipeline.stages import all_stages
from edgecompress.pipeline.stages.finetune import worker
from edgecompress.pipeline.ui import UI, summary_line
from edgecompress.profiles import load_profile
from edgecompress.report import summary
from edgecompress.targets import get_target
from edgecompress.targets.isolated import start_host
from edgecompress.tasks import select_task
from edgecompress.training.device import resolve_device
from edgecompress.training.distributed import Coordinator, launched_by_torchrun


def set_threads(config: RunConfig, world_size: int) -> int:
    """PyTorch threads: --threads, else the cores this process may use, shared among torchrun ranks."""
    threads = config.threads or max(1, usable_cores() // world_size)
    torch.set_num_threads(threads)
    return threads


def run(config: RunConfig) -> int:
    coordinator = Coordinator() if launched_by_torchrun() else None
    world_size = coordinator.world_size if coordinator else 1
    set_threads(config, world_size)
    if coordinator and coordinator.rank != 0:
        return worker(config, coordinator)
    try:
        return _run(config, coordinator)
    finally:
        if coordinator:
            coordinator.finish()


def _run(config: RunConfig, coordinator) -> int:
    start_host()   # engines are timed there; started before this process runs a runtime or a DataLoader worker
    ui = UI()
    start = time.perf_counter()
    out = config.out_dir()
    check_writable(out)
    ctx_parts = _resolve(config, ui)
    notes = ctx_parts.pop("notes")
    with RunDir.open(out, resume=config.resume, inputs=_inputs(config)) as rundir:
        builder = Builder(target=ctx_parts["target"], data=ctx_parts["data"], seed=config.seed,
                          method=config.calibration)
        ctx = Context(config=config, rundir=rundir, ui=ui, dist=coordinator, builder=builder, **ctx_parts)
        pre = ctx.data.preprocess
        ui.say(f"run directory: {rundir.path}  (target {ctx.profile.name}, model {ctx.model_name}, data {ctx.data.name})")
        ui.say(f"preprocessing {pre.describe() if pre else 'as given'}; input {'x'.join(map(str, ctx.input_shape))}; "
               f"training on {ctx.device}" + (f"; {ctx.data.workers} data worker(s)" if ctx.data.workers else "")
               + ("" if ctx.task.name == "classify" else f"; task {ctx.task.name}, score {ctx.task.metric}"))
        for note in [*notes, *ctx.target.notes]:
            ctx.note(note)
        try:
            _run_stages(ctx)
        finally:
            builder.close()
        rundir.mark_finished()
        report = json.loads((rundir.path / "report.json").read_text())
    ui.say(f"finished in {time.perf_counter() - start:.0f} s (this process)")
    summary_line(summary(report, out))
    return 0


def _resolve(config: RunConfig, ui: UI) -> dict:
    """Everything that can be wrong with the user's inputs is found here, before any work."""
    profile = load_profile(config.target, extra_dirs=config.profiles)
    target = get_target(profile, device=config.device)
    device = resolve_device(config.train_device)
    data, loaded, notes = resolve_inputs(config)
    task = select_task(data.kind, num_classes=data.num_classes, model=loaded.model, metric=config.metric)
    return {"data": data, "original": loaded.model.eval(), "model_name": loaded.name, "target": target,
            "device": device, "notes": loaded.notes + notes, "task": task}


def _inputs(config: RunConfig) -> dict:
    """What identifies the run: the request, and the content of the user's files (hashed, never written)."""
    inputs = {"config": config.identity()}
    for flag in ("model", "weights"):
        value = getattr(config, flag)
        if value and Path(value).is_file():
            inputs[f"{flag}_sha256"] = sha256_file(Path(value))
    inputs["config_sha256"] = hashlib.sha256(json.dumps(inputs["config"], sort_keys=True).encode()).hexdigest()
    return inputs


def _run_stages(ctx: Context) -> None:
    stages = all_stages()
    names = [s.name for s in stages]
    ctx.notes.extend(n for n in ctx.rundir.manifest.get("notes", []) if n not in ctx.notes)
    for i, stage in enumerate(stages):
        if ctx.rundir.stage_done(stage.name):
            record = ctx.results.set(stage.name, ctx.rundir.stage_record(stage.name)["data"])
            if stage.name == "baseline":   # the runtime and settings it chose build and load every later engine
                ctx.use_runtime(record.runtime or ctx.target.runtime)
                ctx.builder.settings = record.settings
            if stage.name == "calibrate" and record.runtime:   # the precision that ships may run faster elsewhere
                ctx.use_runtime(record.runtime)
            ctx.ui.say(f"✓ {stage.name}: finished earlier, kept")
            continue
        for note in ctx.rundir.notes:
            ctx.note(note)
        ctx.rundir.notes.clear()
        ctx.rundir.invalidate_from(names[i:])  # its inputs may change: everything after it is redone
        with ctx.ui.stage(stage.name, stage.what), ctx.rundir.staging(stage.name) as out:
            began = time.perf_counter()
            output = run_stage(ctx, stage, out)
            debug_pause(ctx.ui, stage.name)
            ctx.rundir.manifest["notes"] = list(ctx.notes)
            record = ctx.results.set(stage.name, output.data)   # typed (a wrong field fails here)
            ctx.rundir.finish_stage(stage.name, staged=out, files=output.files, data=_plain(record),
                                    seconds=time.perf_counter() - began)


def _plain(record) -> dict:
    return record.to_dict() if isinstance(record, Record) else record


SLOW_STAGE_ENV = "EDGECOMPRESS_SLOW_STAGE"


def debug_pause(ui: UI, name: str) -> None:
    """`EDGECOMPRESS_SLOW_STAGE=<stage>:<seconds>` sleeps after that stage has written its files to
    its staging folder and before they are committed: a debugging aid to interrupt a run at a known
    point (the fault tests SIGKILL it there; docs/reliability.md)."""
    want, _, seconds = os.environ.get(SLOW_STAGE_ENV, "").partition(":")
    if want != name:
        return
    try:
        pause = float(seconds or 0)
    except ValueError:
        pause = 0.0
    ui.say(f"  debug: {name}: files staged, sleeping {pause:g} s before committing them ({SLOW_STAGE_ENV})")
    time.sleep(pause)


DISK_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)
LOW_DISK_BYTES = 1 << 20


def run_stage(ctx: Context, stage, out: Path):
    """`stage.run`, with a full disk reported as the user's one-line error, not a traceback.

    Libraries word a full disk differently: Python raises OSError(ENOSPC), torch.save's zip writer
    a RuntimeError ("unexpected pos ..."), so a failure while the run directory's file system has
    (almost) no space left counts as a full disk too.
    """
    try:
        return stage.run(ctx, out)
    except EdgeCompressError:
        raise
    except Exception as exc:
        if disk_full(exc, ctx.rundir.path):
            raise UserError(f"no space left on the device while stage {stage.name} was writing in "
                            f"{ctx.rundir.path}", "free some disk space, then run again with --resume") from exc
        raise


def disk_full(exc: BaseException, path: Path) -> bool:
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno in DISK_FULL_ERRNOS:
            return True
        seen = seen.__cause__ or seen.__context__
    try:
        return shutil.disk_usage(path).free < LOW_DISK_BYTES
    except OSError:
        return False
