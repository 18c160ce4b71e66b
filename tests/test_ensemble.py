"""Ensembles (babysit.train.ensemble): the averaging against a hand computation, snapshot
timing against torch's own schedulers, the CLI's refusals, and on MNIST-1D that an ensemble
scores above its best member and a snapshot ensemble above its last snapshot.

The two MNIST-1D tests train shortened versions of examples/mnist1d-mlp.yaml (40 epochs
instead of up to 200, checks off) to stay within CI time; they are marked slow.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from babysit import config
from babysit.config import ScheduleSpec, validate
from babysit.data import Split
from babysit.errors import BabysitError
from babysit.optim import losses, schedules
from babysit.run import run
from babysit.run.ensemble import ensemble_figure, ensemble_runs
from babysit.run.summary import run_line
from babysit.train import Callback, evaluate
from babysit.train.checkpoint import load_checkpoint
from babysit.train.ensemble import (
    combine_outputs,
    cycle_end_steps,
    evaluate_ensemble,
    snapshot_files,
)
from helpers import run_cli

pytestmark = pytest.mark.usefixtures("one_thread")

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "mnist1d-mlp.yaml"
QUICK = {"preflight": False, "monitors": False}


def linear(weight: list[list[float]], bias: list[float]) -> nn.Linear:
    layer = nn.Linear(len(weight[0]), len(weight))
    with torch.no_grad():
        layer.weight.copy_(torch.tensor(weight))
        layer.bias.copy_(torch.tensor(bias))
    return layer


# fixed two-member ensemble on four examples, three classes
X = [[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [-1.0, 0.5]]
Y = [0, 2, 1, 1]
W1, B1 = [[2.0, 0.0], [0.0, 1.0], [-1.0, 3.0]], [0.0, 0.5, -0.5]
W2, B2 = [[0.5, -1.0], [1.5, 0.0], [0.0, 2.0]], [0.2, 0.0, 0.1]


def numpy_outputs() -> list[np.ndarray]:
    x = np.array(X, dtype=np.float64)
    return [x @ np.array(W1).T + np.array(B1), x @ np.array(W2).T + np.array(B2)]


def test_softmax_probabilities_are_averaged_as_computed_by_hand():
    """Loss = mean over examples of -log(mean of the members' softmax probability of the true class)."""
    split = Split(torch.tensor(X), torch.tensor(Y))
    scores = evaluate_ensemble([linear(W1, B1), linear(W2, B2)], "cross_entropy", split)

    probabilities = [np.exp(z) / np.exp(z).sum(axis=1, keepdims=True) for z in numpy_outputs()]
    mean = (probabilities[0] + probabilities[1]) / 2
    y = np.array(Y)
    expected_loss = float(-np.log(mean[np.arange(4), y]).mean())
    expected_acc = float((mean.argmax(axis=1) == y).mean())
    assert scores["loss"] == pytest.approx(expected_loss, abs=1e-6)
    assert scores["acc"] == expected_acc
    for member, p in zip(scores["members"], probabilities, strict=True):
        assert member["loss"] == pytest.approx(float(-np.log(p[np.arange(4), y]).mean()), abs=1e-6)
        assert member["acc"] == float((p.argmax(axis=1) == y).mean())
    # the averaged probabilities, not the averaged logits: they disagree on this data
    logit_mean = (numpy_outputs()[0] + numpy_outputs()[1]) / 2
    logit_loss = float(-(logit_mean - np.log(np.exp(logit_mean).sum(1, keepdims=True)))[np.arange(4), y].mean())
    assert abs(logit_loss - expected_loss) > 1e-3


def test_sigmoid_and_output_averaging_by_hand():
    z = numpy_outputs()
    outputs = torch.tensor(np.stack(z), dtype=torch.float64)
    # bce: one-vs-rest probabilities averaged per logit, back to a logit
    sigmoid = [1 / (1 + np.exp(-o)) for o in z]
    mean_p = (sigmoid[0] + sigmoid[1]) / 2
    combined = combine_outputs(outputs, "bce")
    np.testing.assert_allclose(combined.numpy(), np.log(mean_p / (1 - mean_p)), rtol=1e-10)
    # hinge scores and regression outputs: the plain mean
    np.testing.assert_allclose(combine_outputs(outputs, "hinge").numpy(), (z[0] + z[1]) / 2, rtol=1e-12)
    np.testing.assert_allclose(combine_outputs(outputs, "mse", "regression").numpy(), (z[0] + z[1]) / 2, rtol=1e-12)
    # regression through evaluate_ensemble: mse of the mean prediction
    target = torch.tensor([[0.5, 0.0, 1.0]] * 4)
    scores = evaluate_ensemble([linear(W1, B1), linear(W2, B2)], "mse", Split(torch.tensor(X), target))
    assert "acc" not in scores
    assert scores["loss"] == pytest.approx(float((((z[0] + z[1]) / 2 - target.numpy()) ** 2).mean()), rel=1e-6)
    # softmax averaging stays finite where float32 probabilities underflow to 0
    extreme = torch.tensor([[[0.0, 200.0]], [[0.0, 300.0]]])
    assert torch.isfinite(combine_outputs(extreme, "cross_entropy")).all()


@pytest.mark.parametrize("loss_name", ["cross_entropy", "nll", "bce", "hinge", "mse"])
def test_an_ensemble_of_one_is_the_model(loss_name):
    torch.manual_seed(0)
    classes = 2 if loss_name == "bce" else 3
    model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 1 if loss_name == "bce" else classes))
    split = Split(torch.randn(300, 4), torch.randint(0, classes, (300,)))
    alone = evaluate(model, losses.build_loss(loss_name, "classification", classes), split,
                     lambda out: losses.predict(out, loss_name))
    one = evaluate_ensemble([model], loss_name, split)
    assert one["loss"] == pytest.approx(alone["loss"], abs=1e-6)
    assert one["acc"] == alone["acc"]


