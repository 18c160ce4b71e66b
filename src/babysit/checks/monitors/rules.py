"""The monitor rules: what a list of monitor records (``monitors.jsonl``, written by
:class:`~babysit.checks.monitors.sampler.Monitor`) says about the run, as findings.

:func:`monitor_findings` gives at most one finding per id (``dead_relu``,
``dormant_units``, ``saturated_activations``, ``activation_collapse``, ``vanishing_gradients``,
``exploding_gradients``, ``update_ratio_high``, ``update_ratio_low``,
``gradients_accumulate``, ``loss_at_chance``);
:func:`monitor_summary` the per-layer medians the diagnosis and the report read. Each
threshold below is a rule of thumb with its source.

Example
-------
>>> recs = [{"step": s, "layers": {"fc": {"update_ratio": 0.5}}} for s in (1, 11, 21)]
>>> [f.id for f in monitor_findings(recs)]
['update_ratio_high']
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Collection, Iterable
from typing import Any

from babysit.checks.findings import Finding

# --------------------------------------------------------------------------- thresholds
# Each is a rule of thumb with its source; the tests build networks on both sides of it.

# CS231n (Neural Networks 3, "ratio of weights:updates"): ||Δw|| / ||w|| "should be
# somewhere around 1e-3"; much lower means the learning rate is probably too low, much
# higher too high. Adam at lr 1e-2 on small nets sits at 1e-2 to 3e-2 and trains well (the
# MNIST-1D examples), so the alarms are two decades either side of the healthy 1e-3.
UPDATE_RATIO_HIGH = 1e-1
UPDATE_RATIO_LOW = 1e-5
# CS231n (Neural Networks 1, "dying ReLU"): "as much as 40% of your network can be dead"
# with a too-high learning rate. A unit counts as dead when it is zero for every example of
# the sampled batch; a layer is flagged when half its units are dead.
DEAD_FRACTION = 0.5
# tanh / sigmoid units are saturated where the local gradient is nearly zero: |tanh| > 0.99
# (tanh' < 0.02) and sigmoid outside (0.01, 0.99) (sigmoid' < 0.0099). A layer is flagged
# when a quarter of its outputs are saturated (CS231n's tanh net with N(0, 1) weights: ~all).
SATURATION_LEVEL = 0.99
SATURATED_FRACTION = 0.25
# Sokar et al. 2023, "The dormant neuron phenomenon in deep reinforcement learning" (arXiv
# 2302.12902), generalising dead ReLUs to every activation: unit i of a layer scores
# s_i = E|h_i| / mean_k E|h_k| (over the batch and positions) and is tau-dormant when s_i <= tau;
# tau = 0.025 is the paper's value. A layer is flagged when half its units are dormant, the same
# bar as DEAD_FRACTION: a dead unit is dormant (score 0), so a lower bar would flag ReLU layers
# for the dead units that rule deliberately tolerates (CS231n: up to 40% can be dead). Measured
# (tests/test_monitors.py, the healthy 4-layer nets): tanh layers stay at 0% dormant; a healthy
# ReLU MLP trained with Adam at 1e-2 ends with its last hidden layer ~33% dead and ~37% dormant,
# which 0.25 would flag. Half a layer contributing under 2.5% of its average unit is a clear
# loss of capacity.
DORMANT_TAU = 0.025
DORMANT_FRACTION = 0.5
# CS231n's 10-layer tanh net with N(0, 0.01^2) weights: the activation std falls by about 5x
# a layer "and collapses to zero". Flag a net of 3+ monitored layers whose std keeps shrinking
# layer after layer to below 1% of the first.
COLLAPSE_RATIO = 1e-2
# Gradient RMS (norm / sqrt(numel)) of the first weight layer against the last. Backprop
# through k sigmoid layers multiplies by at most 0.25^k (a 6-layer sigmoid stack: ~2e-4);
# healthy nets of any depth stay within two decades either way.
VANISHING_RATIO = 1e-3
EXPLODING_RATIO = 1e3
# A pattern must hold in at least half of the last third of the samples to be reported as
# ongoing; one seen only at the start (the first sample, at initialisation) is reported
# as info, since training got past it.
PERSIST_FRACTION = 0.5
# A user's loop that forgets optimizer.zero_grad() adds every step's gradient to the last:
# before the backward pass .grad still holds the sum of the earlier ones (after zero_grad it
# is 0 or None). Flag it when, at most samples after the first, what .grad held before the
# backward is at least a tenth of the new gradient (forgotten: it grows like the number of
# steps, 10-1000x the new one; cleared: exactly 0). Checked only in babysit.watch.
UNCLEARED_RATIO = 0.1
# CS231n ("look for correct loss at chance performance", and loss curves that stay flat):
# a training loss still within 10% of the chance loss (ln C for C balanced classes) after
# AT_CHANCE_MIN_SAMPLES samples (every=10: 100 steps) has learned nothing: labels that do
# not go with the inputs (shuffled separately), a dead network, or a learning rate of ~0.
# Measured on digits (tests/test_user_loop.py, seeds 0-4, 6 epochs): shuffled labels end at
# 0.967-0.988 ln C (mean 0.976, sd 0.009: the bar 0.90 is 8 sd below); the clean script at
# about 0.1 ln C.
AT_CHANCE_TOLERANCE = 0.10
AT_CHANCE_MIN_SAMPLES = 10

# --------------------------------------------------------------------------- the rules


def well_formed(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The records the rules can read: an integer step and a mapping of layers to mappings
    (a monitors.jsonl edited or damaged by hand loses the rest, not the run's findings)."""
    return [r for r in records if isinstance(r, dict) and isinstance(r.get("step"), int)
            and isinstance(r.get("layers"), dict) and all(isinstance(v, dict) for v in r["layers"].values())]


