"""Preflight checks: each finding on a network built to have it, none on healthy setups.

The pathology suite follows CS231n's "babysitting" sanity checks; the healthy side is
every builder (mlp, cnn, resnet) on MNIST-1D- and digits-shaped data and every spec in
examples/, which must get no warning or error.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import pytest
import torch
from torch import nn

from babysit import config, data, nets
from babysit.checks import ALL, FINDINGS, Finding, preflight, write_findings
from babysit.checks.preflight import OVERFIT_STEPS
from babysit.config import ModelSpec
from babysit.families import family_of
from babysit.families.gan import gan_preflight
from babysit.families.standard import per_token
from babysit.optim import losses

EXAMPLES = sorted((Path(__file__).resolve().parents[1] / "examples").glob("*.yaml"))
DESIGN_IDS = [
    "initial_loss_off", "gradient_check_failed", "cannot_overfit_tiny_subset",
    "inputs_not_normalized", "symmetric_init", "batch_mixing",
    "split_leakage", "conflicting_duplicates", "class_imbalance",  # the data (issue 16)
    "loss_exploded", "nonfinite_loss", "dead_relu", "dormant_units", "saturated_activations",
    "activation_collapse", "vanishing_gradients", "exploding_gradients", "update_ratio_high",
    "update_ratio_low",
    "gradients_accumulate", "loss_at_chance",  # a user's own loop (babysit.watch)
    "loss_spike", "fp16_overflow",
    "input_bound",  # the sampled steps wait for their data (checks/input_bound.py)
    "batch_too_small", "batch_too_large",  # McCandlish et al. 2018 (checks.noise_scale)
    "edge_of_stability", "lr_beyond_stability",  # Cohen et al. 2021 (checks.sharpness_every)
    "attention_entropy_collapse", "attention_logit_growth",  # checks.transformer
    "overfitting", "underfitting", "lr_too_high", "lr_too_low", "not_converged",
    "weight_decay_ineffective", "weight_decay_too_strong",  # Wang & Aitchison 2024
    "heldout_out_of_range", "test_val_gap",  # the held-out splits against training
    "overconfident", "class_never_predicted", "weak_class", "label_noise",  # the model's answers
    "discriminator_wins", "mode_collapse",  # GAN rules (babysit.families.gan)
]  # fmt: skip


pytestmark = pytest.mark.usefixtures("one_thread")


def classes_data(n=256, shape=(40,), classes=10, seed=0):
    """Standardised inputs and labels that depend on them (so a model can learn them)."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, *shape, generator=gen)
    y = x.flatten(1)[:, :classes].argmax(1)
    return x, y


def mlp(hidden=(32, 32), inputs=40, outputs=10, seed=0):
    torch.manual_seed(seed)
    return nets.build(ModelSpec(kind="mlp", hidden=list(hidden)), (inputs,), outputs)


def ids(findings, at_least="warning"):
    rank = {"info": 0, "warning": 1, "error": 2}
    return [f.id for f in findings if rank[f.severity] >= rank[at_least]]


def only(findings, finding_id):
    found = [f for f in findings if f.id == finding_id]
    assert found, f"expected {finding_id}, got {[(f.id, f.message) for f in findings]}"
    return found[0]


# --------------------------------------------------------------------------- findings


def test_vocabulary_is_design_md():
    assert list(FINDINGS) == DESIGN_IDS
    assert all(isinstance(title, str) and title for title in FINDINGS.values())


def test_finding_rejects_unknown_id_and_severity():
    with pytest.raises(ValueError, match="finding id"):
        Finding("nope", "error", "m", "a", {})
    with pytest.raises(ValueError, match="severity"):
        Finding("dead_relu", "fatal", "m", "a", {})


