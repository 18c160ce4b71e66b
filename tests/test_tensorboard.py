"""TensorBoard shows what the report shows: read back with TensorBoard's own event reader,
the event files hold the epoch scalars, the live monitors' per-layer scalars (the same
numbers as monitors.jsonl) and activation histograms, and the run's findings as text.
"""

from __future__ import annotations

import json

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import (
    HISTOGRAMS,
    SCALARS,
    TENSORS,
    EventAccumulator,
)
from torch import nn

from babysit import config
from babysit.checks.findings import findings_markdown
from babysit.data import Split
from babysit.data.batching import Batches
from babysit.run import run
from babysit.rundir import read_jsonl
from babysit.train.callbacks import (
    TENSORBOARD_STATISTICS,
    EarlyStopping,
    MetricsLogger,
    MonitorCallback,
    TensorBoardLogger,
    masked_crc32c,
)
from babysit.train.loop import Trainer

pytestmark = pytest.mark.usefixtures("one_thread")

EVERY = 5
BATCH = 32


def events(log_dir):
    """Every scalar, histogram and tensor (text) of a folder of event files."""
    accumulator = EventAccumulator(str(log_dir), size_guidance={SCALARS: 0, HISTOGRAMS: 0, TENSORS: 0})
    accumulator.Reload()
    return accumulator


def scalars(accumulator, tag):
    return {event.step: event.value for event in accumulator.Scalars(tag)}


def train(folder, *, monitors_first=False, epochs=4):
    """A ReLU layer and a tanh layer (dead and saturated fractions), monitored every 5 steps,
    with the callbacks wired as the runner wires them."""
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(400, 12, generator=gen)
    y = x[:, :3].argmax(1)
    x, y, val = x[:320], y[:320], Split(x[320:], y[320:])
    net = nn.Sequential(nn.Linear(12, 32), nn.ReLU(), nn.Linear(32, 16), nn.Tanh(), nn.Linear(16, 3))
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    metrics = MetricsLogger(folder / "metrics.jsonl")
    monitors = MonitorCallback(folder / "monitors.jsonl", every=EVERY)
    tensorboard = TensorBoardLogger(folder / "tb", monitors=monitors)
    callbacks = [metrics, monitors, tensorboard] if monitors_first else [metrics, tensorboard, monitors]
    trainer = Trainer(net, nn.CrossEntropyLoss(), opt, callbacks=[*callbacks, EarlyStopping(patience=None)],
                      predict=lambda out: out.argmax(-1))
    trainer.fit(Batches(x, y, BATCH, gen), epochs=epochs, val=val)  # 10 steps an epoch
    return folder


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    folder = train(tmp_path_factory.mktemp("tb"))
    return folder, events(folder / "tb"), read_jsonl(folder / "monitors.jsonl")


def test_epoch_scalars_are_the_logged_metrics(trained):
    folder, acc, _ = trained
    logged = read_jsonl(folder / "metrics.jsonl")
    assert len(logged) == 4
    for key, tag in (("train_loss", "train/loss"), ("train_acc", "train/acc"), ("val_loss", "val/loss"),
                     ("val_acc", "val/acc"), ("lr", "lr")):
        assert scalars(acc, tag) == {r["step"]: pytest.approx(r[key], rel=1e-6) for r in logged}


