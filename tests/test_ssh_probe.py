"""ssh probe against a real sshd started here on 127.0.0.1 (throw-away host and user keys), with
stand-in benchmark tools on the session's PATH that print each real tool's output format; plus
the parsers on verbatim samples, and bounded failure on unreachable ports."""
from __future__ import annotations

import math
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from _export_fixtures import export_pair
from edgecompress.errors import UserError
from edgecompress.profiles import load_profile
from edgecompress.targets import get_target
from edgecompress.targets.ssh import SSHProbe, parse_benchmark_app, parse_perf_test, parse_trtexec

SSHD = Path("/usr/sbin/sshd")
QUICK = dict(warmup=2, iterations=20, min_time_s=1.0, max_time_s=5.0)


def quick(name: str):
    """The shipped profile with short timing (other benchmark settings kept)."""
    p = load_profile(name)
    return p.model_copy(update={"benchmark": p.benchmark.model_copy(update=QUICK)})

# Output in the real tools' formats (trtexec 10.x performance summary; benchmark_app 2024+;
# onnxruntime_perf_test -s), values made up but layout verbatim.
TRTEXEC_OUT = """[11/22/2026-10:00:01] [I] === Performance summary ===
[11/22/2026-10:00:01] [I] Throughput: 2210.45 qps
[11/22/2026-10:00:01] [I] Latency: min = 0.401 ms, max = 0.812 ms, mean = 0.452 ms, median = 0.447 ms, percentile(90%) = 0.471 ms, percentile(95%) = 0.48 ms, percentile(99%) = 0.52 ms
[11/22/2026-10:00:01] [I] Enqueue Time: min = 0.01 ms, max = 0.05 ms, mean = 0.02 ms, median = 0.02 ms, percentile(90%) = 0.03 ms, percentile(95%) = 0.03 ms, percentile(99%) = 0.04 ms
[11/22/2026-10:00:01] [I] GPU Compute Time: min = 0.30 ms, max = 0.70 ms, mean = 0.35 ms, median = 0.34 ms, percentile(90%) = 0.36 ms, percentile(95%) = 0.37 ms, percentile(99%) = 0.41 ms
[11/22/2026-10:00:01] [I] Total Host Walltime: 3.00 s
[11/22/2026-10:00:01] [I] Timing trace has 6632 queries over 3.00 s
[11/22/2026-10:00:01] [I] Explanations of the performance metrics are printed in the verbose logs.
&&&& PASSED TensorRT.trtexec [TensorRT v100300] # trtexec --onnx=model_int8.onnx"""
BENCHMARK_APP_OUT = """[Step 11/11] Dumping statistics report
[ INFO ] Execution Devices:['CPU']
[ INFO ] Count:            8123 iterations
[ INFO ] Duration:         1000.12 ms
[ INFO ] Latency:
[ INFO ]    Median:        {median}
[ INFO ]    Average:       0.12 ms
[ INFO ]    Min:           0.10 ms
[ INFO ]    Max:           1.50 ms
[ INFO ] Throughput:   8122.00 FPS"""
PERF_TEST_OUT = """Session creation time cost: 0.0123 s
First inference time cost: 1 ms
Total inference time cost: 0.456 s
Total inference requests: 200
Average inference time cost: 2.28 ms
Total inference run time: 0.457 s
Number of inferences per second: 437.6
Avg CPU usage: 97 %
Peak working set size: 38797312 bytes
Avg CPU usage:97
Peak working set size:38797312
Runs:200
Min Latency: 0.00201 s
Max Latency: 0.00412 s
P50 Latency: 0.00222 s
P90 Latency: 0.00251 s
P95 Latency: 0.00263 s
P99 Latency: 0.00391 s
P999 Latency: 0.00412 s"""


def test_parsers_on_real_formats():
    assert parse_trtexec(TRTEXEC_OUT) == (0.447, 0.471, 6632)
    med, p90, n = parse_benchmark_app(BENCHMARK_APP_OUT.format(median="1.25 ms"))
    assert (med, n) == (1.25, 8123) and math.isnan(p90)
    assert parse_benchmark_app(BENCHMARK_APP_OUT.format(median="118.40 us"))[0] == pytest.approx(0.1184)
    assert parse_perf_test(PERF_TEST_OUT) == (pytest.approx(2.22), pytest.approx(2.51), 200)
    with pytest.raises(UserError, match="Median"):
        parse_benchmark_app("[ ERROR ] Failed to read model")


