"""The model's answers after training: are its probabilities honest, and does every class get its turn?

Calibration (Guo et al. 2017, "On Calibration of Modern Neural Networks", arXiv 1706.04599):

- the expected calibration error, ECE: the top-label confidences put in :data:`ECE_BINS`
  equal-width bins, ``sum_b n_b / N * |accuracy_b - confidence_b|`` (L1). The bins are
  torchmetrics' ``MulticlassCalibrationError(n_bins=15, norm="l1")`` exactly: ``[k/15, (k+1)/15)``
  from float32 softmax confidences, and a confidence of exactly 1.0 (a float32 softmax saturated
  by a logit gap above ~17) counted in a degenerate bin ``[1, 1]`` of its own, so the two
  numbers agree to float rounding on any logits (tests/test_answers.py);
- temperature scaling: one scalar ``T`` that divides every logit, fitted on the validation
  split by minimising its negative log-likelihood (L-BFGS on ``log T``). It cannot change a
  prediction (the argmax of ``z / T`` is the argmax of ``z``), only how sure the answers are;
  ``T > 1`` softens an overconfident network. :func:`fit_temperature`, :class:`TemperatureScaled`.

Which runs have probabilities: softmax losses (cross_entropy, nll) and a single binary bce logit
(``sigmoid(z)`` is the softmax of the logits ``[0, z]``), per example or per token of a
language model. hinge, mse / mae on one-hot codes and the perceptron give scores, not
probabilities; one-vs-rest bce gives probabilities that do not sum to one: no calibration there.

Per-class view: the confusion matrix (rows: true class, columns: predicted) and each class's
recall on the validation and test splits, for every classifier with one label per example
(a language model's "classes" are its vocabulary: no per-class view there).

Findings (thresholds next to their reasons below): ``overconfident``, ``class_never_predicted``,
``weak_class``. They read summary.json's ``calibration`` and ``per_class`` (:func:`answer_findings`).

Example
-------
>>> import torch
>>> torch.manual_seed(0) and None
>>> logits = 4 * torch.randn(4000, 5)
>>> targets = torch.distributions.Categorical(logits=logits).sample()  # calibrated by construction
>>> expected_calibration_error(logits, targets) < 0.03
True
>>> abs(fit_temperature(3 * logits, targets) - 3) < 0.2  # logits made 3x too sharp: T near 3 undoes it
True
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from scipy.stats import binom
from torch import Tensor, nn

from babysit.checks.findings import Finding
from babysit.data import Split
from babysit.errors import BabysitError
from babysit.optim import losses
from babysit.rundir import read_json

CALIBRATION_FILE = "calibration.json"
# Guo et al. 2017 (section 5) measure ECE with M = 15 equal-width bins; torchmetrics' default too.
ECE_BINS = 15
# The issue's bar, in Guo et al.'s units: modern networks land at 2-17% test ECE before
# temperature scaling and at 1-2% after (their Table 1).
OVERCONFIDENT_ECE = 0.05
# ... and temperature scaling must at least halve it: a miscalibration that one temperature
# fixes is systematic overconfidence, not binning noise, which no temperature removes. The
# noise is not small: on logits calibrated by construction (10 classes, labels drawn from the
# softmax, 20 seeds a case) the test ECE is 0.035 +- 0.006 (accuracy 87%) to 0.064 +- 0.017
# (accuracy 53%) on 359 test examples (digits' test split), 0.023 to 0.040 on 1,000 (MNIST-1D's),
# often above the bar alone; with the temperature fitted on 144 / 400 validation examples the
# rule fired in 0 of those 160 calibrated runs.
OVERCONFIDENT_GAIN = 2.0
# overconfident is info, not a warning: it changes no prediction, the run trained as it should
# (Guo et al. find it in most modern networks), and the remedy is already fitted and saved.
# It matters to whoever reads the probabilities. Measured: the shipped text-gpt example, kept
# at its lowest validation loss, has test ECE 0.085 -> 0.023 with T = 1.21 per character.
OVERCONFIDENT_SEVERITY = "info"
# log T stays within [-LOG_T_BOUND, LOG_T_BOUND] (T in [0.05, 20]): a validation split the model
# classifies perfectly has no finite optimum (the NLL keeps falling as T -> 0).
LOG_T_BOUND = 3.0
# Logits kept per split for calibration: 2^24 values (64 MiB in float32), e.g. 250k tokens of a
# 65-character model; past that the first examples are used (summary.json records how many).
MAX_OUTPUT_VALUES = 2**24
# Per-class rules judge only what the counts support: a class is flagged when its count of
# right answers is this unlikely (one-sided binomial tail) under the benign explanation: for
# class_never_predicted, that the class is as good as the average one; for weak_class, that its
# true recall is at the bar. Only classes near the bar risk a false alarm: a class whose true
# recall is the mean fires with probability 3e-5 (mean 0.5, 15 examples) to 1e-10 (mean 0.9).
# Measured: none of the shipped examples trips either rule; the closest, mnist1d-logreg (mean
# val recall 0.30, bar 0.15), has class 9 at 3 of 40 right, tail probability 0.13. A digits MLP
# trained with 75% of class 5's training labels moved to 8 (val_fraction 0.25, ~37 a class)
# gets class 5 recall 0.03-0.41 and fires in 8 of 10 seeds (the two silent ones: 0.30, 0.41).
CLASS_P_VALUE = 0.05
# weak_class: recall below half the mean recall over classes (the bar): the mean
# recall is the balanced accuracy, so half of it is far outside the spread of a healthy
# model's classes (digits MLP: every class within 0.86-1.0 of a 0.96 mean, seeds 0-4).
WEAK_CLASS_FRACTION = 0.5
# Confusion matrices in summary.json only up to this many classes (100 x 100 counts); above,
# the per-class recall and support alone.
MAX_CONFUSION_CLASSES = 100


# --------------------------------------------------------------------------- probabilities


def class_logits(outputs: Tensor, loss_name: str) -> Tensor | None:
    """Logits ``(..., C)`` whose softmax is the model's predicted distribution, or None when the
    loss gives no probabilities (hinge, mse, mae, perceptron, one-vs-rest bce).

    Example
    -------
    >>> class_logits(torch.tensor([[2.0]]), "bce").softmax(-1)  # sigmoid(2) for class 1
    tensor([[0.1192, 0.8808]])
    >>> class_logits(torch.zeros(1, 3), "hinge") is None
    True
    """
    if loss_name in ("cross_entropy", "nll"):
        return outputs
    if loss_name == "bce" and outputs.shape[-1] == 1:
        return torch.cat([torch.zeros_like(outputs), outputs], dim=-1)  # softmax([0, z]) = [1 - σ(z), σ(z)]
    return None


class TemperatureScaled(nn.Module):
    """``model(x) / temperature``: the calibrated network (a bce logit is divided alike, sigmoid(z / T)).

    Example
    -------
    >>> scaled = TemperatureScaled(nn.Identity(), 2.0)
    >>> scaled(torch.tensor([[4.0, 2.0]]))
    tensor([[2., 1.]])
    """

    def __init__(self, model: nn.Module, temperature: float) -> None:
        super().__init__()
        if not (temperature > 0 and math.isfinite(temperature)):
            raise ValueError(f"temperature: must be a finite number > 0, got {temperature}")
        self.model = model
        self.temperature = float(temperature)

    def forward(self, x: Tensor) -> Tensor:
        return self.model(x) / self.temperature


@torch.no_grad()
def collect_outputs(model: nn.Module, split: Split, autocast: Callable[[], Any] = nullcontext,
                    batch_size: int = 4096, max_values: int = MAX_OUTPUT_VALUES) -> tuple[Tensor, Tensor]:
    """The model's raw outputs (float32, on the split's device) and the targets for the first
    examples of ``split`` in eval mode: all of them, or as many as fit in ``max_values`` output values."""
    was_training = model.training
    model.eval()
    outputs: list[Tensor] = []
    limit = len(split)
    try:
        start = 0
        while start < limit:
            with autocast():
                out = model(split.x[start:min(start + batch_size, limit)])
            if start == 0:
                limit = min(limit, max(1, max_values // max(1, out[0].numel())))
                out = out[:limit]
            outputs.append(out.float())
            start += batch_size
    finally:
        model.train(was_training)
    return torch.cat(outputs), split.y[:limit]


# --------------------------------------------------------------------------- calibration


def calibration_bins(logits: Tensor, targets: Tensor, n_bins: int = ECE_BINS) -> dict[str, Tensor]:
    """Top-label confidences binned for the ECE and the reliability diagram.

    ``logits`` ``(N, C)``, ``targets`` ``(N,)``. Returns float64 tensors of ``n_bins + 1``
    entries (the last: confidences of exactly 1.0): ``count``, ``confidence`` (the sum of the
    confidences in the bin) and ``correct`` (the number right), on the logits' device.

    Example
    -------
    >>> bins = calibration_bins(torch.tensor([[0.0, 0.0], [3.0, 0.0]]), torch.tensor([0, 1]))
    >>> bins["count"].nonzero().flatten().tolist()  # confidences 0.5 and 0.953: bins 7 and 14
    [7, 14]
    """
    probabilities = logits.float().softmax(-1)  # float32, as torchmetrics scores them
    confidence, predicted = probabilities.max(-1)
    correct = (predicted == targets).double()
    boundaries = torch.linspace(0, 1, n_bins + 1, dtype=confidence.dtype, device=confidence.device)
    index = (torch.bucketize(confidence, boundaries, right=True) - 1).clamp(0, n_bins)  # [k/M, (k+1)/M)
    count = torch.zeros(n_bins + 1, dtype=torch.float64, device=logits.device)
    return {"count": count.index_add(0, index, torch.ones_like(correct)),
            "confidence": count.index_add(0, index, confidence.double()),
            "correct": count.index_add(0, index, correct)}


def bins_ece(bins: Mapping[str, Tensor]) -> float:
    """ECE from :func:`calibration_bins`: ``sum_b |correct_b - confidence_b| / N``."""
    total = bins["count"].sum()
    return float((bins["correct"] - bins["confidence"]).abs().sum() / total.clamp_min(1))


def expected_calibration_error(logits: Tensor, targets: Tensor, n_bins: int = ECE_BINS) -> float:
    """Top-label ECE (L1) over ``n_bins`` equal-width bins (Guo et al. 2017, eq. 3).

    Example
    -------
    >>> logits = torch.tensor([[4.0, 0.0], [4.0, 0.0], [0.0, 0.0]])
    >>> round(expected_calibration_error(logits, torch.tensor([0, 1, 0])), 4)  # 2/3 |0.5 - 0.982| + 1/3 |1 - 0.5|
    0.488
    """
    return bins_ece(calibration_bins(logits, targets, n_bins))


def fit_temperature(logits: Tensor, targets: Tensor, max_iter: int = 100) -> float:
    """The temperature ``T`` minimising the NLL of ``softmax(logits / T)`` on ``(logits, targets)``:
    L-BFGS (strong Wolfe line search) on ``log T`` from ``T = 1`` (Guo et al. 2017, section 4.2),
    kept within ``[e^-LOG_T_BOUND, e^LOG_T_BOUND]``.

    Example
    -------
    >>> torch.manual_seed(1) and None
    >>> z = 2 * torch.randn(4000, 10)
    >>> y = torch.distributions.Categorical(logits=z).sample()
    >>> round(fit_temperature(z / 2, y), 1)  # logits made 2x too soft: T near 1/2
    0.5
    """
    z, y = logits.detach().double(), targets.detach()
    log_t = torch.zeros((), dtype=torch.float64, device=z.device, requires_grad=True)
    optimizer = torch.optim.LBFGS([log_t], lr=1.0, max_iter=max_iter, line_search_fn="strong_wolfe",
                                  tolerance_grad=1e-10, tolerance_change=1e-12)

    def closure() -> Tensor:
        optimizer.zero_grad()
        # clamped: past the bounds the gradient is 0 and L-BFGS stops
        nll = F.cross_entropy(z / log_t.clamp(-LOG_T_BOUND, LOG_T_BOUND).exp(), y)
        nll.backward()
        return nll

    optimizer.step(closure)
    return float(log_t.detach().clamp(-LOG_T_BOUND, LOG_T_BOUND).exp())


def _reliability(bins: Mapping[str, Tensor]) -> dict[str, Any]:
    """One split's reliability diagram as JSON: per bin, examples, mean confidence and accuracy (None when empty)."""
    count = bins["count"].tolist()
    return {"count": [int(c) for c in count],
            "confidence": [s / c if c else None for s, c in zip(bins["confidence"].tolist(), count, strict=True)],
            "accuracy": [s / c if c else None for s, c in zip(bins["correct"].tolist(), count, strict=True)],
            "ece": bins_ece(bins)}


