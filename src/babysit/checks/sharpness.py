"""Sharpness and the edge of stability: the optimizer's stability threshold, and the findings.

Cohen, Kaur, Li, Kolter & Talwalkar, "Gradient Descent on Neural Networks Typically Occurs
at the Edge of Stability" (ICLR 2021, arXiv 2103.00065). Gradient descent with step η on a
quadratic of top curvature λ diverges along the top eigenvector once λ > 2/η. Trained
full-batch, a network's sharpness λmax (the top Hessian eigenvalue of the training loss)
first rises ("progressive sharpening") until it reaches 2/η, then hovers there ("edge of
stability") while the loss keeps falling over the long run, non-monotonically.

Cohen et al., "Adaptive Gradient Methods at the Edge of Stability" (arXiv 2207.14484): for
a preconditioned method θ ← θ − η P⁻¹ m the quantity is the preconditioned sharpness
λmax(P⁻¹H), and with Adam's momentum (an exponential average, β₁) the threshold is
(2 + 2β₁)/((1 − β₁)η), 38/η at β₁ = 0.9.

:func:`stability_rule` reads the threshold off a torch optimizer (its type and its first
parameter group), :func:`preconditioner_diagonal` the diagonal P of an adaptive one, and
:func:`sharpness_findings` turns the samples of ``sharpness.jsonl`` (written by
:class:`babysit.train.callbacks.sharpness.SharpnessCallback`) into ``edge_of_stability``
(info) and ``lr_beyond_stability`` (warning).

Each threshold below is the exact stability limit of the optimizer's update on a quadratic
with the preconditioner frozen: the roots of its characteristic polynomial leave the unit
disc there (tests/test_sharpness.py runs torch's own SGD on a quadratic either side of each).

Example
-------
>>> import torch
>>> opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1, momentum=0.9)
>>> rule = stability_rule(opt)
>>> rule.rule, round(rule.threshold(0.1), 6)
('2(1+m)/η, m=0.9', 38.0)
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from babysit.checks.findings import Finding

# --------------------------------------------------------------------------- the rules' bars

# Cohen et al. 2021 (arXiv 2103.00065, abstract): at the edge of stability λmax "hovers just
# above" 2/η. Measured on the tanh MLP of tests/test_sharpness.py (full-batch GD, MSE; seeds 0-4
# x lr 0.7, 1.0, 1.5, 2.0; λmax every 20 steps): over the second half of each run the median
# ratio λmax/(2/η) was 1.00-1.04, single samples dipping to 0.885; 0.9 for CONSECUTIVE samples
# found the edge in all 20 runs, and no sample before the sharpening reached it stayed above.
EDGE_RATIO = 0.9
# Sustained 20% above the threshold is no longer the edge: there the dynamics pull λmax back to
# 2/η within a few steps (Cohen et al. 2021; Damian, Nichani & Lee, "Self-Stabilization: The Implicit
# Bias of Gradient Descent at the Edge of Stability", arXiv 2209.15594). The same 20 runs overshot to 1.06-1.45 on their way into the
# edge but held >= 1.2 for at most 2 consecutive samples, and lr doubled mid-run (1.0 -> 2.0) came
# back below 1.2 within 20 steps. Held for CONSECUTIVE samples with the loss not descending,
# gradient descent is unstable along the top eigenvector and not recovering.
BEYOND_RATIO = 1.2
CONSECUTIVE = 5  # samples a ratio must hold for (one off-sample is noise, not a regime)


# --------------------------------------------------------------------------- the thresholds


@dataclass(frozen=True)
class Stability:
    """The stability threshold of an optimizer: ``threshold(lr) = factor / lr`` on the
    sharpness of ``preconditioner`` (None: λmax(H); else λmax(P⁻¹H) with P the diagonal of
    that optimizer, :func:`preconditioner_diagonal`). ``factor`` None: no threshold (the
    optimizer sets its own step length), ``note`` says why."""

    factor: float | None
    rule: str
    preconditioner: str | None = None
    note: str | None = None

    def threshold(self, lr: float) -> float | None:
        if self.factor is None or not (lr > 0 and math.isfinite(lr)):
            return None
        return self.factor / lr

    @property
    def quantity(self) -> str:
        return "λmax(P⁻¹H)" if self.preconditioner else "λmax(H)"


def _sgd_rule(momentum: float, dampening: float, nesterov: bool) -> Stability:
    if momentum == 0:
        # GD on a quadratic with curvature λ: θ ← (1 − ηλ)θ diverges iff λ > 2/η (Cohen et al. 2021)
        return Stability(2.0, "2/η")
    if nesterov:
        # torch's Nesterov (Sutskever et al. 2013 form): b ← m b + g, θ ← θ − η(g + m b). On
        # a quadratic the characteristic polynomial is z² − (1+m)(1−ηλ) z + m(1−ηλ); z = −1 is
        # a root at ηλ = (2+2m)/(1+2m) (Goh, "Why Momentum Really Works", 2017; torch forbids
        # dampening with Nesterov)
        return Stability((2.0 + 2.0 * momentum) / (1.0 + 2.0 * momentum), f"(2+2m)/((1+2m)η), m={momentum:g}")
    # heavy ball (Polyak 1964; torch: b ← m b + (1−d) g, θ ← θ − η b): z² − (1+m−(1−d)ηλ) z + m,
    # root z = −1 at (1−d)ηλ = 2 + 2m (Goh 2017; Cohen et al. 2021 use 2(1+m)/η)
    rule = f"2(1+m)/η, m={momentum:g}" if dampening == 0 else f"2(1+m)/((1−d)η), m={momentum:g}, d={dampening:g}"
    return Stability(2.0 * (1.0 + momentum) / (1.0 - dampening), rule)


def stability_rule(optimizer: torch.optim.Optimizer) -> Stability:
    """The stability threshold of ``optimizer``'s update, read from its type and its first
    parameter group.

    - SGD: 2/η; heavy-ball momentum m: 2(1+m)/η; Nesterov: (2+2m)/((1+2m)η).
    - Adam, AdamW: λmax(P⁻¹H) against (2+2β₁)/((1−β₁)η) (Cohen et al. 2022). AdamW's decoupled
      decay shrinks the weights by 1 − ηλ a step and moves no eigenvalue of the update map
      past −1. Adam's coupled L2 adds ``weight_decay``/P to P⁻¹H: left out, the sharpness
      is that of the loss alone (with a large decay and tiny gradients it can matter).
    - RMSprop: λmax(P⁻¹H) against 2/η, with momentum μ 2(1+μ)/η (the frozen-preconditioner
      analysis of Cohen et al. 2022 with β₁ = 0).
    - Adagrad: λmax(P⁻¹H) against 2/η' with η' = η/(1 + t·lr_decay), the step torch takes
      next (the same frozen-preconditioner analysis; P only grows, so the ratio falls).
    - Anything else (L-BFGS, babysit's Newton and Quickprop): no threshold; they choose
      their own step length, so λmax is recorded without a finding.

    SGD's coupled weight decay adds at most ``weight_decay`` to the curvature (typically
    1e-4-5e-4 against a 2/η of 2 or more for any lr below 1): ignored, as is an L1 or activity
    penalty.
    """
    if not optimizer.param_groups:
        return Stability(None, "none", note="the optimizer has no parameters")
    group = optimizer.param_groups[0]
    name = type(optimizer).__name__
    if isinstance(optimizer, torch.optim.SGD):
        return _sgd_rule(float(group.get("momentum", 0.0)), float(group.get("dampening", 0.0)),
                         bool(group.get("nesterov", False)))
    if isinstance(optimizer, torch.optim.Adam | torch.optim.AdamW):
        beta1 = float(group["betas"][0])
        if group.get("amsgrad"):
            return Stability(None, "none", note=f"{name} with amsgrad: its preconditioner is max(v̂), not read here")
        # Cohen et al. 2022: Adam with the preconditioner frozen is heavy ball on P⁻¹H with the
        # averaged gradient m ← β₁m + (1−β₁)g, stable iff λ(P⁻¹H) < (2+2β₁)/((1−β₁)η)
        return Stability((2.0 + 2.0 * beta1) / (1.0 - beta1), f"(2+2β₁)/((1−β₁)η), β₁={beta1:g}", "adam")
    if isinstance(optimizer, torch.optim.RMSprop):
        mom = float(group.get("momentum", 0.0))
        rule = "2/η" if mom == 0 else f"2(1+m)/η, m={mom:g}"
        return Stability(2.0 * (1.0 + mom), rule, "rmsprop")
    if isinstance(optimizer, torch.optim.Adagrad):
        return Stability(2.0, "2/η", "adagrad")
    return Stability(None, "none",
                     note=f"{name} chooses its own step length: it has no stability threshold in the lr")


def effective_lr(optimizer: torch.optim.Optimizer) -> float:
    """The step size of the optimizer's next step (its first group's lr; Adagrad's decayed one)."""
    group = optimizer.param_groups[0]
    lr = float(group["lr"])
    if isinstance(optimizer, torch.optim.Adagrad) and group.get("lr_decay", 0):
        steps = max((float(optimizer.state[p]["step"]) for p in group["params"] if p in optimizer.state), default=0.0)
        lr /= 1.0 + steps * float(group["lr_decay"])
    return lr


