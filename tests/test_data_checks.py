"""The data checks before training (babysit.checks.data_checks): leakage between splits,
conflicting duplicates, class balance; and loss_weights: balanced, balanced accuracy.

Measured figures (issue 16, "what it must show"):
- sklearn digits (babysit's split, test_fraction 0.2, val_fraction 0.1) with 30 test examples
  copied into the training pool, 10 of them with pixel noise of std 0.02 (2% of the 0..1 range):
  all 30 found (20 identical, 10 near at cosine >= 0.996; seeds 0-4 give min 0.9960-0.9967), and
  nothing else. Clean: 0 pairs; the closest cross-split pair is at cosine 0.972 (train-test).
  Noise std 0.03 still finds all 30 (min cosine 0.991); at 0.05 the noisy copies fall below 0.99.
- MNIST-1D as shipped: 0 pairs; the closest train-test pair is at cosine 0.956 (median nearest
  neighbour 0.80): every example is one of 10 templates under a random shear, scale, shift of up
  to 48 of its 40 positions, correlated noise (0.25) and pixel noise (0.02), so no two draws coincide.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from babysit import config
from babysit import data as data_module
from babysit.checks.data_checks import (
    IMBALANCE_RATIO,
    LEAKAGE_EXAMPLES_FILE,
    LEAKAGE_FILE,
    NEAR_DUPLICATE_COSINE,
    class_imbalance,
    data_findings,
    find_leakage,
    nearest,
    unit_rows,
)
from babysit.checks.findings import PREFLIGHT_IDS
from babysit.config import DataSpec, Experiment
from babysit.data import Splits
from babysit.errors import BabysitError
from babysit.families import family_of
from babysit.families.standard import STANDARD, class_weights
from babysit.optim import losses
from babysit.report.figures_data_checks import leakage_figure
from babysit.run import run

EXAMPLES = sorted((Path(__file__).parent.parent / "examples").glob("*.yaml"))
COPIED, NOISY, NOISE_STD = 30, 10, 0.02


def _digits_pool() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Digits in [0, 1] as babysit splits them (test_fraction 0.2), no preprocessing: the raw pool."""
    pool = data_module.load(DataSpec(source="digits", test_fraction=0.2, val_fraction=0.0, preprocess=[]))
    return pool.train.x.numpy(), pool.train.y.numpy(), pool.test.x.numpy(), pool.test.y.numpy()


def _npz(path, x, y, x_test, y_test) -> Splits:
    """The arrays through babysit's own path (npz source, val carved off, standardize fitted on train)."""
    np.savez(path, x=x, y=y, x_test=x_test, y_test=y_test)
    return data_module.load(DataSpec(source="npz", path=str(path), val_fraction=0.1))


def _leaky_digits(tmp_path, seed: int = 0) -> tuple[Splits, np.ndarray]:
    x, y, xt, yt = _digits_pool()
    rng = np.random.default_rng(seed)
    copied = rng.choice(len(xt), COPIED, replace=False)
    copies = xt[copied].copy()
    copies[COPIED - NOISY:] += rng.normal(0.0, NOISE_STD, copies[COPIED - NOISY:].shape).astype(np.float32)
    splits = _npz(tmp_path / "leaky.npz", np.concatenate([x, copies]), np.concatenate([y, yt[copied]]), xt, yt)
    return splits, copied


