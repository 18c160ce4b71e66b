"""The HTML report of a run, and the page comparing runs.

``render(run_dir)`` reads what a run directory holds (config.yaml, metrics.jsonl,
summary.json, findings.json, monitors.jsonl, checkpoints/, landscape.json, figures/*.png),
and writes ``report.html`` beside them: one self-contained file that opens offline in any
browser. Every figure is a PNG embedded as base64; the only style is a small inline
``<style>``; there is no script, font or address of any kind, so nothing is fetched and
the page works with JavaScript off. All text from the run is escaped.

The page, top to bottom: links to the sections it has (and to no other); the verdict in one
line ("healthy", or the worst finding's title and message); the spec's essentials and the
final metrics; the data (split sizes, one example's shape, classes; a warning when the
validation split is tiny, :mod:`babysit.report.data_summary`); the findings, most severe
first, each with its title, message, advice and evidence figure; the loss and accuracy
curves and the learning rate per epoch; the per-layer monitors (update/weight ratio with the
healthy band around 1e-3, gradient norms with exact zeros drawn, dead and saturated
fractions, activation histograms at init and at the end); what the network makes (an
autoencoder's reconstructions, a GAN's samples over training, a language model's text); the
first layer's weights; the loss landscape when ``babysit landscape`` left one, its verdict
first (:mod:`babysit.report.landscape_summary`); the resolved spec, the keys that do not
apply to the model kind and data source folded away (:mod:`babysit.report.spec_keys`).

``compare(run_dirs, out)`` writes one page with the runs' curves overlaid, their final
metrics and findings side by side, and the spec keys that differ.

Example
-------
>>> import tempfile, pathlib
>>> run_dir = pathlib.Path(tempfile.mkdtemp())
>>> _ = (run_dir / "config.yaml").write_text("name: tiny\\n")
>>> _ = (run_dir / "metrics.jsonl").write_text('{"epoch": 1, "train_loss": 1.0, "val_loss": 1.2}\\n')
>>> path = render(run_dir)
>>> path.name, "<h1>tiny</h1>" in path.read_text()
('report.html', True)
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from babysit.checks.findings import FINDINGS
from babysit.checks.input_bound import INPUT_WAIT_FRACTION
from babysit.checks.precision import FP16_MAX
from babysit.config import validate
from babysit.errors import BabysitError
from babysit.families import Family, family_of
from babysit.families.standard import STANDARD
from babysit.report import figures
from babysit.report.data_summary import TINY_VAL_SPLIT, data_facts
from babysit.report.figures_answers import confusion_figure, reliability_figure
from babysit.report.figures_data_checks import leakage_figure
from babysit.report.figures_label_noise import label_issues_figure
from babysit.report.figures_noise_scale import noise_scale_figure
from babysit.report.figures_sharpness import sharpness_figure
from babysit.report.figures_transformer import transformer_figure
from babysit.report.landscape_summary import landscape_value, landscape_verdict
from babysit.report.page import data_uri, escape, figure, number, page, table, write_page
from babysit.report.spec_keys import applying_keys, split_spec
from babysit.rundir import RunFiles, read_json, read_jsonl, read_run, weights_file
from babysit.train.checkpoint import load_checkpoint
from babysit.train.ensemble import snapshot_line

MAX_LANDSCAPE_PNG = 2_000_000  # bytes; a bigger figure is named, not embedded (the page stays small)
MAX_LANDSCAPE_ROWS = 200  # rows of landscape.json's table; the verdict and the figures say the rest


# --------------------------------------------------------------------------- reading a run
# (the run directory itself is read by babysit.rundir.read_run; RunFiles and read_run are
# imported here for the callers that know them from this module)


def first_layer_weight(run_dir: str | Path) -> tuple[str, Any, str] | None:
    """The name, values (numpy) and checkpoint file of the first layer's weight in the run's
    best (else last) checkpoint: the first 2+-dimensional tensor whose name ends in 'weight', else the first
    2+-dimensional tensor. None when there is no readable checkpoint.

    Example
    -------
    >>> first_layer_weight("/nonexistent/run") is None
    True
    """
    for path in [p for p in (weights_file(run_dir), Path(run_dir) / "checkpoints" / "last.pt") if p is not None]:
        if not path.exists():
            continue
        try:
            state = load_checkpoint(path, map_location="cpu").get("model", {})
        except BabysitError:
            continue
        if not isinstance(state, dict):
            continue
        tensors = [(k, v) for k, v in state.items() if hasattr(v, "dim") and v.dim() >= 2 and v.is_floating_point()]
        chosen = next(((k, v) for k, v in tensors if k.endswith("weight")), tensors[0] if tensors else None)
        if chosen is not None:
            return chosen[0], chosen[1].detach().float().cpu().numpy(), path.name
    return None


# --------------------------------------------------------------------------- HTML pieces


def _metric(value: Any, key: str) -> str:
    if key.endswith("_acc") and isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
        return f"{value:.2%}"
    return number(value)


# --------------------------------------------------------------------------- the run report


_MODEL_ESSENTIALS = ("kind", "hidden", "channels", "kernel_size", "backbone", "bottleneck", "latent", "layers", "heads",
                     "embed", "embedding", "bidirectional", "basis", "activation", "norm", "init", "init_std",
                     "bias_init", "dropout", "residual")


def _spec_essentials(spec: dict[str, Any]) -> list[tuple[str, str]]:
    """(section, one-line description) for the header."""

    def pick(section: str, keys: Sequence[str]) -> str:
        values = spec.get(section) or {}
        if not isinstance(values, dict):
            return str(values)
        # defaults that change nothing (0, false, none) are left out: config.yaml below has everything
        return ", ".join(f"{k} {_short(values[k])}" for k in keys
                         if values.get(k) not in (None, [], "", "none", False, 0))

    def applying(section: str, keys: Sequence[str]) -> list[str]:  # spec_keys' tables: what this kind/source reads
        values = spec.get(section)
        keep = applying_keys(section, values) if isinstance(values, dict) else None
        return [k for k in keys if keep is None or k in keep]

    return [(label, text) for label, text in (
        ("data", pick("data", applying("data", ("source", "path", "train_size", "batch_size", "preprocess",
                                                "augment")))),
        ("model", pick("model", applying("model", _MODEL_ESSENTIALS))),
        ("loss", _short(spec.get("loss", ""))),
        ("optimizer", pick("optimizer", ("name", "lr", *(("momentum",) if _uses_momentum(spec) else ()),
                                         "weight_decay", "grad_clip"))),
        ("schedule", pick("schedule", ("name", "warmup_steps"))),
        ("regularization", pick("regularization", ("l1", "max_norm", "activity", "input_noise"))),
        ("train", pick("train", ("epochs", "precision", "compile"))),
        ("seed", _short(spec.get("seed", ""))),
    ) if text not in ("", "None")]


def _uses_momentum(spec: dict[str, Any]) -> bool:
    optimizer = spec.get("optimizer")
    return isinstance(optimizer, dict) and optimizer.get("name") in ("sgd", "momentum", "nesterov")  # optim.build_optimizer


def _short(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, list | dict):
        return json.dumps(value)
    return str(value)


def family_of_run(run: RunFiles) -> Family:
    """The family of the run's spec (the standard one when config.yaml is not a valid spec)."""
    try:
        return family_of(validate(run.spec))
    except BabysitError:
        return STANDARD


