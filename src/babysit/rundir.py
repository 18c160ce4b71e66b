"""The run directory: its names, its writes and its reads, in one place.

Every file babysit leaves (a run's ``runs/<name>/``, a search, a study, an ensemble, a
landscape) goes through this module:

- **names**: :func:`next_free` gives ``base``, else ``base-2``, ``base-3``... (a new run never
  overwrites an old one);
- **atomic writes**: :func:`atomic_write` writes a temporary file in the same folder, flushes
  it to disk and renames it over the target (``os.replace`` is atomic on POSIX), so a reader,
  or a run killed at any moment, sees the old file or the whole new one, never half;
- **one JSON policy**: :func:`jsonable` turns tensors and numpy numbers into Python numbers
  and every NaN or infinity into ``null`` (strict JSON has neither); :func:`flagged` adds to
  such a record a ``nonfinite`` entry naming each of those keys and what it held, and
  :func:`write_json` / :func:`json_line` always apply it;
- **tolerant reads**: :func:`read_jsonl` skips a line cut short by a kill, :func:`read_json`
  gives a default for a missing or damaged file;
- **one reader**: :func:`read_run` returns a :class:`RunFiles`, what the report, compare,
  landscape, ensemble and sample read of a run (the spec, curves, monitor records, summary,
  findings, landscape and checkpoints).

It imports nothing of babysit but its errors and the spec, so every layer may use it.

Example
-------
>>> import tempfile, pathlib
>>> folder = pathlib.Path(tempfile.mkdtemp())
>>> write_json(folder / "summary.json", {"loss": float("nan"), "steps": 3})
>>> read_json(folder / "summary.json")
{'loss': None, 'steps': 3, 'nonfinite': {'loss': 'nan'}}
>>> next_free(folder / "run").name
'run'
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import yaml

from babysit import config
from babysit.errors import BabysitError

# --------------------------------------------------------------------------- names


def next_free(base: str | Path, taken: Callable[[Path], bool] | None = None) -> Path:
    """``base`` when it is free, else ``base-2``, ``base-3``...: the first name not ``taken``
    (by default: that exists).

    Example
    -------
    >>> import tempfile, pathlib
    >>> root = pathlib.Path(tempfile.mkdtemp())
    >>> (root / "mlp").mkdir()
    >>> next_free(root / "mlp").name
    'mlp-2'
    """
    base = Path(base)
    taken = taken or Path.exists
    path, n = base, 1
    while taken(path):
        n += 1
        path = base.with_name(f"{base.name}-{n}")
    return path


def is_run(path: Path) -> bool:
    """A run directory is one that holds a config.yaml."""
    return (path / "config.yaml").exists()


RUNS = Path("runs")  # where runs go by default, under the working directory
LOCK = ".babysit.lock"  # held by the process writing a run (see run_lock)
# what a run writes besides config.yaml and its checkpoints: cleared when a run that never
# reached its first checkpoint starts again in its own directory
RUN_FILES = ("metrics.jsonl", "monitors.jsonl", "findings.json", "summary.json", "report.html",
             "checkpoints/best.pt",
             # the opt-in checks' samples (babysit.families.dynamics)
             "noise_scale.jsonl", "sharpness.jsonl", "transformer.jsonl",
             # the data and the model's answers (babysit.checks.data_checks, babysit.checks.answers)
             "leakage.json", "leakage.npz", "calibration.json",
             "label_issues.json", "label_issues.npz")  # checks.label_noise (babysit.checks.label_noise)


def has_checkpoint(path: Path) -> bool:
    return (path / "checkpoints" / "last.pt").is_file()


def check_new_run_folder(path: Path) -> None:
    """A new run goes only into a folder that is missing or empty (its own lock aside): never
    over a user's files. Anything else is a BabysitError, with nothing written."""
    if path.exists() and not path.is_dir():
        raise BabysitError(f"{path}: is a file, not a folder; --out names the run directory")
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise BabysitError(f"{path}: {parent} is a file, so no folder can be made under it")
            break
    if is_run(path):
        raise BabysitError(f"{path}: a run is already there; pass --resume to continue it or choose another --out")
    if path.is_dir() and any(p.name != LOCK for p in path.iterdir()):
        raise BabysitError(f"{path}: holds files that are not a babysit run; a run goes only into a new or "
                           "empty folder, so choose another --out")


