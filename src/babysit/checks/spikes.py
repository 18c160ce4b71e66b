"""Loss spikes: telling one in the per-batch losses, where a non-finite loss came from, and
the findings (``loss_spike``, ``nonfinite_loss``) over the spike records of ``metrics.jsonl``.

A *spike* is a batch loss far above the loss's recent level. PaLM (Chowdhery et al. 2022,
arXiv 2204.02311, §5.1) saw about 20 of them in training a large model, not caused by one
bad batch alone but by a batch meeting a particular state of the weights, and got past
each by restarting about 100 steps before it and skipping 200-500 batches. The training
loop (:class:`babysit.train.loop.Trainer`, ``train.on_spike``) reports them (``stop``, the
default: the explosion guard still stops a run whose loss passes ``explosion_factor`` x the
first), skips the batch's update (``skip``), or rolls back to the last in-memory state and
skips the batches from the spike on (``rollback``).

:class:`SpikeDetector` decides, one loss at a time, on the host: the loss of a step is a
spike when it is above ``factor`` (``checks.spike_factor``, 3 like CS231n's explosion rule)
times the moving average of the losses before it, and also above the batch losses' own
noise, ``exp(z * sigma)`` times that average, where sigma is the moving standard deviation of
log(loss) from one step to the next (half the mean square successive difference: the noise
without the trend; z = :data:`SPIKE_NOISE_Z`); a non-finite loss always is one. The average is
taken over log(loss), i.e. it is a geometric moving average, because a loss's fluctuations
are multiplicative (a batch of a few examples can sit orders of magnitude above or below the
mean), so the log is the scale on which they have one width; and an arithmetic average would
be dragged up by the rare large batch that it should flag.

Measured on 16 healthy runs (the examples' MLP, CNN, ResNet, GRU, GPT, autoencoder and
logistic regression for 3-60 epochs, plus SGD on digits at batch 1, 4 and 16, on MNIST-1D at
batch 8 and on spirals at batch 1: 31,000 steps): "above 3x an arithmetic EMA (100 steps)"
alone flagged 1 to 1,229 steps in 8 of them, every one a batch of 1-16 examples; with the
noise term, none (z = 4, 6 and 8 all gave 0; so did a spread measured as the deviation from
the mean, which the trend of a falling loss inflates: sigma 1.0 instead of 0.26 at the end of
the ResNet's 10 epochs). A loss made 10x larger in the middle or at 3/4 of each run was found
in 16 of those 32 places; 1e6x in 26 (all but the batch-1 and batch-4 runs). That is the
price: at batch 1-4 sigma is 2-30 (losses spread over e^30), and no loss is a spike there; at
batch 64-128 sigma is 0.02-0.45, and a loss 3x (up to 6x at sigma 0.45) its average is one.
The first steps' fast fall never looks like a spike (each loss is below an average that lags
above it); the first :data:`SPIKE_MIN_STEPS` losses only feed the average; a spike is folded into the average
clipped at the threshold (so a loss that moves to a new level is followed, at a bounded
pace), and not at all where its update was undone (``skip``, ``rollback``).

:func:`nonfinite_origin` replays one batch with a forward hook on every module and names the
first whose output was not finite, or the loss term when every module's was.

Example
-------
>>> detector = SpikeDetector(factor=3.0)
>>> [detector.observe(v) for v in [1.0, 0.9, 1.1] * 5]  # doctest: +ELLIPSIS
[False, False, ...]
>>> detector.is_spike(5.0), detector.is_spike(1.5), detector.is_spike(float("nan"))
(True, False, True)
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from babysit.checks.findings import Finding

# The moving average's horizon in steps: a 1/100 weight per step (after the first 100, whose
# plain mean it is). Shorter horizons follow the noise of small batches (with the deviation
# from the mean as the spread, z = 3 flagged 2 of the 31,000 healthy steps above at 50 steps,
# none at 100 and 200).
SPIKE_HORIZON = 100
# A spike is also this many moving standard deviations of log(loss) above the average; 4-8
# gave no false alarm on the healthy runs above; 4 keeps the most sensitivity.
SPIKE_NOISE_Z = 4.0
# Losses the average has seen before any can be a spike (the spread needs a few to be known).
SPIKE_MIN_STEPS = 8
# A spike also undoes at least this share of the progress so far: it rises above
# average + SPIKE_PROGRESS x (starting level - average), the starting level being the average of
# the first SPIKE_MIN_STEPS losses. Late in a run that fits its training set, a batch that is 10x
# the tiny average is one hard batch, not an instability: examples/mnist1d-cnn.yaml (train loss
# 2.06 -> 0.019 over 60 epochs) had 85 such batches, the largest 0.27 against an average of 0.008,
# where this floor is 0.52. A PaLM-style spike (Chowdhery et al. 2022) sends the loss back up
# towards where training started; from 2 nats with a start at ln(50k) = 10.8 the bar is 4.2.
SPIKE_PROGRESS = 0.25
# ``rollback``: this many rolled-back windows in a row stop the run (the loss moved to a new
# level: not a spike, and undoing every batch would train nothing); ``skip``: this many
# windows' worth of skipped batches in a row (checks.every each).
SPIKES_IN_A_ROW = 3
# example indices written per spike record (a full batch can hold the whole training set)
MAX_EXAMPLES = 256
_TINY = 1e-30  # log(0) guard: a loss of exactly 0 counts as 1e-30


class SpikeDetector:
    """The moving average of a loss and the test for a spike (see the module's docstring).

    ``observe(value)`` tests and then folds the loss in (clipped at the threshold);
    ``is_spike`` / ``fold`` are the two halves, for a caller that folds only the losses it
    keeps. Pure host arithmetic: the caller brings the losses to the host in bulk.
    """

    def __init__(self, factor: float = 3.0, horizon: int = SPIKE_HORIZON, z: float = SPIKE_NOISE_Z,
                 min_steps: int = SPIKE_MIN_STEPS):
        self.factor, self.horizon, self.z, self.min_steps = factor, horizon, z, min_steps
        self.seen = 0  # losses folded in
        self._mean = 0.0  # moving mean of log(loss)
        self._var = 0.0  # moving noise variance of log(loss), from successive differences
        self._last = 0.0  # the last log(loss) folded in
        self._start: float | None = None  # the mean log(loss) of the first min_steps losses

    @property
    def average(self) -> float:
        """The geometric moving average of the losses folded in so far (nan before any)."""
        return math.exp(self._mean) if self.seen else math.nan

    @property
    def threshold(self) -> float:
        """The loss above which the next step is a spike (inf while warming up)."""
        if self.seen < self.min_steps:
            return math.inf
        relative = math.exp(self._mean + max(math.log(self.factor), self.z * math.sqrt(self._var)))
        if self._start is None:
            return relative
        average = math.exp(self._mean)
        return max(relative, average + SPIKE_PROGRESS * (math.exp(self._start) - average))

    def is_spike(self, value: float, threshold: float | None = None) -> bool:
        """Whether ``value`` is a spike (``threshold``: :attr:`threshold`, when the caller has it)."""
        return not math.isfinite(value) or value > (self.threshold if threshold is None else threshold)

    def fold(self, value: float, threshold: float | None = None) -> None:
        """Fold one loss into the average (clipped at the threshold; a non-finite one is left out)."""
        if not math.isfinite(value):
            return
        x = math.log(max(min(value, self.threshold if threshold is None else threshold), _TINY))
        self.seen += 1
        weight = max(1.0 / self.seen, 1.0 / self.horizon)  # the plain mean until the horizon is reached
        self._mean += weight * (x - self._mean)
        if self.seen > 1:
            # the noise's variance as half the mean square successive difference (von Neumann et al.
            # 1941): a falling or rising trend, which a deviation from the lagging mean would count
            # as noise, cancels between neighbours
            step = x - self._last
            weight = max(1.0 / (self.seen - 1), 1.0 / self.horizon)
            self._var += weight * (0.5 * step * step - self._var)
        self._last = x
        if self.seen == self.min_steps:
            self._start = self._mean

    def observe(self, value: float) -> bool:
        """Whether ``value`` is a spike; then folds it in."""
        spike = self.is_spike(value)
        self.fold(value)
        return spike

    def state_dict(self) -> dict[str, float]:
        return {"seen": self.seen, "mean": self._mean, "var": self._var, "last": self._last,
                "start": self._start if self._start is not None else math.nan}

    def load_state_dict(self, state: dict[str, float]) -> None:
        self.seen, self._mean = int(state["seen"]), float(state["mean"])
        self._var, self._last = float(state["var"]), float(state["last"])
        start = float(state.get("start", math.nan))
        self._start = start if math.isfinite(start) else None


# --------------------------------------------------------------------------- where a NaN came from


def _nonfinite(value: Any) -> tuple[int, int]:
    """(non-finite elements, floating elements) over the tensors in ``value`` (nested tuples,
    lists and dicts too)."""
    if isinstance(value, torch.Tensor):
        if not value.is_floating_point() and not value.is_complex():
            return 0, 0
        return int((~torch.isfinite(value)).sum()), value.numel()
    if isinstance(value, list | tuple):
        counts = [_nonfinite(v) for v in value]
    elif isinstance(value, dict):
        counts = [_nonfinite(v) for v in value.values()]
    else:
        return 0, 0
    return sum(c[0] for c in counts), sum(c[1] for c in counts)


def _max_abs(value: Any) -> float | None:
    """The largest finite |x| over the floating tensors in ``value``, or None."""
    tensors = [v for v in (value if isinstance(value, list | tuple) else [value])
               if isinstance(v, torch.Tensor) and v.is_floating_point() and v.numel()]
    finite = [t.detach()[torch.isfinite(t.detach())] for t in tensors]
    finite = [f for f in finite if f.numel()]
    return max(float(f.abs().max()) for f in finite) if finite else None


@torch.no_grad()
def nonfinite_origin(model: nn.Module, loss_fn: Any, batch: tuple[torch.Tensor, torch.Tensor]) -> dict[str, Any]:
    """Replay ``batch`` through ``model`` with a forward hook on every module and say where the
    first non-finite value appeared.

    The model runs as it is (train or eval mode) under ``no_grad``; its buffers (batch-norm
    statistics) and the random number generators are put back afterwards, so the replay
    changes nothing. Returns a JSON-able dict: ``where`` is ``"input"`` (the batch itself holds
    NaN / inf), ``"module"`` (``module`` names the first module, in execution order, by its
    ``named_modules`` name, whose output was not finite; ``""`` is the model's own forward
    outside any submodule), ``"loss"`` (every module's output was finite, the loss was not) or
    ``"none"`` (this replay gave a finite loss: the step's weights, not this batch, made the
    NaN); with ``loss`` (the replayed loss), and for a module its ``type``, the ``nonfinite_fraction`` of its output
    and ``input_max_abs``, the largest finite |x| it was given.

    Example
    -------
    >>> class Normalise(nn.Module):
    ...     def forward(self, x):
    ...         return x / x.sum(dim=1, keepdim=True)  # zero for a batch row that sums to 0
    >>> net = nn.Sequential(nn.Linear(2, 2), Normalise(), nn.Linear(2, 2))
    >>> with torch.no_grad():
    ...     _ = net[0].weight.copy_(torch.eye(2)), net[0].bias.zero_()
    >>> origin = nonfinite_origin(net, nn.functional.cross_entropy, (torch.tensor([[1.0, -1.0]]), torch.tensor([0])))
    >>> origin["where"], origin["module"], origin["type"]
    ('module', '1', 'Normalise')
    """
    xb, yb = batch
    bad, total = _nonfinite(xb)
    if bad:
        return {"where": "input", "module": None, "nonfinite_fraction": bad / max(total, 1), "loss": math.nan}
    first: dict[str, Any] = {}
    names = {id(m): name for name, m in model.named_modules()}

    def hook(module: nn.Module, inputs: Any, output: Any) -> None:
        if first:
            return
        bad, total = _nonfinite(output)
        if bad:
            first.update({"module": names.get(id(module), type(module).__name__), "type": type(module).__name__,
                          "nonfinite_fraction": bad / max(total, 1), "input_max_abs": _max_abs(inputs)})

    buffers = [b.detach().clone() for b in model.buffers()]
    handles = [m.register_forward_hook(hook) for m in model.modules()]
    devices = [d for d in {p.device for p in model.parameters()} if d.type == "cuda"]
    try:
        with torch.random.fork_rng(devices=[d.index or 0 for d in devices]):
            out = model(xb)
            loss = loss_fn(out, yb)
    finally:
        for handle in handles:
            handle.remove()
        for saved, buffer in zip(buffers, model.buffers(), strict=True):
            buffer.copy_(saved)
    value = float(loss.detach().float().sum()) if isinstance(loss, torch.Tensor) else float(loss)
    if first:
        return {"where": "module", **first, "loss": value}
    if not math.isfinite(value):
        return {"where": "loss", "module": None, "output_max_abs": _max_abs(out), "loss": value}
    return {"where": "none", "module": None, "loss": value}


def origin_words(origin: dict[str, Any]) -> str:
    """One sentence on :func:`nonfinite_origin`'s answer, for a finding's message."""
    where = origin.get("where")
    if where == "input":
        return "The batch's inputs themselves hold NaN or inf."
    if where == "module":
        name = origin.get("module") or "the model's own forward (outside any submodule)"
        given = origin.get("input_max_abs")
        took = f", from finite inputs up to |x| = {given:.3g}" if isinstance(given, int | float) else ""
        share = origin.get("nonfinite_fraction")
        part = f" ({share:.0%} of its outputs)" if isinstance(share, int | float) else ""
        return f"Replayed with a hook on every module, the first output that was not finite was {name!r} " \
               f"({origin.get('type')}){part}{took}."
    if where == "loss":
        return "Replayed with a hook on every module, every module's output was finite and the loss term was not " \
               "(a log(0), a division by zero, or an overflow in the loss function)."
    if where == "none":
        return "Replayed at the last good weights this batch gives a finite loss: the weights the step started " \
               "from, not the batch alone, made the NaN (a step that was too large)."
    return ""


def origin_advice(origin: dict[str, Any]) -> str:
    where = origin.get("where")
    if where == "input":
        return "Clean the data: drop or impute the examples with NaN / inf (their indices are in the evidence)."
    if where == "module":
        return (f"Look at what {origin.get('module') or 'the forward'!r} computes: a division by a quantity that can "
                "be 0, a log or sqrt of a non-positive number, or an exp that overflows; guard it (add an epsilon, "
                "clamp) and check the examples in the evidence for extreme values.")
    if where == "loss":
        return "Make the loss finite for every output: clamp probabilities away from 0 before a log (or use the " \
               "logits form, cross_entropy / BCEWithLogits), and add an epsilon to any division."
    return "Lower the learning rate (3-10x), clip gradients (optimizer.grad_clip), or add warmup."


# --------------------------------------------------------------------------- the findings


def _fmt(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, int | float) and not isinstance(value, bool) else "NaN or inf"


def _examples_text(record: dict[str, Any]) -> str:
    examples = record.get("examples")
    if not isinstance(examples, list) or not examples:
        return ""
    shown = ", ".join(str(i) for i in examples[:8])
    more = f", ... ({record.get('batch_size', len(examples))} in all)" if len(examples) > 8 else ""
    return f" (training examples {shown}{more})"


def spike_findings(metrics: list[dict[str, Any]], *, on_spike: str, spike_factor: float) -> list[Finding]:
    """``loss_spike`` (and, for a non-finite loss the run skipped or rolled back, ``nonfinite_loss``)
    from the spike records of ``metrics.jsonl`` (``{"event": "loss_spike", ...}``, written by the
    training loop; other records are ignored).

    Severity: under ``stop`` a spike is a warning (nothing undid it; the explosion guard's
    ``loss_exploded`` / ``nonfinite_loss`` error says when it also ended the run); under
    ``skip`` / ``rollback`` it is info (it was undone), and an error when spikes came
    :data:`SPIKES_IN_A_ROW` times in a row and the run was stopped. A skipped or rolled-back
    non-finite loss is a ``nonfinite_loss`` warning naming where it came from
    (:func:`nonfinite_origin`).

    Example
    -------
    >>> spike = {"event": "loss_spike", "step": 40, "loss": 9.1, "average": 0.31, "threshold": 0.93,
    ...          "action": "rollback", "examples": [3, 17], "batch_size": 2}
    >>> [(f.id, f.severity, f.step) for f in spike_findings([spike], on_spike="rollback", spike_factor=3.0)]
    [('loss_spike', 'info', 40)]
    """
    spikes = [r for r in metrics if r.get("event") == "loss_spike" and isinstance(r.get("step"), int)]
    rollbacks = [r for r in metrics if r.get("event") == "rollback"]
    if not spikes:
        return []
    found: list[Finding] = []
    first = spikes[0]
    worst = max(spikes, key=lambda r: _ratio(r))
    stopped = next((r for r in spikes if r.get("stopped")), None)
    handled = on_spike in ("skip", "rollback")
    count = sum(int(r.get("steps", 1)) for r in spikes)
    steps = [r["step"] for r in spikes]
    where = ", ".join(str(s) for s in steps[:6]) + (", ..." if len(steps) > 6 else "")
    ratio = _ratio(worst)
    size = f"{ratio:.3g}x" if math.isfinite(ratio) else "a non-finite multiple of"
    seen = (f"The training loss spiked {len(spikes)} time(s) ({count} step(s) above the threshold) at step(s) {where}: "
            f"the largest at step {worst['step']}, {_fmt(worst.get('loss'))}, {size} its moving average "
            f"{_fmt(worst.get('average'))} (a spike: above {spike_factor:g}x the average and above the batch "
            f"losses' own spread){_examples_text(worst)}.")
    if on_spike == "rollback":
        skipped = sum(int(r.get("skipped", 0)) for r in rollbacks)
        replayed = sum(int(r.get("replayed", 0)) for r in rollbacks)
        did = (f" Each was rolled back ({len(rollbacks)} rollback(s)): the weights, optimizer, schedule and RNG "
               f"went back to the window's start, {replayed} clean batch(es) were replayed and {skipped} were skipped.")
    elif on_spike == "skip":
        did = f" The update of each spiked batch was skipped ({count} batch(es))."
    else:
        did = " Nothing undid it (train.on_spike: stop)."
    evidence = {"spikes": len(spikes), "spike_steps": count, "first_step": first["step"], "worst_step": worst["step"],
                "worst_loss": worst.get("loss"), "worst_average": worst.get("average"), "worst_ratio": ratio,
                "spike_factor": spike_factor, "on_spike": on_spike, "steps": steps[:50],
                "examples": worst.get("examples", [])[:32], "rollbacks": len(rollbacks)}
    if stopped is not None:
        found.append(Finding(
            "loss_spike", "error",
            seen + did + f" Spikes came {SPIKES_IN_A_ROW} times in a row by step {stopped['step']}, so the run was "
            "stopped: the loss had moved to a new level, and skipping every batch would train nothing.",
            "Lower the learning rate 3-10x, add warmup or clip gradients (optimizer.grad_clip); check the data "
            "for a change in distribution from that step on.",
            evidence, step=first["step"]))
    elif handled:
        found.append(Finding(
            "loss_spike", "info", seen + did,
            "Nothing to do if they are rare. Many spikes mean steps too large for the curvature (lower the "
            "learning rate, add warmup, clip gradients) or bad examples (look at the indices in the evidence).",
            evidence, step=first["step"]))
    else:
        found.append(Finding(
            "loss_spike", "warning", seen + did,
            "Look at the examples of the spiked batch (indices in the evidence) for corrupt or extreme values; "
            "otherwise lower the learning rate, add warmup or clip gradients (optimizer.grad_clip). "
            "train.on_spike: rollback returns to the state before a spike and skips its batches (PaLM, "
            "arXiv 2204.02311, §5.1).",
            evidence, step=first["step"]))
    nonfinite = [r for r in spikes if r.get("loss") is None and isinstance(r.get("origin"), dict)]
    if handled and nonfinite:
        record = nonfinite[0]
        origin = record["origin"]
        found.append(Finding(
            "nonfinite_loss", "warning",
            f"The training loss was not finite at step {record['step']}{_examples_text(record)}; the update was "
            f"{'rolled back' if on_spike == 'rollback' else 'skipped'}, so the weights stayed finite. "
            + origin_words(origin),
            origin_advice(origin),
            {"step": record["step"], "origin": origin, "examples": record.get("examples", [])[:32],
             "nonfinite_steps": len(nonfinite)},
            layer=origin.get("module") or None, step=record["step"]))
    return found


def _ratio(record: dict[str, Any]) -> float:
    loss, average = record.get("loss"), record.get("average")
    if not isinstance(loss, int | float) or not isinstance(average, int | float) or average <= 0:
        return math.inf
    return loss / average


def nonfinite_finding(guard: Finding, origin: dict[str, Any], record: dict[str, Any], *, weights: str) -> Finding:
    """The explosion guard's ``nonfinite_loss`` finding with where the NaN came from: the
    first non-finite step (``record``, a spike record), its examples, and the replay's answer
    (``origin``, from :func:`nonfinite_origin` at the ``weights`` described)."""
    message = (f"{guard.message} The loss was first non-finite at step {record['step']}{_examples_text(record)}; "
               f"replayed at {weights}: " + origin_words(origin))
    advice = origin_advice(origin) if origin.get("where") != "none" else guard.advice
    return Finding(guard.id, guard.severity, message, advice,
                   {**guard.evidence, "first_nonfinite_step": record["step"], "origin": origin,
                    "examples": record.get("examples", [])[:32], "replayed_at": weights},
                   layer=origin.get("module") or None, step=guard.step)


__all__ = ["SPIKE_HORIZON", "SPIKE_MIN_STEPS", "SPIKE_NOISE_Z", "SPIKES_IN_A_ROW", "SpikeDetector",
           "nonfinite_finding", "nonfinite_origin", "origin_words", "spike_findings"]