def _header(run: RunFiles) -> str:
    s = run.summary
    spec_rows = [(f"<th>{escape(k)}</th>", escape(v)) for k, v in _spec_essentials(run.spec)]
    spec_table = "<table><tbody>" + "".join(f"<tr>{k}<td>{v}</td></tr>" for k, v in spec_rows) + "</tbody></table>"
    splits = [split for split in ("train", "val", "test") if f"{split}_loss" in s]
    own = [k for k in family_of_run(run).result_keys if k in s]  # a family's own figures (a GAN's)
    has_acc = any(f"{split}_acc" in s for split in splits)  # a regression has none
    metrics = table(["split", "loss", *(["accuracy"] if has_acc else [])],
                     [[escape(split), number(s.get(f"{split}_loss")),
                       *([_metric(s.get(f"{split}_acc"), "_acc")] if has_acc else [])]
                      for split in splits]) if splits else (
        table(["last epoch", "value"], [[escape(k), number(s[k])] for k in own]) if own else
        '<p class="muted">No final metrics (summary.json is missing: the run did not finish).</p>')
    facts = []
    if "epochs" in s:
        facts.append(f"{number(s['epochs'])} epochs" + (f", {number(s['steps'])} steps" if "steps" in s else ""))
    if isinstance(s.get("wall_time_s"), int | float):
        facts.append(f"{s['wall_time_s']:.1f} s on {escape(s.get('device', '?'))}")
    if s.get("parameters") is not None:
        facts.append(f"{number(s['parameters'])} parameters")
    if s.get("best_epoch") is not None:
        facts.append(f"weights kept from epoch {number(s['best_epoch'])}")
    stop = f"<p>{escape(s['stop_reason'])}</p>" if s.get("stop_reason") else ""
    diverged = '<p class="severity error">The run diverged.</p>' if s.get("diverged") else ""
    if isinstance(s.get("snapshot_ensemble"), dict):  # train.snapshots
        stop += f"<p>{escape(snapshot_line(s['snapshot_ensemble']))}</p>"
    by = run.spec.get("recorded_by")
    measured = ("As the training loop logged them in its last epoch." if by is not None else
                "Measured on the kept weights after training.")
    return (f"<header><h1>{escape(run.name)}</h1>{verdict_line(run)}<p class=\"muted\">{escape(run.path)}</p>"
            f"<p>{' · '.join(facts)}</p>{stop}{diverged}</header>"
            f'<div class="grid"><section><h2 id="spec-summary">Experiment</h2>{spec_table}</section>'
            f'<section><h2 id="metrics">Final metrics</h2>{metrics}'
            f'<p class="muted">{escape(measured)}</p></section></div>')


_SEVERITY_RANK = {"error": 0, "warning": 1, "info": 2}
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z])")


def first_sentence(text: str) -> str:
    """The first sentence of a finding's message (up to a full stop before a capital letter).

    Example
    -------
    >>> first_sentence("The loss rose to 40 at step 15. Lower the learning rate.")
    'The loss rose to 40 at step 15.'
    """
    return _SENTENCE_END.split(text.strip(), maxsplit=1)[0]


