"""The GPU path's device mapping and precision rules (training/device.py, distill.py,
evaluation.py, distributed.py), checked on the CPU: CUDA is faked where a rule only reads what
torch reports about it. The few tests that need a real GPU are marked `gpu` and skip without one
(scripts/gpu_check.sh runs them)."""
from __future__ import annotations

import contextlib
import os
from pathlib import Path
import warnings

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from edgecompress.errors import UserError
from edgecompress.training import device as D
from edgecompress.training import distributed as DD
from edgecompress.training import evaluation as E
from edgecompress.training.distill import DistillConfig, augment, distill

CUDA = torch.cuda.is_available()
needs_no_cuda = pytest.mark.skipif(CUDA, reason="this machine has CUDA")


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4))


def _data(n: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.randn(n, 1, 12, 12, generator=g), torch.randint(0, 4, (n,), generator=g)


# --- which GPU ------------------------------------------------------------------------------------

@pytest.mark.parametrize("ranks, gpus, expected", [(3, 2, [0, 1, 0]), (4, 4, [0, 1, 2, 3]), (2, 1, [0, 0])])
@pytest.mark.parametrize("spec", ["cuda", "auto"])
def test_plain_cuda_is_local_rank_modulo_the_gpus(spec, ranks, gpus, expected):
    assert [D.cuda_index(spec, count=gpus, local_rank=r) for r in range(ranks)] == expected


def test_an_explicit_index_is_the_same_for_every_rank():
    assert [D.cuda_index("cuda:1", count=2, local_rank=r) for r in range(3)] == [1, 1, 1]


@pytest.mark.parametrize("spec, gpus", [("cuda:2", 2), ("cuda:1", 1), ("cuda:7", 4)])
def test_an_index_past_the_gpus_is_the_users_error(spec, gpus):
    with pytest.raises(UserError) as err:
        D.cuda_index(spec, count=gpus, local_rank=0)
    assert err.value.cause == f"--train-device {spec}: there are {gpus} CUDA device(s)"
    assert f"cuda:0 .. cuda:{gpus - 1}" in err.value.hint


def test_resolve_cpu_is_the_cpu():
    assert D.resolve_device("cpu") == torch.device("cpu")


@needs_no_cuda
def test_auto_without_cuda_is_the_cpu():
    assert D.resolve_device("auto") == torch.device("cpu")


@needs_no_cuda
@pytest.mark.parametrize("spec", ["cuda", "cuda:0"])
def test_asking_for_cuda_without_it_is_the_users_error(spec):
    with pytest.raises(UserError) as err:
        D.resolve_device(spec)
    assert "no CUDA device" in err.value.cause and "--train-device cpu" in err.value.hint


@pytest.mark.parametrize("spec", ["gpu", "CUDA", "cuda:x", "cuda:-1", ""])
def test_a_misspelt_device_is_the_users_error(spec):
    with pytest.raises(UserError, match="unknown --train-device"):
        D.resolve_device(spec)


@pytest.fixture
def backend_flags():
    """Restores torch's global cuDNN / cuBLAS flags after the test (monkeypatch cannot: the cuBLAS
    module's flags are properties it would delete on undo)."""
    flags = [(torch.backends.cudnn, "deterministic"), (torch.backends.cudnn, "benchmark"),
             (torch.backends.cudnn, "allow_tf32"), (torch.backends.cuda.matmul, "allow_tf32")]
    saved = [(obj, name, getattr(obj, name)) for obj, name in flags]
    yield
    for obj, name, value in saved:
        setattr(obj, name, value)


@pytest.fixture
def fake_cuda(monkeypatch, backend_flags):
    """torch reports two GPUs; set_device records its argument."""
    current = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "set_device", current.append)
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = False, True
    return current