def test_digits_with_thirty_test_copies_in_train_all_found_and_clean_digits_has_none(tmp_path):
    splits, copied = _leaky_digits(tmp_path)
    leakage = find_leakage(splits)
    to_test = [p for p in leakage.pairs if p["b"] == "test"]  # a copy may have landed in val: a val-test pair
    assert {p["index_b"] for p in to_test} == set(copied.tolist())  # all 30, and no other test example
    assert len(to_test) == COPIED and not [p for p in leakage.pairs if p["b"] == "val"]
    exact = {p["index_b"] for p in to_test if p["exact"]}
    assert exact == set(copied[:COPIED - NOISY].tolist())
    near = [p["cosine"] for p in to_test if not p["exact"]]
    assert len(near) == NOISY and min(near) > NEAR_DUPLICATE_COSINE  # 0.9960 at seed 0
    for p in to_test:  # the pair found is the copy: same label
        assert p["label_a"] == p["label_b"]
    found, _ = data_findings(splits)
    leak = next(f for f in found if f.id == "split_leakage")
    assert leak.severity == "warning" and leak.evidence["leaked_fraction"]["test"] == pytest.approx(30 / 359)
    assert "conflicting_duplicates" not in [f.id for f in found]

    x, y, xt, yt = _digits_pool()
    clean = _npz(tmp_path / "clean.npz", x, y, xt, yt)
    assert find_leakage(clean).pairs == [] and find_leakage(clean).conflicts == []
    assert data_findings(clean)[0] == []
    center = clean.train.x.reshape(len(clean.train), -1).mean(0)
    closest, _ = nearest(unit_rows(clean.test.x, center), unit_rows(clean.train.x, center))
    assert float(closest.max()) < NEAR_DUPLICATE_COSINE  # 0.972: the margin of the clean set


def test_mnist1d_as_shipped_has_no_duplicates_between_or_within_splits():
    splits = data_module.load(Experiment().data)  # babysit's default data
    leakage = find_leakage(splits)
    assert leakage.near_checked and leakage.near_conflicts_checked
    assert leakage.pairs == [] and leakage.conflicts == []
    center = splits.train.x.mean(0)
    closest, _ = nearest(unit_rows(splits.test.x, center), unit_rows(splits.train.x, center))
    assert float(closest.max()) < NEAR_DUPLICATE_COSINE  # 0.956


def test_low_dimensional_data_is_checked_for_identical_examples_only():
    splits = data_module.load(DataSpec(source="spirals", preprocess=[]))  # 2 features: cosines say nothing
    assert find_leakage(splits).pairs == [] and not find_leakage(splits).near_checked
    splits.test.x[3] = splits.train.x[7]  # one identical example
    leakage = find_leakage(splits)
    assert [(p["a"], p["index_a"], p["b"], p["index_b"], p["exact"]) for p in leakage.pairs] == [
        ("train", 7, "test", 3, True)]
    found = {f.id: f for f in data_findings(splits)[0]}  # and the spiral's origin: conflicting_duplicates, info
    assert found["split_leakage"].severity == "info"  # 1 of 300 test examples: below 1%, the score barely moves
    assert [f.severity for f in found.values()] == ["info"] * len(found)


def test_token_ids_are_not_checked():
    splits = data_module.load(DataSpec(source="text", context=32))
    assert find_leakage(splits) is None and data_findings(splits)[0] == []


def test_conflicting_duplicates_found_on_a_built_set_and_not_on_digits(tmp_path):
    x, y, xt, yt = _digits_pool()
    rng = np.random.default_rng(1)
    picked = rng.choice(len(x), 80, replace=False)
    copies = x[picked].copy()
    copies[40:] += rng.normal(0.0, NOISE_STD, copies[40:].shape).astype(np.float32)
    relabelled = (y[picked] + 1) % 10  # the same inputs under another label
    path = _save(tmp_path / "c.npz", np.concatenate([x, copies]), np.concatenate([y, relabelled]), xt, yt)
    splits = data_module.load(DataSpec(source="npz", path=str(path), val_fraction=0.0))
    leakage = find_leakage(splits)
    assert len(leakage.conflicts) == 80 and sum(c["exact"] for c in leakage.conflicts) == 40
    assert {(c["index_a"], c["index_b"]) for c in leakage.conflicts} == {
        (min(i, len(x) + k), max(i, len(x) + k)) for k, i in enumerate(picked)}  # every copy with its original
    found = {f.id: f for f in data_findings(splits)[0]}
    assert found["conflicting_duplicates"].severity == "warning"  # 160 of 1518 examples: above 5%
    assert found["conflicting_duplicates"].evidence["examples"] == 160
    clean = data_module.load(DataSpec(source="digits", test_fraction=0.2))
    assert find_leakage(clean).conflicts == []  # its closest training pair (0.991) has one label
    # CS231n's spirals start every arm at the origin: 3 identical points under 3 labels, a real but small conflict
    spirals = data_module.load(DataSpec(source="spirals", samples=300, preprocess=[]))
    origin = find_leakage(spirals).conflicts
    assert origin and all(c["exact"] and not spirals.train.x[c["index_a"]].any() for c in origin)
    assert [f.severity for f in data_findings(spirals)[0]] == ["info"]


