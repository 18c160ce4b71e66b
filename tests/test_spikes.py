"""Loss spikes (train.on_spike: stop | skip | rollback) and where a NaN came from.

A corrupted batch (its inputs times 1e6, or all zero) is injected at one step of a small
digits run; the detector must name that step, rollback must end where a run that never saw
the skipped batches ends, skip must leave that step's weights as they were, and the replay
must name the module (or the loss term) where the first non-finite value appeared. Healthy
runs must get no loss_spike warning.
"""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
from torch import nn

from babysit import config, data
from babysit.checks.spikes import SpikeDetector, nonfinite_origin, spike_findings
from babysit.data import Split
from babysit.data.batching import Batches
from babysit.optim.schedules import Schedule
from babysit.rundir import read_jsonl, read_run
from babysit.train.callbacks import Checkpointer, MetricsLogger, MonitorCallback
from babysit.train.loop import Callback, Trainer

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(autouse=True)
def _own_rng():
    """These tests seed torch's global RNG; the tests after them find it as they left it."""
    with torch.random.fork_rng():
        yield

EVERY = 10  # checks.every: the monitors' samples and the rollback windows (steps 1, 11, 21, ...)


@pytest.fixture(scope="module")
def digits():
    spec = config.validate({"data": {"source": "digits", "batch_size": 64}})
    return data.load(spec.data)  # 1294 training examples: 21 batches an epoch


class Corrupted(Batches):
    """Batches whose batch at global step ``at`` (counting every batch yielded) has its inputs
    times ``scale``; batches at the steps in ``drop`` are not yielded at all (the reference
    run that never saw them)."""

    def __init__(self, *args, at: int | None = None, scale: float = 1e6, drop: tuple[int, ...] = (),
                 onwards: bool = False, **kwargs):
        super().__init__(*args, **kwargs)
        self.at, self.scale, self.drop, self.onwards, self.drawn = at, scale, set(drop), onwards, 0

    def __iter__(self):
        for xb, yb in super().__iter__():
            self.drawn += 1
            if self.drawn in self.drop:
                continue
            bad = self.at is not None and (self.drawn == self.at or (self.onwards and self.drawn > self.at))
            yield (xb * self.scale if bad else xb), yb


class Weights(Callback):
    """The flat weights after each step."""

    def __init__(self):
        self.after: dict[int, torch.Tensor] = {}

    def on_batch_end(self, trainer, loss):
        self.after[trainer.state.step] = nn.utils.parameters_to_vector(trainer.model.parameters()).detach().clone()


def mlp(seed: int = 0, kind: str = "mlp") -> nn.Module:
    torch.manual_seed(seed)
    if kind == "divide":  # a layer that divides by its input's row norm: 0 / 0 for an all-zero example
        return nn.Sequential(nn.Flatten(), nn.Linear(64, 32, bias=False), nn.Tanh(), RowNormalise(), nn.Linear(32, 10))
    if kind == "linear":  # softmax regression
        return nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))


class RowNormalise(nn.Module):
    def forward(self, x):
        return x / x.norm(dim=1, keepdim=True)


def train(splits, tmp_path, *, on_spike="stop", at=None, scale=1e6, drop=(), epochs=6, seed=0, kind="mlp",
          optimizer="adam", extra=(), spike_factor=3.0, cosine=False, onwards=False):
    model = mlp(seed, kind)
    opt = (torch.optim.Adam(model.parameters(), lr=1e-2 if kind == "linear" else 3e-3) if optimizer == "adam"
           else torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9))
    steps = 21 * epochs
    schedule = (Schedule(opt, batch_scheduler=torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps),
                         batch_steps=steps - 1) if cosine else None)
    generator = torch.Generator().manual_seed(seed)
    batches = Corrupted(splits.train.x, splits.train.y, 64, generator, at=at, scale=scale, drop=drop,
                        onwards=onwards)
    metrics = MetricsLogger(tmp_path / "metrics.jsonl")
    monitors = MonitorCallback(tmp_path / "monitors.jsonl", every=EVERY)
    checkpointer = Checkpointer(tmp_path / "checkpoints", generator=generator, epochs=epochs, every_s=0.0)
    trainer = Trainer(model, nn.CrossEntropyLoss(), opt, schedule=schedule,
                      callbacks=[metrics, monitors, checkpointer, *extra],
                      predict=lambda out: out.argmax(-1), on_spike=on_spike, spike_factor=spike_factor,
                      spike_every=EVERY)
    state = trainer.fit(batches, epochs, splits.val)
    return trainer, state, monitors, read_jsonl(tmp_path / "metrics.jsonl")


