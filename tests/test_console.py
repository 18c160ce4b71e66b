"""What the commands print: plain lines off a terminal (a pipe, a log file) and a live bar on
one, tables that never cut a cell, --help without placeholders after flags, no ambiguous
short options, compare's default page under runs/, and Ctrl-C in one line with exit code 130."""

from __future__ import annotations

import io
import os
import re
import signal
import subprocess
import sys
import time

import pytest
import torch
from torch import nn

from babysit import config
from babysit.cli import _print_table, app
from babysit.data.batching import Batches
from babysit.run import run
from babysit.studies.common import StudyResult, rich_table
from babysit.train.callbacks import ProgressReporter
from babysit.train.loop import Trainer
from helpers import FAST, run_cli

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = ["data.source=spirals", "data.samples=300", "model.hidden=[8]", "data.batch_size=64", "train.epochs=2",
        "checks.preflight=false", "checks.monitors=false"]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, one_thread):
    return run(config.load(None, TINY), out=tmp_path_factory.mktemp("console") / "run", quiet=True, report=False).path


# --------------------------------------------------------------------------- progress off and on a terminal


def test_piped_train_prints_one_line_per_epoch_and_no_batch_losses(tmp_path, capsys):
    code, out, err = run_cli(["train", *FAST, "train.epochs=3", "checks.preflight=false", "--out", str(tmp_path / "run")],
                             capsys)
    assert code == 0, err
    epochs = [line for line in out.splitlines() if line.startswith("epoch ")]
    assert [line.split()[1] for line in epochs] == ["1/3", "2/3", "3/3"], out
    for line in epochs:  # epoch, training and validation figures, time
        assert re.search(r"train_loss \d\.\d{4} .*val_loss \d\.\d{4}  val_acc [\d.]+% .*s \(total [\d.]+ s\)$", line), line
    progress = out.split("run directory:")[0]  # the results table below has rules of its own
    assert "batch_loss" not in progress and "━" not in progress and "\r" not in progress


def test_on_a_terminal_train_draws_the_live_bar():
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    x, y = torch.randn(64, 2), torch.randint(0, 2, (64,))
    model = nn.Linear(2, 2)
    screen, log = Terminal(), io.StringIO()
    bar, lines = ProgressReporter(2, 4, stream=screen), ProgressReporter(2, 4, stream=log)
    assert not bar.plain and lines.plain
    trainer = Trainer(model, nn.functional.cross_entropy, torch.optim.SGD(model.parameters(), lr=0.1),
                      callbacks=[bar, lines])
    trainer.fit(Batches(x, y, 16, torch.Generator().manual_seed(0)), 2)
    assert "━" in screen.getvalue() and "epoch 2/2" in screen.getvalue()
    assert log.getvalue().count("\n") == 2 and "━" not in log.getvalue()


def test_piped_landscape_prints_a_line_per_phase(tiny_run, capsys):
    args = ["landscape", str(tiny_run), "--what", "surface,interpolate", "--resolution", "5", "--samples", "50"]
    code, out, err = run_cli(args, capsys)
    assert code == 0, err
    progress = [line for line in out.splitlines() if line.startswith("landscape")]
    assert progress[0].startswith("landscape: surface, interpolate of ") and progress[0].endswith(", 4 phases")
    phases = ["sharpest direction", "surface", "1D curves", "interpolation"]
    for n, (line, phase) in enumerate(zip(progress[1:], phases, strict=True), start=1):
        assert re.fullmatch(rf"landscape {n}/4 {phase}: done in [\d.]+ s(, \d+ H·v)?", line), line
    assert re.search(r"landscape 1/4 sharpest direction: done in [\d.]+ s, \d+ H·v", out)  # Lanczos' products
    code, out, err = run_cli(["landscape", str(tiny_run), "--what", "interpolate", "--resolution", "5", "-q"], capsys)
    assert code == 0 and not any(line.startswith("landscape") for line in out.splitlines())


# --------------------------------------------------------------------------- tables


def optimizer_like_table() -> StudyResult:
    """A table as wide as the optimizers study's: 12 columns, names up to 9 characters."""
    names = ("sgd", "momentum", "nesterov", "adam", "adamw", "rmsprop", "lbfgs", "newton", "quickprop")
    columns = [("optimizer", "optimizer"), ("lr", "lr"), ("steps_to_target", "steps to loss 0.1"),
               ("seconds_to_target", "seconds to loss 0.1"), ("steps", "steps run"),
               ("final_train_loss", "final train loss"), ("train_seconds", "seconds"), ("ms_per_step", "ms / step"),
               ("val_acc", "val acc"), ("test_acc", "test acc"), ("test_acc_at_target", "test acc at loss 0.1"),
               ("diverged", "diverged")]
    rows = [{"optimizer": n, "lr": 0.01, "steps_to_target": 170, "seconds_to_target": 0.0714, "steps": 200,
             "final_train_loss": 0.00509, "train_seconds": 0.0836, "ms_per_step": 0.418, "val_acc": 1.0,
             "test_acc": 0.989, "test_acc_at_target": 0.989, "diverged": False} for n in names]
    return StudyResult(name="optimizers", title="Optimizers", claim="", setup="", columns=columns, rows=rows,
                       conclusion=[])


