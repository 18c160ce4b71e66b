"""babysit.landscape against independent truth: exact Hessians from torch.func.hessian of
a functional loss over the flattened parameters, double backward on the whole dataset,
analytic quadratics, and direct recomputation of every loss. float64, eval mode."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from scipy.stats import wasserstein_distance
from torch import nn
from torch.func import functional_call

from babysit import landscape
from babysit.errors import BabysitError
from babysit.landscape import HessianOperator

pytestmark = pytest.mark.usefixtures("one_thread")

DT = torch.float64


# --------------------------------------------------------------------------- models, data


def mlp_tanh() -> tuple[nn.Module, tuple[torch.Tensor, torch.Tensor], nn.Module]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 6), nn.Tanh(), nn.Linear(6, 3)).to(DT)
    x = torch.randn(45, 3, dtype=DT)
    y = torch.randint(0, 3, (45,))
    return model, (x, y), nn.CrossEntropyLoss()


def tiny_cnn():
    torch.manual_seed(1)
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.Tanh(), nn.Flatten(), nn.Linear(18, 2)).to(DT)
    x = torch.randn(30, 1, 5, 5, dtype=DT)
    y = torch.randint(0, 2, (30,))
    return model, (x, y), nn.CrossEntropyLoss()


def bn_mlp():
    torch.manual_seed(2)
    model = nn.Sequential(
        nn.Linear(3, 6), nn.BatchNorm1d(6), nn.Tanh(), nn.Dropout(0.5), nn.Linear(6, 1)
    ).to(DT)
    x = torch.randn(40, 3, dtype=DT)
    y = torch.randn(40, 1, dtype=DT)
    with torch.no_grad():  # running statistics away from their (0, 1) start
        model.train()
        for _ in range(3):
            model(2.0 * x + 1.0)
        model[1].weight.uniform_(0.5, 1.5)
        model[1].bias.uniform_(-0.5, 0.5)
    return model, (x, y), nn.MSELoss()


ARCHITECTURES = {"mlp_tanh": mlp_tanh, "tiny_cnn": tiny_cnn, "bn_mlp": bn_mlp}


class Quadratic(nn.Module):
    """Loss 0.5 theta^T A theta (the inputs are ignored)."""

    def __init__(self, diagonal, theta=None):
        super().__init__()
        diagonal = torch.as_tensor(diagonal, dtype=DT)
        self.register_buffer("a", torch.diag(diagonal))
        start = torch.zeros_like(diagonal) if theta is None else torch.as_tensor(theta, dtype=DT)
        self.theta = nn.Parameter(start.clone())

    def forward(self, x):
        return 0.5 * self.theta @ self.a @ self.theta + 0.0 * x.sum()


def quadratic_loss(out, y):
    return out


QUADRATIC = [5.0, 3.0, 2.0, 1.0, 0.5, -4.0, 0.1, 0.0]
DUMMY = (torch.zeros(1, 1, dtype=DT), torch.zeros(1, dtype=DT))


# --------------------------------------------------------------------------- independent truth


def flat_params(model, names=None):
    named = dict(model.named_parameters())
    names = list(named) if names is None else names
    return names, torch.cat([named[n].detach().reshape(-1) for n in names])


def functional_loss(model, loss_fn, x, y, names=None):
    """The whole-dataset loss as a function of the flat parameters (eval mode, one batch)."""
    ref = copy.deepcopy(model).eval()
    names, theta = flat_params(ref, names)
    shapes = [dict(ref.named_parameters())[n].shape for n in names]
    sizes = [math.prod(s) for s in shapes]
    rest = {n: p.detach() for n, p in ref.named_parameters() if n not in names}
    rest.update(dict(ref.named_buffers()))

    def f(flat):
        pieces = torch.split(flat, sizes)
        state = {**rest, **{n: t.view(s) for n, t, s in zip(names, pieces, shapes, strict=True)}}
        return loss_fn(functional_call(ref, state, (x,)), y)

    return f, theta


def exact_hessian(model, loss_fn, data, names=None):
    f, theta = functional_loss(model, loss_fn, *data, names=names)
    h = torch.func.hessian(f)(theta)
    return 0.5 * (h + h.T)


def direct_loss(model, loss_fn, batches):
    """The example-weighted mean of batch losses, computed on a copy in eval mode."""
    ref = copy.deepcopy(model).eval()
    n = sum(len(x) for x, _ in batches)
    total = 0.0
    with torch.no_grad():
        for x, y in batches:
            total += len(x) / n * float(loss_fn(ref(x), y))
    return total


def fingerprint(model):
    return (
        {k: v.detach().clone() for k, v in model.state_dict(keep_vars=True).items()},
        [m.training for m in model.modules()],
        [p.requires_grad for p in model.parameters()],
        [None if p.grad is None else p.grad.clone() for p in model.parameters()],
    )


def assert_same(before, after):
    state_a, modes_a, flags_a, grads_a = before
    state_b, modes_b, flags_b, grads_b = after
    assert state_a.keys() == state_b.keys()
    for k in state_a:
        assert state_a[k].dtype == state_b[k].dtype
        assert torch.equal(state_a[k], state_b[k]), k
    assert modes_a == modes_b
    assert flags_a == flags_b
    assert all(
        (a is None and b is None) or torch.equal(a, b)
        for a, b in zip(grads_a, grads_b, strict=True)
    )


def rel(a, b):
    return float(
        (torch.as_tensor(a) - torch.as_tensor(b)).abs().max() / torch.as_tensor(b).abs().max()
    )


# --------------------------------------------------------------------------- 1. H v


def splits(x, y):
    n = len(x)
    yield "whole", (x, y)
    yield "batch 10", [(x[i : i + 10], y[i : i + 10]) for i in range(0, n, 10)]
    yield "batch 7 (ragged)", [(x[i : i + 7], y[i : i + 7]) for i in range(0, n, 7)]
    yield "uneven", [(x[:3], y[:3]), (x[3:25], y[3:25]), (x[25:], y[25:])]


@pytest.mark.parametrize("arch", list(ARCHITECTURES))
def test_hvp_matches_double_backward_for_any_batching(arch):
    model, (x, y), loss_fn = ARCHITECTURES[arch]()
    ref = copy.deepcopy(model).eval()
    params = list(ref.parameters())
    grads = torch.autograd.grad(loss_fn(ref(x), y), params, create_graph=True)
    v = torch.randn(
        sum(p.numel() for p in params), generator=torch.Generator().manual_seed(3), dtype=DT
    )
    pieces = torch.split(v, [p.numel() for p in params])
    dot = sum((g * p.view_as(g)).sum() for g, p in zip(grads, pieces, strict=True))
    truth = torch.cat([h.reshape(-1) for h in torch.autograd.grad(dot, params)])
    for name, data in splits(x, y):
        hv = HessianOperator(model, loss_fn, data).matvec(v)
        assert rel(hv, truth) < 1e-10, name
    # the batch_size argument splits the same way (45 = 4 x 11 + 1: ragged)
    assert (
        rel(landscape.hessian_vector_product(model, loss_fn, (x, y), v, batch_size=11), truth)
        < 1e-10
    )


def test_hvp_on_chosen_layers_is_the_sub_block():
    model, data, loss_fn = mlp_tanh()
    h = exact_hessian(model, loss_fn, data)
    op = HessianOperator(model, loss_fn, data, params=["2", "0.bias"])
    assert op.names == ["0.bias", "2.weight", "2.bias"]
    all_names = [n for n, _ in model.named_parameters()]
    sizes = [p.numel() for p in model.parameters()]
    offsets = dict(
        zip(all_names, torch.cumsum(torch.tensor([0, *sizes[:-1]]), 0).tolist(), strict=True)
    )
    idx = torch.cat(
        [
            torch.arange(offsets[n], offsets[n] + dict(zip(all_names, sizes, strict=True))[n])
            for n in op.names
        ]
    )
    v = torch.randn(op.dim, generator=torch.Generator().manual_seed(0), dtype=DT)
    assert rel(op.matvec(v), h[idx][:, idx] @ v) < 1e-10
    with pytest.raises(BabysitError, match="params"):
        HessianOperator(model, loss_fn, data, params=["nope"])


def test_model_untouched_by_every_public_call():
    model, data, loss_fn = bn_mlp()
    model.train()
    model[0].bias.requires_grad_(False)
    model[4].weight.grad = torch.ones_like(model[4].weight)
    other = copy.deepcopy(model)
    with torch.no_grad():
        for p in other.parameters():
            p.add_(0.1)
    before = fingerprint(model)
    calls = [
        lambda: landscape.hessian_vector_product(
            model,
            loss_fn,
            data,
            torch.ones(sum(p.numel() for p in model.parameters() if p.requires_grad), dtype=DT),
        ),
        lambda: landscape.hessian_eigenvalues(model, loss_fn, data, k=2),
        lambda: landscape.hessian_eigenvalues(
            model, loss_fn, data, k=2, which="bottom", method="power", max_steps=50
        ),
        lambda: landscape.hessian_trace(model, loss_fn, data, probes=4),
        lambda: landscape.spectral_density(model, loss_fn, data, steps=10, runs=2),
        lambda: landscape.classify_critical_point(model, loss_fn, data),
        lambda: landscape.random_directions(model, 2),
        lambda: landscape.loss_surface(model, loss_fn, data, steps=3),
        lambda: landscape.loss_surface(model, loss_fn, data, 1, steps=3, batched=False),
        lambda: landscape.interpolate(model, other, loss_fn, data, steps=3),
        lambda: landscape.trajectory_directions(model, [other, other.state_dict(), model]),
        lambda: landscape.jacobian_singular_values(model, data[0], samples=2),
        lambda: landscape.weight_singular_values(model),
    ]
    for call in calls:
        call()
        assert_same(before, fingerprint(model))
    # and the computations ran in eval mode: dropout off, running statistics used
    eval_loss = direct_loss(model, loss_fn, [data])
    assert landscape.loss_surface(model, loss_fn, data, steps=3).center_loss == pytest.approx(
        eval_loss, rel=1e-14
    )


# --------------------------------------------------------------------------- 2. eigenvalues


@pytest.mark.parametrize("arch", list(ARCHITECTURES))
def test_top_and_bottom_eigenvalues_match_the_exact_hessian(arch):
    model, data, loss_fn = ARCHITECTURES[arch]()
    exact = torch.linalg.eigvalsh(exact_hessian(model, loss_fn, data))
    scale = float(exact.abs().max())
    for which, truth in (("top", exact.flip(0)[:5]), ("bottom", exact[:5])):
        result = landscape.hessian_eigenvalues(model, loss_fn, data, k=5, which=which)
        assert result.converged
        err = (result.eigenvalues - truth).abs() / truth.abs().clamp(min=1e-3 * scale)
        assert float(err.max()) < 1e-3, (which, result.eigenvalues, truth)
        assert result.residuals.shape == (5,) and float(result.residuals.max()) < 1e-6 * scale
        # each residual is ||H v - lambda v|| for its unit eigenvector
        op = HessianOperator(model, loss_fn, data)
        for lam, vec, r in zip(
            result.eigenvalues, result.eigenvectors, result.residuals, strict=True
        ):
            assert float(vec.norm()) == pytest.approx(1.0, abs=1e-10)
            assert float((op.matvec(vec) - lam * vec).norm()) == pytest.approx(
                float(r), rel=1e-6, abs=1e-14
            )


def test_power_iteration_with_deflation_matches_lanczos():
    model, data, loss_fn = mlp_tanh()
    exact = torch.linalg.eigvalsh(exact_hessian(model, loss_fn, data)).flip(0)
    power = landscape.hessian_eigenvalues(model, loss_fn, data, k=3, method="power", tol=1e-9)
    assert rel(power.eigenvalues, exact[:3]) < 1e-3
    assert float(power.residuals.max()) < 1e-6 * float(exact.abs().max())


@pytest.mark.parametrize("which", ["top", "magnitude"])
def test_power_iteration_converges_on_the_deflated_residual(which):
    # The full residual of a later pair floors at the earlier pairs' residuals (~4e-8
    # here, against tol * 5 = 5e-8): it ran all 2,000 products and said not converged.
    # On the deflated residual: 335 (top) and 350 (magnitude) products in all.
    diagonal = [5.0, 5.0, 5.0, 2.0, 2.0, 1.0, 0.5, -4.0] + [0.3] * 30
    model = Quadratic(diagonal)
    eig = landscape.hessian_eigenvalues(
        model, quadratic_loss, DUMMY, k=4, which=which, method="power"
    )
    assert eig.converged
    assert eig.matvecs < 700
    exact = torch.linalg.eigvalsh(torch.diag(torch.tensor(diagonal, dtype=DT)))
    key = exact if which == "top" else exact.abs()
    expected = exact[torch.argsort(key, descending=True)][:4]
    assert rel(eig.eigenvalues, expected) < 1e-6


@pytest.mark.parametrize("method", ["lanczos", "power"])
def test_quadratic_spectrum(method):
    model = Quadratic(QUADRATIC)
    kw = {"method": method}
    top = landscape.hessian_eigenvalues(model, quadratic_loss, DUMMY, k=5, which="top", **kw)
    assert top.eigenvalues.tolist() == pytest.approx([5, 3, 2, 1, 0.5], abs=1e-6)
    bottom = landscape.hessian_eigenvalues(model, quadratic_loss, DUMMY, k=3, which="bottom", **kw)
    assert bottom.eigenvalues.tolist() == pytest.approx([-4, 0, 0.1], abs=1e-6)
    magnitude = landscape.hessian_eigenvalues(
        model, quadratic_loss, DUMMY, k=3, which="magnitude", **kw
    )
    assert magnitude.eigenvalues.tolist() == pytest.approx([5, -4, 3], abs=1e-6)
    # the eigenvectors are the coordinate axes
    assert float(top.eigenvectors[0].abs()[0]) == pytest.approx(1.0, abs=1e-6)


def test_repeated_eigenvalues_come_with_their_multiplicity():
    model = Quadratic([2.0, 2.0, 2.0, 1.0, -1.0, -1.0])
    top = landscape.hessian_eigenvalues(model, quadratic_loss, DUMMY, k=4)
    assert top.eigenvalues.tolist() == pytest.approx([2, 2, 2, 1], abs=1e-10)


def test_same_seed_same_output():
    model, data, loss_fn = mlp_tanh()
    for method in ("lanczos", "power"):
        a = landscape.hessian_eigenvalues(
            model, loss_fn, data, k=3, seed=7, method=method, max_steps=30
        )
        b = landscape.hessian_eigenvalues(
            model, loss_fn, data, k=3, seed=7, method=method, max_steps=30
        )
        assert torch.equal(a.eigenvalues, b.eigenvalues) and torch.equal(
            a.eigenvectors, b.eigenvectors
        )
    t1, t2 = (landscape.hessian_trace(model, loss_fn, data, probes=5, seed=3) for _ in range(2))
    assert torch.equal(t1.samples, t2.samples)
    d1, d2 = (
        landscape.spectral_density(model, loss_fn, data, steps=10, runs=2, seed=3) for _ in range(2)
    )
    assert torch.equal(d1.nodes, d2.nodes) and torch.equal(d1.weights, d2.weights)
    s1, s2 = (landscape.loss_surface(model, loss_fn, data, steps=3, seed=3) for _ in range(2))
    assert torch.equal(s1.losses, s2.losses)


def test_float32_works():
    model, data, loss_fn = mlp_tanh()
    exact = torch.linalg.eigvalsh(exact_hessian(model, loss_fn, data)).flip(0)
    model32 = copy.deepcopy(model).float()
    data32 = (data[0].float(), data[1])
    top = landscape.hessian_eigenvalues(model32, loss_fn, data32, k=3)
    assert top.eigenvalues.dtype == torch.float32
    assert rel(top.eigenvalues.double(), exact[:3]) < 1e-3
    assert landscape.hessian_trace(model32, loss_fn, data32, probes=10).trace > 0
    assert landscape.loss_surface(model32, loss_fn, data32, steps=3).losses.shape == (3, 3)


# --------------------------------------------------------------------------- 3. trace


def wide_regression():
    """A net whose Hessian is spread over many eigenvalues: Hutchinson's standard error
    with 100 probes is about 2% of the trace here (on the 45-parameter MLP it is 8%,
    so 5% would be luck there; the 3-standard-error bound holds everywhere)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 16), nn.Tanh(), nn.Linear(16, 8)).to(DT)
    return model, (torch.randn(200, 16, dtype=DT), torch.randn(200, 8, dtype=DT)), nn.MSELoss()


