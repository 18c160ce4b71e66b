"""The perceptron: Rosenblatt's rule as SGD on the perceptron criterion, the fixed bases, the
stop at separation and Novikoff's mistake bound, through the Python API and the runner.

The independent truths: a hand-written NumPy perceptron fed the same example order (same
mistakes, same weights), a hard-margin linear SVM (scikit-learn) for the margin γ of
Novikoff's bound, the closed-form Gaussian kernel for the random Fourier features.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from sklearn.svm import SVC

from babysit.config import Experiment, ModelSpec, validate
from babysit.data.batching import Batches
from babysit.errors import BabysitError
from babysit.families.perceptron import SeparationStop
from babysit.nets import build
from babysit.nets.perceptron import FourierBasis, PolynomialBasis, polynomial_features
from babysit.optim import losses
from babysit.optim.perceptron import PerceptronCriterion, novikoff_bound, target_signs
from babysit.run import run
from babysit.train import Trainer
from helpers import run_cli

pytestmark = pytest.mark.usefixtures("one_thread")


def perceptron_spec(**sections) -> Experiment:
    raw = {"seed": 0, "data": {"source": "blobs", "classes": 2, "noise": 0.15, "samples": 400, "batch_size": 1},
           "model": {"kind": "perceptron"}, "train": {"epochs": 30, "device": "cpu"}}
    for key, value in sections.items():
        raw[key] = {**raw.get(key, {}), **value} if isinstance(value, dict) else value
    return validate(raw)


def svm_bound(features: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    """Novikoff's (R/γ)² with γ from a hard-margin linear SVM (C huge) on the features."""
    signs = 2.0 * labels.double() - 1
    svm = SVC(kernel="linear", C=1e8).fit(features.double().numpy(), signs.numpy())
    weight = torch.tensor(svm.coef_[0])
    return novikoff_bound(features, signs, weight, float(svm.intercept_[0]))


def training_features(result) -> torch.Tensor:
    with torch.no_grad():
        return result.model.basis(result.splits.train.x.flatten(1)).cpu()


def no_warnings(findings) -> list[str]:
    return [f"{f.id} {f.severity}: {f.message}" for f in findings if f.severity != "info"]


# --------------------------------------------------------------------------- the rule


def test_the_criterion_gradient_is_the_perceptron_rule():
    torch.manual_seed(0)
    scores = torch.randn(32, 4, requires_grad=True)
    targets = torch.randint(0, 4, (32,))
    scores.data[0] = 0.0  # a score of exactly 0 is a mistake for every unit
    PerceptronCriterion()(scores, targets).backward()
    signs = 2 * torch.nn.functional.one_hot(targets, 4).double() - 1  # one-vs-rest ±1 targets
    wrong = signs * scores.detach().double() <= 0
    expected = torch.where(wrong, -signs, torch.zeros_like(signs)) / 32  # -y on mistakes, batch mean
    assert torch.allclose(scores.grad.double(), expected)
    assert wrong[0].all()


def test_one_sgd_step_is_rosenblatts_update():
    # one example, two classes: w <- w + lr·y·x on a mistake, unchanged when right
    linear = torch.nn.Linear(3, 1)
    torch.nn.init.zeros_(linear.weight), torch.nn.init.zeros_(linear.bias)
    opt = torch.optim.SGD(linear.parameters(), lr=0.5, momentum=0)
    criterion = PerceptronCriterion()
    x = torch.tensor([[1.0, -2.0, 0.5]])
    for label, expect_change in ((0, True), (0, False)):  # first a mistake (score 0), then right
        before = linear.weight.detach().clone()
        opt.zero_grad()
        criterion(linear(x), torch.tensor([label])).backward()
        opt.step()
        y = 2 * label - 1
        expected = before + 0.5 * y * x if expect_change else before
        assert torch.allclose(linear.weight.detach(), expected)
    assert linear.bias.item() == -0.5


def test_training_loop_matches_a_numpy_perceptron_mistake_for_mistake():
    gen = np.random.default_rng(1)
    x = torch.tensor(gen.normal(size=(60, 3)), dtype=torch.float32)
    y = (x @ torch.tensor([1.0, -2.0, 0.5]) + 0.3 > 0).long()
    linear = torch.nn.Linear(3, 1)
    torch.nn.init.zeros_(linear.weight), torch.nn.init.zeros_(linear.bias)
    criterion = PerceptronCriterion()
    stop = SeparationStop(criterion)
    trainer = Trainer(linear, criterion, torch.optim.SGD(linear.parameters(), lr=0.3, momentum=0), callbacks=[stop])
    state = trainer.fit(Batches(x, y, 1, torch.Generator().manual_seed(7)), epochs=200)

    # the same rule by hand, over the same example order (an identically seeded generator)
    w, b, per_epoch = np.zeros(3), 0.0, []
    order = Batches(x, y, 1, torch.Generator().manual_seed(7))
    for _ in range(state.epoch):
        mistakes = 0
        for xb, yb in order:
            xi, yi = xb[0].double().numpy(), 2.0 * yb.item() - 1
            if yi * (w @ xi + b) <= 0:
                w, b, mistakes = w + 0.3 * yi * xi, b + 0.3 * yi, mistakes + 1
        per_epoch.append(mistakes)
    assert stop.per_epoch == per_epoch
    assert per_epoch[-1] == 0 and sum(per_epoch) > 0
    assert state.stop_reason.startswith("separated")
    assert np.allclose(linear.weight.detach().double().numpy()[0], w, atol=1e-5)
    assert abs(linear.bias.item() - b) < 1e-5


