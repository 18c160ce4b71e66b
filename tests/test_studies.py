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
from babysit.studies.activations import activations_conclusion
from babysit.studies.batch import batch_conclusion
from babysit.studies.common import study_directory
from babysit.studies.depth import depth_conclusion
from babysit.studies.initialization import init_conclusion
from babysit.studies.normalization import normalization_conclusion
from babysit.studies.optimizers import optimizers_conclusion
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
    ratio = rows["sigmoid"]["steps_to_target"] / relu
    assert any(f"relu took {relu:,} steps, sigmoid" in line and f"relu {ratio:.2g}x faster" in line
               for line in result.conclusion), result.conclusion


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


# --------------------------------------------------------------------------- conclusions follow their tables
# Each study's conclusion is a function of its table alone: fed a table, then the same table
# with the order reversed, its words must flip with the numbers.


@pytest.mark.parametrize("name", ["activations", "init", "batch"])
def test_a_quick_study_concludes_from_its_own_table(quick, name):
    """The printed conclusion is what the conclusion function makes of the printed rows."""
    result = quick(name)
    conclude = {
        "activations": lambda rows: activations_conclusion(rows, 0.90, 3000),
        "init": lambda rows: init_conclusion(rows, 10),
        "batch": batch_conclusion,
    }[name]
    lines, checks = conclude(result.rows)
    assert lines == result.conclusion and checks == result.checks


def activation_rows(steps, saturated=0.0, dead=0.0):
    return [{"activation": name, "steps_to_target": steps.get(name), "dead_fraction": dead if name == "relu" else None,
             "saturated_fraction": saturated if name in ("tanh", "sigmoid") else None}
            for name in ("sigmoid", "tanh", "relu", "leaky_relu", "elu", "maxout")]


def test_activations_conclusion_states_the_ratios_its_table_shows():
    # the seed's table: tanh a little faster than relu, sigmoid far slower, nothing saturated
    lines, checks = activations_conclusion(
        activation_rows({"sigmoid": 900, "tanh": 110, "relu": 130, "leaky_relu": 120, "elu": 90, "maxout": 50}),
        0.9, 3000)
    text = "\n".join(lines)
    assert "relu took 130 steps, tanh 110 (tanh 1.2x faster)" in text
    assert "relu took 130 steps, sigmoid 900 (relu 6.9x faster)" in text
    assert "holds against sigmoid but not against tanh here" in text
    assert "slowest: sigmoid (900 steps); fastest: maxout (50 steps)" in text
    assert not checks["relu_several_times_faster_than_saturating"] and checks["relu_faster_than_sigmoid"]
    # 0.0% saturated is said to be no saturation, never evidence of it
    assert "sigmoid: a median 0.0% of outputs saturated over the run (no saturation to speak of)." in lines
    assert "saturation does not explain its slowness here" in text
    assert "several times faster" not in text.replace("several times (3x or more) faster", "")

    # the order reversed: relu far ahead of both, and the words flip with it
    lines, checks = activations_conclusion(
        activation_rows({"sigmoid": 130, "tanh": 900, "relu": 50, "leaky_relu": 120, "elu": 90, "maxout": 110},
                        saturated=0.6), 0.9, 3000)
    text = "\n".join(lines)
    assert "relu took 50 steps, tanh 900 (relu 18x faster)" in text and "sigmoid 130 (relu 2.6x faster)" in text
    assert "holds against tanh but not against sigmoid here" in text
    assert "slowest: tanh (900 steps); fastest: relu (50 steps)" in text
    assert "tanh: a median 60.0% of outputs saturated over the run, past the monitors' 25% alarm." in lines
    assert "does not explain" not in text

    # relu never reaching the target is never called faster
    lines, checks = activations_conclusion(activation_rows({"sigmoid": 900, "tanh": 110}), 0.9, 3000)
    assert "sigmoid took 900 steps, relu did not get there within 3,000" in "\n".join(lines)
    assert not checks["relu_faster_than_sigmoid"] and "does not hold here" in "\n".join(lines)


