"""A spec's device, data, network and loss, as every command that trains or loads a run builds them.

Example
-------
>>> from babysit.config import Experiment
>>> device, splits, model, loss_fn = prepare(Experiment(data={"source": "spirals", "samples": 90}))
>>> device.type, splits.task
('cpu', 'classification')
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from babysit import data as data_module
from babysit import nets
from babysit.config import Experiment
from babysit.errors import BabysitError
from babysit.families import family_of
from babysit.optim import regularization
from babysit.train.device import resolve_device, seed_everything


def prepare(spec: Experiment, splits: data_module.Splits | None = None, *, two_networks: bool = False
            ) -> tuple[torch.device, data_module.Splits, nn.Module, Any]:
    """Validate the spec with its family, seed, then the device, the data on it (adapted by
    the family), the initialised network and the loss. ``splits`` replaces the data
    ``spec.data`` describes (a cross-validation fold, for instance). A family of two networks
    (the GAN) is refused unless ``two_networks``: the commands that take one network and one
    loss (lr-find, batch-find, landscape...) cannot use it."""
    family = family_of(spec)
    if family.single_network_refusal is not None and not two_networks:
        raise BabysitError(family.single_network_refusal)
    family.validate(spec)
    device = resolve_device(spec.train.device)
    seed_everything(spec.seed)
    splits = (splits if splits is not None else data_module.load(spec.data)).to(device)
    if splits.streaming:
        check_streamable(spec, family.name)
    splits = family.adapt(spec, splits)
    model, loss_fn = family.build(spec, splits)
    model = model.to(device)
    if device.type == "cuda" and any(isinstance(m, nn.Conv2d) for m in model.modules()):
        # tensor cores want NHWC: convert the weights and the (in-memory) inputs once
        model = model.to(memory_format=torch.channels_last)
        for split in (splits.train, splits.val, splits.test):
            if split is not None and split.x.dim() == 4:
                split.x = split.x.contiguous(memory_format=torch.channels_last)
    return device, splits, model, loss_fn


def check_streamable(spec: Experiment, family: str) -> None:
    """Data streamed from disk (larger than ``data.in_memory_limit``) trains the standard
    family's networks; what needs every example in memory at once is refused in one line."""
    if family != "standard":
        raise BabysitError(f"data.in_memory_limit: the data set is larger than it and streams from disk, which "
                           f"model.kind {spec.model.kind} does not support (it needs the data in memory); "
                           "raise data.in_memory_limit")
    if spec.checks.label_noise:
        raise BabysitError("checks.label_noise: it refits the network on in-memory folds of the training split, and "
                           "the data set is larger than data.in_memory_limit (it streams from disk): turn it off")


def make_penalty(spec: Experiment, model: nn.Module) -> tuple[Any, regularization.ActivityRegularizer | None]:
    """L1 on weights and the activity penalty as one ``model -> scalar`` function (or None)."""
    reg = spec.regularization
    return regularization.penalty_function(reg.l1, reg.activity, nets.activation_modules(model))


__all__ = ["check_streamable", "make_penalty", "prepare"]
