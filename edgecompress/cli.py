"""`compress`: argument parsing only; the work is in edgecompress.pipeline.

    compress --target x86-cpu --max-acc-drop 1          # the embedded default
    compress targets [--profiles DIR]                   # list the target profiles
    compress check RUN_DIR [--tolerance 0.15]           # latency regression check of a run

A user mistake prints `error: <cause>` and `hint: <what to do>` and exits 2, without a traceback.
"""
from __future__ import annotations

import argparse
import dataclasses
import shlex
import sys
import types
import typing
from typing import NoReturn, Sequence

from edgecompress.errors import UserError

EXIT_USER = 2


class _Parser(argparse.ArgumentParser):
    """argparse prints usage and exits; here a bad flag is a UserError like any other."""

    def error(self, message: str) -> NoReturn:
        raise UserError(message, f"see `{self.prog} --help`")


def _run_parser() -> argparse.ArgumentParser:
    """The parser, generated from RunConfig's flag declarations (pipeline/config.py)."""
    p = _Parser(prog="compress", description="Prune, distill, export and quantize a model for an edge target.",
                epilog="Subcommands: `compress targets` lists profiles; `compress check RUN_DIR` re-checks latency.")
    groups: dict = {}   # title -> argument group
    for f, kind in _flag_fields():
        title = f.metadata["flag"].group
        if title and title not in groups:
            groups[title] = p.add_argument_group(title)
        (groups[title] if title else p).add_argument("--" + f.name.replace("_", "-"), **_argument(f, kind))
    return p


def _flag_fields() -> list[tuple[dataclasses.Field, type]]:
    """(field, the type its flag parses: float | None -> float, tuple[str, ...] -> tuple) per flag."""
    from edgecompress.pipeline.config import RunConfig
    hints = typing.get_type_hints(RunConfig)
    out = []
    for f in dataclasses.fields(RunConfig):
        if "flag" in f.metadata:
            hint = hints[f.name]
            if typing.get_origin(hint) in (typing.Union, types.UnionType):
                hint = next(t for t in typing.get_args(hint) if t is not type(None))
            out.append((f, typing.get_origin(hint) or hint))
    return out


def _argument(f: dataclasses.Field, kind: type) -> dict:
    """add_argument's keywords for one field: bool -> store_true, tuple -> repeated, else typed."""
    required = f.default is dataclasses.MISSING
    common = {"help": _help(f, kind), "required": required, "default": None if required else f.default}
    if kind is bool:
        return {**common, "action": "store_true"}
    if kind is tuple:   # argparse appends to a list; _config turns it back into the tuple
        return {**common, "action": "append", "default": list(f.default), "metavar": f.metadata["flag"].metavar}
    return {**common, "type": kind, "metavar": f.metadata["flag"].metavar}


def _help(f: dataclasses.Field, kind: type) -> str:
    flag = f.metadata["flag"]
    text = flag.help.replace("{choices}", _names(flag.choices)) if flag.choices else flag.help
    if kind is not bool and f.default not in (dataclasses.MISSING, None, ()):
        text += f" (default: {f.default})"
    return text.replace("%", "%%")   # argparse %-formats help


def _names(choices) -> str:
    """A registry's names for --help, which must not fail: a broken registry shows 'see README'."""
    try:
        return " | ".join(choices())
    except Exception:  # noqa: BLE001 - help text must not fail
        return "see README"


def _config(args: argparse.Namespace, argv: Sequence[str]):
    from edgecompress.pipeline.config import RunConfig
    values = {}
    for f, kind in _flag_fields():
        value = getattr(args, f.name)
        values[f.name] = f.metadata["flag"].from_flag(tuple(value) if kind is tuple else value)
    return RunConfig(**values, command=shlex.join(["compress", *argv]))


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
