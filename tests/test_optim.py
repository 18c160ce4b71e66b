"""babysit.optim: losses, optimizers, schedules and regularizers against independent truths.

Losses are checked against their formulas written out by hand, optimizers on a least-squares
problem and against torch's non-fused reference, schedules against closed-form lr traces.
"""

from __future__ import annotations

import io
import math

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrizations

from babysit.config import OptimizerSpec, ScheduleSpec
from babysit.errors import BabysitError
from babysit.optim import (
    ActivityRegularizer,
    add_input_noise,
    apply_max_norm,
    build_loss,
    build_optimizer,
    build_schedule,
    l1_penalty,
    output_dim,
    parameter_groups,
    predict,
)

# --------------------------------------------------------------------------- losses


@pytest.fixture
def logits_and_labels():
    g = torch.Generator().manual_seed(0)
    return torch.randn(6, 4, generator=g), torch.tensor([0, 3, 1, 1, 2, 0])


def test_cross_entropy_is_mean_negative_log_softmax(logits_and_labels):
    z, y = logits_and_labels
    manual = -torch.stack([z[i, y[i]] - torch.log(torch.exp(z[i]).sum()) for i in range(len(y))]).mean()
    got = build_loss("cross_entropy", "classification", 4)(z, y)
    torch.testing.assert_close(got, manual)


def test_nll_takes_logits_and_equals_cross_entropy(logits_and_labels):
    z, y = logits_and_labels
    ce = build_loss("cross_entropy", "classification", 4)(z, y)
    nll = build_loss("nll", "classification", 4)(z, y)
    torch.testing.assert_close(nll, ce)
    # uniform logits: ln C, the classic initial-loss check
    assert build_loss("nll", "classification", 4)(torch.zeros(3, 4), y[:3]).item() == pytest.approx(math.log(4))


def test_mse_and_mae_on_labels_compare_with_one_hot(logits_and_labels):
    z, y = logits_and_labels
    one_hot = torch.zeros(6, 4)
    for i, label in enumerate(y.tolist()):
        one_hot[i, label] = 1.0
    mse = sum(((z[i, j] - one_hot[i, j]) ** 2).item() for i in range(6) for j in range(4)) / 24
    mae = sum(abs(z[i, j] - one_hot[i, j]).item() for i in range(6) for j in range(4)) / 24
    assert build_loss("mse", "classification", 4)(z, y).item() == pytest.approx(mse, rel=1e-5)
    assert build_loss("mae", "classification", 4)(z, y).item() == pytest.approx(mae, rel=1e-5)


def test_regression_losses_do_not_broadcast_a_column_against_a_vector():
    out = torch.tensor([[1.0], [2.0], [4.0]])  # (B, 1)
    target = torch.tensor([0.0, 2.0, 1.0])  # (B,)
    # a careless (B,1) - (B,) would broadcast to (B, B); the right answer is mean([1, 0, 9])
    assert build_loss("mse", "regression", None)(out, target).item() == pytest.approx(10 / 3)
    assert build_loss("mae", "regression", None)(out, target).item() == pytest.approx(4 / 3)
    out2, target2 = torch.tensor([[1.0, 2.0], [3.0, 5.0]]), torch.tensor([[0.0, 0.0], [3.0, 3.0]])
    assert build_loss("mse", "regression", None)(out2, target2).item() == pytest.approx((1 + 4 + 0 + 4) / 4)
    with pytest.raises(ValueError, match="do not match"):
        build_loss("mse", "regression", None)(torch.zeros(3, 2), torch.zeros(3))


def test_bce_binary_is_one_logit_against_manual_sigmoid():
    z = torch.tensor([[0.5], [-1.0], [2.0], [0.0]])
    y = torch.tensor([1, 0, 0, 1])
    manual = 0.0
    for zi, yi in zip(z.squeeze(1).tolist(), y.tolist(), strict=True):
        p = 1 / (1 + math.exp(-zi))
        manual -= yi * math.log(p) + (1 - yi) * math.log(1 - p)
    manual /= 4
    assert output_dim("bce", "classification", 2, 1) == 1
    assert build_loss("bce", "classification", 2)(z, y).item() == pytest.approx(manual, rel=1e-6)


