"""Where ``babysit search`` keeps its studies: Optuna's storage, shared by every process
that works on the same study.

By default a journal file, ``DIR/journal.log`` (Optuna's advice for several processes on
one machine: file locks, no database), else any Optuna storage URL (``sqlite:///...``,
``postgresql://user@host/db`` for several machines). Processes starting together on an
empty database race to create Optuna's tables; the loser tries again
(:data:`STORAGE_ATTEMPTS`). :func:`open_study` creates a study or joins it, and refuses one
that was started with another direction (:func:`open_study`) or another space
(:func:`check_same_space`). A journal file that is not one (random bytes, JSON of another
shape) is refused in one line, before anything is written to it; a last line cut short by a
search killed while writing it is dropped, and the study continues (:func:`journal_storage`).

Example
-------
>>> hide_password("postgresql://ada:secret@db.example/search")
'postgresql://ada:***@db.example/search'
"""

from __future__ import annotations

import json
import os
import random
import re
import time
from pathlib import Path
from typing import Any

import optuna
from optuna.pruners import BasePruner
from optuna.samplers import BaseSampler

from babysit.errors import BabysitError

STORAGE_ATTEMPTS = 5  # tries to open a database storage (see open_storage)


# what Optuna raises while it replays a journal that is not one: JSONDecodeError and
# UnicodeDecodeError (ValueErrors) on a line that is not JSON, TypeError, KeyError,
# AttributeError and AssertionError ("Should not reach.": an unknown op code) on JSON of another
# shape, ValueError on a value out of its enum ("9 is not a valid TrialState"), RecursionError
# on JSON nested too deep
_NOT_A_JOURNAL = (ValueError, TypeError, KeyError, IndexError, AttributeError, AssertionError, RecursionError)
CUT_LINE_WAIT_S = 0.2  # how long a last line without its newline may be another process's write in progress


def journal_storage(path: Path) -> optuna.storages.BaseStorage:
    """Optuna's journal storage on a file: safe for several processes on one machine (file
    locks; Optuna's FAQ advises it over SQLite for parallel work). A file that is not an
    Optuna journal is a one-line :class:`BabysitError`; a last line cut short is dropped."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        from optuna.storages.journal import JournalFileBackend as Backend  # Optuna >= 4.0
    except ImportError:  # Optuna 3.x
        from optuna.storages import JournalFileStorage as Backend  # type: ignore[no-redef]
    try:
        storage = optuna.storages.JournalStorage(Backend(str(path)))  # replays the file: most damage shows here
        _check_last_line(path)  # the rest: a damaged last line
        return storage
    except _NOT_A_JOURNAL:
        raise _not_a_journal(path) from None
    except OSError as exc:
        raise BabysitError(f"{path}: cannot read it ({exc.strerror or type(exc).__name__})") from None


def _not_a_journal(path: Path) -> BabysitError:
    return BabysitError(f"{path}: not an Optuna journal (damaged?); move it away to start a new study")


def _last_line(path: Path) -> bytes:
    """The file's last line with its newline, if it has one (b"" for an empty file); read from
    the end, so a long journal is not read twice."""
    with open(path, "rb") as f:
        end = f.seek(0, os.SEEK_END)
        size = 4096
        while True:
            start = max(0, end - size)
            f.seek(start)
            tail = f.read(end - start)
            cut = tail.rfind(b"\n", 0, len(tail) - 1)
            if cut >= 0 or start == 0:
                return tail[cut + 1:]
            size *= 4


def _check_last_line(path: Path) -> None:
    """Repair or refuse a journal whose last line is damaged. Optuna skips such a line when it
    reads the file (it may be another process's write in progress) but appends its next line
    to it, and only then fails, in the middle of a trial.

    A last line without its newline is a write in progress only for a moment: still cut after
    :data:`CUT_LINE_WAIT_S`, it is a search killed while writing. That record never took effect,
    so it is dropped (the file is cut back to its last whole line) and the same command
    continues the study, as after any other kill. A last line that is not even the start of a
    journal record is refused.
    """
    last = _last_line(path)
    if last and not last.endswith(b"\n"):
        time.sleep(CUT_LINE_WAIT_S)
        last = _last_line(path)
    if last and not last.endswith(b"\n"):
        if not last.startswith(b'{"op_code":'):  # not even the start of a journal line
            raise _not_a_journal(path)
        with open(path, "r+b") as f:  # drop the record the kill cut short
            f.truncate(f.seek(0, os.SEEK_END) - len(last))
        return
    if last:  # a blank line too: Optuna fails on it once a line follows
        try:
            json.loads(last)
        except (ValueError, RecursionError):  # not JSON (JSONDecodeError, UnicodeDecodeError), or too deep
            raise _not_a_journal(path) from None


def hide_password(url: str) -> str:
    """``postgresql://user:secret@host/db`` -> ``postgresql://user:***@host/db``."""
    return re.sub(r"(://[^:/@]*:)[^@]*@", r"\1***@", url)


def open_storage(url: str | None, out: Path) -> tuple[optuna.storages.BaseStorage | str, str]:
    """The storage to use and how to name it: the journal file ``out/journal.log`` by default,
    else the Optuna storage ``url`` (connection problems are one-line errors)."""
    if url is None:
        path = out / "journal.log"
        return journal_storage(path), str(path)
    for attempt in range(STORAGE_ATTEMPTS):
        try:
            return optuna.storages.get_storage(url), hide_password(url)
        except Exception as exc:  # noqa: BLE001 (sqlalchemy and drivers raise many kinds; the user needs one line)
            # processes starting together on an empty database race to create Optuna's tables: the
            # loser gets an IntegrityError (a duplicate row) or a ProgrammingError (PostgreSQL's
            # DuplicateTable: 'relation ... already exists'), and the tables are there when it tries again
            lost_race = type(exc).__name__ == "IntegrityError" or "already exists" in str(exc)
            if lost_race and attempt + 1 < STORAGE_ATTEMPTS:
                time.sleep(0.5 + random.random())
                continue
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise BabysitError(f"--storage {hide_password(url)}: cannot open it ({type(exc).__name__}: {first})") from None
    raise AssertionError("unreachable")


def open_study(storage: Any, name: str, sampler: BaseSampler, pruner: BasePruner, metric: str) -> optuna.Study:
    """Create or load the study; one that was started scoring by another metric is refused."""
    direction = "maximize" if metric == "val_acc" else "minimize"
    study = optuna.create_study(storage=storage, study_name=name, sampler=sampler, pruner=pruner,
                                direction=direction, load_if_exists=True)
    if len(study.directions) != 1:  # Optuna's multi-objective study (or a damaged storage): no single direction
        raise BabysitError(f"--study {name}: this study has {len(study.directions)} objectives, babysit's have one; "
                           f"pass a new --study NAME")
    if study.direction.name.lower() != direction:
        raise BabysitError(f"--study {name}: this study {study.direction.name.lower()}s its score, this spec "
                           f"{direction}s {metric} (train.early_stopping.monitor); pass a new --study NAME")
    return study


def check_same_space(study: optuna.Study, search_section: dict[str, Any], name: str) -> None:
    """A study keeps the space it started with; resuming it with another is a mistake."""
    saved = study.user_attrs.get("search")
    if saved is None:
        study.set_user_attr("search", dict(search_section))
    elif saved != dict(search_section):
        raise BabysitError(f"--study {name}: this study was started with another search space ({saved}); "
                           f"pass a new --study NAME")


__all__ = ["CUT_LINE_WAIT_S", "STORAGE_ATTEMPTS", "check_same_space", "hide_password", "journal_storage", "open_storage",
           "open_study"]