def test_hutchinson_trace():
    model, data, loss_fn = wide_regression()
    exact = float(torch.trace(exact_hessian(model, loss_fn, data)))
    result = landscape.hessian_trace(model, loss_fn, data)
    assert result.probes == 100 and len(result.samples) == 100  # every probe ran
    assert abs(result.trace - exact) <= 0.05 * abs(exact)
    assert abs(result.trace - exact) <= 3 * result.std_error
    assert result.std_error == pytest.approx(float(result.samples.std()) / 10)


@pytest.mark.parametrize("arch", list(ARCHITECTURES))
def test_hutchinson_trace_within_three_standard_errors(arch):
    model, data, loss_fn = ARCHITECTURES[arch]()
    exact = float(torch.trace(exact_hessian(model, loss_fn, data)))
    result = landscape.hessian_trace(model, loss_fn, data)
    assert abs(result.trace - exact) <= 3 * result.std_error


# --------------------------------------------------------------------------- 4. density


def deeper_mlp():
    torch.manual_seed(4)
    model = nn.Sequential(
        nn.Linear(6, 12), nn.Tanh(), nn.Linear(12, 12), nn.Tanh(), nn.Linear(12, 3)
    ).to(DT)
    return model, (torch.randn(60, 6, dtype=DT), torch.randint(0, 3, (60,))), nn.CrossEntropyLoss()