def test_bce_multiclass_is_one_vs_rest(logits_and_labels):
    z, y = logits_and_labels
    total = 0.0
    for i in range(6):
        for j in range(4):
            p = 1 / (1 + math.exp(-z[i, j].item()))
            t = 1.0 if y[i].item() == j else 0.0
            total -= t * math.log(p) + (1 - t) * math.log(1 - p)
    assert build_loss("bce", "classification", 4)(z, y).item() == pytest.approx(total / 24, rel=1e-5)


def _cs231n_svm_loss(scores: torch.Tensor, labels: torch.Tensor) -> float:
    """CS231n: L_i = sum_{j != y_i} max(0, s_j - s_{y_i} + 1), averaged over the batch."""
    total = 0.0
    for s, y in zip(scores.tolist(), labels.tolist(), strict=True):
        total += sum(max(0.0, s[j] - s[y] + 1.0) for j in range(len(s)) if j != y)
    return total / len(labels)


def test_hinge_is_the_cs231n_multiclass_svm_loss(logits_and_labels):
    z, y = logits_and_labels
    assert build_loss("hinge", "classification", 4)(z, y).item() == pytest.approx(_cs231n_svm_loss(z, y), rel=1e-5)
    # binary: two outputs, same formula
    z2, y2 = torch.tensor([[0.2, 0.9], [1.5, -0.5], [0.0, 0.0]]), torch.tensor([0, 0, 1])
    assert output_dim("hinge", "classification", 2, 1) == 2
    assert build_loss("hinge", "classification", 2)(z2, y2).item() == pytest.approx(_cs231n_svm_loss(z2, y2), rel=1e-5)


@pytest.mark.parametrize("name", ["cross_entropy", "nll", "bce", "hinge"])
def test_classification_loss_on_continuous_targets_is_a_user_error(name):
    with pytest.raises(BabysitError, match=f"loss: '{name}' needs class labels.*use mse or mae"):
        build_loss(name, "regression", None)


def test_unknown_loss_is_a_user_error():
    with pytest.raises(BabysitError, match="loss: must be one of"):
        build_loss("huber", "classification", 3)


def test_output_dim():
    assert output_dim("cross_entropy", "classification", 10, 1) == 10
    assert output_dim("bce", "classification", 5, 1) == 5
    assert output_dim("mse", "classification", 3, 1) == 3
    assert output_dim("mse", "regression", None, 4) == 4


def test_predict():
    assert predict(torch.tensor([[0.1], [-0.1], [3.0]]), "bce").tolist() == [1, 0, 1]
    assert predict(torch.tensor([[0.1, 0.5, -1.0], [2.0, 0.0, 1.0]]), "hinge").tolist() == [1, 0]
    assert predict(torch.tensor([[0.1, 0.5, -1.0], [2.0, 0.0, 1.0]]), "bce").tolist() == [1, 0]  # one-vs-rest


# --------------------------------------------------------------------------- optimizers


def _least_squares():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 5, generator=g)
    y = x @ torch.randn(5, 1, generator=g) + 0.5
    torch.manual_seed(0)
    return nn.Linear(5, 1), x, y


@pytest.mark.parametrize(
    ("name", "lr"),
    [("sgd", 0.05), ("momentum", 0.05), ("nesterov", 0.05), ("adam", 0.05), ("adamw", 0.05),
     ("rmsprop", 0.01), ("adagrad", 0.5), ("lbfgs", 1.0)],
)
def test_every_optimizer_solves_least_squares(name, lr):
    model, x, y = _least_squares()
    opt = build_optimizer(OptimizerSpec(name=name, lr=lr, momentum=0.9, weight_decay=0.0), model)

    def closure():
        opt.zero_grad()
        loss = ((model(x) - y) ** 2).mean()
        loss.backward()
        return loss

    with torch.no_grad():
        initial = ((model(x) - y) ** 2).mean().item()
    for _ in range(5 if name == "lbfgs" else 50):  # each L-BFGS step is up to 20 iterations
        opt.step(closure)
    with torch.no_grad():
        final = ((model(x) - y) ** 2).mean().item()
    assert final < 0.05 * initial, (name, initial, final)


