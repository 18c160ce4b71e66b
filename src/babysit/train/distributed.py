"""Data-parallel training under ``torchrun``: PyTorch's DistributedDataParallel, wired in.

``torchrun --nproc_per_node=N -m babysit train SPEC`` starts N copies of ``babysit train``;
torchrun tells each one who it is through environment variables (``RANK``, ``WORLD_SIZE``,
``LOCAL_RANK``, ``MASTER_ADDR``/``MASTER_PORT``, ``TORCHELASTIC_RESTART_COUNT``).
:func:`start` reads them and joins the process group (gloo on the CPU, NCCL on CUDA); with
``WORLD_SIZE`` unset or 1 it returns None and the run is the plain single-process one, with
no wrapper and no collective anywhere.

What babysit does on top of DDP, and why:

- **Data**: every rank holds the whole (small, in-memory) data set and draws the *same*
  seeded permutation each epoch; global batch k is the same ``data.batch_size`` examples a
  single process would use, and rank r trains on the r-th equal slice of it
  (:class:`babysit.data.batching.Batches` with ``rank``/``world_size``). DDP averages the
  gradients over ranks; each rank's loss is the mean over its slice, so with equal slices
  the step is the single-process step on the global batch. The batch size must therefore
  divide evenly by the number of processes. The last, smaller batch of an epoch is split
  evenly too, and the up to ``world_size - 1`` examples left over are skipped in that epoch
  (a different few each epoch, the order being shuffled); when the last batch divides
  evenly, a distributed run takes exactly the single-process steps.
- **Writing**: only rank 0 writes the run directory (config, metrics, monitors, TensorBoard,
  checkpoints, findings, summary, report) and runs the preflight checks and the live
  monitors. The other ranks run no callback except :class:`StopAgreement`, which makes every
  rank stop when rank 0 stops (explosion guard, early stopping), at the steps the explosion
  guard can trip and at each epoch's end.
- **Metrics**: the epoch's training loss and accuracy are averaged over ranks before the
  schedule sees them (one all-reduce an epoch); validation runs on every rank over the whole
  validation split with identical weights, so every rank gets the same numbers.
- **Noise scale** (``checks.noise_scale``): free under DDP. A rank's gradient is a small
  batch and the all-reduced one the big batch of McCandlish et al.'s estimator, so at the
  sampled steps a communication hook (:class:`NoiseScaleHook`) adds each rank's squared norm
  of its bucket to the all-reduce the step does anyway and takes the squared norm of the
  result; rank 0's :class:`~babysit.train.callbacks.noise_scale.NoiseScaleCallback` reads them.
  Between samples the hook is the plain all-reduce.
- **Restarts**: under ``torchrun --max-restarts=K`` a dead worker makes torchrun restart the
  whole group with ``TORCHELASTIC_RESTART_COUNT`` one higher. The restarted run continues
  from the run directory's last checkpoint (rank 0 reads it and broadcasts it, so the other
  machines need no shared file system). Each attempt's process group lives under its own
  key prefix in torchrun's store: on torch 2.13 a restarted gloo group that reuses the
  store's old keys finds the dead attempt's addresses and fails to connect.

Example (a shell)
-----------------
::

    torchrun --nproc_per_node=4 -m babysit train examples/mnist1d-mlp.yaml
    torchrun --nproc_per_node=2 --max-restarts=3 -m babysit train spec.yaml --out runs/big

Test-only: with ``BABYSIT_TEST_KILL_AT_STEP=N`` (and optionally ``BABYSIT_TEST_KILL_RANK``,
default 1) the given rank of the first attempt kills itself with SIGKILL after optimizer
step N, so the restart path can be tested at a reproducible point. Nothing reads it otherwise.
"""

from __future__ import annotations

import functools
import io
import os
import signal
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.algorithms.ddp_comm_hooks import default_hooks

from babysit.errors import BabysitError
from babysit.rundir import clear_run, run_directory
from babysit.train.callbacks.noise_scale import NoiseScaleCallback
from babysit.train.device import resolve_device
from babysit.train.loop import Callback, Trainer

