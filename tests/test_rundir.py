"""The run directory loses nothing: a run goes only into a new, empty or its own folder; one
process at a time writes it; a run killed at any moment (even before its first epoch ends)
resumes; temporary files of cut writes are cleaned up; one JSON policy for every file."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from babysit import rundir
from babysit.errors import BabysitError
from babysit.train.checkpoint import load_checkpoint
from helpers import FAST, run_cli

pytestmark = pytest.mark.usefixtures("one_thread")


def snapshot(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_a_foreign_folder_is_left_untouched_byte_for_byte(tmp_path, capsys):
    folder = tmp_path / "mine"
    (folder / "checkpoints").mkdir(parents=True)
    for name, text in {"checkpoints/last.pt": "my weights", "checkpoints/best.pt": "my best",
                       "summary.json": '{"mine": 1}', "monitors.jsonl": '{"step": 1}\n'}.items():
        (folder / name).write_text(text)
    before = snapshot(folder)
    code, _, err = run_cli(["train", *FAST, "--out", str(folder)], capsys)
    assert code == 2 and "not a babysit run" in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1
    assert snapshot(folder) == before


@pytest.mark.parametrize("out", ["", "  "])
def test_an_empty_out_is_refused(out, tmp_path, capsys):
    code, _, err = run_cli(["train", *FAST, "--out", out], capsys, cwd=tmp_path)
    assert code == 2 and "--out: empty" in err
    assert list(tmp_path.iterdir()) == []


def test_out_that_is_a_file_or_lies_under_one_is_refused(tmp_path, capsys):
    file = tmp_path / "file"
    file.write_text("x")
    for out in (file, file / "run"):
        code, _, err = run_cli(["train", *FAST, "--out", str(out)], capsys)
        assert code == 2 and "is a file" in err and "Traceback" not in err
    assert file.read_text() == "x"


def test_a_run_goes_into_an_empty_folder(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    code, _, err = run_cli(["train", *FAST, "-q", "--out", str(tmp_path / "empty")], capsys)
    assert code == 0, err
    assert (tmp_path / "empty" / "summary.json").exists()


def test_the_lock_refuses_a_second_writer_and_names_the_holder(tmp_path):
    with rundir.run_lock(tmp_path):
        with pytest.raises(BabysitError, match=rf"another babysit process \(pid {os.getpid()}\) is writing this run"):
            with rundir.run_lock(tmp_path):
                pass
    with rundir.run_lock(tmp_path):  # released: taken again
        pass


HOLD = textwrap.dedent("""
    import sys, time
    from babysit.rundir import run_lock
    with run_lock(sys.argv[1]):
        print("held", flush=True)
        time.sleep(float(sys.argv[2]))
""")


def test_a_lock_whose_holder_died_is_taken_over(tmp_path):
    script = tmp_path / "hold.py"
    script.write_text(HOLD)
    holder = subprocess.Popen([sys.executable, str(script), str(tmp_path / "run"), "60"], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(BabysitError, match=rf"pid {holder.pid}"):
            with rundir.run_lock(tmp_path / "run"):
                pass
    finally:
        holder.kill()
        holder.wait()
    with rundir.run_lock(tmp_path / "run"):  # the dead holder's lock went with it
        pass


@pytest.mark.slow  # a subprocess of its own: 8-16 s
def test_two_runs_on_one_out_one_is_refused_the_other_intact(tmp_path, capsys):
    out = tmp_path / "run"
    first = subprocess.Popen([sys.executable, "-m", "babysit", "train", "data.source=spirals", "data.samples=3000",
                              "train.epochs=40", "train.early_stopping.patience=null", "-q", "--out", str(out)],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        deadline = time.monotonic() + 60
        while not (out / "checkpoints" / "last.pt").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert first.poll() is None, "the first run ended before the second could start"
        code, _, err = run_cli(["train", "--out", str(out), "--resume", "-q"], capsys)  # same spec, from config.yaml
        assert code == 2 and f"another babysit process (pid {first.pid})" in err
        code, _, err = run_cli(["train", *FAST, "--out", str(out)], capsys)  # a new run on it
        assert code == 2 and "a run is already there" in err
    finally:
        stdout, stderr = first.communicate(timeout=300)
    assert first.returncode == 0, stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["epochs"] == 40
    epochs = [r["epoch"] for r in rundir.read_jsonl(out / "metrics.jsonl") if "epoch" in r]
    assert epochs == list(range(1, 41))  # one writer: no interleaved records


KILL = textwrap.dedent("""
    import os, signal, sys
    import torch
    from babysit import config
    from babysit.run import run
    from babysit.train import Callback
    torch.set_num_threads(1)

    class KillAtStep(Callback):
        def on_batch_end(self, trainer, loss):
            if trainer.state.step == int(sys.argv[3]):
                os.kill(os.getpid(), signal.SIGKILL)

    spec = config.load(None, ["data.source=spirals", "data.samples=300", "train.epochs=3", "model.dropout=0.2"])
    run(spec, sys.argv[1], quiet=True, report=False, extra_callbacks=[KillAtStep()] if sys.argv[2] == "kill" else [])