def _stand_in(bin_dir: Path, name: str, output: str, artifact_flag: str) -> None:
    """A program named like the real tool: checks the copied artifact exists, records its argv,
    prints the real tool's output format."""
    body = f'''#!{sys.executable}
import sys, pathlib
args = sys.argv[1:]
pathlib.Path("{bin_dir}/{name}.args").write_text(" ".join(args))
if args and args[0] == "--help":
    print("  --fp16  --int8  --stronglyTyped"); sys.exit(0)
art = args[-1] if "{artifact_flag}" == "LAST" else next(
    (a.split("=", 1)[1] if "=" in a else args[i + 1]) for i, a in enumerate(args) if a.startswith("{artifact_flag}"))
if not pathlib.Path(art).is_file():
    print("no such model " + art, file=sys.stderr); sys.exit(3)
print({output!r})
'''
    path = bin_dir / name
    path.write_text(body)
    path.chmod(0o755)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def sshd(tmp_path_factory):
    if not SSHD.is_file() or shutil.which("ssh") is None:
        pytest.skip("openssh-server (/usr/sbin/sshd) or the ssh client is not installed")
    Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)   # sshd's privilege-separation directory
    d = tmp_path_factory.mktemp("sshd")
    for key in ("host_key", "user_key"):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(d / key)], check=True)
    bin_dir = d / "bin"
    bin_dir.mkdir()
    _stand_in(bin_dir, "trtexec", TRTEXEC_OUT, "--onnx")
    _stand_in(bin_dir, "benchmark_app", BENCHMARK_APP_OUT.format(median="0.31 ms"), "-m")
    _stand_in(bin_dir, "onnxruntime_perf_test", PERF_TEST_OUT, "LAST")   # model is the last argument
    user_pub = (d / "user_key.pub").read_text().strip()
    # The session's PATH puts the stand-ins first (needs PermitUserEnvironment).
    (d / "authorized_keys").write_text(f'environment="PATH={bin_dir}:/usr/bin:/bin" {user_pub}\n')
    port = _free_port()
    (d / "sshd_config").write_text(f"""Port {port}
ListenAddress 127.0.0.1
HostKey {d / 'host_key'}
AuthorizedKeysFile {d / 'authorized_keys'}
PidFile {d / 'sshd.pid'}
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin prohibit-password
PermitUserEnvironment yes
StrictModes no
UsePAM no
Subsystem sftp /usr/lib/openssh/sftp-server
""")
    proc = subprocess.Popen([str(SSHD), "-D", "-e", "-f", str(d / "sshd_config")],
                            stdout=subprocess.DEVNULL, stderr=open(d / "sshd.log", "w"))
    for _ in range(100):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            break
        except OSError:
            time.sleep(0.1)
    host_pub = (d / "host_key.pub").read_text().split()[:2]
    (d / "known_hosts").write_text(f"[127.0.0.1]:{port} {' '.join(host_pub)}\n")
    options = ("-F", "/dev/null", "-i", str(d / "user_key"), "-o", "IdentitiesOnly=yes",
               "-o", f"UserKnownHostsFile={d / 'known_hosts'}", "-o", "StrictHostKeyChecking=yes")
    yield {"url": f"ssh://{os.environ.get('USER', 'root')}@127.0.0.1:{port}", "options": options, "bin": bin_dir}
    proc.terminate()
    proc.wait(timeout=10)


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    return export_pair(tmp_path_factory.mktemp("sshpair"))


@pytest.fixture(scope="module")
def ov_build(tmp_path_factory, pair):
    """One OpenVINO IR shared by the x86 tests (conversion is the slow part)."""
    return get_target(quick("x86-cpu"), device="estimate").build(pair[1], tmp_path_factory.mktemp("ir"), precision="fp32")


def _probe(name, sshd):
    profile = quick(name)
    return profile, SSHProbe(sshd["url"], profile, options=sshd["options"])


