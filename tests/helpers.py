"""Helpers shared by the test modules (importable: pytest puts tests/ on sys.path)."""

from __future__ import annotations

import os
import sys
import time

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


def refused(args, capsys, cwd=None, within_s: float = 5.0) -> str:
    """Run ``babysit ARGS`` and assert a refusal: exit 2, one stderr line under 300
    characters, no traceback, within ``within_s`` seconds; returns the line."""
    started = time.perf_counter()
    code, out, err = run_cli(args, capsys, cwd=cwd)
    elapsed = time.perf_counter() - started
    assert code == 2, (code, out[-500:], err[-500:])
    assert "Traceback" not in err + out
    lines = err.strip().splitlines()
    assert len(lines) == 1 and len(lines[0]) < 300, lines[:3]
    assert elapsed < within_s, elapsed
    return lines[0]
