"""The standard family: one network, one loss, the standard update (mlp, cnn, resnet and the
recurrent kinds on real-valued sequences).

Everything here is also the default the other one-network families (autoencoder, language,
perceptron) specialise: they subclass :class:`StandardFamily` and change a hook or two.

Example
-------
>>> from babysit.config import Experiment
>>> STANDARD.claims(Experiment()), STANDARD.early_stopping
(True, True)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from babysit import nets
from babysit.checks.answers import CALIBRATION_FILE, answer_findings, answers_summary
from babysit.checks.data_checks import data_findings, write_leakage
from babysit.checks.decay import weight_decay_timescale
from babysit.checks.diagnose import diagnose_run
from babysit.checks.findings import Finding, sort_findings
from babysit.checks.heldout import heldout_range, val_test_gap
from babysit.checks.label_noise import label_noise_findings
from babysit.checks.monitors import monitor_findings
from babysit.checks.preflight import preflight
from babysit.config import RECURRENT_KINDS, Experiment
from babysit.data import Split, Splits
from babysit.errors import BabysitError
from babysit.families.dynamics import dynamics_callbacks, dynamics_findings
from babysit.families.protocol import RunContext
from babysit.optim import losses, optimizers, schedules
from babysit.rundir import read_json, read_jsonl, write_json
from babysit.train.loop import Callback, Step, Trainer, evaluate

TOKEN_KINDS = ("gpt", *RECURRENT_KINDS)  # kinds that read token ids (recurrent ones with model.embedding)
PREFLIGHT_EXAMPLES = 512
# the update-ratio and lr rules are first-order rules of thumb (CS231n's 1e-3 for SGD-like steps)
FIRST_ORDER_RULES = ("update_ratio_high", "update_ratio_low", "lr_too_high", "lr_too_low")


def per_token(splits: Splits) -> bool:
    """Class ids per position, (N, T): the loss applies at every position (next-token prediction)."""
    return splits.task == "classification" and splits.train.y.dim() > 1


def refuse_token_ids(spec: Experiment, splits: Splits) -> None:
    """Token-id data (``data.source: text``) is refused by the kinds that take real-valued inputs."""
    kind = spec.model.kind
    if not torch.is_floating_point(splits.train.x) and kind not in TOKEN_KINDS:
        raise BabysitError(f"model.kind: {kind} takes real-valued inputs, but data.source: {spec.data.source} "
                           f"gives token ids; use model.kind: gpt (or rnn / gru / lstm with model.embedding)")


def preflight_inputs(spec: Experiment, splits: Splits, examples: int = PREFLIGHT_EXAMPLES) -> dict[str, Any]:
    """The keyword arguments :func:`babysit.checks.preflight.preflight` needs for a spec."""
    return {
        "data": (splits.train.x[:examples], splits.train.y[:examples]),
        "task": splits.task,
        "num_classes": splits.num_classes,
        "loss_name": spec.loss,
        "seed": spec.seed,
    }


def class_weights(spec: Experiment, splits: Splits) -> torch.Tensor | None:
    """``loss_weights: balanced``: N / (C n_c) per class from the training targets (on their device);
    None for ``none``. Refused in one line where there are no classes or the loss takes no weights."""
    if spec.loss_weights == "none":
        return None
    losses.check_loss_weights(spec.loss, splits.task, spec.loss_weights)
    assert splits.num_classes is not None
    return losses.balanced_class_weights(splits.train.y, splits.num_classes)


def to_data_units(splits: Splits) -> Any:
    """``tensor -> tensor`` undoing the data's preprocessing (to draw examples in pixels)."""
    pre = splits.preprocessor
    return pre.inverse_transform if pre is not None and pre.fitted is not None else (lambda t: t)


def shown_split(splits: Splits) -> Split:
    """The split whose first examples a report shows: test, else val, else train."""
    return next(s for s in (splits.test, splits.val, splits.train) if s is not None and len(s))