def _save(path, x, y, x_test, y_test):
    np.savez(path, x=x, y=y, x_test=x_test, y_test=y_test)
    return path


def test_class_imbalance_fires_on_a_built_set_and_not_on_digits():
    built = torch.tensor([0] * 300 + [1] * 120 + [2] * 25)  # 12 to 1
    finding = class_imbalance(built, 3)
    assert finding is not None and finding.severity == "warning" and finding.evidence["ratio"] == 12.0
    assert "loss_weights: balanced" in finding.advice
    weighted = class_imbalance(built, 3, weighted=True)
    assert weighted is not None and weighted.severity == "info"
    assert class_imbalance(torch.tensor([0] * 300 + [1] * 30), 2) is None  # exactly 10: not above the bar
    missing = class_imbalance(torch.tensor([0] * 50 + [1] * 50), 3)  # class 2 has no training example
    assert missing is not None and math.isinf(missing.evidence["ratio"]) and "no training example" in missing.message
    digits = data_module.load(DataSpec(source="digits", test_fraction=0.2))
    counts = torch.bincount(digits.train.y)
    assert counts.max() / counts.min() < IMBALANCE_RATIO  # digits: 1.05 to 1
    assert class_imbalance(digits.train.y, 10) is None
    assert [f.id for f in data_findings(digits)[0]] == []


def test_balanced_weights_change_the_loss_as_the_closed_form_says():
    torch.manual_seed(0)
    targets = torch.tensor([0] * 60 + [1] * 30 + [2] * 10)
    weights = losses.balanced_class_weights(targets, 4)
    n, present = 100, 3  # class 3 is absent: weight 0, and C counts the classes present
    assert torch.allclose(weights, torch.tensor([n / (present * 60), n / (present * 30), n / (present * 10), 0.0]))
    logits = torch.randn(100, 4)
    per_example = -F.log_softmax(logits, dim=1)[torch.arange(100), targets]
    w = weights[targets]
    for name in ("cross_entropy", "nll"):
        loss = losses.build_loss(name, "classification", 4, class_weights=weights)(logits, targets)
        assert torch.allclose(loss, (w * per_example).sum() / w.sum())  # torch's weighted mean
        assert torch.allclose(loss, (w * per_example).mean())  # on the whole training set sum(w) = N
        assert not torch.allclose(loss, per_example.mean())  # and it is not the plain mean
    batch = torch.arange(0, 100, 7)  # a batch: normalised by its own weights
    loss = losses.build_loss("cross_entropy", "classification", 4, class_weights=weights)(logits[batch], targets[batch])
    assert torch.allclose(loss, (w[batch] * per_example[batch]).sum() / w[batch].sum())
    # a constant guess scores ln C under balanced weights, whatever the class frequencies
    uniform = losses.build_loss("cross_entropy", "classification", 3, class_weights=weights[:3])(
        torch.zeros(100, 3), targets)
    assert losses.chance_loss("cross_entropy", "classification", 3, targets, balanced=True) == pytest.approx(
        float(uniform)) == pytest.approx(math.log(3))


