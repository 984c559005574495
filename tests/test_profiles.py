"""Profiles: every shipped YAML validates; bad files fail with file, key and expected type."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from edgecompress.errors import UserError
from edgecompress.profiles import BUILTIN_DIR, list_profiles, load_profile

SHIPPED = ["jetson-orin", "jetson-orin-nx", "jetson-orin-nano", "x86-cpu", "x86-cpu-ort", "mobile-arm64"]


def test_all_required_profiles_are_shipped():
    assert set(SHIPPED) <= set(list_profiles())


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_profile_is_valid_and_sourced(name):
    p = load_profile(name)
    assert p.name == name
    assert all(p.device.peak_tops[prec] > 0 for prec in p.precisions)
    assert p.batch == 1 and 0 < p.benchmark.tolerance < 1
    # every device figure carries its published source in a comment
    text = (BUILTIN_DIR / f"{name}.yaml").read_text()
    assert text.count("#") >= 4


def test_runtimes_and_precisions_per_target():
    assert load_profile("jetson-orin").runtime == "tensorrt"
    assert load_profile("x86-cpu").runtime == "openvino"
    assert load_profile("mobile-arm64").engine_format == "ort"
    assert load_profile("mobile-arm64").precisions == ["fp32", "int8"]
    assert load_profile("jetson-orin").precisions == ["fp32", "fp16", "int8"]


def _write(tmp_path: Path, name: str, **changes) -> Path:
    data = yaml.safe_load((BUILTIN_DIR / "x86-cpu.yaml").read_text())
    for key, value in changes.items():
        node = data
        *parents, last = key.split(".")
        for p in parents:
            node = node[p]
        node[last] = value
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_user_profile_dir_adds_a_target(tmp_path):
    _write(tmp_path, "my-box", description="my box", channel_multiple=16)
    assert "my-box" in list_profiles([tmp_path])
    assert load_profile("my-box", extra_dirs=[tmp_path]).channel_multiple == 16


def test_channel_multiple_per_runtime_and_precision(tmp_path):
    """ONNX Runtime's INT8 kernels on x86 want 16 channels, OpenVINO's run as well at 4: the
    multiple the search prunes to follows the runtime and precision our engines are built for."""
    x86 = load_profile("x86-cpu")
    assert x86.multiple_for("int8") == 4 and x86.multiple_for("int8", "ort") == 16
    assert x86.multiple_for("fp32", "ort") == 8 and x86.multiple_for("fp32", "openvino") == 4
    _write(tmp_path, "box", channel_multiple=8, channel_multiples={"int8": 32, "ort fp32": 2})
    box = load_profile("box", extra_dirs=[tmp_path])
    assert (box.multiple_for("int8"), box.multiple_for("int8", "ort"), box.multiple_for("fp32", "ort")) == (32, 32, 2)
    _write(tmp_path, "bad4", channel_multiples={"tflite int8": 16})
    with pytest.raises(UserError, match="channel_multiples key 'tflite int8'"):
        load_profile("bad4", extra_dirs=[tmp_path])


def test_unknown_key_and_wrong_type_are_all_reported(tmp_path):
    _write(tmp_path, "bad", channel_multipel=8, **{"benchmark.warmup": "lots", "device.memory_bandwidth_gbs": "fast"})
    with pytest.raises(UserError) as err:
        load_profile("bad", extra_dirs=[tmp_path])
    msg = str(err.value)
    assert "bad.yaml" in msg
    assert "unknown key 'channel_multipel'" in msg
    assert "benchmark.warmup" in msg and "integer" in msg
    assert "device.memory_bandwidth_gbs" in msg and "number" in msg


def test_bad_latency_source_and_precision_mismatch(tmp_path):
    _write(tmp_path, "bad2", latency="telnet://x", precisions=["fp32"])
    with pytest.raises(UserError, match="latency"):
        load_profile("bad2", extra_dirs=[tmp_path])
    _write(tmp_path, "bad3", precisions=["fp32", "int8"], **{"device.peak_tops": {"fp32": 1.0}})  # no int8 figure
    with pytest.raises(UserError, match="peak_tops"):
        load_profile("bad3", extra_dirs=[tmp_path])


def test_ssh_latency_source_is_accepted(tmp_path):
    _write(tmp_path, "remote", latency="ssh://pi@10.0.0.7:2222")
    assert load_profile("remote", extra_dirs=[tmp_path]).latency == "ssh://pi@10.0.0.7:2222"


def test_unknown_target_suggests_the_closest():
    with pytest.raises(UserError) as err:
        load_profile("jetson-orn")
    assert "jetson-orin" in err.value.hint


def test_profiles_are_frozen():
    p = load_profile("x86-cpu")
    with pytest.raises(Exception):
        p.channel_multiple = 4