def verdict_line(run: RunFiles) -> str:
    """The one line at the top of the page: "healthy" when the checks found no warning or
    error, else the worst finding's title and the first sentence of its message.

    Example
    -------
    >>> from pathlib import Path
    >>> bad = {"id": "loss_exploded", "severity": "error", "message": "The loss exploded. More here."}
    >>> run = RunFiles(Path("."), "", {}, [], [], {}, [bad, {"id": "overfitting", "severity": "warning"}])
    >>> verdict_line(run)
    '<p class="verdict error"><strong>Verdict: Loss exploded.</strong> The loss exploded. (1 more warning or error below.)</p>'
    """
    ranked = sorted((f for f in run.findings if f.get("severity") in ("error", "warning")),
                    key=lambda f: _SEVERITY_RANK[f["severity"]])
    if not ranked:
        if not run.findings and not (run.path / "findings.json").exists():
            return ('<p class="verdict unknown"><strong>Verdict: not checked.</strong> '
                    "There is no findings.json: the checks did not run.</p>")
        notes = sum(f.get("severity") == "info" for f in run.findings)
        more = f" ({notes} note{'s' if notes > 1 else ''} below.)" if notes else ""
        return (f'<p class="verdict healthy"><strong>Verdict: healthy.</strong> The checks found no warning '
                f"or error.{escape(more)}</p>")
    worst = ranked[0]
    title = FINDINGS.get(worst["id"], worst["id"])
    message = first_sentence(str(worst.get("message") or ""))
    others = len(ranked) - 1
    more = f" ({others} more warning{'s' if others > 1 else ''} or error{'s' if others > 1 else ''} below.)" if others else ""
    return (f'<p class="verdict {escape(worst["severity"])}"><strong>Verdict: {escape(title)}.</strong> '
            f"{escape(message)}{escape(more)}</p>")


def _shape(shape: tuple[int, ...]) -> str:
    return "×".join(str(n) for n in shape) + (f" ({math.prod(shape):,} values)" if len(shape) > 1 else "")


def _own_loop(recorded_by: Any) -> str:
    """How the report names a run babysit did not drive (config.yaml's ``recorded_by``)."""
    return {"watch": "A training loop of your own (babysit.watch)",
            "lightning": "A Lightning Trainer (babysit.lightning.Babysitter)"}.get(str(recorded_by),
                                                                                  "A training loop of your own")


def _data_section(run: RunFiles) -> str:
    """Rows per split, one example's shape, the classes; a warning for a tiny validation split."""
    by = run.spec.get("recorded_by")
    if by is not None and not isinstance(run.summary.get("data"), dict):  # babysit.watch, the Lightning callback
        return ('<section><h2 id="data">Data</h2><p class="muted">'
                f"{escape(_own_loop(by))}: its data is its own, and babysit did not load it.</p></section>")
    facts = data_facts(run.spec, run.summary)
    data = run.spec.get("data") if isinstance(run.spec.get("data"), dict) else {}

    def count(n: int | None) -> str:
        return "not recorded" if n is None else ("none" if n == 0 else f"{n:,}")

    regression = run.spec.get("loss") in ("mse", "mae")
    classes = (f"{facts.classes:,}" if facts.classes is not None else
               "none (a regression)" if regression else "not recorded")
    rows = [
        [escape("source"), escape(data.get("source", "mnist1d")) + (f" ({escape(data['path'])})" if data.get("path") else "")],
        [escape("rows"), "not recorded" if facts.train is None else " · ".join(
            f"{split} {count(n)}" for split, n in (("train", facts.train), ("val", facts.val), ("test", facts.test)))],
        [escape("features"), escape(_shape(facts.input_shape)) if facts.input_shape else "not recorded"],
        [escape("classes"), escape(classes)],
    ]
    where = {"summary.json": "From summary.json.",
             "computed from config.yaml": "Computed from config.yaml: summary.json does not record the split sizes, "
                                          "and this source's sizes follow from the spec alone.",
             }.get(facts.where, "Not recorded in the run directory: summary.json does not record the split sizes, "
                                "and the report does not re-read the data.")
    alert = ""
    if facts.tiny_val:
        alert = (f'<p class="alert"><strong>Tiny validation split:</strong> {facts.val:,} examples (under '
                 f"{TINY_VAL_SPLIT}). One example moves validation accuracy by {100 / facts.val:.1f} points, so the "
                 "validation curve, early stopping and the kept epoch follow noise; use more data or a larger "
                 "data.val_fraction.</p>")
    body = "".join(f"<tr><th>{key}</th><td>{value}</td></tr>" for key, value in rows)
    return (f'<section><h2 id="data">Data</h2>{alert}<table><tbody>{body}</tbody></table>'
            f'<p class="muted">{escape(where)}</p></section>')


# finding id -> (monitor statistic, axis label, log axis); the gradient pair reads its key from the evidence
_MONITOR_FIGURES: dict[str, tuple[str, str, bool]] = {
    "dead_relu": ("dead_fraction", "dead fraction", False),
    "dormant_units": ("dormant_fraction", "dormant fraction", False),
    "saturated_activations": ("saturated_fraction", "saturated fraction", False),
    "activation_collapse": ("act_std", "activation std", True),
    "vanishing_gradients": ("act_grad_rms", "gradient RMS", True),
    "exploding_gradients": ("act_grad_rms", "gradient RMS", True),
    "update_ratio_high": ("update_ratio", "||Δw|| / ||w||", True),
    "update_ratio_low": ("update_ratio", "||Δw|| / ||w||", True),
}
_DIAGNOSIS = ("overfitting", "underfitting", "lr_too_high", "lr_too_low", "not_converged")