def test_spectral_density_by_stochastic_lanczos_quadrature():
    # 279 parameters: with fewer, the randomness of the quadrature weights (runs x D
    # samples) alone moves Wasserstein-1 to about 1% of the range
    model, data, loss_fn = deeper_mlp()
    exact = torch.linalg.eigvalsh(exact_hessian(model, loss_fn, data))
    lo, hi = float(exact[0]), float(exact[-1])
    width = hi - lo
    density = landscape.spectral_density(model, loss_fn, data, steps=60, runs=10)
    assert len(density.nodes) == 600
    w, nodes = density.weights, density.nodes
    assert not torch.is_complex(w) and bool((w >= 0).all())
    assert float(w.sum()) == pytest.approx(1.0, abs=1e-12)
    assert float(nodes.min()) >= lo - 1e-9 * width and float(nodes.max()) <= hi + 1e-9 * width
    assert abs(float(nodes.max()) - hi) <= 1e-3 * abs(hi)
    distance = wasserstein_distance(nodes.numpy(), exact.numpy(), u_weights=w.numpy())
    assert distance <= 0.01 * width, distance / width
    smooth = density.density(torch.linspace(lo - 1, hi + 1, 2001, dtype=DT))
    assert float(smooth.sum() * (width + 2) / 2000) == pytest.approx(1.0, abs=1e-2)


