"""babysit's training loop against a tight hand-written PyTorch loop.

Same model (built by babysit's builder from the same seed), same in-memory MNIST-1D tensors,
same batch size, steps, optimizer and shuffling generator; both evaluate the validation
split once an epoch, as any loop that reports progress does. babysit's loop runs with the
callbacks ``babysit train`` uses (metrics.jsonl, TensorBoard, early-stopping bookkeeping,
checkpoints) minus the progress bar, writing to a temporary folder. The two are timed
alternately (ABBA order), ``REPEATS`` times each; the figure is the median of the
ratios of neighbouring runs.

Prints one JSON line: per model the wall-time ratio babysit / hand-written (target <= 1.05)
and the difference of the final validation loss (target <= 1e-6).

    python benchmarks/loop_overhead.py
"""

from __future__ import annotations

import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

from babysit import config, data, nets
from babysit.data.batching import Batches
from babysit.optim import losses, optimizers
from babysit.train.callbacks import (
    Checkpointer,
    EarlyStopping,
    MetricsLogger,
    MonitorCallback,
    TensorBoardLogger,
)
from babysit.train.loop import Callback, Trainer

REPEATS = {"mlp": 20, "cnn": 16}
EPOCHS = {"mlp": 150, "cnn": 30}
BATCH = 100
SEED = 0


def make_spec(kind: str) -> config.Experiment:
    model = {"kind": kind, "hidden": [100, 100]} if kind == "mlp" else {"kind": kind, "channels": [25, 25, 25]}
    return config.validate({
        "seed": SEED, "model": model, "optimizer": {"name": "adam", "lr": 1e-3},
        "data": {"batch_size": BATCH}, "train": {"epochs": EPOCHS[kind], "early_stopping": {"patience": None}},
    })


def build(spec: config.Experiment, splits: data.Splits) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(SEED)
    model = nets.build(spec.model, splits.input_shape, splits.num_classes)
    return model, optimizers.build_optimizer(spec.optimizer, model)


def hand_written(spec: config.Experiment, splits: data.Splits) -> tuple[float, float]:
    model, _ = build(spec, splits)
    # the same torch optimizer class and kernel flags babysit picked, on plain model.parameters()
    reference = optimizers.build_optimizer(spec.optimizer, model)
    flags = {k: reference.defaults[k] for k in ("fused", "foreach") if reference.defaults.get(k) is not None}
    opt = torch.optim.Adam(model.parameters(), lr=spec.optimizer.lr, **flags)
    x, y = splits.train.x, splits.train.y
    xv, yv = splits.val.x, splits.val.y
    g = torch.Generator().manual_seed(SEED)
    n = len(x)
    start = time.perf_counter()
    for _ in range(spec.train.epochs):
        model.train()
        perm = torch.randperm(n, generator=g, device=x.device)
        xs, ys = x[perm], y[perm]
        for i in range(0, n, BATCH):
            loss = F.cross_entropy(model(xs[i : i + BATCH]), ys[i : i + BATCH])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        model.eval()
        with torch.no_grad():
            out = model(xv)
            val_loss = F.cross_entropy(out, yv).item()
            _val_acc = (out.argmax(-1) == yv).float().mean().item()
    return time.perf_counter() - start, val_loss


def babysit_loop(spec: config.Experiment, splits: data.Splits, folder: Path,
                 monitored: Callable[[Path], MonitorCallback] | None = None) -> tuple[float, float]:
    """``monitored(folder)`` adds the live monitors, wired as the runner wires them
    (monitor_overhead.py)."""
    model, opt = build(spec, splits)
    g = torch.Generator().manual_seed(SEED)
    batches = Batches(splits.train.x, splits.train.y, BATCH, g)
    early = EarlyStopping("val_loss", patience=None)
    metrics = MetricsLogger(folder / "metrics.jsonl")
    monitors = monitored(folder) if monitored is not None else None
    callbacks: list[Callback] = [  # as babysit.run.run sets them up, less the progress bar
        metrics,
        TensorBoardLogger(folder / "tb", monitors=monitors),
        *([monitors] if monitors is not None else []),
        early,
        Checkpointer(folder / "checkpoints", generator=g, epochs=spec.train.epochs, early_stopping=early,
                     before_save=[metrics.flush] + ([monitors.flush] if monitors is not None else [])),
    ]
    loss_fn = losses.build_loss("cross_entropy", splits.task, splits.num_classes)
    trainer = Trainer(model, loss_fn, opt, callbacks=callbacks, predict=lambda out: losses.predict(out, "cross_entropy"))
    start = time.perf_counter()
    state = trainer.fit(batches, spec.train.epochs, splits.val)
    return time.perf_counter() - start, state.logs["val_loss"]


def measure(kind: str) -> dict[str, float]:
    spec = make_spec(kind)
    splits = data.load(spec.data)  # split_seed 0
    with tempfile.TemporaryDirectory() as tmp:
        babysit_loop(spec, splits, Path(tmp) / "warmup")  # imports, allocator, TensorBoard writer
        hand_written(spec, splits)
        ours, theirs = [], []
        for r in range(REPEATS[kind]):  # alternate, and swap who goes first every repeat (ABBA)
            order = ("babysit", "hand") if r % 2 == 0 else ("hand", "babysit")
            for who in order:
                if who == "babysit":
                    t, ours_loss = babysit_loop(spec, splits, Path(tmp) / f"run{r}")
                    ours.append(t)
                else:
                    t, theirs_loss = hand_written(spec, splits)
                    theirs.append(t)
    steps = spec.train.epochs * -(-len(splits.train) // BATCH)
    return {
        # each babysit run is paired with the hand-written run next to it in time, so drifts of
        # a shared machine cancel in the ratio; the median of those ratios is the figure
        "ratio": round(statistics.median(a / b for a, b in zip(ours, theirs, strict=True)), 4),
        "ratio_of_medians": round(statistics.median(ours) / statistics.median(theirs), 4),
        "ratio_of_minimums": round(min(ours) / min(theirs), 4),
        "babysit_ms_per_step": round(1000 * statistics.median(ours) / steps, 4),
        "hand_ms_per_step": round(1000 * statistics.median(theirs) / steps, 4),
        "final_val_loss_diff": abs(ours_loss - theirs_loss),
        "steps": steps,
        "repeats": REPEATS[kind],
    }


def main() -> None:
    torch.set_num_threads(max(1, torch.get_num_threads()))
    result = {"benchmark": "loop_overhead", "torch": torch.__version__, "threads": torch.get_num_threads(),
              "batch_size": BATCH}
    for kind in ("mlp", "cnn"):
        result[kind] = measure(kind)
    print(json.dumps(result))
    ok = all(result[k]["final_val_loss_diff"] <= 1e-6 for k in ("mlp", "cnn"))
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