def test_per_member_splits_must_hold_the_same_examples():
    a = Split(torch.randn(10, 2), torch.zeros(10, dtype=torch.long))
    b = Split(torch.randn(10, 2), torch.ones(10, dtype=torch.long))
    with pytest.raises(ValueError, match="same examples"):
        evaluate_ensemble([nn.Linear(2, 2), nn.Linear(2, 2)], "cross_entropy", [a, b])


# --------------------------------------------------------------------------- snapshot timing


def lr_of_each_step(spec: ScheduleSpec, steps_per_epoch: int, epochs: int) -> list[float]:
    """lrs[s] = the lr optimizer step s (1-based) used, from the schedule babysit builds."""
    optimizer = torch.optim.SGD(nn.Linear(1, 1).parameters(), lr=0.1, momentum=0.9)
    schedule = schedules.build_schedule(spec, optimizer, steps_per_epoch, epochs)
    lrs = [math.nan]
    for _ in range(steps_per_epoch * epochs):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        schedule.step_batch()
    return lrs


@pytest.mark.parametrize("spec", [
    ScheduleSpec(name="cosine_restarts", cycle_epochs=2),
    ScheduleSpec(name="cosine_restarts", cycle_epochs=1, cycle_mult=2, warmup_steps=7),
    ScheduleSpec(name="cyclic", cycle_epochs=3),
    ScheduleSpec(name="cyclic", cycle_epochs=2, warmup_steps=4),
], ids=["sgdr", "sgdr-mult-warmup", "cyclic", "cyclic-warmup"])
def test_snapshots_fall_where_the_schedule_restarts(spec):
    """A cycle ends after step s when step s+1 starts the next cycle: SGDR jumps back up,
    cyclic is back at its base lr. The steps come from torch's schedulers, not from the formula."""
    steps_per_epoch, epochs = 5, 16
    lrs = lr_of_each_step(spec, steps_per_epoch, epochs)
    total = steps_per_epoch * epochs
    base = min(lrs[spec.warmup_steps + 1:])
    restarts = []
    for s in range(spec.warmup_steps + 1, total):
        if spec.name == "cosine_restarts" and lrs[s + 1] > lrs[s] + 1e-12:
            restarts.append(s)
        if spec.name == "cyclic" and math.isclose(lrs[s + 1], base, rel_tol=1e-9):
            restarts.append(s)
    ends = cycle_end_steps(spec, steps_per_epoch, epochs)
    assert ends[: len(restarts)] == restarts
    assert len(ends) - len(restarts) <= 1 and all(e <= total for e in ends)  # the last may end with the run
    assert len(ends) >= 3
    if spec.name == "cosine_restarts":
        for s in ends[: len(restarts)]:  # the lowest lr of its cycle
            assert lrs[s] <= min(lrs[max(spec.warmup_steps + 1, s - 4): s + 1])


