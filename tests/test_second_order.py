"""Damped Newton and Quickprop: what each step is, how fast they get there, and the spec path.

Step counts are counted full batch from the same initial weights; SGD gets its best rate
from a small grid, the second-order methods one fixed setting.
"""

from __future__ import annotations

import io
import math

import pytest
import torch
from torch import nn

from babysit.config import OptimizerSpec, validate
from babysit.errors import BabysitError
from babysit.optim import build_optimizer
from babysit.optim.newton import MAX_PARAMETERS, Newton
from babysit.optim.quickprop import Quickprop, _quickprop_step
from babysit.run import run
from helpers import FAST, run_cli

pytestmark = pytest.mark.usefixtures("one_thread")


# --------------------------------------------------------------------------- problems


def logistic_problem() -> tuple[torch.Tensor, torch.Tensor]:
    """400 points, 5 features on unequal scales, 3 classes from a noisy linear rule: not
    separable, so softmax regression has a finite optimum."""
    g = torch.Generator().manual_seed(0)
    scales = torch.tensor([1.0, 0.5, 2.0, 0.5, 1.0], dtype=torch.float64)
    x = torch.randn(400, 5, generator=g, dtype=torch.float64) * scales
    w = 2 * torch.randn(5, 3, generator=g, dtype=torch.float64)
    y = (x @ w + torch.randn(400, 3, generator=g, dtype=torch.float64)).argmax(1)
    return x, y


def logistic_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Linear(5, 3).double()


def xor_problem() -> tuple[torch.Tensor, torch.Tensor]:
    """300 points labelled by the sign of x1 * x2 (the quadrants' XOR)."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(300, 2, generator=g)
    return x, (x[:, 0] * x[:, 1] > 0).long()


def sigmoid_mlp() -> nn.Module:
    """A 2-16-2 sigmoid network, the kind Fahlman (1988) trained."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(2, 16), nn.Sigmoid(), nn.Linear(16, 2))


def make_closure(model, opt, x, y, loss_fn=nn.CrossEntropyLoss()):
    """The closure the Trainer passes: ``closure(backward=False)`` keeps the graph for Newton."""

    def closure(backward=True):
        loss = loss_fn(model(x), y)
        if backward:
            opt.zero_grad()
            loss.backward()
        return loss

    return closure


def steps_to(target, model, opt, x, y, max_steps):
    """Full-batch steps until the training loss is at most ``target`` (None: never)."""
    closure = make_closure(model, opt, x, y)
    for step in range(max_steps + 1):
        with torch.no_grad():
            loss = nn.functional.cross_entropy(model(x), y).item()
        if loss <= target:
            return step
        if not math.isfinite(loss) or step == max_steps:
            return None
        opt.step(closure)
    return None


def optimum(model, x, y) -> float:
    """The optimum of the training loss, by L-BFGS run far past convergence."""
    opt = torch.optim.LBFGS(model.parameters(), lr=1, max_iter=500, tolerance_grad=1e-12,
                            tolerance_change=1e-15, line_search_fn="strong_wolfe")
    closure = make_closure(model, opt, x, y)
    for _ in range(5):
        opt.step(closure)
    with torch.no_grad():
        return nn.functional.cross_entropy(model(x), y).item()


# --------------------------------------------------------------------------- Newton


def test_newton_converges_in_far_fewer_steps_than_sgd_on_logistic_regression():
    x, y = logistic_problem()
    target = optimum(logistic_model(), x, y) + 1e-6
    model = logistic_model()
    newton = steps_to(target, model, Newton(model.parameters()), x, y, max_steps=50)
    sgd = {}
    for lr in (0.3, 1.0, 3.0, 5.0):  # 3 is the best; 5 is past the edge of stability
        model = logistic_model()
        sgd[lr] = steps_to(target, model, torch.optim.SGD(model.parameters(), lr=lr), x, y, max_steps=1000)
    best_sgd = min(s for s in sgd.values() if s is not None)
    # measured: Newton 6 steps; SGD 1278 / 381 / 125 / never
    assert newton is not None and newton <= 10, newton
    assert best_sgd > 100 and best_sgd >= 10 * newton, (newton, sgd)


