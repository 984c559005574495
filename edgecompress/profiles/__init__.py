"""Target profiles: one YAML file per device, loaded into a frozen, validated `Profile`.

Adding a target is one YAML file here, or in a directory the user passes with `--profiles DIR`.
Unknown keys and wrong types are rejected with one message naming the file, every bad key and
the expected type (all mismatches at once, not the first only).
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Iterable, Literal, Optional, get_args

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from edgecompress.errors import UserError

BUILTIN_DIR = Path(__file__).parent
Precision = Literal["fp32", "fp16", "int8"]
Runtime = Literal["openvino", "tensorrt", "ort"]
# user and host never start with "-": `ssh -oProxyCommand=...@host` would be an option, not a user
SSH_URL = re.compile(r"^ssh://(?P<user>[^-@/:\s][^@/:\s]*)@(?P<host>[^-@/:\s][^@/:\s]*)(?::(?P<port>\d{1,5}))?/?$")
SSH_OPTION_LIKE = re.compile(r"^ssh://(-|[^@]*@-)")


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Benchmark(_Frozen):
    """How a latency is measured: enough iterations AND enough time for a stable median."""
    warmup: int = Field(20, ge=0)
    iterations: int = Field(200, ge=1)       # at least this many timed runs ...
    min_time_s: float = Field(1.0, ge=0)     # ... and at least this long
    max_time_s: float = Field(30.0, gt=0)    # but stop past this (slow models), min 10 runs
    threads: Optional[int] = Field(None, ge=1)   # None: the runtime's default
    hint: Literal["latency", "throughput"] = "latency"
    pin_threads: Optional[bool] = None       # OpenVINO ENABLE_CPU_PINNING; None: the runtime's default
    tolerance: float = Field(0.15, gt=0, lt=10)  # regression test: fail above (1 + tolerance) x baseline
    # the timing protocol's caps (targets/timing.py): one side-by-side comparison (baseline engines,
    # the final pruned-vs-unpruned decision, verify, check), and the whole latency table
    compare_time_s: float = Field(20.0, gt=0)
    # 40 s: a time-capped width rule reports both phases' blocks (timing.compare), so 40 s gives the
    # default table ~180 blocks where 60 s gave 142 (the default run must stay under 10 minutes)
    table_time_s: float = Field(40.0, gt=0)
    # time the engines of a comparison in a fresh process of their own, not the run's (targets/isolated.py)
    isolate: bool = True
    # Which runtime ships is timed in this many fresh process layouts, the median over them
    # (timing.timed_in_layouts): an ONNX Runtime engine against an OpenVINO one moved between 0.47x
    # and 0.84x from one fresh set of processes to the next, each interval +-1 %. The ship decision
    # and verify's headline in `check_layouts` (five added ~70 s to a default run of 386 s).
    layouts: int = Field(5, ge=1)
    check_layouts: int = Field(3, ge=1)


class Device(_Frozen):
    """Published figures the roofline estimator needs (sources in each YAML's comments)."""
    name: str
    peak_tops: dict[Precision, float]        # dense tera-ops/s per precision (FLOP = 2 per MAC)
    memory_bandwidth_gbs: float = Field(gt=0)
    layer_overhead_us: float = Field(ge=0)   # launch / scheduling cost per layer
    alignment: int = Field(ge=1)             # channel multiple the kernels are built for

    @field_validator("peak_tops")
    @classmethod
    def _positive(cls, v: dict) -> dict:
        bad = [k for k, x in v.items() if x <= 0]
        if bad:
            raise ValueError(f"peak_tops must be > 0 (bad: {', '.join(bad)})")
        return v


class Profile(_Frozen):
    name: str
    description: str
    runtime: Runtime
    engine_format: Literal["openvino-ir", "tensorrt-plan", "onnx", "ort"]
    precisions: list[Precision] = Field(min_length=1)
    channel_multiple: int = Field(8, ge=1)
    # where a precision's kernels block channels differently, per "<precision>" or, where one of the
    # device's runtimes does, per "<runtime> <precision>" (ONNX Runtime's INT8 kernels: by 16)
    channel_multiples: dict[str, int] = Field(default_factory=dict)
    min_channels: int = Field(8, ge=1)
    input_shape: Optional[list[int]] = None  # [C, H, W]; None: taken from the data
    batch: int = Field(1, ge=1)
    # Engines are exported and built at [batch, *input_shape]; a dynamic batch dimension only when
    # asked (it measured 14-19 % slower on OpenVINO CPU here), and then timed at `batch`.
    dynamic_batch: bool = False
    # Other runtimes this device runs: their plain engines (FP32, and INT8 by their own tool at
    # its defaults) are candidates for the yardstick, timed side by side with ours.
    other_runtimes: list[Literal["openvino", "ort"]] = Field(default_factory=list)
    latency: str = "local"                   # "local" | "estimate" | "ssh://user@host[:port]"
    benchmark: Benchmark = Benchmark()
    device: Device

    @field_validator("latency")
    @classmethod
    def _latency(cls, v: str) -> str:
        if v in ("local", "estimate") or SSH_URL.match(v):
            return v
        if SSH_OPTION_LIKE.match(v):
            raise ValueError("the ssh user and host may not start with '-' (ssh would read them as an option)")
        raise ValueError("expected 'local', 'estimate' or 'ssh://user@host[:port]'")

    @field_validator("input_shape")
    @classmethod
    def _shape(cls, v: Optional[list[int]]) -> Optional[list[int]]:
        if v is not None and (len(v) != 3 or min(v) < 1):
            raise ValueError("expected [C, H, W] with positive sizes")
        return v

    @field_validator("channel_multiples")
    @classmethod
    def _multiples(cls, v: dict[str, int]) -> dict[str, int]:
        runtimes, precisions = get_args(Runtime), get_args(Precision)
        for key, multiple in v.items():
            *runtime, precision = key.split(" ")
            if precision not in precisions or len(runtime) > 1 or (runtime and runtime[0] not in runtimes):
                raise ValueError(f"channel_multiples key {key!r}: expected a precision ({', '.join(precisions)}), "
                                 f"optionally after a runtime ({', '.join(runtimes)}), e.g. 'ort int8'")
            if multiple < 1:
                raise ValueError(f"channel_multiples[{key!r}] must be >= 1, got {multiple}")
        return v

    def multiple_for(self, precision: str, runtime: str | None = None) -> int:
        """The channel multiple for engines of `precision` on `runtime` (default: the profile's)."""
        runtime = runtime or self.runtime
        return self.channel_multiples.get(f"{runtime} {precision}",
                                          self.channel_multiples.get(precision, self.channel_multiple))

    @model_validator(mode="after")
    def _consistent(self) -> "Profile":
        missing = [p for p in self.precisions if p not in self.device.peak_tops]
        if missing:
            raise ValueError(f"device.peak_tops lacks {missing} listed in precisions")
        return self


def _describe(err: dict) -> str:
    key = ".".join(str(p) for p in err["loc"]) or "(top level)"
    if err["type"] == "extra_forbidden":
        return f"unknown key '{key}'"
    if err["type"] == "missing":
        return f"missing key '{key}'"
    return f"key '{key}': {err['msg']} (got {err.get('input')!r})"


def _yaml_problem(e: Exception) -> str:
    """PyYAML's message spans several lines with a caret drawing; the user's error is one line."""
    def where(mark) -> str:
        return f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
    problem = getattr(e, "problem", None) or str(e).strip().splitlines()[0]
    text = f"{problem}{where(getattr(e, 'problem_mark', None))}"
    context = getattr(e, "context", None)  # where the construct that is left open began
    return f"{context}{where(getattr(e, 'context_mark', None))}: {text}" if context else text


def parse_profile(path: Path) -> Profile:
    """Load one YAML file; every mismatch is collected into one UserError naming the file."""
    try:
        data = yaml.safe_load(path.read_text())
    except OSError as e:
        raise UserError(f"cannot read profile {path}: {e.strerror or e}", "check the path and its permissions") from e
    except yaml.YAMLError as e:
        raise UserError(f"cannot read profile {path}: {_yaml_problem(e)}", "fix the YAML syntax") from e
    if not isinstance(data, dict):
        raise UserError(f"profile {path} is not a mapping of keys to values", "see edgecompress/profiles/*.yaml")
    data.setdefault("name", path.stem)
    try:
        return Profile.model_validate(data)
    except ValidationError as e:
        problems = "; ".join(_describe(err) for err in e.errors())
        raise UserError(f"invalid profile {path}: {problems}",
                        "compare with a shipped profile in edgecompress/profiles/") from e


def _profile_files(extra_dirs: Iterable[Path | str]) -> dict[str, Path]:
    """name -> file; the user's directories override the shipped profiles of the same name."""
    files = {p.stem: p for p in sorted(BUILTIN_DIR.glob("*.yaml"))}
    for d in extra_dirs:
        d = Path(d)
        if not d.is_dir():
            raise UserError(f"profile directory {d} does not exist", "pass an existing directory to --profiles")
        files.update({p.stem: p for p in sorted(d.glob("*.y*ml"))})
    return files


def list_profiles(extra_dirs: Iterable[Path | str] = ()) -> list[str]:
    return sorted(_profile_files(extra_dirs))


def load_profile(name: str, *, extra_dirs: Iterable[Path | str] = ()) -> Profile:
    """A profile by name (shipped or from `extra_dirs`), or by path to a YAML file."""
    if name.endswith((".yaml", ".yml")) and Path(name).is_file():
        return parse_profile(Path(name))
    files = _profile_files(extra_dirs)
    if name not in files:
        from edgecompress.registry import Registry
        known: Registry = Registry("target")
        for n in files:
            known.add(n, files[n])
        known.get(name)  # raises the UserError with "did you mean"
    return parse_profile(files[name])


__all__ = ["Profile", "Benchmark", "Device", "load_profile", "list_profiles", "parse_profile", "SSH_URL"]
