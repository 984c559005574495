"""Measure on the real device over ssh: copy the artifact, run the runtime's own benchmark tool
there (trtexec / benchmark_app / onnxruntime_perf_test), parse its printed summary.

Every ssh/scp call is bounded: BatchMode=yes (never a password prompt), ConnectTimeout, keep-alive
probes, and a subprocess timeout, so an unreachable device fails fast with a UserError.
"""
from __future__ import annotations

import math
import re
import shlex
import subprocess
import uuid
from dataclasses import dataclass
from pathlib import Path

from edgecompress.errors import UserError
from edgecompress.profiles import SSH_OPTION_LIKE, SSH_URL, Profile
from edgecompress.targets.base import PROBES, BuildResult, Latency, Probe, input_dims

CONNECT_TIMEOUT_S = 5
COPY_TIMEOUT_S = 120
_NUM = r"([0-9]*\.?[0-9]+(?:[eE][-+]?\d+)?)"


@dataclass(frozen=True)
class SSHDevice:
    user: str
    host: str
    port: int = 22

    @classmethod
    def parse(cls, url: str) -> "SSHDevice":
        if SSH_OPTION_LIKE.match(url):
            raise UserError(f"bad device address {url!r}: the user and host may not start with '-' "
                            "(ssh would read them as an option)", "use ssh://user@host or ssh://user@host:port")
        m = SSH_URL.match(url)
        if not m:
            raise UserError(f"bad device address {url!r}", "use ssh://user@host or ssh://user@host:port")
        return cls(m["user"], m["host"], int(m["port"] or 22))

    def __str__(self) -> str:
        return f"{self.user}@{self.host}:{self.port}"


# ---- parsers of the real tools' printed summaries -------------------------------------------

def parse_trtexec(text: str) -> tuple[float, float, int]:
    """trtexec's '=== Performance summary ===' line:
    'Latency: min = a ms, max = b ms, mean = c ms, median = d ms, percentile(90%) = e ms, ...'."""
    line = re.search(r"\]\s*Latency: min = .*|^Latency: min = .*", text, re.M)
    if not line:
        raise UserError("trtexec printed no 'Latency: min = ...' summary", _tail(text))
    median = re.search(rf"median = {_NUM} ms", line.group(0))
    p90 = re.search(rf"percentile\(90%\) = {_NUM} ms", line.group(0))
    runs = re.search(r"Timing trace has (\d+) queries", text)
    if not median:
        raise UserError("trtexec summary has no median", _tail(text))
    return (float(median.group(1)), float(p90.group(1)) if p90 else math.nan,
            int(runs.group(1)) if runs else 0)


def parse_benchmark_app(text: str) -> tuple[float, float, int]:
    """OpenVINO benchmark_app's report: 'Count: N iterations', then under 'Latency:' the lines
    'Median: x ms' (or 'us' below 1 ms average, since 2024), 'Average', 'Min', 'Max'. It prints one
    percentile per run (the median by default), so p90 is NaN."""
    def value(label: str) -> float | None:
        m = re.search(rf"{label}:\s+{_NUM}\s*(ms|us)", text)
        return None if not m else float(m.group(1)) * (1e-3 if m.group(2) == "us" else 1.0)
    median = value("Median")
    if median is None:
        raise UserError("benchmark_app printed no 'Median:' latency", _tail(text))
    p90 = value("90 percentile")
    count = re.search(r"Count:\s+(\d+) iterations", text)
    return median, (p90 if p90 is not None else math.nan), int(count.group(1)) if count else 0


def parse_perf_test(text: str) -> tuple[float, float, int]:
    """onnxruntime_perf_test -s: 'P50 Latency: x s', 'P90 Latency: y s' (seconds), and
    'Total inference requests: N'."""
    p50 = re.search(rf"P50 Latency:\s*{_NUM} s", text)
    p90 = re.search(rf"P90 Latency:\s*{_NUM} s", text)
    if not p50:
        raise UserError("onnxruntime_perf_test printed no 'P50 Latency' (was -s given?)", _tail(text))
    runs = re.search(r"Total inference requests:\s*(\d+)", text)
    return (float(p50.group(1)) * 1e3, float(p90.group(1)) * 1e3 if p90 else math.nan,
            int(runs.group(1)) if runs else 0)


PARSERS = {"tensorrt": parse_trtexec, "openvino": parse_benchmark_app, "ort": parse_perf_test}


def _tail(text: str, n: int = 400) -> str:
    return "device output ends: " + " ".join(text.strip().splitlines()[-4:])[-n:]


# ---- remote commands ---------------------------------------------------------------------------

