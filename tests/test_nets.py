"""Specification of babysit.nets: builders, extra layers and init schemes."""

from __future__ import annotations

import math
import typing

import pytest
import torch
from scipy import integrate, stats
from torch import nn
from torch.nn.utils import parametrize

from babysit.config import ModelKind, ModelSpec
from babysit.errors import BabysitError
from babysit.nets import (
    ACTIVATIONS,
    BUILDERS,
    ChannelMaxout,
    GaussianNoise,
    Maxout,
    SignUnit,
    activation_modules,
    build,
    initialize,
    weight_layers,
)
from babysit.nets.init import ELU_GAIN, gain
from babysit.nets.layers import conv_layout

KINDS = ["mlp", "cnn", "resnet"]
ACTIVATION_NAMES = ["sigmoid", "tanh", "relu", "leaky_relu", "prelu", "elu", "maxout", "sign"]
NORMS = ["none", "batch", "layer", "group", "weight", "spectral"]
SHAPES = [(40,), (1, 8, 8), (2,)]  # MNIST-1D, digits, spirals


def small_spec(kind: str, **overrides) -> ModelSpec:
    fields = dict(kind=kind, hidden=[8, 8], channels=[4, 8], groups=2, dropout=0.1,
                  residual=kind == "mlp")  # fmt: skip
    fields.update(overrides)
    return ModelSpec(**fields)


# --------------------------------------------------------------------------- every combination


@pytest.mark.parametrize("norm", NORMS)
@pytest.mark.parametrize("activation", ACTIVATION_NAMES)
@pytest.mark.parametrize("kind", KINDS)
def test_every_combination_builds_runs_and_backpropagates(kind, activation, norm):
    torch.manual_seed(0)
    spec = small_spec(kind, activation=activation, norm=norm)
    for shape in SHAPES:
        model = build(spec, shape, 3)
        x = torch.randn(4, *shape)
        out = model(x)
        assert out.shape == (4, 3), (shape, out.shape)
        assert torch.isfinite(out).all()
        nn.functional.cross_entropy(out, torch.tensor([0, 1, 2, 0])).backward()
        for name, p in model.named_parameters():
            assert p.grad is not None, f"{shape}: {name} got no gradient"
            assert torch.isfinite(p.grad).all(), f"{shape}: {name}"
        model.eval()
        assert model(x).shape == (4, 3)


def test_registry_names_and_activation_factories():
    assert set(BUILDERS) == set(typing.get_args(ModelKind))  # every model.kind of the spec has a builder
    assert set(ACTIVATIONS) == set(ACTIVATION_NAMES)
    x = torch.randn(5, 6)
    for name, factory in ACTIVATIONS.items():
        assert factory(6)(x).shape == (5, 6), name
    assert ACTIVATIONS["prelu"](6).weight.shape == (6,)  # one slope per channel
    assert isinstance(ACTIVATIONS["leaky_relu"](6), nn.LeakyReLU)
    assert ACTIVATIONS["leaky_relu"](6).negative_slope == 0.01


@pytest.mark.parametrize(
    "kind, shape",
    [("mlp", (3, 100)), ("cnn", (3, 100)), ("cnn", (28, 28)), ("cnn", (2, 12, 9)),
     ("resnet", (3, 100)), ("resnet", (1, 28, 28)), ("cnn", (1,)), ("resnet", (1,))],
)  # fmt: skip
def test_output_shapes_for_other_inputs(kind, shape):
    model = build(ModelSpec(kind=kind, hidden=[16], channels=[4, 4, 4]), shape, 7)
    assert model(torch.randn(2, *shape)).shape == (2, 7)


def test_conv_layout_picks_1d_or_2d():
    assert conv_layout((40,), "cnn") == (1, 40)
    assert conv_layout((3, 100), "cnn") == (3, 100)
    assert conv_layout((8, 8), "cnn") == (1, 8, 8)
    assert conv_layout((1, 8, 8), "cnn") == (1, 8, 8)
    with pytest.raises(BabysitError, match="model.kind: 'cnn'"):
        conv_layout((1, 2, 3, 4), "cnn")
    convs = weight_layers(build(ModelSpec(kind="cnn"), (40,), 10))[:-1]
    assert all(isinstance(c, nn.Conv1d) for c in convs) and convs[0].in_channels == 1
    convs = weight_layers(build(ModelSpec(kind="cnn"), (8, 8), 10))[:-1]
    assert all(isinstance(c, nn.Conv2d) for c in convs) and convs[0].in_channels == 1