def test_write_findings_most_severe_first_and_json(tmp_path):
    findings = [
        Finding("overfitting", "info", "m", "a", {"gap": torch.tensor(0.5)}),
        Finding("dead_relu", "error", "m", "a", {"x": float("nan")}, layer="hidden.0", step=3),
        Finding("lr_too_low", "warning", "m", "a", {}),
    ]
    path = tmp_path / "run" / "findings.json"
    write_findings(path, findings)
    written = json.loads(path.read_text())
    assert [f["severity"] for f in written] == ["error", "warning", "info"]
    assert written[0]["layer"] == "hidden.0" and written[0]["step"] == 3
    assert written[0]["evidence"]["x"] is None and written[2]["evidence"]["gap"] == 0.5
    assert "layer" not in written[1]


# --------------------------------------------------------------------------- healthy setups


@pytest.mark.parametrize("kind", ["mlp", "cnn", "resnet"])
@pytest.mark.parametrize("shape", [(40,), (1, 8, 8)], ids=["mnist1d", "digits"])
def test_healthy_builders_raise_nothing(kind, shape):
    torch.manual_seed(0)
    net = nets.build(ModelSpec(kind=kind, channels=[8, 8]), shape, 10)
    x, y = classes_data(128, shape)
    assert ids(preflight(net, nn.CrossEntropyLoss(), (x, y))) == []


@pytest.mark.parametrize(
    "spec",
    [
        dict(kind="mlp", activation="tanh", norm="spectral"),
        dict(kind="cnn", activation="elu", norm="layer"),
        dict(kind="resnet", activation="sigmoid", norm="batch"),
        dict(kind="mlp", activation="maxout", norm="weight", dropout=0.5),
    ],
    ids=lambda spec: "-".join(str(v) for v in spec.values()),
)
def test_healthy_variants_raise_nothing(spec):
    shape = (40,)
    torch.manual_seed(1)
    net = nets.build(ModelSpec(channels=[8, 8], hidden=[32, 32], **spec), shape, 10)
    state = {k: v.clone() for k, v in net.state_dict().items()}
    x, y = classes_data(128, shape)
    assert ids(preflight(net, nn.CrossEntropyLoss(), (x, y))) == []
    # weight / spectral norm: the caller's parametrized model still works and is unchanged
    assert all(torch.equal(state[k], v) for k, v in net.state_dict().items())
    assert net(x[:2]).shape == (2, 10)


def _example(path):
    spec = config.load(path) if path else config.Experiment()
    torch.manual_seed(spec.seed)
    splits = data.load(spec.data)
    splits = family_of(spec).adapt(spec, splits)  # an autoencoder's targets are its inputs
    out = losses.output_dim(spec.loss, splits.task, splits.num_classes, splits.target_dim)
    net = nets.build(spec.model, splits.input_shape, out)
    loss_fn = losses.build_loss(spec.loss, splits.task, splits.num_classes, per_token=per_token(splits))
    return spec, splits, net, loss_fn


@pytest.mark.parametrize("path", [None, *EXAMPLES], ids=lambda p: p.stem if p else "default")
def test_examples_raise_no_warning(path):
    spec, splits, net, loss_fn = _example(path)
    if spec.model.kind == "gan":  # two networks: the discriminator on real and generated examples, G through D
        assert ids(gan_preflight(net, splits.train.x, spec.seed)) == []
        return
    findings = preflight(
        net, loss_fn, (splits.train.x, splits.train.y), task=splits.task,
        num_classes=splits.num_classes, loss_name=spec.loss,
    )
    assert ids(findings) == [], [f.message for f in findings]


def test_default_mlp_under_five_seconds():
    spec, splits, net, loss_fn = _example(None)
    batches = data.Batches(splits.train.x, splits.train.y, 128, torch.Generator().manual_seed(0))
    start = time.perf_counter()
    findings = preflight(net, loss_fn, batches, num_classes=splits.num_classes)
    elapsed = time.perf_counter() - start
    assert ids(findings) == []
    assert elapsed < 5.0, f"preflight took {elapsed:.2f} s"


