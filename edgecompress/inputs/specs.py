"""`package.module:attr` specs (`--model`, `--data`): recognised and imported."""
from __future__ import annotations

import importlib
import os
import re
import sys

from edgecompress.errors import UserError

IMPORT_SPEC = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")


def import_object(spec: str, *, what: str):
    """`package.module:attr` -> the object; the current directory is on sys.path like `python -m`."""
    module_name, _, attr = spec.partition(":")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise UserError(f"cannot import {module_name!r} for the {what} {spec!r}: {exc}",
                        "check the module path; the current directory is importable") from exc
    except Exception as exc:
        raise UserError(f"importing {module_name!r} for the {what} {spec!r} failed: "
                        f"{type(exc).__name__}: {exc}", "fix the module so that it imports") from exc
    if not hasattr(module, attr):
        raise UserError(f"{module_name!r} has no attribute {attr!r} (the {what} {spec!r})",
                        "name a function defined in that module")
    return getattr(module, attr)


def call_spec(spec: str, *, what: str, called: str, hint: str):
    """`package.module:function` imported and called with no arguments; what it raises is the user's
    (`called` names it in the message: "the data function", "the model factory")."""
    fn = import_object(spec, what=what)
    try:
        return fn()
    except Exception as exc:
        raise UserError(f"{called} {spec} raised {type(exc).__name__}: {exc}", hint) from exc
