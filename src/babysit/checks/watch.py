"""The live monitors for a training loop you wrote yourself: the core of ``babysit.watch``.

:class:`Watch` samples and judges the monitors only; ``babysit.watch``
(:mod:`babysit.run.watch`, a layer up) adds the learning curves, the run directory and the
report. Keras-style progressive disclosure: ``babysit train`` runs the monitors for you; with your
own loop, wrap it in ``watch(model, optimizer)`` and hand it each step's loss. It records
per-layer statistics every ``every`` steps (module hooks and the optimizer's step hooks,
see :mod:`babysit.checks.monitors`), guards against an exploding or non-finite loss, and
``findings()`` says what it saw.

Example
-------
>>> import torch
>>> from torch import nn
>>> torch.manual_seed(0)  # doctest: +ELLIPSIS
<...>
>>> net = nn.Sequential(nn.Linear(10, 32), nn.ReLU(), nn.Linear(32, 3))
>>> opt = torch.optim.SGD(net.parameters(), lr=1e-7)  # far too small
>>> x, y = torch.randn(256, 10), torch.randint(0, 3, (256,))
>>> with watch(net, opt) as w:
...     for _ in range(50):
...         loss = nn.functional.cross_entropy(net(x), y)
...         opt.zero_grad(); loss.backward(); opt.step()
...         if not w.step(loss):
...             break
>>> [f.id for f in w.findings()]
['update_ratio_low']
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
from torch import nn

from babysit.checks.findings import Finding, reconcile, sort_findings
from babysit.checks.monitors import Monitor, monitor_line
from babysit.config import EXPLOSION_FACTOR

# A classifier with sound init starts near ln C (CS231n); a first loss in this band of ln C
# says the model's last Linear is the head of a C-class cross-entropy classifier.
CHANCE_GUESS = (0.75, 1.5)


class Watch:
    """A running set of monitors on ``model`` and ``optimizer``; see :func:`watch`."""

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, *, every: int = 10,
                 explosion_factor: float = EXPLOSION_FACTOR, path: str | Path | None = None,
                 chance_loss: float | None = None):
        self.path = Path(path) if path is not None else None
        self._handle = None
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._handle = self.path.open("a", encoding="utf-8")
        self.monitor = Monitor(model, optimizer, every=every, explosion_factor=explosion_factor,
                               sink=self._write if self._handle is not None else None, check_cleared=True)
        self.chance_loss = chance_loss
        heads = [m for m in model.modules() if isinstance(m, nn.Linear)]
        self._classes = heads[-1].out_features if heads else 0  # the last Linear: the head, in most nets

    def _write(self, record: dict[str, Any]) -> None:
        assert self._handle is not None
        self._handle.write(monitor_line(record))

    def step(self, loss: torch.Tensor | float) -> bool:
        """Record the loss of the step just taken (call after ``optimizer.step()``).

        Returns False once the loss has exploded (above ``explosion_factor`` x the first loss)
        or become NaN/inf: stop training then, the weights are no longer any good. The loss
        is read only at sampled steps, so this costs nothing on the others.
        """
        self.monitor.observe_loss(loss)
        return self.monitor.guard is None

    @property
    def stopped(self) -> bool:
        """True once the explosion guard has tripped."""
        return self.monitor.guard is not None

    @property
    def records(self) -> list[dict[str, Any]]:
        """The sampled statistics so far (the lines ``monitors.jsonl`` would hold)."""
        return self.monitor.records

    def findings(self) -> list[Finding]:
        """What the monitors found (dead units, saturation, collapse, vanishing or exploding
        gradients, update/weight ratios, an exploded loss, gradients never cleared, a loss
        stuck at chance), reconciled (no advice to raise the learning rate next to dead units)
        and most severe first."""
        self.monitor.chance_loss = self.chance_loss if self.chance_loss is not None else self._guess_chance_loss()
        return sort_findings(reconcile(self.monitor.findings()))

    def _guess_chance_loss(self) -> float | None:
        """ln C when the model ends in a Linear of C >= 2 outputs and the first loss is near
        ln C (a classifier trained with cross-entropy, as it starts); else None."""
        records = self.monitor.records
        first = records[0].get("loss") if records else None
        if self._classes < 2 or not isinstance(first, float) or not math.isfinite(first):
            return None
        chance = math.log(self._classes)
        return chance if CHANCE_GUESS[0] * chance <= first <= CHANCE_GUESS[1] * chance else None

    def close(self) -> None:
        """Remove the hooks (the model and optimizer are left as they were) and close the file."""
        self.monitor.detach()
        if self._handle is not None:
            self._handle.close()
            self._handle = None

    def __enter__(self) -> Watch:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def watch(model: nn.Module, optimizer: torch.optim.Optimizer, *, every: int = 10,
          explosion_factor: float = EXPLOSION_FACTOR, path: str | Path | None = None,
          chance_loss: float | None = None) -> Watch:
    """Watch a training loop of your own: a context manager whose ``.step(loss)`` records
    the monitors and whose ``.findings()`` diagnoses.

    Parameters
    ----------
    model, optimizer : what your loop trains.
    every : sample per-layer statistics every N optimizer steps (the first step always).
    explosion_factor : ``.step`` returns False once the loss exceeds this multiple of the first.
    path : also append each sample to this JSON-lines file (``monitors.jsonl``).
    chance_loss : the loss of a guess that ignores the inputs (``loss_at_chance`` compares
        the training loss with it); default: ln C for a model ending in a Linear of C outputs
        whose first loss is near ln C, else the check is off.

    Example
    -------
    >>> import torch
    >>> from torch import nn
    >>> net = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 1))
    >>> opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    >>> with watch(net, opt, every=5) as w:
    ...     for _ in range(20):
    ...         loss = net(torch.randn(16, 4)).pow(2).mean()
    ...         opt.zero_grad(); loss.backward(); opt.step(); _ = w.step(loss)
    >>> len(w.records)
    4
    """
    return Watch(model, optimizer, every=every, explosion_factor=explosion_factor, path=path, chance_loss=chance_loss)


__all__ = ["Watch", "watch"]
