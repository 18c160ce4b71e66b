"""The edge-of-stability check (``checks.sharpness_every``): the tracked sharpness against
torch.func.hessian, the warm start, the optimizers' thresholds against torch's own updates on
a quadratic, the findings on records and runs built to have them (and on healthy ones), the
figure, and Cohen et al.'s headline (arXiv 2103.00065) reproduced through the run path."""

from __future__ import annotations

import json
import math
import statistics

import pytest
import torch
from torch import nn
from torch.func import functional_call

from babysit import config
from babysit.checks.sharpness import (
    CONSECUTIVE,
    EDGE_RATIO,
    effective_lr,
    oscillation,
    preconditioner_diagonal,
    sharpness_findings,
    stability_rule,
)
from babysit.data.batching import Batches
from babysit.optim.newton import Newton
from babysit.optim.quickprop import Quickprop
from babysit.report.figures import PNG_SIGNATURE, png_bytes
from babysit.report.figures_sharpness import sharpness_figure
from babysit.run import run
from babysit.run.runner import assemble
from babysit.rundir import read_jsonl
from babysit.train.callbacks.sharpness import SharpnessCallback, measure_sharpness
from babysit.train.loop import Trainer

pytestmark = pytest.mark.usefixtures("one_thread")

DT = torch.float64


def small_net(seed: int = 0) -> tuple[nn.Module, tuple[torch.Tensor, torch.Tensor]]:
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(4, 7), nn.Tanh(), nn.Linear(7, 2)).to(DT)
    return model, (torch.randn(50, 4, dtype=DT), torch.randn(50, 2, dtype=DT))


def exact_hessian(model: nn.Module, loss_fn, data) -> torch.Tensor:
    """The Hessian of the batch loss over the flattened parameters, by torch.func.hessian."""
    names = [n for n, _ in model.named_parameters()]
    params = dict(model.named_parameters())
    sizes = [p.numel() for p in params.values()]
    theta = torch.cat([p.detach().reshape(-1) for p in params.values()])

    def loss(flat):
        state = {n: t.view(params[n].shape) for n, t in zip(names, torch.split(flat, sizes), strict=True)}
        return loss_fn(functional_call(model, state, (data[0],)), data[1])

    return torch.func.hessian(loss)(theta)


# --------------------------------------------------------------------------- the tracker


def test_sharpness_is_the_top_eigenvalue_of_the_exact_hessian():
    model, data = small_net()
    sample = measure_sharpness(model, nn.MSELoss(), data, tol=1e-10, max_steps=200)
    truth = float(torch.linalg.eigvalsh(exact_hessian(model, nn.MSELoss(), data))[-1])
    assert sample.converged
    assert abs(sample.lambda_max - truth) <= 1e-6 * abs(truth)
    assert math.isclose(sample.loss, float(nn.MSELoss()(model(data[0]), data[1]).detach()), rel_tol=1e-12)


def test_preconditioned_sharpness_matches_adams_own_step_and_the_exact_matrix():
    """P read off Adam's state is the one torch's step divides by (θ_old − θ_new = η m / P,
    checked on the step itself), and λmax(P^-½ H P^-½) matches eigvalsh of the exact matrix
    and the eigenvalues of P⁻¹H."""
    model, data = small_net(1)
    loss_fn = nn.MSELoss()
    opt = torch.optim.Adam(model.parameters(), lr=0.01, betas=(0.9, 0.99), eps=1e-3)
    params = list(model.parameters())
    for _ in range(3):
        before = torch.cat([p.detach().reshape(-1).clone() for p in params])
        opt.zero_grad()
        loss_fn(model(data[0]), data[1]).backward()
        opt.step()
    after = torch.cat([p.detach().reshape(-1) for p in params])
    m = torch.cat([opt.state[p]["exp_avg"].reshape(-1) for p in params])
    diagonal = preconditioner_diagonal(opt, params, "adam")
    torch.testing.assert_close(before - after, 0.01 * m / diagonal, rtol=1e-10, atol=1e-14)

    sample = measure_sharpness(model, loss_fn, data, scale=diagonal.rsqrt(), tol=1e-10, max_steps=200)
    h = exact_hessian(model, loss_fn, data)
    s = diagonal.rsqrt()
    truth = float(torch.linalg.eigvalsh(s[:, None] * h * s[None, :])[-1])
    assert abs(sample.lambda_max - truth) <= 1e-6 * abs(truth)
    unsymmetric = torch.linalg.eigvals(h / diagonal[:, None]).real.max()  # P⁻¹H: the same spectrum
    assert abs(sample.lambda_max - float(unsymmetric)) <= 1e-6 * abs(truth)
    assert stability_rule(opt).preconditioner == "adam"


