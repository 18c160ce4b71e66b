"""Findings: the one shape every check reports in, and the fixed vocabulary of ids.

A finding is ``{id, severity, message, advice, evidence, layer?, step?}`` (DESIGN.md,
"Findings"). ``id`` is one of :data:`FINDINGS`; ``severity`` is ``info``, ``warning`` or
``error``; ``message`` says in plain words what was seen, with the numbers; ``advice``
says what to try; ``evidence`` holds the numbers themselves (JSON-serialisable);
``layer`` names the module (``model.named_modules()`` name) and ``step`` the training
step, where the finding has one.

Example
-------
>>> f = Finding("dead_relu", "warning", "62% of units never fire.", "Lower the lr.",
...             {"dead_fraction": 0.62}, layer="hidden.0")
>>> f.to_dict()["layer"], FINDINGS[f.id]
('hidden.0', 'Dead ReLU units')
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from babysit.rundir import jsonable, write_json

# id -> short title. Grouped as DESIGN.md groups them: before / while / after training.
FINDINGS: dict[str, str] = {
    # before training (preflight)
    "initial_loss_off": "Initial loss off",
    "gradient_check_failed": "Gradient check failed",
    "cannot_overfit_tiny_subset": "Cannot overfit a tiny subset",
    "inputs_not_normalized": "Inputs not normalized",
    "symmetric_init": "Symmetric initialization",
    "batch_mixing": "Examples mix across the batch",
    "split_leakage": "Examples shared between splits",
    "conflicting_duplicates": "Duplicate examples with different labels",
    "class_imbalance": "Classes far out of balance",
    # while training (monitors)
    "loss_exploded": "Loss exploded",
    "nonfinite_loss": "Non-finite loss",
    "dead_relu": "Dead ReLU units",
    "dormant_units": "Dormant units",
    "saturated_activations": "Saturated activations",
    "activation_collapse": "Activations collapse",
    "vanishing_gradients": "Vanishing gradients",
    "exploding_gradients": "Exploding gradients",
    "update_ratio_high": "Update/weight ratio too high",
    "update_ratio_low": "Update/weight ratio too low",
    "gradients_accumulate": "Gradients accumulate across steps",
    "loss_at_chance": "Loss stuck at chance",
    "loss_spike": "Loss spike",
    "fp16_overflow": "fp16 overflow",
    "input_bound": "Training waits for its data",
    # opt-in training dynamics (checks: noise_scale, sharpness_every, transformer)
    "batch_too_small": "Batch far below the critical batch size",
    "batch_too_large": "Batch far above the critical batch size",
    "edge_of_stability": "At the edge of stability",
    "lr_beyond_stability": "Learning rate beyond the stability limit",
    "attention_entropy_collapse": "Attention entropy collapse",
    "attention_logit_growth": "Attention or output logits grow without bound",
    # after training (diagnosis)
    "overfitting": "Overfitting",
    "underfitting": "Underfitting",
    "lr_too_high": "Learning rate too high",
    "lr_too_low": "Learning rate too low",
    "not_converged": "Not converged",
    "weight_decay_ineffective": "Weight decay too weak to act",
    "weight_decay_too_strong": "Weight decay forgets within an epoch",
    # the held-out splits against the training split (babysit.checks.heldout)
    "heldout_out_of_range": "Held-out inputs far outside the training range",
    "test_val_gap": "Test loss far above validation",
    # the model's answers (babysit.checks.answers) and the labels (checks.label_noise)
    "overconfident": "Overconfident probabilities",
    "class_never_predicted": "A class is never predicted",
    "weak_class": "A class far below the others",
    "label_noise": "Likely mislabeled examples",
    # GAN (babysit.families.gan): the adversarial game itself, read from its curves
    "discriminator_wins": "Discriminator wins outright",
    "mode_collapse": "Mode collapse",
}

# the preflight checks of the model, in the order preflight runs them (checks/preflight.py)
MODEL_PREFLIGHT_IDS: tuple[str, ...] = ("inputs_not_normalized", "symmetric_init", "initial_loss_off", "batch_mixing",
                                        "gradient_check_failed", "cannot_overfit_tiny_subset")
# the preflight checks of the data (checks/data_checks.py), which a family's preflight hook adds
DATA_PREFLIGHT_IDS: tuple[str, ...] = ("split_leakage", "conflicting_duplicates", "class_imbalance")
# every finding made before training: what a resumed run keeps from its findings.json
PREFLIGHT_IDS: tuple[str, ...] = MODEL_PREFLIGHT_IDS + DATA_PREFLIGHT_IDS
SEVERITIES = ("info", "warning", "error")
_RANK = {name: rank for rank, name in enumerate(SEVERITIES)}


@dataclass
class Finding:
    """One thing a check found; see the module docstring for the fields."""

    id: str
    severity: str
    message: str
    advice: str
    evidence: dict[str, Any] = field(default_factory=dict)
    layer: str | None = None
    step: int | None = None

    def __post_init__(self) -> None:
        if self.id not in FINDINGS:
            raise ValueError(f"finding id: must be one of {', '.join(FINDINGS)}; got {self.id!r}")
        if self.severity not in _RANK:
            raise ValueError(f"finding severity: must be one of {', '.join(SEVERITIES)}; got {self.severity!r}")

    @property
    def title(self) -> str:
        return FINDINGS[self.id]

    def to_dict(self) -> dict[str, Any]:
        """The finding as plain JSON types; ``layer`` / ``step`` left out when they are None.

        Example
        -------
        >>> Finding("symmetric_init", "error", "m", "a", {"layer_units": 4}).to_dict()["evidence"]
        {'layer_units': 4}
        """
        out = asdict(self)
        out["evidence"] = jsonable(self.evidence)
        return {key: value for key, value in out.items() if value is not None}


def sort_findings(findings: list[Finding]) -> list[Finding]:
    """Most severe first (error, warning, info); the order within a severity is kept."""
    return sorted(findings, key=lambda f: -_RANK[f.severity])


# Findings that would give opposite advice, or that are symptoms of another. A layer whose
# weights do not move because its units are dead, or a run that diverged, is not helped by a
# larger learning rate; gradients that fade through dead units are not a depth problem. The
# cause keeps its finding and advice; each consequence becomes info that names the cause.
# cause -> the findings it explains (the first cause present wins)
# a class the model never predicts, or one far below the others, follows from a net that has not
# learnt the task yet (stopped early, underfit, at chance, diverged, dead) or from a training set
# that barely shows the class: the per-class findings then name that cause rather than a new one
_PER_CLASS = ("class_never_predicted", "weak_class")
_EXPLAINS: dict[str, tuple[str, ...]] = {
    "dead_relu": ("update_ratio_low", "lr_too_low", "vanishing_gradients", "activation_collapse", *_PER_CLASS),
    "gradients_accumulate": ("update_ratio_low", "lr_too_low", "exploding_gradients", "update_ratio_high"),
    "nonfinite_loss": ("update_ratio_low", "lr_too_low", *_PER_CLASS),
    "loss_exploded": ("update_ratio_low", "lr_too_low", *_PER_CLASS),
    "lr_too_high": ("update_ratio_low", "lr_too_low"),
    "update_ratio_high": ("update_ratio_low", "lr_too_low"),
    "class_imbalance": _PER_CLASS,
    "loss_at_chance": _PER_CLASS,
    "underfitting": _PER_CLASS,
    "not_converged": _PER_CLASS,
    "lr_too_low": _PER_CLASS,
}
_RAISE_THE_LR = ("update_ratio_low", "lr_too_low")


# A loop of the user's own (babysit.watch, the Lightning callback) has no spec: advice that names
# a spec key there names what to change in the code instead. Each phrase appears word for word in
# some rule's advice (tests/test_run_watch.py checks that none is stale, and that the advice an own
# loop gets names no spec key).
_LR_FIND = "babysit.tune.lr_finder.lr_find(model, loss_fn, make_optimizer, x, y, batch_size) suggests one"
OWN_LOOP_WORDING: tuple[tuple[str, str], ...] = (
    ("`babysit lr-find` suggests one", _LR_FIND),
    ("babysit lr-find suggests one", _LR_FIND),
    ("(schedule.warmup_steps)", "(a warmup schedule, e.g. torch.optim.lr_scheduler.LinearLR)"),
    ("(optimizer.grad_clip)", "(torch.nn.utils.clip_grad_norm_ between backward and step)"),
    ("raise train.epochs, e.g. 2x; early stopping ends the run when validation stops improving",
     "e.g. 2x the epochs, and keep the weights of the epoch with the lowest validation loss"),
    ("(optimizer.weight_decay)", "(the optimizer's weight_decay)"),
    ("(model.dropout)", "(nn.Dropout)"),
    ("Turn on early stopping (train.early_stopping.patience) to keep the best epoch's weights",
     "Keep the weights of the epoch with the lowest validation loss (early stopping)"),
    ("more or wider layers, model.hidden / model.channels", "more or wider layers"),
    ("(model.kind: resnet)", "(residual blocks)"),
    ("(data.preprocess: [standardize])", "(e.g. sklearn's StandardScaler, fitted on the training set)"),
    ("(model.init: kaiming for ReLU, xavier for tanh)",
     "(torch.nn.init.kaiming_normal_ for ReLU, xavier_normal_ for tanh)"),
    ("(model.init: kaiming or xavier instead of a fixed init_std)",
     "(torch.nn.init.kaiming_normal_ or xavier_normal_ instead of a fixed std)"),
    (" The last good checkpoint is kept.", ""),
    ("check bias_init (a negative bias", "check the biases' initial values (a negative bias"),
    ("leaky_relu / elu, which", "nn.LeakyReLU / nn.ELU, which"),
)


def own_loop_advice(findings: list[Finding]) -> list[Finding]:
    """The findings with their advice worded for a training loop of the user's own: the spec
    keys it names become what to change in the code (:data:`OWN_LOOP_WORDING`).

    Example
    -------
    >>> [f.advice for f in own_loop_advice([Finding("overfitting", "info", "", "add dropout (model.dropout)", {})])]
    ['add dropout (nn.Dropout)']
    """
    reworded = []
    for finding in findings:
        advice = finding.advice
        for spec_words, code_words in OWN_LOOP_WORDING:
            advice = advice.replace(spec_words, code_words)
        reworded.append(replace(finding, advice=advice))
    return reworded


def reconcile(findings: list[Finding]) -> list[Finding]:
    """The findings with the contradictions resolved: a finding that another explains (advice
    to raise the learning rate next to dead units, accumulating gradients, a diverged run or
    steps already too large; vanishing gradients behind dead units) becomes info that names
    its cause, and its evidence gets ``explained_by``. Order and the rest are unchanged.

    Example
    -------
    >>> dead = Finding("dead_relu", "warning", "90% dead", "Lower the lr, re-initialise", {})
    >>> low = Finding("update_ratio_low", "warning", "weights do not move", "Raise the learning rate", {})
    >>> [(f.id, f.severity, f.advice[:24]) for f in reconcile([dead, low])]
    [('dead_relu', 'warning', 'Lower the lr, re-initial'), ('update_ratio_low', 'info', 'Fix dead_relu first (see')]
    """
    loud = {f.id for f in findings if f.severity != "info"}
    explained: dict[str, str] = {}
    for cause, consequences in _EXPLAINS.items():
        if cause in loud and cause not in explained:
            for fid in consequences:
                explained.setdefault(fid, cause)
    out = []
    for f in findings:
        cause = explained.get(f.id)
        if cause is not None and f.severity != "info":
            lr = "; do not raise the learning rate" if f.id in _RAISE_THE_LR else ""
            f = replace(f, severity="info",
                        message=f"{f.message} This follows from {cause} ({FINDINGS[cause].lower()}).",
                        advice=f"Fix {cause} first (see its advice){lr}.",
                        evidence={**f.evidence, "explained_by": cause})
        out.append(f)
    return out


def write_findings(path: str | Path, findings: list[Finding]) -> None:
    """Write ``findings.json``: a JSON list of :meth:`Finding.to_dict`, most severe first.

    Example
    -------
    >>> import json, tempfile, os
    >>> path = os.path.join(tempfile.mkdtemp(), "findings.json")
    >>> write_findings(path, [Finding("overfitting", "warning", "m", "a", {})])
    >>> json.load(open(path))[0]["id"]
    'overfitting'
    """
    write_json(path, [f.to_dict() for f in sort_findings(findings)])  # atomic; NaN and inf as null


def finding_lines(findings: list[Finding]) -> list[str]:
    """The findings as terminal lines, most severe first, each with its advice.

    Example
    -------
    >>> finding_lines([Finding("overfitting", "warning", "train far better than val", "more data", {})])
    ['warning overfitting: train far better than val', '        advice: more data']
    """
    lines = []
    for f in sort_findings(findings):
        where = f" [{f.layer}]" if f.layer else ""
        lines.append(f"{f.severity} {f.id}{where}: {f.message}")
        if f.advice:
            lines.append(f"        advice: {f.advice}")
    return lines


def findings_markdown(findings: list[Finding]) -> str:
    """The findings as markdown (TensorBoard's Text tab): one bullet each, most severe first.

    Example
    -------
    >>> print(findings_markdown([Finding("dead_relu", "warning", "62% dead.", "Lower the lr.", {}, layer="fc.1")]))
    - **warning** `dead_relu` (fc.1): 62% dead. *Advice:* Lower the lr.
    >>> findings_markdown([])
    'No findings: nothing looked wrong.'
    """
    if not findings:
        return "No findings: nothing looked wrong."
    lines = []
    for f in sort_findings(findings):
        where = f" ({f.layer})" if f.layer else ""
        lines.append(f"- **{f.severity}** `{f.id}`{where}: {f.message} *Advice:* {f.advice}")
    return "\n".join(lines)


def findings_table(findings: list[Finding], title: str = "findings") -> Any:
    """A rich Table of the findings, most severe first: severity, id, layer, and the first
    sentence of the message and of the advice.

    Example
    -------
    >>> findings_table([Finding("overfitting", "warning", "m", "a", {})]).row_count
    1
    """
    from rich.markup import escape
    from rich.table import Table

    colour = {"error": "bold red", "warning": "yellow", "info": "cyan"}
    table = Table(title=title, show_lines=True, expand=False)
    table.add_column("severity")
    table.add_column("finding")
    table.add_column("layer")
    table.add_column("what was seen", overflow="fold", ratio=3)
    table.add_column("try", overflow="fold", ratio=2)
    for f in sort_findings(findings):
        table.add_row(f"[{colour[f.severity]}]{f.severity}[/]", f.id, f.layer or "",
                      escape(_first_sentence(f.message)), escape(_first_sentence(f.advice)))
    return table


def _first_sentence(text: str) -> str:
    """Up to the first full stop that ends a sentence (the table is a summary; findings.json
    has the whole text). Abbreviations such as 'e.g.' and a stop inside brackets do not end it.

    >>> _first_sentence("Train longer (raise it, e.g. 2x). Or not.")
    'Train longer (raise it, e.g. 2x).'
    """
    depth = 0
    for i, char in enumerate(text):
        depth += (char == "(") - (char == ")")
        if char == "." and depth <= 0 and text[i + 1:i + 2] in (" ", "") and i + 1 < len(text):
            if not text[:i + 1].endswith(("e.g.", "i.e.", "vs.", "etc.", "cf.")):
                return text[:i + 1]
    return text


__all__ = ["DATA_PREFLIGHT_IDS", "FINDINGS", "MODEL_PREFLIGHT_IDS", "PREFLIGHT_IDS", "SEVERITIES", "Finding",
           "OWN_LOOP_WORDING", "finding_lines", "findings_markdown", "findings_table", "own_loop_advice", "reconcile", "sort_findings", "write_findings"]