RUN_DIRECTORY_KEY = "babysit/run_directory"  # in torchrun's store: survives restarts of the group


def world_size_from_environment() -> int:
    """``WORLD_SIZE`` as torchrun sets it; 1 when unset."""
    value = os.environ.get("WORLD_SIZE", "1")
    try:
        return int(value)
    except ValueError:
        raise BabysitError(f"WORLD_SIZE: expected a number of processes, got {value!r}") from None


def check_batch_size(batch_size: int | str, world_size: int) -> None:
    """The global batch is split evenly over the processes: refuse one that does not divide."""
    if world_size > 1 and isinstance(batch_size, int) and batch_size % world_size:
        raise BabysitError(f"data.batch_size: {batch_size} does not divide evenly over {world_size} processes "
                           f"(WORLD_SIZE); use a multiple of {world_size}")


@dataclass
class DistributedContext:
    """This process's place in a torchrun group, and the few collectives babysit needs."""

    rank: int
    world_size: int
    local_rank: int
    restart_count: int  # 0 on the first attempt, then one more per torchrun restart of the group
    device: torch.device
    store: Any  # torchrun's TCPStore, without the per-attempt prefix

    @property
    def is_main(self) -> bool:
        """Rank 0: the one process that writes the run directory and runs checks and monitors."""
        return self.rank == 0

    # ------------------------------------------------------------------ collectives

    def broadcast(self, value: Any) -> Any:
        """Rank 0's ``value`` (any picklable object: a path, a summary, a checkpoint) on every rank."""
        holder = [value if self.is_main else None]
        dist.broadcast_object_list(holder, src=0, device=self.device if self.device.type == "cuda" else None)
        return holder[0]

    def broadcast_checkpoint(self, checkpoint: dict[str, Any] | None) -> dict[str, Any]:
        """Rank 0's checkpoint on every rank, sent as torch.save bytes and read back with
        ``weights_only=True`` like a checkpoint file (the other machines need no shared file
        system, and nothing but tensors and plain containers is unpickled)."""
        buffer = io.BytesIO()
        if self.is_main:
            torch.save(checkpoint, buffer)
        data = self.broadcast(buffer.getvalue() if self.is_main else None)
        return checkpoint if self.is_main else torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)

    def agree_run_directory(self, name: str, out: str | Path | None, resume: bool) -> tuple[Path, bool]:
        """The run directory and whether to resume, decided by rank 0 and broadcast.

        On a restart (``TORCHELASTIC_RESTART_COUNT`` > 0) the run continues in the directory
        the first attempt chose (rank 0 leaves it in torchrun's store, which outlives the
        attempts), from its last checkpoint; after an attempt that died before its first
        checkpoint it starts again there from scratch. A user error on rank 0 becomes the same BabysitError on every rank.
        """
        decision: tuple[str, bool] | str | None = None
        if self.is_main:
            try:
                decision = self._decide_run_directory(name, out, resume)
            except BabysitError as exc:
                decision = str(exc)
        decision = self.broadcast(decision)
        if isinstance(decision, str):
            raise BabysitError(decision)
        path, resume = decision
        return Path(path), resume

    def _decide_run_directory(self, name: str, out: str | Path | None, resume: bool) -> tuple[str, bool]:
        earlier = None  # the directory an earlier attempt of this torchrun chose (never a guess)
        if self.restart_count > 0 and self.store.check([RUN_DIRECTORY_KEY]):
            earlier = Path(self.store.get(RUN_DIRECTORY_KEY).decode())
        if earlier is not None and (earlier / "config.yaml").exists():
            resume = (earlier / "checkpoints" / "last.pt").exists()
            if not resume:  # nothing to continue: start over in the same directory
                clear_run(earlier)
            path = earlier
        else:
            path, resume = run_directory(name, out, resume)
        self.store.set(RUN_DIRECTORY_KEY, str(path))
        return str(path), resume

    def batch_shard(self, batch_size: int | str) -> dict[str, int]:
        """The :class:`~babysit.data.batching.Batches` arguments for this rank's shard of every
        global batch of ``batch_size`` (refused unless it divides over the ranks)."""
        check_batch_size(batch_size, self.world_size)
        return {"rank": self.rank, "world_size": self.world_size}

    def reduce_train_logs(self, logs: dict[str, float]) -> None:
        """The epoch's running training loss and accuracy, averaged over ranks in place (equal
        shards: the mean of the ranks' means is the mean over the global batches)."""
        keys = [key for key in ("train_loss", "train_acc") if key in logs]
        if not keys:
            return
        values = torch.tensor([logs[key] for key in keys], dtype=torch.float64, device=self.device)
        dist.all_reduce(values)
        for key, value in zip(keys, (values / self.world_size).tolist(), strict=True):
            logs[key] = value

    # ------------------------------------------------------------------ the trainer

    def attach(self, trainer: Trainer, *, seed: int, compile: bool = False, stop_every: int | None = None) -> None:
        """Make ``trainer`` a data-parallel one: its forward goes through DDP (``trainer.model``
        stays the plain module, so checkpoints and evaluation see the usual names), its
        epoch metrics are averaged over ranks, and its stops are agreed. On ranks other than 0
        the callbacks (all of which write or watch) are dropped. Each epoch starts from its own
        seed for the global RNG (:class:`EpochSeed`).

        ``stop_every``: the monitors' sampling period when they run (the explosion guard can
        stop the run at those steps), else None.
        """
        self.check_trainable(trainer.optimizer, trainer.step)
        device_ids = [self.device.index] if self.device.type == "cuda" else None
        wrapped = nn.parallel.DistributedDataParallel(trainer.model, device_ids=device_ids)
        trainer.forward = torch.compile(wrapped) if compile else wrapped
        trainer.sync_logs = self.reduce_train_logs
        # every rank builds the same callbacks from the spec: the noise-scale check's hook goes on
        # every rank (the all-reduce must match), its callback stays on rank 0
        noise = next((cb for cb in trainer.callbacks if isinstance(cb, NoiseScaleCallback)), None)
        if noise is not None:
            noise.hook = NoiseScaleHook(trainer, noise.every, self.world_size)
            wrapped.register_comm_hook(None, noise.hook.hook)
        if not self.is_main:
            trainer.callbacks = []
        kill_at = os.environ.get("BABYSIT_TEST_KILL_AT_STEP")
        if kill_at and self.restart_count == 0 and self.rank == int(os.environ.get("BABYSIT_TEST_KILL_RANK", "1")):
            trainer.callbacks.append(_KillAtStep(int(kill_at)))
        trainer.callbacks.insert(0, EpochSeed(seed, self.rank))
        trainer.callbacks.append(StopAgreement(self, stop_every))

    def check_trainable(self, optimizer: Any, step: Any) -> None:
        """Refuse what cannot train data-parallel: an optimizer that evaluates the loss several
        times a step, or a family's own training step (two networks, two optimizers)."""
        if isinstance(optimizer, torch.optim.LBFGS) or getattr(optimizer, "needs_closure", False):
            raise BabysitError("optimizer.name: L-BFGS and Newton take several evaluations per step and cannot be "
                               "trained under torchrun; use a first-order optimizer or one process")
        if step is not None:
            raise BabysitError("model.kind: this model family trains with a step of its own (a GAN's two networks) "
                               "in one process; run it without torchrun")

    def close(self, finished: bool) -> None:
        """Leave the group. After a finished run every rank waits for the others at a barrier
        first (rank 0 is still writing the report): a rank that tears gloo down while a peer
        still talks to it makes that peer abort at exit now and then."""
        if not dist.is_initialized():
            return
        if finished:
            dist.barrier(device_ids=[self.device.index] if self.device.type == "cuda" else None)
        dist.destroy_process_group()


