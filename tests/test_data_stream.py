"""Streamed data, the declared preprocessing, the chance-level warning and --train-device (issue 16)."""
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from edgecompress.cli import main
from edgecompress.errors import UserError
from edgecompress.inputs import models as models_mod
from edgecompress.pipeline.config import RunConfig
from edgecompress.pipeline.context import Context
from edgecompress.pipeline.measure import accuracy, original_accuracy, run_accuracy
from edgecompress.inputs.data import describe, resolve_data
from edgecompress.inputs.imagefolder import ImageFolderDataset
from edgecompress.inputs.resolve import resolve_inputs
from edgecompress.inputs.preprocess import from_flags
from edgecompress.pipeline.ui import UI
from edgecompress.zoo.fashion_mnist import DEBIAN_DIR

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from tests import tiny_specs  # noqa: E402

MEAN, STD = (0.4, 0.5, 0.6), (0.2, 0.25, 0.3)
DECLARED = ["--resize", "12", "--crop", "10", "--mean", "0.4,0.5,0.6", "--std", "0.2,0.25,0.3"]


@pytest.fixture(autouse=True)
def _repo_cwd(monkeypatch):
    monkeypatch.chdir(REPO)


def _folder(root: Path, *, per_class: int = 3, size=(20, 16), mode="RGB", classes=("a", "b")) -> Path:
    from PIL import Image
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for cls in classes:
            (root / split / cls).mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                shape = (size[1], size[0], 3) if mode == "RGB" else (size[1], size[0])
                Image.fromarray(rng.integers(0, 255, shape, dtype=np.uint8), mode).save(root / split / cls / f"{i}.png")
    return root


def _expected(path: Path) -> torch.Tensor:
    """The declared preprocessing written out by hand: shorter side 12, centre 10x10, /255, mean/std."""
    from PIL import Image
    with Image.open(path) as im:
        im = im.convert("RGB")
        w, h = im.size
        im = im.resize((round(w * 12 / min(w, h)), round(h * 12 / min(w, h))), Image.BILINEAR)
        w, h = im.size
        left, top = (w - 10) // 2, (h - 10) // 2
        arr = np.asarray(im.crop((left, top, left + 10, top + 10)), dtype=np.float32) / 255.0
    arr = (arr - np.array(MEAN, np.float32)) / np.array(STD, np.float32)
    return torch.from_numpy(arr.transpose(2, 0, 1).copy())


def _config(**kw) -> RunConfig:
    return RunConfig(target="x86-cpu", max_acc_drop=1, **kw)


def _ctx(data, model, **kw) -> Context:
    return Context(config=_config(**kw), rundir=None, ui=UI(quiet=True), data=data, original=model,
                   model_name="m", target=None, builder=None)


class Recorder(nn.Module):
    """Logits from a fixed linear map; remembers every input it saw."""

    def __init__(self, classes: int = 2) -> None:
        super().__init__()
        self.fc = nn.LazyLinear(classes)
        self.seen: list[torch.Tensor] = []

    def forward(self, x):
        self.seen.append(x.detach().clone())
        return self.fc(x.flatten(1))


def _rows(tensors) -> list[bytes]:
    return sorted(t.numpy().round(4).tobytes() for batch in tensors for t in torch.as_tensor(batch))


def test_declared_preprocessing_reaches_the_model_identically_in_evaluation_and_calibration(tmp_path):
    from edgecompress.calibration import calibration_batches
    root = _folder(tmp_path)
    pre = from_flags(preset=None, resize=12, crop=10, mean="0.4,0.5,0.6", std="0.2,0.25,0.3")
    data = resolve_data(f"imagefolder:{root}", preprocess=pre, workers=1)
    assert data.input_shape == (3, 10, 10) and data.preprocess == pre and data.workers == 1
    want_val = [_expected(p) for p in sorted((root / "val").glob("*/*.png"))]
    want_train = [_expected(p) for p in sorted((root / "train").glob("*/*.png"))]
    model = Recorder()
    ctx = _ctx(data, model)
    accuracy(ctx, model)                                  # PyTorch evaluation (a worker decodes)
    assert _rows(model.seen) == _rows([torch.stack(want_val)])
    engine_inputs = []
    run_accuracy(ctx, lambda x: (engine_inputs.append(x.copy()), np.zeros((len(x), 2), np.float32))[1])
    assert _rows(engine_inputs) == _rows([torch.stack(want_val)])         # the built engine's evaluation
    calib = calibration_batches(data.train, count=len(data.train), batch_size=4, workers=1)
    assert _rows(calib) == _rows([torch.stack(want_train)])               # INT8 calibration
    assert _rows(list(ctx.data.train_batches(count=2, batch_size=3, seed=0))) == _rows([torch.stack(want_train)])  # BN / importance
    assert torch.equal(ctx.data.images(2), torch.stack(want_val[:2]))  # parity / latency inputs
    recorded = pre.record()
    assert recorded["resize"] == 12 and recorded["crop"] == 10 and recorded["mean"] == list(MEAN)