def test_warm_start_from_the_previous_eigenvector_takes_fewer_products():
    model, data = small_net(2)
    loss_fn = nn.MSELoss()
    cold = measure_sharpness(model, loss_fn, data, tol=1e-8, max_steps=200)
    # the same weights: the start is the eigenvector, one Lanczos step and the residual's product
    same = measure_sharpness(model, loss_fn, data, start=cold.vector, tol=1e-8, max_steps=200)
    assert same.matvecs == 2 < cold.matvecs
    assert abs(same.lambda_max - cold.lambda_max) <= 1e-8 * cold.lambda_max
    # after a small gradient step: the top direction moved a little (cold 12 products, warm 6 here)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    loss_fn(model(data[0]), data[1]).backward()
    opt.step()
    cold_after = measure_sharpness(model, loss_fn, data, tol=1e-8, max_steps=200)
    warm_after = measure_sharpness(model, loss_fn, data, start=cold.vector, tol=1e-8, max_steps=200)
    assert abs(warm_after.lambda_max - cold_after.lambda_max) <= 1e-6 * cold_after.lambda_max
    assert warm_after.matvecs < cold_after.matvecs


# --------------------------------------------------------------------------- the thresholds


def diverges(optimizer_factory, curvature: float, steps: int = 400) -> bool:
    """torch's optimizer on f(θ) = curvature θ²/2 from θ = 1: does |θ| end above 1?"""
    theta = nn.Parameter(torch.ones(1, dtype=DT))
    opt = optimizer_factory([theta])
    for _ in range(steps):
        opt.zero_grad()
        (0.5 * curvature * theta**2).sum().backward()
        opt.step()
    return bool(theta.detach().abs().item() > 1.0)


@pytest.mark.parametrize("kwargs", [{}, {"momentum": 0.9}, {"momentum": 0.5, "nesterov": True},
                                    {"momentum": 0.9, "nesterov": True}, {"momentum": 0.9, "dampening": 0.9}])
def test_each_sgd_threshold_is_where_torchs_sgd_starts_to_diverge(kwargs):
    lr = 0.1

    def make(params):
        return torch.optim.SGD(params, lr=lr, **kwargs)

    threshold = stability_rule(make([nn.Parameter(torch.zeros(1))])).threshold(lr)
    assert not diverges(make, 0.97 * threshold)
    assert diverges(make, 1.03 * threshold)


def test_adam_threshold_is_heavy_ball_with_an_averaged_gradient():
    """Adam with P frozen is SGD(momentum=β₁, dampening=β₁) (m ← β₁m + (1−β₁)g) on P⁻¹H: the
    same threshold, 38/η at β₁ = 0.9, which the SGD test above checks against torch."""
    p = [nn.Parameter(torch.zeros(1))]
    adam = stability_rule(torch.optim.Adam(p, lr=0.01))
    assert math.isclose(adam.threshold(0.01), 38 / 0.01)
    assert adam.threshold(0.01) == stability_rule(torch.optim.SGD(p, lr=0.01, momentum=0.9, dampening=0.9)).threshold(0.01)
    assert stability_rule(torch.optim.AdamW(p, lr=0.01, betas=(0.8, 0.99))).threshold(1.0) == pytest.approx(3.6 / 0.2)
    assert stability_rule(torch.optim.RMSprop(p, lr=0.01)).threshold(0.01) == pytest.approx(200)
    assert stability_rule(torch.optim.RMSprop(p, lr=0.01)).preconditioner == "rmsprop"
    adagrad = torch.optim.Adagrad(p, lr=0.1, lr_decay=0.5)
    p[0].grad = torch.ones(1)
    adagrad.step()
    assert effective_lr(adagrad) == pytest.approx(0.1 / 1.5)  # the lr of the next step


def test_optimizers_that_choose_their_own_step_have_no_threshold():
    params = [nn.Parameter(torch.zeros(2))]
    for opt in (torch.optim.LBFGS(params), Newton(params, lr=1.0, module=nn.Linear(1, 2)), Quickprop(params, lr=0.1)):
        rule = stability_rule(opt)
        assert rule.threshold(0.1) is None and rule.note


