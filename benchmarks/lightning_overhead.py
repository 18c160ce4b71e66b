"""The Lightning callback's cost: the same LightningModule and Trainer on MNIST-1D with
``callbacks=[Babysitter()]`` and without.

The module is a small MLP (40 -> 100 -> 100 -> 10, ReLU, Adam 1e-3) on babysit's MNIST-1D splits
(``babysit.data.load(DataSpec(source="mnist1d"))``, standardised) as TensorDatasets in
DataLoaders (batch 128, shuffled), with validation each epoch and no logger, checkpointing or
progress bar, on the CPU with one thread (the machine's other work shakes multi-threaded
timings). The callback runs as a user gets it: preflight on the first batch, the monitors every
10 steps, the curve diagnosis and the run directory; only the report is off, since drawing it
(about 1.3 s, once, after the fit) is not training time; its time and the preflight's are
reported apart. Fits are timed alternately (ABBA) in the same process after a warm-up; the
figure is the median of the ratios of neighbouring fits.

Prints one JSON line. Target: ratio <= 1.10.

    python benchmarks/lightning_overhead.py
"""

from __future__ import annotations

import json
import logging
import statistics
import tempfile
import time
import warnings
from pathlib import Path

import pytorch_lightning as pl
import torch
from torch import nn

from babysit.config import DataSpec
from babysit.data import load
from babysit.lightning import Babysitter, lightning_preflight
from babysit.run.runner import write_report

REPEATS = 8
EPOCHS = 30
BATCH = 128


class MLP(pl.LightningModule):
    def __init__(self, inputs: int, classes: int):
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(inputs, 100), nn.ReLU(), nn.Linear(100, 100), nn.ReLU(),
                                 nn.Linear(100, classes))

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = nn.functional.cross_entropy(self(x), y)
        self.log("train_loss", loss, on_step=False, on_epoch=True)
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        out = self(x)
        self.log("val_loss", nn.functional.cross_entropy(out, y))
        self.log("val_acc", (out.argmax(1) == y).float().mean())

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=1e-3)


def fit(splits, out: Path | None) -> tuple[float, MLP]:
    torch.manual_seed(0)
    module = MLP(splits.train.x[0].numel(), int(splits.train.y.max()) + 1)
    train = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(splits.train.x, splits.train.y),
                                        batch_size=BATCH, shuffle=True)
    val = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(splits.val.x, splits.val.y), batch_size=1024)
    callbacks = [Babysitter(out=out, report=False, quiet=True)] if out is not None else []
    trainer = pl.Trainer(max_epochs=EPOCHS, callbacks=callbacks, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, accelerator="cpu", devices=1)
    start = time.perf_counter()
    trainer.fit(module, train, val)
    return time.perf_counter() - start, module


def main() -> None:
    warnings.filterwarnings("ignore")
    logging.getLogger("pytorch_lightning").setLevel(logging.ERROR)
    torch.set_num_threads(1)
    splits = load(DataSpec(source="mnist1d"))
    times: dict[str, list[float]] = {"on": [], "off": []}
    with tempfile.TemporaryDirectory() as tmp:
        fit(splits, Path(tmp) / "warmup")
        fit(splits, None)
        for r in range(REPEATS):
            for which in (("on", "off") if r % 2 == 0 else ("off", "on")):
                seconds, module = fit(splits, Path(tmp) / f"on{r}" if which == "on" else None)
                times[which].append(seconds)
        batch = (splits.train.x[:BATCH], splits.train.y[:BATCH])
        start = time.perf_counter()
        lightning_preflight(module, batch)
        preflight_s = time.perf_counter() - start
        start = time.perf_counter()
        write_report(Path(tmp) / "on0")
        report_s = time.perf_counter() - start
        findings = [f["id"] for f in json.loads((Path(tmp) / "on0" / "findings.json").read_text())]
    steps = EPOCHS * -(-len(splits.train) // BATCH)
    print(json.dumps({
        "benchmark": "lightning_overhead",
        "ratio": round(statistics.median(a / b for a, b in zip(times["on"], times["off"], strict=True)), 4),
        "ratio_of_minimums": round(min(times["on"]) / min(times["off"]), 4),
        "on_s": round(statistics.median(times["on"]), 3),
        "off_s": round(statistics.median(times["off"]), 3),
        "off_ms_per_step": round(1000 * statistics.median(times["off"]) / steps, 3),
        "preflight_s": round(preflight_s, 3),
        "report_s": round(report_s, 3),
        "steps": steps,
        "epochs": EPOCHS,
        "repeats": REPEATS,
        "findings": findings,
        "lightning": pl.__version__,
        "torch": torch.__version__,
    }))


if __name__ == "__main__":
    main()
