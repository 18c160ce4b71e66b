"""The model's answers after training (babysit.checks.answers): calibration (ECE, temperature
scaling, the ``overconfident`` finding) and the per-class view (``class_never_predicted``,
``weak_class``), measured against torchmetrics and on runs built to have each problem."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from babysit import config, data
from babysit.checks.answers import (
    CALIBRATION_FILE,
    ECE_BINS,
    OVERCONFIDENT_ECE,
    answer_findings,
    answers_summary,
    calibration,
    class_never_predicted_finding,
    collect_outputs,
    expected_calibration_error,
    fit_temperature,
    weak_class_finding,
)
from babysit.data import Split
from babysit.families.language import sample_text
from babysit.report.figures_answers import confusion_figure, reliability_figure
from babysit.run import run
from babysit.run.ensemble import ensemble_runs
from helpers import run_cli

pytestmark = pytest.mark.usefixtures("one_thread")
EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
ANSWER_RULES = ("overconfident", "class_never_predicted", "weak_class")
QUIET = ["checks.monitors=false", "checks.preflight=false"]
# a small MLP on sklearn digits that learns them well (val accuracy ~96%); a quarter of the
# examples held out for validation, ~37 a class, so per-class counts mean something
DIGITS = ["data.source=digits", "data.val_fraction=0.25", "model.hidden=[64]", "optimizer.name=adam",
          "optimizer.lr=0.003", "train.epochs=20", "data.batch_size=64", *QUIET]
# a wide MLP on 300 MNIST-1D examples, trained 30 epochs with no early stopping: it fits its
# training split (train accuracy ~95%) far better than the test split (~28%), overconfidently
OVERFIT = ["data.source=mnist1d", "data.train_size=300", "model.hidden=[512]", "optimizer.name=adam",
           "optimizer.lr=0.001", "train.epochs=30", "data.batch_size=100", "train.early_stopping.patience=null", *QUIET]


def answer_ids(findings, at_least=("info", "warning", "error")):
    return [f.id for f in findings if f.id in ANSWER_RULES and f.severity in at_least]


@pytest.fixture(scope="module")
def healthy(tmp_path_factory):
    spec = config.load(None, DIGITS)
    return run(spec, tmp_path_factory.mktemp("answers") / "digits", quiet=True, report=False)


@pytest.fixture(scope="module")
def overfit(tmp_path_factory):
    spec = config.load(None, OVERFIT)
    return run(spec, tmp_path_factory.mktemp("answers") / "overfit", quiet=True, report=False)


# --------------------------------------------------------------------------- ECE against torchmetrics


def _torchmetrics_ece(logits, targets):
    torchmetrics = pytest.importorskip("torchmetrics")
    metric = torchmetrics.classification.MulticlassCalibrationError(num_classes=logits.shape[-1], n_bins=ECE_BINS,
                                                                    norm="l1")
    # torchmetrics softmaxes only inputs outside [0, 1]: these logits are
    assert logits.min() < 0 or logits.max() > 1
    return metric(logits, targets).item()


def _ece_by_definition(logits, targets, bins=ECE_BINS):
    """Guo et al.'s eq. 3 in float64, example by example, with torchmetrics' bins ([k/M, (k+1)/M),
    and float32 confidences of exactly 1.0 in a bin of their own)."""
    confidence, predicted = logits.float().softmax(-1).max(-1)
    edges = torch.linspace(0, 1, bins + 1)  # float32 edges, as torchmetrics draws them
    groups = {}
    for c, right in zip(confidence.tolist(), (predicted == targets).tolist(), strict=True):
        k = bins if c == 1.0 else max(i for i in range(bins) if c >= edges[i].item())
        groups.setdefault(k, []).append((c, right))
    n = len(targets)
    return sum(abs(sum(r for _, r in g) - sum(c for c, _ in g)) / n for g in groups.values())


@pytest.mark.parametrize("scale", [0.5, 3.0, 30.0])
def test_ece_equals_torchmetrics_on_the_same_logits(scale):
    """torchmetrics sums its bins in float32: over seeds 0-9 on 1,000 examples it differs from
    the float64 definition by 3e-8 on average, 3.4e-7 at most (saturated logits, scale 30)."""
    gen = torch.Generator().manual_seed(int(scale * 10))
    logits = scale * torch.randn(1000, 10, generator=gen)
    targets = torch.randint(0, 10, (1000,), generator=gen)
    targets[:500] = logits[:500].argmax(-1)  # half right, so every bin has some of each
    ours = expected_calibration_error(logits, targets)
    assert abs(ours - _torchmetrics_ece(logits, targets)) <= 1e-6
    assert abs(ours - _ece_by_definition(logits, targets)) <= 1e-12
    if scale == 30.0:  # saturated float32 softmax: confidences of exactly 1.0, torchmetrics' degenerate bin
        assert (logits.softmax(-1).max(-1).values == 1.0).sum() > 100


def test_ece_equals_torchmetrics_on_an_overfit_networks_logits(overfit):
    outputs, targets = collect_outputs(overfit.model, overfit.splits.test)
    ours = expected_calibration_error(outputs, targets)
    assert ours > OVERCONFIDENT_ECE  # a miscalibrated network, not a trivial case
    assert abs(ours - _torchmetrics_ece(outputs, targets)) <= 1e-6
    assert abs(ours - overfit.summary["calibration"]["test_ece"]) <= 1e-9  # what the run reported


# --------------------------------------------------------------------------- temperature scaling


@pytest.mark.parametrize("factor", [0.5, 2.5])
def test_temperature_scaling_recovers_a_known_temperature(factor):
    """Labels drawn from softmax(z) make z calibrated; the logits ``factor * z`` need T = factor.
    Over seeds 0-4 the fitted T is within 0.5% of the factor (relative errors -0.0048 to +0.0014,
    20,000 examples, 10 classes); the bar is 5%."""
    for seed in range(5):
        gen = torch.Generator().manual_seed(seed)
        z = 2 * torch.randn(20000, 10, generator=gen)
        y = torch.multinomial(z.softmax(-1), 1, generator=gen).squeeze(1)
        t = fit_temperature(factor * z, y)
        assert abs(t / factor - 1) < 0.05, (seed, t)
        # it is the NLL's minimum: no temperature on a fine grid around it does better
        nll = [F.cross_entropy(factor * z.double() / (t * (1 + d)), y).item() for d in (0, -0.02, -0.005, 0.005, 0.02)]
        assert all(nll[0] <= other + 1e-12 for other in nll[1:])


def test_temperature_scaling_lowers_the_test_ece_of_an_overfit_mlp(overfit):
    c = overfit.summary["calibration"]
    print(json.dumps({k: round(v, 4) for k, v in c.items() if isinstance(v, float)}))
    # measured over seeds 0-4 (this spec): T 2.21-2.35 (mean 2.29, sd 0.05), test ECE 0.205-0.228
    # (mean 0.214, sd 0.009) -> 0.020-0.039 after scaling, test NLL 2.11-2.20 -> 1.91-1.94
    assert c["temperature"] > 1.5
    assert c["test_ece"] > 3 * OVERCONFIDENT_ECE and c["test_ece_scaled"] < c["test_ece"] / 2
    assert c["test_nll_scaled"] < c["test_nll"]
    assert c["test_accuracy"] == pytest.approx(overfit.summary["test_acc"])  # one pass, the same answers
    found = [f for f in overfit.findings if f.id == "overconfident"]
    assert found and found[0].severity == "info" and found[0].evidence["temperature"] == c["temperature"]
    assert f"T = {c['temperature']:.3g}" in found[0].advice and "calibration.json" in found[0].advice
    detail = json.loads((overfit.path / CALIBRATION_FILE).read_text())
    assert detail["temperature"] == c["temperature"] and detail["fitted_on"] == "val"
    assert sum(detail["reliability"]["test"]["count"]) == c["test_examples"] == len(overfit.splits.test)
    assert len(reliability_figure(detail).axes) == 2


def test_no_overconfident_finding_for_calibrated_logits_or_underconfidence():
    gen = torch.Generator().manual_seed(0)
    z = {s: 3 * torch.randn(1000, 10, generator=gen) for s in ("val", "test")}
    y = {s: torch.multinomial(z[s].softmax(-1), 1, generator=gen).squeeze(1) for s in z}
    assert answer_findings({"calibration": calibration(z, y)[0]}) == []  # calibrated: T ~ 1
    soft, _ = calibration({s: z[s] / 3 for s in z}, y)  # underconfident: T ~ 1/3 halves the ECE, but T < 1
    assert soft["test_ece"] > OVERCONFIDENT_ECE and soft["test_ece_scaled"] < soft["test_ece"] / 2
    assert answer_findings({"calibration": soft}) == []
    sharp, _ = calibration({s: 3 * z[s] for s in z}, y)
    assert [f.id for f in answer_findings({"calibration": sharp})] == ["overconfident"]


def test_only_losses_with_probabilities_are_calibrated():
    gen = torch.Generator().manual_seed(0)
    split = Split(torch.randn(80, 4, generator=gen), torch.randint(0, 3, (80,), generator=gen))
    model = torch.nn.Linear(4, 3)
    for loss, has in (("cross_entropy", True), ("nll", True), ("hinge", False), ("mse", False), ("bce", False),
                      ("perceptron", False)):
        fields, detail = answers_summary(model, {"val": split, "test": split}, loss_name=loss, num_classes=3)
        assert ("calibration" in fields) == has == (detail is not None), loss
        assert fields["per_class"]["val"]["support"] == torch.bincount(split.y, minlength=3).tolist()
    binary = Split(split.x, (split.y > 0).long())
    fields, _ = answers_summary(torch.nn.Linear(4, 1), {"val": binary}, loss_name="bce", num_classes=2)
    assert "calibration" in fields  # one bce logit: sigmoid(z) = softmax([0, z])


def test_a_language_model_is_calibrated_per_token_without_a_per_class_view(tmp_path, capsys):
    spec = config.load(EXAMPLES / "text-gpt.yaml", ["train.epochs=1", "model.layers=1", "model.embed=16",
                                                    "data.context=16", "data.train_size=200", *QUIET])
    result = run(spec, tmp_path / "gpt", quiet=True, report=False)
    c = result.summary["calibration"]
    assert "per_class" not in result.summary
    assert c["test_examples"] == result.splits.test.y.numel()  # every position of every test window
    t = c["temperature"]
    calibrated = sample_text(result.path, "Sha", 30, temperature=0.8, seed=1, calibrated=True)
    assert calibrated == sample_text(result.path, "Sha", 30, temperature=0.8 * t, seed=1)
    code, out, err = run_cli(["sample", str(result.path), "--prompt", "Sha", "--tokens", "30", "--seed", "1",
                              "--temperature", "0.8", "--calibrated"], capsys)
    assert code == 0 and out.rstrip("\n") == calibrated, err
    (result.path / CALIBRATION_FILE).unlink()
    code, _, err = run_cli(["sample", str(result.path), "--calibrated"], capsys)
    assert code == 2 and err.count("\n") == 1 and "no fitted temperature" in err


# --------------------------------------------------------------------------- per class


def test_a_healthy_run_raises_no_answer_rule(healthy):
    pc = healthy.summary["per_class"]
    assert answer_ids(healthy.findings) == []
    assert min(pc["val"]["recall"]) > 0.5 and pc["train_support"] == torch.bincount(healthy.splits.train.y).tolist()
    confusion = torch.tensor(pc["test"]["confusion"])
    assert confusion.sum().item() == len(healthy.splits.test)
    assert confusion.trace().item() / len(healthy.splits.test) == pytest.approx(healthy.summary["test_acc"])
    assert len(confusion_figure(healthy.summary).axes) == 3


def test_a_class_removed_from_training_is_never_predicted(tmp_path):
    """Class 3 has no training example: its logit only ever learns to lose, so no validation
    example gets it (measured over seeds 0-4: 0 predictions of 3 every time, mean recall of the
    others 0.84-0.87; the same spec with class 3 kept raises none of the answer rules)."""
    spec = config.load(None, DIGITS)
    splits = data.load(spec.data)
    keep = splits.train.y != 3
    removed = dataclasses.replace(splits, train=Split(splits.train.x[keep], splits.train.y[keep]))
    result = run(spec, tmp_path / "removed", quiet=True, report=False, splits=removed)
    found = [f for f in result.findings if f.id == "class_never_predicted"]
    assert found and found[0].severity == "warning", [(f.id, f.message) for f in result.findings]
    evidence = found[0].evidence
    assert evidence["classes"] == [3] and evidence["train_support"] == [0] and evidence["split"] == "val"
    assert evidence["support"] == [int((splits.val.y == 3).sum())]
    assert "no training example" in found[0].advice
    assert "weak_class" not in answer_ids(result.findings)  # the other classes are fine, class 3 reported once


class _Handicap(torch.nn.Module):
    """A trained network with one class's logit lowered by ``shift``: built to answer that class rarely."""

    def __init__(self, model, k, shift):
        super().__init__()
        self.model, self.k, self.shift = model, k, shift

    def forward(self, x):
        out = self.model(x).clone()
        out[:, self.k] -= self.shift
        return out


