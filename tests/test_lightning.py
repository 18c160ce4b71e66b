"""babysit.lightning.Babysitter in a real Lightning Trainer (single process, CPU): preflight on
the first batch with the module's own training_step loss, monitors, the explosion stop, the
Trainer's loggers, the curve diagnosis and the run directory."""

from __future__ import annotations

import json
import logging
import warnings

import pytest
import torch
from torch import nn

pl = pytest.importorskip("pytorch_lightning")

from babysit.lightning import Babysitter, epoch_scalars, lightning_preflight  # noqa: E402
from babysit.rundir import read_json  # noqa: E402

pytestmark = [pytest.mark.usefixtures("one_thread"),
              pytest.mark.filterwarnings("ignore::UserWarning"),  # Lightning's advice (workers, logging)
              pytest.mark.filterwarnings("ignore::DeprecationWarning"),
              pytest.mark.filterwarnings("ignore::FutureWarning")]
logging.getLogger("pytorch_lightning").setLevel(logging.ERROR)


class Digits(pl.LightningModule):
    """A small MLP on sklearn's digits, as a user would write it."""

    def __init__(self, lr: float = 3e-3, dead: bool = False, optimizer: str = "adam"):
        super().__init__()
        self.lr, self.optimizer_name = lr, optimizer
        self.net = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))
        self.correct, self.seen, self.train_accuracies = 0, 0, []
        if dead:  # planted: every first-layer unit starts far below zero, so the ReLUs never fire
            with torch.no_grad():
                self.net[0].bias.fill_(-10.0)

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        out = self(x)
        loss = nn.functional.cross_entropy(out, y)
        self.log("train_loss", loss, on_step=False, on_epoch=True)
        self.correct += int((out.argmax(1) == y).sum())
        self.seen += len(y)
        return loss

    def on_train_epoch_end(self):  # an epoch figure logged where many modules log them: after the callbacks' hook
        self.train_accuracies.append(self.correct / self.seen)
        self.log("train_acc", self.correct / self.seen)
        self.correct = self.seen = 0

    def validation_step(self, batch, batch_idx):
        x, y = batch
        out = self(x)
        self.log("val_loss", nn.functional.cross_entropy(out, y))
        self.log("val_acc", (out.argmax(1) == y).float().mean())

    def configure_optimizers(self):
        if self.optimizer_name == "sgd":
            return torch.optim.SGD(self.parameters(), lr=self.lr)
        return torch.optim.Adam(self.parameters(), lr=self.lr)


@pytest.fixture(scope="module")
def digits():
    from sklearn.datasets import load_digits

    data = load_digits()
    x = torch.tensor(data.data, dtype=torch.float32)
    x = (x - x.mean(0)) / (x.std(0) + 1e-6)  # standardised (constant border pixels stay 0)
    y = torch.tensor(data.target)
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
    return (x[order[:1500]], y[order[:1500]]), (x[order[1500:]], y[order[1500:]])


def loaders(digits, shuffle: bool = True):
    (xt, yt), (xv, yv) = digits
    train = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(xt, yt), batch_size=64, shuffle=shuffle)
    val = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(xv, yv), batch_size=256)
    return train, val


def trainer(epochs: int, callbacks=(), logger=False) -> pl.Trainer:
    return pl.Trainer(max_epochs=epochs, callbacks=list(callbacks), logger=logger, enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False, accelerator="cpu", devices=1)


class RecordingLogger(pl.loggers.Logger):
    """A logger that keeps what it is given (no text tab: add_text is not there)."""

    def __init__(self):
        super().__init__()
        self.metrics: list[tuple[int, dict]] = []

    @property
    def name(self):
        return "recording"

    @property
    def version(self):
        return 0

    def log_hyperparams(self, params, *args, **kwargs):
        pass

    def log_metrics(self, metrics, step=None):
        self.metrics.append((step, dict(metrics)))


def finding_ids(path) -> list[str]:
    return [f["id"] for f in json.loads((path / "findings.json").read_text())]