def init_rows(small_ratio, large_saturated, xavier_ratio, kaiming_ratio, relu_xavier_ratio):
    def row(net, init, ratio, unit=0.0):
        return {"net": f"10-layer {net}", "init": init, "std_first": 0.5, "std_last": 0.5 * ratio, "std_ratio": ratio,
                "saturated_or_dead_last": unit}

    return [row("tanh", "small normal (std 0.01)", small_ratio), row("tanh", "large normal (std 1)", 1.0, large_saturated),
            row("tanh", "xavier", xavier_ratio), row("tanh", "kaiming", 0.8), row("relu", "small normal (std 0.01)", 1e-9),
            row("relu", "large normal (std 1)", 1e9), row("relu", "xavier", relu_xavier_ratio),
            row("relu", "kaiming", kaiming_ratio)]


def test_init_conclusion_says_what_its_table_shows():
    lines, checks = init_conclusion(init_rows(1e-7, 0.87, 0.36, 1.07, 0.047), 10)
    text = "\n".join(lines)
    assert all(checks.values()) and "not reproduced" not in text
    assert "(1e-07x): the activations collapse." in text and "87% of the last layer's units are saturated" in text
    assert "alive through every layer" in text and "constant, as He et al. 2015 derive" in text
    # reversed: nothing the claim expects happened, and no line says it did
    lines, checks = init_conclusion(init_rows(0.9, 0.05, 0.01, 5.0, 6.0), 10)
    text = "\n".join(lines)
    assert not any(checks.values())
    assert "collapse." not in text and "they do not collapse here" in text
    assert "5% of the last layer's units are saturated at -1 or 1: not the saturated net" in text
    assert "alive through" not in text and "it fades" in text
    assert "rises from 0.5 at layer 1 to 2.5 at layer 10 (5x): not constant" in text
    assert "not below half of kaiming's" in text and lines[-1].startswith("not reproduced here: small_init_collapses_tanh")


def optimizer_rows(losses, steps_to_target, ms_per_step):
    names = ("sgd", "momentum", "nesterov", "adam", "adamw", "rmsprop", "lbfgs", "newton", "quickprop")
    return [{"optimizer": n, "steps_to_target": steps_to_target.get(n),
             "seconds_to_target": None if steps_to_target.get(n) is None else steps_to_target[n] * ms_per_step[n] / 1000,
             "steps": 200, "final_train_loss": losses[n], "ms_per_step": ms_per_step[n], "test_acc": 0.9,
             "test_acc_at_target": None} for n in names]


def test_optimizers_conclusion_states_the_direction_its_table_shows():
    losses = dict(sgd=0.46, momentum=0.087, nesterov=0.087, adam=0.13, adamw=0.13, rmsprop=0.067, lbfgs=0.005,
                  newton=0.009, quickprop=0.0098)
    ms = dict(sgd=0.5, momentum=0.4, nesterov=0.4, adam=0.45, adamw=0.47, rmsprop=0.5, lbfgs=33.0, newton=79.0,
              quickprop=0.95)
    lines, checks = optimizers_conclusion(optimizer_rows(losses, {"momentum": 170, "quickprop": 35, "newton": 20}, ms),
                                          180)
    text = "\n".join(lines)
    assert "momentum 0.087 after 200 steps (5.29x lower than sgd)" in text and "adam 0.13 after 200 steps (3.54x lower" in text
    assert "newton 20 steps at 79 ms each (fewer steps, 83.2x the time per step)" in text
    assert checks["momentum_beats_sgd"] and checks["adam_beats_sgd"] and checks["second_order_fewer_but_dearer_steps"]
    # reversed: plain sgd lowest, newton slower in steps too
    losses.update(sgd=0.05, momentum=0.4, adam=0.2)
    lines, checks = optimizers_conclusion(optimizer_rows(losses, {"momentum": 20, "newton": 40}, ms), 180)
    text = "\n".join(lines)
    assert "momentum 0.4 after 200 steps (8x higher than sgd)" in text and "adam 0.2 after 200 steps (4x higher" in text
    assert "newton 40 steps at 79 ms each (no fewer steps" in text
    assert not checks["momentum_beats_sgd"] and not checks["second_order_fewer_but_dearer_steps"]