def finding_figure(finding: dict[str, Any], run: RunFiles) -> Any:
    """The evidence figure of one finding (None where none makes sense, e.g. preflight):
    a monitor finding shows its statistic per layer over the steps; the explosion guard the
    sampled loss and the limit; a diagnosis the loss curves with its epoch marked."""
    fid, evidence = finding.get("id"), finding.get("evidence") or {}
    step = finding.get("step") if isinstance(finding.get("step"), int) else None
    if fid in _MONITOR_FIGURES and run.records:
        key, label, log = _MONITOR_FIGURES[fid]
        if fid in ("vanishing_gradients", "exploding_gradients"):
            key = evidence.get("measured_on") or key
        band = figures.HEALTHY_BAND if key == "update_ratio" else None
        return figures.layer_series(run.records, key, ylabel=label, log=log, band=band,
                                    line=figures.HEALTHY_UPDATE_RATIO if band else None,
                                    mark_step=step, highlight=finding.get("layer"),
                                    ylim=(-0.02, 1.02) if not log else None)
    if fid in ("loss_exploded", "nonfinite_loss"):
        initial, factor = evidence.get("initial_loss"), evidence.get("explosion_factor")
        limit = initial * factor if isinstance(initial, int | float) and isinstance(factor, int | float) else None
        loss = evidence.get("loss")
        if run.records:
            point = (step, loss) if step is not None and isinstance(loss, int | float) else None
            return figures.monitor_loss(run.records, limit=limit, mark_step=step, point=point)
        return figures.loss_curves(run.history)
    if fid in ("discriminator_wins", "mode_collapse"):
        return figures.gan_curves(run.history)
    if fid in ("split_leakage", "conflicting_duplicates"):
        return _leakage_figure(run)
    if fid == "label_noise":
        return _label_issues_figure(run)
    if fid in _DYNAMICS_FINDINGS:
        return _dynamics_figure(run, _DYNAMICS_FINDINGS[fid])
    if fid == "input_bound":
        return figures.input_wait_curve(run.history, bar=INPUT_WAIT_FRACTION)
    if fid == "fp16_overflow" and run.records:
        return figures.layer_series(run.records, "act_absmax", ylabel="max |activation|", log=True,
                                    line=FP16_MAX, highlight=finding.get("layer"))
    if fid in _DIAGNOSIS:
        epochs = [(k, v) for k, v in evidence.items() if k.endswith("_epoch") and isinstance(v, int)]
        if epochs:
            key, epoch = epochs[0]
            return figures.loss_curves(run.history, mark_epoch=epoch, mark_label=key.replace("_", " "))
        return figures.loss_curves(run.history)
    return None


# the opt-in checks' files (babysit.families.dynamics): file -> (figure, caption)
_DYNAMICS: dict[str, tuple[Any, str]] = {
    "noise_scale.jsonl": (
        noise_scale_figure,
        "Gradient noise scale B_noise (moving average) over training against the run's batch size; the green band "
        "(batch/10 to 10x batch) is where no batch-size finding fires, and the red segment is the later-half value "
        "the findings judged (McCandlish et al. 2018)."),
    "sharpness.jsonl": (
        sharpness_figure,
        "Sharpness λmax (λmax(P⁻¹H) for adaptive optimizers) at a fixed batch of training examples, against the "
        "optimizer's stability threshold (dashed, follows the lr schedule); the shaded band is the edge of stability "
        "(at least 0.9x the threshold; Cohen et al. 2021, 2022)."),
    "transformer.jsonl": (
        transformer_figure,
        "Per block over training: the sharpest head's attention entropy as a fraction of ln T (collapse bar 10%), "
        "the largest attention logit (saturation bar 50), the output logits' |log Z| (bar 20), and the residual "
        "stream's RMS."),
}
# finding id -> the file whose figure is its evidence
_DYNAMICS_FINDINGS = {"batch_too_small": "noise_scale.jsonl", "batch_too_large": "noise_scale.jsonl",
                      "edge_of_stability": "sharpness.jsonl", "lr_beyond_stability": "sharpness.jsonl",
                      "attention_entropy_collapse": "transformer.jsonl",
                      "attention_logit_growth": "transformer.jsonl"}


def _examples_figure(run: RunFiles, listing: str, key: str, examples: str, arrays: tuple[str, ...], draw: Any) -> Any:
    """A figure of examples a check listed: ``listing``'s ``key`` list (a JSON file of the run) and
    their inputs, the ``arrays`` of the ``examples`` .npz beside it; None when either is missing or
    damaged (a damaged file loses its figure, not the report)."""
    found = read_json(run.path / listing, {})
    shown = found.get(key) if isinstance(found, dict) else None
    if not isinstance(shown, list) or not shown or not (run.path / examples).is_file():
        return None
    try:
        with np.load(run.path / examples, allow_pickle=False) as stored:
            data = {name: stored[name] for name in arrays}
    except (OSError, KeyError, ValueError):
        return None
    return draw(shown, data)


def _leakage_figure(run: RunFiles) -> Any:
    """The closest duplicate pairs (leakage.json's ``shown``, their examples in leakage.npz)."""
    return _examples_figure(run, "leakage.json", "shown", "leakage.npz", ("a", "b"), leakage_figure)


def _label_issues_figure(run: RunFiles) -> Any:
    """The most suspect training labels (label_issues.json's ``suspects``, their inputs in label_issues.npz)."""
    return _examples_figure(run, "label_issues.json", "suspects", "label_issues.npz", ("x",), label_issues_figure)