def test_a_planted_dead_relu_init_is_found(tmp_path, digits):
    torch.manual_seed(0)
    sitter = Babysitter(out=tmp_path / "dead", report=False, quiet=True)
    trainer(2, [sitter]).fit(Digits(dead=True), *loaders(digits))
    found = json.loads((tmp_path / "dead" / "findings.json").read_text())
    dead = [f for f in found if f["id"] == "dead_relu"]
    assert dead and dead[0]["layer"] == "net.1" and dead[0]["severity"] in ("warning", "error")
    # the preflight saw it too, on training_step's loss: a net of dead units cannot memorise 20 examples
    assert "cannot_overfit_tiny_subset" in [f.id for f in sitter.preflight_found]


def test_a_healthy_module_gets_no_warning_and_a_report(tmp_path, digits):
    torch.manual_seed(0)
    tensorboard = pl.loggers.TensorBoardLogger(tmp_path, name="logs")
    recording = RecordingLogger()
    sitter = Babysitter(every=5, quiet=True)  # the default directory: beside the first logger's files
    fit = trainer(4, [sitter], logger=[tensorboard, recording])
    module = Digits()
    fit.fit(module, *loaders(digits))
    path = sitter.path
    assert path == tmp_path / "logs" / "version_0" / "babysit"
    found = json.loads((path / "findings.json").read_text())
    assert [f["id"] for f in found if f["severity"] != "info"] == [], found
    assert sitter.preflight_skipped == {}  # every preflight check applied to this module
    assert (path / "report.html").is_file()
    assert "recorded_by: lightning" in (path / "config.yaml").read_text()
    summary = read_json(path / "summary.json")
    assert summary["epochs"] == 4 and summary["steps"] == fit.global_step == 4 * 24
    history = [json.loads(line) for line in (path / "metrics.jsonl").read_text().splitlines()]
    assert {"train_loss", "val_loss", "val_acc", "train_acc"} <= set(history[-1])
    # each epoch's own figures, also those the module logs in its on_train_epoch_end (after this callback's)
    assert [h["train_acc"] for h in history] == pytest.approx(module.train_accuracies)
    assert history[-1]["val_acc"] > 0.9  # 0.939-0.956 over seeds 0-7 (mean 0.948, sd 0.005)
    # the Trainer's loggers got the monitors' per-layer figures at the sampled steps, and the findings' count
    logged = {key: step for step, metrics in recording.metrics for key in metrics}
    assert "babysit/update_ratio/net.0" in logged and "babysit/dead_fraction/net.1" in logged
    assert recording.metrics[-1][1]["babysit/findings/warning"] == 0.0
    sampled_steps = sorted({step for step, metrics in recording.metrics if "babysit/update_ratio/net.0" in metrics})
    assert sampled_steps == list(range(0, 4 * 24, 5))
    assert list((tmp_path / "logs" / "version_0").glob("events.out.tfevents.*"))


def test_an_exploding_run_is_stopped_early(tmp_path, digits):
    torch.manual_seed(0)
    sitter = Babysitter(out=tmp_path / "boom", every=2, report=False, quiet=True)
    fit = trainer(5, [sitter])
    fit.fit(Digits(lr=20.0, optimizer="sgd"), *loaders(digits))
    assert fit.should_stop and fit.current_epoch < 5
    summary = read_json(tmp_path / "boom" / "summary.json")
    assert summary["stopped_early"] and summary["stop_reason"].startswith("loss_exploded")
    assert summary["steps"] < 24  # stopped within the first epoch
    assert finding_ids(tmp_path / "boom")[0] == "loss_exploded"


class FailsInEpochTwo(Digits):
    def training_step(self, batch, batch_idx):
        if self.current_epoch == 1 and batch_idx == 3:
            raise RuntimeError("the user's bug")
        return super().training_step(batch, batch_idx)


def test_a_failed_fit_keeps_its_run_directory(tmp_path, digits):
    torch.manual_seed(0)
    sitter = Babysitter(out=tmp_path / "failed", report=False, quiet=True)
    with pytest.raises(RuntimeError, match="the user's bug"):
        trainer(3, [sitter]).fit(FailsInEpochTwo(), *loaders(digits))
    summary = read_json(tmp_path / "failed" / "summary.json")
    assert summary["epochs"] == 1 and summary["steps"] == 24 + 3
    assert (tmp_path / "failed" / "findings.json").is_file() and (tmp_path / "failed" / "checkpoints" / "last.pt").is_file()