# --------------------------------------------------------------------------- 5. critical points


@pytest.mark.parametrize(
    "diagonal, kind",
    [([3.0, 1.0, 0.5], "minimum"), ([-3.0, -1.0, -0.5], "maximum"), ([3.0, -1.0, 0.5], "saddle")],
)
def test_analytic_quadratics_are_classified(diagonal, kind):
    point = landscape.classify_critical_point(Quadratic(diagonal), quadratic_loss, DUMMY)
    assert point.kind == kind and point.gradient_norm == 0.0
    assert point.lambda_max == pytest.approx(max(diagonal)) and point.lambda_min == pytest.approx(
        min(diagonal)
    )
    # away from the stationary point it is not critical
    away = landscape.classify_critical_point(
        Quadratic(diagonal, theta=[1.0, 1.0, 1.0]), quadratic_loss, DUMMY
    )
    assert away.kind == "not_critical"


def test_logistic_regression_optimum_is_a_minimum_with_the_exact_condition_number():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(200, 4, generator=g, dtype=DT)
    y = (
        x @ torch.tensor([1.0, -2.0, 0.5, 0.0], dtype=DT) + torch.randn(200, generator=g, dtype=DT)
        > 0
    ).to(DT)
    model = nn.Linear(4, 1).to(DT)

    def loss_fn(out, target):
        return nn.functional.binary_cross_entropy_with_logits(out.squeeze(1), target)

    # solve to the optimum by Newton's method on the exact Hessian (labels are noisy, so
    # the classes overlap and the optimum is finite)
    f, theta = functional_loss(model, loss_fn, x, y)
    for _ in range(30):
        grad = torch.func.grad(f)(theta)
        if float(grad.norm()) < 1e-13:
            break
        theta = theta - torch.linalg.solve(torch.func.hessian(f)(theta), grad)
    with torch.no_grad():
        torch.nn.utils.vector_to_parameters(theta, model.parameters())
    assert float(torch.func.grad(f)(theta).norm()) < 1e-10
    exact = torch.linalg.eigvalsh(exact_hessian(model, loss_fn, (x, y)))
    point = landscape.classify_critical_point(model, loss_fn, (x, y), lr=0.5)
    assert point.kind == "minimum" and point.strict
    assert point.condition_number == pytest.approx(float(exact[-1] / exact[0]), rel=1e-3)
    assert point.step_size_limit == pytest.approx(2 / float(exact[-1]), rel=1e-3)
    assert point.lr_above_limit is (0.5 > 2 / float(exact[-1]))