def spikes_in(records):
    return [r for r in records if r.get("event") == "loss_spike"]


# --------------------------------------------------------------------------- the detector


def test_the_detector_flags_a_jump_above_k_times_the_average_and_not_the_fast_fall():
    detector = SpikeDetector(factor=3.0)
    falling = [2.3 * 0.9 ** t for t in range(60)]  # a loss falling 10% a step: never a spike
    assert not any(detector.observe(v) for v in falling)
    level = falling[-1]
    assert detector.average > level  # the average lags above a falling loss
    steady = SpikeDetector(factor=3.0)
    for t in range(200):
        steady.observe(1.0 + 0.01 * (-1) ** t)
    # sigma of log(loss) is 0.01 here: the threshold is k x the average, to the percent
    assert steady.threshold == pytest.approx(3.0 * steady.average, rel=1e-3)
    assert steady.is_spike(3.1) and not steady.is_spike(2.9) and steady.is_spike(math.nan)


def test_a_noisy_loss_raises_the_threshold_above_k_times():
    # log(loss) with sd 0.5 (batch losses of a few examples): a 3x jump is within its noise
    generator = torch.Generator().manual_seed(0)
    values = torch.exp(0.5 * torch.randn(400, generator=generator, dtype=torch.float64)).tolist()
    detector = SpikeDetector(factor=3.0)
    flagged = sum(detector.observe(v) for v in values)
    assert flagged == 0
    assert detector.threshold / detector.average > 5.0  # exp(4 x ~0.5) = ~7.4
    assert not detector.is_spike(3.5 * detector.average) and detector.is_spike(20 * detector.average)


# --------------------------------------------------------------------------- the three modes


def test_stop_names_the_spiked_step_and_stops_as_the_guard_did(digits, tmp_path):
    at = 45  # epoch 3, not a monitor sample (41, 51): the guard itself never sees that batch's loss
    trainer, state, monitors, records = train(digits, tmp_path / "a", at=at, optimizer="sgd")
    spikes = spikes_in(records)
    assert spikes and spikes[0]["step"] == at and spikes[0]["action"] == "none"
    assert spikes[0]["loss"] > 1e3 * spikes[0]["average"]
    assert spikes[0]["examples"] == trainer_batch_indices(digits, at)
    # today's behaviour: the same stop, at the same step, as without spike detection
    _, before, _, old_records = train(digits, tmp_path / "b", at=at, optimizer="sgd", spike_factor=None)
    assert (state.step, state.stop_reason, state.diverged) == (before.step, before.stop_reason, before.diverged)
    assert state.diverged and not spikes_in(old_records)
    (found,) = spike_findings(records, on_spike="stop", spike_factor=3.0)
    assert (found.id, found.severity, found.step) == ("loss_spike", "warning", at)
    assert f"at step(s) {at}" in found.message


def trainer_batch_indices(splits, step):
    """The example indices of global step ``step`` (1-based) as the loop's Batches draws them."""
    batches = Batches(splits.train.x, splits.train.y, 64, torch.Generator().manual_seed(0))
    drawn = 0
    while True:
        for i, _ in enumerate(batches):
            drawn += 1
            if drawn == step:
                return batches.batch_indices(i).tolist()


def test_rollback_ends_where_a_run_that_never_saw_the_skipped_batches_ends(digits, tmp_path):
    at = 45  # epoch 3 starts after step 42: window (42, 51], replay 43-44, skip 45-51
    trainer, state, monitors, records = train(digits, tmp_path / "r", on_spike="rollback", at=at)
    assert not state.diverged and state.epoch == 6 and monitors.guard is None
    (spike,) = spikes_in(records)
    (rolled,) = [r for r in records if r.get("event") == "rollback"]
    assert (spike["step"], spike["action"]) == (at, "rollback")
    assert (rolled["to_step"], rolled["replayed"], rolled["first_skipped"], rolled["skipped"]) == (42, 2, 45, 7)
    reference_trainer, _, _, reference_records = train(digits, tmp_path / "ref", drop=tuple(range(45, 52)))
    assert not spikes_in(reference_records)
    same = [torch.equal(a, b) for a, b in zip(trainer.model.parameters(), reference_trainer.model.parameters(),
                                              strict=True)]
    assert all(same)
    # the readers of metrics.jsonl's epoch records pass the spike records by
    history = [r for r in records if "epoch" in r]
    assert len(history) == 6 and all("event" not in r for r in history)
    (found,) = spike_findings(records, on_spike="rollback", spike_factor=3.0)
    assert (found.id, found.severity, found.step) == ("loss_spike", "info", at)


