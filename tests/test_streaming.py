"""babysit.data.streaming: data larger than data.in_memory_limit read from disk per batch.

The specification: a streamed load of a folder gives the same splits, the same preprocessing
(fitted in one pass) and the same batches as loading it whole; a run on it trains to the
same weights; a folder of .npy files is memory-mapped; whatever would need every example in
memory is bounded or refused in one line.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from babysit.config import DataSpec, Experiment
from babysit.data import Batches, LazyInputs, Preprocessor, StreamBatches, load
from babysit.data.streaming import SAMPLE_EXAMPLES, bounded
from babysit.errors import BabysitError
from babysit.rundir import read_jsonl


def write_image_folder(root: Path, count: int, size: int = 12, seed: int = 0, rgb: bool = False) -> Path:
    """``count`` PNG images in 4 class folders: a bright blob whose position is the class, on noise."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    rows, cols = np.mgrid[:size, :size]
    for label in range(4):
        (root / f"class{label}").mkdir(parents=True, exist_ok=True)
    for i in range(count):
        label = i % 4
        cy, cx = size * (0.25 + 0.5 * (label // 2)), size * (0.25 + 0.5 * (label % 2))
        picture = 200 * np.exp(-((rows - cy) ** 2 + (cols - cx) ** 2) / (size / 4) ** 2) + rng.normal(0, 25, (size, size))
        picture = np.clip(picture, 0, 255).astype(np.uint8)
        image = Image.fromarray(np.stack([picture] * 3, -1), "RGB") if rgb else Image.fromarray(picture, "L")
        image.save(root / f"class{label}" / f"{i:04d}.png")
    return root


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    return write_image_folder(tmp_path_factory.mktemp("images"), 200)


def both(**data) -> tuple:
    """The same data loaded whole and streamed (in_memory_limit 0)."""
    return load(DataSpec(**data)), load(DataSpec(**data, in_memory_limit=0))


# --------------------------------------------------------------------------- preprocessing


@pytest.mark.parametrize("steps", [["center"], ["standardize"], ["center", "standardize"], ["zca_whiten"],
                                   ["standardize", "pca_whiten"], ["pca_whiten", "standardize"]])
@pytest.mark.parametrize("shape", [(6,), (2, 3, 3)])
def test_streamed_fit_equals_in_memory_fit(steps, shape):
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(301, *shape, generator=gen) * torch.arange(1.0, 1.0 + np.prod(shape)).reshape(shape) + 3.0
    x[:, 0] = 7.0 if len(shape) == 1 else x[:, 0]  # a constant feature: only centred
    whole = Preprocessor(steps).fit(x)
    streamed = Preprocessor(steps).fit_streamed(x.split(64), shape)
    for (shift_a, weight_a), (shift_b, weight_b) in zip(whole.fitted, streamed.fitted, strict=True):
        assert torch.allclose(shift_a, shift_b, rtol=1e-9, atol=1e-9)
        if weight_a is None:
            assert weight_b is None
        elif weight_a.ndim == 2:  # eigenvectors are defined up to sign: compare W W^T
            assert torch.allclose(weight_a @ weight_a.T, weight_b @ weight_b.T, rtol=1e-6, atol=1e-6)
        else:
            assert torch.allclose(weight_a, weight_b, rtol=1e-9)
    if steps == ["standardize"]:  # closed-form truth: per feature, or per channel for images
        pooled = x.double().transpose(0, 1).reshape(shape[0], -1) if len(shape) == 3 else x.double().T
        std = pooled.std(1)
        expected = torch.where(std <= 1e-6 * pooled.mean(1).abs().clamp_min(1), torch.ones_like(std), 1 / std)
        per = int(np.prod(shape[1:])) if len(shape) == 3 else 1
        assert torch.allclose(streamed.fitted[0][1], expected.repeat_interleave(per), rtol=1e-12)
        assert torch.allclose(streamed.transform(x), whole.transform(x), atol=1e-6)


def test_streamed_whitening_is_bounded_like_in_memory():
    with pytest.raises(BabysitError, match="limited to 4096 features"):
        Preprocessor(["zca_whiten"]).fit_streamed(iter(()), (4097,))


# --------------------------------------------------------------------------- folder


def test_streamed_folder_gives_the_same_splits_and_batches(folder):
    whole, streamed = both(source="folder", path=str(folder), batch_size=16)
    assert streamed.streaming and not whole.streaming
    assert isinstance(streamed.train.x, LazyInputs) and streamed.input_shape == whole.input_shape == (1, 12, 12)
    for name in ("train", "val", "test"):
        a, b = getattr(whole, name), getattr(streamed, name)
        assert torch.equal(a.y, b.y) and torch.equal(a.x, b.x[:]) and b.x.shape == a.x.shape
    batches = Batches(whole.train.x, whole.train.y, 16, torch.Generator().manual_seed(3))
    streamed_batches = StreamBatches(streamed.train.x, streamed.train.y, 16, torch.Generator().manual_seed(3))
    for _ in range(2):  # two epochs: the same draws from the same generator
        pairs = list(zip(batches, streamed_batches, strict=True))
        assert all(torch.equal(xa, xb) and torch.equal(ya, yb) for (xa, ya), (xb, yb) in pairs)
        assert torch.equal(batches.batch_indices(2), streamed_batches.batch_indices(2))
    assert batches.generator.get_state().equal(streamed_batches.generator.get_state())


def test_streamed_folder_reads_with_workers_and_rgb(tmp_path):
    root = write_image_folder(tmp_path / "rgb", 24, size=8, rgb=True)
    whole, streamed = both(source="folder", path=str(root), workers=1, val_fraction=0.0, test_fraction=0.25)
    assert streamed.input_shape == (3, 8, 8) and streamed.train.x.workers == 1
    batches = StreamBatches(streamed.train.x, streamed.train.y, 5, torch.Generator().manual_seed(0))
    reference = Batches(whole.train.x, whole.train.y, 5, torch.Generator().manual_seed(0))
    for (xa, ya), (xb, yb) in zip(reference, batches, strict=True):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)


def test_size_estimate_decides_the_path(folder):
    # 200 images of 1x12x12 float32 = 115,200 bytes: a limit just below streams, at it loads whole
    assert load(DataSpec(source="folder", path=str(folder), in_memory_limit=115_199)).streaming
    assert not load(DataSpec(source="folder", path=str(folder), in_memory_limit=115_200)).streaming
    assert DataSpec(in_memory_limit="2GB").in_memory_limit == 2_000_000_000


def test_lazy_inputs_index_like_a_tensor(folder):
    whole, streamed = both(source="folder", path=str(folder))
    a, x = whole.train.x, streamed.train.x
    mask = torch.arange(len(a)) % 3 == 0
    index = torch.tensor([5, -1, 0, 5])
    assert torch.equal(x[7], a[7]) and torch.equal(x[-3:], a[-3:]) and torch.equal(x[index], a[index])
    assert torch.equal(x[mask], a[mask]) and torch.equal(x[np.array([2, 1])], a[[2, 1]])
    assert x.dim() == 4 and len(x) == len(a) and torch.is_floating_point(x) and x.cpu().device.type == "cpu"
    assert torch.equal(bounded(x, 10), a[:10]) and bounded(a) is a
    with pytest.raises(IndexError):
        x[len(a)]
    with pytest.raises(TypeError, match="index them first"):
        torch.cat([x])
    with pytest.raises(BabysitError, match="in_memory_limit"):  # Batches would read everything
        Batches(x, streamed.train.y, 16, None)


def test_bad_image_in_a_streamed_folder_is_one_line(tmp_path):
    root = write_image_folder(tmp_path / "bad", 12, size=8)
    (root / "class1" / "zz.png").write_bytes(b"not a png")
    with pytest.raises(BabysitError, match="zz.png: not a readable image"):
        load(DataSpec(source="folder", path=str(root), in_memory_limit=0))


# --------------------------------------------------------------------------- .npy folders


def write_npy(root: Path, n: int = 120, test: int = 0) -> Path:
    rng = np.random.default_rng(1)
    root.mkdir(parents=True, exist_ok=True)
    np.save(root / "x.npy", rng.normal(size=(n, 5)).astype(np.float32) * 3 + 1)
    np.save(root / "y.npy", np.arange(n) % 3)
    if test:
        np.save(root / "x_test.npy", rng.normal(size=(test, 5)))
        np.save(root / "y_test.npy", np.arange(test) % 3)
    return root


def test_npy_folder_is_memory_mapped_and_streams(tmp_path):
    root = write_npy(tmp_path / "arrays", test=30)
    whole, streamed = both(source="npz", path=str(root))
    assert streamed.streaming and not whole.streaming and len(streamed.test) == 30
    assert type(streamed.train.x.store.array).__name__ == "memmap"
    for name in ("train", "val", "test"):
        a, b = getattr(whole, name), getattr(streamed, name)
        assert torch.equal(a.y, b.y) and torch.allclose(a.x, b.x[:], atol=1e-6)


def test_npy_folder_errors_are_one_line(tmp_path):
    root = write_npy(tmp_path / "a")
    (root / "y.npy").unlink()
    with pytest.raises(BabysitError, match="no array 'y'"):
        load(DataSpec(source="npz", path=str(root), in_memory_limit=0))
    root = write_npy(tmp_path / "b")
    x = np.load(root / "x.npy")
    x[3, 2] = np.nan
    np.save(root / "x.npy", x)
    with pytest.raises(BabysitError, match="array 'x' has 1 NaN"):
        load(DataSpec(source="npz", path=str(root), in_memory_limit=0))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(BabysitError, match="no x.npy / y.npy"):
        load(DataSpec(source="npz", path=str(empty)))


# --------------------------------------------------------------------------- runs


def spec(folder: Path, checks: dict | None = None, **data) -> Experiment:
    return Experiment(name="streamed", seed=0, data={"source": "folder", "path": str(folder), "batch_size": 32, **data},
                      model={"hidden": [32]}, optimizer={"name": "adam", "lr": 0.003}, train={"epochs": 2},
                      checks={"every": 2, **(checks or {})})


def test_streamed_run_trains_to_the_same_weights(folder, tmp_path):
    from babysit.run import run

    whole = run(spec(folder), out=tmp_path / "whole", quiet=True, report=False)
    streamed = run(spec(folder, in_memory_limit=0), out=tmp_path / "streamed", quiet=True, report=False)
    assert streamed.splits.streaming and streamed.summary["data"]["streamed"] is True
    assert "streamed" not in whole.summary["data"]
    for a, b in zip(whole.model.parameters(), streamed.model.parameters(), strict=True):
        assert torch.allclose(a, b, atol=1e-6)
    assert streamed.summary["test_acc"] == whole.summary["test_acc"]


@pytest.mark.slow
def test_a_streamed_run_resumed_ends_with_the_weights_of_an_uninterrupted_one(folder, tmp_path):
    """1 epoch, then --resume to 3 (training continues from last.pt: the batches' generator, the
    preprocessing refitted by the same streaming pass), against 3 epochs straight: every tensor equal."""
    from babysit.run import run

    def streamed(epochs):
        made = spec(folder, {"preflight": False}, in_memory_limit=0)
        made.train.epochs = epochs
        return made

    straight = run(streamed(3), out=tmp_path / "straight", quiet=True, report=False)
    run(streamed(1), out=tmp_path / "resumed", quiet=True, report=False)
    resumed = run(streamed(3), out=tmp_path / "resumed", resume=True, quiet=True, report=False)
    assert resumed.splits.streaming and resumed.summary["steps"] == straight.summary["steps"]
    for (name, a), b in zip(straight.model.state_dict().items(), resumed.model.state_dict().values(), strict=True):
        assert torch.equal(a, b), name


def test_streamed_run_refuses_what_needs_memory(folder):
    from babysit.run.runner import assemble

    with pytest.raises(BabysitError, match="checks.label_noise"):
        assemble(spec(folder, {"label_noise": True}, in_memory_limit=0))
    autoencoder = spec(folder, in_memory_limit=0)
    autoencoder.model.kind = "autoencoder"
    with pytest.raises(BabysitError, match="model.kind autoencoder"):
        assemble(autoencoder)


def test_cross_validation_folds_refuse_streamed_data_in_one_line(folder):
    from babysit.tune.folds import cross_validation_folds

    with pytest.raises(BabysitError, match="--folds: the data streams from disk"):
        cross_validation_folds(spec(folder, in_memory_limit=0), 2)
    assert len(cross_validation_folds(spec(folder), 2)) == 2  # in memory: as before


def test_leakage_search_is_bounded_on_streamed_data(folder):
    from babysit.checks.data_checks import data_findings

    _, streamed = both(source="folder", path=str(folder))
    sample = streamed.bounded(50)
    assert not sample.streaming and len(sample.train) == 50 and torch.equal(sample.test.x, streamed.test.x[:50])
    found, leakage = data_findings(streamed)
    assert leakage is not None and leakage.sizes["train"] == min(len(streamed.train), SAMPLE_EXAMPLES)


@pytest.mark.slow
def test_large_folder_streams_through_workers_and_learns(tmp_path):
    """2,000 images written and streamed through a worker process (2.5 s on 2 idle cores, more under load):
    a CNN learns the 4 well-separated blob positions to > 90% test accuracy."""
    from babysit.run import run

    root = write_image_folder(tmp_path / "images", 2000, size=16)
    spec_ = Experiment(name="big", seed=0, data={"source": "folder", "path": str(root), "in_memory_limit": "1MB",
                                                 "workers": 1, "batch_size": 64},
                       model={"kind": "cnn", "channels": [8, 8], "kernel_size": 3},
                       optimizer={"name": "adam", "lr": 0.003}, train={"epochs": 3})
    result = run(spec_, out=tmp_path / "run", quiet=True, report=False)
    assert result.splits.streaming and result.summary["data"]["streamed"]
    assert result.summary["test_acc"] > 0.9
    assert not [f.id for f in result.findings if f.severity == "error"]


@pytest.mark.slow
def test_twenty_thousand_png_images_train_through_the_streaming_path(tmp_path):
    """The issue's folder: 20,000 28x28 PNG images written here (62.7 MB as float32), streamed with
    data.in_memory_limit far below that, through 2 DataLoader workers, for one epoch; the run records
    the input wait the input_bound finding reads (benchmarks/streaming.py times the paths)."""
    from babysit.run import run

    root = write_image_folder(tmp_path / "images", 20_000, size=28)
    spec_ = Experiment(name="twenty-thousand", seed=0,
                       data={"source": "folder", "path": str(root), "in_memory_limit": "8MB", "workers": 2,
                             "batch_size": 128},
                       model={"kind": "cnn", "channels": [8, 8], "kernel_size": 3},
                       optimizer={"name": "adam", "lr": 0.003}, train={"epochs": 1})
    result = run(spec_, out=tmp_path / "run", quiet=True, report=False)
    assert result.splits.streaming and result.summary["data"]["streamed"]
    assert len(result.splits.train) + len(result.splits.val) + len(result.splits.test) == 20_000
    assert result.summary["test_acc"] > 0.9  # 4 well-separated blob positions
    epoch = [r for r in read_jsonl(tmp_path / "run" / "metrics.jsonl") if "epoch" in r][-1]
    assert 0.0 <= epoch["input_wait"] <= 1.0 and epoch["input_wait_samples"] >= 5