def test_the_callback_leaves_the_training_as_it_was(tmp_path, digits):
    """Same seed, with and without the callback (preflight on): the same weights at the end:
    the preflight works on copies and restores every random number generator, and the monitors
    only read."""
    weights = []
    for callbacks in ([], [Babysitter(out=tmp_path / "run", report=False, quiet=True)]):
        torch.manual_seed(0)
        module = Digits()
        trainer(1, callbacks).fit(module, loaders(digits)[0])
        weights.append({k: v.clone() for k, v in module.state_dict().items()})
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])


class DictBatch(pl.LightningModule):
    """A module whose batches are dicts and whose loss ignores its forward: the forward checks
    cannot apply, the loss checks run on training_step itself."""

    def __init__(self, broken: bool):
        super().__init__()
        self.broken = broken
        self.net = nn.Sequential(nn.Linear(4, 32), nn.Tanh(), nn.Linear(32, 3))

    def training_step(self, batch, batch_idx):
        logits = self.net(batch["features"])
        if self.broken:  # a detach() in the wrong place: nothing upstream of the loss learns
            logits = logits.detach() + 0 * self.net[2].bias.sum()
        return {"loss": nn.functional.cross_entropy(logits, batch["label"]), "n": len(logits)}


def test_preflight_on_training_step_with_any_batch_and_no_side_effects():
    torch.manual_seed(0)
    x = torch.randn(32, 4)
    batch = {"features": x, "label": x[:, :3].argmax(1), "names": ["a"] * 32}
    # the detach hides the gradient from backprop, which finite differences still see
    for broken, expected in ((False, []), (True, ["cannot_overfit_tiny_subset", "gradient_check_failed"])):
        module = DictBatch(broken)
        before = {k: v.clone() for k, v in module.state_dict().items()}
        rng = torch.get_rng_state()
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # self.log() without a trainer would warn: preflight keeps it quiet
            found, skipped = lightning_preflight(module, batch)
        assert sorted(f.id for f in found) == expected
        assert set(skipped) == {"inputs_not_normalized", "symmetric_init", "batch_mixing", "initial_loss_off"}
        assert all(torch.equal(before[k], v) for k, v in module.state_dict().items())
        assert torch.equal(rng, torch.get_rng_state()) and module.training


class WrongGradient(torch.autograd.Function):
    """y = 2x with a backward of 3 * grad: a wrong gradient."""

    @staticmethod
    def forward(ctx, x):
        return 2 * x

    @staticmethod
    def backward(ctx, grad):
        return 3 * grad


class BadBackward(pl.LightningModule):
    def __init__(self):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(4, 8), nn.Linear(8, 3)

    def forward(self, x):
        return self.fc2(WrongGradient.apply(self.fc1(x)).tanh())

    def training_step(self, batch, batch_idx):
        x, y = batch
        return nn.functional.cross_entropy(self(x), y)


def test_the_gradient_check_names_the_modules_own_layer():
    torch.manual_seed(0)
    x = torch.randn(32, 4)
    found, skipped = lightning_preflight(BadBackward(), (x, x[:, :3].argmax(1)))
    bad = [f for f in found if f.id == "gradient_check_failed"]
    assert skipped == {} and bad and bad[0].layer == "fc1"  # not "module.fc1" (the wrapper's name)
    assert "'module." not in bad[0].message


def test_epoch_metrics_are_read_as_the_diagnosis_names_them():
    metrics = {"train_loss_step": torch.tensor(0.9), "train_loss_epoch": torch.tensor(0.5),
               "train_loss": torch.tensor(0.7), "validation/loss": 0.25, "val_accuracy": 0.75, "step": 3}
    assert epoch_scalars(metrics) == {"train_loss": 0.5, "val_loss": 0.25, "val_acc": 0.75}