def calibration(logits: Mapping[str, Tensor], targets: Mapping[str, Tensor],
                n_bins: int = ECE_BINS) -> tuple[dict[str, Any], dict[str, Any]]:
    """ECE and NLL of each split (``"val"``, ``"test"``: logits ``(N, C)``, targets ``(N,)``), before and
    after temperature scaling fitted on ``"val"`` (none without it).

    Returns ``(summary, detail)``: the figures for summary.json, and calibration.json (the
    temperature and every split's reliability diagram, before and after).

    Example
    -------
    >>> torch.manual_seed(0) and None
    >>> z = {s: 3 * torch.randn(1000, 4) for s in ("val", "test")}
    >>> y = {s: torch.distributions.Categorical(logits=z[s]).sample() for s in z}
    >>> summary, detail = calibration({s: 2 * z[s] for s in z}, y)  # twice too sharp
    >>> abs(summary["temperature"] - 2) < 0.2, summary["test_ece_scaled"] < summary["test_ece"] / 2
    (True, True)
    """
    temperature = fit_temperature(logits["val"], targets["val"]) if "val" in logits else None
    # every validation example right: the NLL keeps falling as T -> 0, there is no finite optimum (the
    # fit stops at its bound or where the gradient underflows), and dividing by it would wreck the test NLL
    # (options-lbfgs on spirals: T 0.05, test NLL 0.058 -> 0.93)
    unbounded = temperature is not None and (abs(math.log(temperature)) >= LOG_T_BOUND - 1e-6
                                             or bool((logits["val"].argmax(-1) == targets["val"]).all()))
    if unbounded:
        temperature = None
    summary: dict[str, Any] = {"temperature": temperature, "bins": n_bins}
    if unbounded:
        summary["temperature_unbounded"] = True
    reliability: dict[str, Any] = {}
    for name, z in logits.items():
        y = targets[name]
        bins = calibration_bins(z, y, n_bins)
        reliability[name] = _reliability(bins)
        n = bins["count"].sum()
        summary.update({f"{name}_ece": reliability[name]["ece"], f"{name}_nll": F.cross_entropy(z.double(), y).item(),
                        f"{name}_confidence": float(bins["confidence"].sum() / n),
                        f"{name}_accuracy": float(bins["correct"].sum() / n), f"{name}_examples": len(y)})
        if temperature is not None:
            scaled = calibration_bins(z / temperature, y, n_bins)
            reliability[f"{name}_scaled"] = _reliability(scaled)
            summary.update({f"{name}_ece_scaled": reliability[f"{name}_scaled"]["ece"],
                            f"{name}_nll_scaled": F.cross_entropy(z.double() / temperature, y).item(),
                            f"{name}_confidence_scaled": float(scaled["confidence"].sum() / scaled["count"].sum())})
    detail = {"temperature": temperature, "fitted_on": "val" if temperature is not None else None, "bins": n_bins,
              "reliability": reliability, **({"temperature_unbounded": True} if unbounded else {})}
    return summary, detail


