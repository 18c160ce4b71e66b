"""The weight-decay timescale (Wang and Aitchison 2024, "How to set AdamW's weight decay as you
scale model and dataset size", arXiv 2405.13698).

Decoupled weight decay multiplies the weights by (1 - lr * wd) each step, so it forgets on a
timescale of tau = 1 / (lr * wd) steps (an exponential moving average of the updates over
that many steps). SGD with an L2 term does the same, and heavy-ball momentum m stretches the
step to lr / (1 - m). The paper's point is that tau, not wd alone, is what to set, as a
fraction of the run:

- ``weight_decay_ineffective`` (info): tau longer than the whole run; the decay has barely
  acted by the end (the weights shrank by less than a factor e), so ``weight_decay`` is not
  the regulariser the spec suggests;
- ``weight_decay_too_strong`` (warning): tau shorter than one epoch; the weights forget what
  an epoch taught them before the next one (the paper finds tau of a good fraction of the run
  best, and under an epoch the model can only hold what the last few batches said).

With a schedule the sum of the learning rates over the run replaces lr x steps (the decay
over the run is exp(-wd * sum of lr)). Adam with L2 in the gradient (``adam``, not ``adamw``)
rescales the decay by its preconditioner, so it has no such timescale and is skipped, as are
optimizers that set their own step (L-BFGS, Newton) or have no decay.

Example
-------
>>> [f.id for f in weight_decay_timescale("adamw", 0.01, 2.0, 0.0, lr_sum=0.01 * 1000, steps=1000,
...                                        steps_per_epoch=100)]
['weight_decay_too_strong']
>>> [f.id for f in weight_decay_timescale("adamw", 0.003, 0.01, 0.0, lr_sum=0.003 * 1000, steps=1000,
...                                        steps_per_epoch=100)]
['weight_decay_ineffective']
>>> weight_decay_timescale("adamw", 0.01, 0.1, 0.0, lr_sum=0.01 * 2000, steps=2000, steps_per_epoch=40)
[]
"""

from __future__ import annotations

import math

from babysit.checks.findings import Finding

# optimizers whose decay shrinks the weights by lr * wd a step (decoupled, or L2 under SGD)
DECOUPLED = ("adamw", "sgd", "momentum", "nesterov")
HEAVY_BALL = ("momentum", "nesterov")


def weight_decay_timescale(optimizer: str, lr: float, weight_decay: float, momentum: float, *, lr_sum: float,
                           steps: int, steps_per_epoch: int) -> list[Finding]:
    """The weight-decay findings of a run: ``optimizer`` name, its ``lr``, ``weight_decay`` and
    ``momentum``; ``lr_sum`` the sum of the learning rates of every step taken; ``steps`` how
    many; ``steps_per_epoch``."""
    if optimizer not in DECOUPLED or not weight_decay > 0 or not lr > 0 or steps < 1 or steps_per_epoch < 1:
        return []
    stretch = 1 / (1 - momentum) if optimizer in HEAVY_BALL or (optimizer == "sgd" and momentum > 0) else 1.0
    tau = 1 / (lr * stretch * weight_decay)  # steps, at the spec's learning rate
    decay_over_run = weight_decay * stretch * lr_sum  # the weights shrink by exp(-this) over the run
    evidence = {"tau_steps": tau, "steps": steps, "steps_per_epoch": steps_per_epoch, "lr": lr,
                "weight_decay": weight_decay, "momentum_stretch": stretch, "decay_over_run": decay_over_run,
                "reference": "Wang & Aitchison 2024, arXiv 2405.13698"}
    if tau < steps_per_epoch:
        return [Finding(
            "weight_decay_too_strong", "warning",
            f"Weight decay {weight_decay:g} at learning rate {lr:g} forgets the weights every {tau:.3g} steps "
            f"(tau = 1/(lr x wd)), under one epoch of {steps_per_epoch} steps: what an epoch teaches is gone "
            "before the next one.",
            f"Lower optimizer.weight_decay so that tau is a good fraction of the run ({steps} steps): about "
            f"{1 / (lr * stretch * steps / 3):.2g} gives a third of it.",
            evidence)]
    if decay_over_run < 1:
        return [Finding(
            "weight_decay_ineffective", "info",
            f"Weight decay {weight_decay:g} at learning rate {lr:g} acts on a timescale of {tau:.3g} steps "
            f"(tau = 1/(lr x wd)), longer than the run's {steps}: over the run it shrank the weights by only "
            f"{1 - math.exp(-decay_over_run):.0%}, so it regularised little.",
            f"For weight decay that acts within the run, raise optimizer.weight_decay toward "
            f"{1 / (lr * stretch * steps / 3):.2g} (tau a third of the run); or leave it, if little was meant.",
            evidence)]
    return []


__all__ = ["DECOUPLED", "HEAVY_BALL", "weight_decay_timescale"]