def split_metrics(run: RunContext, trainer: Trainer) -> dict[str, Any]:
    """Loss (and accuracy) of the final model on every split, in eval mode."""
    splits = run.splits
    found: dict[str, Any] = {}
    for split_name in ("train", "val", "test"):
        split = getattr(splits, split_name)
        if split is None or not len(split):
            continue
        measured = evaluate(run.model, run.loss_fn, split, trainer.predict, autocast=trainer.autocast)
        found[f"{split_name}_loss"] = measured["loss"]
        if "acc" in measured:
            found[f"{split_name}_acc"] = measured["acc"]
    return found


def answer_metrics(run: RunContext, trainer: Trainer) -> dict[str, Any]:
    """A classifier's answers on the held-out splits (:mod:`babysit.checks.answers`): calibration
    when its loss gives probabilities (per token for a language model; calibration.json keeps the
    fitted temperature), and the per-class view when each example has one label (not over a vocabulary)."""
    splits = run.splits
    if splits.task != "classification" or splits.num_classes is None:
        return {}
    tokens = per_token(splits)
    fields, detail = answers_summary(run.model, {"val": splits.val, "test": splits.test}, loss_name=run.spec.loss,
                                     num_classes=splits.num_classes, train_targets=None if tokens else splits.train.y,
                                     class_names=splits.class_names, per_class=not tokens, autocast=trainer.autocast)
    if detail is not None:
        write_json(run.path / CALIBRATION_FILE, detail)
    return fields


def balanced_accuracies(answers: dict[str, Any]) -> dict[str, float]:
    """``val_balanced_acc`` / ``test_balanced_acc``: each held-out split's balanced accuracy, the mean
    recall over its classes (Brodersen et al. 2010, "The balanced accuracy and its posterior
    distribution"; :func:`babysit.checks.answers.balanced_accuracy`), read off the per-class view of
    :func:`answer_metrics`. The figure to judge a classifier of imbalanced classes by (class_imbalance).

    Example
    -------
    >>> balanced_accuracies({"per_class": {"test": {"mean_recall": 0.625}, "train_support": [3, 4]}})
    {'test_balanced_acc': 0.625}
    """
    views = answers.get("per_class")
    views = views if isinstance(views, dict) else {}
    return {f"{split}_balanced_acc": views[split]["mean_recall"] for split in ("val", "test")
            if isinstance(views.get(split), dict) and "mean_recall" in views[split]}


def kept_epochs(spec: Experiment, summary: dict[str, Any]) -> int | None:
    """The epochs the run's final weights trained for: its best epoch when early stopping put those
    weights back, else the epochs it ran (None when summary.json says neither). checks.label_noise
    trains each cross-validation fit this long.

    Example
    -------
    >>> from babysit.config import Experiment
    >>> kept_epochs(Experiment(), {"epochs": 40, "best_epoch": 12}), kept_epochs(Experiment(), {"epochs": 40})
    (12, 40)
    """
    best, ran = summary.get("best_epoch"), summary.get("epochs")
    if spec.train.early_stopping.patience is not None and isinstance(best, int) and best >= 1:
        return best
    return ran if isinstance(ran, int) and ran >= 1 else None


def _weight_decay(spec: Experiment, metrics: list[dict[str, Any]], steps_per_epoch: int) -> list[Finding]:
    """The weight-decay timescale findings, with the learning rates the run actually took (each
    epoch's logged lr over that epoch's steps)."""
    lr_sum, steps, previous = 0.0, 0, 0
    for record in metrics:
        step, lr = record.get("step"), record.get("lr")
        if "epoch" in record and isinstance(step, int) and isinstance(lr, int | float) and step > previous:
            lr_sum += lr * (step - previous)
            steps, previous = step, step
    opt = spec.optimizer
    return weight_decay_timescale(opt.name, opt.lr, opt.weight_decay, opt.momentum, lr_sum=lr_sum, steps=steps,
                                  steps_per_epoch=steps_per_epoch)