# --------------------------------------------------------------------------- architectures


class ReferenceConvBase(nn.Module):
    """MNIST-1D's ConvBase (Greydanus 2020), written out as the paper's code has it."""

    def __init__(self, output_size=10, channels=25, linear_in=125):
        super().__init__()
        self.conv1 = nn.Conv1d(1, channels, 5, stride=2, padding=1)
        self.conv2 = nn.Conv1d(channels, channels, 3, stride=2, padding=1)
        self.conv3 = nn.Conv1d(channels, channels, 3, stride=2, padding=1)
        self.linear = nn.Linear(linear_in, output_size)

    def forward(self, x):
        h = self.conv1(x.view(-1, 1, x.shape[-1])).relu()
        h = self.conv3(self.conv2(h).relu()).relu()
        return self.linear(h.flatten(1))


def test_mnist1d_cnn_matches_reference_convbase():
    ours = build(ModelSpec(kind="cnn"), (40,), 10)
    reference = ReferenceConvBase()
    count = sum(p.numel() for p in ours.parameters())
    assert count == sum(p.numel() for p in reference.parameters()) == 5210
    ours_shapes = [tuple(p.shape) for p in ours.parameters()]
    assert ours_shapes == [tuple(p.shape) for p in reference.parameters()]
    assert [type(m) for m in activation_modules(ours)] == [nn.ReLU] * 3
    assert ours.head.in_features == 125  # 40 -> 20 -> 10 -> 5 positions x 25 channels


def test_cnn_2d_pools_down_to_one_pixel_and_no_further():
    model = build(ModelSpec(kind="cnn", channels=[4, 4, 4, 4, 4]), (1, 8, 8), 10)
    sizes, h = [], torch.randn(2, 1, 8, 8)
    for stage in model.features:
        h = stage(h)
        sizes.append(tuple(h.shape[2:]))
    assert sizes == [(4, 4), (2, 2), (1, 1), (1, 1), (1, 1)]
    assert model.head.in_features == 4


def test_resnet_downsamples_from_second_block_and_projects_when_needed():
    model = build(ModelSpec(kind="resnet", channels=[4, 4, 8]), (1, 8, 8), 10)
    h = model.stem(torch.randn(2, 1, 8, 8))
    sizes = []
    for block in model.blocks:
        h = block(h)
        sizes.append(tuple(h.shape[1:]))
    assert sizes == [(4, 8, 8), (4, 4, 4), (8, 2, 2)]
    assert isinstance(model.blocks[0].shortcut, nn.Identity)  # same width, same size
    assert not isinstance(model.blocks[1].shortcut, nn.Identity)  # stride 2 -> 1x1 projection
    assert not isinstance(model.blocks[2].shortcut, nn.Identity)


def test_resnet_skip_is_real():
    torch.manual_seed(0)
    model = build(ModelSpec(kind="resnet", channels=[4, 4], norm="none"), (40,), 3)
    block = model.blocks[0]  # 4 -> 4 channels, stride 1: identity shortcut
    for layer in weight_layers(block.branch):
        nn.init.zeros_(layer.weight)
        nn.init.zeros_(layer.bias)
    x = torch.randn(3, 4, 40)
    torch.testing.assert_close(block(x), torch.relu(x))  # act(0 + x)


def test_mlp_hidden_empty_is_one_linear_layer():
    model = build(ModelSpec(hidden=[]), (40,), 10)
    layers = weight_layers(model)
    assert len(layers) == 1 and tuple(layers[0].weight.shape) == (10, 40)
    assert activation_modules(model) == []
    x = torch.randn(3, 40)
    torch.testing.assert_close(model(x), x @ layers[0].weight.T + layers[0].bias)


def test_mlp_layer_order_and_walkers():
    model = build(ModelSpec(hidden=[16, 8], norm="batch", dropout=0.5), (4, 5), 3)
    first = list(model.hidden[0])
    assert [type(m) for m in first] == [nn.Linear, nn.BatchNorm1d, nn.ReLU, nn.Dropout]
    assert first[0].bias is None  # BatchNorm cancels a bias; none is built
    assert [tuple(m.weight.shape) for m in weight_layers(model)] == [(16, 20), (8, 16), (3, 8)]
    assert activation_modules(model) == [model.hidden[0][2], model.hidden[1][2]]