def test_optimizer_kinds_and_settings():
    model = nn.Linear(3, 2)
    sgd = build_optimizer(OptimizerSpec(name="sgd", momentum=0.0), model)
    assert type(sgd) is torch.optim.SGD and sgd.defaults["momentum"] == 0.0
    heavy = build_optimizer(OptimizerSpec(name="momentum", momentum=0.8), model)
    assert heavy.defaults["momentum"] == 0.8 and not heavy.defaults["nesterov"]
    nag = build_optimizer(OptimizerSpec(name="nesterov", momentum=0.9), model)
    assert nag.defaults["nesterov"]
    adam = build_optimizer(OptimizerSpec(name="adam", betas=(0.8, 0.99), eps=1e-6), model)
    assert type(adam) is torch.optim.Adam and adam.defaults["betas"] == (0.8, 0.99) and adam.defaults["eps"] == 1e-6
    assert type(build_optimizer(OptimizerSpec(name="adamw"), model)) is torch.optim.AdamW
    assert type(build_optimizer(OptimizerSpec(name="rmsprop"), model)) is torch.optim.RMSprop
    assert type(build_optimizer(OptimizerSpec(name="adagrad"), model)) is torch.optim.Adagrad
    assert type(build_optimizer(OptimizerSpec(name="lbfgs"), model)) is torch.optim.LBFGS


def test_nesterov_without_momentum_is_a_user_error():
    with pytest.raises(BabysitError, match="optimizer.momentum"):
        build_optimizer(OptimizerSpec(name="nesterov", momentum=0.0), nn.Linear(2, 1))


def test_the_perceptron_rule_is_plain_sgd():
    opt = build_optimizer(OptimizerSpec(name="perceptron", lr=0.5), nn.Linear(2, 1))
    assert type(opt) is torch.optim.SGD and opt.defaults["momentum"] == 0 and opt.defaults["lr"] == 0.5
    with pytest.raises(BabysitError, match="optimizer.weight_decay: the perceptron rule has no weight decay"):
        build_optimizer(OptimizerSpec(name="perceptron", weight_decay=1e-4), nn.Linear(2, 1))


def test_lbfgs_with_weight_decay_is_a_user_error():
    with pytest.raises(BabysitError, match="optimizer.weight_decay"):
        build_optimizer(OptimizerSpec(name="lbfgs", weight_decay=1e-4), nn.Linear(2, 1))