def test_a_briefly_trained_mlp_is_not_called_a_minimum():
    model, (x, y), loss_fn = mlp_tanh()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    for _ in range(20):
        optimizer.zero_grad()
        loss_fn(model(x), y).backward()
        optimizer.step()
    model.zero_grad(set_to_none=True)
    point = landscape.classify_critical_point(model, loss_fn, (x, y))
    assert point.kind != "minimum"
    assert point.gradient_norm > point.grad_tol
    # on curvature alone (no gradient test) it is not a minimum either: lambda_min < 0
    curvature_only = landscape.classify_critical_point(model, loss_fn, (x, y), grad_tol=math.inf)
    assert curvature_only.kind == "saddle" and curvature_only.lambda_min < 0


def test_two_layer_linear_network_at_zero_is_a_saddle():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(50, 3, generator=g, dtype=DT)
    y = x @ torch.randn(3, 2, generator=g, dtype=DT)
    model = nn.Sequential(nn.Linear(3, 4, bias=False), nn.Linear(4, 2, bias=False)).to(DT)
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
    point = landscape.classify_critical_point(model, nn.MSELoss(), (x, y))
    assert point.gradient_norm == 0.0
    assert point.kind == "saddle"
    assert point.lambda_min == pytest.approx(-point.lambda_max, rel=1e-6)  # +-sigma pairs