def test_activation_modules_hooks_see_hidden_activations():
    model = build(ModelSpec(hidden=[6, 5], activation="tanh"), (4,), 2)
    seen = []
    hooks = [
        m.register_forward_hook(lambda m, i, o: seen.append(o.shape))
        for m in activation_modules(model)
    ]
    model(torch.randn(3, 4))
    for hook in hooks:
        hook.remove()
    assert seen == [(3, 6), (3, 5)]


def test_maxout_mlp_replaces_linear_and_activation():
    model = build(ModelSpec(hidden=[6], activation="maxout", maxout_pieces=3), (4,), 2)
    layer = model.hidden[0][0]
    assert isinstance(layer, Maxout) and tuple(layer.linear.weight.shape) == (18, 4)
    assert activation_modules(model) == [layer]


def test_residual_mlp_adds_identity_skips():
    torch.manual_seed(0)
    model = build(ModelSpec(hidden=[8, 8, 8], residual=True), (40,), 3)
    assert [layer.skip for layer in model.hidden] == [False, True, True]  # 40 -> 8 has no skip
    for layer in model.hidden[1:]:
        nn.init.zeros_(layer[0].weight)
        nn.init.zeros_(layer[0].bias)
    x = torch.randn(5, 40)
    h = model.hidden[0](x)
    torch.testing.assert_close(model.hidden[1](h), torch.zeros_like(h))  # the branch is 0 ...
    torch.testing.assert_close(model(x), model.head(h))  # ... so each block is the identity
    plain = build(ModelSpec(hidden=[8, 8, 8]), (40,), 3)
    assert not any(layer.skip for layer in plain.hidden)


def test_dropout_scales_kept_units_in_training_only():
    torch.manual_seed(0)
    model = build(ModelSpec(hidden=[2000], dropout=0.25), (10,), 2)
    dropout = model.hidden[0][-1]
    assert isinstance(dropout, nn.Dropout)
    captured = {}
    dropout.register_forward_hook(lambda m, i, o: captured.update(inp=i[0], out=o))
    x = torch.randn(4, 10)
    model(x)
    inp, out = captured["inp"], captured["out"]
    kept = out != 0
    torch.testing.assert_close(out[kept], inp[kept] / 0.75)  # inverted dropout: 1 / (1 - p)
    dropped = ((out == 0) & (inp != 0)).float().sum() / (inp != 0).float().sum()
    assert abs(dropped.item() - 0.25) < 0.03
    model.eval()
    model(x)
    torch.testing.assert_close(captured["out"], captured["inp"])


def test_batchnorm_in_a_conv_net():
    model = build(ModelSpec(kind="cnn", norm="batch"), (1, 8, 8), 10)
    assert isinstance(model.features[0][1], nn.BatchNorm2d)
    model = build(ModelSpec(kind="cnn", norm="layer"), (40,), 10)
    assert isinstance(model.features[0][1], nn.GroupNorm) and model.features[0][1].num_groups == 1


def test_weight_and_spectral_norm_parametrize_every_weight_layer():
    for kind in KINDS:
        for norm in ("weight", "spectral"):
            model = build(small_spec(kind, norm=norm, activation="maxout"), (40,), 3)
            layers = weight_layers(model)
            assert layers and all(parametrize.is_parametrized(m, "weight") for m in layers)


# --------------------------------------------------------------------------- errors


def test_a_kind_without_a_builder_raises(monkeypatch):
    monkeypatch.delitem(BUILDERS, "gpt")  # every kind has one now: take one away
    with pytest.raises(BabysitError, match=r"model.kind: 'gpt' is not available yet; available: mlp, cnn, resnet"):
        build(ModelSpec(kind="gpt"), (40,), 10)


def test_group_norm_needs_a_divisor():
    with pytest.raises(BabysitError, match=r"model.groups: 4 does not divide the 25 channels"):
        build(ModelSpec(kind="cnn", norm="group", groups=4), (40,), 10)
    with pytest.raises(
        BabysitError, match=r"model.groups: 3 does not divide the 100 channels of hidden layer 1"
    ):
        build(ModelSpec(norm="group", groups=3), (40,), 10)
    build(ModelSpec(kind="cnn", norm="group", groups=5), (40,), 10)


