"""Hostile and clumsy inputs: each ends in one line under 300 characters, exit 2, no
traceback, nothing written outside the run directory, and quickly where a hang is the risk."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from helpers import FAST, refused, run_cli

pytestmark = pytest.mark.usefixtures("one_thread")


def alias_bomb(levels: int = 9) -> str:
    """Nine anchors, each a list of nine references to the previous one: 9**9 leaves."""
    lines = ['a0: &a0 ["lol"]']
    for i in range(1, levels):
        lines.append(f"a{i}: &a{i} [{', '.join(f'*a{i - 1}' for _ in range(9))}]")
    return "\n".join(lines)


@pytest.mark.parametrize("where", ["name", "optimizer.lr", "model.hidden"])
def test_a_yaml_alias_bomb_is_refused_at_once(where, tmp_path, capsys):
    section, _, key = where.rpartition(".")
    bomb = alias_bomb()
    indent = "  " if section else ""
    spec = (f"{section}:\n" if section else "") + "\n".join(indent + line for line in bomb.splitlines())
    spec += f"\n{indent}{key}: *a8\n"
    (tmp_path / "bomb.yaml").write_text(spec)
    line = refused(["train", str(tmp_path / "bomb.yaml"), "--out", str(tmp_path / "run")], capsys)
    assert "aliases" in line
    assert not (tmp_path / "run").exists()


def test_report_on_a_run_whose_config_is_a_bomb_is_refused_at_once(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text(alias_bomb() + "\nname: *a8\n")
    assert "aliases" in refused(["report", str(run)], capsys)


def test_duplicate_keys_deep_nesting_and_huge_files_are_refused(tmp_path, capsys):
    (tmp_path / "dup.yaml").write_text("optimizer: {lr: 0.1}\noptimizer: {lr: 0.2}\n")
    assert "given twice" in refused(["check", str(tmp_path / "dup.yaml")], capsys)
    (tmp_path / "deep.yaml").write_text("name: " + "[" * 50_000 + "]" * 50_000 + "\n")
    assert "nested" in refused(["check", str(tmp_path / "deep.yaml")], capsys)
    (tmp_path / "huge.yaml").write_text("name: x\n" + "# padding\n" * 150_000)
    assert "larger than 1 MB" in refused(["check", str(tmp_path / "huge.yaml")], capsys)


def test_an_error_quotes_at_most_80_characters_of_the_value(capsys):
    line = refused(["check", "model.hidden=[" + ", ".join(["-5"] * 50_000) + "]"], capsys)
    assert "model.hidden" in line and "…" in line or len(line) < 300


@pytest.mark.parametrize("override", [
    "optimizer.lr=.inf", "optimizer.lr=1e400", "optimizer.weight_decay=.inf", "regularization.l1=.inf",
    "regularization.input_noise=1e400", "model.init_std=.inf", "model.bias_init=.nan",
])
def test_every_float_in_the_spec_must_be_finite(override, capsys):
    line = refused(["check", *FAST, override], capsys)
    assert line.startswith("error: " + override.split("=")[0]) and "finite" in line


def test_resume_may_only_grow_the_epochs(tmp_path, capsys):
    code, _, err = run_cli(["train", *FAST, "train.epochs=3", "-q", "--out", str(tmp_path / "run")], capsys)
    assert code == 0, err
    before = (tmp_path / "run" / "config.yaml").read_text()
    line = refused(["train", *FAST, "train.epochs=1", "--out", str(tmp_path / "run"), "--resume"], capsys)
    assert "may only grow" in line
    assert (tmp_path / "run" / "config.yaml").read_text() == before


def test_a_diverging_run_writes_strict_json(tmp_path, capsys):
    code, _, err = run_cli(["train", *FAST, "optimizer.lr=1e6", "-q", "--out", str(tmp_path / "run")], capsys)
    assert code == 0, err

    def no_constant(name):
        raise AssertionError(f"bare {name} in a JSON file")

    for name in ("summary.json", "findings.json"):
        json.loads((tmp_path / "run" / name).read_text(), parse_constant=no_constant)
    for name in ("metrics.jsonl", "monitors.jsonl"):
        for line in (tmp_path / "run" / name).read_text().splitlines():
            json.loads(line, parse_constant=no_constant)


@pytest.mark.slow  # 35 s on 2 cores: a 150-epoch run, interrupted and then finished (make verify)
def test_ctrl_c_says_how_to_continue_and_the_run_resumes(tmp_path):
    out = tmp_path / "run"
    train = [sys.executable, "-m", "babysit", "train", "data.source=spirals", "data.samples=3000", "train.epochs=150",
             "train.early_stopping.patience=null", "-q", "--out", str(out)]
    process = subprocess.Popen(train, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               env={**os.environ, "OMP_NUM_THREADS": "1"})
    deadline = time.monotonic() + 60
    while not (out / "metrics.jsonl").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.5)
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 130, err
    assert err.strip().splitlines() == ["interrupted; continue with babysit train ... --resume"]
    resumed = subprocess.run([sys.executable, "-m", "babysit", "train", "--out", str(out), "--resume", "-q"],
                             capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert json.loads((out / "summary.json").read_text())["epochs"] == 150


@pytest.mark.parametrize("args", [
    ["check", "seed=18446744073709551616"], ["check", "seed=-1"], ["check", "name=" + "x" * 300],
    ["check", "name=a\x00b"], ["sample", "runs/none", "--seed", "18446744073709551616"],
])
def test_seeds_and_names_out_of_range_are_refused(args, tmp_path, capsys):
    line = refused(args, capsys, cwd=tmp_path)
    assert ("seed" in line or "name" in line), line


def big_npz(path):
    """An .npz whose x header claims 8 TB (nothing that large is written)."""
    import io
    import zipfile

    import numpy as np

    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "<f8", "fortran_order": False, "shape": (10**7, 10**5)})
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("x.npy", header.getvalue())
        archive.writestr("y.npy", header.getvalue())
    return path


@pytest.mark.parametrize("source", ["npz", "csv", "text"])
def test_a_fifo_or_a_device_as_data_path_is_refused_at_once(source, tmp_path, capsys):
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    for path in (fifo, "/dev/zero"):
        line = refused(["check", f"data.source={source}", f"data.path={path}"], capsys)
        assert "not a regular file" in line


def test_an_npz_claiming_more_memory_than_the_machine_has_is_refused(tmp_path, capsys):
    line = refused(["check", "data.source=npz", f"data.path={big_npz(tmp_path / 'big.npz')}"], capsys)
    assert "claims 8000.0 GB" in line


def test_an_image_larger_than_the_cap_is_refused_before_decoding(tmp_path, capsys):
    from PIL import Image

    for label in ("a", "b"):
        (tmp_path / "images" / label).mkdir(parents=True)
        Image.new("L", (8, 8)).save(tmp_path / "images" / label / "small.png")
    Image.new("1", (5000, 5000)).save(tmp_path / "images" / "a" / "huge.png")  # a few KB on disk
    line = refused(["check", "data.source=folder", f"data.path={tmp_path / 'images'}"], capsys)
    assert "huge.png" in line and "larger than" in line


def test_damaged_run_files_do_not_break_resume_or_the_report(tmp_path, capsys):
    code, _, err = run_cli(["train", *FAST, "-q", "--out", str(tmp_path / "run")], capsys)
    assert code == 0, err
    run = tmp_path / "run"
    with (run / "metrics.jsonl").open("a") as f:
        f.write('[1, 2]\n{"step": "abc", "epoch": 9}\n"text"\n')
    with (run / "monitors.jsonl").open("a") as f:
        f.write('[1]\n{"step": 3}\n')
    (run / "summary.json").write_text("[" * 100_000 + "]" * 100_000)
    code, _, err = run_cli(["report", str(run)], capsys)
    assert code == 0 and "Traceback" not in err, err
    code, _, err = run_cli(["train", "--out", str(run), "--resume", "-q", "train.epochs=3"], capsys)
    assert code == 0 and "Traceback" not in err, err


@pytest.mark.parametrize(("override", "says"), [
    ("data.train_size=1", "at least 2 are needed"),
    ("model.norm=batch data.batch_size=1", "batch normalisation needs batches of 2"),
    ("model.hidden=[1000000000]", "at most 1,000,000"),
    ("data.samples=1000000000000", "data.samples: must be <= 10000000"),
])
def test_specs_that_would_crash_or_exhaust_memory_are_refused(override, says, capsys):
    line = refused(["check", "data.source=spirals", *override.split()], capsys)
    assert says in line


# --------------------------------------------------------------------------- usage errors


@pytest.mark.parametrize(("args", "verb"), [
    (["train", "--bogus"], "train"), (["lr-find", "--steps", "abc"], "lr-find"), (["nope"], ""),
    (["train", "--out"], "train"), (["sample"], "sample"), (["study", "activations", "--quick=3"], "study"),
])
def test_a_usage_error_is_one_line_that_points_at_the_help(args, verb, capsys):
    line = refused(args, capsys)
    assert line.startswith("error: ")
    assert line.endswith(f"see babysit {verb + ' ' if verb else ''}--help")


def test_warnings_wait_until_the_command_succeeds(monkeypatch, tmp_path, capsys):
    import warnings

    from babysit import config

    real_load = config.load

    def load_with_a_warning(*args, **kwargs):
        warnings.warn("overflow encountered in cast", RuntimeWarning, stacklevel=1)
        return real_load(*args, **kwargs)

    monkeypatch.setattr(config, "load", load_with_a_warning)
    # a failure: the error line alone
    assert refused(["check", *FAST, "optimizer.lr=-1"], capsys).startswith("error: optimizer.lr")
    # a success: the warning, once, after the output
    code, out, err = run_cli(["check", *FAST], capsys)
    assert code == 0, err
    assert err.strip().splitlines() == ["warning: RuntimeWarning: overflow encountered in cast"]


# --------------------------------------------------------------------------- folders that cannot be written


@pytest.fixture
def read_only(tmp_path, monkeypatch):
    """A folder nobody may write into, holding the user's file. Root writes anywhere, so for
    root the calls that create files and folders refuse inside it, as the kernel would."""
    import builtins
    import errno
    import io
    from pathlib import Path

    folder = tmp_path / "read-only"
    folder.mkdir()
    (folder / "mine.txt").write_text("the user's")
    folder.chmod(0o555)
    if os.geteuid() == 0:
        def inside(path):
            if isinstance(path, int):
                return False
            return Path(os.fsdecode(path)).absolute().is_relative_to(folder)

        def denied(path):
            return PermissionError(errno.EACCES, "Permission denied", os.fsdecode(path))

        real_os_open, real_mkdir, real_open = os.open, os.mkdir, io.open

        def os_open(path, flags, *args, **kwargs):
            if flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT) and inside(path):
                raise denied(path)
            return real_os_open(path, flags, *args, **kwargs)

        def mkdir(path, *args, **kwargs):
            if inside(path):
                raise denied(path)
            return real_mkdir(path, *args, **kwargs)

        def open_(file, mode="r", *args, **kwargs):
            if any(c in mode for c in "wax+") and isinstance(file, str | bytes | os.PathLike) and inside(file):
                raise denied(file)
            return real_open(file, mode, *args, **kwargs)

        monkeypatch.setattr(os, "open", os_open)
        monkeypatch.setattr(os, "mkdir", mkdir)
        monkeypatch.setattr(io, "open", open_)
        monkeypatch.setattr(builtins, "open", open_)
    yield folder
    monkeypatch.undo()
    folder.chmod(0o755)


@pytest.fixture(scope="module")
def small_run(tmp_path_factory):
    from babysit import config
    from babysit.run import run

    out = tmp_path_factory.mktemp("runs") / "run"
    run(config.load(None, FAST), out, quiet=True)
    return out


@pytest.mark.parametrize("verb", ["train", "report", "compare", "lr-find", "batch-find", "study"])
def test_out_in_a_folder_that_cannot_be_written_is_one_line(verb, read_only, small_run, capsys):
    target = read_only / "out"
    args = {
        "train": ["train", *FAST, "--out", str(target)],
        "report": ["report", str(small_run), "--out", str(target / "report.html")],
        "compare": ["compare", str(small_run), str(small_run), "--out", str(target / "compare.html")],
        "lr-find": ["lr-find", *FAST, "--steps", "20", "--out", str(target)],
        "batch-find": ["batch-find", *FAST, "--max", "64", "--out", str(target)],
        "study": ["study", "init", "--quick", "--quiet", "--out", str(target)],
    }[verb]
    line = refused(args, capsys, within_s=30)
    assert str(read_only) in line and ("permission denied" in line or "read-only" in line), line
    assert sorted(p.name for p in read_only.iterdir()) == ["mine.txt"]


# --------------------------------------------------------------------------- checkpoints and vocabularies


def _foreign_checkpoint(kind, run, tmp_path):
    import torch

    from babysit import config
    from babysit.run import run as train

    if kind == "another network":
        other = tmp_path / "other"
        train(config.load(None, [*FAST, "train.epochs=1", "model.hidden=[7]"]), other, quiet=True)
        return (other / "checkpoints" / "last.pt").read_bytes()
    last = run / "checkpoints" / "last.pt"
    state = torch.load(last, weights_only=True)
    torch.save({"loop": state["loop"]} if kind == "no model" else
               {**state, "optimizer": {"state": {}}} if kind == "no optimizer groups" else torch.ones(3), last)
    return last.read_bytes()


@pytest.mark.parametrize(("kind", "says"), [
    ("another network", "does not fit the network config.yaml builds ("),
    ("no model", "holds no model weights"),
    ("a bare tensor", "holds a Tensor, not a babysit checkpoint"),
    ("no optimizer groups", "not a checkpoint of this run"),
])
def test_resume_from_a_foreign_or_damaged_last_pt_is_one_line(kind, says, tmp_path, capsys):
    run = tmp_path / "run"
    code, _, err = run_cli(["train", *FAST, "-q", "--out", str(run)], capsys)
    assert code == 0, err
    planted = _foreign_checkpoint(kind, run, tmp_path)
    (run / "checkpoints" / "last.pt").write_bytes(planted)
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
    line = refused(["train", "--out", str(run), "--resume", "train.epochs=3"], capsys)
    assert f"{run / 'checkpoints' / 'last.pt'}: {says}" in line, line
    assert (run / "checkpoints" / "last.pt").read_bytes() == planted
    assert {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()} == before


def test_a_full_disk_keeps_the_last_good_checkpoint_and_the_run_resumes(tmp_path, capsys, monkeypatch):
    import errno

    import torch

    from babysit.train import checkpoint

    run, real_save, saves = tmp_path / "run", torch.save, []

    def save_until_the_disk_fills(state, handle):
        if "loop" in state:  # last.pt (best.pt holds weights only)
            saves.append(state["loop"]["step"])
        if len(saves) > 1:  # the step-0 checkpoint is written, the final one finds the disk full
            handle.write(b"\0" * 100)
            raise OSError(errno.ENOSPC, "No space left on device")
        real_save(state, handle)

    monkeypatch.setattr(checkpoint.torch, "save", save_until_the_disk_fills)
    line = refused(["train", *FAST, "train.epochs=4", "--out", str(run)], capsys, within_s=60)
    assert line == f"error: disk full: the last good checkpoint is kept ({run / 'checkpoints' / 'last.pt'})"
    monkeypatch.undo()
    kept = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    assert kept["loop"]["step"] == saves[0] == 0 < saves[-1]  # the step-0 checkpoint, whole
    assert not list((run / "checkpoints").glob("*.tmp"))
    code, _, err = run_cli(["train", "--out", str(run), "--resume", "-q"], capsys)
    assert code == 0, err
    assert json.loads((run / "summary.json").read_text())["epochs"] == 4


@pytest.fixture(scope="module")
def language_run(tmp_path_factory):
    from babysit import config
    from babysit.run import run

    folder = tmp_path_factory.mktemp("text")
    (folder / "t.txt").write_text("the cat sat on the mat. " * 60)
    out = folder / "run"
    run(config.load(None, ["data.source=text", f"data.path={folder / 't.txt'}", "model.kind=gpt", "data.context=8",
                           "model.layers=1", "model.embed=16", "model.heads=2", "train.epochs=1",
                           "checks.preflight=false"]), out, quiet=True)
    return out


@pytest.mark.parametrize(("vocab", "says"), [
    ("{not json", "vocab.json: damaged"), ('{"a": 1}', "vocab.json: damaged"), ('["ab", "c"]', "vocab.json: damaged"),
    ('["a", "b", "c"]', "vocab.json (3 characters) does not fit"),
])
def test_sample_with_a_damaged_or_foreign_vocabulary_is_one_line(vocab, says, language_run, tmp_path, capsys):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(language_run, run)
    (run / "vocab.json").write_text(vocab)
    assert says in refused(["sample", str(run), "--tokens", "5"], capsys)
    code, out, err = run_cli(["sample", str(language_run), "--prompt", "the ", "--tokens", "5"], capsys)
    assert code == 0 and out.startswith("the "), err
