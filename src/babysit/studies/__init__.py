"""Studies: the classic experiments behind the field's rules of thumb, rerun.

``babysit study NAME [--quick]`` trains the small networks a claim is about, side by side,
and writes a run-like directory (``runs/study-<name>``): ``results.json`` (the table, the
curves, the conclusion), ``table.csv``, ``figures/*.png`` and ``report.html`` (one
self-contained page with a plain-words conclusion computed from the numbers).

=================  ==========================================================================
``activations``    sigmoid, tanh, relu, leaky_relu, elu, maxout: steps to a target accuracy,
                   dead and saturated fractions
``init``           10-layer tanh and relu nets under small/large normal, xavier, kaiming:
                   activation std layer by layer at init
``optimizers``     sgd ... quickprop on one small problem: loss against steps and wall time,
                   test accuracy
``batch``          full batch, single sample, mini-batches: loss against epochs and wall time
``normalization``  none, batch, layer, group, weight: the largest stable learning rate
``depth``          plain against residual deep nets: vanishing gradients and the skip path
=================  ==========================================================================

Every study is seeded (the same command gives the same table, apart from wall times),
runs on one CPU thread (the networks are small; their steps cost overhead, not FLOPs), and
has a ``--quick`` version of well under a minute that reproduces its claim's direction;
``StudyResult.checks`` holds those directions as booleans and the tests assert them.

Example
-------
>>> sorted(STUDIES)
['activations', 'batch', 'depth', 'init', 'normalization', 'optimizers']
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from babysit.errors import BabysitError
from babysit.studies.activations import activations_study
from babysit.studies.batch import batch_study
from babysit.studies.common import (
    Progress,
    StudyResult,
    rich_table,
    study_directory,
    threads,
    write_study,
)
from babysit.studies.depth import depth_study
from babysit.studies.initialization import init_study
from babysit.studies.normalization import normalization_study
from babysit.studies.optimizers import optimizers_study

__all__ = ["STUDIES", "DESCRIPTIONS", "StudyResult", "rich_table", "run_study"]

STUDIES: dict[str, Callable[..., StudyResult]] = {
    "activations": activations_study,
    "init": init_study,
    "optimizers": optimizers_study,
    "batch": batch_study,
    "normalization": normalization_study,
    "depth": depth_study,
}

DESCRIPTIONS: dict[str, str] = {
    "activations": "sigmoid, tanh, relu, leaky_relu, elu, maxout: steps to a target accuracy, dead/saturated units",
    "init": "10-layer tanh and relu nets under small/large normal, xavier, kaiming: activation std per layer at init",
    "optimizers": "sgd, momentum, nesterov, adam, adamw, rmsprop, lbfgs, newton, quickprop: loss vs steps and time",
    "batch": "full batch, single sample, mini-batches: loss against epochs and wall time",
    "normalization": "none, batch, layer, group, weight: the largest stable learning rate and the accuracy",
    "depth": "plain against residual deep nets: vanishing gradients and the skip path",
}


def run_study(name: str, *, quick: bool = False, out: str | Path | None = None,
              progress: Progress | None = None, seed: int = 0) -> StudyResult:
    """Run the study ``name`` and write its directory (``out``, default ``runs/study-<name>``,
    ``-2``... when that exists); returns the :class:`StudyResult` with ``path`` set.

    Studies run on one CPU thread: their networks are so small that more threads only
    contend (on a busy machine, badly), and the numbers do not depend on the machine's cores.
    """
    study = STUDIES.get(name)
    if study is None:
        raise BabysitError(f"study: '{name}' is unknown; available: {', '.join(STUDIES)}")
    path = study_directory(name, out)
    if (path / "results.json").exists():
        raise BabysitError(f"{path}: a study is already there; choose another --out")
    started = time.perf_counter()
    with threads(1):
        result = study(quick=quick, progress=progress, seed=seed)
    result.seconds = time.perf_counter() - started
    write_study(result, path)
    return result