@pytest.mark.parametrize("local_rank, spec, expected", [(3, "cuda", 1), (2, "auto", 0), (1, "cuda:0", 0)])
def test_resolve_cuda_takes_this_ranks_gpu_and_makes_it_current(fake_cuda, monkeypatch, local_rank, spec, expected):
    monkeypatch.setenv("LOCAL_RANK", str(local_rank))
    device = D.resolve_device(spec)
    assert device == torch.device("cuda", expected) and fake_cuda == [device]
    assert torch.backends.cudnn.deterministic and not torch.backends.cudnn.benchmark


def test_resolve_cuda_index_past_the_gpus_is_the_users_error(fake_cuda):
    with pytest.raises(UserError, match="there are 2 CUDA device"):
        D.resolve_device("cuda:2")
    assert fake_cuda == []


# --- which precision ------------------------------------------------------------------------------

def test_no_grad_scaler_and_no_autocast_on_the_cpu():
    cpu = torch.device("cpu")
    assert D.grad_scaler(cpu) is None
    assert isinstance(D.autocast(cpu), contextlib.nullcontext)
    with D.autocast(cpu):
        assert not torch.is_autocast_enabled("cpu")
        assert _model()(torch.randn(2, 1, 12, 12)).dtype == torch.float32


@pytest.fixture
def capability(monkeypatch):
    """Fake compute capability; records which device it was asked about."""
    asked: list = []

    def set_to(cap: tuple[int, int]) -> list:
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda d=None: asked.append(d) or cap)
        return asked
    return set_to


@pytest.mark.parametrize("cap, dtype", [((8, 0), torch.bfloat16), ((9, 0), torch.bfloat16),
                                        ((7, 5), torch.float16), ((6, 1), torch.float16)])
def test_cuda_precision_follows_the_devices_compute_capability(capability, cap, dtype):
    asked = capability(cap)
    gpu1 = torch.device("cuda", 1)
    assert D.amp_dtype(gpu1) == dtype and asked == [gpu1]   # asked of the device, not the current GPU
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")   # "CUDA is not available. Disabling": only the choice counts
        ctx, scaler = D.autocast(gpu1), D.grad_scaler(gpu1)
    assert isinstance(ctx, torch.autocast) and ctx.device == "cuda" and ctx.fast_dtype == dtype
    if dtype == torch.bfloat16:
        assert scaler is None                                 # bfloat16 has float32's exponent range
    else:
        assert type(scaler).__name__ == "GradScaler"          # float16 gradients underflow unscaled


@pytest.fixture
def no_autocast(monkeypatch):
    """Entering autocast anywhere (torch's or the package's helper) fails the test."""
    def refuse(*args, **kwargs):
        raise AssertionError(f"autocast entered: {args} {kwargs}")
    monkeypatch.setattr(torch, "autocast", refuse)
    monkeypatch.setattr(torch.amp, "autocast", refuse)
    monkeypatch.setattr(D, "autocast", refuse)
    monkeypatch.setattr(E, "autocast", refuse, raising=False)   # should evaluation ever import it


def _record_precision(model: nn.Module) -> list:
    """Per forward of each layer: (output dtype, autocast on?, TF32 convolutions or matmuls allowed?)."""
    seen = []

    def hook(module, args, out):
        seen.append((out.dtype, torch.is_autocast_enabled("cpu") or torch.is_autocast_enabled("cuda"),
                     torch.backends.cudnn.allow_tf32 or torch.backends.cuda.matmul.allow_tf32))
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear, nn.BatchNorm2d)):
            m.register_forward_hook(hook)
    return seen


def test_accuracy_is_measured_in_float32_without_autocast(no_autocast):
    model, (x, y) = _model(), _data()
    seen = _record_precision(model)
    acc = E.model_accuracy(model, E.tensor_batches(x, y, batch_size=16), device="cpu")
    assert seen and set(seen) == {(torch.float32, False, False)}
    with torch.no_grad():
        assert acc == pytest.approx(100.0 * float((model(x).argmax(1) == y).float().mean()))


