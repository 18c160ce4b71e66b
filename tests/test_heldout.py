"""The held-out splits against the training split: heldout_out_of_range on per-pixel
standardised digits (the autoencoder example's failure), nothing on per-channel ones or on
the examples; test_val_gap on the figures of that failure, nothing on the examples'."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from sklearn.datasets import load_digits

from babysit import config, data
from babysit.checks.heldout import heldout_range
from babysit.checks.heldout import val_test_gap as val_gap
from babysit.optim import losses

GOLDEN = json.loads((Path(__file__).parent / "golden" / "figures.json").read_text())["cases"]


def _splits(tmp_path, shape):
    x, y = load_digits(return_X_y=True)
    np.savez(tmp_path / "digits.npz", x=(x / 16).reshape(-1, *shape).astype("float32"), y=y)
    return data.load(config.load(None, ["data.source=npz", f"data.path={tmp_path / 'digits.npz'}"]).data)


def _held(splits):
    return {"val": splits.val.x, "test": splits.test.x}


def test_per_pixel_standardised_digits_put_held_out_pixels_far_out(tmp_path):
    splits = _splits(tmp_path, (64,))  # flat: standardize works per feature, i.e. per pixel
    found = heldout_range(splits.train.x, _held(splits))
    assert [f.id for f in found] == ["heldout_out_of_range"]
    assert found[0].evidence["stds_beyond"] > 10


def test_images_are_standardised_per_channel_and_nothing_is_far_out(tmp_path):
    splits = _splits(tmp_path, (1, 8, 8))
    x = splits.train.x
    assert abs(x.mean().item()) < 1e-5 and abs(x.std().item() - 1) < 1e-2  # one mean and std for all pixels
    assert heldout_range(x, _held(splits)) == []


@pytest.mark.parametrize("case", sorted(c for c in GOLDEN if "loss" in json.dumps(GOLDEN[c]["summary"])))
def test_the_examples_show_no_test_val_gap(case):
    summary = GOLDEN[case]["summary"]
    classes = summary["data"]["classes"]
    assert val_gap(summary, math.log(classes) if classes else None) == []


def test_the_autoencoders_per_pixel_figures_are_a_test_val_gap():
    # digits-autoencoder before images were standardised per channel (tests/golden, 2 epochs)
    found = val_gap({"train_loss": 0.737, "val_loss": 0.719, "test_loss": 1.142}, 1.0)
    assert [f.id for f in found] == ["test_val_gap"]


def test_the_examples_inputs_stay_in_range():
    for spec_file in ("digits-cnn.yaml", "mnist1d-mlp.yaml", "spirals-mlp.yaml"):
        spec = config.load(Path(__file__).parents[1] / "examples" / spec_file)
        splits = data.load(spec.data)
        assert heldout_range(splits.train.x, _held(splits)) == [], spec_file
        assert losses.chance_loss(spec.loss, splits.task, splits.num_classes, splits.train.y) > 0