def test_after_a_rollback_the_run_ends_within_1_percent_of_the_clean_runs_validation_loss(digits, tmp_path):
    # softmax regression, Adam with a cosine schedule, 20 epochs (420 steps, 7 of them skipped).
    # (rollback - clean) / clean over seeds 0-7: mean +0.09%, sd 0.23% (min -0.25%, max +0.33%):
    # the 1% bar is 3.9 sd from the mean. (The MLP's val loss moves more with the path: sd 0.36%.)
    _, state, _, records = train(digits, tmp_path / "r", on_spike="rollback", at=45, epochs=20, kind="linear",
                                 cosine=True)
    assert [r["step"] for r in spikes_in(records)] == [45] and not state.diverged
    _, clean, _, _ = train(digits, tmp_path / "clean", on_spike="rollback", epochs=20, kind="linear", cosine=True)
    rolled_back, reference = state.logs["val_loss"], clean.logs["val_loss"]
    print(f"val loss: clean {reference:.5f}, rollback {rolled_back:.5f}")
    assert abs(rolled_back - reference) <= 0.01 * reference


def test_the_explosion_guard_lets_a_rolled_back_spike_pass_at_a_sampled_step(digits, tmp_path):
    at = 51  # a monitor sample and a window's end: the guard reads this very loss
    _, stopped, guard_stop, _ = train(digits, tmp_path / "stop", at=at, epochs=3)
    assert stopped.diverged and guard_stop.guard.id == "loss_exploded" and guard_stop.guard.step == at
    _, state, monitors, records = train(digits, tmp_path / "rollback", on_spike="rollback", at=at, epochs=3)
    assert monitors.guard is None and not state.diverged and state.step == 63
    assert [(r["step"], r["replayed"], r["skipped"]) for r in records if r.get("event") == "rollback"] == [(51, 8, 1)]


def test_a_spike_in_an_epochs_last_window_is_rolled_back_before_its_checkpoint(digits, tmp_path):
    at = 42  # epochs of 21 steps: epoch 2 ends at step 42, inside the window (41, 51]
    trainer, state, _, records = train(digits, tmp_path / "r", on_spike="rollback", at=at, epochs=2)
    (spike,) = spikes_in(records)
    assert spike["step"] == at and state.step == 42
    checkpoint = torch.load(tmp_path / "r" / "checkpoints" / "last.pt", weights_only=True)
    reference, _, _, _ = train(digits, tmp_path / "ref", drop=(42,), epochs=2)
    for name, value in reference.model.state_dict().items():
        assert torch.equal(checkpoint["model"][name], value), name


def test_skip_leaves_the_spiked_steps_weights_as_they_were(digits, tmp_path):
    at = 45
    weights = Weights()
    trainer, state, monitors, records = train(digits, tmp_path / "s", on_spike="skip", at=at, epochs=3,
                                              extra=[weights])
    (spike,) = spikes_in(records)
    assert (spike["step"], spike["action"]) == (at, "skip")
    assert torch.equal(weights.after[at], weights.after[at - 1])
    assert not torch.equal(weights.after[at + 1], weights.after[at])
    assert not state.diverged and state.epoch == 3
    reference, _, _, _ = train(digits, tmp_path / "ref", drop=(at,), epochs=3)
    assert all(torch.equal(a, b) for a, b in zip(trainer.model.parameters(), reference.model.parameters(),
                                                 strict=True))


def test_rollback_reads_the_losses_once_a_window_and_skip_once_a_step(digits, tmp_path, monkeypatch):
    # every host read of a tensor from Python (the device syncs a loop can make), counted in
    # whole runs of 42 steps; the difference from stop is what each mode adds
    reads = {"n": 0}
    for name in ("item", "tolist", "__float__", "__int__", "__bool__"):
        def counted(self, *args, _original=getattr(torch.Tensor, name), **kwargs):
            reads["n"] += 1
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, counted)

    def count(on_spike):
        reads["n"] = 0
        model = mlp()
        trainer = Trainer(model, nn.CrossEntropyLoss(), torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9),
                          on_spike=on_spike, spike_every=EVERY)
        trainer.fit(Batches(digits.train.x, digits.train.y, 64, torch.Generator().manual_seed(0)), 2)
        return reads["n"]

    stop, rollback, skip = count("stop"), count("rollback"), count("skip")
    windows = 6  # steps 1, 11, 21 | 31, 41 and the epoch's last, 42
    assert rollback - stop == windows
    assert skip - stop == 42