class _Zoo(nn.Module):
    """One of every parameter kind weight decay must tell apart."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv1d(2, 3, 3)
        self.bn = nn.BatchNorm1d(3)
        self.fc = nn.Linear(3, 4)
        self.ln = nn.LayerNorm(4)
        self.prelu = nn.PReLU(4)
        self.wn = parametrizations.weight_norm(nn.Linear(4, 4))
        self.sn = parametrizations.spectral_norm(nn.Linear(4, 2))
        self.gn = nn.GroupNorm(1, 3)
        self.frozen = nn.Linear(2, 2)
        self.frozen.requires_grad_(False)


def test_weight_decay_only_on_weight_matrices():
    model = _Zoo()
    groups = parameter_groups(model, weight_decay=0.1)
    decay = {n for g in groups if g["weight_decay"] > 0 for n in g["param_names"]}
    rest = {n for g in groups if g["weight_decay"] == 0 for n in g["param_names"]}
    assert decay == {"conv.weight", "fc.weight", "wn.parametrizations.weight.original1",
                     "sn.parametrizations.weight.original"}
    # the weight-norm magnitude g is (4, 1): 2-D, yet a scale, not a weight matrix
    assert "wn.parametrizations.weight.original0" in rest
    assert {"bn.weight", "bn.bias", "ln.weight", "prelu.weight", "gn.weight", "fc.bias"} <= rest
    assert not any(n.startswith("frozen") for n in decay | rest)
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    assert {id(p) for g in groups for p in g["params"]} == trainable
    opt = build_optimizer(OptimizerSpec(name="sgd", weight_decay=0.1), model)
    assert sorted(g["weight_decay"] for g in opt.param_groups) == [0.0, 0.1]


def test_adamw_decays_decoupled_adam_through_the_gradient():
    """With zero loss gradients, AdamW shrinks w by exactly lr*wd*w (Loshchilov & Hutter 2019);
    Adam's L2 term goes through the adaptive normalisation, so its first step is ~lr*sign(w)."""
    lr, wd = 0.01, 0.1
    for name in ("adam", "adamw"):
        torch.manual_seed(0)
        model = nn.Linear(4, 3)
        w0, b0 = model.weight.detach().clone(), model.bias.detach().clone()
        opt = build_optimizer(OptimizerSpec(name=name, lr=lr, weight_decay=wd), model)
        for p in model.parameters():
            p.grad = torch.zeros_like(p)
        opt.step()
        torch.testing.assert_close(model.bias.detach(), b0, rtol=0, atol=0)  # no decay on biases
        if name == "adamw":
            torch.testing.assert_close(model.weight.detach(), w0 * (1 - lr * wd))
        else:
            torch.testing.assert_close(model.weight.detach(), w0 - lr * torch.sign(w0), rtol=0, atol=1e-5)


_REFERENCE = {  # torch's per-tensor loop (foreach=False, fused off), built by hand
    "sgd": lambda g: torch.optim.SGD(g, lr=0.01, momentum=0.9, foreach=False),
    "nesterov": lambda g: torch.optim.SGD(g, lr=0.01, momentum=0.9, nesterov=True, foreach=False),
    "adam": lambda g: torch.optim.Adam(g, lr=0.01, foreach=False),
    "adamw": lambda g: torch.optim.AdamW(g, lr=0.01, foreach=False),
    "adagrad": lambda g: torch.optim.Adagrad(g, lr=0.01, eps=1e-8, foreach=False),
    "rmsprop": lambda g: torch.optim.RMSprop(g, lr=0.01, foreach=False),
}