class NoiseScaleHook:
    """A DDP communication hook that measures, at the noise-scale check's sampled steps, the two
    squared gradient norms of McCandlish et al.'s estimator (see :mod:`babysit.checks.noise_scale`):
    the mean over ranks of each rank's own gradient's (a batch of B / world_size examples) and
    the all-reduced gradient's (the global batch of B).

    At a sampled step each bucket travels with one more number, its local squared norm, in the
    same all-reduce (no extra collective); the squared norm of the averaged bucket is taken when
    it arrives. Otherwise it is PyTorch's own ``allreduce_hook``. ``take()`` hands the step's
    sums to the callback: ``(tensor([|G_small|^2, |G_big|^2]), B_small, B_big)``, on the device.
    With fp16 loss scaling the norms are divided by the scale squared (the scaler's current
    scale, read as a tensor when the step's first bucket arrives).

    Sampled are the steps the callback samples (1, 1 + every, ...): while step s + 1 runs its
    backward, ``trainer.state.step`` is s. Every rank takes the same steps, so every rank packs
    the same buckets.
    """

    def __init__(self, trainer: Trainer, every: int, world_size: int):
        self.trainer, self.every, self.world_size = trainer, every, world_size
        self._sums: torch.Tensor | None = None  # [|G_small|^2, |G_big|^2] over this step's buckets
        self._scale: torch.Tensor | None = None

    # unannotated: DDP checks the annotations as objects, and this module's are strings
    def hook(self, state, bucket):  # (None, dist.GradBucket) -> torch.futures.Future[torch.Tensor]
        buffer = bucket.buffer()
        if self.trainer.state.step % self.every:
            return default_hooks.allreduce_hook(None, bucket)
        if self._sums is None:
            self._sums = torch.zeros(2, dtype=torch.float32, device=buffer.device)
            scaler = self.trainer.scaler
            self._scale = scaler.scale(torch.ones((), device=buffer.device)) if scaler is not None else None
        local = buffer.float().square().sum().to(buffer.dtype)
        packed = torch.cat([buffer, local.reshape(1)]).div_(self.world_size)

        def arrived(future: Any) -> torch.Tensor:
            reduced = future.value()[0]
            gradient = reduced[:-1]
            assert self._sums is not None
            self._sums += torch.stack([reduced[-1].float(), gradient.float().square().sum()])
            return gradient

        return dist.all_reduce(packed, async_op=True).get_future().then(arrived)

    def take(self) -> tuple[torch.Tensor | None, int, int]:
        """The sampled step's norms (None when it recorded none) and the two batch sizes."""
        sums, scale, self._sums, self._scale = self._sums, self._scale, None, None
        batch = self.trainer.batch
        small = len(batch[0]) if batch is not None else 0
        if sums is not None and scale is not None:
            sums = sums / scale.float().square()
        return sums, small, small * self.world_size


