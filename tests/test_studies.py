"""Studies (babysit.studies): each quick study reproduces the direction of its claim, writes
its directory, and the CLI runs them and refuses an unknown name in one line.

Each quick study runs once per module (a fixture) and its tests read the result. The
directions are asserted on the numbers themselves, not only on ``result.checks``, so a
wrong check cannot hide a wrong number. The heavier studies are marked slow (they still
run in CI).
"""

from __future__ import annotations

import csv
import json
import math

import pytest

from babysit.errors import BabysitError
from babysit.studies import STUDIES, run_study
from babysit.studies.common import study_directory
from helpers import run_cli

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    """Run a quick study once per module: ``quick(name)`` -> StudyResult (cached)."""
    cache = {}
    root = tmp_path_factory.mktemp("studies")

    def get(name):
        if name not in cache:
            cache[name] = run_study(name, quick=True, out=root / name)
        return cache[name]

    return get


def rows_by(result, key):
    return {row[key]: row for row in result.rows}


# --------------------------------------------------------------------------- the claims


def test_activations_relu_reaches_the_target_faster_than_sigmoid(quick):
    result = quick("activations")
    rows = rows_by(result, "activation")
    assert set(rows) == {"sigmoid", "tanh", "relu", "leaky_relu", "elu", "maxout"}
    relu, sigmoid = rows["relu"]["steps_to_target"], rows["sigmoid"]["steps_to_target"]
    assert relu is not None
    assert sigmoid is None or sigmoid > 3 * relu  # Krizhevsky et al.: several times faster
    assert rows["tanh"]["steps_to_target"] < (sigmoid or math.inf)
    # the monitors count dead units for relu only and saturated units for tanh / sigmoid only
    assert rows["relu"]["dead_fraction"] is not None and rows["sigmoid"]["dead_fraction"] is None
    assert rows["tanh"]["saturated_fraction"] is not None and rows["relu"]["saturated_fraction"] is None
    assert result.checks["relu_faster_than_sigmoid"]
    assert any("relu reached" in line and "sigmoid" in line for line in result.conclusion)


def test_init_small_collapses_tanh_xavier_keeps_it_kaiming_keeps_relu(quick):
    result = quick("init")
    stds = result.data["layers"]
    small, xavier = stds["tanh / small normal (std 0.01)"]["act_std"], stds["tanh / xavier"]["act_std"]
    kaiming_relu = stds["relu / kaiming"]["act_std"]
    assert len(small) == len(xavier) == len(kaiming_relu) == 10
    assert small[-1] < 1e-3 * small[0]  # collapsed to zero, shrinking layer after layer
    assert all(b < a for a, b in zip(small, small[1:], strict=False))
    assert xavier[-1] > 0.1 * xavier[0] and xavier[-1] > 0.05  # alive at layer 10
    assert 0.5 < kaiming_relu[-1] / kaiming_relu[0] < 2.0  # constant across depth
    # N(0, 1) weights saturate the tanh net; Glorot's scale without the gain shrinks the relu net
    assert stds["tanh / large normal (std 1)"]["saturated_fraction"][-1] > 0.5
    relu_xavier = stds["relu / xavier"]["act_std"]
    assert relu_xavier[-1] / relu_xavier[0] < 0.5 * kaiming_relu[-1] / kaiming_relu[0]
    assert all(result.checks.values()), result.checks


@pytest.mark.slow
def test_optimizers_momentum_and_adam_beat_plain_sgd_in_the_same_steps(quick):
    result = quick("optimizers")
    rows = rows_by(result, "optimizer")
    assert set(rows) == {"sgd", "momentum", "nesterov", "adam", "adamw", "rmsprop", "lbfgs", "newton", "quickprop"}
    sgd = rows["sgd"]
    for name in ("momentum", "nesterov", "adam"):
        assert rows[name]["steps"] == sgd["steps"]  # the same number of steps...
        assert rows[name]["final_train_loss"] < 0.5 * sgd["final_train_loss"]  # ...to a far lower loss
    # Newton: few, dear steps; it reaches the target loss in fewer steps than any first-order method
    first_order = [rows[n]["steps_to_target"] for n in ("sgd", "momentum", "nesterov", "adam", "rmsprop")]
    assert rows["newton"]["steps_to_target"] < min(s for s in first_order if s is not None)
    assert rows["newton"]["ms_per_step"] > 10 * sgd["ms_per_step"]
    assert all(not r["diverged"] for r in result.rows)
    assert all(0.0 <= r["test_acc"] <= 1.0 for r in result.rows)