# --------------------------------------------------------------------------- 6. surfaces


def test_random_directions_are_seeded_gaussian_and_filter_normalised():
    model, _, _ = tiny_cnn()
    raw = landscape.random_directions(
        model, 2, seed=5, filter_normalize=False, ignore_bias_and_norm=False
    )
    g = torch.Generator().manual_seed(5)
    for direction in raw:
        for name, p in model.named_parameters():
            assert torch.equal(direction[name], torch.randn(p.shape, generator=g, dtype=DT))
    (d,) = landscape.random_directions(model, 1, seed=5)
    for name, p in model.named_parameters():
        if p.dim() > 1:
            assert torch.allclose(
                d[name].flatten(1).norm(dim=1), p.detach().flatten(1).norm(dim=1), rtol=1e-6, atol=0
            )
        else:
            assert bool((d[name] == 0).all()), name
    model, _, _ = bn_mlp()
    (d,) = landscape.random_directions(model, 1, seed=0)
    assert bool((d["1.weight"] == 0).all()) and bool((d["1.bias"] == 0).all())


def test_loss_surface_grid_is_exact():
    model, (x, y), loss_fn = bn_mlp()
    batches = [(x[i : i + 16], y[i : i + 16]) for i in range(0, 40, 16)]  # ragged: 16, 16, 8
    surface = landscape.loss_surface(
        model, loss_fn, batches, steps=5, span=0.5, seed=1, batched=True
    )
    a, b = surface.coordinates
    assert a.tolist() == [-0.5, -0.25, 0.0, 0.25, 0.5] and b.tolist() == a.tolist()
    centre = direct_loss(model, loss_fn, batches)
    assert surface.center_loss == centre
    assert float(surface.losses[2, 2]) == pytest.approx(centre, rel=1e-14, abs=0)
    d1, d2 = surface.directions
    for i, ai in enumerate(a.tolist()):
        for j, bj in enumerate(b.tolist()):
            moved = copy.deepcopy(model)
            with torch.no_grad():
                for name, p in moved.named_parameters():
                    p.add_(ai * d1[name] + bj * d2[name])
            assert float(surface.losses[i, j]) == pytest.approx(
                direct_loss(moved, loss_fn, batches), rel=1e-10
            )
    unbatched = landscape.loss_surface(
        model, loss_fn, batches, steps=5, span=0.5, seed=1, batched=False
    )
    assert float(unbatched.losses[2, 2]) == centre
    assert rel(unbatched.losses, surface.losses) < 1e-12
    with pytest.raises(BabysitError, match="odd"):
        landscape.loss_surface(model, loss_fn, batches, steps=4)