@pytest.mark.parametrize("on_spike, stops_at", [("rollback", 63), ("skip", 74)])
def test_a_loss_that_stays_up_is_no_spike_and_stops_the_run_with_good_weights(digits, tmp_path, on_spike,
                                                                               stops_at):
    # every batch from step 45 on is corrupted: rollback undoes windows (42, 51], (51, 61] and
    # epoch 3's last, (61, 63], and stops; skip skips 30 batches in a row (3 windows' worth),
    # 45-74, and stops
    _, state, _, records = train(digits, tmp_path, on_spike=on_spike, at=45, onwards=True)
    assert state.stop and not state.diverged and state.step == stops_at
    assert state.stop_reason.startswith("loss_spike:")
    (found,) = spike_findings(records, on_spike=on_spike, spike_factor=3.0)
    assert (found.severity, found.step) == ("error", 45)
    checkpoint = torch.load(tmp_path / "checkpoints" / "last.pt", weights_only=True)
    assert all(torch.isfinite(v).all() for v in checkpoint["model"].values())


# --------------------------------------------------------------------------- where a NaN came from


def test_the_replay_names_the_layer_that_divided_by_zero(digits, tmp_path):
    model = mlp(kind="divide")
    xb, yb = digits.train.x[:16], digits.train.y[:16]
    assert nonfinite_origin(model, nn.functional.cross_entropy, (xb, yb))["where"] == "none"
    origin = nonfinite_origin(model, nn.functional.cross_entropy, (xb * 0, yb))
    assert (origin["where"], origin["module"], origin["type"]) == ("module", "3", "RowNormalise")
    # in training, under skip: the record and the nonfinite_loss finding name it and the examples
    at = 30
    _, state, _, records = train(digits, tmp_path / "s", on_spike="skip", at=at, scale=0.0, epochs=2, kind="divide")
    (spike,) = spikes_in(records)
    assert spike["step"] == at and spike["loss"] is None and spike["origin"]["module"] == "3"
    found = {f.id: f for f in spike_findings(records, on_spike="skip", spike_factor=3.0)}
    assert found["nonfinite_loss"].layer == "3" and found["nonfinite_loss"].severity == "warning"
    assert f"training examples {spike['examples'][0]}," in found["nonfinite_loss"].message
    assert "'3' (RowNormalise)" in found["nonfinite_loss"].message


def test_the_replay_names_the_loss_term_when_every_module_is_finite(digits):
    def hand_loss(out, y):  # -log softmax, through a probability that underflows to exactly 0
        return -torch.log(torch.softmax(out, dim=1)[torch.arange(len(y)), y]).mean()

    model = mlp()
    xb, yb = digits.train.x[:32], digits.train.y[:32]
    assert nonfinite_origin(model, hand_loss, (xb, yb))["where"] == "none"
    origin = nonfinite_origin(model, hand_loss, (xb * 1e6, yb))
    assert origin["where"] == "loss" and origin["module"] is None and math.isinf(origin["loss"])


def test_the_replay_changes_nothing(digits):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.BatchNorm1d(16), nn.Dropout(0.5), nn.Linear(16, 10))
    state = {k: v.clone() for k, v in model.state_dict().items()}
    rng = torch.get_rng_state()
    nonfinite_origin(model, nn.functional.cross_entropy, (digits.train.x[:32] * 1e30, digits.train.y[:32]))
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    assert torch.equal(rng, torch.get_rng_state())


# --------------------------------------------------------------------------- through the run path


def _corrupting(monkeypatch, at, scale):
    import babysit.data

    class CorruptedAt(Corrupted):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, at=at, scale=scale, **kwargs)

    monkeypatch.setattr(babysit.data, "Batches", CorruptedAt)  # what the run path's data.batches builds


DIGITS_RUN = {"data": {"source": "digits", "batch_size": 64}, "model": {"kind": "mlp", "hidden": [32]},
              "optimizer": {"name": "adam", "lr": 0.003}, "checks": {"preflight": False}}


