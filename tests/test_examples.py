"""Every spec in examples/ is valid and trains (one short epoch each)."""

from pathlib import Path

import pytest

from babysit import config
from babysit.run import run

EXAMPLES = sorted((Path(__file__).parent.parent / "examples").glob("*.yaml"))


def test_the_examples_cover_the_range():
    names = {p.stem for p in EXAMPLES}
    assert {"mnist1d-logreg", "mnist1d-mlp", "mnist1d-cnn", "digits-cnn", "spirals-mlp", "mnist1d-resnet"} <= names


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.stem)
def test_example_trains(path, tmp_path):
    spec = config.load(path, ["train.epochs=1", "data.train_size=200", "schedule.warmup_steps=0"])
    assert spec.run_name == path.stem
    result = run(spec, tmp_path / path.stem, quiet=True, report=False)
    assert result.summary["steps"] > 0
    if "test_acc" in result.summary or "test_loss" in result.summary:  # a classifier (an autoencoder has no accuracy)
        assert result.summary.get("test_acc", 1) > 0 and result.summary["test_loss"] < float("inf")
    else:  # a GAN: two adversarial losses, no test split
        assert result.summary["d_loss"] > 0 and result.summary["g_loss"] > 0