# --------------------------------------------------------------------------- the findings


def records(ratios, losses, lr=0.1, step=10):
    threshold = 2 / lr
    return [{"step": step * (i + 1), "lambda_max": r * threshold, "threshold": threshold, "ratio": r,
             "lr": lr, "loss": loss, "rule": "2/η", "quantity": "λmax(H)"} for i, (r, loss) in enumerate(zip(ratios, losses, strict=True))]


def test_edge_of_stability_fires_on_a_plateau_at_the_threshold_and_not_below():
    falling = [1.0 / (i + 1) for i in range(12)]
    rising = [0.3, 0.5, 0.7, 0.85] + [0.97, 1.02, 0.99, 1.05, 1.01, 0.98, 1.03, 1.0]
    found = sharpness_findings(records(rising, falling))
    assert [f.id for f in found] == ["edge_of_stability"]
    edge = found[0]
    assert edge.severity == "info" and edge.step == 50
    assert edge.evidence["samples"] == 8 and edge.evidence["ratio_min"] == 0.97
    assert "2/η" in edge.message and "20" in edge.message and "Nothing to fix" in edge.advice
    # below the bar, or at it for fewer than CONSECUTIVE samples: nothing
    assert sharpness_findings(records([0.85] * 12, falling)) == []
    short = [0.5] * 4 + [1.0] * (CONSECUTIVE - 1) + [0.5] * 4
    assert sharpness_findings(records(short, falling)) == []
    # no threshold (L-BFGS): nothing, whatever λmax does
    assert sharpness_findings([{**r, "threshold": None, "ratio": None} for r in records(rising, falling)]) == []


def test_lr_beyond_stability_needs_the_ratio_held_and_the_loss_oscillating():
    ratios = [1.0] * 4 + [1.5, 1.6, 1.45, 1.7, 1.5, 1.6] + [1.0] * 3
    bouncing = [0.5, 0.45, 0.4, 0.38, 0.5, 0.35, 0.6, 0.3, 0.7, 0.4, 0.3, 0.29, 0.28]
    found = sharpness_findings(records(ratios, bouncing, lr=0.2))
    assert [(f.id, f.severity) for f in found] == [("lr_beyond_stability", "warning")]
    beyond = found[0]
    assert beyond.evidence["samples"] == 6 and beyond.evidence["rises"] == 2
    assert beyond.evidence["lr_suggested"] == pytest.approx(0.2 / 1.6)  # lr / median ratio
    assert "0.125" in beyond.advice and "1.45-1.70x" in beyond.message
    # the same ratios with a falling loss: not beyond (the edge instead)
    assert [f.id for f in sharpness_findings(records(ratios, [1 / (i + 1) for i in range(13)]))] == ["edge_of_stability"]
    # a diverging loss (non-finite) counts as rising
    assert oscillation(records([1.3] * 5, [0.1, 0.2, None, None, None]))["oscillates"]


# --------------------------------------------------------------------------- runs

TINY = ["data.source=digits", "data.train_size=256", "model.hidden=[16]", "checks.preflight=false",
        "train.early_stopping.patience=null"]


def test_a_healthy_minibatch_adam_run_raises_no_warning(tmp_path):
    spec = config.load(None, [*TINY, "optimizer.name=adam", "optimizer.lr=0.003", "data.batch_size=32",
                              "train.epochs=4", "checks.sharpness_every=4"])
    result = run(spec, out=tmp_path / "adam", quiet=True, report=False)
    samples = read_jsonl(result.path / "sharpness.jsonl")
    assert len(samples) == 4 * 8 // 4
    assert all(s["quantity"] == "λmax(P⁻¹H)" and s["lambda_max"] > 0 and s["converged"] for s in samples)
    assert samples[0]["threshold"] == pytest.approx(38 / 0.003)
    findings = json.loads((result.path / "findings.json").read_text())
    assert not [f for f in findings if f["id"] in ("lr_beyond_stability", "edge_of_stability")]
    assert max(s["ratio"] for s in samples) < EDGE_RATIO  # minibatch Adam, this small an lr: far below