def preconditioner_diagonal(optimizer: torch.optim.Optimizer, params: Sequence[torch.Tensor],
                            kind: str) -> torch.Tensor:
    """The diagonal of the optimizer's preconditioner P over ``params``, flattened in order.

    - ``adam``: P = (1 − β₁ᵗ)(sqrt(v̂) + ε), v̂ = v/(1 − β₂ᵗ), t the steps taken (Cohen et al.
      2022): torch's step is exactly θ ← θ − η P⁻¹ m with it, the first moment's bias
      correction folded into P.
    - ``rmsprop``: P = sqrt(v) + ε (centered: sqrt(v − ḡ²) + ε), as torch divides by it.
    - ``adagrad``: P = sqrt(Σg²) + ε.

    A parameter without state yet (no step taken) has v = 0: P = ε (Adam: (1 − β₁)ε).
    """
    pieces = []
    for p in params:
        group = next(g for g in optimizer.param_groups if any(q is p for q in g["params"]))
        state = optimizer.state.get(p, {})
        eps = float(group["eps"])
        if kind == "adam":
            beta1, beta2 = (float(b) for b in group["betas"])
            steps = max(float(state["step"]), 1.0) if "step" in state else 1.0
            v = state.get("exp_avg_sq")
            root = torch.zeros_like(p) if v is None else (v / (1.0 - beta2**steps)).sqrt()
            diag = (1.0 - beta1**steps) * (root + eps)
        elif kind == "rmsprop":
            v = state.get("square_avg")
            if v is not None and group.get("centered") and "grad_avg" in state:
                v = v - state["grad_avg"] ** 2
            diag = (torch.zeros_like(p) if v is None else v.clamp(min=0).sqrt()) + eps
        elif kind == "adagrad":
            total = state.get("sum")
            diag = (torch.zeros_like(p) if total is None else total.sqrt()) + eps
        else:
            raise ValueError(f"kind: adam, rmsprop or adagrad, got {kind!r}")
        pieces.append(diag.detach().reshape(-1))
    return torch.cat(pieces)