def run_directory(name: str, out: str | Path | None, resume: bool) -> tuple[Path, bool]:
    """The directory a run named ``name`` writes, and whether it continues from a checkpoint.

    ``out`` is the run directory itself: a new run needs it missing or empty
    (:func:`check_new_run_folder`). By default ``runs/<name>``, with ``-2``, ``-3``... appended
    when that holds a run (a new run never overwrites an old one). With ``resume`` and no
    ``out``, the newest ``runs/<name>*`` run is continued. A run to resume that stopped before
    its first checkpoint is started again from the beginning (the second value is False)."""
    if out is not None:
        if not str(out).strip():
            raise BabysitError("--out: empty; name the run directory (an unset shell variable?)")
        path = Path(out)
        if not resume:
            check_new_run_folder(path)
            return path, False
        if not is_run(path):
            raise BabysitError(f"{path}: not a babysit run (no config.yaml); nothing to resume")
        return path, has_checkpoint(path)
    if resume:
        candidates = [p for p in RUNS.glob(f"{name}*") if is_run(p)
                      and (p.name == name or p.name.removeprefix(name + "-").isdigit())]
        if not candidates:
            raise BabysitError(f"runs/{name}: no run to resume; train it first or pass --out RUN_DIR")
        newest = max(candidates, key=lambda p: (p / ("checkpoints/last.pt" if has_checkpoint(p) else "config.yaml")).stat().st_mtime)
        return newest, has_checkpoint(newest)
    return next_free(RUNS / name, taken=lambda p: is_run(p) or (p.exists() and any(p.iterdir()))), False


def clear_run(path: Path) -> None:
    """Remove what a run wrote before its first checkpoint (it starts again from the beginning)."""
    for name in RUN_FILES:
        (path / name).unlink(missing_ok=True)
    shutil.rmtree(path / "tb", ignore_errors=True)


def remove_orphans(path: Path) -> list[Path]:
    """Delete the temporary files (``.<name>.<random>.tmp``) that a process killed in the middle
    of an atomic write left in the run directory; returns them."""
    found = [p for p in path.rglob(".*.tmp") if p.is_file()] if path.is_dir() else []
    for orphan in found:
        orphan.unlink(missing_ok=True)
    return found


def _lock_holder(lock: Path) -> str:
    try:
        text = lock.read_text(encoding="utf-8").strip()
    except OSError:
        return "unknown"
    return text if text.isdigit() else "unknown"


@contextlib.contextmanager
def run_lock(path: str | Path) -> Iterator[None]:
    """Hold an exclusive lock on the run directory ``path`` (``.babysit.lock``, with this
    process's pid) while the block runs: a second process writing the same run gets one line
    naming the holder. The lock is an OS file lock, so a killed holder releases it and the
    next process takes it over. Where the OS has no ``fcntl`` (Windows) no lock is taken.

    Example
    -------
    >>> import tempfile
    >>> folder = tempfile.mkdtemp()
    >>> with run_lock(folder):
    ...     with run_lock(folder):
    ...         pass
    Traceback (most recent call last):
    ...
    babysit.errors.BabysitError: ...: another babysit process (pid ...) is writing this run; wait for it to finish or choose another --out
    """
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:  # pragma: no cover (Windows)
        yield
        return
    lock = path / LOCK
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise BabysitError(f"{path}: another babysit process (pid {_lock_holder(lock)}) is writing this run; "
                               "wait for it to finish or choose another --out") from None
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        try:
            yield
        finally:
            os.ftruncate(fd, 0)
    finally:
        os.close(fd)  # closing releases the lock


# --------------------------------------------------------------------------- atomic writes


@contextlib.contextmanager
def atomic_write(path: str | Path, mode: str = "wb", *, durable: bool = False) -> Iterator[IO[Any]]:
    """Open a temporary file beside ``path`` for writing (``mode`` 'wb' or 'w') and rename it
    over ``path`` when the block ends without an exception (otherwise it is removed).
    ``durable`` also flushes it to disk first (checkpoints: survive a power cut, not only a kill).

    Example
    -------
    >>> import tempfile, pathlib
    >>> target = pathlib.Path(tempfile.mkdtemp()) / "a.txt"
    >>> with atomic_write(target, "w") as handle:
    ...     _ = handle.write("whole")
    >>> target.read_text()
    'whole'
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, mode, **({"encoding": "utf-8"} if "b" not in mode else {})) as handle:
            yield handle
            if durable:
                handle.flush()
                os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_text(path: str | Path, text: str) -> Path:
    """Write ``text`` to ``path`` atomically; returns ``path``."""
    with atomic_write(path, "w") as handle:
        handle.write(text)
    return Path(path)


def write_bytes(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically; returns ``path``."""
    with atomic_write(path, "wb") as handle:
        handle.write(data)
    return Path(path)


