"""Hostile and unlucky searches: ``babysit search`` never prints a traceback.

A damaged journal file (random bytes, JSON of another shape) is refused in one line under
300 characters, exit code 2, quickly and before anything is written to it; a last line cut
short by a killed search is dropped and the study continues. A trial whose training raises an exception that is not babysit's own is
marked failed with its reason in one line, and the search goes on with the next trial;
MemoryError and Ctrl-C still stop it.
"""

from __future__ import annotations

import csv
import random
import time

import optuna
import pytest
from optuna.trial import TrialState

import babysit.tune.search as search_module
from babysit.config import load
from babysit.train.loop import Callback
from babysit.tune.search import FAIL_REASON_CHARS, search
from babysit.tune.storage import journal_storage
from helpers import refused, run_cli

pytestmark = pytest.mark.usefixtures("one_thread")

SPEC = """\
name: spirals
data: {source: spirals, samples: 300}
model: {hidden: [16, 16]}
optimizer: {name: sgd, lr: 0.1}
train: {epochs: 2}
search:
  optimizer.lr: loguniform(0.01, 1)
"""


@pytest.fixture
def spec(tmp_path):
    path = tmp_path / "spirals.yaml"
    path.write_text(SPEC, encoding="utf-8")
    return path


def healthy_journal(path) -> bytes:
    """A journal as a search leaves it: the study, its space, a finished and a pruned trial."""
    study = optuna.create_study(study_name="spirals", storage=journal_storage(path), direction="minimize")
    study.set_user_attr("search", {"optimizer.lr": "loguniform(0.01, 1)"})
    for state in (TrialState.COMPLETE, TrialState.PRUNED):
        trial = study.ask()
        trial.suggest_float("optimizer.lr", 0.01, 1, log=True)
        trial.report(0.9, 1)
        study.tell(trial, 0.8 if state == TrialState.COMPLETE else None, state=state)
    return path.read_bytes()


def _damaged(kind: str, good: bytes) -> bytes:
    lines = good.splitlines(keepends=True)
    return {
        "random bytes": random.Random(0).randbytes(4096),
        "random bytes, then the journal": random.Random(0).randbytes(300) + b"\n" + good,
        "a line cut inside": lines[0] + lines[1][:40] + b"\n" + b"".join(lines[2:]),
        "a blank last line": good + b"\n",
        "a last line not JSON": good + b"}{\n",
        "a last line not UTF-8": good + b'{"op_code": "\xff\xfe"}\n',
        "a JSON list": b"[1, 2, 3]\n",
        "a JSON object without op_code": b'{"study": "spirals"}\n',
        "an unknown op_code": b'{"op_code": 99, "worker_id": "w"}\n',
        "a direction out of range": b'{"op_code": 0, "worker_id": "w", "study_name": "spirals", "directions": [7]}\n',
        "a trial state out of range": good.replace(b'"state":1', b'"state":9'),
        "JSON nested too deep": b"[" * 100_000 + b"]" * 100_000 + b"\n",
    }[kind]


@pytest.mark.parametrize("kind", [
    "random bytes", "random bytes, then the journal", "a line cut inside", "a blank last line", "a last line not JSON",
    "a last line not UTF-8", "a JSON list", "a JSON object without op_code", "an unknown op_code",
    "a direction out of range", "a trial state out of range", "JSON nested too deep",
])
def test_a_damaged_journal_is_refused_in_one_line(kind, spec, tmp_path, capsys):
    out = tmp_path / "search"
    journal = out / "journal.log"
    good = healthy_journal(tmp_path / "good.log")
    out.mkdir()
    damaged = _damaged(kind, good)
    assert damaged != good
    journal.write_bytes(damaged)
    before = journal.read_bytes()
    line = refused(["search", str(spec), "--trials", "3", "--out", str(out)], capsys)
    assert line == f"error: {journal}: not an Optuna journal (damaged?); move it away to start a new study"
    assert journal.read_bytes() == before  # nothing appended to the damage
    assert not (out / "trials").exists()


def test_a_journal_whose_last_line_was_cut_by_a_kill_is_repaired_and_the_study_continues(spec, tmp_path, capsys):
    # a search killed while writing leaves its last line without a newline; Optuna skips such a
    # line when it reads, then appends its next line to it and fails in the middle of a trial.
    # babysit drops the cut record (it never took effect) and the same command continues.
    out = tmp_path / "search"
    out.mkdir()
    good = healthy_journal(out / "journal.log")
    cut = good[:-30]
    (out / "journal.log").write_bytes(cut)
    code, _, err = run_cli(["search", str(spec), "train.epochs=1", "--trials", "3", "--out", str(out)], capsys)
    assert code == 0, err
    assert "Traceback" not in err
    assert (out / "journal.log").read_bytes().startswith(cut[:cut.rindex(b"\n") + 1])
    study = optuna.load_study(study_name="spirals", storage=journal_storage(out / "journal.log"))
    assert [t.state for t in study.get_trials()] == [TrialState.COMPLETE, TrialState.RUNNING, TrialState.COMPLETE]