class SingleProcess:
    """The run alone, with :class:`DistributedContext`'s interface: rank 0 of one, where every
    collective is the identity and nothing is attached. The run path talks to either one the
    same way, so it has no branch for torchrun."""

    rank = 0
    world_size = 1
    is_main = True

    def broadcast(self, value: Any) -> Any:
        return value

    def broadcast_checkpoint(self, checkpoint: dict[str, Any] | None) -> dict[str, Any] | None:
        return checkpoint

    def agree_run_directory(self, name: str, out: str | Path | None, resume: bool) -> tuple[Path, bool]:
        return run_directory(name, out, resume)

    def batch_shard(self, batch_size: int | str) -> dict[str, int]:
        return {}

    def check_trainable(self, optimizer: Any, step: Any) -> None:
        return None

    def attach(self, trainer: Trainer, *, seed: int, compile: bool = False, stop_every: int | None = None) -> None:
        return None


class StopAgreement(Callback):
    """Every rank stops when any rank stops (in practice rank 0: the explosion guard, early
    stopping): one tiny all-reduce at each step the explosion guard can trip (every
    ``every``-th step, when the monitors run) and one at each epoch's end."""

    def __init__(self, context: DistributedContext, every: int | None):
        self.context = context
        self.every = every
        self.flags = torch.zeros(2, dtype=torch.int32, device=context.device)
        if every is None:  # no mid-epoch stop is possible: no per-batch work at all
            self.on_batch_end = Callback.on_batch_end.__get__(self)  # type: ignore[method-assign]

    def _agree(self, trainer: Trainer) -> None:
        state = trainer.state
        self.flags[0], self.flags[1] = int(state.stop), int(state.diverged)
        dist.all_reduce(self.flags, op=dist.ReduceOp.MAX)
        stop, diverged = (bool(v) for v in self.flags.tolist())
        if stop and not state.stop:
            state.stop, state.diverged = True, diverged
            state.stop_reason = state.stop_reason or "stopped with rank 0"

    def on_batch_end(self, trainer: Trainer, loss: torch.Tensor) -> None:
        # the monitor samples (and its guard can trip) at steps 1, 1 + every, 1 + 2 every, ...
        if (trainer.state.step - 1) % self.every == 0:
            self._agree(trainer)

    def on_epoch_end(self, trainer: Trainer, logs: dict[str, float]) -> None:
        self._agree(trainer)


