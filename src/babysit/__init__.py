"""babysit: build, train and babysit neural networks on PyTorch.

>>> import babysit
>>> callable(babysit.preflight), callable(babysit.watch)
(True, True)
"""

from typing import Any

__version__ = "0.1.0"
__all__ = ["landscape_run", "load_run", "preflight", "watch"]


def __getattr__(name: str) -> Any:
    # lazy, so `babysit --help` does not pay for importing torch
    if name == "preflight":
        from babysit.checks.preflight import preflight

        return preflight
    if name == "watch":
        from babysit.run.watch import watch

        return watch
    if name == "load_run":
        from babysit.run.load import load_run

        return load_run
    if name == "landscape_run":
        from babysit.landscape.run import landscape_run

        return landscape_run
    raise AttributeError(f"module 'babysit' has no attribute {name!r}")
