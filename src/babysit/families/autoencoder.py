"""The autoencoder family (``model.kind: autoencoder``): the network reproduces its input.

The targets are the inputs (a regression onto every input value, ``loss: mse``), and the run
keeps ``reconstructions.npz``: held-out inputs and their reconstructions in the data's units
(the preprocessing undone), which the report draws one above the other.

Example
-------
>>> from babysit.config import Experiment
>>> from babysit import data
>>> spec = Experiment(model={"kind": "autoencoder"}, data={"source": "digits"})
>>> splits = AUTOENCODER.adapt(spec, data.load(spec.data))
>>> splits.task, splits.target_dim, bool((splits.train.y == splits.train.x).all())
('regression', 64, True)
"""

from __future__ import annotations

import dataclasses
import math

import torch

from babysit.config import Experiment
from babysit.data import Split, Splits
from babysit.errors import BabysitError
from babysit.families.protocol import RunContext
from babysit.families.standard import StandardFamily, refuse_token_ids, shown_split, to_data_units
from babysit.rundir import save_npz

RECONSTRUCTIONS_SHOWN = 16  # test examples drawn with their reconstructions


class AutoencoderFamily(StandardFamily):
    name = "autoencoder"

    def claims(self, spec: Experiment) -> bool:
        return spec.model.kind == "autoencoder"

    def validate(self, spec: Experiment) -> None:
        super().validate(spec)
        moved = [name for name in spec.data.augment if name != "noise"]
        if moved:  # the targets are the unaugmented inputs: the net would learn to undo the move
            raise BabysitError(f"data.augment: {', '.join(moved)} not for kind autoencoder (its targets are its own "
                               "inputs, which the augmentation would move away from them); noise alone trains a "
                               "denoising autoencoder")

    def adapt(self, spec: Experiment, splits: Splits) -> Splits:
        refuse_token_ids(spec, splits)

        def self_targets(split: Split | None) -> Split | None:
            return None if split is None else Split(split.x, split.x)

        return dataclasses.replace(
            splits, train=self_targets(splits.train), val=self_targets(splits.val), test=self_targets(splits.test),
            task="regression", num_classes=None, target_dim=math.prod(splits.input_shape), class_names=None)

    @torch.no_grad()
    def artifacts(self, run: RunContext) -> None:
        model, splits = run.model, run.splits
        was_training = model.training
        model.eval()
        try:
            x = shown_split(splits).x[:RECONSTRUCTIONS_SHOWN]
            display = to_data_units(splits)
            save_npz(run.path / "reconstructions.npz", inputs=display(x).float().cpu().numpy(),
                     outputs=display(model(x)).float().cpu().numpy())
        finally:
            model.train(was_training)


AUTOENCODER = AutoencoderFamily()

__all__ = ["AUTOENCODER", "AutoencoderFamily"]
