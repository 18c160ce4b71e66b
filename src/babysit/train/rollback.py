"""The in-memory training state a rollback returns to (``train.on_spike: rollback``).

:class:`TrainingSnapshot` keeps what a training step changes, on the model's device, in
buffers allocated once and overwritten at each save (``torch._foreach_copy_``: one batched
copy):

- the model's parameters and buffers (batch-norm running statistics and counters);
- the optimizer's per-parameter state (Adam's moments and step counts, momentum buffers;
  non-tensor entries and L-BFGS's history lists are deep-copied) and each parameter group's
  hyperparameters (the lr and momentum a schedule sets);
- the schedule's state (``state_dict``), the fp16 ``GradScaler``'s (scale and growth
  tracker) and the trainer's count of the scaler's skipped steps;
- the global RNG states (CPU and CUDA), so that replaying the clean batches of a window
  draws the same dropout masks as the first time.

Not kept: the data order (the shuffling generator goes on: the skipped batches stay
skipped), and callbacks' own state (they see every batch once; a rollback is announced to
them through ``on_rollback``). Memory: one more copy of the weights, buffers and optimizer
state (3x the weights for Adam); time: one device-to-device copy of that every
``checks.every`` steps.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

from babysit.train.checkpoint import rng_state, set_rng_state


def _signature(tensors: list[torch.Tensor]) -> list[tuple[Any, ...]]:
    return [(t.shape, t.dtype, t.device) for t in tensors]


class TrainingSnapshot:
    """Save and restore the training state of a model, optimizer, schedule and scaler.

    Example
    -------
    >>> net = nn.Linear(2, 1)
    >>> opt = torch.optim.Adam(net.parameters(), lr=0.1)
    >>> snapshot = TrainingSnapshot(net, opt)
    >>> snapshot.save()
    >>> before = net.weight.detach().clone()
    >>> net(torch.ones(4, 2)).sum().backward(); opt.step()
    >>> snapshot.restore()
    >>> bool(torch.equal(net.weight, before)), len(opt.state)
    (True, 0)
    """

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, schedule: Any = None,
                 scaler: Any = None):
        self.model, self.optimizer, self.schedule, self.scaler = model, optimizer, schedule, scaler
        self._buffers: list[torch.Tensor] = []  # the copies, reused while the tensors keep their shapes
        self._signature: list[tuple[Any, ...]] = []
        self._model_count = 0
        self._state_keys: list[tuple[torch.Tensor, str]] = []  # (parameter, key) of each tensor of optimizer state
        self._state_other: dict[tuple[int, str], Any] = {}  # non-tensor optimizer state, by (index, key)
        self._params: list[torch.Tensor] = []
        self._groups: list[dict[str, Any]] = []
        self._schedule: Any = None
        self._scaler: Any = None
        self._rng: dict[str, Any] = {}
        self.extra: dict[str, Any] = {}  # what the caller keeps along (the trainer's skipped-step count)
        self.saved = False

    def _model_tensors(self) -> list[torch.Tensor]:
        # the parameters themselves (copied under no_grad: no detached views to make)
        return [*self.model.parameters(), *(b for b in self.model.buffers() if b is not None)]

    def save(self, **extra: Any) -> None:
        """Copy the current state into the snapshot (no host sync: device copies only, plus
        the scaler's scale, which the loop has already waited for at a window's end)."""
        tensors = self._model_tensors()
        self._model_count = len(tensors)
        self._state_keys, self._state_other = [], {}
        self._params = list(self.optimizer.state.keys())
        for index, param in enumerate(self._params):
            for key, value in self.optimizer.state[param].items():
                if isinstance(value, torch.Tensor):
                    self._state_keys.append((param, key))
                    tensors.append(value)
                else:
                    self._state_other[(index, key)] = copy.deepcopy(value)
        signature = _signature(tensors)
        if signature != self._signature:  # first save, or the optimizer created its state since
            self._buffers = [torch.empty_like(t) for t in tensors]
            self._signature = signature
        if tensors:
            with torch.no_grad():
                torch._foreach_copy_(self._buffers, tensors)
        # hyperparameters are numbers, tuples and flags (a tensor lr under capturable: cloned)
        self._groups = [{k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in group.items() if k != "params"}
                        for group in self.optimizer.param_groups]
        self._schedule = copy.deepcopy(self.schedule.state_dict()) if self.schedule is not None else None
        self._scaler = self.scaler.state_dict() if self.scaler is not None else None
        self._rng = rng_state()
        self.extra = dict(extra)
        self.saved = True

    def restore(self) -> None:
        """Put the saved state back (into the live tensors, in place)."""
        assert self.saved, "TrainingSnapshot.restore before save"
        live = self._model_tensors()
        count = self._model_count
        with torch.no_grad():
            if live:
                torch._foreach_copy_(live, self._buffers[:count])
            state = self.optimizer.state
            saved_params = {id(p) for p in self._params}
            for param in [p for p in state if id(p) not in saved_params]:
                del state[param]  # state the optimizer created after the save (its first step)
            for index, param in enumerate(self._params):
                keys = {key for (p, key) in self._state_keys if p is param}
                keys |= {key for (i, key) in self._state_other if i == index}
                for key in [k for k in state[param] if k not in keys]:
                    del state[param][key]
            for (param, key), saved in zip(self._state_keys, self._buffers[count:], strict=True):
                current = state[param].get(key)
                if isinstance(current, torch.Tensor) and _signature([current]) == _signature([saved]):
                    current.copy_(saved)
                else:
                    state[param][key] = saved.clone()
            for (index, key), value in self._state_other.items():
                state[self._params[index]][key] = copy.deepcopy(value)
        for group, saved_group in zip(self.optimizer.param_groups, self._groups, strict=True):
            group.update({k: v.clone() if isinstance(v, torch.Tensor) else copy.copy(v) for k, v in saved_group.items()})
        if self.schedule is not None:
            self.schedule.load_state_dict(copy.deepcopy(self._schedule))
        if self.scaler is not None:
            self.scaler.load_state_dict(self._scaler)
        set_rng_state(self._rng)


__all__ = ["TrainingSnapshot"]
