"""The autoencoder: shapes of both backbones, inputs as targets, the report's reconstructions,
and the claim that a nonlinear autoencoder beats PCA at the same code size on held-out digits."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits
from sklearn.decomposition import PCA

from babysit import config, data
from babysit.config import ModelSpec
from babysit.errors import BabysitError
from babysit.families import family_of
from babysit.nets import build
from babysit.run import run

pytestmark = pytest.mark.usefixtures("one_thread")
EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


@pytest.mark.parametrize("backbone, shape", [("mlp", (1, 8, 8)), ("cnn", (1, 8, 8)), ("mlp", (40,)), ("cnn", (40,)),
                                             ("cnn", (3, 12, 12))])
def test_both_backbones_map_inputs_to_a_code_and_back(backbone, shape):
    spec = ModelSpec(kind="autoencoder", backbone=backbone, hidden=[32, 16], channels=[4, 8], kernel_size=3,
                     bottleneck=5)
    net = build(spec, shape, int(np.prod(shape)))
    x = torch.randn(6, *shape)
    assert net(x).shape == x.shape
    assert net.encode(x).shape == (6, 5)
    # the code is all the decoder sees: equal codes give equal reconstructions
    # batch sizes 1 and 3 may take different conv kernels: equal up to float32 rounding
    torch.testing.assert_close(net.decoder(net.encode(x[:1]).expand(3, -1)), net(x[:1]).expand(3, *shape),
                               rtol=1e-5, atol=1e-5)


def test_targets_are_the_inputs_and_the_loss_defaults_to_mse():
    spec = config.load(None, ["model.kind=autoencoder", "data.source=digits"])
    assert spec.loss == "mse"
    splits = family_of(spec).adapt(spec, data.load(spec.data))
    assert splits.task == "regression" and splits.target_dim == 64 and splits.num_classes is None
    for split in (splits.train, splits.val, splits.test):
        assert torch.equal(split.y, split.x)


def test_a_classification_loss_is_a_one_line_error(tmp_path):
    spec = config.load(None, ["model.kind=autoencoder", "data.source=digits", "loss=cross_entropy",
                              "train.epochs=1"])
    with pytest.raises(BabysitError, match="loss: 'cross_entropy' needs class labels"):
        run(spec, tmp_path / "ae", quiet=True)


def test_run_writes_reconstructions_in_pixels_and_the_report_draws_them(tmp_path):
    spec = config.load(EXAMPLES / "digits-autoencoder.yaml", ["train.epochs=2", "train.device=cpu",
                                                             "checks.preflight=false"])
    assert spec.data.preprocess == ["standardize"]
    result = run(spec, out=tmp_path / "ae", quiet=True)
    with np.load(tmp_path / "ae" / "reconstructions.npz") as f:
        inputs, outputs = f["inputs"], f["outputs"]
    assert inputs.shape == outputs.shape == (16, 1, 8, 8)
    # the standardisation undone: the drawn inputs are sklearn's digits, pixel counts / 16
    digits = load_digits().data / 16.0
    for image in inputs.reshape(16, 64):
        assert np.abs(digits - image).max(axis=1).min() < 1e-5
    page = (tmp_path / "ae" / "report.html").read_text()
    assert "the autoencoder&#x27;s reconstructions" in page and "What it makes" in page
    assert "test_acc" not in result.summary and result.summary["test_loss"] > 0


def test_autoencoder_beats_pca_at_the_same_bottleneck(tmp_path):
    """Held-out digits (raw pixels in [0, 1]), code size 8: the test-set mean squared error of a
    one-hidden-layer autoencoder against that of sklearn's PCA fitted on the same training split."""
    bottleneck = 8
    spec = config.load(None, [
        "data.source=digits", "data.preprocess=[]", "data.test_fraction=0.2", "data.batch_size=64",
        "model.kind=autoencoder", "model.hidden=[128]", f"model.bottleneck={bottleneck}",
        "optimizer.name=adam", "optimizer.lr=0.003", "train.epochs=60", "train.device=cpu",
        "checks.preflight=false"])
    result = run(spec, out=tmp_path / "ae", quiet=True, report=False)
    train = result.splits.train.x.flatten(1).numpy()
    test = result.splits.test.x.flatten(1).numpy()
    pca = PCA(bottleneck).fit(train)
    pca_error = float(((pca.inverse_transform(pca.transform(test)) - test) ** 2).mean())
    with torch.no_grad():
        ae_error = float(((result.model.eval()(result.splits.test.x) - result.splits.test.x) ** 2).mean())
    assert abs(ae_error - result.summary["test_loss"]) < 1e-5  # the run's own test loss is this error
    print(json.dumps({"bottleneck": bottleneck, "autoencoder_test_mse": round(ae_error, 5),
                      "pca_test_mse": round(pca_error, 5), "ratio": round(ae_error / pca_error, 3),
                      "wall_time_s": result.summary["wall_time_s"]}))
    assert ae_error < 0.85 * pca_error