def saved_temperature(run_dir: str | Path) -> float:
    """The temperature fitted on a run's validation split (its calibration.json); a BabysitError
    naming the run when it has none.

    Example
    -------
    >>> saved_temperature("/nonexistent/run")
    Traceback (most recent call last):
    ...
    babysit.errors.BabysitError: /nonexistent/run: no fitted temperature (calibration.json); runs with a softmax (cross_entropy, nll) or one bce logit and a validation split fit one when they end
    """
    detail = read_json(Path(run_dir) / CALIBRATION_FILE)
    temperature = detail.get("temperature") if isinstance(detail, dict) else None
    if isinstance(detail, dict) and detail.get("temperature_unbounded"):
        raise BabysitError(f"{run_dir}: no fitted temperature: the model classified every validation example "
                           "right, so no finite temperature minimises their loss; use the run's own probabilities")
    if not isinstance(temperature, int | float) or not (temperature > 0 and math.isfinite(temperature)):
        raise BabysitError(f"{run_dir}: no fitted temperature ({CALIBRATION_FILE}); runs with a softmax "
                           "(cross_entropy, nll) or one bce logit and a validation split fit one when they end")
    return float(temperature)


# --------------------------------------------------------------------------- per class


def confusion_matrix(predicted: Tensor, targets: Tensor, num_classes: int) -> Tensor:
    """``(C, C)`` int64 counts, rows the true class and columns the predicted one.

    Example
    -------
    >>> confusion_matrix(torch.tensor([0, 1, 1, 2]), torch.tensor([0, 1, 2, 2]), 3).tolist()
    [[1, 0, 0], [0, 1, 0], [0, 1, 1]]
    """
    flat = targets.reshape(-1).long() * num_classes + predicted.reshape(-1).long()
    return torch.bincount(flat, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def class_recall(confusion: Tensor) -> list[float | None]:
    """Each class's recall (per-class accuracy): right / support; None for a class with no example.

    Example
    -------
    >>> class_recall(torch.tensor([[3, 1], [0, 0]]))
    [0.75, None]
    """
    support, right = confusion.sum(1).tolist(), confusion.diagonal().tolist()
    return [r / s if s else None for r, s in zip(right, support, strict=True)]


def balanced_accuracy(confusion: Tensor) -> float:
    """The mean recall over the classes present (sklearn's ``balanced_accuracy_score``).

    Example
    -------
    >>> balanced_accuracy(torch.tensor([[3, 1, 0], [0, 0, 0], [2, 0, 2]]))  # (0.75 + 0.5) / 2
    0.625
    """
    recalls = [r for r in class_recall(confusion) if r is not None]
    return sum(recalls) / len(recalls) if recalls else math.nan


def per_class_view(confusion: Tensor) -> dict[str, Any]:
    """One split's per-class figures for summary.json: support, predictions, recall (None
    without support), their mean, and the confusion matrix (up to :data:`MAX_CONFUSION_CLASSES`)."""
    view: dict[str, Any] = {"support": confusion.sum(1).tolist(), "predicted": confusion.sum(0).tolist(),
                            "recall": class_recall(confusion), "mean_recall": balanced_accuracy(confusion)}
    if len(confusion) <= MAX_CONFUSION_CLASSES:
        view["confusion"] = confusion.tolist()
    return view


# --------------------------------------------------------------------------- what a run measures


def answers_summary(model: nn.Module, heldout: Mapping[str, Split | None], *, loss_name: str, num_classes: int,
                    train_targets: Tensor | None = None, class_names: list[str] | None = None,
                    per_class: bool = True, autocast: Callable[[], Any] = nullcontext
                    ) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """What a classifier's answers say, for summary.json: ``calibration`` (when the loss gives
    probabilities) and ``per_class`` (when ``per_class``), from one eval pass over each held-out
    split (``{"val": ..., "test": ...}``; outputs ``(N, C)`` or ``(N, T, C)`` per token). A split
    with non-finite outputs (a diverged network) is left out. Returns ``(fields, calibration.json or None)``.

    Example
    -------
    >>> torch.manual_seed(0) and None
    >>> split = Split(torch.randn(60, 4), torch.randint(0, 3, (60,)))
    >>> fields, detail = answers_summary(nn.Linear(4, 3), {"val": split, "test": split}, loss_name="cross_entropy",
    ...                                  num_classes=3)
    >>> sorted(fields), sorted(fields["per_class"]), len(detail["reliability"]["test"]["count"])
    (['calibration', 'per_class'], ['test', 'val'], 16)
    """
    logits: dict[str, Tensor] = {}
    targets: dict[str, Tensor] = {}
    views: dict[str, Any] = {}
    for name, split in heldout.items():
        if split is None or not len(split):
            continue
        outputs, y = collect_outputs(model, split, autocast)
        if not bool(torch.isfinite(outputs).all()):  # a diverged network: its answers mean nothing
            continue
        z = class_logits(outputs, loss_name)
        if z is not None:
            logits[name], targets[name] = z.reshape(-1, z.shape[-1]), y.reshape(-1)  # (N, T, C) -> (N*T, C)
        if per_class:
            predicted = losses.predict(outputs, loss_name)
            views[name] = per_class_view(confusion_matrix(predicted, y, num_classes).cpu())
    fields: dict[str, Any] = {}
    detail = None
    if logits:
        fields["calibration"], detail = calibration(logits, targets)
    if views:
        if train_targets is not None:
            views["train_support"] = torch.bincount(train_targets.reshape(-1).long(), minlength=num_classes).tolist()
        if class_names is not None and len(class_names) == num_classes:
            views["classes"] = list(class_names)
        fields["per_class"] = views
    return fields, detail


# --------------------------------------------------------------------------- findings


def overconfident_finding(calibration: Mapping[str, Any]) -> Finding | None:
    """``overconfident`` (info, see :data:`OVERCONFIDENT_SEVERITY`) when the test ECE is above
    :data:`OVERCONFIDENT_ECE`, the fitted temperature softens the answers (T > 1; T < 1 would
    mean underconfident, not this finding), and scaling by it at least halves the test ECE.

    Example
    -------
    >>> figures = {"temperature": 2.4, "test_ece": 0.09, "test_ece_scaled": 0.015, "test_confidence": 0.97,
    ...            "test_confidence_scaled": 0.89, "test_accuracy": 0.88, "test_examples": 1000}
    >>> overconfident_finding(figures).evidence["temperature"]
    2.4
    >>> overconfident_finding({**figures, "test_ece_scaled": 0.06}) is None  # not a temperature's doing
    True
    """
    t, before, after = (calibration.get(k) for k in ("temperature", "test_ece", "test_ece_scaled"))
    if not all(isinstance(v, int | float) and math.isfinite(v) for v in (t, before, after)):
        return None
    if not (before > OVERCONFIDENT_ECE and t > 1 and after * OVERCONFIDENT_GAIN <= before):
        return None
    confidence, scaled, accuracy = (v if isinstance(v := calibration.get(k), int | float) else math.nan
                                    for k in ("test_confidence", "test_confidence_scaled", "test_accuracy"))
    return Finding(
        "overconfident", OVERCONFIDENT_SEVERITY,
        f"The model's probabilities are more confident than its answers are right: on the test split "
        f"({calibration.get('test_examples')} predictions) its top class gets {confidence:.1%} on average and is "
        f"right {accuracy:.1%} of the time; the "
        f"expected calibration error (ECE, {calibration.get('bins', ECE_BINS)} bins) is {before:.3f} "
        f"(bar {OVERCONFIDENT_ECE}). Dividing the logits by a temperature T = {t:.3g}, fitted on the validation "
        f"split, brings the test ECE to {after:.3f} (mean confidence {scaled:.1%}, accuracy unchanged): "
        f"one temperature fixes it, so the network is systematically overconfident (Guo et al. 2017). "
        f"The accuracy is unaffected; the unscaled probabilities overstate how sure it can be.",
        f"Read probabilities as softmax(logits / {t:.3g}): babysit saved T = {t:.3g} in calibration.json, and "
        "`babysit ensemble --calibrated` (and `babysit sample --calibrated` for a language model) use it "
        "(temperature scaling, Guo "
        "et al. 2017, arXiv 1706.04599). Overconfidence grows with training past the lowest validation loss "
        "and with less weight decay: early stopping on val_loss, or more weight decay, also reduce it.",
        {"temperature": t, "test_ece": before, "test_ece_scaled": after, "bar": OVERCONFIDENT_ECE,
         "gain_needed": OVERCONFIDENT_GAIN, "test_confidence": confidence, "test_confidence_scaled": scaled,
         "test_nll": calibration.get("test_nll"), "test_nll_scaled": calibration.get("test_nll_scaled"),
         "test_accuracy": accuracy, "test_examples": calibration.get("test_examples")})


def _judged_split(per_class: Mapping[str, Any]) -> tuple[str, dict[str, Any]] | None:
    """The split the per-class rules judge: validation, else test."""
    for name in ("val", "test"):
        view = per_class.get(name)
        if isinstance(view, dict) and isinstance(view.get("support"), list) and isinstance(view.get("recall"), list):
            return name, view
    return None


def _class_label(per_class: Mapping[str, Any], k: int) -> str:
    names = per_class.get("classes")
    return f"class {k} ({names[k]!r})" if isinstance(names, list) and k < len(names) and names[k] != str(k) else f"class {k}"


def _most_confused(view: Mapping[str, Any], k: int) -> tuple[int, int] | None:
    """The class that takes most of class k's examples, and how many: from the confusion matrix."""
    confusion = view.get("confusion")
    if not isinstance(confusion, list) or k >= len(confusion):
        return None
    row = [(c if j != k else -1) for j, c in enumerate(confusion[k])]
    j = max(range(len(row)), key=row.__getitem__)
    return (j, row[j]) if row[j] > 0 else None


def _never_predicted(view: Mapping[str, Any]) -> list[int]:
    """Classes with support that the model never predicts, where the average class would
    almost surely have been predicted at least once on as many examples."""
    support, predicted, mean = view["support"], view.get("predicted") or [], view.get("mean_recall")
    if not isinstance(mean, int | float) or not math.isfinite(mean) or len(predicted) != len(support):
        return []
    # P(no right answer in n tries of a class as good as the average) = (1 - mean)^n; a class
    # never predicted has none right (and no false positive either, which only lowers it)
    return [k for k, (n, p) in enumerate(zip(support, predicted, strict=True))
            if n > 0 and p == 0 and (1 - mean) ** n <= CLASS_P_VALUE]


def class_never_predicted_finding(per_class: Mapping[str, Any]) -> Finding | None:
    """``class_never_predicted`` (a warning) when classes with examples in the validation split
    (else test) are never the model's answer there, and a class as good as the average would
    have been right at least once on that many examples with probability over 1 - :data:`CLASS_P_VALUE`.

    Example
    -------
    >>> view = {"support": [40, 40, 40], "predicted": [60, 60, 0], "recall": [1.0, 1.0, 0.0], "mean_recall": 0.667,
    ...         "confusion": [[40, 0, 0], [0, 40, 0], [20, 20, 0]]}
    >>> class_never_predicted_finding({"val": view}).evidence["classes"]
    [2]
    """
    judged = _judged_split(per_class)
    if judged is None:
        return None
    split, view = judged
    never = _never_predicted(view)
    if not never:
        return None
    support, mean = view["support"], view["mean_recall"]
    train = per_class.get("train_support")
    parts = []
    for k in never:
        confused = _most_confused(view, k)
        where = f", mostly as class {confused[0]} ({confused[1]})" if confused else ""
        in_train = f"; {train[k]} in training" if isinstance(train, list) and k < len(train) else ""
        parts.append(f"{_class_label(per_class, k)}: {support[k]} examples, all answered as other classes{where}"
                     f"{in_train}")
    absent = [k for k in never if isinstance(train, list) and k < len(train) and train[k] == 0]
    return Finding(
        "class_never_predicted", "warning",
        f"On the {split} split the model never answers {len(never)} of {len(support)} classes, although they have "
        f"examples there: {'; '.join(parts)}. The other classes are recalled {mean:.0%} of the time on average, so "
        "this is no accident of a few examples; the accuracy averages it away.",
        ("Classes " + ", ".join(map(str, absent)) + " have no training example at all: check how the labels were "
         "read and split. " if absent else "")
        + "Check that class's training labels (its count, whether they are right: checks.label_noise) and the "
          "class balance (class_imbalance); loss_weights: balanced weighs a rare class up. A network stuck near "
          "chance (underfitting) predicts few classes: fix that first.",
        {"split": split, "classes": never, "support": [support[k] for k in never],
         "train_support": [train[k] for k in never] if isinstance(train, list) else None,
         "mean_recall": mean, "p_value_bar": CLASS_P_VALUE})


def weak_class_finding(per_class: Mapping[str, Any]) -> Finding | None:
    """``weak_class`` (a warning) when a class's recall on the validation split (else test) is
    below :data:`WEAK_CLASS_FRACTION` of the mean recall over classes, and its count of right
    answers is that low with probability at most :data:`CLASS_P_VALUE` for a class whose true
    recall were that bar (one-sided binomial). Classes never predicted are left to
    ``class_never_predicted``.

    Example
    -------
    >>> view = {"support": [50, 50, 50, 50], "predicted": [55, 60, 50, 35], "recall": [0.9, 0.9, 0.9, 0.1],
    ...         "mean_recall": 0.7, "confusion": [[45, 5, 0, 0], [5, 45, 0, 0], [0, 5, 45, 0], [5, 5, 35, 5]]}
    >>> weak_class_finding({"val": view}).evidence["classes"]
    [3]
    >>> weak_class_finding({"val": {**view, "support": [50, 50, 50, 4], "recall": [0.9, 0.9, 0.9, 0.25]}}) is None
    True
    """
    judged = _judged_split(per_class)
    if judged is None:
        return None
    split, view = judged
    support, recall, mean = view["support"], view["recall"], view.get("mean_recall")
    if not isinstance(mean, int | float) or not math.isfinite(mean) or mean <= 0:
        return None
    bar = WEAK_CLASS_FRACTION * mean
    never = set(_never_predicted(view))
    weak = [k for k, (n, r) in enumerate(zip(support, recall, strict=True))
            if k not in never and n > 0 and r is not None and r < bar
            and binom.cdf(round(r * n), n, bar) <= CLASS_P_VALUE]
    if not weak:
        return None
    parts = []
    for k in weak:
        confused = _most_confused(view, k)
        mistaken = f", most often taken for class {confused[0]} ({confused[1]} of {support[k]})" if confused else ""
        parts.append(f"{_class_label(per_class, k)} is right on {recall[k]:.0%} of its {support[k]} examples{mistaken}")
    train = per_class.get("train_support")
    return Finding(
        "weak_class", "warning",
        f"On the {split} split {'; '.join(parts)}: below half the mean recall over classes ({mean:.0%} / 2 = "
        f"{bar:.0%}). The accuracy averages this away.",
        "Look at that class's examples against the class that takes them (the confusion matrix in the report): "
        "inputs that really look alike call for a model that can separate them; label mistakes call for "
        "checks.label_noise; a rare class (its training count is in the evidence) for more of its data or "
        "loss_weights: balanced.",
        {"split": split, "classes": weak, "recall": [recall[k] for k in weak], "support": [support[k] for k in weak],
         "train_support": [train[k] for k in weak] if isinstance(train, list) else None,
         "mean_recall": mean, "bar": bar, "fraction": WEAK_CLASS_FRACTION, "p_value_bar": CLASS_P_VALUE})


def answer_findings(summary: Mapping[str, Any]) -> list[Finding]:
    """The findings on the model's answers, from summary.json's ``calibration`` and ``per_class``.

    Example
    -------
    >>> answer_findings({"test_loss": 0.3})
    []
    """
    found: list[Finding | None] = []
    calibration_figures = summary.get("calibration")
    if isinstance(calibration_figures, dict):
        found.append(overconfident_finding(calibration_figures))
    per_class = summary.get("per_class")
    if isinstance(per_class, dict):
        found += [class_never_predicted_finding(per_class), weak_class_finding(per_class)]
    return [f for f in found if f is not None]


__all__ = ["CALIBRATION_FILE", "CLASS_P_VALUE", "ECE_BINS", "OVERCONFIDENT_ECE", "OVERCONFIDENT_GAIN",
           "WEAK_CLASS_FRACTION", "TemperatureScaled", "answer_findings", "answers_summary", "balanced_accuracy",
           "calibration", "calibration_bins", "class_logits", "class_never_predicted_finding", "class_recall",
           "collect_outputs", "confusion_matrix", "expected_calibration_error", "fit_temperature",
           "overconfident_finding", "per_class_view", "saved_temperature", "weak_class_finding"]
