"""The GAN: two networks with their own optimizers and alternating steps, its preflight and
findings (per network; the discriminator winning outright; mode collapse), samples over
training in the report, and the claim that a GAN trained on digits makes every digit."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from sklearn.linear_model import LogisticRegression

from babysit import config
from babysit.config import ModelSpec
from babysit.data.batching import Batches
from babysit.errors import BabysitError
from babysit.families.gan import (
    AdversarialOptimizers,
    AdversarialStep,
    diversity,
    gan_findings,
    gan_preflight,
)
from babysit.nets import build
from babysit.run import run
from babysit.train import Trainer

pytestmark = pytest.mark.usefixtures("one_thread")
EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def gan_spec(*overrides: str) -> config.Experiment:
    return config.load(EXAMPLES / "digits-gan.yaml", ["train.device=cpu", *overrides])


@pytest.mark.parametrize("backbone", ["mlp", "cnn"])
def test_generator_and_discriminator_shapes(backbone):
    spec = ModelSpec(kind="gan", backbone=backbone, hidden=[32], channels=[8, 16], kernel_size=3, latent=6)
    gan = build(spec, (1, 8, 8), 10)
    assert gan.sample(5).shape == (5, 1, 8, 8)
    assert gan(torch.randn(5, 1, 8, 8)).shape == (5, 1)  # forward is the discriminator's logit
    assert gan.generator(torch.randn(2, 6)).shape == (2, 1, 8, 8)


def test_the_gan_defaults_follow_dcgan(tmp_path):
    spec = config.load(None, ["model.kind=gan"])
    assert (spec.optimizer.name, spec.optimizer.lr, spec.optimizer.betas) == ("adam", 2e-4, (0.5, 0.999))
    assert spec.loss == "bce" and spec.model.activation == "leaky_relu"
    with pytest.raises(BabysitError, match="kind gan trains with the GAN objective"):
        run(config.load(None, ["model.kind=gan", "loss=mse", "data.source=digits", "train.epochs=1"]),
            tmp_path / "gan", quiet=True)
    with pytest.raises(BabysitError, match="schedule.name: not used by kind gan"):
        run(gan_spec("schedule.name=step", "train.epochs=1"), tmp_path / "gan2", quiet=True, report=False)


def test_one_step_updates_each_network_with_its_own_gradient():
    """After a step D's .grad is the gradient of the discriminator loss at the old weights, and
    G's is the generator loss's at the old G and the updated D: computed here by hand."""
    torch.manual_seed(0)
    gan = build(ModelSpec(kind="gan", hidden=[16], latent=4), (6,), 1)
    before = copy.deepcopy(gan)
    opts = AdversarialOptimizers(torch.optim.SGD(gan.generator.parameters(), lr=0.1),
                                 torch.optim.SGD(gan.discriminator.parameters(), lr=0.05))
    x = torch.randn(8, 6)
    trainer = Trainer(gan, None, opts, step=AdversarialStep(gan, opts))
    torch.manual_seed(1)
    trainer._stepped_epoch(Batches(x, torch.zeros(8), "full", None))

    torch.manual_seed(1)
    z = before.noise(8)
    fake = before.generator(z)
    d_real, d_fake = before.discriminator(x), before.discriminator(fake.detach())
    d_loss = F.binary_cross_entropy_with_logits(d_real, torch.ones_like(d_real)) + \
        F.binary_cross_entropy_with_logits(d_fake, torch.zeros_like(d_fake))
    d_grads = torch.autograd.grad(d_loss, list(before.discriminator.parameters()))
    for p, g in zip(gan.discriminator.parameters(), d_grads, strict=True):
        assert torch.allclose(p.grad, g, atol=1e-6)
    d_after = copy.deepcopy(before.discriminator)
    with torch.no_grad():
        for p, g in zip(d_after.parameters(), d_grads, strict=True):
            p -= 0.05 * g
    judged = d_after(before.generator(z))
    g_loss = F.binary_cross_entropy_with_logits(judged, torch.ones_like(judged))
    g_grads = torch.autograd.grad(g_loss, list(before.generator.parameters()))
    for p, old, g in zip(gan.generator.parameters(), before.generator.parameters(), g_grads, strict=True):
        assert torch.allclose(p.grad, g, atol=1e-6)
        assert torch.allclose(p, old - 0.1 * g, atol=1e-6)


def test_diversity_is_one_for_the_data_and_zero_for_a_point():
    x = torch.randn(100, 8)
    assert diversity(x, x) == pytest.approx(1.0)
    assert diversity(x[:1].expand(100, 8), x) == 0.0
    assert diversity(0.5 * x, x) == pytest.approx(0.5)


def test_gan_rules_on_curves():
    healthy = [{"epoch": e, "d_loss": 1.1, "g_loss": 1.0, "diversity": 0.9} for e in range(1, 21)]
    assert gan_findings(healthy) == []
    wins = [{**r, "d_loss": 0.02, "g_loss": 6.5} for r in healthy]
    collapsed = [{**r, "diversity": 0.1} for r in healthy]
    assert [(f.id, f.severity, f.layer) for f in gan_findings(wins)] == [("discriminator_wins", "warning", "discriminator")]
    assert [(f.id, f.severity, f.layer) for f in gan_findings(collapsed)] == [("mode_collapse", "warning", "generator")]
    early_only = [{**r, "diversity": 0.1 if r["epoch"] < 5 else 0.9} for r in healthy]  # recovered
    assert gan_findings(early_only) == []


def test_preflight_checks_both_networks():
    torch.manual_seed(0)
    spec = ModelSpec(kind="gan", hidden=[32, 32], latent=8, activation="leaky_relu")
    gan = build(spec, (12,), 1)
    x = torch.randn(256, 12)
    assert gan_preflight(gan, x) == []
    torch.nn.init.zeros_(gan.generator.features[0][0].weight)
    torch.nn.init.zeros_(gan.generator.features[0][0].bias)
    found = [(f.id, f.layer) for f in gan_preflight(gan, x)]
    assert ("symmetric_init", "generator.features.0.0") in found
    found = [(f.id, f.layer) for f in gan_preflight(build(spec, (12,), 1), x * 100 + 50)]
    assert ("inputs_not_normalized", None) in found  # judged on the real examples


@pytest.fixture(scope="module")
def healthy_run(tmp_path_factory):
    spec = gan_spec()
    return run(spec, out=tmp_path_factory.mktemp("gan") / "digits-gan", quiet=True)


@pytest.mark.slow
def test_healthy_run_is_clean_and_draws_its_samples(healthy_run):
    result = healthy_run
    assert [(f.id, f.severity) for f in result.findings if f.severity != "info"] == []
    summary = json.loads((result.path / "summary.json").read_text())
    assert 0.3 < summary["d_loss"] < 2.0 and 0.3 < summary["g_loss"] < 3.0 and summary["diversity"] > 0.6
    with np.load(result.path / "samples.npz") as f:
        epochs, samples = f["epochs"].tolist(), f["samples"]
    assert epochs[0] == 1 and epochs[-1] == result.summary["epochs"] and epochs == sorted(epochs) and len(epochs) >= 5
    assert samples.shape == (len(epochs), 16, 1, 8, 8)
    page = (result.path / "report.html").read_text()
    assert "generator&#x27;s examples for the same noise" in page and "discriminator probability" in page
    monitored = {layer.split(".")[0] for r in map(json.loads, (result.path / "monitors.jsonl").open())
                 for layer in r["layers"]}
    assert monitored == {"generator", "discriminator"}


@pytest.fixture(scope="module")
def pixel_run(tmp_path_factory):
    """The example on raw pixels in [0, 1] (on standardised pixels, where rare border pixels
    reach 20 standard deviations, the same GAN draws too many 8s: a share of about 0.22)."""
    spec = gan_spec("data.preprocess=[]", "checks.preflight=false")
    return run(spec, out=tmp_path_factory.mktemp("gan") / "digits-gan-pixels", quiet=True)


@pytest.mark.slow
def test_generated_digits_cover_every_class(pixel_run):
    """1000 samples, drawn in pixels and labelled by a logistic regression trained on sklearn's
    digits (97% accurate on them): every class appears and none takes more than twice its share."""
    result = pixel_run
    digits = load_digits()
    classifier = LogisticRegression(max_iter=2000).fit(digits.data / 16.0, digits.target)
    with torch.no_grad():
        samples = result.model.eval().sample(1000, torch.Generator().manual_seed(123))
        pixels = result.splits.preprocessor.inverse_transform(samples).reshape(1000, -1).numpy()
    shares = np.bincount(classifier.predict(pixels), minlength=10) / 1000
    print(json.dumps({"class_shares": shares.round(3).tolist(), "max_share": float(shares.max()),
                      "min_share": float(shares.min()), "epochs": result.summary["epochs"],
                      "wall_time_s": result.summary["wall_time_s"]}))
    assert shares.min() > 0 and shares.max() <= 0.2


def test_a_discriminator_that_learns_alone_wins_outright(tmp_path):
    spec = gan_spec("optimizer.lr=1e-6", "optimizer.discriminator_lr=1e-3", "train.epochs=15", "checks.preflight=false")
    result = run(spec, out=tmp_path / "wins", quiet=True, report=False)
    found = {f.id: f for f in result.findings}
    assert "discriminator_wins" in found and found["discriminator_wins"].severity == "warning"
    assert found["discriminator_wins"].evidence["d_loss_median"] < 0.1


def test_a_generator_far_faster_than_its_discriminator_collapses(tmp_path):
    """G at 50x D's learning rate: every noise gives nearly the same digit. The finding is checked
    against what a classifier sees in the samples."""
    spec = gan_spec("data.preprocess=[]", "optimizer.lr=1e-2", "optimizer.discriminator_lr=2e-4", "train.epochs=15",
                    "checks.preflight=false")
    result = run(spec, out=tmp_path / "collapse", quiet=True, report=False)
    found = {f.id: f for f in result.findings}
    assert "mode_collapse" in found and found["mode_collapse"].evidence["diversity_median"] < 0.5
    assert found["mode_collapse"].layer == "generator"
    digits = load_digits()
    classifier = LogisticRegression(max_iter=2000).fit(digits.data / 16.0, digits.target)
    with torch.no_grad():
        samples = result.model.eval().sample(500, torch.Generator().manual_seed(0)).reshape(500, -1).numpy()
    assert np.bincount(classifier.predict(samples), minlength=10).max() / 500 > 0.5  # one digit dominates


def test_a_resumed_run_ends_with_the_weights_of_an_uninterrupted_one(tmp_path):
    small = ["model.hidden=[32]", "train.device=cpu", "checks.preflight=false"]
    whole = run(gan_spec(*small, "train.epochs=4"), out=tmp_path / "whole", quiet=True, report=False)
    run(gan_spec(*small, "train.epochs=2"), out=tmp_path / "cut", quiet=True, report=False)
    resumed = run(gan_spec(*small, "train.epochs=4"), out=tmp_path / "cut", resume=True, quiet=True, report=False)
    for (name, a), b in zip(whole.model.state_dict().items(), resumed.model.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    with np.load(tmp_path / "cut" / "samples.npz") as f:
        assert f["epochs"].tolist() == [1, 2, 3, 4]


def test_check_takes_a_gan_and_single_network_commands_refuse_it(capsys):
    from helpers import run_cli

    code, out, err = run_cli(["check", str(EXAMPLES / "digits-gan.yaml"), "train.device=cpu"], capsys)
    assert code == 0 and "no problems found" in out, err
    code, _, err = run_cli(["lr-find", str(EXAMPLES / "digits-gan.yaml"), "--steps", "5"], capsys)
    assert code == 2 and "gan trains two networks" in err and err.count("\n") == 1
