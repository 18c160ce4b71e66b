"""Checks of the held-out splits against the training split: what a run's own curves cannot
show, because the model is fine and the data is not.

- ``heldout_out_of_range``: the preprocessed validation or test inputs go far beyond
  anything in the preprocessed training inputs (a feature nearly constant on the training
  split, standardised by its tiny std, maps a held-out value to 87 training stds);
- ``test_val_gap``: the test loss is far above the validation loss, while training and
  validation agree (the test split is not like the others, or not prepared like them).

Example
-------
>>> import torch
>>> train = torch.randn(200, 3)
>>> test = torch.randn(100, 3)
>>> test[0, 2] = 80.0  # one value 80 stds out
>>> [f.id for f in heldout_range(train, {"test": test})]
['heldout_out_of_range']
>>> heldout_range(train, {"test": torch.randn(100, 3)})
[]
"""

from __future__ import annotations

import math
from typing import Any

import torch

from babysit.checks.findings import Finding
from babysit.data.streaming import bounded

# A held-out value beyond its feature's training range by more than FAR_OUTSIDE stds of the
# training inputs (pooled over every feature) is one the network never saw anything like:
# Gaussian features of 1,000+ examples have ranges of +-3.5 std, and a test value 10 std past
# them has probability ~1e-23. Per-pixel standardised digits put test pixels 50+ std out;
# per-channel standardised, under 3.
FAR_OUTSIDE = 10.0
# A held-out split needs this many examples to be judged.
MIN_HELDOUT = 20
# The test loss is "far above" the validation loss when it exceeds it by half of it, by 3x the
# train/validation difference, and by a tenth of the chance loss, all three: seed noise on
# the examples' test/validation pairs stays within 20% (tests/golden: spirals 0.459/0.470,
# mnist1d-cnn 1.128/1.223), and small losses (L-BFGS on spirals, 0.058 against 0.017) differ
# by a lot relative to themselves and little against chance. Per-pixel standardised digits
# (the autoencoder): test MSE 1.14 against 0.72 on validation and 0.74 on training.
TEST_VAL_RELATIVE = 0.5
TEST_VAL_AGAINST_TRAIN = 3.0
TEST_VAL_AGAINST_CHANCE = 0.1


def heldout_range(train_x: torch.Tensor, heldout: dict[str, torch.Tensor | None]) -> list[Finding]:
    """``heldout_out_of_range`` when a held-out split's (preprocessed) inputs lie more than
    :data:`FAR_OUTSIDE` pooled training stds beyond their feature's training range. Inputs
    streamed from disk are judged on their first :data:`~babysit.data.streaming.SAMPLE_EXAMPLES`
    examples (the training range of those, against the held-out splits' first ones)."""
    train_x = bounded(train_x)
    heldout = {name: None if x is None else bounded(x) for name, x in heldout.items()}
    if not torch.is_floating_point(train_x) or len(train_x) < 2:
        return []
    train = train_x.detach().reshape(len(train_x), -1).double()
    if not torch.isfinite(train).all():
        return []
    lo, hi = train.amin(0), train.amax(0)
    pooled = train.std().item()
    if not pooled > 0:
        return []
    worst: tuple[float, str, int, float] | None = None
    counts: dict[str, int] = {}
    for name, x in heldout.items():
        if x is None or len(x) < MIN_HELDOUT or not torch.is_floating_point(x):
            continue
        z = x.detach().reshape(len(x), -1).double()
        outside = torch.maximum(z - hi, lo - z).clamp_min(0).nan_to_num(0.0)  # (N, D): distance past the range
        beyond = outside.amax(0) / pooled  # (D,), in pooled training stds
        far = beyond > FAR_OUTSIDE
        counts[name] = int(far.sum())
        j = int(beyond.argmax())
        if far.any() and (worst is None or beyond[j].item() > worst[0]):
            worst = (beyond[j].item(), name, j, z[outside[:, j].argmax(), j].item())  # the value furthest out
    if worst is None:
        return []
    excess, split, feature, value = worst
    splits = ", ".join(f"{counts[n]} of {train.shape[1]} features in {n}" for n in counts if counts[n])
    return [Finding(
        "heldout_out_of_range", "warning",
        f"After preprocessing, {split} inputs go far beyond anything in training: feature {feature} takes "
        f"{value:.3g} in {split}, {excess:.0f} training stds past its training range [{lo[feature].item():.3g}, "
        f"{hi[feature].item():.3g}] ({splits}). The network has seen nothing like these values; its outputs "
        "on them are guesses.",
        "Check the preprocessing: a feature nearly constant on the training split, standardised by its tiny "
        "std, blows up any other value (standardise images per channel, not per pixel: the default does; "
        "or drop near-constant features). Else the held-out data does not come from the training data's "
        "distribution (other units, another source).",
        {"split": split, "feature": feature, "value": value, "train_min": lo[feature].item(),
         "train_max": hi[feature].item(), "stds_beyond": excess, "threshold_stds": FAR_OUTSIDE,
         "features_beyond": counts, "pooled_train_std": pooled})]


def val_test_gap(summary: dict[str, Any], chance_loss: float | None) -> list[Finding]:
    """``test_val_gap`` when the kept model's test loss is far above its validation loss
    while training and validation agree (see the thresholds above).

    Example
    -------
    >>> [f.id for f in val_test_gap({"train_loss": 0.74, "val_loss": 0.72, "test_loss": 1.14}, 1.0)]
    ['test_val_gap']
    >>> val_test_gap({"train_loss": 0.46, "val_loss": 0.47, "test_loss": 0.46}, 1.1)
    []
    >>> [f.id for f in val_test_gap({"train_loss": 0.0, "val_loss": 0.0, "test_loss": 0.5}, 0.69)]
    ['test_val_gap']
    """
    train, val, test = (summary.get(k) for k in ("train_loss", "val_loss", "test_loss"))
    if not all(isinstance(v, int | float) and math.isfinite(v) for v in (train, val, test)):
        return []
    gap = test - val
    bars = [TEST_VAL_RELATIVE * val, TEST_VAL_AGAINST_TRAIN * abs(val - train)]
    if chance_loss is not None and math.isfinite(chance_loss):
        bars.append(TEST_VAL_AGAINST_CHANCE * chance_loss)
    if gap <= max(bars):
        return []
    return [Finding(
        "test_val_gap", "warning",
        f"The test loss is {test:.4g}, {f'{test / val:.2g}x' if val > 0 else 'far above'} the validation loss "
        f"{val:.4g}, while training "
        f"({train:.4g}) and validation differ by only {abs(val - train):.2g}: the test split is not like the "
        "other two, or not prepared like them. The validation figures overstate how the model does on it.",
        "Check that the test data comes from the same source and is preprocessed with the training "
        "statistics (see heldout_out_of_range when it fired); with a small test split, look at its size "
        "and class balance.",
        {"train_loss": train, "val_loss": val, "test_loss": test, "gap": gap, "bars": bars,
         "chance_loss": chance_loss})]


__all__ = ["FAR_OUTSIDE", "MIN_HELDOUT", "TEST_VAL_AGAINST_CHANCE", "TEST_VAL_AGAINST_TRAIN", "TEST_VAL_RELATIVE",
           "heldout_range", "val_test_gap"]