def test_streamed_folder_is_never_materialised(tmp_path, monkeypatch):
    root = _folder(tmp_path, per_class=20, size=(8, 8), mode="L")
    calls = {"n": 0}
    real = ImageFolderDataset.__getitem__

    def counting(self, i):
        calls["n"] += 1
        return real(self, i)
    monkeypatch.setattr(ImageFolderDataset, "__getitem__", counting)

    def no_whole_split(ds, *, limit=None):
        assert limit is not None and limit <= 2, "a whole split was materialised"
        return real_as_tensors(ds, limit=limit)
    real_as_tensors = models_mod.as_tensors
    monkeypatch.setattr(models_mod, "as_tensors", no_whole_split)
    cfg = _config(data=f"imagefolder:{root}", model="tests.tiny_specs:model", input_size="12",
                  preprocess="none", data_workers=0)
    data, loaded, _ = resolve_inputs(cfg)                    # model check reads 2 images, labels none
    assert calls["n"] <= 3 and len(data.train) == 40
    ctx = _ctx(data, loaded.model)
    calls["n"] = 0
    stream = ctx.data.train_batches(count=2, batch_size=4, seed=0)
    assert len(stream) == 2 and len(stream[:1]) == 1
    for _ in range(2):                                        # re-iterable: decoded again, not held
        assert [tuple(b.shape) for b in stream] == [(4, 1, 12, 12)] * 2
    assert calls["n"] == 16


def test_function_data_labels_come_from_targets_without_reading_images():
    class Counting(torch.utils.data.Dataset):
        reads = 0

        def __init__(self, n):
            self.targets = [i % 3 for i in range(n)]

        def __len__(self):
            return len(self.targets)

        def __getitem__(self, i):
            Counting.reads += 1
            return torch.zeros(1, 4, 4), self.targets[i]
    splits = describe(Counting(500), Counting(100), None, name="counting")
    assert splits.num_classes == 3 and Counting.reads <= 1


def test_chance_level_original_gets_a_loud_warning_and_a_note(capsys):
    data = resolve_data("tests.tiny_specs:data")

    class Constant(nn.Module):
        def forward(self, x):
            return torch.zeros(len(x), 4) + torch.tensor([1.0, 0, 0, 0])
    ctx = Context(config=_config(), rundir=None, ui=UI(), data=data, original=Constant(), model_name="m", target=None,
                  builder=None)
    acc = original_accuracy(ctx)
    assert acc < 1.5 * 25
    assert any("near chance" in n and "preprocessing" in n and "weights" in n for n in ctx.notes)
    assert "WARNING" in capsys.readouterr().err


def test_trained_original_gets_no_warning(tmp_path):
    tiny_specs.trained_weights(tmp_path / "w.pt", steps=60)
    model = tiny_specs.model()
    model.load_state_dict(torch.load(tmp_path / "w.pt"))
    ctx = _ctx(resolve_data("tests.tiny_specs:data"), model)
    assert original_accuracy(ctx) > 1.5 * 25 and not ctx.notes


