"""Spec -> optimizer, learning-rate schedule, loss and regularizers, all on torch's own pieces.

- :mod:`~babysit.optim.losses`: ``build_loss``, ``output_dim``, ``predict``.
- :mod:`~babysit.optim.optimizers`: ``build_optimizer`` (torch.optim, fused kernels where
  available) and ``parameter_groups`` (weight decay on weight matrices only).
- :mod:`~babysit.optim.schedules`: ``build_schedule`` -> :class:`Schedule` (torch.optim.lr_scheduler glue).
- :mod:`~babysit.optim.regularization`: L1, max-norm, activity penalty, input noise.

Example
-------
>>> import torch
>>> from babysit.config import Experiment
>>> spec = Experiment()
>>> model = torch.nn.Sequential(torch.nn.Linear(40, 100), torch.nn.ReLU(), torch.nn.Linear(100, 10))
>>> optimizer = build_optimizer(spec.optimizer, model)
>>> schedule = build_schedule(spec.schedule, optimizer, steps_per_epoch=36, epochs=spec.train.epochs)
>>> loss_fn = build_loss(spec.loss, "classification", num_classes=10)
"""

from babysit.optim.losses import LOSSES, build_loss, output_dim, predict
from babysit.optim.optimizers import build_optimizer, parameter_groups, weight_matrices
from babysit.optim.regularization import (
    ActivityRegularizer,
    add_input_noise,
    apply_max_norm,
    l1_penalty,
)
from babysit.optim.schedules import Schedule, build_schedule

__all__ = [
    "LOSSES",
    "ActivityRegularizer",
    "Schedule",
    "add_input_noise",
    "apply_max_norm",
    "build_loss",
    "build_optimizer",
    "build_schedule",
    "l1_penalty",
    "output_dim",
    "parameter_groups",
    "predict",
    "weight_matrices",
]
