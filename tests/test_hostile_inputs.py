"""Hostile inputs of issue 27: each gives one `error:` line naming the file and its cause, a `hint:`
line, exit code 2, and writes nothing. The exact lines are in docs/reliability.md ("Hostile input")."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edgecompress.errors import UserError


def _image_folder(root: Path, suffix: str) -> None:
    from PIL import Image
    for split in ("train", "val"):
        for cls in ("a", "b"):
            folder = root / split / cls
            folder.mkdir(parents=True)
            for i in range(3):
                pixels = np.random.default_rng(i).integers(0, 255, (64, 64, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(folder / f"{i}{suffix}")


@pytest.mark.parametrize("suffix", [".png", ".jpg"])
def test_truncated_image_in_a_worker_is_one_user_error_with_its_hint(tmp_path, suffix):
    """The file passes the header check and fails when a DataLoader worker decodes it: the user
    gets the worker's cause and hint, not "Caught UserError in DataLoader worker process 0"."""
    from edgecompress.inputs.imagefolder import image_folder
    root = tmp_path / "images"
    _image_folder(root, suffix)
    broken = root / "train" / "b" / f"2{suffix}"
    data = broken.read_bytes()
    broken.write_bytes(data[:len(data) // 2])
    with pytest.raises(UserError) as info:
        image_folder(root, workers=1)   # folder-stats decodes the training images in a worker
    assert info.value.cause.startswith(f"cannot read image {broken}: "), info.value.cause
    assert "\n" not in info.value.cause and "DataLoader worker" not in info.value.cause
    assert info.value.hint == "remove or replace the broken file"


def test_a_workers_user_error_reaches_the_main_process_whole(tmp_path):
    """Any dataset's UserError, raised in a worker process, keeps its cause and hint."""
    from edgecompress.inputs.loaders import loader
    with pytest.raises(UserError) as info:
        for _ in loader(_Refuses(), batch_size=2, workers=1):
            pass
    assert (info.value.cause, info.value.hint) == ("item 3 is bad", "fix item 3")


class _Refuses:
    """Four items, the last one refused (module level: workers receive it pickled)."""

    def __len__(self):
        return 4

    def __getitem__(self, i):
        if i == 3:
            raise UserError("item 3 is bad", "fix item 3")
        return np.zeros(2, np.float32), 0


# ---------------------------------------------------------------- --resume loads no code


class _Planted:
    """What an attacker could put in a run directory: unpickling it calls open(marker, "w")."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return open, (self.marker, "w")


def _rundir_with(tmp_path: Path, saved) -> "RunDir":
    import torch
    from edgecompress.pipeline.rundir import RunDir
    torch.save(saved, tmp_path / "model_pruned.pt")
    manifest = {"stages": {"finetune": {"finished": True, "artifacts": {"pruned_model": {"path": "model_pruned.pt"}}}}}
    return RunDir(tmp_path, manifest)


def test_resume_does_not_run_code_from_a_planted_model_file(tmp_path):
    marker = tmp_path / "pwned"
    rundir = _rundir_with(tmp_path, {"model": _Planted(marker)})
    with pytest.raises(UserError) as info:
        rundir.load_model("finetune", "pruned_model")
    assert not marker.exists(), "unpickling ran code from the run directory"
    assert info.value.cause.startswith(f"cannot load {tmp_path / 'model_pruned.pt'} safely: ")
    assert "\n" not in info.value.cause


def test_resume_still_loads_the_modules_a_run_saved(tmp_path):
    import torch
    from edgecompress.zoo import create_model
    torch.manual_seed(0)
    model = create_model("tiny-resnet").eval()
    loaded = _rundir_with(tmp_path, model).load_model("finetune", "pruned_model")
    x = torch.randn(2, 1, 16, 16)
    assert type(loaded) is type(model) and not loaded.training
    assert torch.equal(loaded(x), model(x))


def test_a_module_class_that_was_never_imported_is_not_imported_to_load_it(tmp_path):
    """Only classes of modules already imported are allowed; naming another module imports nothing."""
    import sys

    import torch
    from edgecompress.pipeline.rundir import _imported, _module_classes
    torch.save(torch.nn.Linear(2, 2), tmp_path / "m.pt")
    assert _module_classes(tmp_path / "m.pt") == [torch.nn.Linear]
    assert "antigravity" not in sys.modules
    assert _imported("antigravity.Thing", sys.modules) is None and "antigravity" not in sys.modules


# ---------------------------------------------------------------- ssh addresses that would be options


@pytest.mark.parametrize("url", ["ssh://-oProxyCommand=touch%20/tmp/x@host", "ssh://me@-oProxyCommand=sh",
                                 "ssh://-me@host:22"])
def test_an_ssh_user_or_host_starting_with_a_dash_is_refused(url):
    from edgecompress.profiles import SSH_URL, load_profile
    from edgecompress.targets.ssh import SSHDevice, SSHProbe
    assert not SSH_URL.match(url)
    with pytest.raises(UserError, match="may not start with '-'"):
        SSHDevice.parse(url)
    with pytest.raises(UserError, match="may not start with '-'"):
        SSHProbe(url, load_profile("x86-cpu"))


def test_a_profile_with_an_option_like_ssh_address_is_invalid():
    import pydantic

    from edgecompress.profiles import load_profile
    data = load_profile("x86-cpu").model_dump()
    with pytest.raises(pydantic.ValidationError, match="may not start with '-'"):
        type(load_profile("x86-cpu")).model_validate({**data, "latency": "ssh://-oProxyCommand=sh@host"})


def test_ssh_and_scp_end_their_options_before_the_address(monkeypatch, tmp_path):
    import subprocess

    from edgecompress.profiles import load_profile
    from edgecompress.targets.ssh import SSHProbe
    seen = []
    monkeypatch.setattr(subprocess, "run", lambda argv, **kw: seen.append(argv) or
                        subprocess.CompletedProcess(argv, 0, "", ""))
    probe = SSHProbe("ssh://me@board:2222", load_profile("x86-cpu"))
    probe.ssh("true", timeout=5)
    probe.copy([tmp_path / "model.xml"], "/tmp/d")
    for argv in seen:
        assert argv.index("--") < min(i for i, a in enumerate(argv) if a.startswith("me@board"))