SPIRALS = {
    "seed": 0,
    "data": {"source": "spirals", "samples": 300, "batch_size": 30},
    "model": {"hidden": [16]},
    "optimizer": {"name": "adam", "lr": 0.01},
    "schedule": {"name": "cosine_restarts", "cycle_epochs": 1},
    "train": {"epochs": 5, "device": "cpu", "snapshots": 2, "early_stopping": {"patience": None}},
    "checks": QUICK,
}


def test_snapshot_run_keeps_the_last_k_and_reports_them(tmp_path):
    result = run(validate(SPIRALS), out=tmp_path / "run", quiet=False)
    folder = tmp_path / "run" / "checkpoints" / "snapshots"
    files = snapshot_files(folder)
    assert [f.name for f in files] == ["cycle-004.pt", "cycle-005.pt"]
    assert not [p for p in folder.iterdir() if p.name.endswith(".tmp")]
    steps_per_epoch = len(result.splits.train) // 30 + (len(result.splits.train) % 30 > 0)
    assert [load_checkpoint(f)["step"] for f in files] == [4 * steps_per_epoch, 5 * steps_per_epoch]
    scores = json.loads((tmp_path / "run" / "summary.json").read_text())["snapshot_ensemble"]
    assert scores["snapshots"] == 2 and scores["epochs"] == [4, 5]
    # the run ends with a cycle, early stopping is off: the last snapshot is the final model
    for key in ("val_loss", "val_acc", "test_loss", "test_acc"):
        assert scores["last_snapshot"][key] == pytest.approx(result.summary[key], abs=1e-6)
    assert "snapshot ensemble of 2: test accuracy" in run_line(result.summary)  # what babysit train prints
    assert "snapshot ensemble of 2: test accuracy" in (tmp_path / "run" / "report.html").read_text()


class InterruptAfterEpoch(Callback):
    def __init__(self, epoch: int):
        self.epoch = epoch

    def on_epoch_end(self, trainer, logs):
        if trainer.state.epoch == self.epoch:
            raise KeyboardInterrupt


def test_snapshots_survive_an_interrupted_run(tmp_path):
    """Interrupted after epoch 3 of 5 and resumed: the same snapshots and the same snapshot
    ensemble as an uninterrupted run (on the CPU, same seed)."""
    spec = validate(dict(SPIRALS, train=dict(SPIRALS["train"], snapshots=4, checkpoint_every_s=0)))
    whole = run(spec, out=tmp_path / "whole", quiet=True)
    with pytest.raises(KeyboardInterrupt):
        run(spec, out=tmp_path / "cut", quiet=True, extra_callbacks=[InterruptAfterEpoch(3)])
    assert len(snapshot_files(tmp_path / "cut" / "checkpoints" / "snapshots")) == 3
    resumed = run(spec, out=tmp_path / "cut", resume=True, quiet=True)
    names = [f.name for f in snapshot_files(tmp_path / "cut" / "checkpoints" / "snapshots")]
    assert names == ["cycle-002.pt", "cycle-003.pt", "cycle-004.pt", "cycle-005.pt"]
    for a, b in zip(snapshot_files(tmp_path / "whole" / "checkpoints" / "snapshots"),
                    snapshot_files(tmp_path / "cut" / "checkpoints" / "snapshots"), strict=True):
        assert all(torch.equal(x, y) for x, y in zip(load_checkpoint(a)["model"].values(),
                                                      load_checkpoint(b)["model"].values(), strict=True))
    assert resumed.summary["snapshot_ensemble"]["test_loss"] == whole.summary["snapshot_ensemble"]["test_loss"]