# --------------------------------------------------------------------------- the findings


def _ratio(record: dict[str, Any]) -> float | None:
    ratio = record.get("ratio")
    return float(ratio) if isinstance(ratio, int | float) and math.isfinite(ratio) else None


def _runs(records: list[dict[str, Any]], bar: float) -> list[list[dict[str, Any]]]:
    """Maximal runs of consecutive samples whose ratio is at least ``bar``, of ``CONSECUTIVE`` or more."""
    runs: list[list[dict[str, Any]]] = []
    current: list[dict[str, Any]] = []
    for record in records:
        ratio = _ratio(record)
        if ratio is not None and ratio >= bar:
            current.append(record)
            continue
        if len(current) >= CONSECUTIVE:
            runs.append(current)
        current = []
    if len(current) >= CONSECUTIVE:
        runs.append(current)
    return runs


def _loss(record: dict[str, Any]) -> float:
    loss = record.get("loss")
    return float(loss) if isinstance(loss, int | float) and math.isfinite(loss) else math.inf


def oscillation(run: list[dict[str, Any]]) -> dict[str, Any]:
    """Whether the eval-batch loss oscillates over ``run``: it rose between at least two pairs of
    consecutive samples (up and down, not a descent), or it ended at or above where it began.
    A missing or non-finite loss counts as a rise (the run is diverging)."""
    losses = [_loss(r) for r in run]
    rises = sum(b > a or math.isinf(b) for a, b in zip(losses, losses[1:], strict=False))
    net_rise = losses[-1] >= losses[0]
    return {"rises": rises, "pairs": len(losses) - 1, "net_rise": net_rise, "oscillates": rises >= 2 or net_rise,
            "loss_first": losses[0], "loss_last": losses[-1]}


def _span(low: float, high: float) -> str:
    return f"{low:.2f}x" if f"{low:.2f}" == f"{high:.2f}" else f"{low:.2f}-{high:.2f}x"