def test_other_user_errors():
    with pytest.raises(BabysitError, match="model.residual"):
        build(ModelSpec(kind="cnn", residual=True), (40,), 10)
    with pytest.raises(BabysitError, match="model.channels"):
        build(ModelSpec(kind="resnet", channels=[]), (40,), 10)
    with pytest.raises(BabysitError, match="model.init: 'zeros' cannot be used with model.norm"):
        build(ModelSpec(init="zeros", norm="weight"), (40,), 10)
    with pytest.raises(BabysitError, match="model.init: 'bogus' is unknown"):
        initialize(nn.Linear(2, 2), "bogus")


def test_seeded_builds_are_identical():
    for kind in KINDS:
        spec = small_spec(kind, norm="spectral", activation="prelu")
        torch.manual_seed(3)
        a = build(spec, (40,), 10).state_dict()
        torch.manual_seed(3)
        b = build(spec, (40,), 10).state_dict()
        assert a.keys() == b.keys()
        assert all(torch.equal(a[k], b[k]) for k in a)
        torch.manual_seed(4)
        c = build(spec, (40,), 10).state_dict()
        assert not all(torch.equal(a[k], c[k]) for k in a)


# --------------------------------------------------------------------------- init schemes

FAN_OUT, FAN_IN = 300, 500  # 150,000 draws: sample std within ~0.2% of the truth


def init_weight(scheme, nonlinearity="relu", std=None, layer=None):
    torch.manual_seed(0)
    layer = layer or nn.Linear(FAN_IN, FAN_OUT)
    initialize(layer, scheme, std=std, bias=0.3, nonlinearity=nonlinearity)
    assert torch.all(layer.bias == 0.3)
    return layer.weight.detach()


@pytest.mark.parametrize(
    "scheme, nonlinearity, expected_std",
    [
        ("kaiming", "relu", math.sqrt(2 / FAN_IN)),
        ("kaiming", "leaky_relu", math.sqrt(2 / (1 + 0.01**2) / FAN_IN)),
        ("kaiming", "prelu", math.sqrt(2 / (1 + 0.25**2) / FAN_IN)),
        ("kaiming", "tanh", 5 / 3 / math.sqrt(FAN_IN)),
        ("kaiming", "sigmoid", 1 / math.sqrt(FAN_IN)),
        ("lecun", "relu", 1 / math.sqrt(FAN_IN)),
        ("xavier", "sigmoid", math.sqrt(2 / (FAN_IN + FAN_OUT))),
        ("xavier", "tanh", 5 / 3 * math.sqrt(2 / (FAN_IN + FAN_OUT))),
        ("xavier", "relu", math.sqrt(2) * math.sqrt(2 / (FAN_IN + FAN_OUT))),
        ("normal", "relu", 0.01),
        ("uniform", "relu", 0.05 / math.sqrt(3)),  # U(-a, a) has std a / sqrt(3)
    ],
)
def test_init_std_matches_closed_form(scheme, nonlinearity, expected_std):
    weight = init_weight(scheme, nonlinearity)
    assert abs(weight.mean().item()) < 0.02 * expected_std  # standard error is 0.0026 std
    assert weight.std().item() == pytest.approx(expected_std, rel=0.02)


def test_init_std_override_and_uniform_bounds():
    assert init_weight("normal", std=0.2).std().item() == pytest.approx(0.2, rel=0.02)
    weight = init_weight("uniform", std=0.3)
    assert weight.abs().max().item() <= 0.3
    assert weight.abs().max().item() > 0.299
    # a uniform sample passes a Kolmogorov-Smirnov test against U(-0.3, 0.3)
    assert stats.kstest(weight.flatten().numpy(), stats.uniform(-0.3, 0.6).cdf).pvalue > 1e-3


def test_lecun_on_conv_uses_channels_times_kernel_fan_in():
    conv = nn.Conv2d(20, 200, 5)  # fan_in = 20 * 25 = 500
    weight = init_weight("lecun", layer=conv)
    assert weight.std().item() == pytest.approx(1 / math.sqrt(500), rel=0.02)


@pytest.mark.parametrize("nonlinearity", ["sigmoid", "relu"])
def test_orthogonal_init_rows_are_orthonormal_times_gain(nonlinearity):
    weight = init_weight("orthogonal", nonlinearity)  # (300, 500): rows orthogonal
    g = gain(nonlinearity)
    torch.testing.assert_close(weight @ weight.T, g**2 * torch.eye(FAN_OUT), atol=1e-4, rtol=0)