def test_finite_difference_curvature_along_a_direction_is_d_h_d():
    model, data, loss_fn = mlp_tanh()
    h = exact_hessian(model, loss_fn, data)
    (d,) = landscape.random_directions(model, 1, seed=2)
    flat = torch.cat([d[n].reshape(-1) for n, _ in model.named_parameters()])
    step = 1e-3
    curve = landscape.loss_surface(model, loss_fn, data, [d], steps=3, span=step)
    second = float(curve.losses[0] - 2 * curve.losses[1] + curve.losses[2]) / step**2
    assert second == pytest.approx(float(flat @ h @ flat), rel=1e-3)
    # along the top eigenvector the curvature is lambda_max
    top = landscape.hessian_eigenvalues(model, loss_fn, data, k=1)
    curve = landscape.loss_surface(model, loss_fn, data, [top.vector(0)], steps=3, span=step)
    second = float(curve.losses[0] - 2 * curve.losses[1] + curve.losses[2]) / step**2
    assert second == pytest.approx(float(top.eigenvalues[0]), rel=1e-3)


def test_interpolation_has_exact_end_points():
    model, data, loss_fn = bn_mlp()
    other = copy.deepcopy(model)
    with torch.no_grad():
        for p in other.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=torch.Generator().manual_seed(0), dtype=DT))
        other[1].running_mean.add_(0.5)
    line = landscape.interpolate(model, other, loss_fn, data, steps=7)
    assert line.alphas[0] == 0.0 and line.alphas[-1] == 1.0 and len(line.alphas) == 7
    assert float(line.losses[0]) == direct_loss(model, loss_fn, [data])
    assert float(line.losses[-1]) == direct_loss(other, loss_fn, [data])
    assert line.barrier >= 0.0
    # a state dict does as well as a module; extra alphas keep 0 and 1
    wide = landscape.interpolate(model, other.state_dict(), loss_fn, data, alphas=[-0.5, 0.5, 1.5])
    assert wide.alphas.tolist() == [-0.5, 0.0, 0.5, 1.0, 1.5]
    assert float(wide.losses[3]) == float(line.losses[-1])


def two_linear_models():
    torch.manual_seed(3)
    a, b = nn.Linear(3, 1).to(DT), nn.Linear(3, 1).to(DT)
    x, y = torch.randn(20, 3, dtype=DT), torch.randn(20, 1, dtype=DT)
    return a, b, (x, y), nn.MSELoss()


def test_interpolation_barrier_ignores_alphas_past_the_ends():
    # MSE of a linear model is convex in the weights: no barrier between two of them,
    # though past the ends the loss rises above the extrapolated chord
    a, b, data, loss_fn = two_linear_models()
    alphas = torch.arange(-5, 16, dtype=DT) / 10  # -0.5..1.5, with 0 and 1 exactly
    line = landscape.interpolate(a, b, loss_fn, data, alphas=alphas)
    l0, l1 = float(line.losses[line.alphas == 0.0][0]), float(line.losses[line.alphas == 1.0][0])
    rise = line.losses - ((1 - line.alphas) * l0 + line.alphas * l1)
    outside = (line.alphas < 0) | (line.alphas > 1)
    assert float(rise[outside].min()) > 0.1  # the old barrier took these
    assert line.barrier == pytest.approx(0.0, abs=1e-12)
    # the points past the ends are still there, for plots
    assert line.alphas[0] == -0.5 and line.alphas[-1] == 1.5 and len(line.alphas) == 21


def test_interpolation_barrier_inside_the_segment():
    # tanh is odd, so (w1, w2) and (-w1, -w2) are the same function; halfway the weights
    # are zero and the output is 0: a real barrier at alpha = 0.5
    torch.manual_seed(4)
    a = nn.Sequential(nn.Linear(1, 1, bias=False), nn.Tanh(), nn.Linear(1, 1, bias=False))
    a = a.to(DT)
    with torch.no_grad():
        a[0].weight.fill_(1.0)
        a[2].weight.fill_(2.0)
    b = copy.deepcopy(a)
    with torch.no_grad():
        for p in b.parameters():
            p.neg_()
    x = torch.randn(30, 1, dtype=DT)
    data = (x, 2.0 * torch.tanh(x))
    loss_fn = nn.MSELoss()
    line = landscape.interpolate(a, b, loss_fn, data, alphas=[-0.5, 0.5, 1.5])
    end = direct_loss(a, loss_fn, [data])
    assert end == pytest.approx(0.0, abs=1e-12)
    middle = float((data[1] ** 2).mean())  # the loss of the zero output
    assert line.barrier == pytest.approx(middle - end, rel=1e-12)
    assert line.barrier > 0.1


