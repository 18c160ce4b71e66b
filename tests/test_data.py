"""babysit.data: sources, splits, preprocessing truths, batching, and one-line data errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from babysit.config import DataSpec
from babysit.data import Batches, Preprocessor, Split, Splits, holdout, load, sources
from babysit.errors import BabysitError


@pytest.fixture(autouse=True)
def _tmp_cache(tmp_path, monkeypatch):
    """Every test caches mnist1d in its own folder, never in ~/.cache."""
    monkeypatch.setenv("BABYSIT_CACHE", str(tmp_path / "cache"))


def spec(**kw) -> DataSpec:
    kw.setdefault("preprocess", [])
    return DataSpec(**kw)


# --------------------------------------------------------------------------- sources


def test_mnist1d_shapes_and_cache_hit(tmp_path, monkeypatch):
    np.random.seed(123)
    before = np.random.get_state()[1].copy()
    splits = load(spec(samples=100, val_fraction=0.0))
    # make_dataset reseeds np.random globally; the caller's state must survive it
    assert np.array_equal(np.random.get_state()[1], before)
    assert (len(splits.train), len(splits.test), splits.val) == (80, 20, None)
    assert splits.input_shape == (40,) and splits.num_classes == 10 and splits.task == "classification"
    assert splits.train.x.dtype == torch.float32 and splits.train.y.dtype == torch.int64
    cached = list((tmp_path / "cache").glob("mnist1d-*.npz"))
    assert len(cached) == 1 and not list((tmp_path / "cache").glob("*.tmp"))

    def no_generation(args):
        raise AssertionError("the second load must come from the cache")

    monkeypatch.setattr(sources, "_make_mnist1d", no_generation)
    again = load(spec(samples=100, val_fraction=0.0))
    assert torch.equal(again.train.x, splits.train.x) and torch.equal(again.test.y, splits.test.y)
    with pytest.raises(AssertionError, match="cache"):  # other args are another cache entry
        load(spec(samples=110))


def test_mnist1d_matches_package_and_regenerates_damaged_cache(tmp_path):
    from mnist1d.data import get_dataset_args, make_dataset

    args = get_dataset_args()
    args.num_samples = 50
    truth = make_dataset(args)
    raw = sources.mnist1d(spec(samples=50))
    assert np.allclose(raw.x, truth["x"]) and np.array_equal(raw.y_test, truth["y_test"])
    (cached,) = (tmp_path / "cache").glob("mnist1d-*.npz")
    cached.write_bytes(b"not a zip")
    again = sources.mnist1d(spec(samples=50))
    assert np.allclose(again.x, truth["x"])
    with pytest.raises(BabysitError, match="data.samples"):
        sources.mnist1d(spec(samples=5))


def test_digits():
    splits = load(spec(source="digits", val_fraction=0.1, test_fraction=0.2))
    assert splits.input_shape == (1, 8, 8) and splits.train.x.shape[1:] == (1, 8, 8)
    assert len(splits.train) + len(splits.val) + len(splits.test) == 1797
    assert len(splits.test) == round(1797 * 0.2)
    assert 0.0 <= splits.train.x.min() and splits.train.x.max() <= 1.0
    # stratified: every class is in val and test in about its overall share (~10%)
    for part in (splits.val, splits.test):
        counts = torch.bincount(part.y, minlength=10).float() / len(part)
        assert torch.all((counts - 0.1).abs() < 0.02)


def test_spirals_follow_cs231n_and_depend_on_seed():
    raw = sources.spirals(spec(source="spirals", classes=4, samples=400, noise=0.0), seed=0)
    assert raw.x.shape == (400, 2) and np.bincount(raw.y).tolist() == [100] * 4
    radius = np.linalg.norm(raw.x, axis=1)
    arm = raw.x[raw.y == 1]  # noise 0: arm 1 is exactly r (sin t, cos t), t from 4 to 8
    t = np.linspace(4.0, 8.0, 100)
    assert np.allclose(arm, np.linspace(0, 1, 100)[:, None] * np.stack([np.sin(t), np.cos(t)], 1))
    assert radius.max() <= 1.0 + 1e-12
    a = load(spec(source="spirals", samples=300, split_seed=1))
    b = load(spec(source="spirals", samples=300, split_seed=1))
    c = load(spec(source="spirals", samples=300, split_seed=2))
    assert torch.equal(a.train.x, b.train.x) and torch.equal(a.val.y, b.val.y)
    assert not torch.equal(a.train.x, c.train.x)
    assert load(spec(source="spirals", samples=30, split_seed=2**62)).train.x.shape[1:] == (2,)


def test_blobs_centres_on_unit_circle():
    raw = sources.blobs(spec(source="blobs", classes=4, samples=4000, noise=0.05), seed=3)
    assert raw.x.shape == (4000, 2) and raw.num_classes == 4
    for k in range(4):
        centre = raw.x[raw.y == k].mean(0)
        angle = 2 * np.pi * k / 4
        assert np.allclose(centre, [np.cos(angle), np.sin(angle)], atol=0.01)
    assert np.allclose(raw.x[raw.y == 0].std(0), 0.05, rtol=0.15)


def test_npz_classification_with_test_split(tmp_path):
    path = tmp_path / "d.npz"
    rng = np.random.default_rng(0)
    np.savez(path, x=rng.normal(size=(50, 3, 2)), y=np.arange(50) % 3,
             x_test=rng.normal(size=(7, 3, 2)), y_test=np.array([0, 1, 2, 0, 1, 2, 0]))
    splits = load(spec(source="npz", path=str(path), val_fraction=0.2, test_fraction=0.5))
    assert (len(splits.train), len(splits.val), len(splits.test)) == (40, 10, 7)  # test from the file
    assert splits.input_shape == (3, 2) and splits.num_classes == 3 and splits.target_dim == 1
    assert torch.equal(splits.test.y, torch.tensor([0, 1, 2, 0, 1, 2, 0]))


def test_npz_regression_bool_and_string_labels(tmp_path):
    path = tmp_path / "r.npz"
    np.savez(path, x=np.ones((20, 4)), y=np.zeros((20, 3), dtype=np.float64))
    splits = load(spec(source="npz", path=str(path), test_fraction=0.0, val_fraction=0.0))
    assert splits.task == "regression" and splits.num_classes is None and splits.target_dim == 3
    assert splits.test is None and splits.train.y.dtype == torch.float32
    np.savez(path, x=np.ones(10), y=np.arange(10) % 2 == 0)
    splits = load(spec(source="npz", path=str(path), test_fraction=0.0, val_fraction=0.0))
    assert splits.task == "classification" and splits.num_classes == 2 and splits.input_shape == (1,)
    np.savez(path, x=np.ones((4, 1)), y=np.array(["dog", "cat", "dog", "cat"]))
    raw = sources.check(sources.npz(spec(source="npz", path=str(path))))
    assert raw.class_names == ["cat", "dog"] and raw.y.tolist() == [1, 0, 1, 0]


def test_csv_header_string_labels_and_target(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text("a,b,colour,z\n1,2,red,0.5\n3,4,blue,1.5\n5,6,red,2.5\n7,8,green,3.5\n")
    raw = sources.check(sources.csv_file(spec(source="csv", path=str(path), target="colour")))
    assert raw.class_names == ["blue", "green", "red"] and raw.y.tolist() == [2, 0, 2, 1]
    assert raw.x.tolist() == [[1, 2, 0.5], [3, 4, 1.5], [5, 6, 2.5], [7, 8, 3.5]]
    with pytest.raises(BabysitError, match="column 'colour'"):  # the last column is the label: colour is a feature
        sources.csv_file(spec(source="csv", path=str(path)))
    path.write_text("a,b,z\n1,2,0.5\n3,4,1.5\n")
    raw = sources.csv_file(spec(source="csv", path=str(path), target=-3))  # index -3 is column 'a'
    assert raw.task == "classification" and raw.y.tolist() == [1, 3] and raw.x.tolist() == [[2, 0.5], [4, 1.5]]

    path.write_text("0.1,0.2,1\n0.3,0.4,0\n0.5,0.6,1\n")  # no header: first row is numeric
    raw = sources.csv_file(spec(source="csv", path=str(path)))
    assert raw.x.shape == (3, 2) and raw.y.tolist() == [1, 0, 1] and raw.task == "classification"
    path.write_text("x,y\n1,0.25\n2,0.5\n3,1.0\n")
    splits = load(spec(source="csv", path=str(path), val_fraction=0.0, test_fraction=0.0))
    assert splits.task == "regression" and splits.train.y.dtype == torch.float32 and len(splits.train) == 3


def test_folder_of_images(tmp_path):
    from PIL import Image

    root = tmp_path / "imgs"
    for name, value in (("cat", 0), ("dog", 255)):
        (root / name).mkdir(parents=True)
        for i in range(3):
            Image.new("L", (5, 4), color=value).save(root / name / f"{i}.png")
    raw = sources.check(sources.folder(spec(source="folder", path=str(root))))
    assert raw.x.shape == (6, 1, 4, 5) and raw.class_names == ["cat", "dog"]
    assert raw.y.tolist() == [0, 0, 0, 1, 1, 1] and raw.x.min() == 0.0 and raw.x.max() == 1.0
    Image.new("RGB", (5, 4), color=(255, 0, 0)).save(root / "dog" / "red.jpg")
    raw = sources.folder(spec(source="folder", path=str(root)))
    assert raw.x.shape == (7, 3, 4, 5)
    assert np.allclose(raw.x[-1, 0], 1.0, atol=0.02) and np.allclose(raw.x[-1, 1:], 0.0, atol=0.02)


# --------------------------------------------------------------------------- splits


def test_split_sizes_train_size_and_none_splits():
    s = load(spec(source="spirals", samples=300, val_fraction=0.25, test_fraction=0.2, train_size=50))
    assert (len(s.train), len(s.val), len(s.test)) == (50, 60, 60)
    s = load(spec(source="spirals", samples=300, val_fraction=0.0, test_fraction=0.0, train_size=10_000))
    assert len(s.train) == 300 and s.val is None and s.test is None  # train_size beyond the data keeps all
    s = load(spec(source="spirals", samples=30, val_fraction=0.01, test_fraction=0.0, train_size=2))
    assert len(s.train) == 2 and len(s.val) == 1  # a fraction > 0 holds out at least one example
    with pytest.raises(BabysitError, match="the training split holds 1 example"):  # nothing to train on
        load(spec(source="spirals", samples=30, val_fraction=0.01, test_fraction=0.0, train_size=1))


def test_splits_are_disjoint_and_cover_the_data():
    raw = sources.spirals(spec(source="spirals", samples=120), seed=0)
    s = load(spec(source="spirals", samples=120, val_fraction=0.2, test_fraction=0.25))
    rows = torch.cat([s.train.x, s.val.x, s.test.x]).numpy()
    assert sorted(map(tuple, rows.tolist())) == sorted(map(tuple, raw.x.astype(np.float32).tolist()))


def test_holdout_is_stratified_and_complete():
    labels = np.array([0] * 60 + [1] * 30 + [2] * 10)
    kept, held = holdout(100, 0.2, np.random.default_rng(0), labels)
    assert sorted(np.concatenate([kept, held]).tolist()) == list(range(100))
    assert np.bincount(labels[held]).tolist() == [12, 6, 2]
    kept, _ = holdout(100, 0.2, np.random.default_rng(0))
    assert not np.all(np.diff(kept) > 0)  # kept in shuffled order: "first N" is a random subset
    with pytest.raises(BabysitError, match="data.val_fraction"):
        holdout(1, 0.5, np.random.default_rng(0), field="data.val_fraction")


def test_preprocessing_is_fitted_on_train_only():
    raw = load(spec(source="digits", preprocess=[], split_seed=4))
    std = load(spec(source="digits", preprocess=["standardize"], split_seed=4))
    x = raw.train.x.double()
    mean, scale = x.mean(), x.std()  # images: one mean and std per channel (digits: one channel), of train only
    for plain, done in ((raw.val, std.val), (raw.test, std.test)):
        expected = (plain.x.double() - mean) / scale
        assert torch.allclose(done.x.double(), expected, atol=1e-5)
    assert torch.isfinite(std.train.x).all()
    assert std.test.x.abs().max() < 5  # per pixel, a pixel nearly constant in training put test pixels at 87
    assert not torch.allclose(std.val.x.reshape(len(std.val), -1).mean(0), torch.zeros(64), atol=1e-3)
    assert isinstance(std.preprocessor, Preprocessor) and std.train.x.shape[1:] == (1, 8, 8)


def test_split_to_device_and_len():
    s = load(spec(source="blobs", samples=40))
    moved = s.to("cpu")
    assert isinstance(moved, Splits) and isinstance(moved.train, Split) and len(moved.train) == len(s.train)
    assert moved.num_classes == s.num_classes and torch.equal(moved.val.x, s.val.x)


# --------------------------------------------------------------------------- preprocessing truths


def _correlated(n=400, d=5, seed=0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    mixing = torch.randn(d, d, generator=g) * torch.tensor([3.0, 1.0, 0.5, 0.2, 0.05])
    return torch.randn(n, d, generator=g) @ mixing + 4.0


@pytest.mark.parametrize("step", ["pca_whiten", "zca_whiten"])
def test_whitening_gives_identity_covariance(step):
    x = _correlated()
    pre = Preprocessor([step], eps=1e-5).fit(x)
    z = pre.transform(x).double().numpy()
    eigenvalues = np.linalg.eigvalsh(np.cov(x.double().numpy(), rowvar=False))
    cov = np.cov(z, rowvar=False)
    # exactly diag(l / (l + eps)) in the eigenbasis, so identity up to eps / smallest eigenvalue
    assert np.allclose(cov, np.eye(5), atol=1e-5 / eigenvalues.min() + 1e-5)
    assert np.allclose(z.mean(0), 0.0, atol=1e-5)


def test_zca_matrix_is_symmetric_and_matches_closed_form():
    x = _correlated(seed=1).double()
    pre = Preprocessor(["zca_whiten"], eps=1e-3).fit(x)
    mean, w = pre.fitted[0]
    assert torch.equal(w, w.T)
    cov = np.cov(x.numpy(), rowvar=False)
    lam, u = np.linalg.eigh(cov)
    expected = u @ np.diag(1.0 / np.sqrt(lam + 1e-3)) @ u.T
    assert np.allclose(w.numpy(), expected, atol=1e-8)
    assert np.allclose(mean.numpy(), x.numpy().mean(0))
    # ZCA output stays close to the input, PCA output is rotated away from it
    zca = pre.transform(x).numpy()
    pca = Preprocessor(["pca_whiten"], eps=1e-3).fit(x).transform(x).numpy()
    centred = x.numpy() - x.numpy().mean(0)
    corr = [np.corrcoef(zca[:, j], centred[:, j])[0, 1] for j in range(5)]
    assert min(corr) > 0.3
    assert np.allclose(np.abs(pca), np.abs(zca @ u), atol=1e-8)  # PCA = ZCA rotated by U (up to signs)


def test_center_standardize_and_shapes():
    x = _correlated()
    x[:, 2] = 7.0  # a constant feature
    z = Preprocessor(["standardize"]).fit_transform(x)
    assert torch.isfinite(z).all() and torch.allclose(z[:, 2], torch.zeros(len(x)))
    varying = np.delete(x.double().numpy(), 2, axis=1)
    expected = (varying - varying.mean(0)) / varying.std(0, ddof=1)
    assert np.allclose(np.delete(z.numpy(), 2, axis=1), expected, atol=1e-5)
    c = Preprocessor(["center"]).fit_transform(x)
    assert torch.allclose(c.mean(0), torch.zeros(5), atol=1e-4) and torch.allclose(c - x, c[:1] - x[:1])
    images = torch.rand(30, 1, 4, 4)
    assert Preprocessor(["center", "zca_whiten"]).fit_transform(images).shape == (30, 1, 4, 4)
    assert torch.equal(Preprocessor([]).fit_transform(images), images)
    with pytest.raises(BabysitError, match="data.preprocess: unknown step 'scale'"):
        Preprocessor(["scale"])
    with pytest.raises(RuntimeError):
        Preprocessor(["center"]).transform(images)


# --------------------------------------------------------------------------- batching


def _xy(n=10):
    return torch.arange(n, dtype=torch.float32).unsqueeze(1).repeat(1, 3), torch.arange(n)


def test_batches_cover_every_example_once_per_epoch():
    x, y = _xy(10)
    batches = Batches(x, y, 3, torch.Generator().manual_seed(0))
    assert len(batches) == 4
    for _ in range(2):
        parts = list(batches)
        assert [len(b) for b, _ in parts] == [3, 3, 3, 1]
        seen = torch.cat([yb for _, yb in parts])
        assert sorted(seen.tolist()) == list(range(10))
        assert all(torch.equal(xb[:, 0].long(), yb) for xb, yb in parts)  # x and y stay paired


def test_batches_deterministic_and_reshuffled_each_epoch():
    x, y = _xy(50)
    g1, g2 = torch.Generator().manual_seed(7), torch.Generator().manual_seed(7)
    epoch1 = torch.cat([yb for _, yb in Batches(x, y, 8, g1)])
    assert torch.equal(epoch1, torch.cat([yb for _, yb in Batches(x, y, 8, g2)]))
    epoch2 = torch.cat([yb for _, yb in Batches(x, y, 8, g1)])
    assert not torch.equal(epoch1, epoch2)
    state = g1.get_state()  # a resumed run replays the same epoch from the saved generator
    epoch3 = torch.cat([yb for _, yb in Batches(x, y, 8, g1)])
    g1.set_state(state)
    assert torch.equal(epoch3, torch.cat([yb for _, yb in Batches(x, y, 8, g1)]))
    assert torch.equal(epoch1, y[torch.randperm(50, generator=torch.Generator().manual_seed(7))])


def test_batches_full_one_and_oversized():
    x, y = _xy(6)
    g = torch.Generator().manual_seed(0)
    state = g.get_state()
    for size in ("full", 6, 100):
        (only,) = list(Batches(x, y, size, g))
        assert torch.equal(only[0], x) and torch.equal(only[1], y)
    assert torch.equal(g.get_state(), state)  # full batch draws no randomness
    singles = list(Batches(x, y, 1, g))
    assert len(singles) == 6 and all(xb.shape == (1, 3) for xb, _ in singles)
    assert sorted(torch.cat([yb for _, yb in singles]).tolist()) == list(range(6))
    ordered = list(Batches(x, y, 4, None, shuffle=False))
    assert torch.equal(ordered[0][1], y[:4]) and torch.equal(ordered[1][1], y[4:])
    assert len(list(Batches(x, y, 4, None))) == 2  # no generator: torch's default one
    xb, _ = next(iter(Batches(x, y, 2, g)))
    assert xb._base is not None  # a batch is a view of the epoch's gathered copy, not a new tensor
    with pytest.raises(ValueError):
        Batches(x, y[:3], 2, g)


# --------------------------------------------------------------------------- bad data


def _npz(tmp_path, **arrays):
    path = tmp_path / "bad.npz"
    np.savez(path, **arrays)
    return spec(source="npz", path=str(path))


def _raises(data_spec: DataSpec, *fragments: str) -> str:
    with pytest.raises(BabysitError) as info:
        load(data_spec)
    message = str(info.value)
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message, message
    return message


def test_missing_and_invalid_files(tmp_path):
    for source in ("npz", "csv", "folder"):
        _raises(spec(source=source, path=str(tmp_path / "nope")), str(tmp_path / "nope"), "not found")
    text = tmp_path / "text.npz"
    text.write_text("hello")
    _raises(spec(source="npz", path=str(text)), str(text), "not a valid .npz")
    single = tmp_path / "single.npy"
    np.save(single, np.zeros(3))
    _raises(spec(source="npz", path=str(single)), str(single), "not a valid .npz")
    pickled = tmp_path / "obj.npz"
    np.savez(pickled, x=np.array([1, "a", None], dtype=object), y=np.arange(3))
    _raises(spec(source="npz", path=str(pickled)), str(pickled), "'x'", "object")
    binary = tmp_path / "bin.csv"
    binary.write_bytes(b"\xff\xfe\x00\x81garbage")
    _raises(spec(source="csv", path=str(binary)), str(binary), "CSV")


def test_npz_content_errors(tmp_path):
    where = str(tmp_path / "bad.npz")
    _raises(_npz(tmp_path, x=np.zeros((3, 2)), labels=np.zeros(3)), where, "'y'", "'x', 'labels'")
    _raises(_npz(tmp_path, x=np.zeros((5, 2)), y=np.zeros(4, int)), where, "5", "4")
    _raises(_npz(tmp_path, x=np.zeros((0, 2)), y=np.zeros(0, int)), where, "empty")
    x = np.zeros((6, 2))
    x[1, 0], x[2, 1], x[3, 0] = np.nan, np.nan, np.inf
    _raises(_npz(tmp_path, x=x, y=np.arange(6) % 2), where, "'x'", "2 NaN", "1 inf")
    _raises(_npz(tmp_path, x=np.zeros((4, 2)), y=np.array([0, 1, 0, 1]), x_test=np.zeros((2, 2)),
                 y_test=np.array([0.0, np.inf])), where, "'y_test'", "1 inf")
    _raises(_npz(tmp_path, x=np.zeros((4, 2)), y=np.array([0, -1, 2, 1])), where, "'y'", "negative")
    _raises(_npz(tmp_path, x=np.zeros((4, 2)), y=np.array([0, 1, 0, 1]), x_test=np.zeros((2, 2)),
                 y_test=np.array([0.5, 1.0])), where, "'y_test'", "integers")
    _raises(_npz(tmp_path, x=np.zeros((4, 2)), y=np.arange(4) % 3 * 4 + 1, x_test=np.zeros((1, 2)),
                 y_test=np.array([12])), where, "labels out of range: y_test has 12, classes are 0..9")
    _raises(_npz(tmp_path, x=np.zeros((4, 2)), y=np.ones(4, int)), where, "only 1 class")
    _raises(_npz(tmp_path, x=np.zeros((4, 2)), y=np.arange(4), x_test=np.zeros((2, 2))), where, "x_test", "y_test")
    _raises(_npz(tmp_path, x=np.zeros((4, 2)), y=np.arange(4), x_test=np.zeros((2, 3)), y_test=np.arange(2)),
            where, "'x_test'", "(3,)", "(2,)")


def test_csv_content_errors(tmp_path):
    path = tmp_path / "bad.csv"
    path.write_text("a,shape,label\n1,round,0\n2,square,1\n")
    _raises(spec(source="csv", path=str(path)), str(path), "column 'shape'", "not numeric")
    path.write_text("a,b,label\n1,2,0\n3,1\n")
    _raises(spec(source="csv", path=str(path)), str(path), "line 3")
    path.write_text("a,b,label\n1,2,0\n")
    _raises(spec(source="csv", path=str(path), target="kind"), "data.target", "'kind'", "a, b, label")
    path.write_text("a,b,label\n")
    _raises(spec(source="csv", path=str(path)), str(path), "empty")
    path.write_text("")
    _raises(spec(source="csv", path=str(path)), str(path), "empty")
    path.write_text("1,2,-1\n3,4,1\n")
    _raises(spec(source="csv", path=str(path)), str(path), "negative")
    path.write_text("1,nan,0\n3,4,1\n")
    _raises(spec(source="csv", path=str(path)), str(path), "'x'", "1 NaN")


def test_folder_errors(tmp_path):
    from PIL import Image

    root = tmp_path / "imgs"
    root.mkdir()
    _raises(spec(source="folder", path=str(root)), str(root), "no class subfolders")
    (root / "a").mkdir()
    (root / "b").mkdir()
    Image.new("L", (4, 4)).save(root / "a" / "0.png")
    _raises(spec(source="folder", path=str(root)), str(root / "b"), "no .png/.jpg")
    Image.new("L", (5, 4)).save(root / "b" / "odd.png")
    _raises(spec(source="folder", path=str(root)), str(root / "b" / "odd.png"), "5x4", "one size")
    (root / "b" / "odd.png").write_bytes(b"not an image")
    _raises(spec(source="folder", path=str(root)), str(root / "b" / "odd.png"), "not a readable image")


def test_generated_source_errors():
    _raises(spec(source="spirals", samples=2, classes=3), "data.samples", "spirals")
    _raises(spec(source="blobs", samples=2, classes=3), "data.samples", "blobs")
