"""The pathology suite, end to end: each finding id on a spec built to have it, through
``run()`` (what ``babysit train`` does), and no warning or error on any spec in examples/.

The specs are CS231n's babysitting cases: very negative biases (dead ReLUs), N(0, 1) init on a
10-layer tanh net (saturation), N(0, 0.01^2) init on it (collapse), a deep sigmoid stack
(vanishing gradients), a too-large init on a deep ReLU net (exploding gradients), a huge and a
tiny learning rate, zero init, raw unscaled features, a big net on 200 examples, logistic
regression on MNIST-1D. Two findings need a hand-built module and are tested on the Python API
in test_preflight.py: a custom autograd function with a wrong backward
(``gradient_check_failed``) and a layer that mixes the batch (``batch_mixing``).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from babysit import config
from babysit.checks.findings import FINDINGS
from babysit.run import run

EXAMPLES = sorted((Path(__file__).resolve().parents[1] / "examples").glob("*.yaml"))
DEEP10 = "model.hidden=[100,100,100,100,100,100,100,100,100,100]"

# (name, spec file or None for the default, overrides, {id: (severity, layer or None)})
PATHOLOGIES = [
    ("outputs-too-large", None, ["model.init=normal", "model.init_std=1.0", "train.epochs=1"],
     {"initial_loss_off": ("error", None)}),
    ("dead-relu", None, ["model.bias_init=-5", "train.epochs=2"],
     {"dead_relu": ("warning", "hidden.1.1"), "cannot_overfit_tiny_subset": ("error", None)}),
    # raw 0-255 pixels (digits' 0-16 scaled up), not standardised: written by the test below
    ("raw-pixels", None, ["data.source=npz", "data.path=RAW_PIXELS", "data.preprocess=[]", "train.epochs=1"],
     {"inputs_not_normalized": ("warning", None)}),
    ("zero-init", None, ["model.init=zeros", "train.epochs=1"],
     {"symmetric_init": ("error", "hidden.0.0")}),
    ("huge-lr", None, ["optimizer.lr=5", "train.epochs=3"],
     {"loss_exploded": ("error", None), "update_ratio_high": ("warning", None), "lr_too_high": ("warning", None)}),
    ("overflow", None, ["loss=mse", "optimizer.lr=1e10", "optimizer.momentum=0", "train.epochs=2"],
     {"nonfinite_loss": ("error", None)}),
    ("tanh-unit-normal", None, [DEEP10, "model.activation=tanh", "model.init=normal", "model.init_std=1.0",
                                "train.epochs=3"],
     {"saturated_activations": ("warning", None)}),
    ("tanh-tiny-init", None, [DEEP10, "model.activation=tanh", "model.init=normal", "model.init_std=0.01",
                              "train.epochs=3"],
     {"activation_collapse": ("warning", "hidden.1.1"), "vanishing_gradients": ("warning", "hidden.0.1")}),
    ("deep-sigmoid", None, ["model.hidden=[100,100,100,100,100,100,100,100]", "model.activation=sigmoid",
                            "train.epochs=3"],
     {"vanishing_gradients": ("warning", "hidden.0.1")}),
    ("relu-large-init", None, [DEEP10, "model.init=normal", "model.init_std=0.5", "optimizer.name=adam",
                               "optimizer.lr=0.001", "train.epochs=2"],
     {"exploding_gradients": ("warning", "hidden.0.1")}),
    ("tiny-lr", None, ["optimizer.lr=1e-6", "train.epochs=3"],
     {"update_ratio_low": ("warning", None), "lr_too_low": ("warning", None)}),
    ("big-net-200-examples", None, ["data.train_size=200", "model.hidden=[512,512]",
                                    "train.early_stopping.patience=null", "train.epochs=40"],
     {"overfitting": ("warning", None)}),
    ("logreg", "mnist1d-logreg.yaml", [], {"underfitting": ("info", None)}),
    ("cut-short", "spirals-mlp.yaml", ["train.epochs=10"], {"not_converged": ("warning", None)}),
    # Wang & Aitchison 2024: tau = 1/(lr x wd) steps; 10 steps against 36 an epoch, 1e6 against a 72-step run
    ("weight-decay-too-strong", None, ["optimizer.name=adamw", "optimizer.lr=0.01", "optimizer.weight_decay=10",
                                       "train.epochs=2"], {"weight_decay_too_strong": ("warning", None)}),
    ("weight-decay-ineffective", None, ["optimizer.name=adamw", "optimizer.lr=0.01", "optimizer.weight_decay=1e-4",
                                        "train.epochs=2"], {"weight_decay_ineffective": ("info", None)}),
    # GANs: a discriminator that learns alone, a generator 50x faster than its discriminator
    ("gan-discriminator-wins", "digits-gan.yaml", ["optimizer.lr=1e-6", "optimizer.discriminator_lr=1e-3",
                                                   "train.epochs=15"],
     {"discriminator_wins": ("warning", "discriminator")}),
    ("gan-mode-collapse", "digits-gan.yaml", ["optimizer.lr=1e-2", "optimizer.discriminator_lr=2e-4",
                                              "train.epochs=15"],
     {"mode_collapse": ("warning", "generator")}),
]
# test_preflight.py; test_user_loop.py (a user's own loop under babysit.watch); test_heldout.py
ON_THE_API = {"gradient_check_failed", "batch_mixing", "gradients_accumulate", "loss_at_chance",
              "heldout_out_of_range", "test_val_gap", "dormant_units",  # dormant_units: test_monitors.py
              # each raised by a run built to have it, in the check's own test file:
              "fp16_overflow",  # test_precision.py
              "loss_spike",  # test_spikes.py
              "input_bound",  # test_input_bound.py
              "batch_too_small", "batch_too_large",  # test_noise_scale.py
              "edge_of_stability", "lr_beyond_stability",  # test_sharpness.py
              "attention_entropy_collapse", "attention_logit_growth",  # test_transformer_health.py
              "split_leakage", "conflicting_duplicates", "class_imbalance",  # test_data_checks.py
              "overconfident", "class_never_predicted", "weak_class",  # test_answers.py
              "label_noise"}  # test_label_noise.py


pytestmark = pytest.mark.usefixtures("one_thread")


def test_the_suite_covers_every_finding():
    covered = {fid for *_, expected in PATHOLOGIES for fid in expected} | ON_THE_API
    assert covered == set(FINDINGS)


@pytest.mark.parametrize("name, spec_file, overrides, expected", PATHOLOGIES, ids=[p[0] for p in PATHOLOGIES])
def test_pathology_gets_its_finding(name, spec_file, overrides, expected, tmp_path):
    spec_path = Path(__file__).resolve().parents[1] / "examples" / spec_file if spec_file else None
    if "data.path=RAW_PIXELS" in overrides:
        from sklearn.datasets import load_digits

        x, y = load_digits(return_X_y=True)
        np.savez(tmp_path / "raw.npz", x=(x * 255 / 16).reshape(-1, 1, 8, 8).astype("float32"), y=y)
        overrides = [o.replace("RAW_PIXELS", str(tmp_path / "raw.npz")) for o in overrides]
    result = run(config.load(spec_path, ["train.device=cpu", *overrides]), out=tmp_path / name, quiet=True, report=False)
    written = json.loads((tmp_path / name / "findings.json").read_text())
    found: dict = {}
    for f in written:  # the first (most severe) of each id
        found.setdefault(f["id"], f)
    for fid, (severity, layer) in expected.items():
        assert fid in found, f"{name}: expected {fid}, got {sorted(found)}"
        assert found[fid]["severity"] == severity, found[fid]
        if layer is not None:
            assert found[fid].get("layer") == layer, found[fid]
        assert found[fid]["message"] and found[fid]["advice"] and found[fid]["evidence"]
    assert [f.id for f in result.findings] == [f["id"] for f in written]


@pytest.mark.slow
@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.stem)
def test_examples_raise_no_warning(path, tmp_path):
    """No false alarms: every example, trained as written, gets at most info findings."""
    result = run(config.load(path, ["train.device=cpu"]), out=tmp_path / path.stem, quiet=True, report=False)
    loud = [(f.id, f.layer, f.message) for f in result.findings if f.severity != "info"]
    assert loud == []