def test_a_multi_objective_study_of_the_same_name_is_refused(spec, tmp_path, capsys):
    out = tmp_path / "search"
    optuna.create_study(study_name="spirals", storage=journal_storage(out / "journal.log"),
                        directions=["minimize", "minimize"])
    line = refused(["search", str(spec), "--out", str(out)], capsys)
    assert line == "error: --study spirals: this study has 2 objectives, babysit's have one; pass a new --study NAME"


def test_a_folder_or_a_file_in_the_way_is_refused(spec, tmp_path, capsys):
    (tmp_path / "search" / "journal.log").mkdir(parents=True)
    line = refused(["search", str(spec), "--out", str(tmp_path / "search")], capsys)
    assert line.startswith(f"error: {tmp_path / 'search' / 'journal.log'}: cannot read it")
    (tmp_path / "file").write_text("x")
    line = refused(["search", str(spec), "--out", str(tmp_path / "file" / "search")], capsys)
    assert line == f"error: --out {tmp_path / 'file' / 'search'}: {tmp_path / 'file'} is a file, not a folder; " \
                   f"choose another --out"


# --------------------------------------------------------------------------- a trial that breaks


class Breaks(Callback):
    """Raises what a library might, deep in training: a RuntimeError with a long, multi-line message."""

    def on_epoch_end(self, trainer, logs):
        raise RuntimeError("CUDA error: an illegal memory access was encountered" + " (details)" * 40
                           + "\nCompile with `TORCH_USE_CUDA_DSA` to enable device-side assertions.")


def breaking(numbers, exc=None):
    """``run`` as the objective calls it, except that trials ``numbers`` break: in training
    (the :class:`Breaks` callback), or raising ``exc`` at once."""
    real = search_module.run

    def run(spec, run_dir, **kwargs):
        if int(spec.run_name.rsplit("-", 1)[1]) in numbers:
            if exc is not None:
                raise exc
            kwargs["extra_callbacks"] = [*kwargs["extra_callbacks"], Breaks()]
        return real(spec, run_dir, **kwargs)

    return run


def test_a_trial_that_raises_a_foreign_exception_fails_with_its_reason_and_the_search_goes_on(
        spec, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(search_module, "run", breaking({1}))
    out = tmp_path / "search"
    started = time.perf_counter()
    code, stdout, err = run_cli(["search", str(spec), "--trials", "3", "--out", str(out)], capsys)
    assert code == 0, err
    assert "Traceback" not in stdout + err
    assert time.perf_counter() - started < 10
    reason = next(line for line in stdout.splitlines() if line.startswith("coarse trial 1: failed: "))
    reason = reason.removeprefix("coarse trial 1: failed: ")
    assert reason.startswith("RuntimeError: CUDA error: an illegal memory access was encountered (details)")
    assert len(reason) <= len("RuntimeError: ") + FAIL_REASON_CHARS and reason.endswith("...")
    with open(out / "trials.csv", newline="") as f:
        rows = {int(row["trial"]): row for row in csv.DictReader(f)}
    assert {n: row["state"] for n, row in rows.items()} == {0: "complete", 1: "fail", 2: "complete", 3: "complete"}
    assert rows[1]["pruned_reason"] == reason
    study = optuna.load_study(study_name="spirals", storage=journal_storage(out / "journal.log"))
    assert study.trials[1].user_attrs["fail_reason"] == reason
    assert "trials: 3 complete, 1 fail" in stdout


def test_three_foreign_failures_in_a_row_stop_the_search_in_one_line(spec, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(search_module, "run", breaking(set(range(10)), ValueError("Expected more than 1 value "
                                                                                  "per channel when training")))
    line = refused(["search", str(spec), "--trials", "5", "--out", str(tmp_path / "search")], capsys)
    assert line == ("error: search: 3 trials in a row failed; the last: ValueError: Expected more than 1 value "
                    "per channel when training")


@pytest.mark.parametrize("exc", [MemoryError(), KeyboardInterrupt()], ids=["MemoryError", "KeyboardInterrupt"])
def test_memory_errors_and_ctrl_c_are_not_a_trial_failure_they_stop_the_search(exc, spec, tmp_path, monkeypatch):
    monkeypatch.setattr(search_module, "run", breaking({0}, exc))
    with pytest.raises(type(exc)):
        search(load(spec), trials=3, out=tmp_path / "search", quiet=True)