def _describe(run: list[dict[str, Any]]) -> dict[str, Any]:
    ratios = sorted(float(r["ratio"]) for r in run)
    last = run[-1]
    return {"step_first": run[0].get("step"), "step_last": last.get("step"), "samples": len(run),
            "ratio_median": ratios[len(ratios) // 2], "ratio_min": ratios[0], "ratio_max": ratios[-1],
            "lambda_max": last.get("lambda_max"), "threshold": last.get("threshold"), "lr": last.get("lr"),
            "rule": last.get("rule"), "quantity": last.get("quantity", "λmax(H)")}


def sharpness_findings(records: list[dict[str, Any]]) -> list[Finding]:
    """``lr_beyond_stability`` (warning) when the ratio λmax/threshold stays at or above
    :data:`BEYOND_RATIO` for :data:`CONSECUTIVE` samples while the eval-batch loss oscillates
    (:func:`oscillation`); otherwise ``edge_of_stability`` (info) when it stays at or above
    :data:`EDGE_RATIO` that long. Samples without a threshold (L-BFGS, Newton, Quickprop) or a
    finite λmax are left out. One finding at most: the first qualifying run of samples, with
    how many such runs there were.

    Example
    -------
    >>> records = [{"step": 10 * i, "lambda_max": 19.6, "threshold": 20.0, "ratio": 0.98, "lr": 0.1,
    ...             "loss": 1.0 / (i + 1), "rule": "2/η"} for i in range(8)]
    >>> [f.id for f in sharpness_findings(records)]
    ['edge_of_stability']
    """
    rows = [r for r in records if _ratio(r) is not None]
    beyond = [(run, oscillation(run)) for run in _runs(rows, BEYOND_RATIO)]
    oscillating = [(run, osc) for run, osc in beyond if osc["oscillates"]]
    if oscillating:
        run, osc = oscillating[0]
        d = _describe(run)
        lowered = d["lr"] / d["ratio_median"] if d["lr"] else None
        return [Finding(
            "lr_beyond_stability", "warning",
            f"The sharpness stayed above the stability threshold: {d['quantity']} was "
            f"{_span(d['ratio_min'], d['ratio_max'])} the threshold {d['rule']} (median "
            f"{d['ratio_median']:.2f}x; last λ = {d['lambda_max']:.4g} against {d['threshold']:.4g} at lr "
            f"{d['lr']:.4g}) for {d['samples']} consecutive samples, steps {d['step_first']}-{d['step_last']}, "
            f"while the loss on the fixed evaluation batch did not descend (it rose between {osc['rises']} of "
            f"{osc['pairs']} consecutive samples, {osc['loss_first']:.4g} to {osc['loss_last']:.4g}). At the "
            "edge of stability the sharpness hovers at the threshold; this far above it, each step "
            "overshoots along the sharpest direction by more than the last (Cohen et al. 2021, 2022).",
            f"Lower the learning rate by at least the ratio: {d['lr']:.4g} / {d['ratio_median']:.2f} = "
            f"{lowered:.3g} or less. If a schedule raised the lr here (cyclic, one_cycle, restarts), cap its peak; "
            "a warmup (schedule.warmup_steps) lets the network reach flatter regions before the full lr.",
            {**d, **osc, "runs": len(oscillating), "ratio_bar": BEYOND_RATIO, "consecutive": CONSECUTIVE,
             "lr_suggested": lowered},
            step=d["step_first"],
        )]
    edge = _runs(rows, EDGE_RATIO)
    if not edge:
        return []
    d = _describe(edge[0])
    two_over = 2.0 / d["lambda_max"] if d["lambda_max"] else None
    preconditioned = d["quantity"] != "λmax(H)"
    return [Finding(
        "edge_of_stability", "info",
        f"Training reached the edge of stability: {d['quantity']} rose to the stability threshold "
        f"{d['rule']} and stayed there, {_span(d['ratio_min'], d['ratio_max'])} of it (median "
        f"{d['ratio_median']:.2f}x; last λ = {d['lambda_max']:.4g} against {d['threshold']:.4g} at lr "
        f"{d['lr']:.4g}) for {d['samples']} consecutive samples, steps {d['step_first']}-{d['step_last']}. "
        "The optimizer cannot go sharper at this lr without diverging along the top eigenvector, so the "
        "sharpness hovers at the threshold and the loss falls non-monotonically (Cohen et al. 2021"
        + (", 2022 for adaptive methods)." if preconditioned else ")."),
        "Nothing to fix: full-batch and large-batch training normally runs at the edge of stability, "
        "and the loss still falls over the long run. Only if you need a monotone descent (comparing "
        "curves step by step) lower the lr"
        + (f" below 2/λmax = {two_over:.3g}" if two_over and not preconditioned else "")
        + " or warm it up (schedule.warmup_steps).",
        {**d, "runs": len(edge), "ratio_bar": EDGE_RATIO, "consecutive": CONSECUTIVE},
        step=d["step_first"],
    )]


__all__ = ["BEYOND_RATIO", "CONSECUTIVE", "EDGE_RATIO", "Stability", "effective_lr", "oscillation",
           "preconditioner_diagonal", "sharpness_findings", "stability_rule"]