def _answers_section(run: RunFiles) -> str:
    """The model's answers: the reliability diagram (calibration.json) and the per-class view (summary.json)."""
    calibration = read_json(run.path / "calibration.json", {})
    panels = [
        (reliability_figure(calibration) if isinstance(calibration, dict) else None,
         "Reliability diagram on the test split: accuracy per confidence bin against the diagonal a calibrated model "
         "follows, before and after dividing the logits by the temperature fitted on validation (Guo et al. 2017)."),
        (confusion_figure(run.summary),
         "Test confusion matrix (rows normalised, counts in the cells) and each class's recall on validation and "
         "test, with the mean recall and the weak_class bar."),
    ]
    body = "".join(figure(fig, caption) for fig, caption in panels if fig is not None)
    if not body:
        return ""
    return f'<section><h2 id="answers">Answers</h2><div class="grid">{body}</div></section>'


def _dynamics_figure(run: RunFiles, name: str) -> Any:
    records = [r for r in read_jsonl(run.path / name) if isinstance(r, dict)]
    return _DYNAMICS[name][0](records) if records else None


def _dynamics_section(run: RunFiles) -> str:
    """The opt-in checks' figures (checks.noise_scale, checks.sharpness_every, checks.transformer)."""
    shown = [(fig, _DYNAMICS[name][1]) for name in _DYNAMICS if (fig := _dynamics_figure(run, name)) is not None]
    if not shown:
        return ""
    body = "".join(figure(fig, caption) for fig, caption in shown)
    return f'<section><h2 id="dynamics">Training dynamics</h2><div class="grid">{body}</div></section>'


def _findings_section(run: RunFiles) -> str:
    if not run.findings:
        text = ("No findings: nothing looked wrong." if (run.path / "findings.json").exists()
                else "No findings.json: the checks did not run.")
        return f'<section><h2 id="findings">Findings</h2><p>{text}</p></section>'
    rank = {"error": 0, "warning": 1, "info": 2}
    ordered = sorted(run.findings, key=lambda f: rank.get(str(f.get("severity")), 3))
    counts = ", ".join(f"{sum(f.get('severity') == s for f in ordered)} {s}" for s in rank
                       if any(f.get("severity") == s for f in ordered))
    parts = [f'<section><h2 id="findings">Findings <span class="muted">({escape(counts)})</span></h2>']
    for f in ordered:
        severity = str(f.get("severity")) if str(f.get("severity")) in rank else "info"
        where = [f"layer {f['layer']}" if f.get("layer") else "", f"step {f['step']}" if f.get("step") is not None else ""]
        where_text = " · ".join(w for w in where if w)
        evidence = json.dumps(f.get("evidence") or {}, indent=1, default=str)
        if len(evidence) > 4000:
            evidence = evidence[:4000] + "\n..."
        caption = f"Evidence for {FINDINGS.get(f['id'], f['id'])}"
        parts.append(
            f'<article class="finding {severity}"><h3><span class="severity">{escape(severity)}</span> '
            f"{escape(FINDINGS.get(f['id'], f['id']))} <code class=\"muted\">{escape(f['id'])}</code></h3>"
            + (f'<p class="muted">{escape(where_text)}</p>' if where_text else "")
            + f"<p>{escape(f.get('message', ''))}</p><p><strong>Try:</strong> {escape(f.get('advice', ''))}</p>"
            + figure(finding_figure(f, run), caption)
            + f"<details><summary>evidence</summary><pre>{escape(evidence)}</pre></details></article>"
        )
    parts.append("</section>")
    return "".join(parts)


def _curves_section(run: RunFiles) -> str:
    if not run.history:
        return '<section><h2 id="curves">Learning curves</h2><p class="muted">No epochs logged.</p></section>'
    best = run.summary.get("best_epoch")
    if family_of_run(run).result_keys:  # a GAN: two adversarial losses, no validation
        return (f'<section><h2 id="curves">Learning curves</h2>'
                f"{figure(figures.gan_curves(run.history), 'Per epoch: the discriminator and generator losses, the discriminator probability of real on real and generated examples, and the diversity of generated examples (mean pairwise distance, over the data).')}"
                "</section>")
    curves = figures.loss_curves(run.history, mark_epoch=best if isinstance(best, int) else None,
                                 mark_label="kept weights")
    lrs = {r["lr"] for r in run.history if isinstance(r.get("lr"), int | float) and not isinstance(r.get("lr"), bool)}
    schedule = run.spec.get("schedule", {}).get("name") if isinstance(run.spec.get("schedule"), dict) else None
    lr_caption = ("Learning rate per epoch (metrics.jsonl's lr, at the end of each epoch"
                  + (f"; schedule {schedule}" if schedule else "") + ")"
                  + (f": {number(next(iter(lrs)))} throughout." if len(lrs) == 1 else "."))
    return (f'<section><h2 id="curves">Learning curves</h2>'
            f"{figure(curves, 'Loss and accuracy per epoch, training and validation (mean over each epoch).')}"
            f"{figure(figures.lr_curve(run.history), lr_caption)}</section>")


