"""One common test over every model family in ``FAMILIES``, in the spirit of scikit-learn's
``parametrize_with_checks``: what any family must do, checked the same way for each.

For every family: it builds and trains a short run; the run directory holds summary.json,
findings.json and a report that renders; a run killed with SIGKILL after a checkpoint and
resumed ends with exactly the weights of an uninterrupted run; and ``babysit check`` refuses
exactly what ``babysit train`` refuses (same exit code, same message).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from babysit import config
from babysit.families import FAMILIES, Family, family_of
from babysit.run import run
from babysit.train.checkpoint import load_checkpoint
from helpers import run_cli

pytestmark = pytest.mark.usefixtures("one_thread")

# a small spec of each family (a dict for config.validate), and overrides that family must refuse
SPECS: dict[str, dict] = {
    "standard": {"data": {"source": "spirals", "samples": 300, "batch_size": 32},
                 "model": {"kind": "mlp", "hidden": [16], "dropout": 0.1}},
    "autoencoder": {"data": {"source": "digits", "train_size": 300, "batch_size": 64},
                    "model": {"kind": "autoencoder", "hidden": [32], "bottleneck": 8}},
    "language": {"data": {"source": "text", "context": 16, "batch_size": 16, "val_fraction": 0.1, "test_fraction": 0.1},
                 "model": {"kind": "gpt", "layers": 1, "heads": 2, "embed": 16, "dropout": 0.1}},
    "gan": {"data": {"source": "digits", "train_size": 300, "batch_size": 64, "val_fraction": 0.0, "test_fraction": 0.0},
            "model": {"kind": "gan", "hidden": [32], "latent": 8}},
    "perceptron": {"data": {"source": "blobs", "classes": 2, "noise": 2.0, "samples": 200, "batch_size": 1},
                   "model": {"kind": "perceptron"}},
}
REFUSED: dict[str, list[str]] = {
    "standard": ["data.source=text", "train.snapshots=2", "model.hidden=[0]"],
    "autoencoder": ["data.source=text"],
    "language": ["data.source=spirals"],
    "gan": ["schedule.name=step", "loss=mse", "optimizer.name=newton", "regularization.l1=0.01"],
    "perceptron": ["optimizer.weight_decay=0.1"],
}
EPOCHS = 3


def spec_of(name: str, tmp_path: Path) -> Path:
    """The family's spec as a YAML file, for the CLI and subprocesses (saved every epoch)."""
    spec = config.validate({**SPECS[name], "name": f"family-{name}",
                            "train": {"epochs": EPOCHS, "device": "cpu", "checkpoint_every_s": 0.0}})
    path = tmp_path / f"{name}.yaml"
    config.save(spec, path)
    return path


def test_every_family_is_registered_and_satisfies_the_protocol():
    assert set(FAMILIES) == set(SPECS) == set(REFUSED)
    for name, family in FAMILIES.items():
        assert isinstance(family, Family), name
        assert family.name == name
        assert family_of(config.validate(SPECS[name])) is family


@pytest.mark.parametrize("name", sorted(SPECS))
def test_a_family_trains_and_writes_its_run_directory(name, tmp_path):
    spec = config.load(spec_of(name, tmp_path))
    result = run(spec, tmp_path / "run", quiet=True)
    summary = json.loads((result.path / "summary.json").read_text())
    findings = json.loads((result.path / "findings.json").read_text())
    assert summary["epochs"] >= 1 and summary["steps"] > 0 and isinstance(findings, list)
    assert summary == result.summary
    page = (result.path / "report.html").read_text()
    assert f"family-{name}" in page and "<img" in page


KILL_AND_RESUME = textwrap.dedent("""
    import os, signal, sys
    from babysit import config
    from babysit.run import run
    from babysit.train import Callback
    import torch
    torch.set_num_threads(1)

    class KillAfterEpoch(Callback):  # after the checkpointer: last.pt holds this epoch
        def on_epoch_end(self, trainer, logs):
            if trainer.state.epoch == int(sys.argv[3]):
                os.kill(os.getpid(), signal.SIGKILL)

    spec = config.load(sys.argv[1])
    if sys.argv[4] == "kill":
        run(spec, sys.argv[2], quiet=True, extra_callbacks=[KillAfterEpoch()])
    else:
        run(spec, sys.argv[2], quiet=True, resume=sys.argv[4] == "resume")
""")


# make verify (15-32 s each on 2 cores); make test keeps test_rundir's kill in the first epoch
@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(SPECS))
def test_sigkill_then_resume_gives_the_weights_of_an_uninterrupted_run(name, tmp_path):
    spec_file = spec_of(name, tmp_path)
    script = tmp_path / "kill.py"
    script.write_text(KILL_AND_RESUME)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}

    def python(out: str, mode: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, str(script), str(spec_file), str(tmp_path / out), "1", mode],
                              capture_output=True, text=True, env=env, timeout=300)

    killed = python("killed", "kill")
    assert killed.returncode == -9, killed.stderr
    assert (tmp_path / "killed" / "checkpoints" / "last.pt").exists()
    resumed = python("killed", "resume")
    assert resumed.returncode == 0, resumed.stderr
    whole = python("whole", "fresh")
    assert whole.returncode == 0, whole.stderr
    a = load_checkpoint(tmp_path / "killed" / "checkpoints" / "last.pt")
    b = load_checkpoint(tmp_path / "whole" / "checkpoints" / "last.pt")
    assert a["loop"]["step"] == b["loop"]["step"]
    assert a["model"].keys() == b["model"].keys()
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key


@pytest.mark.parametrize(("name", "override"), [(n, o) for n in sorted(REFUSED) for o in REFUSED[n]])
def test_check_refuses_exactly_what_train_refuses(name, override, tmp_path, capsys):
    spec_file = spec_of(name, tmp_path)
    code_check, _, err_check = run_cli(["check", str(spec_file), override], capsys)
    code_train, _, err_train = run_cli(["train", str(spec_file), override, "-q", "--out", str(tmp_path / "run")],
                                       capsys)
    assert code_check == code_train == 2, (err_check, err_train)
    assert err_check.strip() == err_train.strip() and "Traceback" not in err_check
    assert not (tmp_path / "run" / "config.yaml").exists()  # refused before anything was written


@pytest.mark.parametrize("name", sorted(SPECS))
def test_check_accepts_what_train_trains(name, tmp_path, capsys):
    code, out, err = run_cli(["check", str(spec_of(name, tmp_path))], capsys)
    assert code in (0, 1), err  # 1: a preflight error was found, which is not a refusal
    assert "Traceback" not in err