def test_loss_weights_balanced_is_built_from_the_spec_and_refused_where_it_does_not_apply():
    spec = Experiment(data={"source": "digits"}, loss_weights="balanced")
    splits = data_module.load(spec.data)
    _, loss_fn = STANDARD.build(spec, splits)
    assert torch.allclose(loss_fn.weight, losses.balanced_class_weights(splits.train.y, 10))
    assert class_weights(Experiment(data={"source": "digits"}), splits) is None
    for loss in ("mse", "hinge", "bce"):
        with pytest.raises(BabysitError, match=f"^loss_weights: balanced weights the classes of a softmax loss, "
                                               f"and loss: {loss} is not one"):
            STANDARD.build(spec.model_copy(update={"loss": loss}), splits)
    autoencoder = Experiment(data={"source": "digits"}, model={"kind": "autoencoder"}, loss="mse",
                             loss_weights="balanced")
    family = family_of(autoencoder)
    with pytest.raises(BabysitError, match="continuous targets"):
        family.build(autoencoder, family.adapt(autoencoder, data_module.load(autoencoder.data)))


def test_a_run_writes_leakage_json_keeps_its_findings_on_resume_and_reports_balanced_accuracy(tmp_path):
    splits, copied = _leaky_digits(tmp_path)
    spec = Experiment(data={"source": "npz", "path": str(tmp_path / "leaky.npz"), "val_fraction": 0.1},
                      model={"hidden": [32]}, train={"epochs": 1}, loss_weights="balanced")
    result = run(spec, out=tmp_path / "run", quiet=True)
    written = json.loads((result.path / LEAKAGE_FILE).read_text())
    assert {p["index_b"] for p in written["pairs"] if p["b"] == "test"} == set(copied.tolist())
    assert len(written["shown"]) == 8 and written["shown"][0]["cosine"] == 1.0
    with np.load(result.path / LEAKAGE_EXAMPLES_FILE) as arrays:  # in the data's units: the copies are the originals
        assert arrays["a"].shape == (8, 1, 8, 8) and np.allclose(arrays["a"][0], arrays["b"][0], atol=1e-5)
        assert leakage_figure(written["shown"], arrays) is not None
    assert "split_leakage" in [f.id for f in result.findings]
    # balanced accuracy: the mean per-class recall of the model's test predictions, against sklearn
    from sklearn.metrics import balanced_accuracy_score

    with torch.no_grad():
        result.model.eval()
        predicted = result.model(result.splits.test.x).argmax(1)
    expected = balanced_accuracy_score(result.splits.test.y.numpy(), predicted.numpy())
    assert result.summary["test_balanced_acc"] == pytest.approx(expected, abs=1e-12)
    assert "val_balanced_acc" in result.summary
    resumed = run(spec.model_copy(update={"train": spec.train.model_copy(update={"epochs": 2})}),
                  out=tmp_path / "run", resume=True, quiet=True)
    assert "split_leakage" in [f.id for f in resumed.findings]  # kept from the first segment
    assert "split_leakage" in PREFLIGHT_IDS


def test_leakage_figure_draws_images_from_splits_and_signals_from_arrays(tmp_path):
    splits, _ = _leaky_digits(tmp_path)
    shown = find_leakage(splits).to_json()["shown"]
    images = leakage_figure(shown, splits)  # gathered from the splits, the preprocessing undone
    assert images is not None and len(images.axes) == 2 * 8
    signals = leakage_figure(shown[:3], {"a": np.random.rand(3, 40), "b": np.random.rand(3, 40)})
    assert signals is not None and sum(bool(ax.lines) for ax in signals.axes) == 3
    assert leakage_figure([], splits) is None


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.stem)
def test_no_example_spec_raises_a_data_warning(path):
    spec = config.load(path)
    splits = family_of(spec).adapt(spec, data_module.load(spec.data))
    found, _ = data_findings(splits, loss_weights=spec.loss_weights)
    assert [f.id for f in found if f.severity != "info"] == []