""")


@pytest.mark.slow  # a subprocess of its own: 8-16 s
def test_a_kill_in_the_first_epoch_resumes_from_the_step_0_checkpoint(tmp_path, capsys):
    script = tmp_path / "kill.py"
    script.write_text(KILL)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    killed = subprocess.run([sys.executable, str(script), str(tmp_path / "killed"), "kill", "2"], env=env,
                            capture_output=True, text=True, timeout=300)
    assert killed.returncode == -9, killed.stderr
    assert load_checkpoint(tmp_path / "killed" / "checkpoints" / "last.pt")["loop"]["step"] == 0
    code, _, err = run_cli(["train", "--out", str(tmp_path / "killed"), "--resume", "-q"], capsys)
    assert code == 0, err
    whole = subprocess.run([sys.executable, str(script), str(tmp_path / "whole"), "whole", "0"], env=env,
                           capture_output=True, text=True, timeout=300)
    assert whole.returncode == 0, whole.stderr
    a = load_checkpoint(tmp_path / "killed" / "checkpoints" / "last.pt")["model"]
    b = load_checkpoint(tmp_path / "whole" / "checkpoints" / "last.pt")["model"]
    assert all(torch.equal(a[k], b[k]) for k in b)


def test_resume_of_a_run_killed_before_any_checkpoint_starts_it_again(tmp_path, capsys):
    code, _, err = run_cli(["train", *FAST, "-q", "--out", str(tmp_path / "run")], capsys)
    assert code == 0, err
    # what a kill during the preflight leaves: config.yaml, part of the files, no checkpoint
    for name in ("checkpoints/last.pt", "checkpoints/best.pt", "summary.json"):
        (tmp_path / "run" / name).unlink(missing_ok=True)
    (tmp_path / "run" / "metrics.jsonl").write_text('{"step": 5, "epoch": 1}\n{"ste')
    orphan = tmp_path / "run" / "checkpoints" / ".last.pt.k2j3h4.tmp"
    orphan.write_bytes(b"\0" * 100)
    code, out, err = run_cli(["train", "--out", str(tmp_path / "run"), "--resume"], capsys)
    assert code == 0, err
    assert "starting it again from the beginning" in out
    assert not orphan.exists()
    epochs = [r["epoch"] for r in rundir.read_jsonl(tmp_path / "run" / "metrics.jsonl") if "epoch" in r]
    assert epochs == [1, 2]  # the stale record was cleared, not kept before the new ones
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["epochs"] == 2


def test_one_json_policy_nan_and_inf_are_null_plus_a_flag(tmp_path):
    rundir.write_json(tmp_path / "a.json", {"x": float("nan"), "y": [float("inf"), torch.tensor(2.5)]})
    text = (tmp_path / "a.json").read_text()
    assert "NaN" not in text and "Infinity" not in text
    assert json.loads(text) == {"x": None, "y": [None, 2.5], "nonfinite": {"x": "nan", "y.0": "inf"}}
    assert rundir.json_line({"loss": float("-inf")}) == '{"loss": null, "nonfinite": {"loss": "-inf"}}'
    assert rundir.json_line({"loss": None}) == '{"loss": null}'  # null alone: not measured