def test_model_comes_back_unchanged():
    net = nn.Sequential(nn.Linear(40, 32), nn.BatchNorm1d(32), nn.ReLU(), nn.Dropout(0.5), nn.Linear(32, 10))
    net.eval()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    x, y = classes_data()
    torch.manual_seed(123)
    rng = torch.get_rng_state()
    preflight(net, nn.CrossEntropyLoss(), (x, y))
    assert not net.training and not any(m.training for m in net.modules())
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())
    assert all(not m._forward_hooks and not m._backward_hooks for m in net.modules())
    assert all(p.grad is None for p in net.parameters())
    assert torch.equal(torch.get_rng_state(), rng)


def test_unknown_check_is_named():
    with pytest.raises(ValueError, match="unknown"):
        preflight(mlp(), nn.CrossEntropyLoss(), classes_data(), checks=("dead_relu",))


# --------------------------------------------------------------------------- initial_loss_off


class Scaled(nn.Module):
    def __init__(self, net, scale):
        super().__init__()
        self.net, self.scale = net, scale

    def forward(self, x):
        return self.net(x) * self.scale


def test_softmax_before_cross_entropy():
    net = nn.Sequential(mlp(), nn.Softmax(dim=1))
    findings = preflight(net, nn.CrossEntropyLoss(), classes_data())
    found = only(findings, "initial_loss_off")
    assert found.severity == "error" and "probabilities" in found.message
    assert found.evidence["lowest_reachable_loss"] == pytest.approx(math.log(9 + math.e) - 1)
    assert "cannot_overfit_tiny_subset" in ids(findings)  # the loss floor also stops memorising


def test_logits_scaled_by_100():
    found = only(
        preflight(Scaled(mlp(), 100.0), nn.CrossEntropyLoss(), classes_data(), checks=("initial_loss_off",)),
        "initial_loss_off",
    )
    assert found.severity == "error" and found.evidence["initial_loss"] > found.evidence["upper_tolerance"]
    assert found.evidence["expected"] == pytest.approx(math.log(10))


def test_normal_init_std_one_from_spec():
    spec = config.apply_overrides(config.Experiment(), ["model.init=normal", "model.init_std=1.0"])
    torch.manual_seed(0)
    net = nets.build(spec.model, (40,), 10)
    x, y = classes_data()
    findings = preflight(net, losses.build_loss("cross_entropy", "classification", 10), (x, y),
                         checks=("initial_loss_off",))
    assert ids(findings) == ["initial_loss_off"]


def test_mse_regression_expectation_is_target_second_moment():
    torch.manual_seed(0)
    x = torch.randn(256, 8)
    y = x[:, :2] * 3.0 + 1.0  # E[y^2] = 9 + 1 = 10
    loss_fn = losses.build_loss("mse", "regression", None)
    healthy = nets.build(ModelSpec(hidden=[32]), (8,), 2)
    assert preflight(healthy, loss_fn, (x, y), task="regression", checks=("initial_loss_off",)) == []
    found = only(
        preflight(Scaled(healthy, 30.0), loss_fn, (x, y), task="regression", checks=("initial_loss_off",)),
        "initial_loss_off",
    )
    assert found.evidence["expected"] == pytest.approx(10.0, rel=0.2)


# --------------------------------------------------------------------------- gradient_check_failed


class _HalfGradMatmul(torch.autograd.Function):
    """x @ w.T with a wrong backward: the weight gradient is halved."""

    @staticmethod
    def forward(ctx, x, w):
        ctx.save_for_backward(x, w)
        return x @ w.t()

    @staticmethod
    def backward(ctx, grad):
        x, w = ctx.saved_tensors
        return grad @ w, 0.5 * grad.t() @ x


class BadLinear(nn.Linear):
    def forward(self, x):
        return _HalfGradMatmul.apply(x, self.weight) + self.bias


