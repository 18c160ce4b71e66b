"""Every training option of the spec takes effect, end to end through ``runner.run``.

Each test trains tiny networks on generated data (blobs or spirals, a few hundred points,
a few epochs) from a ``config.validate({...})`` spec, and asserts something that would
fail if the option were silently ignored: a step count, an lr trace in metrics.jsonl
against its closed form, a weight norm, a weight change bounded by the clip, a difference
from the same run without the option.
"""

from __future__ import annotations

import copy
import json
import math

import pytest
import torch
from torch import nn

from babysit import data as data_module
from babysit.config import Experiment, validate
from babysit.errors import BabysitError
from babysit.optim import losses
from babysit.optim.optimizers import AVAILABLE, NOT_YET, weight_matrices
from babysit.run import prepare, run
from babysit.train import Callback, evaluate

# --------------------------------------------------------------------------- helpers

BASE = {
    "seed": 0,
    "data": {"source": "blobs", "samples": 300, "noise": 0.4, "batch_size": 32},
    "model": {"hidden": [16]},
    "optimizer": {"name": "sgd", "lr": 0.1},
    "train": {"epochs": 5, "device": "cpu", "early_stopping": {"patience": None}},
}


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """These networks are tiny; one intra-op thread per test process keeps ``pytest -n 2`` on
    two cores from oversubscribing them (OpenMP spin-waits made some tests ten times slower)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _merge(base: dict, overrides: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def make_spec(**sections) -> Experiment:
    """BASE with nested sections replaced key by key, e.g. ``make_spec(optimizer={"lr": 0.01})``."""
    return validate(_merge(BASE, sections))


def train(spec: Experiment, tmp_path, name: str = "run"):
    return run(spec, tmp_path / name, quiet=True, report=False)


def initial_model(spec: Experiment) -> tuple[nn.Module, data_module.Splits]:
    """The network exactly as ``run`` initialises it: same seeding, same data load, same build."""
    _, splits, model, _ = prepare(spec)
    return model, splits


def flat_parameters(model: nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1).double() for p in model.parameters()])


def same_weights(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def epoch_lines(result) -> list[dict]:
    lines = [json.loads(line) for line in (result.path / "metrics.jsonl").read_text().splitlines()]
    return [line for line in lines if "train_loss" in line]


def logged_lrs(result) -> list[float]:
    return [line["lr"] for line in epoch_lines(result)]


def loss_and_predict(spec: Experiment, splits: data_module.Splits):
    loss_fn = losses.build_loss(spec.loss, splits.task, splits.num_classes)
    return loss_fn, (lambda out: losses.predict(out, spec.loss))


def l1_of_weights(model: nn.Module) -> float:
    return sum(p.detach().abs().sum().item() for _, p in weight_matrices(model))


def test_initial_model_helper_matches_the_runs_initialisation(tmp_path):
    # the other tests compare trained weights with initial_model(); an lr of 1e-12 leaves the
    # weights where run() initialised them, so this pins the helper to the runner
    spec = make_spec(data={"batch_size": "full"}, optimizer={"lr": 1e-12, "momentum": 0.0},
                     train={"epochs": 1})
    result = train(spec, tmp_path)
    start, _ = initial_model(spec)
    assert torch.allclose(flat_parameters(result.model), flat_parameters(start), atol=1e-9, rtol=0)


# --------------------------------------------------------------------------- data.batch_size


def test_full_batch_takes_one_step_per_epoch(tmp_path):
    result = train(make_spec(data={"batch_size": "full"}, train={"epochs": 4}), tmp_path)
    assert result.summary["steps"] == 4
    assert [line["step"] for line in epoch_lines(result)] == [1, 2, 3, 4]


def test_batch_size_one_takes_one_step_per_example(tmp_path):
    spec = make_spec(data={"batch_size": 1, "train_size": 50}, optimizer={"lr": 0.01}, train={"epochs": 2})
    result = train(spec, tmp_path)
    assert len(result.splits.train) == 50  # data.train_size took effect too
    assert result.summary["steps"] == 2 * 50


def test_batch_size_n_takes_ceil_n_train_over_n_steps(tmp_path):
    result = train(make_spec(data={"batch_size": 50}, train={"epochs": 3}), tmp_path)
    assert result.summary["steps"] == 3 * math.ceil(len(result.splits.train) / 50)


# --------------------------------------------------------------------------- optimizer.name

OPTIMIZER_LR = {"sgd": 0.3, "momentum": 0.1, "nesterov": 0.1, "adam": 0.01, "adamw": 0.01,
                "rmsprop": 0.005, "adagrad": 0.1, "lbfgs": 1.0, "newton": 1.0, "quickprop": 0.3,
                "perceptron": 0.1}
FULL_BATCH = ("lbfgs", "newton", "quickprop")  # line search / exact Hessian / parabola fits want one function


def test_the_optimizer_list_is_the_specs():
    assert set(AVAILABLE) | set(NOT_YET) == {
        "sgd", "momentum", "nesterov", "adam", "adamw", "rmsprop", "adagrad", "lbfgs",
        "newton", "quickprop", "perceptron",
    }
    assert set(OPTIMIZER_LR) == set(AVAILABLE)


@pytest.mark.parametrize("name", AVAILABLE)
def test_every_available_optimizer_lowers_the_training_loss(name, tmp_path):
    spec = make_spec(
        data={"source": "spirals", "batch_size": "full" if name in FULL_BATCH else 32},
        model={"hidden": [32]},
        # sgd with momentum 0: plain gradient descent (momentum / nesterov use the default 0.9)
        optimizer={"name": name, "lr": OPTIMIZER_LR[name], **({"momentum": 0.0} if name == "sgd" else {})},
        train={"epochs": 4 if name == "lbfgs" else 10},
        **({"loss": "perceptron"} if name == "perceptron" else {}),  # the rule is SGD on its criterion
    )
    start, splits = initial_model(spec)
    loss_fn, predict = loss_and_predict(spec, splits)
    initial_loss = evaluate(start, loss_fn, splits.train, predict)["loss"]
    result = train(spec, tmp_path)
    final_loss = result.summary["train_loss"]
    assert final_loss < 0.8 * initial_loss, (name, initial_loss, final_loss)
    assert final_loss < math.log(3), (name, final_loss)  # better than the uniform guess over 3 classes
    # the checkpointed optimizer state says which algorithm ran
    saved = torch.load(result.path / "checkpoints" / "last.pt", weights_only=True)["optimizer"]
    assert optimizer_signature(saved) == ("sgd" if name == "perceptron" else name)  # perceptron: SGD(momentum 0)


def optimizer_signature(saved: dict) -> str:
    """Which of the spec's optimizers a saved torch optimizer state dict belongs to."""
    group = saved["param_groups"][0]
    state = set(next(iter(saved["state"].values()), {}))
    if "func_evals" in state:
        return "lbfgs"
    if "damping" in state:
        return "newton"
    if "prev_slope" in state:
        return "quickprop"
    if "sum" in state:
        return "adagrad"
    if "square_avg" in state:
        return "rmsprop"
    if "exp_avg" in state:
        return "adamw" if group.get("decoupled_weight_decay") else "adam"
    if "momentum_buffer" in state:
        return "nesterov" if group["nesterov"] else "momentum"
    return "sgd" if group.get("momentum") == 0 and not state else "unknown"