@pytest.mark.parametrize("name", list(_REFERENCE))
def test_fast_kernels_match_the_reference_implementation(name):
    """fused / foreach are a speed choice only: same trajectory as torch's per-tensor loop."""
    model, x, y = _least_squares()
    reference = nn.Linear(5, 1)
    reference.load_state_dict(model.state_dict())
    opt = build_optimizer(OptimizerSpec(name=name, lr=0.01, momentum=0.9, weight_decay=0.01), model)
    if name == "rmsprop":
        assert opt.defaults["foreach"], "rmsprop has no fused kernel: foreach"
    else:
        assert opt.defaults["fused"], f"{name}: torch has a fused CPU kernel"
    ref_opt = _REFERENCE[name]([
        {"params": [reference.weight], "weight_decay": 0.01},
        {"params": [reference.bias], "weight_decay": 0.0},
    ])
    for m, o in ((model, opt), (reference, ref_opt)):
        for _ in range(5):
            o.zero_grad()
            ((m(x) - y) ** 2).mean().backward()
            o.step()
    torch.testing.assert_close(model.weight, reference.weight, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(model.bias, reference.bias, rtol=1e-5, atol=1e-6)


# --------------------------------------------------------------------------- schedules

LR = 0.1


def _optimizer(momentum: float = 0.9) -> torch.optim.Optimizer:
    return torch.optim.SGD(nn.Linear(2, 1).parameters(), lr=LR, momentum=momentum)


def _trace(schedule, opt, steps: int, start: int = 0, steps_per_epoch: int | None = None, val_loss=None):
    """lr used at each optimizer step t = start, ..., start + steps - 1."""
    lrs = []
    for t in range(start, start + steps):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()  # no grads: nothing moves, but torch sees step() before the scheduler
        schedule.step_batch()
        if steps_per_epoch and (t + 1) % steps_per_epoch == 0:
            schedule.step_epoch(val_loss)
    return lrs


def test_constant_does_nothing_per_batch():
    opt = _optimizer()
    schedule = build_schedule(ScheduleSpec(name="constant"), opt, steps_per_epoch=5, epochs=2)
    assert not schedule.per_batch
    assert _trace(schedule, opt, 10, steps_per_epoch=5, val_loss=1.0) == [LR] * 10


def test_step_decay_closed_form():
    opt = _optimizer()
    schedule = build_schedule(ScheduleSpec(name="step", step_size=2, gamma=0.5), opt, steps_per_epoch=3, epochs=8)
    got = _trace(schedule, opt, 24)
    want = [LR * 0.5 ** (t // 6) for t in range(24)]
    assert got == pytest.approx(want)


def test_warmup_is_a_linear_ramp_from_lr_over_100():
    opt = _optimizer()
    schedule = build_schedule(ScheduleSpec(name="constant", warmup_steps=8), opt, steps_per_epoch=5, epochs=4)
    assert schedule.per_batch
    got = _trace(schedule, opt, 20)
    want = [LR * (0.01 + 0.99 * min(t, 8) / 8) for t in range(20)]
    assert got == pytest.approx(want)


@pytest.mark.parametrize("warmup", [0, 6])
def test_warmup_cosine_closed_form(warmup):
    total, min_lr = 30, 0.001
    opt = _optimizer()
    spec = ScheduleSpec(name="warmup_cosine", warmup_steps=warmup, min_lr=min_lr)
    schedule = build_schedule(spec, opt, steps_per_epoch=5, epochs=6)
    got = _trace(schedule, opt, total)
    want = []
    for t in range(total):
        if t < warmup:
            want.append(LR * (0.01 + 0.99 * t / warmup))
        else:
            want.append(min_lr + (LR - min_lr) * (1 + math.cos(math.pi * (t - warmup) / (total - warmup))) / 2)
    assert got == pytest.approx(want)


def test_one_cycle_peaks_at_30_percent():
    total = 50
    opt = _optimizer()
    schedule = build_schedule(ScheduleSpec(name="one_cycle"), opt, steps_per_epoch=10, epochs=5)
    got = _trace(schedule, opt, total)
    peak = got.index(max(got))
    assert peak == round(0.3 * total) - 1  # OneCycleLR: the rise ends at step pct_start * T - 1
    assert max(got) == pytest.approx(LR)
    assert got[0] == pytest.approx(LR / 25)
    assert got[-1] == pytest.approx(LR / 25 / 1e4, abs=1e-6)
    assert all(a < b for a, b in zip(got[: peak], got[1 : peak + 1], strict=True))
    assert all(a >= b for a, b in zip(got[peak:-1], got[peak + 1 :], strict=True))


def test_cyclic_triangle_between_base_lr_and_lr():
    opt = _optimizer(momentum=0.9)
    spe, cycle_epochs = 4, 2  # a cycle is 8 steps: 4 up, 4 down
    schedule = build_schedule(ScheduleSpec(name="cyclic", cycle_epochs=cycle_epochs), opt, steps_per_epoch=spe, epochs=6)
    momenta = []
    lrs = []
    for _ in range(24):
        lrs.append(opt.param_groups[0]["lr"])
        momenta.append(opt.param_groups[0]["momentum"])
        opt.step()
        schedule.step_batch()
    base, half = LR / 10, 4
    want = [base + (LR - base) * (1 - abs((t % (2 * half)) / half - 1)) for t in range(24)]
    assert lrs == pytest.approx(want)
    assert min(lrs) == pytest.approx(base) and max(lrs) == pytest.approx(LR)
    assert [t for t, lr in enumerate(lrs) if lr == pytest.approx(LR)] == [4, 12, 20]
    # momentum moves against the lr (Smith 2018): lowest where the lr peaks
    assert momenta[4] == pytest.approx(0.8) and momenta[0] == pytest.approx(0.9)


def test_cyclic_leaves_momentum_alone_without_momentum():
    opt = _optimizer(momentum=0.0)
    schedule = build_schedule(ScheduleSpec(name="cyclic", cycle_epochs=1), opt, steps_per_epoch=4, epochs=2)
    _trace(schedule, opt, 6)
    assert opt.param_groups[0]["momentum"] == 0.0


def test_cosine_restarts_restart_where_sgdr_says():
    # T_0 = 2 epochs x 3 steps = 6, T_mult = 2: periods 6, 12, 24 -> restarts at steps 6 and 18
    opt = _optimizer()
    spec = ScheduleSpec(name="cosine_restarts", cycle_epochs=2, cycle_mult=2, min_lr=0.0)
    schedule = build_schedule(spec, opt, steps_per_epoch=3, epochs=10)
    got = _trace(schedule, opt, 30)
    want = []
    for t in range(30):
        start, period = (0, 6) if t < 6 else (6, 12) if t < 18 else (18, 24)
        want.append(LR * (1 + math.cos(math.pi * (t - start) / period)) / 2)
    assert got == pytest.approx(want)
    restarts = [t for t in range(1, 30) if got[t] > got[t - 1]]
    assert restarts == [6, 18]


@pytest.mark.parametrize("name", ["constant", "step", "warmup_cosine", "cyclic", "cosine_restarts", "one_cycle"])
def test_warmup_then_the_main_schedule_over_the_remaining_steps(name):
    """W warm-up steps ramp lr/100 -> lr; then the main schedule runs as if the run were T - W steps."""
    spe, epochs, warmup = 4, 6, 8  # the main schedule spans 16 steps = 4 epochs
    spec = ScheduleSpec(name=name, step_size=1, gamma=0.5, cycle_epochs=2, warmup_steps=warmup)
    opt = _optimizer()
    got = _trace(build_schedule(spec, opt, spe, epochs), opt, spe * epochs)
    opt = _optimizer()
    plain = _trace(build_schedule(spec.model_copy(update={"warmup_steps": 0}), opt, spe, epochs - 2), opt, spe * (epochs - 2))
    assert got[:warmup] == pytest.approx([LR * (0.01 + 0.99 * t / warmup) for t in range(warmup)])
    assert got[warmup:] == pytest.approx(plain)


def test_plateau_reduces_after_patience():
    opt = _optimizer()
    spec = ScheduleSpec(name="plateau", patience=2, factor=0.5, min_lr=0.02)
    schedule = build_schedule(spec, opt, steps_per_epoch=4, epochs=20)
    assert not schedule.per_batch
    lrs = []
    for val_loss in [1.0, 0.9, 0.9, 0.9, 0.9, 0.9, 0.9, 0.9, 0.9, 0.9, 0.9, 0.9, 0.9]:
        schedule.step_epoch(val_loss)
        lrs.append(opt.param_groups[0]["lr"])
    # best 0.9 at epoch 1; epochs 2,3 are within patience; the 3rd bad epoch (index 4) halves
    assert lrs[:4] == [LR] * 4
    assert lrs[4] == pytest.approx(LR / 2)
    assert lrs[7] == pytest.approx(LR / 4)  # patience counts again after a reduction
    assert min(lrs) == pytest.approx(0.02)  # never below min_lr
    schedule.step_epoch(None)  # no validation set: nothing happens
    assert opt.param_groups[0]["lr"] == pytest.approx(0.02)


def test_plateau_with_warmup_ramps_per_batch_then_watches_epochs():
    opt = _optimizer()
    spec = ScheduleSpec(name="plateau", warmup_steps=6, patience=0, factor=0.5)
    schedule = build_schedule(spec, opt, steps_per_epoch=4, epochs=10)
    assert schedule.per_batch
    got = _trace(schedule, opt, 8, steps_per_epoch=4, val_loss=1.0)
    assert got[:7] == pytest.approx([LR * (0.01 + 0.99 * t / 6) for t in range(7)])
    # epoch 1 ended mid warm-up (ignored); epoch 2 set the best; now every flat epoch halves
    assert opt.param_groups[0]["lr"] == pytest.approx(LR)
    _trace(schedule, opt, 4, start=8, steps_per_epoch=4, val_loss=1.0)
    assert opt.param_groups[0]["lr"] == pytest.approx(LR / 2)


@pytest.mark.parametrize("warmup", [0, 3])
@pytest.mark.parametrize("name", ["constant", "step", "plateau", "warmup_cosine", "cyclic", "cosine_restarts", "one_cycle"])
def test_state_dict_round_trip_continues_the_same_trace(name, warmup):
    spec = ScheduleSpec(name=name, warmup_steps=warmup, step_size=1, cycle_epochs=2, patience=0, factor=0.5)
    spe, epochs, cut = 4, 5, 9
    losses = [1.0, 1.0, 0.5, 0.5, 0.5]

    def run(schedule, opt, start, stop):
        lrs = []
        for t in range(start, stop):
            lrs.append(opt.param_groups[0]["lr"])
            opt.step()
            schedule.step_batch()
            if (t + 1) % spe == 0:
                schedule.step_epoch(losses[t // spe])
        return lrs

    opt = _optimizer()
    schedule = build_schedule(spec, opt, spe, epochs)
    whole = run(schedule, opt, 0, spe * epochs)

    opt = _optimizer()
    schedule = build_schedule(spec, opt, spe, epochs)
    first = run(schedule, opt, 0, cut)
    buffer = io.BytesIO()
    torch.save({"optimizer": opt.state_dict(), "schedule": schedule.state_dict()}, buffer)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)

    opt = _optimizer()
    schedule = build_schedule(spec, opt, spe, epochs)
    opt.load_state_dict(saved["optimizer"])
    schedule.load_state_dict(saved["schedule"])
    second = run(schedule, opt, cut, spe * epochs)
    assert first + second == pytest.approx(whole, rel=1e-12)
    assert len(set(whole)) > 1 or name == "constant" and not warmup


def test_steps_past_the_planned_run_keep_the_last_lr():
    opt = _optimizer()
    schedule = build_schedule(ScheduleSpec(name="one_cycle"), opt, steps_per_epoch=5, epochs=2)
    got = _trace(schedule, opt, 13)  # OneCycleLR itself raises past its 10 steps
    assert got[9:] == [got[9]] * 4 and got[9] == pytest.approx(LR / 25 / 1e4, abs=1e-6)


def test_warmup_longer_than_the_run_is_a_user_error():
    with pytest.raises(BabysitError, match="schedule.warmup_steps"):
        build_schedule(ScheduleSpec(name="warmup_cosine", warmup_steps=20), _optimizer(), steps_per_epoch=4, epochs=5)


def test_cyclic_base_lr_above_lr_is_a_user_error():
    with pytest.raises(BabysitError, match="schedule.base_lr"):
        build_schedule(ScheduleSpec(name="cyclic", base_lr=0.5), _optimizer(), steps_per_epoch=4, epochs=5)


# --------------------------------------------------------------------------- regularization


def test_l1_penalty_sums_weight_matrices_only():
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.ReLU(), nn.Linear(4, 2))
    with torch.no_grad():
        model[1].weight.fill_(5.0)  # norm scales are not penalised
    manual = sum(abs(w) for w in model[0].weight.flatten().tolist()) + sum(abs(w) for w in model[3].weight.flatten().tolist())
    penalty = l1_penalty(model)
    assert penalty.item() == pytest.approx(manual, rel=1e-6)
    penalty.backward()
    torch.testing.assert_close(model[0].weight.grad, torch.sign(model[0].weight.detach()))
    assert model[0].bias.grad is None and model[1].weight.grad is None


def test_max_norm_caps_long_rows_and_leaves_short_ones():
    layer = nn.Linear(3, 4)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[3.0, 4.0, 0.0], [0.1, 0.2, 0.2], [10.0, 0.0, 0.0], [0.0, 1.0, 0.0]]))
    before = layer.weight.detach().clone()
    bias = layer.bias.detach().clone()
    apply_max_norm(layer, 1.0)
    norms = layer.weight.detach().norm(dim=1)
    assert (norms <= 1.0 + 1e-6).all()
    torch.testing.assert_close(layer.weight[1], before[1], rtol=0, atol=0)  # below c: untouched
    torch.testing.assert_close(layer.weight[3], before[3], rtol=0, atol=0)  # at c: untouched
    torch.testing.assert_close(layer.weight[0], before[0] / 5, rtol=1e-5, atol=0)  # direction kept
    torch.testing.assert_close(layer.bias.detach(), bias, rtol=0, atol=0)