def test_a_rolled_back_run_writes_records_that_the_readers_of_epochs_pass_by(tmp_path, monkeypatch):
    from babysit.checks.diagnose import diagnose_run
    from babysit.run import run

    _corrupting(monkeypatch, at=45, scale=1e6)
    spec = config.validate({**DIGITS_RUN, "train": {"epochs": 4, "on_spike": "rollback"}})
    result = run(spec, out=tmp_path / "r", quiet=True)
    found = {f.id: f for f in result.findings}
    assert (found["loss_spike"].severity, found["loss_spike"].step) == ("info", 45)
    assert not result.summary["diverged"] and result.summary["epochs"] == 4
    assert not [f for f in result.findings if f.severity == "error"]
    events = [r["event"] for r in read_jsonl(tmp_path / "r" / "metrics.jsonl") if "event" in r]
    assert events == ["loss_spike", "rollback"]
    history = read_run(tmp_path / "r").history  # what the report and babysit compare draw
    assert len(history) == 4 and all("event" not in r for r in history)
    assert "loss_spike" not in {f.id for f in diagnose_run(tmp_path / "r")}
    assert (tmp_path / "r" / "report.html").exists()


def test_stop_a_nonfinite_loss_is_traced_to_its_batch_in_the_guards_finding(digits, tmp_path):
    from babysit.run import run

    spec = config.validate({**DIGITS_RUN, "train": {"epochs": 3}})
    bad = 700  # one training example with a NaN pixel
    x = digits.train.x.clone()
    x[bad, 0, 3, 3] = math.nan
    splits = dataclasses.replace(digits, train=Split(x, digits.train.y))
    step = next(s for s in range(1, 22) if bad in trainer_batch_indices(digits, s))
    result = run(spec, out=tmp_path / "r", quiet=True, splits=splits, report=False)
    guard = next(f for f in result.findings if f.id == "nonfinite_loss")
    assert guard.severity == "error" and result.summary["diverged"]
    assert guard.evidence["first_nonfinite_step"] == step and guard.evidence["origin"]["where"] == "input"
    assert bad in guard.evidence["examples"] or len(guard.evidence["examples"]) == 32
    assert "inputs themselves hold NaN or inf" in guard.message and "last checkpoint's weights (step 0)" in guard.message


@pytest.mark.parametrize("spec", [
    ("examples/spirals-mlp.yaml", ["train.epochs=20"]),
    ("examples/mnist1d-mlp.yaml", ["train.epochs=6"]),
    # small-batch SGD: batch losses of 16 examples spread widely (sigma of log loss ~1 at the end)
    (None, ["data.source=digits", "data.batch_size=16", "model.hidden=[64]", "optimizer.name=sgd",
            "optimizer.lr=0.05", "optimizer.momentum=0.0", "train.epochs=10"]),
], ids=["spirals-mlp", "mnist1d-mlp", "digits-sgd-batch16"])
def test_healthy_runs_get_no_loss_spike(spec, tmp_path):
    from pathlib import Path

    from babysit.run import run

    path, overrides = spec
    root = Path(__file__).resolve().parents[1]
    experiment = (config.load(root / path, [*overrides, "checks.preflight=false"]) if path
                  else config.apply_overrides({"checks": {"preflight": False}}, overrides))
    result = run(experiment, out=tmp_path / "r", quiet=True, report=False)
    assert not [f for f in result.findings if f.id in ("loss_spike", "loss_exploded", "nonfinite_loss")]
    assert not [r for r in read_jsonl(tmp_path / "r" / "metrics.jsonl") if "event" in r]


def test_a_hard_batch_late_in_a_fitted_run_is_not_a_spike():
    """examples/mnist1d-cnn.yaml ends with a training loss near 0.01, where single batches reach
    0.27 (10-30x the average): one hard batch, not an instability. A spike must also undo a
    quarter of the progress (SPIKE_PROGRESS): a batch back at 1.0 does."""
    from babysit.checks.spikes import SPIKE_PROGRESS, SpikeDetector

    detector = SpikeDetector(3.0)
    losses = [2.3 * math.exp(-step / 70) * (1.1 if step % 2 else 0.9) + 0.005 for step in range(900)]
    for value in losses:  # from 2.3 down to about 0.005, with a little noise
        detector.fold(value)
    average = detector.average
    start = math.exp(sum(math.log(v) for v in losses[:8]) / 8)  # the first 8 losses' level
    assert average < 0.01 and start > 2
    assert detector.threshold == pytest.approx(average + SPIKE_PROGRESS * (start - average), rel=1e-9)
    assert not detector.is_spike(0.27) and detector.is_spike(1.0)
    without_floor = math.exp(math.log(average) + math.log(3.0))  # 3x the average alone would flag 0.27
    assert without_floor < 0.27
    restored = SpikeDetector(3.0)
    restored.load_state_dict(detector.state_dict())
    assert restored.threshold == detector.threshold