class StandardFamily:
    """mlp, cnn, resnet, rnn, gru, lstm: the :class:`~babysit.families.protocol.Family` defaults."""

    name = "standard"
    result_keys: tuple[str, ...] = ()
    early_stopping = True
    single_network_refusal: str | None = None

    def claims(self, spec: Experiment) -> bool:
        return True  # the registry asks it last

    def validate(self, spec: Experiment) -> None:
        losses.check_z_loss(spec.loss, spec.loss_z)

    def adapt(self, spec: Experiment, splits: Splits) -> Splits:
        refuse_token_ids(spec, splits)
        return splits

    def build(self, spec: Experiment, splits: Splits) -> tuple[nn.Module, Any]:
        out_dim = losses.output_dim(spec.loss, splits.task, splits.num_classes, splits.target_dim)
        model = nets.build(spec.model, splits.input_shape, out_dim)
        loss_fn = losses.build_loss(spec.loss, splits.task, splits.num_classes, per_token=per_token(splits),
                                    class_weights=class_weights(spec, splits))
        if spec.loss_z:  # z-loss on the logits (PaLM); 0: the plain loss, unwrapped
            loss_fn = losses.ZLoss(loss_fn, spec.loss_z)
        return model, loss_fn

    def optimizer(self, spec: Experiment, model: nn.Module, steps_per_epoch: int) -> tuple[Any, Any]:
        optimizer = optimizers.build_optimizer(spec.optimizer, model)
        return optimizer, schedules.build_schedule(spec.schedule, optimizer, steps_per_epoch, spec.train.epochs)

    def train_step(self, spec: Experiment, model: nn.Module, optimizer: Any) -> Step | None:
        return None

    def callbacks(self, run: RunContext) -> list[Callback]:
        return dynamics_callbacks(run)

    def explosion_factor(self, spec: Experiment) -> float:
        return spec.checks.explosion_factor

    def preflight(self, spec: Experiment, model: nn.Module, loss_fn: Any, splits: Splits,
                  run_dir: Path | None = None) -> list[Finding]:
        data, leakage = data_findings(splits, loss_weights=spec.loss_weights)  # leakage, duplicates, balance
        if run_dir is not None and leakage is not None:
            write_leakage(run_dir, leakage, splits, display=to_data_units(splits))
        return sort_findings(preflight(model, loss_fn, **preflight_inputs(spec, splits)) + data)

    def findings(self, run: RunContext) -> list[Finding]:
        spec, splits = run.spec, run.splits
        found: list[Finding] = []
        if spec.checks.monitors:
            found += monitor_findings(read_jsonl(run.path / "monitors.jsonl"))
        chance = losses.chance_loss(spec.loss, splits.task, splits.num_classes, splits.train.y,
                                    balanced=spec.loss_weights == "balanced")
        found += diagnose_run(run.path, chance_loss=chance, task=splits.task)
        found += heldout_range(splits.train.x, {"val": splits.val.x if splits.val is not None else None,
                                                "test": splits.test.x if splits.test is not None else None})
        summary = read_json(run.path / "summary.json", {})
        found += val_test_gap(summary if isinstance(summary, dict) else {}, chance)
        found += _weight_decay(spec, read_jsonl(run.path / "metrics.jsonl"), run.steps_per_epoch)
        found += dynamics_findings(run)
        found += answer_findings(summary if isinstance(summary, dict) else {})
        if spec.checks.label_noise:  # K cross-validated fits of this family's network (babysit.checks.label_noise)
            found += label_noise_findings(spec, splits, run.path, family=self, display=to_data_units(splits),
                                          epochs=kept_epochs(spec, summary if isinstance(summary, dict) else {}))
        if spec.optimizer.name == "newton":
            # Newton sets its own step length and does not use the lr: the first-order rules do not apply
            found = [f for f in found if f.id not in FIRST_ORDER_RULES]
        return found

    def metrics(self, run: RunContext, trainer: Trainer) -> dict[str, Any]:
        answers = answer_metrics(run, trainer)
        return {**split_metrics(run, trainer), **balanced_accuracies(answers), **answers}

    def summary_extra(self, run: RunContext, summary: dict[str, Any]) -> dict[str, Any]:
        return {}

    def artifacts(self, run: RunContext) -> None:
        return None


STANDARD = StandardFamily()

__all__ = ["FIRST_ORDER_RULES", "STANDARD", "TOKEN_KINDS", "StandardFamily", "answer_metrics", "balanced_accuracies",
           "class_weights", "kept_epochs", "per_token", "preflight_inputs",
           "refuse_token_ids", "shown_split", "split_metrics", "to_data_units"]
