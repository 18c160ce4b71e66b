"""The loop, its callbacks, checkpoints, the runner and resume after SIGKILL."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from torch import nn

from babysit.config import validate
from babysit.data import Split
from babysit.data.batching import Batches
from babysit.errors import BabysitError
from babysit.run import run
from babysit.train import Callback, Trainer, evaluate, load_checkpoint, save_checkpoint
from babysit.train.callbacks import EarlyStopping


def tiny_problem(n=128, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 4, generator=g)
    y = (x[:, 0] + x[:, 1] > 0).long()
    return x, y


def test_trainer_learns_and_counts_steps():
    x, y = tiny_problem()
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 2))
    trainer = Trainer(model, nn.CrossEntropyLoss(), torch.optim.SGD(model.parameters(), lr=0.5),
                      predict=lambda o: o.argmax(-1))
    before = evaluate(model, nn.CrossEntropyLoss(), Split(x, y), lambda o: o.argmax(-1))
    state = trainer.fit(Batches(x, y, 32, torch.Generator().manual_seed(0)), epochs=30, val=Split(x, y))
    assert state.step == 30 * 4 and state.epoch == 30
    assert state.logs["val_loss"] < before["loss"] / 3
    assert state.logs["val_acc"] > 0.9


def test_callback_hooks_and_stop():
    x, y = tiny_problem()
    calls = []

    class Recorder(Callback):
        def on_fit_start(self, trainer):
            calls.append("fit_start")

        def on_epoch_start(self, trainer):
            calls.append("epoch_start")

        def on_batch_end(self, trainer, loss):
            calls.append("batch")

        def on_epoch_end(self, trainer, logs):
            calls.append("epoch_end")
            if trainer.state.epoch == 2:
                trainer.state.stop = True

        def on_fit_end(self, trainer):
            calls.append("fit_end")

    model = nn.Linear(4, 2)
    Trainer(model, nn.CrossEntropyLoss(), torch.optim.SGD(model.parameters(), lr=0.1), callbacks=[Recorder()]).fit(
        Batches(x, y, 64, torch.Generator()), epochs=10)
    assert calls == ["fit_start"] + 2 * ["epoch_start", "batch", "batch", "epoch_end"] + ["fit_end"]


def test_lbfgs_through_its_closure():
    x, y = tiny_problem()
    torch.manual_seed(0)
    model = nn.Linear(4, 2)
    opt = torch.optim.LBFGS(model.parameters(), lr=1, max_iter=10)
    state = Trainer(model, nn.CrossEntropyLoss(), opt).fit(Batches(x, y, "full", None), epochs=5, val=Split(x, y))
    assert state.logs["val_loss"] < 0.3


def test_early_stopping_restores_the_best_weights():
    x, y = tiny_problem()
    torch.manual_seed(0)
    model = nn.Linear(4, 2)
    es = EarlyStopping("val_loss", patience=2)
    seen = {}

    class Record(Callback):
        def on_epoch_end(self, trainer, logs):
            seen[trainer.state.epoch] = {k: v.clone() for k, v in trainer.model.state_dict().items()}

    # validation labels are the training labels flipped: the better it trains, the worse val gets
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    state = Trainer(model, nn.CrossEntropyLoss(), opt, callbacks=[Record(), es]).fit(
        Batches(x, y, 32, torch.Generator()), epochs=20, val=Split(x, 1 - y))
    assert state.stop and state.epoch == es.best_epoch + 2
    assert "early stopping" in state.stop_reason
    for key, value in model.state_dict().items():
        assert torch.equal(value, seen[es.best_epoch][key])
    assert not torch.equal(model.weight, seen[state.epoch]["weight"])


def test_checkpoints_are_atomic_and_safe(tmp_path):
    path = tmp_path / "ck.pt"
    save_checkpoint(path, {"model": {"w": torch.arange(3.0)}, "step": 7})
    assert load_checkpoint(path)["step"] == 7
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    # a pickled object that is not a tensor or a plain container is refused by weights_only loading
    torch.save({"evil": Split(torch.zeros(1), torch.zeros(1))}, path)
    with pytest.raises(BabysitError, match="not a readable babysit checkpoint"):
        load_checkpoint(path)
    path.write_bytes(b"\x00" * 10)
    with pytest.raises(BabysitError, match="ck.pt"):
        load_checkpoint(path)
    with pytest.raises(BabysitError, match="not found"):
        load_checkpoint(tmp_path / "missing.pt")


def spirals(**overrides):
    raw = {"seed": 3, "data": {"source": "spirals", "samples": 300, "batch_size": 32},
           "model": {"hidden": [32, 32]}, "train": {"epochs": 5}}
    for key, value in overrides.items():
        raw.setdefault(key, {}).update(value)
    return validate(raw)


def test_run_directory_contents(tmp_path):
    result = run(spirals(), tmp_path / "r", quiet=True, report=False)
    summary = json.loads((tmp_path / "r" / "summary.json").read_text())
    for key in ("train_loss", "train_acc", "val_loss", "val_acc", "test_loss", "test_acc", "steps",
                "wall_time_s", "torch", "device"):
        assert key in summary, key
    assert summary["torch"] == torch.__version__
    lines = [json.loads(line) for line in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()]
    assert [line["epoch"] for line in lines] == [1, 2, 3, 4, 5]
    assert {"step", "epoch", "lr", "train_loss", "val_loss", "val_acc"} <= set(lines[0])
    assert result.summary["steps"] == lines[-1]["step"]
    best = load_checkpoint(tmp_path / "r" / "checkpoints" / "best.pt")
    assert best["epoch"] == result.summary["best_epoch"]


def test_seeded_runs_are_deterministic(tmp_path):
    a = run(spirals(model={"dropout": 0.1}), tmp_path / "a", quiet=True, report=False)
    b = run(spirals(model={"dropout": 0.1}), tmp_path / "b", quiet=True, report=False)
    for (ka, va), (_, vb) in zip(a.model.state_dict().items(), b.model.state_dict().items(), strict=True):
        assert torch.equal(va, vb), ka
    c = run(validate({**spirals(model={"dropout": 0.1}).to_dict(), "seed": 4}), tmp_path / "c", quiet=True, report=False)
    first = lambda m: next(iter(m.state_dict().values()))  # noqa: E731
    assert not torch.equal(first(a.model), first(c.model))


def test_log_every_adds_batch_points(tmp_path):
    run(spirals(train={"log_every": 5, "epochs": 2}), tmp_path / "r", quiet=True, report=False)
    lines = [json.loads(line) for line in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()]
    assert any("batch_loss" in line for line in lines)
    assert all(line["step"] % 5 == 0 for line in lines if "batch_loss" in line)


RESUME_ARGS = [
    "seed=1", "data.source=spirals", "data.samples=600", "data.batch_size=8", "model.hidden=[64,64]",
    "model.dropout=0.1", "regularization.input_noise=0.05", "optimizer.name=adam", "optimizer.lr=0.003",
    "schedule.name=warmup_cosine", "schedule.warmup_steps=20", "train.epochs=40",
    "train.early_stopping.patience=null", "train.checkpoint_every_s=0",
]


@pytest.mark.slow
def test_sigkill_then_resume_matches_an_uninterrupted_run(tmp_path):
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "babysit", "train", *RESUME_ARGS, "-q"]
    straight = subprocess.run([*cmd, "--out", str(tmp_path / "straight")], capture_output=True, text=True, env=env)
    assert straight.returncode == 0, straight.stderr

    killed_dir = tmp_path / "killed"
    proc = subprocess.Popen([*cmd, "--out", str(killed_dir)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    metrics = killed_dir / "metrics.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline:
        if metrics.exists() and len(metrics.read_text().splitlines()) >= 8:
            break
        if proc.poll() is not None:
            pytest.fail(f"run ended before it could be killed: {proc.stderr.read()}")
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert not (killed_dir / "summary.json").exists()
    epoch_at_kill = load_checkpoint(killed_dir / "checkpoints" / "last.pt")["loop"]["epoch"]
    assert 0 < epoch_at_kill < 40

    resumed = subprocess.run([*cmd, "--out", str(killed_dir), "--resume"], capture_output=True, text=True, env=env)
    assert resumed.returncode == 0, resumed.stderr
    a = load_checkpoint(tmp_path / "straight" / "checkpoints" / "last.pt")
    b = load_checkpoint(killed_dir / "checkpoints" / "last.pt")
    assert a["loop"]["step"] == b["loop"]["step"]
    for key, value in a["model"].items():
        assert torch.equal(value, b["model"][key]), key
    epochs = [json.loads(line)["epoch"] for line in (killed_dir / "metrics.jsonl").read_text().splitlines()]
    assert epochs == list(range(1, 41))
