"""The one exception a user can cause.

Anything the user controls (the spec, an override, a data file, a run directory) that is
wrong raises :class:`BabysitError` with one line naming the field or file and what is
allowed. The CLI prints that line without a traceback and exits with code 2.
"""


class BabysitError(Exception):
    """A problem with the user's input, explained in one line."""

    exit_code = 2

    def __init__(self, message: str):
        super().__init__(message.strip().splitlines()[0] if message.strip() else message)