def test_newton_without_damping_solves_least_squares_in_one_step():
    # the loss is quadratic in the weights, so one undamped Newton step lands on the minimum
    g = torch.Generator().manual_seed(1)
    x = torch.randn(50, 4, generator=g, dtype=torch.float64)
    y = x @ torch.randn(4, 2, generator=g, dtype=torch.float64) + 0.1 * torch.randn(50, 2, generator=g, dtype=torch.float64)
    model = nn.Linear(4, 2).double()
    opt = Newton(model.parameters(), damping=0.0)
    opt.step(make_closure(model, opt, x, y, nn.MSELoss()))
    design = torch.cat([x, torch.ones(50, 1, dtype=torch.float64)], 1)
    solution = torch.linalg.lstsq(design, y).solution  # (5, 2): weights then bias
    torch.testing.assert_close(model.weight.detach(), solution[:4].T, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(model.bias.detach(), solution[4], rtol=1e-10, atol=1e-10)


def test_newton_damping_grows_on_an_indefinite_hessian_and_the_loss_never_rises():
    x, y = xor_problem()
    model = sigmoid_mlp()
    opt = Newton(model.parameters(), damping=1e-2)
    closure = make_closure(model, opt, x, y)
    losses, dampings = [], []
    for _ in range(15):
        with torch.no_grad():
            losses.append(nn.functional.cross_entropy(model(x), y).item())
        opt.step(closure)
        dampings.append(opt.state[model[0].weight]["damping"])
    # a nonconvex loss: λ grows until H + λI is positive definite and the step lowers the
    # loss (here H is indefinite at every step: λ = 0.01 fails, 0.1 is taken and then
    # shrinks tenfold), so the loss never goes up
    assert all(b <= a for a, b in zip(losses, losses[1:], strict=False)), (losses, dampings)
    assert losses[-1] < 0.7 * losses[0], losses
    assert dampings == pytest.approx([1e-2] * 15), dampings
    # .grad holds the gradient the step was taken on (the monitors read it)
    assert model[0].weight.grad is not None and torch.isfinite(model[0].weight.grad).all()


def test_newton_with_weight_decay_finds_the_regularised_optimum():
    x, y = logistic_problem()
    model = logistic_model()
    spec = OptimizerSpec(name="newton", weight_decay=0.1)
    opt = build_optimizer(spec, model)
    closure = make_closure(model, opt, x, y)
    for _ in range(10):
        opt.step(closure)
    # a convex problem: every step is taken and λ shrinks tenfold each time
    assert opt.state[model.weight]["damping"] == pytest.approx(1e-3 / 10**10)
    # the gradient of loss + wd/2 ||W||^2 (the bias is not decayed) vanishes
    loss = nn.functional.cross_entropy(model(x), y) + 0.05 * model.weight.pow(2).sum()
    grads = torch.autograd.grad(loss, list(model.parameters()))
    assert max(g.abs().max().item() for g in grads) < 1e-10


def test_newton_refuses_a_model_above_the_parameter_limit():
    model = nn.Linear(100, 60)  # 6,060 parameters
    with pytest.raises(BabysitError) as info:
        build_optimizer(OptimizerSpec(name="newton"), model)
    message = str(info.value)
    assert "\n" not in message
    assert "optimizer.name: newton" in message and "6,060" in message and f"{MAX_PARAMETERS:,}" in message
    assert "lbfgs" in message


def test_babysit_train_with_newton_on_a_large_model_exits_2_with_that_line(tmp_path, capsys):
    code, _, err = run_cli(["train", *FAST, "model.hidden=[100,100]", "optimizer.name=newton",
                            "--out", str(tmp_path / "run")], capsys)
    assert code == 2
    assert "optimizer.name: newton" in err and "Traceback" not in err


# --------------------------------------------------------------------------- Quickprop


def test_quickprop_beats_sgd_at_its_best_rate_on_a_small_mlp():
    x, y = xor_problem()
    target = 0.1
    model = sigmoid_mlp()
    quickprop = steps_to(target, model, Quickprop(model.parameters(), lr=0.3), x, y, max_steps=400)
    sgd = {}
    for lr in (1.0, 3.0, 6.0, 10.0):  # 6 is the best; 10 never gets there
        model = sigmoid_mlp()
        sgd[lr] = steps_to(target, model, torch.optim.SGD(model.parameters(), lr=lr), x, y, max_steps=1200)
    best_sgd = min(s for s in sgd.values() if s is not None)
    # measured: Quickprop 80 steps; SGD 1060 / 387 / 253 / never
    assert quickprop is not None and 2 * quickprop < best_sgd, (quickprop, sgd)


def test_quickprop_first_step_is_a_gradient_step_with_weight_decay():
    x, y = xor_problem()
    model, reference = sigmoid_mlp(), sigmoid_mlp()
    opt = build_optimizer(OptimizerSpec(name="quickprop", lr=0.3, weight_decay=1e-3), model)
    sgd = build_optimizer(OptimizerSpec(name="sgd", lr=0.3, momentum=0.0, weight_decay=1e-3), reference)
    opt.step(make_closure(model, opt, x, y))
    sgd.step(make_closure(reference, sgd, x, y))
    for a, b in zip(model.parameters(), reference.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)


def test_quickprop_rules_per_weight():
    t = torch.tensor
    mu, shrink, lr = 1.75, 1.75 / 2.75, 0.1
    # restart: a zero last step gives a gradient step
    assert _quickprop_step(t([2.0]), t([0.0]), t([1.0]), lr, mu, shrink).item() == pytest.approx(-0.2)
    # the slope changed sign: the parabola's minimum, no gradient term
    # d=1, s=+1, p=-3: 1 * 1 / (-3 - 1) = -0.25
    assert _quickprop_step(t([1.0]), t([1.0]), t([-3.0]), lr, mu, shrink).item() == pytest.approx(-0.25)
    # the slope barely shrank: the step is held to mu times the last, plus the gradient term
    assert _quickprop_step(t([-2.9]), t([1.0]), t([-3.0]), lr, mu, shrink).item() == pytest.approx(1.75 + 0.29)
    # equal slopes (a zero denominator) fall to the growth limit, never inf or nan
    step = _quickprop_step(t([3.0, -3.0]), t([-1.0, -1.0]), t([3.0, -3.0]), lr, mu, shrink)
    assert torch.isfinite(step).all()
    assert step[0].item() == pytest.approx(-1.75 - 0.3)


@pytest.mark.parametrize("name", ["quickprop", "newton"])
def test_state_dict_round_trip_resumes_the_same_run(name):
    x, y = xor_problem()
    spec = OptimizerSpec(name=name, lr=0.3)

    def fresh():
        model = sigmoid_mlp()
        return model, build_optimizer(spec, model)

    model, opt = fresh()
    closure = make_closure(model, opt, x, y)
    for _ in range(4):
        opt.step(closure)
    buffer = io.BytesIO()
    torch.save({"model": model.state_dict(), "optimizer": opt.state_dict()}, buffer)
    for _ in range(4):
        opt.step(closure)

    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)
    resumed, resumed_opt = fresh()
    resumed.load_state_dict(saved["model"])
    resumed_opt.load_state_dict(saved["optimizer"])
    closure = make_closure(resumed, resumed_opt, x, y)
    for _ in range(4):
        resumed_opt.step(closure)
    for a, b in zip(model.parameters(), resumed.parameters(), strict=True):
        assert torch.equal(a, b)