def test_zeros_init_and_bias_init_through_build():
    model = build(ModelSpec(hidden=[8], init="zeros", bias_init=0.1), (4,), 3)
    for layer in weight_layers(model):
        assert torch.all(layer.weight == 0)
        assert torch.allclose(layer.bias, torch.full_like(layer.bias, 0.1))


def test_build_uses_the_spec_activation_gain():
    torch.manual_seed(0)
    model = build(ModelSpec(hidden=[400], activation="tanh", init="kaiming"), (600,), 10)
    assert model.hidden[0][0].weight.std().item() == pytest.approx(5 / 3 / math.sqrt(600), rel=0.02)


def test_elu_gain_keeps_the_second_moment():
    # independent truth: numerical integration of E[elu(z)^2], z ~ N(0, 1)
    moment, _ = integrate.quad(
        lambda z: (z if z > 0 else math.expm1(z)) ** 2 * stats.norm.pdf(z), -30, 30, points=[0]
    )
    assert ELU_GAIN == pytest.approx(1 / math.sqrt(moment), rel=1e-6)
    assert gain("elu") == ELU_GAIN
    # maxout of two pieces: E[max(z1, z2)^2] = 1, so its gain is 1
    z = torch.randn(400_000, 2, generator=torch.Generator().manual_seed(0))
    assert z.amax(1).pow(2).mean().item() == pytest.approx(1.0, abs=0.01)
    assert gain("maxout") == 1.0


def test_init_through_weight_norm_gives_the_drawn_weight():
    torch.manual_seed(0)
    model = build(ModelSpec(hidden=[400], norm="weight", init="kaiming"), (500,), 10)
    layer = model.hidden[0][0]
    assert layer.weight.std().item() == pytest.approx(math.sqrt(2 / 500), rel=0.02)
    g = layer.parametrizations.weight.original0
    torch.testing.assert_close(g.flatten(), layer.weight.norm(dim=1).detach())


def test_init_through_spectral_norm_is_not_stale():
    torch.manual_seed(0)
    model = build(ModelSpec(hidden=[30], norm="spectral", init="normal", init_std=100.0), (20,), 10)
    model.eval()  # eval: no extra power iteration; sigma is what initialize left behind
    for layer in weight_layers(model):
        top = torch.linalg.matrix_norm(layer.weight.detach(), ord=2).item()
        assert top == pytest.approx(1.0, abs=0.02)


def test_infer_nonlinearity_when_not_given():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(600, 400), nn.Tanh(), nn.Linear(400, 10))
    initialize(net, "kaiming")
    assert net[0].weight.std().item() == pytest.approx(5 / 3 / math.sqrt(600), rel=0.02)


# --------------------------------------------------------------------------- layers


def test_maxout_is_the_max_of_its_pieces_by_hand():
    layer = Maxout(2, 2, pieces=3)
    with torch.no_grad():
        # unit 0: pieces x0, x1, -x0 ; unit 1: pieces x0 + x1, 0, x1 - 1 (bias -1)
        layer.linear.weight.copy_(torch.tensor([[1.0, 0], [0, 1], [-1, 0], [1, 1], [0, 0], [0, 1]]))
        layer.linear.bias.copy_(torch.tensor([0.0, 0, 0, 0, 0, -1]))
    x = torch.tensor([[2.0, -3.0], [-1.0, 0.5]])
    expected = torch.tensor(
        [[max(2.0, -3, -2), max(-1.0, 0, -4)], [max(-1.0, 0.5, 1), max(-0.5, 0, -0.5)]]
    )
    torch.testing.assert_close(layer(x), expected)


def test_maxout_gradcheck():
    torch.manual_seed(0)
    layer = Maxout(3, 2, pieces=3).double()
    x = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(layer, (x,))