def test_a_study_table_never_cuts_a_cell_at_80_columns(monkeypatch, capsys):
    monkeypatch.setenv("COLUMNS", "80")
    result = optimizer_like_table()
    _print_table(rich_table(result))
    out = capsys.readouterr().out
    assert "…" not in out
    for row in result.rows:  # every name whole on its row, with every cell
        line = next(line for line in out.splitlines() if line.startswith(row["optimizer"] + " "))
        assert line.split() == [row["optimizer"], "0.01", "170", "0.0714", "200", "0.00509", "0.0836", "0.418",
                                "100.0%", "98.9%", "98.9%", "no"]


def test_babysit_study_prints_its_table_whole_at_80_columns(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("COLUMNS", "80")
    code, out, err = run_cli(["study", "init", "--quick", "-q", "--out", str(tmp_path / "s")], capsys)
    assert code == 0, err
    assert "…" not in out and "small normal (std 0.01)" in out and "10-layer tanh" in out


# --------------------------------------------------------------------------- options


VERBS = [c.name or c.callback.__name__ for c in app.registered_commands]


@pytest.mark.parametrize("verb", VERBS)
def test_help_shows_no_placeholder_after_a_flag(verb, capsys):
    code, out, _ = run_cli([verb, "--help"], capsys)
    assert code == 0 and "--help" in out
    assert "<bool>" not in out


def test_the_root_help_shows_no_placeholder(capsys):
    code, out, _ = run_cli(["--help"], capsys)
    assert code == 0 and "<bool>" not in out


@pytest.mark.parametrize(("verb", "long"), [("search", "--trials"), ("landscape", "--samples"), ("sample", "--tokens")])
def test_n_is_no_short_option_of_any_verb(verb, long, capsys):
    code, out, err = run_cli([verb, "x", "-n", "3"], capsys)
    assert code == 2 and "No such option: -n" in err
    code, out, _ = run_cli([verb, "--help"], capsys)
    assert long in out and not re.search(r"\s-n\s", out)


def test_compare_writes_under_runs_and_never_overwrites(tiny_run, tmp_path, capsys):
    for expected in ("runs/compare.html", "runs/compare-2.html"):
        code, out, err = run_cli(["compare", str(tiny_run), str(tiny_run)], capsys, cwd=tmp_path)
        assert code == 0, err
        assert out.strip() == f"wrote {expected}" and (tmp_path / expected).is_file()
    assert not (tmp_path / "compare.html").exists()


# --------------------------------------------------------------------------- Ctrl-C


def test_an_error_raised_while_ctrl_c_unwinds_is_still_ctrl_c(tmp_path, monkeypatch, capsys):
    """A library's cleanup that fails mid-interrupt must not turn Ctrl-C into a traceback."""
    import babysit.tune.search as search_module
    from babysit.cli import Interrupted

    def interrupted_in_a_cleanup(*args, **kwargs):
        try:
            raise Interrupted
        except BaseException:
            raise FileNotFoundError(2, "No such file or directory", "journal.log.lock1234.rename") from None

    monkeypatch.setattr(search_module, "search", interrupted_in_a_cleanup)
    spec = tmp_path / "search.yaml"
    spec.write_text(SLOW_SEARCH, encoding="utf-8")
    code, out, err = run_cli(["search", str(spec), "--out", str(tmp_path / "out")], capsys)
    assert code == 130 and err.strip().splitlines() == ["interrupted; the same babysit search command continues the study"]


SLOW_SEARCH = """\
name: interrupted
data: {source: spirals, samples: 3000}
model: {hidden: [64, 64]}
train: {epochs: 200, early_stopping: {patience: null}}
search:
  optimizer.lr: loguniform(0.01, 0.1)
"""


@pytest.mark.slow  # a subprocess of its own: 8-16 s
def test_ctrl_c_during_a_search_prints_one_line_and_exits_130(tmp_path):
    """train's Ctrl-C is tested in test_hostile; a search runs trials inside Optuna, which must not
    swallow it as a failed trial."""
    spec, out = tmp_path / "search.yaml", tmp_path / "search"
    spec.write_text(SLOW_SEARCH, encoding="utf-8")
    process = subprocess.Popen([sys.executable, "-m", "babysit", "search", str(spec), "--trials", "5", "--out", str(out)],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               env={**os.environ, "OMP_NUM_THREADS": "1"})
    deadline = time.monotonic() + 60
    while not (out / "trials" / "0" / "metrics.jsonl").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.3)
    process.send_signal(signal.SIGINT)
    stdout, err = process.communicate(timeout=60)
    assert process.returncode == 130, (stdout, err)
    assert err.strip().splitlines() == ["interrupted; the same babysit search command continues the study"]
    assert "5 trials of up to 200 epochs each" in stdout
