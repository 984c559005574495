"""`compress`: argument parsing only; the work is in edgecompress.pipeline.

    compress --target x86-cpu --max-acc-drop 1          # the embedded default
    compress targets [--profiles DIR]                   # list the target profiles
    compress check RUN_DIR [--tolerance 0.15]           # latency regression check of a run

A user mistake prints `error: <cause>` and `hint: <what to do>` and exits 2, without a traceback.
"""
from __future__ import annotations

import argparse
import shlex
import sys
from typing import NoReturn, Sequence

from edgecompress.errors import UserError

EXIT_USER = 2


class _Parser(argparse.ArgumentParser):
    """argparse prints usage and exits; here a bad flag is a UserError like any other."""

    def error(self, message: str) -> NoReturn:
        raise UserError(message, f"see `{self.prog} --help`")


def _run_parser() -> argparse.ArgumentParser:
    criteria, allocations, targets = _choices()
    p = _Parser(prog="compress", description="Prune, distill, export and quantize a model for an edge target.",
                epilog="Subcommands: `compress targets` lists profiles; `compress check RUN_DIR` re-checks latency.")
    p.add_argument("--target", required=True, help=f"target profile: {targets} (details: `compress targets`)")
    p.add_argument("--max-acc-drop", type=float, help="accuracy budget: absolute points of validation top-1")
    p.add_argument("--latency-budget-ms", type=float, help="latency budget on the target, batch 1, ms")
    p.add_argument("--model", help="zoo name, package.module:factory, or a file saved with torch.save(model)")
    p.add_argument("--weights", help="state dict for --model (the file is only read)")
    p.add_argument("--data", help="fashion-mnist[:DIR] (default), imagefolder:DIR, or package.module:function")
    p.add_argument("--out", help="run directory (default runs/<target>-<timestamp>)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out at its first unfinished step")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--profiles", action="append", default=[], metavar="DIR", help="extra directory of profile YAMLs")
    p.add_argument("--device", help="measure on a remote device: ssh://user@host[:port]")
    p.add_argument("--precision", default="auto", help="auto | int8 | fp16 | fp32 (auto: fastest within the budget)")
    p.add_argument("--calibration", default="minmax", help="INT8 calibration: minmax | entropy | percentile")
    p.add_argument("--criterion", help="channel importance criterion: NAME or NAME:OPTION=VALUE,... "
                   f"(e.g. permutation:group=share; default: see README); NAME: {criteria}")
    p.add_argument("--allocation", help=f"how one knob becomes per-layer keep counts: {allocations}")
    p.add_argument("--reconstruct", action="store_true", help="least-squares reconstruction of the next layer after pruning")
    p.add_argument("--min-search-interval", type=float, default=0.01, help="stop the search below this cr interval")
    p.add_argument("--finetune-epochs", type=float, default=1.0, help="distillation epochs after the search")
    p.add_argument("--finetune-samples", type=int, default=20000,
                   help="training images per fine-tuning epoch (0: all)")
    p.add_argument("--probe-finetune-steps", type=int, default=100, help="distillation steps inside each search probe")
    p.add_argument("--bn-batches", type=int, default=16, help="training batches to recalibrate BatchNorm per probe")
    p.add_argument("--batch-size", type=int, default=128, help="batch size for fine-tuning and BN recalibration")
    p.add_argument("--temperature", type=float, default=4.0, help="distillation temperature")
    p.add_argument("--alpha", type=float, default=0.9, help="weight of the distillation (soft) loss")
    p.add_argument("--lr", type=float, default=0.01, help="fine-tuning learning rate (cosine schedule)")
    p.add_argument("--task", default="auto", help="auto | classify | detect (auto: from the model)")
    p.add_argument("--metric", metavar="MODULE:FUNCTION",
                   help="the accuracy promise's score: FUNCTION(run, batches) -> points, higher is better")
    p.add_argument("--imgsz", type=int, help="detection input size in pixels (default: the checkpoint's)")
    p.add_argument("--threads", type=int, help="PyTorch threads (default: the CPU cores this process may use)")
    _data_flags(p)
    return p