def _monitors_section(run: RunFiles) -> str:
    head = '<section><h2 id="layers">Layers</h2>'
    if not run.records:
        return head + '<p class="muted">No monitor samples (checks.monitors was off, or the run stopped first).</p></section>'
    every = run.spec.get("checks", {}).get("every") if isinstance(run.spec.get("checks"), dict) else None
    panels = [
        (figures.layer_series(run.records, "update_ratio", ylabel="||Δw|| / ||w||", log=True,
                              band=figures.HEALTHY_BAND, line=figures.HEALTHY_UPDATE_RATIO),
         "Update/weight ratio per layer per step (log axis). CS231n: about 1e-3 is healthy (dotted); the band is a "
         "decade either side." + _zeros_note(run.records, "update_ratio")),
        (figures.layer_series(run.records, "grad_norm", ylabel="||∇w||", log=True),
         "Gradient norm of each layer's weights (log axis)." + _zeros_note(run.records, "grad_norm")),
        (figures.layer_series(run.records, "dead_fraction", ylabel="dead fraction", ylim=(-0.02, 1.02)),
         "Fraction of ReLU units that output zero for every example of the batch."),
        (figures.layer_series(run.records, "dormant_fraction", ylabel="dormant fraction", ylim=(-0.02, 1.02)),
         "Fraction of each activation layer's units whose mean |output| is at most 2.5% of the layer's average "
         "unit (dormant, Sokar et al. 2023; a dead ReLU unit is dormant too)."),
        (figures.layer_series(run.records, "saturated_fraction", ylabel="saturated fraction", ylim=(-0.02, 1.02)),
         "Fraction of tanh/sigmoid outputs in the flat tails."),
    ]
    body = "".join(figure(fig, caption) for fig, caption in panels if fig is not None)
    hist = figure(figures.activation_histograms(run.records),
                  "Activation histograms per layer at initialisation and at the end (the last sample with one).")
    sampled = f"{len(run.records)} sample{'s' if len(run.records) > 1 else ''}" + (f", one every {every} steps" if every else "")
    return (head + f'<p class="muted">Per-layer statistics from monitors.jsonl ({escape(sampled)}).</p>'
            f'<div class="grid">{body}</div>{hist}</section>')


_ZERO_MEANS = {"grad_norm": "no gradient reaches those layers, the mark of a dead network",
               "update_ratio": "those layers' weights did not move at all"}


def _zeros_note(records: Sequence[dict[str, Any]], key: str) -> str:
    """The caption's note on exact zeros, which a log axis draws on the grey band marked 0."""
    zeros = figures.count_zeros(records, key)
    if not zeros:
        return ""
    return (f" {zeros} sample{'s are' if zeros > 1 else ' is'} exactly 0 (drawn on the grey band marked 0): "
            f"{_ZERO_MEANS[key]}.")


def _weights_section(run: RunFiles) -> str:
    found = first_layer_weight(run.path)
    if found is None:
        return ('<section><h2 id="weights">First layer</h2><p class="muted">No checkpoint to draw it from '
                "(the run stopped before it saved one).</p></section>")
    name, weight, checkpoint = found
    shape = "x".join(str(n) for n in weight.shape)
    fig = figures.first_layer_weights(weight)
    shown = f" (the first {figures.MAX_FILTERS})" if len(weight) > figures.MAX_FILTERS else ""
    return ('<section><h2 id="weights">First layer</h2>'
            + figure(fig, f"{name} ({shape}) in checkpoints/{checkpoint}{shown}: what the first layer learned.")
            + "</section>")


def _samples_section(run: RunFiles) -> str:
    """What the network makes: an autoencoder's reconstructions, a GAN's samples over training,
    a language model's generated text (files the runner leaves for the report)."""
    parts = []
    try:
        if (run.path / "reconstructions.npz").is_file():
            with np.load(run.path / "reconstructions.npz", allow_pickle=False) as f:
                fig = figures.reconstructions(f["inputs"], f["outputs"])
            parts.append(figure(fig, "Held-out examples (top row) and the autoencoder's reconstructions of them "
                                     "(bottom row), in the data's units."))
        if (run.path / "samples.npz").is_file():
            with np.load(run.path / "samples.npz", allow_pickle=False) as f:
                epochs, samples = f["epochs"].tolist(), f["samples"]
            parts.append(figure(figures.samples_over_training(epochs, samples),
                                f"The generator's examples for the same noise, one row per epoch ({', '.join(map(str, epochs))}), "
                                "first at the top."))
    except (OSError, ValueError, KeyError):
        parts.append('<p class="muted">The samples file is damaged; retrain to redraw it.</p>')
    sample = read_json(run.path / "text_sample.json") if (run.path / "text_sample.json").is_file() else None
    if isinstance(sample, dict) and "text" in sample:
        parts.append(f"<p>Text the trained model writes after the start of the held-out text (temperature "
                     f"{escape(sample.get('temperature'))}, seed {escape(sample.get('seed'))}); the prompt is in bold:</p>"
                     f"<pre><strong>{escape(sample.get('prompt', ''))}</strong>{escape(sample['text'])}</pre>")
    if not parts:
        return ""
    return '<section><h2 id="samples">What it makes</h2>' + "".join(parts) + "</section>"


