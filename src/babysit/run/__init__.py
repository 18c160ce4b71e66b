"""The run path: from a spec to a finished run directory, one path for every model family,
and a finished run loaded back.

- :func:`run` trains a spec and writes ``runs/<name>/`` (:mod:`babysit.run.runner`);
- :func:`prepare` builds a spec's device, data, network and loss (:mod:`babysit.run.prepare`);
- :func:`load_run` rebuilds a finished run with its best weights (:mod:`babysit.run.load`);
- :mod:`babysit.run.summary` ends ``babysit train`` in the terminal, and
  :mod:`babysit.run.ensemble` scores trained runs together.

What a kind of model does differently lives in :mod:`babysit.families`; the files of a run
directory are named, written and read by :mod:`babysit.rundir`.
"""

from babysit.run.load import LoadedRun, load_run
from babysit.run.prepare import make_penalty, prepare
from babysit.run.runner import Assembled, RunResult, assemble, run

__all__ = ["Assembled", "LoadedRun", "RunResult", "assemble", "load_run", "make_penalty", "prepare", "run"]