def _series(records: list[dict[str, Any]], layer: str, key: str) -> list[float]:
    return [r["layers"][layer][key] for r in records if key in r["layers"].get(layer, {})
            and r["layers"][layer][key] is not None]


def _layer_names(records: list[dict[str, Any]], key: str) -> list[str]:
    names: dict[str, None] = {}
    for record in records:
        for name, entry in record["layers"].items():
            if key in entry:
                names[name] = None
    return list(names)


def _persistence(flags: list[bool]) -> str | None:
    """'ongoing' when the flag holds in at least half of the last third of the samples,
    'at_init' when it held only at the first sample(s), None otherwise."""
    if not flags:
        return None
    tail = flags[-max(1, len(flags) // 3):]
    if sum(tail) >= PERSIST_FRACTION * len(tail):
        return "ongoing"
    if flags[0]:
        return "at_init"
    return None


def _recovered_step(records: list[dict[str, Any]], flags: list[bool]) -> int | None:
    for record, flag in zip(records, flags, strict=False):
        if not flag:
            return record["step"]
    return None


def _median(values: Iterable[float]) -> float:
    finite = [v for v in values if v is not None and math.isfinite(v)]
    return statistics.median(finite) if finite else float("nan")


def monitor_summary(records: list[dict[str, Any]]) -> dict[str, Any]:
    """Per-layer medians of the update ratio, gradient norm, dead, dormant and saturated fractions.

    Example
    -------
    >>> recs = [{"step": s, "layers": {"fc": {"update_ratio": r, "grad_norm": 0.5}}}
    ...         for s, r in ((1, 0.1), (11, 1e-3), (21, 3e-3))]
    >>> monitor_summary(recs)["update_ratio_median"]  # the first step's update is left out
    {'fc': 0.002}
    """
    records = well_formed(records)
    out: dict[str, Any] = {"samples": len(records)}
    for key, label in (("update_ratio", "update_ratio_median"), ("grad_norm", "grad_norm_median"),
                       ("dead_fraction", "dead_fraction_median"), ("dormant_fraction", "dormant_fraction_median"),
                       ("saturated_fraction", "saturated_fraction_median"),
                       ("act_std", "act_std_median")):
        recs = _after_first_step(records) if key == "update_ratio" else records
        out[label] = {name: _median(_series(recs, name, key)) for name in _layer_names(recs, key)}
    return out


def _after_first_step(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The samples after the very first step, whose update is atypical (Adam's first step
    moves every weight by about the lr), unless that leaves too few."""
    return records[1:] if len(records) > 2 else records


def monitor_findings(records: list[dict[str, Any]], *, chance_loss: float | None = None) -> list[Finding]:
    """The while-training findings of a list of monitor records (``monitors.jsonl``).

    ``dead_relu``, ``dormant_units``, ``saturated_activations``, ``activation_collapse``,
    ``vanishing_gradients``, ``exploding_gradients``, ``update_ratio_high``,
    ``update_ratio_low``, ``gradients_accumulate`` and, given the ``chance_loss``,
    ``loss_at_chance``: at most one finding per id, naming the worst layer, with every
    affected layer in its evidence. A pattern that lasts to the end of the run is a
    warning; one that was there at initialisation and went away is info.

    Dead and saturated units are read from the nonlinearity modules when the network has
    them, else from the inputs of the weight layers after the first (a forward that calls
    ``F.relu`` or ``torch.tanh`` has no module to watch).

    Example
    -------
    >>> recs = [{"step": s, "layers": {"fc.1": {"type": "ReLU", "act_mean": 0.0, "act_std": 0.0,
    ...          "dead_fraction": 0.9}}} for s in (1, 11, 21)]
    >>> [(f.id, f.layer, f.severity) for f in monitor_findings(recs)]
    [('dead_relu', 'fc.1', 'warning')]
    """
    records = well_formed(records)
    if not records:
        return []
    found: list[Finding] = []
    dead_key = "dead_fraction" if _layer_names(records, "dead_fraction") else "input_dead_fraction"
    found += _activation_rule(
        records, dead_key, DEAD_FRACTION, "dead_relu",
        (lambda name, v: f"{v:.0%} of the units of {name} output zero for every example of a batch: they are "
                         "dead, get no gradient and will not learn again.") if dead_key == "dead_fraction" else
        (lambda name, v: f"{v:.0%} of the inputs of {name} are zero for every example of a batch: the units "
                         "that feed it are dead, get no gradient and will not learn again."),
        "Lower the learning rate (3-10x) and re-initialise the network (dead units do not come back); check "
        "bias_init (a negative bias kills ReLUs from the start), use He (kaiming) init, or switch to "
        "leaky_relu / elu, which keep a gradient below zero.")
    # dormant units include the dead ones (a dead ReLU unit scores 0): a layer dead_relu already
    # names is left out, so dormant_units speaks only of what it adds: non-ReLU layers (tanh,
    # GELU, SiLU, recurrent ...) and ReLU layers whose units are alive but nearly silent
    # (fewer than DEAD_FRACTION dead, at least DORMANT_FRACTION dormant)
    reported = {name for f in found for name in f.evidence.get("layers", {})}
    found += _activation_rule(
        records, "dormant_fraction", DORMANT_FRACTION, "dormant_units",
        lambda name, v: f"{v:.0%} of the units of {name} are dormant: their mean |output| is at most "
                        f"{DORMANT_TAU:.1%} of the layer's average unit (Sokar et al. 2023), so they contribute "
                        "almost nothing to the next layer and get almost no gradient.",
        "Check the init of the layer feeding it (units whose incoming weights are near zero stay near zero: "
        "use xavier / kaiming init), lower the learning rate or the weight decay, or add normalisation; "
        "re-initialising the dormant units' incoming weights (ReDo, Sokar et al. 2023) revives them.",
        exclude=reported)
    saturated_key = ("saturated_fraction" if _layer_names(records, "saturated_fraction")
                     else "input_saturated_fraction")
    found += _activation_rule(
        records, saturated_key, SATURATED_FRACTION, "saturated_activations",
        lambda name, v: f"{v:.0%} of the {'outputs' if saturated_key == 'saturated_fraction' else 'inputs'} of "
                        f"{name} are saturated (|tanh| > 0.99 or sigmoid outside (0.01, 0.99)), where the local "
                        "gradient is almost zero: those units barely learn.",
        "Scale the init down (xavier for tanh/sigmoid instead of a large init_std), normalise the inputs, "
        "add batch normalisation, or use relu-family units.")
    found += _collapse_rule(records)
    found += _gradient_depth_rules(records)
    found += _update_ratio_rules(records)
    found += _uncleared_rule(records)
    if chance_loss is not None:
        found += _at_chance_rule(records, chance_loss)
    return found


def _uncleared_rule(records: list[dict[str, Any]]) -> list[Finding]:
    """``gradients_accumulate``: ``.grad`` was not cleared before the backward pass."""
    recs = [r for r in records[1:] if isinstance(r.get("uncleared_grad_ratio"), int | float)]
    ratios = [float(r["uncleared_grad_ratio"]) for r in recs]
    flags = [not math.isfinite(v) or v >= UNCLEARED_RATIO for v in ratios]
    if len(recs) < 2 or sum(flags) < PERSIST_FRACTION * len(flags):
        return []
    norms = [sum(v.get("grad_norm", 0.0) ** 2 for v in r["layers"].values()
                 if isinstance(v.get("grad_norm"), int | float) and math.isfinite(v["grad_norm"])) ** 0.5
             for r in recs]
    losses = [r.get("loss") for r in recs]
    first = next(i for i, f in enumerate(flags) if f)
    return [Finding(
        "gradients_accumulate", "error",
        f"Before the backward pass the gradients still held {_median(ratios):.3g}x the new gradient (median over "
        f"{len(recs)} samples; 0 after optimizer.zero_grad()): each step adds to every earlier step's gradient. "
        f"The gradient norm went from {norms[0]:.3g} to {norms[-1]:.3g} while the loss went from "
        f"{_fmt_loss(losses[0])} to {_fmt_loss(losses[-1])}.",
        "Call optimizer.zero_grad() before each loss.backward() (or after each optimizer.step()). To accumulate "
        "gradients over micro-batches on purpose, zero them after every optimizer.step().",
        {"uncleared_grad_ratio_median": _median(ratios), "threshold": UNCLEARED_RATIO, "samples": len(recs),
         "grad_norm_first": norms[0], "grad_norm_last": norms[-1], "loss_first": losses[0], "loss_last": losses[-1]},
        step=recs[first]["step"])]


def _fmt_loss(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, int | float) else "n/a"


def _at_chance_rule(records: list[dict[str, Any]], chance_loss: float) -> list[Finding]:
    """``loss_at_chance``: the training loss has not left the chance level."""
    losses = [float(r["loss"]) for r in records if isinstance(r.get("loss"), int | float) and math.isfinite(r["loss"])]
    if len(losses) < AT_CHANCE_MIN_SAMPLES or not chance_loss > 0:
        return []
    recent = _median(losses[-max(1, len(losses) // 3):])
    if recent < (1 - AT_CHANCE_TOLERANCE) * chance_loss:
        return []
    return [Finding(
        "loss_at_chance", "warning",
        f"After {records[-1]['step']} steps the training loss is still {recent:.4g} (median of the last third of "
        f"the samples), within {AT_CHANCE_TOLERANCE:.0%} of the chance loss {chance_loss:.4g} that a guess "
        f"ignoring the inputs gets: the network has learned nothing from them.",
        "Check that each label still goes with its input (labels shuffled or sorted separately from the inputs "
        "is the classic cause), that the loss gets the targets it expects, and that the network is not dead "
        "(see dead_relu); then overfit a handful of examples to prove the pipeline can learn.",
        {"recent_loss": recent, "chance_loss": chance_loss, "tolerance": AT_CHANCE_TOLERANCE,
         "steps": records[-1]["step"], "samples": len(losses)}, step=records[-1]["step"])]


def _others(affected: dict[str, float], worst: str, fmt: str) -> str:
    rest = [f"{name} {format(value, fmt)}" for name, value in affected.items() if name != worst]
    if not rest:
        return ""
    shown = ", ".join(rest[:4]) + (f" and {len(rest) - 4} more" if len(rest) > 4 else "")
    return f" Also affected: {shown}."


def _activation_rule(records: list[dict[str, Any]], key: str, threshold: float, finding_id: str,
                     message: Callable[[str, float], str], advice: str,
                     exclude: Collection[str] = ()) -> list[Finding]:
    ongoing: dict[str, float] = {}
    at_init: dict[str, tuple[float, int | None]] = {}
    first_step: dict[str, int] = {}
    for name in _layer_names(records, key):
        if name in exclude:
            continue
        recs = [r for r in records if key in r["layers"].get(name, {})]
        values = [r["layers"][name][key] for r in recs]
        flags = [v >= threshold for v in values]
        persistence = _persistence(flags)
        if persistence == "ongoing":
            ongoing[name] = _median(values[-max(1, len(values) // 3):])
            first_step[name] = recs[flags.index(True)]["step"]
        elif persistence == "at_init":
            at_init[name] = (values[0], _recovered_step(recs, flags))
    if ongoing:
        worst = max(ongoing, key=ongoing.__getitem__)
        return [Finding(finding_id, "warning", message(worst, ongoing[worst]) + _others(ongoing, worst, ".0%"),
                        advice, {key: ongoing[worst], "threshold": threshold, "layers": ongoing,
                                 "first_step": first_step[worst]},
                        layer=worst, step=first_step[worst])]
    if at_init:
        worst = max(at_init, key=lambda n: at_init[n][0])
        value, cleared = at_init[worst]
        text = message(worst, value) + f" This was so at initialisation and had cleared by step {cleared}."
        return [Finding(finding_id, "info", text, advice,
                        {key: value, "threshold": threshold, "layers": {n: v for n, (v, _) in at_init.items()},
                         "cleared_by_step": cleared}, layer=worst, step=records[0]["step"])]
    return []


def _collapse_rule(records: list[dict[str, Any]]) -> list[Finding]:
    names = _layer_names(records, "act_std")
    if len(names) < 3:
        return []
    flags, firsts = [], []
    for record in records:
        stds = [record["layers"].get(n, {}).get("act_std") for n in names]
        if any(s is None or not math.isfinite(s) for s in stds) or stds[0] <= 0:
            flags.append(False)
            firsts.append(None)
            continue
        # shrinking layer after layer (one exception allowed) down to below 1% of the first; the
        # layers after the smallest may grow again (later weights scale up to compensate) and the
        # signal is still lost in between
        low = min(range(len(stds)), key=stds.__getitem__)
        falls = sum(b < a for a, b in zip(stds[:low], stds[1:low + 1], strict=False))
        flags.append(low >= 2 and stds[low] < COLLAPSE_RATIO * stds[0] and falls >= low - 1)
        # the onset: the first layer whose std is under half that of the layer before it
        firsts.append(next((names[k] for k in range(1, len(stds)) if stds[k] < 0.5 * stds[k - 1]), names[low]))
    persistence = _persistence(flags)
    if persistence is None:
        return []
    index = len(flags) - 1 if persistence == "ongoing" else 0
    while persistence == "ongoing" and not flags[index]:
        index -= 1
    stds = [records[index]["layers"][n]["act_std"] for n in names]
    layer = firsts[index]
    low = min(range(len(stds)), key=stds.__getitem__)
    text = (f"The activation std shrinks layer after layer, from {stds[0]:.3g} in {names[0]} to {stds[low]:.3g} in "
            f"{names[low]} (shrinking from {layer} on): deep layers see almost nothing, and their "
            "gradients are as small.")
    if persistence == "at_init":
        text += f" This was so at initialisation and had cleared by step {_recovered_step(records, flags)}."
    return [Finding(
        "activation_collapse", "warning" if persistence == "ongoing" else "info", text,
        "The init is too small for this depth: use xavier (tanh/sigmoid) or kaiming (relu) init instead of a "
        "small init_std, or add batch normalisation.",
        {"act_std": dict(zip(names, stds, strict=False)), "ratio_smallest_to_first": stds[low] / stds[0],
         "threshold": COLLAPSE_RATIO, "step": records[index]["step"]},
        layer=layer, step=records[index]["step"])]


def _gradient_depth_rules(records: list[dict[str, Any]]) -> list[Finding]:
    """Compare the gradient arriving at the first monitored layer with the one at the last
    (RMS per element of the backpropagated signal; the weight gradients' RMS when the model
    has no monitored activations)."""
    key = "act_grad_rms"
    names = _layer_names(records, key)
    if len(names) < 2:
        key = "grad_rms"
        names = _layer_names(records, key)
    if len(names) < 2:
        return []
    first, last = names[0], names[-1]
    ratios = []
    for record in records:
        a, b = record["layers"].get(first, {}).get(key), record["layers"].get(last, {}).get(key)
        ok = a is not None and b is not None and math.isfinite(a) and math.isfinite(b) and b > 0
        ratios.append(a / b if ok else float("nan"))
    found = []
    for finding_id, test, threshold in (("vanishing_gradients", lambda r: r < VANISHING_RATIO, VANISHING_RATIO),
                                        ("exploding_gradients", lambda r: r > EXPLODING_RATIO, EXPLODING_RATIO)):
        flags = [math.isfinite(r) and test(r) for r in ratios]
        persistence = _persistence(flags)
        if persistence is None:
            continue
        tail = ratios[-max(1, len(ratios) // 3):]
        ratio = _median(tail) if persistence == "ongoing" else ratios[0]
        if finding_id == "vanishing_gradients":
            text = (f"The gradient reaching {first} is {ratio:.2g}x the one at {last} (RMS per element): it fades "
                    "on the way back, so the first layers barely learn.")
            advice = ("Use relu-family activations instead of sigmoid/tanh in deep stacks, xavier/kaiming init, "
                      "batch normalisation, or residual connections (model.kind: resnet).")
        else:
            text = (f"The gradient reaching {first} is {ratio:.2g}x the one at {last} (RMS per element): it grows "
                    "on the way back, so the first layers take huge, unstable steps.")
            advice = ("Scale the init down (xavier/kaiming instead of a large init_std), add batch normalisation, "
                      "clip gradients (optimizer.grad_clip) and lower the learning rate.")
        if persistence == "at_init":
            text += f" This was so at initialisation and had cleared by step {_recovered_step(records, flags)}."
        found.append(Finding(
            finding_id, "warning" if persistence == "ongoing" else "info", text, advice,
            {"gradient_ratio_first_to_last": ratio, "threshold": threshold, "first_layer": first,
             "last_layer": last, "measured_on": key, "samples": len(ratios)},
            layer=first, step=records[flags.index(True)]["step"]))
    return found


def _update_ratio_rules(records: list[dict[str, Any]]) -> list[Finding]:
    recs = _after_first_step(records)
    medians = {name: _median(_series(recs, name, "update_ratio")) for name in _layer_names(recs, "update_ratio")}
    medians = {name: value for name, value in medians.items() if math.isfinite(value)}
    found = []
    high = {name: v for name, v in medians.items() if v > UPDATE_RATIO_HIGH}
    low = {name: v for name, v in medians.items() if v < UPDATE_RATIO_LOW}
    if high:
        worst = max(high, key=high.__getitem__)
        found.append(Finding(
            "update_ratio_high", "warning",
            f"Each step changes the weights of {worst} by {high[worst]:.2g} of their size (median ||Δw||/||w||); "
            f"about 1e-3 is healthy. Steps this large bounce around instead of descending."
            + _others(high, worst, ".2g"),
            "Lower the learning rate (3-10x; babysit lr-find suggests one) or add warmup.",
            {"update_ratio_median": high[worst], "layers": high, "threshold": UPDATE_RATIO_HIGH, "healthy": 1e-3,
             "samples": len(recs)}, layer=worst))
    if low:
        worst = min(low, key=low.__getitem__)
        size = ("do not change at all" if low[worst] == 0 else
                f"change by only {low[worst]:.2g} of their size per step (median ||Δw||/||w||)")
        found.append(Finding(
            "update_ratio_low", "warning",
            f"The weights of {worst} {size}; about 1e-3 is healthy. At this pace the layer hardly learns."
            + _others(low, worst, ".2g"),
            "Raise the learning rate (3-10x; babysit lr-find suggests one); check that the layer gets a "
            "gradient at all (frozen weights, dead units, vanishing gradients).",
            {"update_ratio_median": low[worst], "layers": low, "threshold": UPDATE_RATIO_LOW, "healthy": 1e-3,
             "samples": len(recs)}, layer=worst))
    return found


__all__ = ["AT_CHANCE_MIN_SAMPLES", "AT_CHANCE_TOLERANCE", "COLLAPSE_RATIO", "DEAD_FRACTION", "DORMANT_FRACTION",
           "DORMANT_TAU", "EXPLODING_RATIO",
           "PERSIST_FRACTION", "SATURATED_FRACTION", "UNCLEARED_RATIO",
           "SATURATION_LEVEL", "UPDATE_RATIO_HIGH", "UPDATE_RATIO_LOW", "VANISHING_RATIO", "monitor_findings",
           "monitor_summary"]