def test_weak_class_fires_on_a_network_built_to_miss_one_class(healthy):
    """The healthy digits MLP with class 5's logit lowered until only its 4 surest validation
    examples keep it: recall 4/~37, far below half the ~90% mean."""
    model, val = healthy.model, healthy.splits.val
    with torch.no_grad():
        z = model(val.x)[val.y == 5]
        margins = (z[:, 5] - z.clone().index_fill_(1, torch.tensor([5]), -math.inf).amax(1)).sort(descending=True).values
    built = _Handicap(model, 5, ((margins[3] + margins[4]) / 2).item())
    fields, _ = answers_summary(built, {"val": val}, loss_name="cross_entropy", num_classes=10)
    view = fields["per_class"]["val"]
    assert view["recall"][5] == pytest.approx(4 / view["support"][5]) and view["predicted"][5] >= 4
    found = answer_findings(fields)
    assert [f.id for f in found] == ["weak_class"] and found[0].evidence["classes"] == [5]
    assert found[0].severity == "warning" and "class 5" in found[0].message


def test_per_class_rules_need_counts_that_support_them():
    # a class recalled 1 in 3 of a 90% model: below half the mean, but 3 examples say little
    view = {"support": [40, 40, 3], "predicted": [44, 38, 1], "recall": [0.95, 0.9, 1 / 3], "mean_recall": 0.73,
            "confusion": [[38, 2, 0], [4, 36, 0], [2, 0, 1]]}
    assert weak_class_finding({"val": view}) is None
    # never predicted, but a single example: a 90% model misses one example 10% of the time
    once = {**view, "support": [40, 40, 1], "predicted": [45, 36, 0], "recall": [0.95, 0.9, 0.0], "mean_recall": 0.62,
            "confusion": [[38, 2, 0], [4, 36, 0], [1, 0, 0]]}
    assert class_never_predicted_finding({"val": once}) is None
    many = {**once, "support": [40, 40, 20], "confusion": [[38, 2, 0], [4, 36, 0], [15, 5, 0]]}
    assert class_never_predicted_finding({"val": many}).evidence["classes"] == [2]