def test_snapshots_mid_epoch_with_a_warm_up(tmp_path):
    """A warm-up of 3 steps moves every cycle end off the epoch boundary; the snapshot is taken
    after exactly that step (its weights are those of a run stopped there)."""
    spec = dict(SPIRALS, schedule={"name": "cosine_restarts", "cycle_epochs": 1, "warmup_steps": 3},
                train=dict(SPIRALS["train"], epochs=3, snapshots=3))
    result = run(validate(spec), out=tmp_path / "run", quiet=True)
    per_epoch = math.ceil(len(result.splits.train) / 30)
    files = snapshot_files(tmp_path / "run" / "checkpoints" / "snapshots")
    assert [load_checkpoint(f)["step"] for f in files] == [3 + per_epoch, 3 + 2 * per_epoch]
    assert result.summary["snapshot_ensemble"]["snapshots"] == 2


def test_snapshots_need_a_cyclic_schedule(capsys):
    with pytest.raises(BabysitError, match=r"train.snapshots: needs schedule.name cosine_restarts or cyclic"):
        validate({"train": {"snapshots": 3}})
    with pytest.raises(BabysitError, match=r"train.snapshots: must be >= 2"):
        validate({"train": {"snapshots": 1}, "schedule": {"name": "cyclic"}})
    code, out, err = run_cli(["train", "train.snapshots=3", "train.epochs=1"], capsys)
    assert code == 2 and err.count("\n") == 1 and "schedule.name 'constant'" in err and "Traceback" not in err


# --------------------------------------------------------------------------- the command


@pytest.fixture(scope="module")
def spiral_runs(tmp_path_factory):
    """Small spiral runs: two networks on one split, and the same data carved by another data.split_seed."""
    root = tmp_path_factory.mktemp("runs")
    base = {"seed": 0, "data": {"source": "spirals", "samples": 300}, "model": {"hidden": [16]},
            "optimizer": {"name": "adam", "lr": 0.02}, "train": {"epochs": 8, "device": "cpu"}, "checks": QUICK}
    for name, overrides in {"a": {}, "b": {"model": {"hidden": [32], "activation": "tanh"}},
                            "other-split": {"data": {"source": "spirals", "samples": 300, "split_seed": 1}}, "blobs": {"data": {"source": "blobs", "samples": 300}},
                            "hinge": {"loss": "hinge"}}.items():
        spec = {**base, **overrides}
        run(validate(spec), out=root / name, quiet=True)
    return root


def test_cli_ensemble_of_one_run_equals_its_summary(spiral_runs, tmp_path, capsys):
    run_dir = spiral_runs / "a"
    code, out, err = run_cli(["ensemble", str(run_dir), "--out", str(tmp_path / "e")], capsys)
    assert code == 0, err
    result = json.loads((tmp_path / "e" / "ensemble.json").read_text())
    summary = json.loads((run_dir / "summary.json").read_text())
    for key in ("val_loss", "val_acc", "test_loss", "test_acc"):
        assert result["ensemble"][key] == pytest.approx(summary[key], abs=1e-6)
        assert result["members"][0][key] == pytest.approx(summary[key], abs=1e-6)
    assert (tmp_path / "e" / "ensemble.png").read_bytes()[:4] == b"\x89PNG"
    assert "ensemble" in out and "best member" in out