def test_max_norm_on_conv_kernels_and_weight_norm():
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv1d(2, 3, 3), nn.ReLU(), nn.Flatten(),
        parametrizations.weight_norm(nn.Linear(6, 4)), nn.ConvTranspose1d(1, 2, 3),
    )
    with torch.no_grad():
        model[0].weight.mul_(10)
        model[3].parametrizations.weight.original0.mul_(10)
        model[4].weight.mul_(10)
    apply_max_norm(model, 0.5)
    conv_norms = model[0].weight.detach().flatten(1).norm(dim=1)  # one per output channel
    assert (conv_norms <= 0.5 + 1e-6).all()
    assert (model[3].weight.detach().norm(dim=1) <= 0.5 + 1e-6).all()  # the effective weight
    tconv = model[4].weight.detach()  # (in, out, k): a unit's incoming weights are [:, j]
    assert (tconv.transpose(0, 1).flatten(1).norm(dim=1) <= 0.5 + 1e-6).all()


def test_activity_penalty_matches_manual_and_hooks_go_away():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 5), nn.Tanh(), nn.Linear(5, 4), nn.ReLU(), nn.Linear(4, 2))
    reg = ActivityRegularizer([model[1], model[3]], coefficient=0.3)
    x = torch.randn(7, 3)
    model(x)
    h1 = torch.tanh(model[0](x))
    h2 = torch.relu(model[2](h1))
    manual = 0.3 * (h1.pow(2).mean() + h2.pow(2).mean())
    torch.testing.assert_close(reg.penalty(), manual)
    assert reg.penalty() == 0.0  # reset after reading
    model.eval()
    model(x)
    assert reg.penalty() == 0.0  # evaluation passes do not count
    model.train()
    with torch.no_grad():
        model(x)
    assert reg.penalty() == 0.0  # nor passes without autograd
    reg.remove()
    assert not model[1]._forward_hooks and not model[3]._forward_hooks
    model(x)
    assert reg.penalty() == 0.0
    off = ActivityRegularizer([model[1]], coefficient=0.0)
    assert not model[1]._forward_hooks and off.penalty() == 0.0


def test_activity_penalty_backpropagates():
    layer, act = nn.Linear(2, 3), nn.Tanh()
    reg = ActivityRegularizer([act], coefficient=1.0)
    act(layer(torch.randn(4, 2)))
    reg.penalty().backward()
    assert layer.weight.grad is not None and layer.weight.grad.abs().sum() > 0


def test_input_noise_has_the_right_std_and_is_seeded():
    x = torch.full((200, 100), 3.0)
    noisy = add_input_noise(x, 0.2, torch.Generator().manual_seed(1))
    assert (noisy - x).std().item() == pytest.approx(0.2, rel=0.03)
    assert (noisy - x).mean().item() == pytest.approx(0.0, abs=0.005)
    again = add_input_noise(x, 0.2, torch.Generator().manual_seed(1))
    other = add_input_noise(x, 0.2, torch.Generator().manual_seed(2))
    assert torch.equal(noisy, again) and not torch.equal(noisy, other)
    assert add_input_noise(x, 0.0) is x