def test_ensemble_uses_the_fitted_temperatures_on_request(healthy, tmp_path, capsys):
    """An ensemble of one run scores what the run's own calibration measured: its test NLL
    before, and after dividing by its fitted temperature."""
    c = healthy.summary["calibration"]
    plain = ensemble_runs([healthy.path])
    scaled = ensemble_runs([healthy.path], calibrated=True)
    assert plain["ensemble"]["test_loss"] == pytest.approx(c["test_nll"], abs=1e-5)
    assert scaled["ensemble"]["test_loss"] == pytest.approx(c["test_nll_scaled"], abs=1e-5)
    assert scaled["ensemble"]["test_acc"] == plain["ensemble"]["test_acc"]  # one member: T moves no answer
    assert scaled["members"][0]["temperature"] == c["temperature"] and scaled["calibrated"] is True
    code, out, err = run_cli(["ensemble", str(healthy.path), "--calibrated", "--out", str(tmp_path / "e")], capsys)
    assert code == 0 and "fitted temperatures" in out, err
    bare = tmp_path / "bare"
    bare.mkdir()
    for name in ("config.yaml", "summary.json"):
        (bare / name).write_bytes((healthy.path / name).read_bytes())
    (bare / "checkpoints").mkdir()
    for best in (healthy.path / "checkpoints").glob("*.pt"):
        (bare / "checkpoints" / best.name).write_bytes(best.read_bytes())
    code, _, err = run_cli(["ensemble", str(healthy.path), str(bare), "--calibrated"], capsys)
    assert code == 2 and err.count("\n") == 1 and "no fitted temperature" in err