def _landscape_section(run: RunFiles) -> str:
    """The loss landscape that ``babysit landscape`` left: its verdict in a few sentences, its
    figures (figures/*.png), then every number of landscape.json, rounded, in a fold."""
    if run.landscape is None and not run.landscape_figures:
        return ""
    parts = ['<section><h2 id="landscape">Loss landscape</h2>']
    verdict = landscape_verdict(run.landscape) if run.landscape is not None else []
    if verdict:
        parts.append('<ul class="landscape-verdict">' + "".join(f"<li>{escape(line)}</li>" for line in verdict) + "</ul>")
    for png in run.landscape_figures:
        data = png.read_bytes()
        if not data.startswith(figures.PNG_SIGNATURE) or len(data) > MAX_LANDSCAPE_PNG:
            parts.append(f'<p class="muted">{escape(png.name)}: not embedded (not a PNG, or over {MAX_LANDSCAPE_PNG:,} bytes).</p>')
            continue
        parts.append(f'<figure><img src="{data_uri(data)}" alt="{escape(png.stem)}"><figcaption>{escape(png.name)}</figcaption></figure>')
    if run.landscape is not None:
        rows = [[f"<code>{escape(key)}</code>", escape(landscape_value(value))]
                for key, value in list(flatten(run.landscape).items())[:MAX_LANDSCAPE_ROWS]]
        parts.append(f"<details{' open' if not verdict else ''}><summary>Every quantity in landscape.json ({len(rows)}), "
                     "to 3 significant digits</summary>" + table(["quantity", "value"], rows) + "</details>")
    parts.append("</section>")
    return "".join(parts)


def _spec_section(run: RunFiles) -> str:
    """config.yaml: the keys that apply to this model kind and data source, then the rest folded."""
    head = '<section><h2 id="spec">Resolved spec</h2>'
    shown, folded = split_spec(run.spec)
    if not folded:
        return head + f'<p class="muted">config.yaml: what actually ran.</p><pre>{escape(run.config_text)}</pre></section>'
    try:
        shown_text = yaml.safe_dump(shown, sort_keys=False, allow_unicode=True)
        folded_text = yaml.safe_dump(folded, sort_keys=False, allow_unicode=True)
    except yaml.YAMLError:
        return head + f"<pre>{escape(run.config_text)}</pre></section>"
    count = sum(len(values) for values in folded.values())
    model, data = run.spec.get("model"), run.spec.get("data")
    what = ", ".join(f"{name} {escape(values.get(key))}" for name, values, key in
                     (("model.kind", model, "kind"), ("data.source", data, "source"))
                     if isinstance(values, dict) and values.get(key) is not None)
    return (head + f'<p class="muted">config.yaml: what actually ran, the keys that apply to this run ({what}).</p>'
            f"<pre>{escape(shown_text)}</pre>"
            f"<details><summary>{count} key{'s' if count > 1 else ''} that do not apply to {what} "
            f"(their values are in config.yaml, unused)</summary><pre>{escape(folded_text)}</pre></details></section>")


def run_page(run_dir: str | Path) -> str:
    """The HTML text of a run's report (see the module docstring for what it shows).

    Example
    -------
    >>> import tempfile, pathlib
    >>> run_dir = pathlib.Path(tempfile.mkdtemp())
    >>> _ = (run_dir / "config.yaml").write_text("name: tiny\\n")
    >>> "No epochs logged" in run_page(run_dir)
    True
    """
    run = read_run(run_dir)
    sections = [  # (anchor, link text, HTML): a section with nothing to show is "" and gets no link
        ("data", "data", _data_section(run)),
        ("findings", "findings", _findings_section(run)),
        ("curves", "curves", _curves_section(run)),
        ("layers", "layers", _monitors_section(run)),
        ("dynamics", "dynamics", _dynamics_section(run)),
        ("answers", "answers", _answers_section(run)),
        ("samples", "samples", _samples_section(run)),
        ("weights", "first layer", _weights_section(run)),
        ("landscape", "landscape", _landscape_section(run)),
        ("spec", "spec", _spec_section(run)),
    ]
    nav = "".join(f'<a href="#{anchor}">{label}</a>' for anchor, label, html in sections if f'id="{anchor}"' in html)
    body = "".join([f"<nav>{nav}</nav>", _header(run), *(html for _, _, html in sections)])
    return page(f"babysit report: {run.name}", f"<main>{body}</main>")


def render(run_dir: str | Path, out: str | Path | None = None) -> Path:
    """Write the run's report (``RUN/report.html`` unless ``out`` names another file); returns its path.

    Example
    -------
    >>> import tempfile, pathlib
    >>> run_dir = pathlib.Path(tempfile.mkdtemp())
    >>> _ = (run_dir / "config.yaml").write_text("name: tiny\\n")
    >>> render(run_dir) == run_dir / "report.html"
    True
    """
    text = run_page(run_dir)
    return write_page(Path(out) if out is not None else Path(run_dir) / "report.html", text)


# --------------------------------------------------------------------------- comparison


def flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    """Nested dicts as one dict of dotted keys (lists stay values).

    Example
    -------
    >>> flatten({"model": {"kind": "mlp", "hidden": [100]}, "seed": 0})
    {'model.kind': 'mlp', 'model.hidden': [100], 'seed': 0}
    """
    if not isinstance(value, dict):
        return {prefix: value} if prefix else {"value": value}
    out: dict[str, Any] = {}
    for key, item in value.items():
        dotted = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(item, dict) and item:
            out.update(flatten(item, dotted))
        else:
            out[dotted] = item
    return out


def differing_keys(specs: Sequence[dict[str, Any]]) -> dict[str, list[Any]]:
    """The dotted spec keys whose values are not the same in every spec (a missing key differs).

    Example
    -------
    >>> differing_keys([{"optimizer": {"lr": 0.1, "name": "sgd"}}, {"optimizer": {"lr": 0.01, "name": "sgd"}}])
    {'optimizer.lr': [0.1, 0.01]}
    """
    flat = [flatten(spec) for spec in specs]
    keys = list(dict.fromkeys(k for f in flat for k in f))
    missing = object()
    out = {}
    for key in keys:
        values = [f.get(key, missing) for f in flat]
        if any(v != values[0] for v in values[1:]):
            out[key] = [None if v is missing else v for v in values]
    return out