def test_momentum_and_weight_decay_take_effect(tmp_path):
    spec = make_spec(optimizer={"name": "sgd", "lr": 0.1, "momentum": 0.0}, train={"epochs": 3})
    plain = train(spec, tmp_path, "plain")
    heavy = train(make_spec(optimizer={"name": "sgd", "lr": 0.1, "momentum": 0.9}, train={"epochs": 3}),
                  tmp_path, "heavy")
    assert not same_weights(plain.model, heavy.model)

    decay_spec = {"name": "adamw", "lr": 0.01}
    no_decay = train(make_spec(optimizer={**decay_spec, "weight_decay": 0.0}, train={"epochs": 15}),
                     tmp_path, "no_decay")
    decayed = train(make_spec(optimizer={**decay_spec, "weight_decay": 5.0}, train={"epochs": 15}),
                    tmp_path, "decayed")
    norm = lambda m: sum(p.detach().pow(2).sum().item() for _, p in weight_matrices(m))  # noqa: E731
    assert norm(decayed.model) < 0.8 * norm(no_decay.model)


# --------------------------------------------------------------------------- schedule.name

LR = 0.1


def schedule_run(tmp_path, epochs: int, **schedule):
    """Full batch: one optimizer step per epoch, so the lr logged at epoch e is the lr after
    e scheduler steps (the schedule stops stepping after T - 1 steps, T = epochs)."""
    spec = make_spec(data={"batch_size": "full"}, optimizer={"lr": LR}, schedule=schedule,
                     train={"epochs": epochs})
    result = train(spec, tmp_path)
    lrs = logged_lrs(result)
    assert len(lrs) == epochs
    return lrs