def test_per_class_findings_of_an_unfinished_run_name_their_cause():
    from babysit.checks.findings import Finding, reconcile

    never = Finding("class_never_predicted", "warning", "Class 3 is never predicted.", "Look at class 3.", {})
    weak = Finding("weak_class", "warning", "Class 5 is weak.", "Look at class 5.", {})
    unfinished = Finding("not_converged", "warning", "Still improving.", "Train longer.", {})
    found = {f.id: f for f in reconcile([never, weak, unfinished])}
    assert found["class_never_predicted"].severity == found["weak_class"].severity == "info"
    assert found["weak_class"].evidence["explained_by"] == "not_converged"
    assert found["not_converged"].severity == "warning"
    # on their own (a finished, healthy-looking run) they stay warnings
    assert {f.severity for f in reconcile([never, weak])} == {"warning"}


def test_a_perfectly_classified_validation_split_fits_no_temperature():
    """Every validation example right and confident: the NLL falls all the way to T -> 0, so the
    fit runs to its bound; no temperature is kept (scaling by it would wreck the test NLL)."""
    from babysit.checks.answers import calibration

    gen = torch.Generator().manual_seed(0)
    y = {s: torch.randint(0, 3, (200,), generator=gen) for s in ("val", "test")}
    z = {s: 4 * torch.nn.functional.one_hot(y[s], 3).float() for s in y}
    z["test"][:20] = z["test"][:20].roll(1, dims=1)  # the test split has mistakes
    summary, detail = calibration(z, y)
    assert summary["temperature"] is None and summary["temperature_unbounded"] is True
    assert detail["temperature"] is None and "test_ece_scaled" not in summary