def remote_command(runtime: str, engine: str, profile: Profile, dims: tuple[int, ...], precision: str) -> str:
    """The benchmark command run on the device, in the device's own tool and flags."""
    b = profile.benchmark
    shape = "x".join(map(str, dims))
    if runtime == "tensorrt":
        # Builds the engine from the ONNX on the device, then times it. TRT 10 takes precision
        # flags; TRT 11 removed them (strongly typed), so pick by what this trtexec accepts.
        flags = {"fp32": "", "fp16": "--fp16", "int8": "--fp16 --int8"}[precision]
        return (f'T=$(command -v trtexec || echo /usr/src/tensorrt/bin/trtexec); '
                f'if "$T" --help 2>&1 | grep -q -- --int8; then P="{flags}"; else P=--stronglyTyped; fi; '
                f'"$T" --onnx={engine} --shapes=input:{shape} $P --warmUp=500 '
                f'--iterations={b.iterations} --duration={math.ceil(b.min_time_s)} --percentile=90')
    if runtime == "openvino":
        tune = (f" -nthreads {b.threads}" if b.threads else "") + (
            "" if b.pin_threads is None else f" -pin {'YES' if b.pin_threads else 'NO'}")
        # benchmark_app refuses -nthreads/-pin with a hint ("fine tune options ... set -hint none"):
        # spell the latency hint out as one stream instead.
        hint = f" -hint {b.hint}"
        if tune:
            hint = " -hint none" + (" -nstreams 1" if b.hint == "latency" else "") + tune
        return (f"benchmark_app -m {engine} -d CPU -api sync{hint} -shape [{','.join(map(str, dims))}]"
                f" -niter {b.iterations} -t {max(1, math.ceil(b.min_time_s))}")
    threads = f" -x {b.threads}" if b.threads else ""
    return f"onnxruntime_perf_test -e cpu -m times -r {b.iterations}{threads} -s -I {engine}"


class SSHProbe:
    """Probe that measures on `device` (ssh://user@host[:port]) with the runtime's own tool."""

    def __init__(self, url: str, profile: Profile, *, options: tuple[str, ...] = (),
                 connect_timeout_s: int = CONNECT_TIMEOUT_S, run_timeout_s: float | None = None) -> None:
        self.device, self.profile = SSHDevice.parse(url), profile
        self.connect_timeout_s = connect_timeout_s
        b = profile.benchmark
        self.run_timeout_s = run_timeout_s or 120 + 3 * b.max_time_s   # engine build + timing
        self.options = ("-o", "BatchMode=yes", "-o", f"ConnectTimeout={connect_timeout_s}",
                        "-o", "ServerAliveInterval=5", "-o", "ServerAliveCountMax=3", *options)

    def _run(self, argv: list[str], timeout: float, what: str) -> str:
        try:
            proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired as e:
            raise UserError(f"{what} on {self.device} timed out after {timeout:.0f} s",
                            "check the device is up and reachable (ssh " + str(self.device) + ")") from e
        if proc.returncode == 255:   # ssh/scp's own failure: connection, auth, host key
            raise UserError(f"cannot reach {self.device} ({what}): {proc.stderr.strip()[-300:]}",
                            "check address and port, and that your key is in the device's authorized_keys")
        if proc.returncode == 127 or "command not found" in proc.stderr:
            raise UserError(f"{what} failed on {self.device}: tool not found", proc.stderr.strip()[-300:])
        if proc.returncode != 0:
            raise UserError(f"{what} failed on {self.device} (exit {proc.returncode})",
                            _tail(proc.stdout + proc.stderr))
        return proc.stdout + proc.stderr

    def ssh(self, command: str, *, timeout: float) -> str:
        d = self.device
        return self._run(["ssh", *self.options, "-p", str(d.port), "--", f"{d.user}@{d.host}", command],
                         timeout, "ssh command")

    def copy(self, files: list[Path], remote_dir: str) -> None:
        d = self.device
        self._run(["scp", "-q", *self.options, "-P", str(d.port), "--", *map(str, files),
                   f"{d.user}@{d.host}:{remote_dir}/"], COPY_TIMEOUT_S, "copying the artifact")

    def __call__(self, build: BuildResult) -> Latency:
        # TensorRT: ship the ONNX and build on the device (plans are device-specific).
        engine = build.onnx if build.runtime == "tensorrt" else build.engine
        files = [engine] + ([engine.with_suffix(".bin")] if engine.suffix == ".xml" else [])
        remote = f"/tmp/edgecompress-{uuid.uuid4().hex[:12]}"
        self.ssh(f"mkdir -p {remote}", timeout=self.connect_timeout_s + 30)
        try:
            self.copy(files, remote)
            # the name comes from a run file: quoted, it cannot add a command on the device
            cmd = remote_command(build.runtime, shlex.quote(engine.name), self.profile,
                                 input_dims(build.onnx, self.profile), build.precision)
            out = self.ssh(f"cd {remote} && {cmd}", timeout=self.run_timeout_s)
        finally:
            try:
                self.ssh(f"rm -rf {shlex.quote(remote)}", timeout=self.connect_timeout_s + 30)
            except UserError:
                pass  # cleanup is best effort; the measurement error (if any) is what matters
        median, p90, runs = PARSERS[build.runtime](out)
        return Latency(median_ms=median, p90_ms=p90, iterations=runs, method="measured",
                       runtime=build.runtime, device=f"{self.device.host} (ssh)")


@PROBES.register("ssh")
def ssh_probe(profile: Profile, url: str | None = None, **options) -> Probe:
    return SSHProbe(url or profile.latency, profile, **options)