class EpochSeed(Callback):
    """Seeds the global torch RNG (dropout, input noise) at the start of every epoch from
    (seed, rank, epoch).

    Ranks draw independent dropout masks, and a run restarted from a checkpoint (always
    written at an epoch's end) draws what the uninterrupted run drew: the checkpoint holds
    only rank 0's RNG state, and the other ranks' states are not needed."""

    def __init__(self, seed: int, rank: int):
        self.seed, self.rank = seed, rank

    def on_epoch_start(self, trainer: Trainer) -> None:
        entropy = np.random.SeedSequence([self.seed % 2**64, self.rank, trainer.state.epoch]).generate_state(1, np.uint64)
        torch.manual_seed(int(entropy[0]))


class _KillAtStep(Callback):
    """Test-only (``BABYSIT_TEST_KILL_AT_STEP``): SIGKILL this process after step N."""

    def __init__(self, step: int):
        self.step = step

    def on_batch_end(self, trainer: Trainer, loss: torch.Tensor) -> None:
        if trainer.state.step >= self.step:
            os.kill(os.getpid(), signal.SIGKILL)


def in_process_group(train: Callable[..., Any]) -> Callable[..., Any]:
    """Under torchrun, run ``train`` (babysit's ``run``) inside the process group, passing it
    ``cluster=``; alone, call it as it is. The group is left at the end, after a barrier when
    the run finished (see :meth:`DistributedContext.close`)."""

    @functools.wraps(train)
    def wrapper(spec: Any, *args: Any, **kwargs: Any) -> Any:
        if kwargs.get("cluster") is not None or world_size_from_environment() <= 1:
            return train(spec, *args, **kwargs)
        cluster = start(resolve_device(spec.train.device))
        finished = False
        try:
            result = train(spec, *args, **{**kwargs, "cluster": cluster})
            finished = True
            return result
        finally:
            if cluster is not None:
                cluster.close(finished)

    return wrapper


def start(device: torch.device) -> DistributedContext | None:
    """Join the torchrun group this process belongs to; None when it runs alone.

    ``device`` is the run's resolved device: CUDA means NCCL on ``cuda:LOCAL_RANK``, anything
    else gloo on the CPU. The group's store is torchrun's TCPStore (hosted by torchrun's
    agent; by rank 0 when started without one) under a prefix for this restart attempt.
    """
    world_size = world_size_from_environment()
    if world_size <= 1:
        return None
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    restart_count = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0"))
    if device.type == "cuda":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
        backend = "nccl"
    elif device.type == "cpu":
        backend = "gloo"
    else:
        raise BabysitError(f"train.device: {device.type} cannot train under torchrun; use cpu or cuda")
    agent_store = os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True"
    try:
        address, port = os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"])
    except KeyError as exc:
        raise BabysitError(f"{exc.args[0]}: not set; start distributed runs with torchrun") from None
    store = dist.TCPStore(address, port, world_size, is_master=not agent_store and rank == 0,
                          timeout=timedelta(minutes=30))
    dist.init_process_group(backend, store=dist.PrefixStore(f"babysit/attempt-{restart_count}", store),
                            rank=rank, world_size=world_size,
                            device_id=device if device.type == "cuda" else None)
    return DistributedContext(rank=rank, world_size=world_size, local_rank=local_rank,
                              restart_count=restart_count, device=device, store=store)