def save_npz(path: str | Path, **arrays: Any) -> None:
    """Write numpy ``arrays`` to ``path`` as .npz atomically (a file object: numpy appends no '.npz')."""
    import numpy as np

    with atomic_write(path, "wb") as handle:
        np.savez(handle, **arrays)


# --------------------------------------------------------------------------- JSON


NONFINITE = "nonfinite"  # the flag beside a record's nulls: {"key.path": "nan" | "inf" | "-inf"}


def jsonable(value: Any, _where: str = "", _found: dict[str, str] | None = None) -> Any:
    """``value`` as strict JSON can hold it: tensors, numpy arrays and numbers as Python
    lists and numbers, tuples as lists, keys as strings, and NaN / inf as None (``null``).

    Example
    -------
    >>> jsonable({"a": float("inf"), 1: (2.0, float("nan"))})
    {'a': None, '1': [2.0, None]}
    """
    if isinstance(value, dict):
        return {str(k): jsonable(v, f"{_where}.{k}" if _where else str(k), _found) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v, f"{_where}.{i}" if _where else str(i), _found) for i, v in enumerate(value)]
    if isinstance(value, float):
        if math.isfinite(value):
            return value
        if _found is not None:
            _found[_where] = "nan" if math.isnan(value) else "inf" if value > 0 else "-inf"
        return None
    if isinstance(value, str | int | bool) or value is None:
        return value
    if hasattr(value, "tolist"):  # torch tensors, numpy arrays and numpy scalars
        return jsonable(value.tolist(), _where, _found)
    return value


def flagged(value: Any) -> Any:
    """The one JSON policy of every file babysit writes: :func:`jsonable`, and a record (an
    object) that had NaN or inf gets a ``nonfinite`` entry naming each such key and what it
    was, so a reader tells "not measured" (null alone) from "diverged" (null plus the flag).

    Example
    -------
    >>> flagged({"loss": float("nan"), "acc": 0.5, "curve": [1.0, float("inf")]})
    {'loss': None, 'acc': 0.5, 'curve': [1.0, None], 'nonfinite': {'loss': 'nan', 'curve.1': 'inf'}}
    """
    found: dict[str, str] = {}
    result = jsonable(value, "", found)
    if found and isinstance(result, dict):
        result[NONFINITE] = found
    return result


def dumps(value: Any, indent: int | None = None) -> str:
    """``value`` as strict JSON text under the policy (:func:`flagged`)."""
    return json.dumps(flagged(value), indent=indent, allow_nan=False)


def json_line(value: Any) -> str:
    """One JSON Lines record (no newline) under the policy (:func:`flagged`)."""
    return json.dumps(flagged(value), allow_nan=False)


def write_json(path: str | Path, value: Any, indent: int | None = 2) -> None:
    """Write ``value`` as JSON to ``path`` atomically, NaN and inf as null plus the flag."""
    write_text(path, dumps(value, indent) + "\n")