def test_channel_maxout_groups_consecutive_channels():
    x = torch.randn(2, 6, 5)
    expected = torch.stack([x[:, 0:3].amax(1), x[:, 3:6].amax(1)], dim=1)
    torch.testing.assert_close(ChannelMaxout(3)(x), expected)
    x64 = torch.randn(2, 4, 3, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(ChannelMaxout(2), (x64,))


def test_sign_unit_forward_is_sign_and_gradient_is_straight_through():
    x = torch.tensor([-2.0, -0.5, 0.0, 0.3, 0.99, 1.5], requires_grad=True)
    y = SignUnit()(x)
    torch.testing.assert_close(y, torch.sign(x.detach()))
    y.backward(torch.arange(1.0, 7.0))
    # d hardtanh / dx = 1 inside [-1, 1], 0 outside
    torch.testing.assert_close(x.grad, torch.tensor([0.0, 2.0, 3.0, 4.0, 5.0, 0.0]))
    reference = x.detach().clone().requires_grad_(True)
    nn.functional.hardtanh(reference).backward(torch.arange(1.0, 7.0))
    torch.testing.assert_close(x.grad, reference.grad)


def test_gaussian_noise_only_in_training():
    noise = GaussianNoise(0.5)
    x = torch.ones(200, 500)
    torch.manual_seed(0)
    noisy = noise(x)
    assert (noisy - x).std().item() == pytest.approx(0.5, rel=0.02)
    assert abs((noisy - x).mean().item()) < 0.01
    noise.eval()
    assert noise(x) is x
    assert GaussianNoise(0.0)(x) is x


# --------------------------------------------------------------------------- deep residual nets start near ln C


def _initial_loss(overrides, input_shape=(40,), classes=10, seeds=2, tokens=False):
    import torch.nn.functional as F

    from babysit import config as _config
    from babysit import nets as _nets

    spec = _config.load(None, ["model.init=kaiming", *overrides])
    losses = []
    for seed in range(seeds):
        torch.manual_seed(seed)
        model = _nets.build(spec.model, input_shape, classes)
        x = torch.randint(0, classes, (64, *input_shape)) if tokens else torch.randn(256, *input_shape)
        with torch.no_grad():
            out = model(x).reshape(-1, classes)
        losses.append(F.cross_entropy(out, torch.randint(0, classes, (len(out),))).item())
    return max(losses)


@pytest.mark.parametrize("depth", [4, 16, 64])
@pytest.mark.parametrize(("kind", "norm"), [("mlp", "none"), ("mlp", "layer"), ("mlp", "batch"),
                                            ("resnet", "none"), ("resnet", "layer"), ("resnet", "batch")])
def test_deep_residual_nets_start_within_the_initial_loss_tolerance(kind, norm, depth):
    from babysit.checks.preflight import LOGIT_STD_MAX, _label_blind_loss

    tolerance = _label_blind_loss("cross_entropy", 10, LOGIT_STD_MAX)  # 9.46 for 10 classes; ln 10 = 2.30
    widths = ",".join(["64" if kind == "mlp" else "8"] * depth)
    layers = [f"model.hidden=[{widths}]", "model.residual=true"] if kind == "mlp" else \
        ["model.kind=resnet", f"model.channels=[{widths}]"]
    # measured, seeds 0-2: mlp 3.0-4.6, resnet 2.6-4.0 (before: mlp without norm 10.8 / 9350 / 6e14 at 4 / 16 / 64)
    assert _initial_loss([*layers, f"model.norm={norm}"]) < tolerance


@pytest.mark.parametrize("layers", [4, 16, 64])
def test_a_deep_gpt_starts_at_ln_vocabulary(layers):
    import math as _math

    loss = _initial_loss(["data.source=text", "model.kind=gpt", f"model.layers={layers}", "model.embed=32",
                          "model.heads=2", "data.context=16"], input_shape=(16,), classes=40, tokens=True)
    assert abs(loss - _math.log(40)) < 0.2  # measured 3.697-3.704 against ln 40 = 3.689


def test_the_advice_for_outputs_too_large_does_not_tell_a_kaiming_user_to_use_kaiming():
    from torch import nn as _nn

    from babysit.checks.preflight import preflight

    torch.manual_seed(0)
    blocks = [_nn.Linear(32, 32) for _ in range(24)]

    class Plain(_nn.Module):  # residual without any scaling: its outputs grow with depth
        def __init__(self):
            super().__init__()
            self.inp, self.blocks, self.head = _nn.Linear(8, 32), _nn.ModuleList(blocks), _nn.Linear(32, 10)
            for m in [self.inp, *self.blocks, self.head]:
                _nn.init.kaiming_normal_(m.weight, nonlinearity="relu")

        def forward(self, x):
            h = self.inp(x)
            for b in self.blocks:
                h = h + torch.relu(b(h))
            return self.head(h)

    x, y = torch.randn(64, 8), torch.randint(0, 10, (64,))
    found = {f.id: f for f in preflight(Plain(), _nn.CrossEntropyLoss(), (x, y), checks=["initial_loss_off"])}
    advice = found["initial_loss_off"].advice
    assert "already have a fan-in-scaled init" in advice and "model.init: kaiming" not in advice
