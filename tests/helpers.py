"""Helpers shared by the test modules (importable: pytest puts tests/ on sys.path)."""

from __future__ import annotations

import os
import sys

from babysit.cli import main

FAST = ["train.epochs=2", "data.source=spirals", "data.samples=300"]


def run_cli(args, capsys, cwd=None):
    """Run ``babysit ARGS`` in this process; returns (exit code, stdout, stderr)."""
    old_argv, old_cwd = sys.argv, os.getcwd()
    sys.argv = ["babysit", *args]
    if cwd is not None:
        os.chdir(cwd)
    code = 0
    try:
        main()
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    finally:
        sys.argv = old_argv
        os.chdir(old_cwd)
    captured = capsys.readouterr()
    return code, captured.out, captured.err