def test_batchnorm_recalibration_is_float32_without_autocast(no_autocast):
    model, (x, _) = _model(), _data()
    seen = _record_precision(model)
    E.recalibrate_bn(model, [x[:32], x[32:]], device="cpu")
    assert seen and set(seen) == {(torch.float32, False, False)}
    features = model[0](x)   # two equal batches: the cumulative average is the mean over all images
    torch.testing.assert_close(model[1].running_mean, features.mean((0, 2, 3)).detach())


def test_tf32_settings_are_restored_after_a_measurement(backend_flags):
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = True
    model, (x, y) = _model(), _data()
    E.model_accuracy(model, E.tensor_batches(x, y))
    E.recalibrate_bn(model, [x])
    assert torch.backends.cudnn.allow_tf32 and torch.backends.cuda.matmul.allow_tf32


def test_distillation_on_the_cpu_never_enters_autocast(no_autocast):
    x, y = _data()
    student, teacher = _model(), _model().eval()
    losses = distill(student, teacher, TensorDataset(x, y), steps=3, device="cpu",
                     config=DistillConfig(batch_size=16, augment=True))
    assert len(losses) == 3 and all(torch.isfinite(torch.tensor(losses)))


# --- augment: batched gather == per image -----------------------------------------------------------

def _augment_one_by_one(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """The spec, image by image: zero-pad by max(1, round(side / 14)), crop at a random offset,
    flip half of them; random draws in augment's order (all dy, all dx, all flips)."""
    n, c, h, w = x.shape
    pad = max(1, round(min(h, w) / 14))
    dy = torch.randint(0, 2 * pad + 1, (n,), generator=gen)
    dx = torch.randint(0, 2 * pad + 1, (n,), generator=gen)
    flip = torch.rand(n, generator=gen) < 0.5
    out = torch.empty_like(x)
    for i in range(n):
        canvas = torch.zeros(c, h + 2 * pad, w + 2 * pad, dtype=x.dtype)
        canvas[:, pad:pad + h, pad:pad + w] = x[i]
        crop = canvas[:, int(dy[i]):int(dy[i]) + h, int(dx[i]):int(dx[i]) + w]
        out[i] = torch.flip(crop, dims=[2]) if flip[i] else crop
    return out


@pytest.mark.parametrize("shape", [(16, 1, 28, 28), (5, 3, 13, 9), (7, 2, 15, 4), (1, 1, 1, 1), (9, 3, 64, 64)])
def test_batched_augment_equals_the_per_image_reference(shape):
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(3))
    original = x.clone()
    gen_a, gen_b = torch.Generator().manual_seed(11), torch.Generator().manual_seed(11)
    for _ in range(3):   # consecutive batches: both leave the generator in the same state
        got, want = augment(x, gen_a), _augment_one_by_one(x, gen_b)
        assert got.shape == x.shape and got.dtype == x.dtype
        assert torch.equal(got, want), f"{int((got != want).sum())} of {got.numel()} values differ"
    assert torch.equal(gen_a.get_state(), gen_b.get_state())
    assert torch.equal(x, original)   # the input batch is not modified


def test_augment_does_shift_and_flip():
    x = torch.arange(8 * 28 * 28, dtype=torch.float32).reshape(8, 1, 28, 28)
    out = augment(x, torch.Generator().manual_seed(0))
    assert not torch.equal(out, x) and (out == 0).any()   # shifted in zero padding


# --- the gradient process group -------------------------------------------------------------------
# In a child process: a process group initialised and destroyed inside the pytest process left gloo
# state behind that crashed a later torch.multiprocessing.spawn (test_distill) with SIGSEGV.