def test_two_classes_use_one_unit_and_its_sign():
    assert losses.output_dim("perceptron", "classification", 2, 1) == 1
    assert losses.output_dim("perceptron", "classification", 5, 1) == 5
    assert losses.predict(torch.tensor([[0.2], [-1.0], [0.0]]), "perceptron").tolist() == [1, 0, 0]
    assert target_signs(torch.zeros(2, 1), torch.tensor([1, 0])).flatten().tolist() == [1.0, -1.0]
    assert losses.chance_loss("perceptron", "classification", 2, torch.tensor([0, 1])) is None


# --------------------------------------------------------------------------- the bases


def test_polynomial_basis_lists_every_monomial_once():
    basis = PolynomialBasis(3, 3)
    x = torch.tensor([[2.0, 3.0, 5.0]])
    values = sorted(basis(x)[0].tolist())
    expected = sorted(
        2.0**a * 3.0**b * 5.0**c for a in range(4) for b in range(4) for c in range(4) if 1 <= a + b + c <= 3
    )
    assert values == expected and basis.features == polynomial_features(3, 3) == 19
    assert not list(basis.parameters()) and not basis.state_dict()  # fixed, and rebuilt from the spec


def test_fourier_features_approximate_the_gaussian_kernel():
    x = torch.randn(20, 5, generator=torch.Generator().manual_seed(0))
    phi = FourierBasis(5, 20000, seed=3)(x)
    exact = torch.exp(-torch.cdist(x, x) ** 2 / (2 * 5))  # length scale sqrt(d)
    assert (phi @ phi.T - exact).abs().max() < 0.05  # Monte Carlo error ~ 1/sqrt(20000)
    assert torch.equal(FourierBasis(5, 64, seed=3).frequencies, FourierBasis(5, 64, seed=3).frequencies)
    assert not torch.equal(FourierBasis(5, 64, seed=3).frequencies, FourierBasis(5, 64, seed=4).frequencies)


def test_fourier_basis_follows_the_seed_and_travels_in_the_state_dict():
    spec = ModelSpec(kind="perceptron", basis="fourier", basis_features=32)
    torch.manual_seed(0)
    first = build(spec, (4,), 3)
    torch.manual_seed(0)
    again = build(spec, (4,), 3)
    torch.manual_seed(1)
    other = build(spec, (4,), 3)
    assert torch.equal(first.basis.frequencies, again.basis.frequencies)
    assert not torch.equal(first.basis.frequencies, other.basis.frequencies)
    other.load_state_dict(first.state_dict())  # a checkpoint restores the features
    assert torch.equal(first.basis.frequencies, other.basis.frequencies)
    assert [n for n, _ in first.named_parameters()] == ["linear.weight", "linear.bias"]


def test_spec_defaults_make_it_rosenblatts_perceptron():
    spec = validate({"model": {"kind": "perceptron"}})
    assert (spec.loss, spec.optimizer.name, spec.model.init) == ("perceptron", "perceptron", "zeros")
    assert spec.train.early_stopping.patience is None
    adaline = validate({"model": {"kind": "perceptron"}, "loss": "mse"})  # Widrow-Hoff: LMS on the same unit
    assert adaline.optimizer.name == "sgd"
    net = build(spec.model, (2,), 1)
    assert net.linear.weight.abs().sum() == 0 and net.linear.bias.abs().sum() == 0


# --------------------------------------------------------------------------- end to end


def test_separates_two_blobs_within_novikoffs_bound(tmp_path):
    result = run(perceptron_spec(), tmp_path / "run", quiet=True, report=False)
    s = result.summary
    assert s["separated"] and s["stop_reason"].startswith("separated")
    assert s["train_acc"] == 1.0 and s["epochs"] < 30
    epochs = [json.loads(line) for line in (result.path / "metrics.jsonl").read_text().splitlines()]
    per_epoch = [e["mistakes"] for e in epochs]
    assert per_epoch[-1] == 0 and all(m > 0 for m in per_epoch[:-1])
    assert s["mistakes"] == sum(per_epoch) > 0
    bound = svm_bound(training_features(result), result.splits.train.y.cpu())
    assert bound["gamma"] > 0 and s["mistakes"] <= bound["bound"], (s["mistakes"], bound)
    assert no_warnings(result.findings) == []  # preflight, monitors and diagnosis all ran


