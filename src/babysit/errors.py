"""The one exception a user can cause, and how to find a Ctrl-C behind another error.

Anything the user controls (the spec, an override, a data file, a run directory) that is
wrong raises :class:`BabysitError` with one line naming the field or file and what is
allowed. The CLI prints that line without a traceback and exits with code 2.
"""

from __future__ import annotations


class BabysitError(Exception):
    """A problem with the user's input, explained in one line."""

    exit_code = 2

    def __init__(self, message: str):
        super().__init__(message.strip().splitlines()[0] if message.strip() else message)


def stop_behind(exc: BaseException | None) -> BaseException | None:
    """The Ctrl-C or exit that ``exc`` was raised while unwinding, if any: a KeyboardInterrupt,
    a SystemExit, or the CLI's own interrupt (any exception that is not an ``Exception``), found along the exceptions' ``__context__``.

    A Ctrl-C can land inside a library's cleanup code, whose own error then replaces it:
    Optuna's journal-file lock, interrupted as it releases, raises FileNotFoundError in its
    ``except BaseException`` branch. That error is the user's stop, not a failed trial.

    Example
    -------
    >>> try:
    ...     try:
    ...         raise KeyboardInterrupt
    ...     except BaseException:
    ...         raise FileNotFoundError("lock.rename")
    ... except FileNotFoundError as exc:
    ...     type(stop_behind(exc)).__name__
    'KeyboardInterrupt'
    """
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if not isinstance(exc, Exception | GeneratorExit):
            return exc
        exc = exc.__context__
    return None


__all__ = ["BabysitError", "stop_behind"]