def _data_flags(p: argparse.ArgumentParser) -> None:
    from edgecompress.inputs.preprocess import PRESETS
    g = p.add_argument_group("the model's preprocessing (declared once; used for evaluation, calibration and latency)")
    g.add_argument("--preprocess", metavar="PRESET", help=f"{' | '.join(PRESETS)}: imagenet = resize 256, crop 224, "
                   "ImageNet mean/std; folder-stats = the training folder's own mean/std. Default: the zoo "
                   "checkpoint's declaration, else fashion-mnist for it, folder-stats for an image folder, "
                   "none for a function's data. The flags below override the preset's fields")
    g.add_argument("--input-size", metavar="N|HxW", help="the model's input size (images are resized to it last)")
    g.add_argument("--resize", type=int, metavar="N", help="resize the shorter side to N pixels (aspect kept)")
    g.add_argument("--crop", type=int, metavar="N", help="centre crop NxN after --resize")
    g.add_argument("--mean", metavar="M[,M,M]", help="per-channel mean of images scaled to [0, 1]")
    g.add_argument("--std", metavar="S[,S,S]", help="per-channel std of images scaled to [0, 1]")
    g.add_argument("--augment", action="store_true", help="random crop + horizontal flip while distilling")
    g.add_argument("--data-workers", type=int, metavar="N",
                   help="processes decoding image files (default: cores - 1, at most 4; 0: none)")
    g.add_argument("--train-device", default="auto", metavar="DEVICE",
                   help="auto | cpu | cuda[:N]: where pruning's training work and evaluation run (auto: CUDA when "
                   "present, mixed precision there); latency is always measured on the target")


def _choices() -> tuple[str, str, str]:
    """The names the registries accept, for --help (never fails: a broken import shows 'see README')."""
    try:
        from edgecompress.pruning import ALLOCATIONS, CRITERIA
        criteria, allocations = ", ".join(CRITERIA.names()), " | ".join(ALLOCATIONS.names())
    except Exception:  # noqa: BLE001 - help text must not fail
        criteria = allocations = "see README"
    try:
        from edgecompress.profiles import list_profiles
        targets = ", ".join(list_profiles())
    except Exception:  # noqa: BLE001
        targets = "see `compress targets`"
    return criteria, allocations, targets


def _config(args: argparse.Namespace, argv: Sequence[str]):
    from edgecompress.pipeline.config import RunConfig
    return RunConfig(
        target=args.target, max_acc_drop=args.max_acc_drop, latency_budget_ms=args.latency_budget_ms,
        model=args.model, weights=args.weights, data=args.data, out=args.out, resume=args.resume,
        seed=args.seed, profiles=tuple(args.profiles), device=args.device, precision=args.precision,
        calibration=args.calibration, allocation=args.allocation,
        **({} if args.criterion is None else {"criterion": args.criterion}),
        reconstruct=args.reconstruct, min_search_interval=args.min_search_interval,
        finetune_epochs=args.finetune_epochs, finetune_samples=args.finetune_samples or None,
        probe_finetune_steps=args.probe_finetune_steps, bn_batches=args.bn_batches, batch_size=args.batch_size,
        temperature=args.temperature, alpha=args.alpha, lr=args.lr, threads=args.threads,
        preprocess=args.preprocess, input_size=args.input_size, resize=args.resize, crop=args.crop,
        mean=args.mean, std=args.std, augment=args.augment, train_device=args.train_device,
        data_workers=args.data_workers, task=args.task, metric=args.metric, imgsz=args.imgsz,
        command=shlex.join(["compress", *argv]))


def _targets(argv: Sequence[str]) -> int:
    p = _Parser(prog="compress targets", description="List the target profiles.")
    p.add_argument("--profiles", action="append", default=[], metavar="DIR")
    args = p.parse_args(argv)
    from edgecompress.profiles import list_profiles, load_profile
    for name in list_profiles(extra_dirs=args.profiles):
        prof = load_profile(name, extra_dirs=args.profiles)
        print(f"{name:<18} {prof.runtime:<9} {','.join(prof.precisions):<15} latency: {prof.latency:<9} {prof.description}")
    return 0


def _check(argv: Sequence[str]) -> int:
    from edgecompress.check import main as check_command   # its own package and arguments (--accept-unmeasured)
    return check_command(argv)


def _main(argv: Sequence[str]) -> int:
    if argv and argv[0] == "targets":
        return _targets(argv[1:])
    if argv and argv[0] == "check":
        return _check(argv[1:])
    args = _run_parser().parse_args(argv)
    config = _config(args, argv)
    from edgecompress.pipeline.runner import run
    return run(config)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        return _main(argv)
    except UserError as exc:
        print(f"error: {exc.cause}", file=sys.stderr)
        if exc.hint:
            print(f"hint: {exc.hint}", file=sys.stderr)
        return EXIT_USER
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        print("hint: continue with the same command plus --resume --out RUN_DIR", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