def _labels(runs: Sequence[RunFiles]) -> list[str]:
    """Each run's directory name; the whole path where two share a name."""
    names = [run.path.name or str(run.path) for run in runs]
    return [str(run.path) if names.count(name) > 1 else name for run, name in zip(runs, names, strict=True)]


def shared_examples_line(runs: Sequence[RunFiles]) -> str:
    """Whether the runs' validation and test numbers are measured on the same examples: they
    are when their data sections (``data.split_seed`` included, ``batch_size`` aside) agree.

    Example
    -------
    >>> from pathlib import Path
    >>> a = RunFiles(Path("a"), "", {"seed": 0}, [], [], {}, [])
    >>> b = RunFiles(Path("b"), "", {"seed": 1}, [], [], {}, [])
    >>> shared_examples_line([a, b]).startswith("Every run is scored on the same")
    True
    """
    data = []
    for run in runs:
        try:
            # how the training batches are drawn and augmented does not move the held-out examples
            data.append(validate(run.spec).data.model_dump(mode="json", exclude={"batch_size", "augment"}))
        except BabysitError:
            return "Whether the runs share their validation and test examples is unknown: a config.yaml is not a valid spec."
    differing = sorted({k for d in data for k in d if any(d.get(k) != other.get(k) for other in data)})
    if not differing:
        return ("Every run is scored on the same validation and test examples: their data, data.split_seed "
                "included, is the same.")
    keys = ", ".join(f"data.{k}" for k in differing[:4])
    return (f"The runs' data differ ({keys}): their validation and test numbers are not measured on the "
            "same examples.")


def compare_page(run_dirs: Sequence[str | Path]) -> str:
    """The HTML text comparing runs: curves overlaid, final metrics and findings side by
    side, the spec keys that differ.

    Example
    -------
    >>> import tempfile, pathlib
    >>> dirs = [pathlib.Path(tempfile.mkdtemp()) for _ in range(2)]
    >>> for d, lr in zip(dirs, (0.1, 0.01)):
    ...     _ = (d / "config.yaml").write_text(f"name: r\\noptimizer: {{lr: {lr}}}\\n")
    >>> "optimizer.lr" in compare_page(dirs)
    True
    """
    if not run_dirs:
        raise BabysitError("compare: name at least one run directory")
    runs = [read_run(d) for d in run_dirs]
    labels = _labels(runs)
    overlaid = figures.overlaid_curves({label: run.history for label, run in zip(labels, runs, strict=True)})
    legend = table(["run", "name", "directory"], [[escape(label), escape(run.name), escape(run.path)]
                                                  for label, run in zip(labels, runs, strict=True)])

    keys = ["train_loss", "train_acc", "val_loss", "val_acc", "test_loss", "test_acc", "epochs", "steps",
            "best_epoch", "stopped_early", "diverged", "wall_time_s", "parameters", "device"]
    keys = [k for k in keys if any(k in run.summary for run in runs)]
    metrics = table(["metric", *labels], [[escape(k), *(f'{_metric(run.summary.get(k), k)}' for run in runs)]
                                          for k in keys])

    def finding_cell(run: RunFiles) -> str:
        if not run.findings:
            return "none" if (run.path / "findings.json").exists() else '<span class="muted">not checked</span>'
        return "<br>".join(f'<span class="{escape(f.get("severity"))}"><span class="severity">{escape(f.get("severity"))}</span></span> '
                           f"{escape(f['id'])}" + (f" ({escape(f['layer'])})" if f.get("layer") else "") for f in run.findings)

    findings_table = table(["", *labels], [["findings", *(finding_cell(run) for run in runs)]])
    differing = differing_keys([run.spec for run in runs])
    spec_table = (table(["spec key", *labels], [[f"<code>{escape(k)}</code>", *(escape(_short(v)) for v in values)]
                                                for k, values in differing.items()])
                  if differing else "<p>The specs are the same.</p>")
    body = (f"<header><h1>Comparison of {len(runs)} runs</h1>{legend}</header>"
            f'<section><h2 id="curves">Learning curves</h2>'
            f"{figure(overlaid, 'Training loss, validation loss and validation accuracy per epoch, one line per run.')}"
            f'</section><section><h2 id="metrics">Final metrics</h2><p>{escape(shared_examples_line(runs))}</p>'
            f"{metrics}</section>"
            f'<section><h2 id="findings">Findings</h2>{findings_table}</section>'
            f'<section><h2 id="spec">Spec keys that differ</h2>{spec_table}</section>')
    return page(f"babysit compare: {', '.join(labels)}", f"<main>{body}</main>")


def compare(run_dirs: Sequence[str | Path], out: str | Path) -> Path:
    """Write the page comparing ``run_dirs`` to ``out``; returns its path.

    Example
    -------
    >>> import tempfile, pathlib
    >>> d = pathlib.Path(tempfile.mkdtemp())
    >>> _ = (d / "config.yaml").write_text("name: r\\n")
    >>> compare([d], d / "compare.html").name
    'compare.html'
    """
    return write_page(Path(out), compare_page(run_dirs))


__all__ = ["RunFiles", "compare", "compare_page", "data_uri", "differing_keys", "finding_figure", "first_sentence",
           "first_layer_weight", "flatten", "read_run", "render", "run_page", "verdict_line"]