GROUP_CHECKS = r"""
import os, sys, tempfile
import torch
import torch.distributed as dist
from edgecompress.training import distributed as DD
dist.init_process_group("gloo", init_method="file://" + os.path.join(tempfile.mkdtemp(), "store"), rank=0, world_size=1)
asked = []
dist.new_group = lambda backend=None, **kw: asked.append(backend) or f"{backend}-group"
def fresh(local_world, gpus):
    DD._GROUPS.clear(); asked.clear()
    os.environ["LOCAL_WORLD_SIZE"] = str(local_world)
    torch.cuda.device_count = lambda: gpus
case = sys.argv[1]
if case == "cpu":
    fresh(1, 0)
    assert DD.training_group(torch.device("cpu")) is None and asked == []
elif case == "own-gpu":
    fresh(2, 2)
    assert DD.training_group(torch.device("cuda", 1)) == "nccl-group"
    assert DD.training_group(torch.device("cuda", 1)) == "nccl-group" and asked == ["nccl"]
elif case == "shared-gpu":   # NCCL refuses two ranks on one GPU ("Duplicate GPU detected", NCCL >= 2.5)
    fresh(3, 2)
    assert DD.training_group(torch.device("cuda", 0)) is None and "nccl" not in asked
dist.destroy_process_group()
print("ok", case)
"""


@pytest.mark.parametrize("case", ["cpu", "own-gpu", "shared-gpu"])
def test_the_gradient_group_is_nccl_only_when_every_rank_has_its_own_gpu(case):
    """CPU: the default gloo group; every rank on its own GPU: NCCL; ranks sharing a GPU (plain
    `cuda` puts 3 ranks on 2 GPUs round-robin): gloo."""
    import subprocess
    import sys
    repo = Path(__file__).resolve().parents[1]
    proc = subprocess.run([sys.executable, "-c", GROUP_CHECKS, case], capture_output=True, text=True, timeout=120,
                          cwd=repo, env={**os.environ, "PYTHONPATH": str(repo)})
    assert proc.returncode == 0 and f"ok {case}" in proc.stdout, proc.stdout + proc.stderr


# --- on a GPU ----------------------------------------------------------------------------------------

@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU")
def test_gpu_resolve_autocast_and_scaler_agree():
    device = D.resolve_device("cuda")
    assert device.type == "cuda" and torch.cuda.current_device() == device.index
    conv = nn.Conv2d(1, 4, 3).to(device)
    with D.autocast(device):
        out = conv(torch.randn(2, 1, 8, 8, device=device))
    assert out.dtype == D.amp_dtype(device)
    assert (D.grad_scaler(device) is None) == (D.amp_dtype(device) == torch.bfloat16)


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU")
def test_gpu_measurements_match_the_cpu_and_leave_the_model_there():
    device = D.resolve_device("cuda")
    model, (x, y) = _model(), _data(512)
    on_cpu = E.model_accuracy(model, E.tensor_batches(x, y, batch_size=128), device="cpu")
    on_gpu = E.model_accuracy(model, E.tensor_batches(x, y, batch_size=128), device=device)
    assert abs(on_gpu - on_cpu) <= 100.0 / len(y) and next(model.parameters()).device.type == "cpu"
    a, b = _model(), _model()
    E.recalibrate_bn(a, [x[:256], x[256:]], device="cpu")
    E.recalibrate_bn(b, [x[:256], x[256:]], device=device)
    assert next(b.parameters()).device.type == "cpu"
    torch.testing.assert_close(b[1].running_mean, a[1].running_mean, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(b[1].running_var, a[1].running_var, atol=1e-5, rtol=1e-4)


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU")
def test_gpu_distillation_trains_and_returns_cpu_modules():
    device = D.resolve_device("cuda")
    x, y = _data(256)
    student, teacher = _model(), _model().eval()
    before = [p.detach().clone() for p in student.parameters()]
    losses = distill(student, teacher, TensorDataset(x, y), steps=4, device=device,
                     config=DistillConfig(batch_size=32, augment=True))
    assert len(losses) == 4 and all(torch.isfinite(torch.tensor(losses)))
    assert all(p.device.type == "cpu" for p in [*student.parameters(), *teacher.parameters()])
    assert any(not torch.equal(a, b) for a, b in zip(before, student.parameters()))