def read_json(path: str | Path, default: Any = None) -> Any:
    """The JSON value in ``path``; ``default`` when it is missing or unreadable."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):  # missing, damaged, or nested beyond Python's stack
        return default


def read_json_list(path: str | Path) -> list[Any]:
    """A JSON list file (findings.json); [] when missing, unreadable or not a list."""
    value = read_json(path, [])
    return value if isinstance(value, list) else []


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """The JSON objects of a JSON Lines file, one per line; a line cut short by a kill (or
    otherwise unreadable) is skipped; [] when the file is missing.

    Example
    -------
    >>> import tempfile, pathlib
    >>> f = pathlib.Path(tempfile.mkdtemp()) / "metrics.jsonl"
    >>> _ = f.write_text('{"step": 1}\\n{"step": 2}\\n{"ste')
    >>> read_jsonl(f)
    [{'step': 1}, {'step': 2}]
    """
    path = Path(path)
    if not path.exists():
        return []
    records = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            record = json.loads(line)
        except (ValueError, RecursionError):
            continue
        if isinstance(record, dict):
            records.append(record)
    return records


def truncate_jsonl(path: str | Path, last_step: int) -> None:
    """Drop the records of ``path`` logged after ``last_step`` (and a line cut short by a
    kill): on resume, the steps after the checkpoint are trained again and logged anew."""
    path = Path(path)
    if not path.exists():
        return
    kept = [r for r in read_jsonl(path) if isinstance(r.get("step", 0), int) and r.get("step", 0) <= last_step]
    write_text(path, "".join(json_line(r) + "\n" for r in kept))


# --------------------------------------------------------------------------- the reader


@dataclass
class RunFiles:
    """What a run directory holds; missing files are empty (see :func:`read_run`)."""

    path: Path
    config_text: str
    spec: dict[str, Any]
    history: list[dict[str, Any]]  # metrics.jsonl's epoch records
    records: list[dict[str, Any]]  # monitors.jsonl's per-layer samples
    summary: dict[str, Any]
    findings: list[dict[str, Any]]
    landscape: dict[str, Any] | None = None
    landscape_figures: list[Path] = field(default_factory=list)

    @property
    def name(self) -> str:
        return str(self.spec.get("name") or self.summary.get("name") or self.path.name)

    def checkpoint(self) -> Path | None:
        """The weights to use: ``best.pt`` (early stopping's best), else ``last.pt``; None when neither."""
        return weights_file(self.path)

    def experiment(self) -> Any:
        """The resolved spec as a validated :class:`babysit.config.Experiment`."""
        return config.load(self.path / "config.yaml")


def weights_file(run_dir: str | Path) -> Path | None:
    """The checkpoint whose weights a finished run stands for: ``checkpoints/best.pt`` (early
    stopping's best), else ``last.pt``; None when the run saved neither."""
    folder = Path(run_dir) / "checkpoints"
    return next((p for p in (folder / "best.pt", folder / "last.pt") if p.is_file()), None)


def require_run(run_dir: str | Path) -> Path:
    """``run_dir`` as a Path; one without a config.yaml is a BabysitError."""
    path = Path(run_dir)
    if not (path / "config.yaml").is_file():
        raise BabysitError(f"{path}: not a run directory (no config.yaml); train one with babysit train")
    return path


def read_run(run_dir: str | Path) -> RunFiles:
    """Read a run directory; one that has no config.yaml is a BabysitError.

    Example
    -------
    >>> read_run("/nonexistent/run")
    Traceback (most recent call last):
    ...
    babysit.errors.BabysitError: /nonexistent/run: not a run directory (no config.yaml); train one with babysit train
    """
    path = require_run(run_dir)
    config_text = (path / "config.yaml").read_text(encoding="utf-8", errors="replace")
    try:
        spec = config.safe_yaml(config_text, str(path / "config.yaml")) or {}
    except yaml.YAMLError:
        raise BabysitError(f"{path / 'config.yaml'}: not valid YAML") from None
    if not isinstance(spec, dict):
        raise BabysitError(f"{path / 'config.yaml'}: not a spec (a YAML mapping)")
    summary = read_json(path / "summary.json", {})
    landscape = read_json(path / "landscape.json") if (path / "landscape.json").exists() else None
    return RunFiles(
        path=path,
        config_text=config_text,
        spec=spec,
        history=[r for r in read_jsonl(path / "metrics.jsonl") if "epoch" in r],
        records=[r for r in read_jsonl(path / "monitors.jsonl") if isinstance(r.get("layers"), dict) and "step" in r],
        summary=summary if isinstance(summary, dict) else {},
        findings=[f for f in read_json_list(path / "findings.json") if isinstance(f, dict) and "id" in f],
        landscape=landscape if isinstance(landscape, dict) else ({"value": landscape} if landscape is not None else None),
        landscape_figures=sorted((path / "figures").glob("*.png")) if (path / "figures").is_dir() else [],
    )


__all__ = ["LOCK", "NONFINITE", "RUN_FILES", "RunFiles", "atomic_write", "check_new_run_folder", "clear_run", "has_checkpoint",
           "remove_orphans", "run_lock", "dumps", "flagged", "is_run", "json_line", "jsonable", "next_free", "read_json",
           "read_json_list", "read_jsonl", "read_run", "require_run", "run_directory", "save_npz", "weights_file", "truncate_jsonl",
           "write_bytes", "write_json", "write_text"]