@pytest.mark.parametrize("flags, expected", [
    (["--preprocess", "imagenett"], "did you mean 'imagenet'"),
    (["--mean", "0.5"], "--mean and --std go together"),
    (["--mean", "0.5,x", "--std", "1"], "not a comma-separated list"),
    (["--input-size", "0x3"], "not positive"),
    (["--crop", "0"], "--crop 0"),
    (["--train-device", "tpu"], "unknown --train-device"),
    (["--data-workers", "-1"], "--data-workers -1"),
])
def test_bad_preprocessing_and_device_flags_are_one_line_errors(capsys, flags, expected):
    assert main(["--target", "x86-cpu", "--max-acc-drop", "1", *flags]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and err[0].startswith("error: ") and expected in err[0] and err[1].startswith("hint: ")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the machine without CUDA")
def test_cuda_requested_without_cuda_is_the_users_error(capsys, tmp_path):
    argv = ["--target", "x86-cpu", "--max-acc-drop", "1", "--train-device", "cuda", "--out", str(tmp_path / "r"),
            "--model", "tests.tiny_specs:model", "--data", "tests.tiny_specs:data"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert "no CUDA device" in err[0] and len(err) == 2
    from edgecompress.training.device import resolve_device
    assert resolve_device("auto") == torch.device("cpu") and resolve_device("cpu").type == "cpu"


def test_folder_stats_is_measured_on_the_training_images(tmp_path):
    root = _folder(tmp_path, mode="L", size=(8, 8))
    data = resolve_data(f"imagefolder:{root}", preprocess=from_flags(preset="folder-stats"), workers=0)
    x = torch.stack([data.train[i][0] for i in range(len(data.train))])
    assert abs(float(x.mean())) < 1e-4 and abs(float(x.std()) - 1) < 0.05
    assert data.preprocess.name == "folder-stats" and len(data.preprocess.mean) == 1
    with pytest.raises(UserError, match="folder-stats"):
        resolve_data("tests.tiny_specs:data", preprocess=from_flags(preset="folder-stats"))


def test_zoo_checkpoint_declares_its_preprocessing(tmp_path, monkeypatch):
    from edgecompress import zoo
    from edgecompress.inputs.resolve import declared_preprocess
    assert declared_preprocess(_config()) is None            # the shipped ResNet-20 declares none: 28x28 as today
    torch.save({"state_dict": {}, "preprocess": {"resize": 64, "crop": None, "mean": [0.2860], "std": [0.3530]}},
               tmp_path / "resnet20_fashion-mnist.pt")
    monkeypatch.setattr(zoo, "CHECKPOINTS", tmp_path)
    pre = declared_preprocess(_config())
    assert pre.resize == 64 and pre.crop is None and pre.mean == (0.2860,) and pre.name == "checkpoint:resnet20"
    assert declared_preprocess(_config(resize=32)).resize == 32   # flags win
    assert declared_preprocess(_config(weights="w.pt")) is None   # the user's weights: not the checkpoint's


@pytest.mark.skipif(not DEBIAN_DIR.is_dir(), reason="dataset-fashion-mnist is not installed")
def test_fashion_mnist_resized_like_the_zoo_training_script():
    import torch.nn.functional as F
    from edgecompress.inputs.preprocess import from_record
    pre = from_record({"resize": 64, "crop": None, "mean": [0.2860], "std": [0.3530]}, name="checkpoint:x")
    big, small = resolve_data("fashion-mnist", preprocess=pre), resolve_data("fashion-mnist")
    assert big.input_shape == (1, 64, 64) and small.input_shape == (1, 28, 28)
    x28 = small.val.tensors[0][:3]                            # normalised 28x28, as today
    want = F.interpolate(x28, size=(64, 64), mode="bilinear", align_corners=False)   # scripts/train_zoo.py
    got = torch.stack([big.val[i][0] for i in range(3)])
    assert torch.allclose(got, want, atol=1e-5)


def test_compress_on_an_image_folder_records_the_preprocessing(tmp_path):
    from PIL import Image
    rng = np.random.default_rng(0)
    root = tmp_path / "imgs"
    for split, n in (("train", 24), ("val", 12)):
        for k in range(4):
            (root / split / f"c{k}").mkdir(parents=True)
            for i in range(n // 4):
                img = rng.integers(0, 60, (16, 16), dtype=np.uint8)
                r, c = divmod(k, 2)
                img[3 + 6 * r:8 + 6 * r, 3 + 6 * c:8 + 6 * c] += 150
                Image.fromarray(img, "L").save(root / split / f"c{k}" / f"{i}.png")
    out = tmp_path / "run"
    argv = ["--target", "tiny-estimate", "--profiles", str(REPO / "tests" / "fixtures" / "profiles"),
            "--max-acc-drop", "50", "--model", "tests.tiny_specs:model", "--data", f"imagefolder:{root}",
            "--input-size", "12", "--mean", "0.3", "--std", "0.3", "--augment", "--data-workers", "1",
            "--out", str(out), "--min-search-interval", "0.3", "--finetune-epochs", "1", "--probe-finetune-steps", "2",
            "--bn-batches", "1", "--batch-size", "8", "--threads", "1", "--train-device", "cpu"]
    assert main(argv) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["preprocess"] == {"name": "custom", "size": [12, 12], "resize": None, "crop": None,
                                    "mean": [0.3], "std": [0.3]}
    assert report["train_device"] == "cpu"
    assert any("near chance" in n for n in report["notes"])   # the factory's untrained weights


def test_three_channel_declaration_makes_grayscale_files_rgb(tmp_path):
    root = _folder(tmp_path, mode="L", size=(300, 260))
    data = resolve_data(f"imagefolder:{root}", preprocess=from_flags(preset="imagenet"), workers=0)
    assert data.input_shape == (3, 224, 224) and data.preprocess.name == "imagenet"
