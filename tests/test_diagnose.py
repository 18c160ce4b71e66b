"""After-run diagnosis: each finding on the curve shape it names, none on healthy curves.

Two halves. Synthetic histories pin every rule to its shape and its thresholds (just
inside fires, just outside does not). Short real runs follow the issue's pathology suite
(a huge and a tiny learning rate, a big net on 200 examples, logistic regression on
MNIST-1D, a run cut short) and the no-false-alarm side (examples/ specs as they are).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from babysit import config
from babysit.checks import diagnose as rules
from babysit.checks.diagnose import diagnose, diagnose_run
from babysit.checks.findings import Finding
from babysit.errors import BabysitError
from babysit.run import run

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
LN10 = math.log(10)
AFTER_RUN = {"overfitting", "underfitting", "lr_too_high", "lr_too_low", "not_converged"}


pytestmark = pytest.mark.usefixtures("one_thread")


# --------------------------------------------------------------------------- helpers


def curves(train, val=None, lr=0.1, steps_per_epoch=10):
    """A metrics.jsonl history: one record per epoch with the given losses."""
    history = []
    for index, train_loss in enumerate(train):
        epoch = index + 1
        record = {"epoch": epoch, "step": epoch * steps_per_epoch,
                  "lr": lr[index] if isinstance(lr, list) else lr, "train_loss": train_loss}
        if val is not None:
            record["val_loss"] = val[index]
        history.append(record)
    return history


def decay(start, floor, epochs, rate=0.7):
    """A loss that falls fast and levels off: floor + (start - floor) * rate ** epoch."""
    return [floor + (start - floor) * rate ** e for e in range(1, epochs + 1)]


def wiggle(values, amount):
    """A deterministic +-amount zigzag on top of ``values`` (epoch-to-epoch noise)."""
    return [v + amount * (1 if i % 2 else -1) for i, v in enumerate(values)]


def found(findings, at_least="info"):
    rank = {"info": 0, "warning": 1, "error": 2}
    return {f.id: f.severity for f in findings if rank[f.severity] >= rank[at_least]}


def by_id(findings, finding_id) -> Finding:
    return next(f for f in findings if f.id == finding_id)


def healthy(epochs=40):
    """Fast fall, level off, validation a little above training, small noise."""
    train = wiggle(decay(2.3, 0.30, epochs), 0.004)
    val = wiggle(decay(2.3, 0.40, epochs), 0.006)
    return train, val


# --------------------------------------------------------------------------- healthy curves


def test_a_healthy_curve_gets_no_finding():
    train, val = healthy()
    summary = {"train_loss": 0.28, "val_loss": 0.40, "stopped_early": True, "best_epoch": 30}
    assert diagnose(curves(train, val), summary, chance_loss=LN10, epochs_planned=100) == []
    # the same curve run to its epoch limit without early stopping: it has levelled off
    summary = {"train_loss": 0.28, "val_loss": 0.40, "stopped_early": False}
    assert diagnose(curves(train, val), summary, chance_loss=LN10, epochs_planned=40,
                    early_stopping=False, update_ratios={"fc1": 1e-3, "fc2": 2e-3}) == []


def test_per_batch_lines_and_repeated_epochs_are_ignored():
    train, val = healthy(30)
    history = curves(train, val)
    noisy = []
    for record in history:
        noisy.append({"step": record["step"] - 5, "epoch": record["epoch"] - 1, "lr": 0.1, "batch_loss": 9.0})
        noisy.append(record)
    noisy.insert(0, dict(history[3], train_loss=50.0))  # epoch 4 logged, then re-logged on resume
    assert diagnose(noisy, chance_loss=LN10) == diagnose(history, chance_loss=LN10) == []
    assert diagnose([], {"stopped_early": False}) == []
    assert diagnose([{"step": 1, "epoch": 0, "batch_loss": 2.3}]) == []


def test_every_finding_is_complete_and_json_ready():
    cases = [
        (curves([2.3] * 3 + [None], [2.3] * 4), {"stop_reason": "nonfinite_loss: NaN"}),
        (curves(decay(2.3, 0.01, 40, 0.8), [0.6 + 0.002 * (e - 15) ** 2 for e in range(1, 41)]), None),
        (curves(wiggle([1.6] * 40, 0.003), wiggle([1.68] * 40, 0.003)), None),
        (curves([3.0 - 0.01 * e for e in range(30)], [3.0 - 0.01 * e for e in range(30)]), None),
    ]
    seen = set()
    for history, summary in cases:
        for f in diagnose(history, summary, chance_loss=LN10, epochs_planned=len(history), early_stopping=False):
            seen.add(f.id)
            assert f.message and f.advice and f.evidence
            assert f.message[0].isupper() and f.message.endswith(".")
            json.dumps(f.to_dict(), allow_nan=False)  # evidence is plain JSON
    assert seen == AFTER_RUN


# --------------------------------------------------------------------------- not_converged


def test_not_converged_when_still_falling_at_the_epoch_limit():
    loss = [2.0 - 0.01 * e for e in range(40)]  # a straight line down to the last epoch
    history = curves([v - 0.05 for v in loss], loss)
    findings = diagnose(history, {"stopped_early": False}, chance_loss=LN10, epochs_planned=40)
    assert found(findings) == {"not_converged": "warning"}
    f = by_id(findings, "not_converged")
    assert f.step == 400 and "epoch limit (40)" in f.message and f.evidence["series"] == "validation"
    # stopped early, or ended before its limit for another reason: not this finding
    assert "not_converged" not in found(diagnose(history, {"stopped_early": True}, chance_loss=LN10, epochs_planned=40))
    assert "not_converged" not in found(diagnose(history, {}, chance_loss=LN10, epochs_planned=60))


def test_not_converged_needs_a_clear_drop_over_the_last_quarter():
    def history(drop):
        # 20 epochs: down from 2.0 to 1.0 by epoch 15, then the trend window (the last 5
        # epochs) falls in a straight line by the fraction `drop`, at a tenth of the run's pace
        val = [2.0 - (e - 1) / 14 for e in range(1, 16)] + [1.0 * (1 - drop * i / 4) for i in range(5)]
        return curves([v - 0.1 for v in val], val)

    def fires(drop):
        return "not_converged" in found(diagnose(history(drop), {}, chance_loss=LN10, epochs_planned=20))

    assert not fires(0.9 * rules.FALL_MIN)
    assert fires(1.1 * rules.FALL_MIN)


def test_a_slow_steady_descent_counts_as_falling_even_when_the_drop_is_small():
    loss = [3.0 - 0.005 * e for e in range(12)]  # 0.7% over the last 5 epochs, at its full pace
    findings = diagnose(curves(loss, loss), {}, chance_loss=LN10, epochs_planned=12)
    assert "not_converged" in found(findings)
    assert by_id(findings, "not_converged").evidence["pace"] == pytest.approx(1.0)


def test_noise_is_not_a_trend():
    # levelled off with a zigzag of +-3%: the fitted slope is small against the noise
    val = wiggle(decay(2.3, 1.0, 40), 0.03)
    findings = diagnose(curves([v - 0.1 for v in val], val), {}, chance_loss=LN10, epochs_planned=40)
    assert "not_converged" not in found(findings)


# --------------------------------------------------------------------------- overfitting


def u_shape(epochs=40, best_epoch=15):
    train = decay(2.3, 0.005, epochs, 0.8)
    val = [0.6 + 0.002 * (e - best_epoch) ** 2 for e in range(1, epochs + 1)]
    return train, val


def test_overfitting_without_early_stopping_is_a_warning():
    train, val = u_shape()
    findings = diagnose(curves(train, val), {"train_loss": 0.004, "val_loss": val[-1], "train_acc": 1.0,
                                             "val_acc": 0.61}, chance_loss=LN10, early_stopping=False)
    assert found(findings) == {"overfitting": "warning"}
    f = by_id(findings, "overfitting")
    assert f.step == 150  # the epoch where validation was best
    assert "rose from 0.6 at epoch 15" in f.message and "kept falling" in f.message
    assert "accuracy 100% on training, 61% on validation" in f.message
    assert "early stopping" in f.advice.lower() and "weight decay" in f.advice
    assert f.evidence["val_loss_min_epoch"] == 15 and f.evidence["rise"] > 1


def test_overfitting_caught_by_early_stopping_is_info():
    train, val = u_shape(epochs=25)  # stopped 10 epochs after the best one
    findings = diagnose(curves(train, val), {"best_epoch": 15, "stopped_early": True}, chance_loss=LN10)
    assert found(findings) == {"overfitting": "info"}
    f = by_id(findings, "overfitting")
    assert "Early stopping kept epoch 15" in f.message and f.evidence["kept_epoch"] == 15


def test_overfitting_needs_validation_to_rise_by_ten_percent():
    def severity(level):
        # validation bottoms out at 1.0 (epoch 10) and stays at `level` after; training keeps falling
        val = [2.0 - 0.1 * e for e in range(11)] + [level] * 14
        train = decay(2.3, 0.01, 25, 0.8)
        return found(diagnose(curves(train, val), chance_loss=1.0, early_stopping=False)).get("overfitting")

    assert severity(1.0 + 0.9 * rules.VAL_RISE_RELATIVE) != "warning"
    assert severity(1.0 + 1.1 * rules.VAL_RISE_RELATIVE) == "warning"


def test_a_small_validation_loss_rising_by_noise_is_not_overfitting():
    # 0.10 -> 0.14 is +40%, but only 0.04 against a chance loss of 2.3 (the floor is 0.05 x 2.3)
    val = [0.5 - 0.04 * e for e in range(11)] + [0.14] * 14
    train = decay(2.3, 0.001, 25, 0.7)
    summary = {"train_loss": 0.001, "val_loss": 0.14}
    assert "overfitting" not in found(diagnose(curves(train, val), summary, chance_loss=LN10, early_stopping=False))


def test_validation_rising_while_training_does_not_fall_is_not_overfitting():
    val = [2.0 - 0.1 * e for e in range(11)] + [1.5] * 14
    train = [2.0 - 0.1 * e for e in range(11)] + [1.0] * 14  # flat from the validation minimum on
    findings = diagnose(curves(train, val), chance_loss=LN10, early_stopping=False)
    assert found(findings).get("overfitting") == "info"  # the gap (0.5) is there; the overfitting story is not
    assert "rose" not in by_id(findings, "overfitting").message


def test_a_large_train_validation_gap_alone_is_info():
    def gap_finding(gap):
        train, val = healthy()
        summary = {"train_loss": 0.25, "val_loss": 0.25 + gap * LN10, "stopped_early": True, "best_epoch": 35}
        return found(diagnose(curves(train, val), summary, chance_loss=LN10)).get("overfitting")

    assert gap_finding(0.9 * rules.GAP_LARGE) is None
    assert gap_finding(1.1 * rules.GAP_LARGE) == "info"
    train, val = healthy()
    f = diagnose(curves(train, val), {"train_loss": 0.25, "val_loss": 0.9}, chance_loss=LN10)[0]
    assert "not clearly rising" in f.message and "training loss 0.25 against validation loss 0.9" in f.message


# --------------------------------------------------------------------------- underfitting


def plateau(train_level=1.6, val_level=1.68, epochs=40):
    train = wiggle(decay(2.3, train_level, epochs, 0.6), 0.003)
    val = wiggle(decay(2.3, val_level, epochs, 0.6), 0.004)
    return train, val


def test_underfitting_is_info_for_a_converged_poor_model():
    train, val = plateau()
    summary = {"train_loss": 1.59, "val_loss": 1.68, "train_acc": 0.37, "val_acc": 0.30, "stopped_early": True}
    findings = diagnose(curves(train, val), summary, chance_loss=LN10, epochs_planned=100)
    assert found(findings) == {"underfitting": "info"}
    f = findings[0]
    assert "69% of the chance loss 2.3" in f.message and "accuracy 37% on training, 30% on validation" in f.message
    assert "capacity" in f.advice


@pytest.mark.parametrize("train_fraction, close_gap, fires", [
    (0.9 * rules.POOR, 0.0, False),   # fits well enough
    (1.1 * rules.POOR, 0.0, True),
    (0.7, 0.9 * rules.CLOSE, True),
    (0.7, 1.1 * rules.CLOSE, False),  # validation well above training: not "close"
    (1.0, 0.0, False),                # learned nothing at all: no capacity explains that
])
def test_underfitting_thresholds(train_fraction, close_gap, fires):
    kept_train = train_fraction * LN10
    train, val = plateau(kept_train, kept_train + close_gap * LN10)
    summary = {"train_loss": kept_train, "val_loss": kept_train + close_gap * LN10}
    assert ("underfitting" in found(diagnose(curves(train, val), summary, chance_loss=LN10))) is fires


def test_a_poor_model_still_improving_is_not_underfitting():
    loss = [2.0 - 0.01 * e for e in range(40)]
    findings = diagnose(curves(loss, [v + 0.02 for v in loss]), {}, chance_loss=LN10, epochs_planned=40)
    assert "underfitting" not in found(findings) and "not_converged" in found(findings)


# --------------------------------------------------------------------------- lr_too_high


def test_a_diverged_run_blames_the_learning_rate():
    history = curves([2.3, 2.1, 40.0], [2.3, 2.2, 9.0], lr=1.0)
    for summary in ({"stop_reason": "loss_exploded: The training loss reached 214.6 at step 36", "steps": 36},
                    {"diverged": True, "steps": 36}):
        findings = diagnose(history, summary, chance_loss=LN10)
        assert found(findings) == {"lr_too_high": "warning"}
        assert findings[0].step == 36 and "lr 1" in findings[0].message
    # no explosion guard: the loss went NaN (null in metrics.jsonl)
    findings = diagnose(curves([2.3, 1.9, None, None], [2.2, 1.9, None, None]), chance_loss=LN10)
    assert found(findings) == {"lr_too_high": "warning"}
    assert "NaN or infinite from epoch 3" in findings[0].message


def test_a_training_loss_that_goes_up_and_stays_up():
    def fires(rise, chance=1.0):
        train = [1.0 - 0.05 * e for e in range(11)] + [0.5 * (1 + rise)] * 10  # lowest 0.5 at epoch 11
        return "lr_too_high" in found(diagnose(curves(train, train), chance_loss=chance))

    assert not fires(0.9 * rules.TRAIN_RISE_RELATIVE)
    assert fires(1.1 * rules.TRAIN_RISE_RELATIVE)
    assert not fires(0.6, chance=10.0)  # +60%, but only 0.03 of the reference: noise at this scale


def test_one_spike_at_the_end_is_not_a_rise():
    train = decay(2.3, 0.5, 30) + [1.5]
    assert "lr_too_high" not in found(diagnose(curves(train, train), chance_loss=LN10))


def test_a_bouncing_loss_at_a_constant_lr():
    # after a fast fall it jumps +-0.07 (0.06 x ln 10) around 1.1 every epoch; never 20% above its low
    train = decay(2.3, 1.1, 10) + wiggle([1.1] * 30, 0.07)
    findings = diagnose(curves(train, train), chance_loss=LN10)
    assert found(findings) == {"lr_too_high": "warning"}
    assert "bounces" in findings[0].message
    # the same bounce under a cyclic schedule is the schedule's doing
    cyclic = [0.1 if e % 2 else 1.0 for e in range(40)]
    assert "lr_too_high" not in found(diagnose(curves(train, train, lr=cyclic), chance_loss=LN10))
    # half the bounce is within the noise of a running mean
    calm = decay(2.3, 1.1, 10) + wiggle([1.1] * 30, 0.02)
    assert "lr_too_high" not in found(diagnose(curves(calm, calm), chance_loss=LN10))


@pytest.mark.parametrize("best_fraction, fires", [
    (1.002, True),    # a dead MLP (SGD at lr 1) sat here
    (1.04, True),
    (0.98, False),    # learned a little: underfitting at most
    (1.10, False),    # far above chance: has not got anywhere yet (the low-lr shape)
])
def test_a_network_stuck_at_the_chance_loss(best_fraction, fires):
    level = best_fraction * LN10
    train = [3.0, 2.5] + wiggle([level + 0.005] * 20, 0.003)
    summary = {"train_loss": level, "val_loss": level, "stopped_early": True}
    findings = diagnose(curves(train, train), summary, chance_loss=LN10, initial_loss=2.9,
                        update_ratios={"hidden.0": 0.0, "hidden.1": 0.0, "head": 0.0})
    assert ("lr_too_high" in found(findings)) is fires
    if fires:
        message = findings[0].message
        assert "learned nothing" in message and "dead" in message
        assert "first epoch averaged 3, above the initial loss 2.9" in message


def test_update_ratios_far_above_1e_3_mean_the_lr_is_too_high():
    train, val = healthy()
    high = {"fc1": 0.3, "fc2": 0.2, "head": 0.01}  # typical layer: 0.2
    findings = diagnose(curves(train, val), chance_loss=LN10, update_ratios=high)
    assert found(findings) == {"lr_too_high": "warning"}
    assert findings[0].evidence["update_ratio_typical"] == 0.2
    fine = {"fc1": 0.3, "fc2": 0.05, "head": 0.01}  # one odd layer is the monitors' business
    assert diagnose(curves(train, val), chance_loss=LN10, update_ratios=fine) == []


# --------------------------------------------------------------------------- lr_too_low


def test_a_slow_straight_descent_from_chance_is_lr_too_low():
    loss = [3.2 - 0.01 * e for e in range(50)]  # SGD at lr 1e-5: 3.2 -> 2.7, ln 10 = 2.3
    findings = diagnose(curves(loss, loss, lr=1e-5), {"stopped_early": False}, chance_loss=LN10, epochs_planned=50)
    assert found(findings) == {"lr_too_low": "warning", "not_converged": "warning"}
    f = by_id(findings, "lr_too_low")
    assert "lr 1e-05" in f.message and "still falling" in f.message and "Raise the learning rate" in f.advice
    # the same shape cut at 8 epochs is too short to call the lr slow: only unfinished
    short = diagnose(curves(loss[:8], loss[:8]), {}, chance_loss=LN10, epochs_planned=8)
    assert found(short) == {"not_converged": "warning"}


def test_small_update_ratios_while_still_falling():
    loss = [1.3 - 0.005 * e for e in range(40)]  # well below chance, still creeping down
    history = curves(loss, loss)

    def ids(ratio):
        return found(diagnose(history, {}, chance_loss=LN10, epochs_planned=40,
                              update_ratios={"fc1": ratio, "fc2": ratio, "head": 10 * ratio}))

    assert ids(0.9 * rules.RATIO_LOW_FALLING) == {"lr_too_low": "warning", "not_converged": "warning"}
    assert ids(1.1 * rules.RATIO_LOW_FALLING) == {"not_converged": "warning"}


def test_tiny_update_ratios_mean_a_low_lr_unless_the_net_has_fitted_or_is_dead():
    train, val = plateau(1.2, 1.25)  # levelled off at half the chance loss
    ratios = {"fc1": 5e-6, "fc2": 3e-6, "head": 2e-5}
    assert "lr_too_low" in found(diagnose(curves(train, val), chance_loss=LN10, update_ratios=ratios))
    zeros = dict.fromkeys(ratios, 0.0)  # no gradient at all: dead units, not a small lr
    assert "lr_too_low" not in found(diagnose(curves(train, val), chance_loss=LN10, update_ratios=zeros))
    fitted = decay(2.3, 0.001, 40)  # memorised: tiny steps are what convergence looks like
    assert found(diagnose(curves(fitted, fitted), chance_loss=LN10, epochs_planned=40, update_ratios=ratios)) == {}


# --------------------------------------------------------------------------- references and tasks


def test_without_a_chance_loss_the_initial_loss_is_the_scale():
    train, val = plateau(1.9, 1.95)
    summary = {"train_loss": 1.9, "val_loss": 1.95}
    findings = diagnose(curves(train, val), summary, initial_loss=3.0)
    assert found(findings) == {"underfitting": "info"} and "the initial loss 3" in findings[0].message
    assert found(diagnose(curves(train, val), summary)) == {"underfitting": "info"}  # first epoch's loss


def test_regression_speaks_of_the_mean_and_quotes_no_accuracy():
    train, val = plateau(0.7, 0.72)
    findings = diagnose(curves(train, val), {"train_loss": 0.7, "val_loss": 0.72}, task="regression", chance_loss=1.0)
    assert found(findings) == {"underfitting": "info"}
    assert "predicting the mean" in findings[0].message and "accuracy" not in findings[0].message


# --------------------------------------------------------------------------- real runs


def train_spec(tmp_path, name, path=None, overrides=()):
    spec = config.load(path, ["train.device=cpu", "checks.preflight=false", *overrides])
    return run(spec, tmp_path / name, quiet=True, report=False).path


def test_examples_get_no_warning(tmp_path):
    """The fast examples, trained as written: logistic regression on MNIST-1D is healthy (its
    underfitting is info) and the spirals MLP gets nothing. (tests/test_examples.py trains
    every example for one epoch only.)"""
    logreg = diagnose_run(train_spec(tmp_path, "logreg", EXAMPLES / "mnist1d-logreg.yaml"))
    assert found(logreg) == {"underfitting": "info"}
    assert diagnose_run(train_spec(tmp_path, "spirals", EXAMPLES / "spirals-mlp.yaml")) == []


def test_huge_learning_rates_are_lr_too_high(tmp_path):
    exploded = train_spec(tmp_path, "lr10", EXAMPLES / "spirals-mlp.yaml", ["optimizer.lr=10", "train.epochs=5"])
    assert found(diagnose_run(exploded), "warning") == {"lr_too_high": "warning"}
    dead = train_spec(tmp_path, "lr3", None, ["optimizer.lr=3", "train.epochs=8", "train.early_stopping.patience=null"])
    findings = diagnose_run(dead)
    assert found(findings, "warning") == {"lr_too_high": "warning"}
    assert "learned nothing" in findings[0].message


def test_a_tiny_learning_rate_is_lr_too_low(tmp_path):
    folder = train_spec(tmp_path, "lr1e-5", None, ["optimizer.lr=1e-5", "train.epochs=12", "data.train_size=1000"])
    assert found(diagnose_run(folder)) == {"lr_too_low": "warning", "not_converged": "warning"}


def test_a_big_net_on_200_examples_overfits(tmp_path):
    big = ["data.train_size=200", "model.hidden=[512,512]", "train.epochs=40"]
    kept_last = train_spec(tmp_path, "big", None, [*big, "train.early_stopping.patience=null"])
    findings = diagnose_run(kept_last)
    assert found(findings) == {"overfitting": "warning"}
    assert findings[0].step is not None
    stopped = train_spec(tmp_path, "big-es", None, big)
    findings = diagnose_run(stopped)
    assert found(findings) == {"overfitting": "info"}
    best = json.loads((stopped / "summary.json").read_text())["best_epoch"]
    assert f"Early stopping kept epoch {best}" in findings[0].message


def test_a_run_cut_short_is_not_converged(tmp_path):
    folder = train_spec(tmp_path, "short", EXAMPLES / "spirals-mlp.yaml", ["train.epochs=10"])
    assert found(diagnose_run(folder)) == {"not_converged": "warning"}


def test_diagnose_run_reads_the_monitors(tmp_path):
    folder = train_spec(tmp_path, "run", EXAMPLES / "spirals-mlp.yaml", ["train.epochs=10"])
    records = [{"step": 1 + 10 * i, "loss": 1.1, "layers": {"hidden.0.0": {"update_ratio": 2e-5},
                                                            "head": {"update_ratio": 5e-5}}} for i in range(4)]
    (folder / "monitors.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    findings = diagnose_run(folder)
    assert found(findings) == {"lr_too_low": "warning", "not_converged": "warning"}
    assert by_id(findings, "lr_too_low").evidence["update_ratio_typical"] == pytest.approx(3.5e-5)
    with pytest.raises(BabysitError, match="no metrics.jsonl"):
        diagnose_run(tmp_path / "nowhere")


def test_a_plateau_still_drifting_down_is_info_and_the_same_run_cut_halfway_a_warning():
    import math as _math

    def history(epochs):  # fast fall, then a slow drift of 2-3% over the last quarter
        return [{"epoch": e, "step": 10 * e, "lr": 1e-3, "train_loss": 0.18 + 2 * _math.exp(-e / 4) - 3e-4 * e,
                 "val_loss": 0.2 + 2 * _math.exp(-e / 4) - 3e-4 * e + 1e-4 * (-1) ** e} for e in range(1, 61)]

    ended = {f.id: f for f in diagnose(history(60), chance_loss=2.3, epochs_planned=60, early_stopping=False)}
    assert ended["not_converged"].severity == "info", ended["not_converged"].message
    assert ended["not_converged"].evidence["pace"] < 0.1
    cut = {f.id: f for f in diagnose(history(60)[:12], chance_loss=2.3, epochs_planned=12, early_stopping=False)}
    assert cut["not_converged"].severity == "warning", cut["not_converged"].message