# --------------------------------------------------------------------------- the spec path


def test_new_optimizer_keys_are_validated():
    with pytest.raises(BabysitError, match="optimizer.damping"):
        validate({"optimizer": {"name": "newton", "damping": -1}})
    with pytest.raises(BabysitError, match="optimizer.max_growth"):
        validate({"optimizer": {"name": "quickprop", "max_growth": 0}})


BASE = {
    "seed": 0,
    "data": {"source": "blobs", "samples": 300, "noise": 0.4, "batch_size": "full"},
    "train": {"epochs": 4, "device": "cpu", "early_stopping": {"patience": None}},
}


@pytest.mark.parametrize(
    ("model", "optimizer"),
    [({"hidden": []}, {"name": "newton"}), ({"hidden": [16]}, {"name": "quickprop", "lr": 0.3})],
)
def test_runner_trains_with_newton_and_quickprop(model, optimizer, tmp_path):
    spec = validate({**BASE, "model": model, "optimizer": optimizer})
    result = run(spec, tmp_path / "run", quiet=True, report=False)
    assert result.summary["steps"] == 4
    assert result.summary["train_loss"] < 0.5 * math.log(3), result.summary
    saved = torch.load(result.path / "checkpoints" / "last.pt", weights_only=True)["optimizer"]
    assert saved["state"], "the optimizer state is checkpointed"
    findings = (result.path / "findings.json").read_text()
    assert '"loss_exploded"' not in findings and '"nonfinite_loss"' not in findings