def test_cli_ensemble_of_two_networks_and_default_directory(spiral_runs, tmp_path, capsys):
    """Different networks on the same data and seed: val and test are both scored; the
    default output is runs/ensemble, then runs/ensemble-2."""
    runs = [str(spiral_runs / "a"), str(spiral_runs / "b")]
    for expected in ("runs/ensemble", "runs/ensemble-2"):
        code, out, err = run_cli(["ensemble", *runs], capsys, cwd=tmp_path)
        assert code == 0, err
        assert f"{expected}/ensemble.json" in out
    result = json.loads((tmp_path / "runs" / "ensemble" / "ensemble.json").read_text())
    assert {"val_acc", "test_acc", "val_loss", "test_loss"} <= set(result["ensemble"])
    assert result["combined"] == "mean of softmax probabilities" and not result["notes"]
    # the ensemble's numbers are those of the Python API on the same members
    members = [ensemble_runs([r])["members"][0] for r in runs]
    assert [m["test_acc"] for m in result["members"]] == [m["test_acc"] for m in members]


@pytest.mark.parametrize("case, message", [
    (lambda root: [root / "a", root / "missing"], "no such run directory"),
    (lambda root: [root / "a", root], "not a run directory (no config.yaml)"),
    (lambda root: [root / "a", root / "blobs"], "data differs from"),
    (lambda root: [root / "a", root / "other-split"], "data.split_seed: 0 there, 1 here"),
    (lambda root: [root / "a", root / "hinge"], "loss 'hinge' differs"),
    (lambda root: [root / "a", root / "a"], "given twice"),
], ids=["missing", "not-a-run", "other-data", "other-test-split", "other-loss", "twice"])
def test_cli_refuses_bad_runs_in_one_line(spiral_runs, tmp_path, capsys, case, message):
    args = [str(p) for p in case(spiral_runs)]
    code, out, err = run_cli(["ensemble", *args, "--out", str(tmp_path / "e")], capsys)
    assert code == 2
    assert err.startswith("error: ") and err.count("\n") == 1 and message in err, err
    assert not (tmp_path / "e").exists()


def test_a_run_without_weights_is_refused(spiral_runs, tmp_path):
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.yaml").write_text((spiral_runs / "a" / "config.yaml").read_text())
    with pytest.raises(BabysitError, match="no checkpoint"):
        ensemble_runs([broken])


# --------------------------------------------------------------------------- MNIST-1D


FIGURES = Path("/tmp/ensemble_figs")


@pytest.mark.slow
def test_five_mnist1d_mlps_beat_their_best_member(tmp_path, capsys):
    """examples/mnist1d-mlp.yaml, seeds 0-4, 40 epochs (the example allows 200 with early
    stopping on val_acc): the mean of the five softmax outputs is more accurate on the
    1000 MNIST-1D test examples than the best of the five."""
    runs = []
    for seed in range(5):
        spec = config.load(EXAMPLE, [f"seed={seed}", "train.epochs=40", "train.device=cpu",
                                     "checks.preflight=false", "checks.monitors=false"])
        runs.append(str(run(spec, out=tmp_path / f"seed{seed}", quiet=True).path))
    code, out, err = run_cli(["ensemble", *runs, "--out", str(tmp_path / "ensemble")], capsys)
    assert code == 0, err
    result = json.loads((tmp_path / "ensemble" / "ensemble.json").read_text())
    accuracies = [m["test_acc"] for m in result["members"]]
    print("members", accuracies, "best", result["best_member"]["test_acc"], "ensemble", result["ensemble"]["test_acc"])
    assert result["best_member"]["test_acc"] == max(accuracies)
    assert result["ensemble"]["test_acc"] > max(accuracies)
    assert result["ensemble"]["test_loss"] < min(m["test_loss"] for m in result["members"])
    assert "val_acc" in result["ensemble"] and not result["notes"]  # seeds share their splits (data.split_seed)
    _keep_figure(tmp_path / "ensemble" / "ensemble.png", "mnist1d-five-seeds.png")