def test_a_run_whose_lr_exceeds_the_limit_of_its_quadratic_loss_warns(tmp_path):
    """Least squares (a linear model, MSE) has one Hessian everywhere, so gradient descent at
    lr = 1.25 x 2/λmax cannot sharpen its way back: the top component grows 1.5x a step."""
    base = [*TINY, "model.hidden=[]", "loss=mse", "data.batch_size=full", "optimizer.name=sgd",
            "optimizer.momentum=0", "checks.explosion_factor=1e9", "checks.spike_factor=1e9"]
    built = assemble(config.load(None, base))
    x = built.splits.train.x.double().flatten(1)
    x1 = torch.cat([x, torch.ones(len(x), 1, dtype=DT)], 1)
    classes = 10
    # MSE over N x C outputs: the Hessian is 2/(N C) x̃ᵀx̃ for each output's weights and bias
    lam = 2 / (len(x) * classes) * float(torch.linalg.eigvalsh(x1.T @ x1)[-1])
    lr = 1.25 * 2 / lam
    spec = config.load(None, [*base, f"optimizer.lr={lr}", "train.epochs=12", "checks.sharpness_every=1"])
    result = run(spec, out=tmp_path / "beyond", quiet=True, report=False)
    samples = read_jsonl(result.path / "sharpness.jsonl")
    assert all(s["lambda_max"] == pytest.approx(lam, rel=1e-3) for s in samples)  # the closed form
    ids = {f["id"]: f for f in json.loads((result.path / "findings.json").read_text())}
    assert "lr_beyond_stability" in ids and "edge_of_stability" not in ids
    assert ids["lr_beyond_stability"]["evidence"]["ratio_median"] == pytest.approx(1.25, rel=1e-3)


def test_the_callback_records_lbfgs_without_a_threshold_and_resumes_cleanly(tmp_path):
    model, (x, y) = small_net(3)
    path = tmp_path / "sharpness.jsonl"
    trainer = Trainer(model, nn.MSELoss(), torch.optim.LBFGS(model.parameters(), lr=0.5),
                      callbacks=[SharpnessCallback(path, every=2, data=(x, y), loss_fn=nn.MSELoss())])
    trainer.fit(Batches(x, y, 25, torch.Generator().manual_seed(0)), epochs=3)
    samples = read_jsonl(path)
    assert [s["step"] for s in samples] == [2, 4, 6]
    assert all(s["threshold"] is None and "own step length" in s["note"] and s["lambda_max"] > 0 for s in samples)
    assert sharpness_findings(samples) == []
    # resumed from step 4: the samples after it go, the new ones are appended
    again = Trainer(model, nn.MSELoss(), torch.optim.SGD(model.parameters(), lr=0.01),
                    callbacks=[SharpnessCallback(path, every=2, data=(x, y), loss_fn=nn.MSELoss())])
    state = trainer.state
    state.step, state.epoch = 4, 2
    again.fit(Batches(x, y, 25, torch.Generator().manual_seed(0)), epochs=3, state=state)
    assert [s["step"] for s in read_jsonl(path)] == [2, 4, 6]
    assert read_jsonl(path)[-1]["rule"] == "2/η"


def test_sampling_only_observes_the_training(tmp_path):
    """A run with the callback ends on the same weights, bit for bit, as one without (dropout
    and all): the samples run in eval mode on copies and draw from their own generator."""
    finals = []
    for every in (None, 3):
        torch.manual_seed(4)
        model = nn.Sequential(nn.Linear(4, 16), nn.Tanh(), nn.Dropout(0.3), nn.Linear(16, 2))
        x, y = torch.randn(64, 4), torch.randn(64, 2)
        opt = torch.optim.Adam(model.parameters(), lr=0.01)
        callbacks = [] if every is None else [SharpnessCallback(tmp_path / "s.jsonl", every=every, data=(x, y), loss_fn=nn.MSELoss())]
        torch.manual_seed(5)
        Trainer(model, nn.MSELoss(), opt, callbacks=callbacks).fit(Batches(x, y, 16, torch.Generator().manual_seed(0)), epochs=3)
        finals.append(torch.cat([p.detach().reshape(-1) for p in model.parameters()]))
    assert torch.equal(finals[0], finals[1])


def test_the_figure_draws_the_sharpness_and_the_threshold():
    recs = records([0.3, 0.6, 0.9, 1.0, 1.02, 0.99], [1.0] * 6)
    fig = sharpness_figure(recs)
    lines = fig.axes[0].get_lines()
    assert len(lines) == 2  # λmax and the threshold
    assert list(lines[1].get_ydata()) == [20.0] * 6
    assert png_bytes(fig)[:8] == PNG_SIGNATURE
    assert sharpness_figure([{"step": 3, "skipped": "sharpness not tracked: ..."}]) is None
    no_threshold = sharpness_figure([{**r, "threshold": None, "note": "LBFGS chooses its own step length"} for r in recs])
    assert len(no_threshold.axes[0].get_lines()) == 1 and "own step" in no_threshold.axes[0].get_title()