class _WrongCube(torch.autograd.Function):
    """x^3 with the derivative 2x^2 instead of 3x^2 (no parameters of its own)."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x**3

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return grad * 2 * x**2


class WrongCube(nn.Module):
    def forward(self, x):
        return _WrongCube.apply(x)


def test_custom_function_with_wrong_backward_names_its_layer():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(40, 32), nn.ReLU(), BadLinear(32, 32), nn.Tanh(), nn.Linear(32, 10))
    found = only(preflight(net, nn.CrossEntropyLoss(), classes_data(), checks=("gradient_check_failed",)),
                 "gradient_check_failed")
    assert found.layer == "2" and found.severity == "error"
    assert found.evidence["per_layer"]["4"] < 1e-4  # layers after the fault are fine
    assert found.evidence["worst_relative_error"] > 0.1


def test_parameter_free_wrong_backward_points_between_layers():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(40, 32), nn.Tanh(), nn.Linear(32, 16), WrongCube(), nn.Linear(16, 10))
    found = only(preflight(net, nn.CrossEntropyLoss(), classes_data(), checks=("gradient_check_failed",)),
                 "gradient_check_failed")
    assert found.layer == "2" and "'4'" in found.message


def test_gradient_check_discounts_relu_and_maxpool_kinks():
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv1d(1, 8, 3), nn.ReLU(), nn.MaxPool1d(2), nn.Flatten(), nn.Linear(8 * 19, 10)
    )
    x, y = classes_data(64, (1, 40))
    assert preflight(net, nn.CrossEntropyLoss(), (x, y), checks=("gradient_check_failed",)) == []


def test_straight_through_sign_units_are_only_noted():
    torch.manual_seed(0)
    net = nets.build(ModelSpec(hidden=[32], activation="sign"), (40,), 10)
    findings = preflight(net, nn.CrossEntropyLoss(), classes_data(), checks=("gradient_check_failed",))
    assert ids(findings) == [] and [f.severity for f in findings] in ([], ["info"])


# --------------------------------------------------------------------------- cannot_overfit_tiny_subset


class IgnoresInput(nn.Module):
    """A data-path bug: the input is multiplied by zero, so the output is a constant."""

    def __init__(self):
        super().__init__()
        self.net = mlp()

    def forward(self, x):
        return self.net(x * 0)


class DetachedHead(nn.Module):
    """A detach() before a head that only has a bias: nothing input-dependent can learn."""

    def __init__(self):
        super().__init__()
        self.body = nn.Linear(40, 10)
        self.bias = nn.Parameter(torch.zeros(10))

    def forward(self, x):
        return self.body(x).detach() * 0 + self.bias


@pytest.mark.parametrize("net", [IgnoresInput, DetachedHead])
def test_broken_models_cannot_overfit(net):
    torch.manual_seed(0)
    found = only(preflight(net(), nn.CrossEntropyLoss(), classes_data(), checks=("cannot_overfit_tiny_subset",)),
                 "cannot_overfit_tiny_subset")
    assert found.evidence["final_accuracy"] < 1.0 and found.evidence["examples"] == 20


def test_frozen_model_cannot_overfit():
    net = mlp().requires_grad_(False)
    found = only(preflight(net, nn.CrossEntropyLoss(), classes_data(), checks=("cannot_overfit_tiny_subset",)),
                 "cannot_overfit_tiny_subset")
    assert found.evidence["trainable_parameters"] == 0


def test_overfit_uses_optimizer_factory_and_ignores_dropout():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(40, 64), nn.ReLU(), nn.Dropout(0.9), nn.Linear(64, 10))
    used = []

    def factory(params):
        used.append(True)
        return torch.optim.Adam(params, lr=1e-2)

    assert preflight(net, nn.CrossEntropyLoss(), classes_data(), optimizer_factory=factory,
                     checks=("cannot_overfit_tiny_subset",)) == []
    assert used == [True]
    # a learning rate far too small cannot memorise in the bounded number of steps
    found = only(preflight(net, nn.CrossEntropyLoss(), classes_data(),
                           optimizer_factory=lambda p: torch.optim.SGD(p, lr=1e-6),
                           checks=("cannot_overfit_tiny_subset",)), "cannot_overfit_tiny_subset")
    assert found.evidence["steps"] == OVERFIT_STEPS


# --------------------------------------------------------------------------- inputs_not_normalized


def test_raw_unscaled_features():
    x, y = classes_data()
    found = only(preflight(mlp(), nn.CrossEntropyLoss(), (x * 100 + 50, y), checks=("inputs_not_normalized",)),
                 "inputs_not_normalized")
    assert found.evidence["off_fraction"] == 1.0 and found.evidence["max_abs_mean"] > 40


def test_standardized_and_unit_range_inputs_pass():
    x, y = classes_data()
    assert preflight(mlp(), nn.CrossEntropyLoss(), (x, y), checks=("inputs_not_normalized",)) == []
    pixels = torch.rand(256, 40)  # [0, 1] pixels: mean 0.5, std 0.29
    pixels[:, :4] = 0.0  # constant border pixels are harmless
    assert preflight(mlp(), nn.CrossEntropyLoss(), (pixels, y), checks=("inputs_not_normalized",)) == []


def test_iterable_of_batches_is_accepted():
    x, y = classes_data()
    batches = [(x[i : i + 32] * 100, y[i : i + 32]) for i in range(0, 256, 32)]
    assert ids(preflight(mlp(), nn.CrossEntropyLoss(), iter(batches), checks=("inputs_not_normalized",))) == [
        "inputs_not_normalized"
    ]


# --------------------------------------------------------------------------- symmetric_init


def test_zero_init_spec_names_the_first_hidden_layer():
    torch.manual_seed(0)
    net = nets.build(ModelSpec(hidden=[32, 32], init="zeros"), (40,), 10)
    findings = preflight(net, nn.CrossEntropyLoss(), classes_data(), checks=("symmetric_init",))
    assert [f.layer for f in findings] == ["hidden.0.0", "hidden.1.0"]  # the head is exempt
    assert all(f.severity == "error" for f in findings)


def test_constant_init_in_the_middle():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(40, 32), nn.Tanh(), nn.Linear(32, 32), nn.Tanh(), nn.Linear(32, 10))
    nn.init.constant_(net[2].weight, 0.05)
    nn.init.constant_(net[2].bias, 0.0)
    found = only(preflight(net, nn.CrossEntropyLoss(), classes_data(), checks=("symmetric_init",)),
                 "symmetric_init")
    assert found.layer == "2"


def test_kaiming_init_and_zero_head_pass():
    net = mlp()
    nn.init.zeros_(net.head.weight)
    assert preflight(net, nn.CrossEntropyLoss(), classes_data(), checks=("symmetric_init",)) == []


# --------------------------------------------------------------------------- batch_mixing


class BatchStandardize(nn.Module):
    """Normalises over the batch axis even in eval mode: example i sees the others."""

    def forward(self, x):
        return (x - x.mean(0)) / (x.std(0) + 1e-5)


class WrongAxisSoftmax(nn.Module):
    """A classic slip: softmax over dim 0 (the batch) instead of dim 1 (the features)."""

    def forward(self, x):
        return torch.softmax(x, dim=0)


@pytest.mark.parametrize("mixer", [BatchStandardize, WrongAxisSoftmax])
def test_batch_mixing_names_the_layer(mixer):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(40, 32), nn.ReLU(), mixer(), nn.Linear(32, 10))
    found = only(preflight(net, nn.CrossEntropyLoss(), classes_data(), checks=("batch_mixing",)),
                 "batch_mixing")
    assert found.layer == "2" and found.severity == "error"


def test_batchnorm_in_eval_does_not_mix():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(40, 32), nn.BatchNorm1d(32), nn.ReLU(), nn.Linear(32, 10))
    assert preflight(net, nn.CrossEntropyLoss(), classes_data(), checks=("batch_mixing",)) == []


def test_all_checks_listed():
    assert set(ALL) <= set(FINDINGS)


def test_top_level_api():
    import babysit
    from babysit.checks.preflight import preflight

    assert babysit.preflight is preflight