def test_trajectory_directions_are_the_principal_components_of_the_path():
    from sklearn.decomposition import PCA

    model, data, loss_fn = mlp_tanh()
    names, end = flat_params(model)
    g = torch.Generator().manual_seed(0)
    u, v = torch.linalg.qr(torch.randn(len(end), 2, generator=g, dtype=DT))[0].T
    t = torch.linspace(1, 0, 12, dtype=DT)[:-1]
    offsets = (
        3 * t[:, None] * u
        + torch.sin(4 * t)[:, None] * v
        + 1e-3 * torch.randn(11, len(end), generator=g, dtype=DT)
    )
    states = []
    for row in offsets:
        moved = copy.deepcopy(model)
        with torch.no_grad():
            torch.nn.utils.vector_to_parameters(end + row, moved.parameters())
        states.append(moved.state_dict())
    found = landscape.trajectory_directions(model, states)
    pca = PCA(n_components=2).fit(offsets.numpy())
    for direction, component in zip(found.directions, pca.components_, strict=True):
        flat = torch.cat([direction[n].reshape(-1) for n in names])
        assert abs(float(flat @ torch.as_tensor(component))) == pytest.approx(1.0, abs=1e-10)
    assert found.explained_variance_ratio.numpy() == pytest.approx(
        pca.explained_variance_ratio_, rel=1e-10
    )
    flats = torch.stack([torch.cat([d[n].reshape(-1) for n in names]) for d in found.directions])
    assert torch.allclose(found.coordinates, offsets @ flats.T, atol=1e-12)
    surface = landscape.loss_surface(model, loss_fn, data, found.directions, steps=3)
    assert float(surface.losses[1, 1]) == pytest.approx(
        direct_loss(model, loss_fn, [data]), rel=1e-14
    )


def test_hvp_through_weight_norm_is_exact():
    # torch._weight_norm's own double backward is wrong on the CPU (gradgradcheck fails);
    # the operator swaps in a composite. Truth: the same net with weight norm written out.
    from torch.nn.utils import parametrizations

    torch.manual_seed(0)
    model = nn.Sequential(
        parametrizations.weight_norm(nn.Linear(3, 5)), nn.Tanh(), nn.Linear(5, 2)
    ).to(DT)
    x, y = torch.randn(30, 3, dtype=DT), torch.randint(0, 2, (30,))
    op = HessianOperator(model, nn.CrossEntropyLoss(), (x, y))
    assert op.names == [
        "0.bias",
        "0.parametrizations.weight.original0",
        "0.parametrizations.weight.original1",
        "2.weight",
        "2.bias",
    ]
    sizes = [5, 5, 15, 10, 2]

    def loss(flat):
        b0, g, v, w2, b2 = torch.split(flat, sizes)
        v = v.view(5, 3)
        w = g.view(5, 1) * v / v.norm(dim=1, keepdim=True)
        hidden = torch.tanh(x @ w.T + b0)
        return nn.functional.cross_entropy(hidden @ w2.view(2, 5).T + b2, y)

    exact = torch.func.hessian(loss)(op.theta)
    v = torch.randn(op.dim, generator=torch.Generator().manual_seed(0), dtype=DT)
    assert rel(op.matvec(v), exact @ v) < 1e-10
    assert torch._weight_norm is not None and torch._weight_norm.__module__ == "torch"


# --------------------------------------------------------------------------- Jacobian spectra


def test_jacobian_singular_values():
    torch.manual_seed(0)
    deep_linear = nn.Sequential(*[nn.Linear(6, 6, bias=False) for _ in range(8)]).to(DT)
    for layer in deep_linear:
        nn.init.orthogonal_(layer.weight)
    x = torch.randn(5, 6, dtype=DT)
    spectrum = landscape.jacobian_singular_values(deep_linear, x)
    assert spectrum.values.shape == (5, 6)
    assert torch.allclose(spectrum.values, torch.ones(5, 6, dtype=DT), atol=1e-12)  # isometry
    for name, values in landscape.weight_singular_values(deep_linear).items():
        assert torch.allclose(values, torch.ones(6, dtype=DT), atol=1e-12), name
    # a BatchNorm net in training mode: eval-mode Jacobians, model untouched
    model, (x, _), _ = bn_mlp()
    model.train()
    before = fingerprint(model)
    spectrum = landscape.jacobian_singular_values(model, x, samples=4)
    assert_same(before, fingerprint(model))
    ref = copy.deepcopy(model).eval()
    for i in range(4):
        jac = torch.autograd.functional.jacobian(
            lambda inp: ref(inp.unsqueeze(0)).reshape(-1), x[i]
        )
        assert rel(spectrum.values[i], torch.linalg.svdvals(jac)) < 1e-12
