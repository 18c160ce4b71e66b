"""The README's commands, run in order as written, on a tiny setting: every ``babysit``
command of its ```bash blocks, in one working folder, each after the ones above it.

Tiny: one epoch on 300 training examples, 2 search trials, a 5x5 surface, the studies'
--quick versions. What cannot run here is skipped, each for a stated reason: ``make``
(the test runs under it), torchrun (needs several processes and GPUs), a PostgreSQL server,
commands on the placeholder ``spec.yaml``, and shell jobs (``&``, ``wait``).
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import run_cli

ROOT = Path(__file__).resolve().parents[1]
TINY = {
    "train": ["train.epochs=1", "data.train_size=300", "schedule.warmup_steps=0"],
    "check": ["data.train_size=300"],
    "lr-find": ["data.train_size=300"],
    "batch-find": ["data.train_size=300"],
    "search": ["train.epochs=1", "data.train_size=300"],
}
REPLACE = {"--trials": "2", "--resolution": "5", "--tokens": "20", "--steps": "20"}
SKIP = ("make ", "torchrun", "createdb", "wait", "python -m babysit")


def readme_commands() -> list[list[str]]:
    """The babysit commands of the README's bash blocks, in order, as argument lists (the
    ``for seed in ...`` loop expanded)."""
    text = (ROOT / "README.md").read_text()
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", text, re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.strip()
            if not line or line.startswith("#") or line.startswith(SKIP) or "spec.yaml" in line or "&" in line:
                continue
            loop = re.fullmatch(r"for (\w+) in ([\w ]+); do (.*); done", line)
            if loop:
                name, values, body = loop.groups()
                commands += [shlex.split(body.replace(f"${name}", v), comments=True) for v in values.split()]
            else:
                commands.append(shlex.split(line, comments=True))
    return [c for c in commands if c and (c[0] == "babysit" or c[0] == "python" and c[1:2] and c[1].endswith(".py"))]


def readme_script(name: str) -> str:
    """The README's ```python block that names itself ``# <name>`` on its first line."""
    text = (ROOT / "README.md").read_text()
    for block in re.findall(r"```python\n(.*?)```", text, re.S):
        if block.startswith(f"# {name}"):
            return block
    raise AssertionError(f"README: no python block starting with '# {name}'")


def tiny(args: list[str]) -> list[str]:
    verb = args[0]
    args = [a for a in args if a != "--help"] if verb != "train" or "--help" not in args else args
    out = []
    for i, arg in enumerate(args):
        if arg.startswith("train.trajectory_every="):  # a snapshot every step: enough in one tiny epoch
            arg = "train.trajectory_every=1"
        out.append(REPLACE[args[i - 1]] if i and args[i - 1] in REPLACE else arg)
    if verb == "study" and "--quick" not in out:
        out.append("--quick")
    if verb == "landscape":
        out += ["--samples", "128"]
    if "--help" in out:
        return out
    return out + TINY.get(verb, [])


def test_the_readme_has_commands_to_run():
    commands = readme_commands()
    verbs = {c[1] for c in commands if len(c) > 1}
    assert {"train", "check", "report", "compare", "lr-find", "batch-find", "landscape", "search", "ensemble",
            "sample", "study"} <= verbs, verbs


@pytest.mark.slow
def test_the_readmes_commands_run_in_order(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    os.symlink(ROOT / "examples", tmp_path / "examples")
    for command in readme_commands():
        if command[0] == "python":  # a script the README shows in full: copied into a file and run as written
            (tmp_path / command[1]).write_text(readme_script(command[1]))
            done = subprocess.run([sys.executable, command[1]], cwd=tmp_path, capture_output=True, text=True,
                                  timeout=600)
            assert done.returncode == 0, f"python {command[1]}: exit {done.returncode}\n{done.stderr[-1500:]}"
            continue
        args = tiny(command[1:])
        code, out, err = run_cli(args, capsys, cwd=tmp_path)
        assert code == 0, f"babysit {' '.join(args)}: exit {code}\n{out[-1500:]}\n{err[-1500:]}"
