"""Where ``babysit search`` keeps its studies: Optuna's storage, shared by every process
that works on the same study.

By default a journal file, ``DIR/journal.log`` (Optuna's advice for several processes on
one machine: file locks, no database), else any Optuna storage URL (``sqlite:///...``,
``postgresql://user@host/db`` for several machines). Processes starting together on an
empty database race to create Optuna's tables; the loser tries again
(:data:`STORAGE_ATTEMPTS`). :func:`open_study` creates a study or joins it, and refuses one
that was started with another direction (:func:`open_study`) or another space
(:func:`check_same_space`).

Example
-------
>>> hide_password("postgresql://ada:secret@db.example/search")
'postgresql://ada:***@db.example/search'
"""

from __future__ import annotations

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


def journal_storage(path: Path) -> optuna.storages.BaseStorage:
    """Optuna's journal storage on a file: safe for several processes on one machine (file
    locks; Optuna's FAQ advises it over SQLite for parallel work)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        from optuna.storages.journal import JournalFileBackend as Backend  # Optuna >= 4.0
    except ImportError:  # Optuna 3.x
        from optuna.storages import JournalFileStorage as Backend  # type: ignore[no-redef]
    return optuna.storages.JournalStorage(Backend(str(path)))


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


__all__ = ["STORAGE_ATTEMPTS", "check_same_space", "hide_password", "journal_storage", "open_storage",
           "open_study"]