def batch_rows(epochs, seconds):
    steps = {"full batch": 1, "single sample (1)": 1294, "mini-batch 32": 41}
    return [{"batch": b, "steps_per_epoch": steps[b], "epochs_to_target": epochs[b], "seconds_to_target": seconds[b],
             "ms_per_epoch": 1.0, "final_train_loss": 0.2} for b in steps]


def test_batch_conclusion_ranks_what_its_table_shows():
    lines, checks = batch_conclusion(batch_rows({"full batch": 147, "single sample (1)": 1.5, "mini-batch 32": 3.7},
                                                {"full batch": 0.21, "single sample (1)": 0.53, "mini-batch 32": 0.05}))
    assert lines[2] == "least wall time to the target: mini-batch 32 (0.05 s), full batch (0.21 s), single sample (1) (0.53 s)."
    assert "per second, mini-batches of 32 were the fastest, as the claim expects." in lines[-1]
    assert "per epoch, the smaller batch made more progress" in lines[-1]
    lines, checks = batch_conclusion(batch_rows({"full batch": 2.0, "single sample (1)": 5.0, "mini-batch 32": None},
                                                {"full batch": 0.01, "single sample (1)": 0.53, "mini-batch 32": None}))
    assert lines[1] == "fewest epochs to the target: full batch (2 epochs), single sample (1) (5 epochs); not reached: mini-batch 32."
    assert "were not the fastest here" in lines[-1] and "did not always make more progress" in lines[-1]
    assert checks == {"mini_fewer_epochs_than_full": False, "mini_less_time_than_full": False,
                      "single_fewest_epochs": True, "mini_less_time_than_single": False}


def test_normalization_conclusion_flips_with_its_table():
    def rows(none, batch):
        return [{"norm": n, "largest_stable_lr": lr, "best_val_acc": 0.9, "best_lr": 0.01}
                for n, lr in (("none", none), ("batch", batch), ("layer", 0.1), ("group", None), ("weight", 0.1))]

    lines, checks = normalization_conclusion(rows(0.0316, 0.316))
    assert "batch norm trained stably at lr 0.316, 10x the largest rate without normalization (0.0316), as Ioffe" in lines[1]
    assert "group norm: no rate was stable, where without normalization 0.0316 was." in lines
    assert checks["batch_tolerates_larger_lr"]
    lines, checks = normalization_conclusion(rows(0.316, 0.0316))
    assert lines[1] == ("batch norm's largest stable rate, 0.0316, is 0.1x the largest without normalization (0.316): "
                        "lower, not the higher rate Ioffe & Szegedy 2015 report.")
    assert not checks["batch_tolerates_larger_lr"]


def test_depth_conclusion_flips_with_its_table():
    def rows(plain_first, plain_ratio, plain_acc, residual_acc):
        return [{"grad_first_init": plain_first, "ratio_init": plain_ratio, "steps_to_target": None,
                 "final_val_acc": plain_acc},
                {"grad_first_init": 0.008, "ratio_init": 0.0033, "steps_to_target": 600, "final_val_acc": residual_acc}]

    lines, checks = depth_conclusion(rows(7e-15, 2.3e-13, 0.097, 0.924), 20, "sigmoid", 0.9, 1000)
    assert "2.3e-13x the output layer's in the plain 20-layer sigmoid net" in lines[0]
    assert "it has vanished in the plain net" in lines[0] and lines[1].endswith("the residual net trained further.")
    assert all(checks.values())
    lines, checks = depth_conclusion(rows(0.01, 2.3, 0.95, 0.924), 20, "sigmoid", 0.9, 1000)
    assert "it does not vanish in the plain net here" in lines[0] and "0.8x the plain net's gradient" in lines[0]
    assert lines[1].endswith("the residual net did not train further than the plain one here.")
    assert not any(checks.values())


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