def test_every_monitor_number_is_a_scalar_equal_to_monitors_jsonl(trained):
    _, acc, records = trained
    assert [r["step"] for r in records] == [1, 6, 11, 16, 21, 26, 31, 36]
    tags = set(acc.Tags()["scalars"])
    assert scalars(acc, "monitors/loss") == {r["step"]: pytest.approx(r["loss"], rel=1e-6) for r in records}
    # the statistics the report draws, per layer: update ratio and gradient norm of the
    # linear layers, activation spread, dead and saturated fractions of the nonlinearities
    for name in ("monitors/0/update_ratio", "monitors/2/grad_norm", "monitors/1/act_std",
                 "monitors/1/dead_fraction", "monitors/3/saturated_fraction", "monitors/3/act_grad_rms"):
        assert name in tags
    compared = 0
    for layer in records[0]["layers"]:
        for key in TENSORBOARD_STATISTICS:
            if key not in records[0]["layers"][layer]:
                continue
            expected = {r["step"]: r["layers"][layer][key] for r in records if key in r["layers"][layer]}
            got = scalars(acc, f"monitors/{layer}/{key}")
            assert got.keys() == expected.keys()
            for step, value in expected.items():
                assert got[step] == pytest.approx(value, rel=1e-6, abs=1e-12), (layer, key, step)
                compared += 1
    assert compared == 8 * (3 * 2 + 4 + 4)  # 8 samples: 3 linear layers, a ReLU and a tanh (each with its dormant fraction)
    assert not any(tag.endswith(("/weight_norm", "/grad_rms", "/act_mean")) for tag in tags)  # jsonl only


def test_activation_histograms_count_every_sampled_activation(trained):
    _, acc, records = trained
    with_hist = [r for r in records if "hist" in r["layers"]["1"]]
    assert [r["step"] for r in with_hist] == [1]  # the first sample (then every 10th)
    for layer, width in (("1", 32), ("3", 16)):
        (event,) = acc.Histograms(f"monitors/{layer}/activations")
        hist, recorded = event.histogram_value, with_hist[0]["layers"][layer]
        assert event.step == 1
        assert sum(hist.bucket) == hist.num == BATCH * width  # every activation of the batch
        assert list(hist.bucket) == recorded["hist"]["counts"]
        assert hist.min == pytest.approx(recorded["hist"]["lo"]) and hist.max == pytest.approx(recorded["hist"]["hi"])
        assert len(hist.bucket_limit) == len(hist.bucket) and hist.bucket_limit[-1] == pytest.approx(hist.max)
        assert hist.sum / hist.num == pytest.approx(recorded["act_mean"], rel=1e-5, abs=1e-7)


def test_the_last_samples_reach_tensorboard_whichever_callback_ends_first(tmp_path):
    folder = train(tmp_path, monitors_first=True, epochs=2)
    records = read_jsonl(folder / "monitors.jsonl")
    assert sorted(scalars(events(folder / "tb"), "monitors/loss")) == [r["step"] for r in records] == [1, 6, 11, 16]


def test_a_run_shows_its_findings_as_text(tmp_path):
    spec = config.validate({"data": {"source": "spirals", "samples": 300}, "train": {"epochs": 3},
                            "optimizer": {"lr": 5.0}, "checks": {"every": 5}})
    result = run(spec, out=tmp_path / "run", quiet=True)
    acc = events(result.path / "tb")
    (text,) = acc.Tensors("findings/text_summary")
    shown = text.tensor_proto.string_val[0].decode()
    assert shown == findings_markdown(result.findings)
    assert result.findings and all(f"`{f.id}`" in shown for f in result.findings)
    assert text.step == result.summary["steps"]
    assert "val/loss" in acc.Tags()["scalars"]
    monitored = read_jsonl(result.path / "monitors.jsonl")
    assert sorted(scalars(acc, "monitors/loss")) == [r["step"] for r in monitored]  # the runner wires the monitors in
    assert json.loads((result.path / "findings.json").read_text())[0]["id"] == result.findings[0].id


def test_the_batched_checksum_is_tensorboards():
    from tensorboard.compat.tensorflow_stub.pywrap_tensorflow import masked_crc32c as tensorboards

    chunks = [bytes(range(n % 256)) * (1 + n // 256) for n in (0, 1, 7, 8, 300, 513, 1000)] + [b"\xff" * 40, b"abc"]
    assert masked_crc32c(chunks) == [tensorboards(chunk) for chunk in chunks]
    assert masked_crc32c([]) == []