def test_polynomial_basis_separates_what_a_line_cannot(tmp_path):
    # a disk (class 0) inside a ring (class 1): separable by a circle, not by a line
    gen = np.random.default_rng(0)
    radius = np.concatenate([gen.uniform(0.0, 1.0, 150), gen.uniform(1.6, 2.4, 150)])
    angle = gen.uniform(0, 2 * np.pi, 300)
    x = np.stack([radius * np.cos(angle), radius * np.sin(angle)], 1).astype(np.float32)
    y = np.repeat([0, 1], 150)
    np.savez(tmp_path / "ring.npz", x=x, y=y)
    data = {"source": "npz", "path": str(tmp_path / "ring.npz"), "batch_size": 1}

    line = run(perceptron_spec(data=data, train={"epochs": 15}), tmp_path / "line", quiet=True, report=False)
    assert not line.summary["separated"] and line.summary["epochs"] == 15
    assert line.summary["train_acc"] < 0.9
    # said as what it is, a perceptron's limit (Minsky & Papert), not as a broken code path
    said = {f.id: f.severity for f in line.findings}
    assert said["not_converged"] == "warning" and said.get("cannot_overfit_tiny_subset") in (None, "warning")
    assert "error" not in said.values()

    conic = run(perceptron_spec(data=data, model={"basis": "polynomial", "basis_degree": 2}), tmp_path / "conic",
                quiet=True)
    assert conic.summary["separated"] and conic.summary["train_acc"] == 1.0
    assert conic.model.basis.features == 5  # x1, x2, x1², x1x2, x2²
    bound = svm_bound(training_features(conic), conic.splits.train.y.cpu())
    assert conic.summary["mistakes"] <= bound["bound"], (conic.summary["mistakes"], bound)
    assert no_warnings(conic.findings) == []


def test_one_vs_rest_separates_three_blobs_within_the_units_bounds(tmp_path):
    result = run(perceptron_spec(data={"classes": 3, "noise": 0.1, "samples": 300}), tmp_path / "run", quiet=True, report=False)
    s = result.summary
    assert s["separated"] and s["train_acc"] == 1.0
    assert result.model.linear.out_features == 3
    # each unit is a binary perceptron for "class c or not": the mistakes of all units together
    # are at most the sum of their Novikoff bounds
    features, labels = training_features(result), result.splits.train.y.cpu()
    bounds = [svm_bound(features, (labels == c).long())["bound"] for c in range(3)]
    assert s["mistakes"] <= sum(bounds), (s["mistakes"], bounds)
    assert no_warnings(result.findings) == []


def test_novikoff_bound_against_a_hand_computed_case():
    x = torch.tensor([[3.0, 0.0], [-1.0, 0.0]])  # augmented (3, 0, 1) and (-1, 0, 1)
    out = novikoff_bound(x, torch.tensor([1.0, -1.0]), torch.tensor([1.0, 0.0]), -1.0)
    assert math.isclose(out["R"], math.sqrt(10))
    assert math.isclose(out["gamma"], 2 / math.sqrt(2))  # min(3 - 1, 1 + 1) / ||(1, 0, -1)||
    assert math.isclose(out["bound"], 10 / 2)
    assert novikoff_bound(x, torch.tensor([1.0, -1.0]), torch.tensor([-1.0, 0.0]))["bound"] == math.inf


# --------------------------------------------------------------------------- bad specs


@pytest.mark.parametrize("overrides, message", [
    (["optimizer.name=perceptron"], "optimizer.name: 'perceptron' is the perceptron rule"),
    (["model.kind=perceptron", "model.basis=cubic"], "model.basis: must be one of identity, polynomial"),
    (["model.kind=perceptron", "model.basis_degree=0"], "model.basis_degree: must be >= 1"),
    (["model.kind=perceptron", "model.norm=batch"], "model.norm: does not apply to a perceptron"),
    (["model.kind=perceptron", "optimizer.weight_decay=0.01"], "optimizer.weight_decay: the perceptron rule"),
    (["model.kind=perceptron", "model.basis=polynomial", "model.basis_degree=4", "data.samples=100"],
     "model.basis_degree: a degree-4 polynomial of 40 inputs has 135,750 features"),
])
def test_bad_perceptron_specs_are_one_line_errors(overrides, message, capsys, tmp_path):
    code, out, err = run_cli(["train", *overrides, "train.epochs=1", "train.device=cpu", "--out", str(tmp_path / "r")],
                             capsys, cwd=tmp_path)
    assert code == BabysitError.exit_code == 2
    assert message in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_the_example_spec_trains(capsys, tmp_path):
    from pathlib import Path

    example = Path(__file__).parent.parent / "examples" / "perceptron.yaml"
    code, out, err = run_cli(["train", str(example), "train.device=cpu", "--out", str(tmp_path / "r")], capsys)
    assert code == 0, err
    summary = json.loads((tmp_path / "r" / "summary.json").read_text())
    assert summary["separated"] and summary["mistakes"] > 0 and summary["train_acc"] == 1.0