def test_constant_schedule_keeps_the_lr(tmp_path):
    assert schedule_run(tmp_path, 6, name="constant") == [LR] * 6


def test_warmup_ramps_linearly_from_lr_over_100(tmp_path):
    lrs = schedule_run(tmp_path, 8, name="constant", warmup_steps=4)
    expected = [LR * (0.01 + 0.99 * min(t, 4) / 4) for t in range(1, 9)]
    assert lrs == pytest.approx(expected, rel=1e-9)


def test_step_schedule_decays_by_gamma_every_step_size_epochs(tmp_path):
    lrs = schedule_run(tmp_path, 7, name="step", step_size=2, gamma=0.5)
    expected = [LR * 0.5 ** (min(e, 6) // 2) for e in range(1, 8)]
    assert lrs == pytest.approx(expected, rel=1e-9)
    assert lrs[-1] == pytest.approx(LR / 8)


def test_plateau_schedule_cuts_the_lr_when_the_val_loss_stalls(tmp_path):
    # an lr of 1e-7 leaves the val loss flat (no relative improvement above 1e-4), so every
    # epoch past the patience is a bad one; min_lr caps the cuts
    lr = 1e-7
    spec = make_spec(data={"batch_size": "full"}, optimizer={"lr": lr},
                     schedule={"name": "plateau", "patience": 1, "factor": 0.5, "min_lr": lr / 4},
                     train={"epochs": 10})
    lrs = logged_lrs(train(spec, tmp_path))
    assert lrs[0] == lr
    assert all(b <= a for a, b in zip(lrs, lrs[1:], strict=False))  # never goes up
    assert all(b / a in (pytest.approx(1.0), pytest.approx(0.5)) for a, b in zip(lrs, lrs[1:], strict=False))
    assert lrs[-1] == pytest.approx(lr / 4)  # cut twice, then held at min_lr
    assert min(lrs) >= lr / 4 * (1 - 1e-9)


def test_warmup_cosine_rises_then_decays_to_min_lr(tmp_path):
    epochs, warmup, min_lr = 24, 4, 0.01
    lrs = schedule_run(tmp_path, epochs, name="warmup_cosine", warmup_steps=warmup, min_lr=min_lr)
    assert lrs[0] == pytest.approx(LR * (0.01 + 0.99 / warmup))
    assert lrs[warmup - 1] == pytest.approx(LR)  # warm-up over: the full lr
    main = epochs - warmup
    expected_tail = [min_lr + (LR - min_lr) * (1 + math.cos(math.pi * min(t, main - 1) / main)) / 2
                     for t in range(1, main + 1)]
    assert lrs[warmup:] == pytest.approx(expected_tail, rel=1e-6)
    # decreasing (the last epoch keeps the lr of step T - 1: no step follows it)
    assert all(b < a for a, b in zip(lrs[warmup - 1 : -2], lrs[warmup:-1], strict=True))
    assert min_lr <= lrs[-1] <= min_lr + 0.01 * (LR - min_lr)  # ends near min_lr


def test_cyclic_schedule_is_a_triangle_between_base_lr_and_lr(tmp_path):
    # cycle_epochs 4 at one step an epoch: 2 steps up, 2 down, base_lr = lr / 10 by default
    lrs = schedule_run(tmp_path, 12, name="cyclic", cycle_epochs=4)
    base = LR / 10

    def triangle(t):
        x = abs(t / 2 - 2 * math.floor(1 + t / 4) + 1)
        return base + (LR - base) * max(0.0, 1 - x)

    assert lrs == pytest.approx([triangle(min(t, 11)) for t in range(1, 13)], rel=1e-6)
    assert max(lrs) == pytest.approx(LR) and min(lrs) == pytest.approx(base)


def test_cosine_restarts_restart_every_cycle(tmp_path):
    min_lr = 0.001
    lrs = schedule_run(tmp_path, 11, name="cosine_restarts", cycle_epochs=3, min_lr=min_lr)

    def sgdr(t):
        return min_lr + (LR - min_lr) * (1 + math.cos(math.pi * (t % 3) / 3)) / 2

    assert lrs == pytest.approx([sgdr(min(t, 10)) for t in range(1, 12)], rel=1e-6)
    assert [i + 1 for i, lr in enumerate(lrs) if lr == pytest.approx(LR)] == [3, 6, 9]  # the restarts


def test_one_cycle_rises_to_lr_at_30_percent_then_anneals(tmp_path):
    epochs = 20
    lrs = schedule_run(tmp_path, epochs, name="one_cycle")
    peak = max(range(epochs), key=lambda i: lrs[i]) + 1  # steps taken when the lr peaked
    assert abs(peak - 0.3 * epochs) <= 1.5
    assert lrs[peak - 1] == pytest.approx(LR, rel=1e-3)
    assert lrs[0] < LR / 2  # starts low (lr / 25)
    assert lrs[-1] < LR / 100  # anneals far below lr
    assert all(b <= a for a, b in zip(lrs[peak - 1 :], lrs[peak:], strict=False))


# --------------------------------------------------------------------------- regularization


def test_l1_shrinks_the_weights(tmp_path):
    common = {"optimizer": {"name": "adam", "lr": 0.01}, "model": {"hidden": [32]}, "train": {"epochs": 20}}
    without = train(make_spec(**common, regularization={"l1": 0.0}), tmp_path, "without")
    with_l1 = train(make_spec(**common, regularization={"l1": 0.01}), tmp_path, "with")
    assert l1_of_weights(with_l1.model) < 0.7 * l1_of_weights(without.model)


def test_max_norm_caps_every_row_of_every_linear(tmp_path):
    common = {"optimizer": {"name": "sgd", "lr": 0.5}, "model": {"hidden": [16, 16]}, "train": {"epochs": 10}}
    cap = 0.5
    without = train(make_spec(**common), tmp_path, "without")
    linears = lambda m: [mod for mod in m.modules() if isinstance(mod, nn.Linear)]  # noqa: E731
    row_norms = lambda m: torch.cat([lin.weight.detach().norm(dim=1) for lin in linears(m)])  # noqa: E731
    assert len(linears(without.model)) == 3
    assert row_norms(without.model).max() > 2 * cap  # the cap would bind
    capped = train(make_spec(**common, regularization={"max_norm": cap}), tmp_path, "capped")
    assert row_norms(capped.model).max() <= cap + 1e-5


def _mean_square_activation(model: nn.Module, x: torch.Tensor) -> float:
    from babysit.nets import activation_modules

    seen: list[torch.Tensor] = []
    handles = [m.register_forward_hook(lambda _m, _i, out: seen.append(out.detach()))
               for m in activation_modules(model)]
    assert handles, "the model has no activation modules to measure"
    try:
        model.eval()
        with torch.no_grad():
            model(x)
    finally:
        for handle in handles:
            handle.remove()
    return sum(a.pow(2).mean().item() for a in seen) / len(seen)


def test_activity_penalty_shrinks_the_hidden_activations(tmp_path):
    common = {"optimizer": {"name": "adam", "lr": 0.01}, "model": {"hidden": [32]}, "train": {"epochs": 15}}
    without = train(make_spec(**common), tmp_path, "without")
    penalised = train(make_spec(**common, regularization={"activity": 0.5}), tmp_path, "penalised")
    x = without.splits.train.x
    assert _mean_square_activation(penalised.model, x) < 0.7 * _mean_square_activation(without.model, x)
    # the hooks are gone after the run: a later forward pass in training mode accumulates nothing
    penalised.model.train()
    assert all(not m._forward_hooks for m in penalised.model.modules())


def test_input_noise_changes_training_and_stays_deterministic(tmp_path):
    clean = train(make_spec(), tmp_path, "clean")
    noisy_a = train(make_spec(regularization={"input_noise": 0.3}), tmp_path, "noisy_a")
    noisy_b = train(make_spec(regularization={"input_noise": 0.3}), tmp_path, "noisy_b")
    assert not same_weights(clean.model, noisy_a.model)
    assert same_weights(noisy_a.model, noisy_b.model)


# --------------------------------------------------------------------------- optimizer.grad_clip


def test_grad_clip_bounds_each_plain_sgd_step(tmp_path):
    lr, clip, epochs = 0.1, 1e-3, 3
    common = {"data": {"batch_size": "full"}, "train": {"epochs": epochs}}
    spec = make_spec(**common, optimizer={"name": "sgd", "lr": lr, "momentum": 0.0, "grad_clip": clip})
    start, _ = initial_model(spec)
    clipped = train(spec, tmp_path, "clipped")
    unclipped = train(make_spec(**common, optimizer={"name": "sgd", "lr": lr, "momentum": 0.0}),
                      tmp_path, "unclipped")
    assert clipped.summary["steps"] == epochs
    moved = (flat_parameters(clipped.model) - flat_parameters(start)).norm().item()
    free = (flat_parameters(unclipped.model) - flat_parameters(start)).norm().item()
    assert free > 10 * lr * clip * epochs  # without the clip the steps are far larger
    assert 0 < moved <= lr * clip * epochs + 1e-7


# --------------------------------------------------------------------------- model.dropout


def test_dropout_changes_training(tmp_path):
    without = train(make_spec(model={"hidden": [32], "dropout": 0.0}), tmp_path, "without")
    with_dropout = train(make_spec(model={"hidden": [32], "dropout": 0.3}), tmp_path, "with")
    assert any(isinstance(m, nn.Dropout) and m.p == 0.3 for m in with_dropout.model.modules())
    assert not same_weights(without.model, with_dropout.model)


# --------------------------------------------------------------------------- train.precision / compile


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_half_precision_autocast_on_the_cpu_trains(precision, tmp_path):
    common = {"optimizer": {"name": "adam", "lr": 0.01}, "train": {"epochs": 5}}
    fp32 = train(make_spec(**common), tmp_path, "fp32")
    half = train(make_spec(**_merge(common, {"train": {"precision": precision}})), tmp_path, precision)
    assert half.summary["test_acc"] > 0.85
    assert all(p.dtype == torch.float32 for p in half.model.parameters())  # master weights stay fp32
    assert not same_weights(fp32.model, half.model)  # half-precision arithmetic really happened


@pytest.mark.slow
def test_compile_matches_the_eager_run(tmp_path):
    import torch._dynamo

    common = {"model": {"hidden": [4]}, "data": {"batch_size": "full"}, "train": {"epochs": 1}}
    eager = train(make_spec(**common), tmp_path, "eager")
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    compiled = train(make_spec(**_merge(common, {"train": {"compile": True}})), tmp_path, "compiled")
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] >= 1  # the forward went through dynamo
    assert compiled.summary["test_acc"] == pytest.approx(eager.summary["test_acc"], abs=0.1)
    assert compiled.summary["train_loss"] == pytest.approx(eager.summary["train_loss"], rel=1e-3)


# --------------------------------------------------------------------------- train.device / deterministic


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on a machine without CUDA")
def test_unavailable_device_is_a_clear_error(tmp_path):
    with pytest.raises(BabysitError, match="train.device: 'cuda' is not available"):
        train(make_spec(train={"device": "cuda"}), tmp_path)


class _DeterminismProbe(Callback):
    def __init__(self):
        self.seen: list[bool] = []

    def on_fit_start(self, trainer):
        self.seen.append(torch.are_deterministic_algorithms_enabled())


@pytest.mark.parametrize("deterministic", [False, True])
def test_deterministic_turns_on_deterministic_algorithms_for_the_run(deterministic, tmp_path):
    before = torch.are_deterministic_algorithms_enabled()
    probe = _DeterminismProbe()
    try:
        run(make_spec(train={"deterministic": deterministic, "epochs": 1}), tmp_path / "r", quiet=True,
            extra_callbacks=[probe])
    finally:
        torch.use_deterministic_algorithms(before)
    assert probe.seen == [deterministic or before]


def test_deterministic_does_not_leak_into_later_runs(tmp_path):
    # torch's switch is process-wide; run() must put it back as it found it
    before = torch.are_deterministic_algorithms_enabled()
    try:
        train(make_spec(train={"deterministic": True, "epochs": 1}), tmp_path, "deterministic")
        probe = _DeterminismProbe()
        run(make_spec(train={"deterministic": False, "epochs": 1}), tmp_path / "later", quiet=True,
            extra_callbacks=[probe])
        assert probe.seen == [before]
    finally:
        torch.use_deterministic_algorithms(before)


# --------------------------------------------------------------------------- train.log_every


def test_without_log_every_no_callback_runs_per_batch(tmp_path, monkeypatch):
    # MetricsLogger turns its per-batch hook off by binding Callback's no-op to the instance;
    # the loop must see that (and take its lean path) rather than call the no-op every step
    calls = []
    monkeypatch.setattr(Callback, "on_batch_end", lambda self, trainer, loss: calls.append(1))
    result = train(make_spec(train={"epochs": 2}), tmp_path)
    assert result.summary["steps"] > 0
    assert calls == []


# --------------------------------------------------------------------------- train.early_stopping


def test_early_stopping_on_val_acc(tmp_path):
    patience = 3
    spec = make_spec(data={"noise": 0.2}, optimizer={"name": "adam", "lr": 0.05},
                     train={"epochs": 40, "early_stopping": {"monitor": "val_acc", "patience": patience}})
    result = train(spec, tmp_path)
    accs = [line["val_acc"] for line in epoch_lines(result)]
    best_epoch = accs.index(max(accs)) + 1  # the first epoch reaching the best val_acc
    assert result.summary["best_epoch"] == best_epoch
    assert result.summary["stopped_early"] is True and "val_acc" in result.summary["stop_reason"]
    assert result.summary["epochs"] == best_epoch + patience < 40
    best = torch.load(result.path / "checkpoints" / "best.pt", weights_only=True)
    assert best["monitor"] == "val_acc" and best["epoch"] == best_epoch


def test_early_stopping_patience_null_runs_every_epoch(tmp_path):
    spec = make_spec(data={"noise": 0.2}, optimizer={"name": "adam", "lr": 0.05},
                     train={"epochs": 25, "early_stopping": {"monitor": "val_acc", "patience": None}})
    result = train(spec, tmp_path)
    assert result.summary["epochs"] == 25 and result.summary["stopped_early"] is False
    assert len(epoch_lines(result)) == 25
    # no restore of the best epoch: the returned model holds the last weights
    last = torch.load(result.path / "checkpoints" / "last.pt", weights_only=True)["model"]
    assert all(torch.equal(last[k], v) for k, v in result.model.state_dict().items())


def test_early_stopping_min_delta(tmp_path):
    # no epoch improves the val loss by more than 10 after the first: stop after 1 + patience
    spec = make_spec(train={"epochs": 20, "early_stopping": {"monitor": "val_loss", "patience": 2,
                                                             "min_delta": 10.0}})
    result = train(spec, tmp_path)
    assert result.summary["best_epoch"] == 1
    assert result.summary["epochs"] == 3 and result.summary["stopped_early"] is True


# --------------------------------------------------------------------------- loss


@pytest.mark.parametrize(("loss", "classes"), [
    ("mse", 3), ("mae", 3), ("cross_entropy", 3), ("nll", 3), ("bce", 2), ("bce", 3), ("hinge", 3),
])
def test_every_loss_trains_above_chance(loss, classes, tmp_path):
    spec = make_spec(loss=loss, data={"classes": classes}, optimizer={"name": "adam", "lr": 0.02},
                     train={"epochs": 8})
    result = train(spec, tmp_path)
    out_dim = next(m for m in reversed(list(result.model.modules())) if isinstance(m, nn.Linear)).out_features
    assert out_dim == (1 if (loss, classes) == ("bce", 2) else classes)
    assert result.summary["test_acc"] > 1 / classes + 0.3, result.summary
    # the reported training loss is this loss, written out by hand, on the final model
    model, train_split = result.model.eval(), result.splits.train
    with torch.no_grad():
        out = model(train_split.x)
    y = train_split.y
    one_hot = nn.functional.one_hot(y, classes).float()
    if loss == "mse":
        expected = (out - one_hot).pow(2).mean()
    elif loss == "mae":
        expected = (out - one_hot).abs().mean()
    elif loss in ("cross_entropy", "nll"):
        expected = -out.log_softmax(-1).gather(1, y[:, None]).mean()
    elif loss == "bce":
        target = y.float()[:, None] if classes == 2 else one_hot
        expected = -(target * nn.functional.logsigmoid(out) + (1 - target) * nn.functional.logsigmoid(-out)).mean()
    else:  # hinge: sum over j != y of max(0, s_j - s_y + 1)
        margins = (out - out.gather(1, y[:, None]) + 1).clamp(min=0)
        expected = (margins.sum(1) - 1).mean()  # the j == y term is exactly 1
    assert result.summary["train_loss"] == pytest.approx(expected.item(), rel=1e-5, abs=1e-7)


# --------------------------------------------------------------------------- summary.json


def test_summary_test_acc_matches_best_checkpoint_recomputed(tmp_path):
    spec = make_spec(data={"source": "spirals"}, model={"hidden": [32]},
                     optimizer={"name": "adam", "lr": 0.01},
                     train={"epochs": 30, "early_stopping": {"monitor": "val_loss", "patience": 5}})
    result = train(spec, tmp_path)
    summary = json.loads((result.path / "summary.json").read_text())
    assert summary["test_acc"] == result.summary["test_acc"]

    fresh, _ = initial_model(spec)
    best = torch.load(result.path / "checkpoints" / "best.pt", weights_only=True)
    fresh.load_state_dict(best["model"])
    loss_fn, predict = loss_and_predict(spec, result.splits)
    test = result.splits.test
    fresh.eval()
    with torch.no_grad():
        out = fresh(test.x)
    acc = (predict(out) == test.y).sum().item() / len(test)
    assert summary["test_acc"] == pytest.approx(acc, abs=1e-12)
    assert summary["test_loss"] == pytest.approx(loss_fn(out, test.y).item(), rel=1e-5)
    assert summary["best_epoch"] == best["epoch"]


def test_a_small_network_trains_on_one_cpu_thread_unless_told(tmp_path):
    import torch

    from babysit import config
    from babysit.run import run

    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        auto = run(config.load(None, ["data.source=spirals", "data.samples=300", "train.epochs=1",
                                      "train.device=cpu", "checks.preflight=false"]), tmp_path / "a", quiet=True)
        told = run(config.load(None, ["data.source=spirals", "data.samples=300", "train.epochs=1",
                                      "train.device=cpu", "checks.preflight=false", "train.threads=2"]),
                   tmp_path / "b", quiet=True)
        assert auto.summary["threads"] == 1 and told.summary["threads"] == 2
        assert torch.get_num_threads() == 2  # given back after the run
    finally:
        torch.set_num_threads(before)