# --------------------------------------------------------------------------- the paper's headline


@pytest.mark.slow
def test_full_batch_gd_sharpens_then_sits_at_two_over_lr(tmp_path):
    """Cohen et al. 2021, fig. 1: a tanh MLP trained full-batch with MSE by plain gradient
    descent sharpens until λmax meets 2/η, then stays there, for each lr.

    500 digits, 64-32-32-10 tanh (3,466 parameters), init N(0, 0.05²), 1000 steps, λmax every
    20. Over seeds 0-4: the first sample (step 20) at 0.30-0.36 x 2/η for lr 1.0 and 0.54-0.62
    for lr 1.5; the median of the second half at 1.015-1.026 (lr 1.0) and 1.027-1.041 (lr 1.5)
    x 2/η (sd 0.005); the catapult into the edge peaked at 1.16-1.33 for a sample or two.
    """
    settled = {}
    for lr in (1.0, 1.5):
        spec = config.load(None, [
            "data.source=digits", "data.train_size=500", "data.batch_size=full", "model.kind=mlp",
            "model.hidden=[32,32]", "model.activation=tanh", "model.init=normal", "model.init_std=0.05",
            "loss=mse", "optimizer.name=sgd", "optimizer.momentum=0", f"optimizer.lr={lr}",
            "train.epochs=1000", "checks.sharpness_every=20", "train.early_stopping.patience=null",
            "checks.preflight=false", "seed=0"])
        result = run(spec, out=tmp_path / f"lr{lr}", quiet=True, report=False)
        samples = read_jsonl(result.path / "sharpness.jsonl")
        ratios = [s["ratio"] for s in samples]
        assert all(s["threshold"] == pytest.approx(2 / lr) for s in samples)
        # progressive sharpening: well below 2/η at first, then up to it at a constant lr
        assert ratios[0] < 0.7
        assert max(ratios[: len(ratios) // 2]) >= 1.0
        settled[lr] = statistics.median(ratios[len(ratios) // 2:])
        assert abs(settled[lr] - 1.0) <= 0.1, settled
        ids = [f["id"] for f in json.loads((result.path / "findings.json").read_text())]
        assert "edge_of_stability" in ids and "lr_beyond_stability" not in ids
    print("lambda_max at settle / (2/lr):", settled)


@pytest.mark.slow
def test_full_batch_adam_sits_at_the_adaptive_edge(tmp_path):
    """Cohen et al. 2022, fig. 1: full-batch Adam's preconditioned sharpness λmax(P⁻¹H) rises to
    (2+2β₁)/((1−β₁)η) = 38/η and stays there; this checks P and the threshold together.

    The network of the test above, Adam lr 0.003, 1000 steps. Over seeds 0-4: the first sample
    at 0.15-0.18 x 38/η, the median of the second half at 0.954-0.988 (mean 0.968, sd 0.014).
    """
    spec = config.load(None, [
        "data.source=digits", "data.train_size=500", "data.batch_size=full", "model.hidden=[32,32]",
        "model.activation=tanh", "model.init=normal", "model.init_std=0.05", "loss=mse", "optimizer.name=adam",
        "optimizer.lr=0.003", "train.epochs=1000", "checks.sharpness_every=20",
        "train.early_stopping.patience=null", "checks.preflight=false", "seed=0"])
    result = run(spec, out=tmp_path / "adam", quiet=True, report=False)
    samples = read_jsonl(result.path / "sharpness.jsonl")
    ratios = [s["ratio"] for s in samples]
    assert samples[0]["threshold"] == pytest.approx(38 / 0.003) and samples[0]["quantity"] == "λmax(P⁻¹H)"
    assert ratios[0] < 0.5 and max(ratios[: len(ratios) // 2]) >= 0.9
    settled = statistics.median(ratios[len(ratios) // 2:])
    assert abs(settled - 1.0) <= 0.1, settled
    ids = [f["id"] for f in json.loads((result.path / "findings.json").read_text())]
    assert "edge_of_stability" in ids and "lr_beyond_stability" not in ids
    print("preconditioned lambda_max at settle / (38/lr):", settled)