@pytest.mark.slow
def test_snapshot_ensemble_beats_its_last_snapshot_on_mnist1d(tmp_path):
    """One run of the MNIST-1D MLP with a cyclic schedule (lr 0.003..0.03, 10-epoch cycles,
    100 epochs): the ensemble of the last 5 cycle-end snapshots (Huang et al. 2017) scores
    above the last snapshot alone, in accuracy and in loss."""
    spec = config.load(EXAMPLE, ["schedule.name=cyclic", "schedule.cycle_epochs=10", "optimizer.lr=0.03",
                                 "train.epochs=100", "train.snapshots=5", "train.early_stopping.patience=null",
                                 "train.device=cpu", "checks.preflight=false", "checks.monitors=false"])
    result = run(spec, out=tmp_path / "run", quiet=True)
    scores = result.summary["snapshot_ensemble"]
    members = [m["test_acc"] for m in scores["members"]]
    print("snapshots", members, "last", scores["last_snapshot"]["test_acc"], "ensemble", scores["test_acc"])
    assert scores["snapshots"] == 5 and scores["epochs"] == [60, 70, 80, 90, 100]
    assert scores["test_acc"] > scores["last_snapshot"]["test_acc"]
    assert scores["test_loss"] < scores["last_snapshot"]["test_loss"]
    _keep_figure(_snapshot_figure(scores, tmp_path / "snapshots.png"), "mnist1d-snapshots.png")


def _snapshot_figure(scores: dict, path: Path) -> Path:
    """The snapshot ensemble in the same bar chart as `babysit ensemble` draws."""
    from babysit.report.figures import png_bytes

    result = {"task": "classification", "combined": "snapshot ensemble (Huang et al. 2017)",
              "runs": [f"epoch {e}" for e in scores["epochs"]],
              "members": [{"run": f"epoch {e}", **m} for e, m in zip(scores["epochs"], scores["members"], strict=True)],
              "ensemble": {k: scores[k] for k in ("test_acc", "test_loss")}}
    path.write_bytes(png_bytes(ensemble_figure(result), dpi=100))
    return path


def _keep_figure(path: Path, name: str) -> None:
    """Copy a figure out of the test's temporary folder when /tmp/ensemble_figs exists (for the notes)."""
    if FIGURES.is_dir():
        (FIGURES / name).write_bytes(path.read_bytes())


def test_three_seeds_of_a_digits_spec_share_their_splits_and_ensemble(tmp_path, capsys):
    """Runs that differ only in seed are scored on the same examples (data.split_seed decides
    the splits), so three seeds of a digits spec, which carves its own test set, ensemble."""
    runs = []
    for seed in (0, 1, 2):
        spec = config.validate({"seed": seed, "data": {"source": "digits", "test_fraction": 0.2},
                                "model": {"hidden": [32]}, "train": {"epochs": 2, "device": "cpu"}})
        runs.append(run(spec, tmp_path / f"digits-{seed}", quiet=True, report=False))
    for other in runs[1:]:
        for name in ("train", "val", "test"):
            a, b = getattr(runs[0].splits, name), getattr(other.splits, name)
            assert torch.equal(a.x, b.x) and torch.equal(a.y, b.y), name
    code, out, err = run_cli(["ensemble", *(str(r.path) for r in runs), "--out", str(tmp_path / "e")], capsys)
    assert code == 0, err
    result = json.loads((tmp_path / "e" / "ensemble.json").read_text())
    assert {"val_acc", "test_acc"} <= set(result["ensemble"]) and not result["notes"]