def test_ssh_trtexec_on_jetson(tmp_path, sshd, pair):
    profile, probe = _probe("jetson-orin", sshd)
    build = get_target(profile).build(pair[2], tmp_path, precision="int8")
    lat = probe(build)
    assert (lat.median_ms, lat.p90_ms, lat.iterations, lat.method) == (0.447, 0.471, 6632, "measured")
    assert lat.device == "127.0.0.1 (ssh)"
    args = (sshd["bin"] / "trtexec.args").read_text()
    assert "--onnx=model_int8.onnx" in args and "--shapes=input:1x1x28x28" in args and "--int8" in args


def test_ssh_benchmark_app_on_openvino(sshd, ov_build):
    profile, probe = _probe("x86-cpu", sshd)
    build = ov_build
    lat = probe(build)     # the .xml and its .bin were both copied, or the stand-in exits 3
    assert lat.median_ms == 0.31 and lat.iterations == 8123 and math.isnan(lat.p90_ms)
    args = (sshd["bin"] / "benchmark_app.args").read_text()
    assert "-m model.xml" in args and "-shape [1,1,28,28]" in args
    # the profile's pin_threads: false; benchmark_app wants -hint none with -pin, so 1 stream = latency
    assert "-pin NO" in args and "-hint none -nstreams 1" in args


def test_ssh_perf_test_on_mobile(tmp_path, sshd, pair):
    profile, probe = _probe("mobile-arm64", sshd)
    build = get_target(profile).build(pair[1], tmp_path, precision="fp32")
    lat = probe(build)
    assert lat.median_ms == pytest.approx(2.22) and lat.p90_ms == pytest.approx(2.51)
    assert (sshd["bin"] / "onnxruntime_perf_test.args").read_text().endswith("model.ort")


def test_ssh_remote_tool_failure_is_a_user_error(sshd, ov_build):
    profile, probe = _probe("x86-cpu", sshd)
    build = ov_build
    stand_in = sshd["bin"] / "benchmark_app"
    saved = stand_in.read_text()
    stand_in.write_text("#!/bin/sh\necho '[ ERROR ] Exception from src/inference: cannot compile' >&2\nexit 1\n")
    try:
        with pytest.raises(UserError, match="exit 1") as err:
            probe(build)
    finally:
        stand_in.write_text(saved)
    assert "cannot compile" in err.value.hint


@pytest.mark.slow
def test_ssh_real_benchmark_app(sshd, ov_build):
    """The real OpenVINO benchmark_app (from this venv) run over ssh, parsed."""
    real = Path(sys.executable).parent / "benchmark_app"
    if not real.is_file():
        pytest.skip("benchmark_app not installed")
    profile, probe = _probe("x86-cpu", sshd)
    build = ov_build
    stand_in = sshd["bin"] / "benchmark_app"
    saved = stand_in.read_text()
    stand_in.write_text(f"#!/bin/sh\nexec {real} \"$@\"\n")
    try:
        lat = probe(build)
    finally:
        stand_in.write_text(saved)
    assert lat.method == "measured" and lat.median_ms > 0 and lat.iterations >= QUICK["iterations"]


def test_unreachable_port_fails_fast_with_user_error():
    profile = load_profile("x86-cpu")
    probe = SSHProbe(f"ssh://root@127.0.0.1:{_free_port()}", profile, connect_timeout_s=2,
                     options=("-F", "/dev/null"))
    start = time.monotonic()
    with pytest.raises(UserError, match="cannot reach"):
        probe.ssh("true", timeout=20)
    assert time.monotonic() - start < 20   # bounded (refused at once), never a hang


def test_silent_server_times_out_with_user_error():
    """A port that accepts TCP but never speaks SSH: ConnectTimeout covers the banner exchange."""
    with socket.socket() as srv:
        srv.bind(("127.0.0.1", 0))
        srv.listen(1)
        probe = SSHProbe(f"ssh://root@127.0.0.1:{srv.getsockname()[1]}", load_profile("x86-cpu"),
                         connect_timeout_s=2, options=("-F", "/dev/null"))
        start = time.monotonic()
        with pytest.raises(UserError):
            probe.ssh("true", timeout=20)
        assert time.monotonic() - start < 20