def test_batch_minibatches_beat_full_batch(quick):
    result = quick("batch")
    rows = rows_by(result, "batch")
    full, single, mini = rows["full batch"], rows["single sample (1)"], rows["mini-batch 32"]
    assert full["steps_per_epoch"] == 1 and single["steps_per_epoch"] == 1294  # digits' training split
    assert mini["epochs_to_target"] is not None
    # per epoch: the smaller the batch, the more progress (deterministic: seeded batches)
    assert full["epochs_to_target"] is None or full["epochs_to_target"] > 5 * mini["epochs_to_target"]
    assert single["epochs_to_target"] < mini["epochs_to_target"]
    # per second: a single sample wastes each step (an 8x margin here, so machine load cannot flip it)
    assert mini["seconds_to_target"] < single["seconds_to_target"]


@pytest.mark.slow
def test_normalization_batch_norm_tolerates_a_larger_learning_rate(quick):
    result = quick("normalization")
    rows = rows_by(result, "norm")
    assert set(rows) == {"none", "batch", "layer", "group", "weight"}
    assert rows["batch"]["largest_stable_lr"] >= 3 * rows["none"]["largest_stable_lr"]
    # the unnormalized net diverges at a rate batch norm trains at
    sweeps = result.data["sweeps"]
    at = {s["lr"]: s for s in sweeps["none"]}[rows["batch"]["largest_stable_lr"]]
    assert at["diverged"] or not at["stable"]
    assert all(r["best_val_acc"] > 0.8 for r in result.rows)


@pytest.mark.slow
def test_depth_residual_first_layer_gradient_far_larger(quick):
    result = quick("depth")
    plain, residual = result.rows
    assert plain["net"].startswith("plain") and residual["net"].startswith("residual")
    assert plain["ratio_init"] < 1e-6  # vanished through 20 sigmoid layers
    assert residual["grad_first_init"] > 1e6 * plain["grad_first_init"]
    assert residual["steps_to_target"] is not None and residual["final_val_acc"] > 0.85
    assert plain["final_val_acc"] < 0.3  # the plain net is stuck near chance
    profile = result.data["gradient_rms_at_init"]["plain"]
    assert profile[0] < profile[len(profile) // 2] < profile[-1]  # shrinking toward the input


# --------------------------------------------------------------------------- the directory and the CLI


def test_study_directory_files_and_report(quick):
    result = quick("init")
    path = result.path
    saved = json.loads((path / "results.json").read_text())
    assert saved["study"] == "init" and saved["quick"] is True and saved["conclusion"] == result.conclusion
    assert len(saved["rows"]) == 8
    with (path / "table.csv").open() as handle:
        table = list(csv.reader(handle))
    assert len(table) == 9 and table[0][0] == "net"
    figures = sorted(p.name for p in (path / "figures").glob("*.png"))
    assert figures == ["init_activation_std.png", "init_gradient_rms.png"]
    page = (path / "report.html").read_text()
    assert page.count("data:image/png;base64,") == 2 and "http" not in page.lower()
    assert result.conclusion[0].split(":")[0] in page


def test_quick_study_is_deterministic(tmp_path, quick):
    """Seeded: a second run gives the same table, apart from the wall times."""
    again = run_study("batch", quick=True, out=tmp_path / "again")

    def untimed(rows):
        return [{k: v for k, v in row.items() if "seconds" not in k and not k.startswith("ms_")} for row in rows]

    assert untimed(again.rows) == untimed(quick("batch").rows)
    assert again.conclusion[0].split(":")[0] == quick("batch").conclusion[0].split(":")[0]


def test_default_directory_gets_a_number_when_taken(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert study_directory("init", None).as_posix() == "runs/study-init"
    (tmp_path / "runs" / "study-init").mkdir(parents=True)
    assert study_directory("init", None).as_posix() == "runs/study-init-2"


def test_unknown_study_is_one_error():
    with pytest.raises(BabysitError, match="available: activations"):
        run_study("nope", quick=True)


def test_cli_study_writes_its_directory(tmp_path, capsys):
    code, out, err = run_cli(["study", "init", "--quick", "--out", str(tmp_path / "s")], capsys)
    assert code == 0, err
    assert (tmp_path / "s" / "report.html").exists() and (tmp_path / "s" / "results.json").exists()
    assert "activations collapse" in out and "init: tanh" in out  # the conclusion and the progress lines
    code, out, err = run_cli(["study", "init", "--quick", "--quiet", "--out", str(tmp_path / "s")], capsys)
    assert code == 2 and err.count("\n") == 1 and "already there" in err


def test_cli_unknown_study_exits_2_in_one_line(capsys):
    code, out, err = run_cli(["study", "nope"], capsys)
    assert code == 2
    assert err.strip().count("\n") == 0 and err.startswith("error: study: 'nope' is unknown")


def test_cli_help_lists_every_study(capsys):
    code, out, _ = run_cli(["study", "--help"], capsys)
    assert code == 0
    for name in STUDIES:
        assert name in out
