"""fp16 health (babysit.checks.precision): the loss scale and the skipped steps reach
metrics.jsonl, the fp16 layers' largest outputs reach monitors.jsonl, and ``fp16_overflow``
fires on networks built to overflow fp16 and not on a healthy fp16 run. All on the CPU, where
torch's fp16 autocast and GradScaler run as on a GPU."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

from babysit.checks.monitors import Monitor
from babysit.checks.precision import FP16_MAX, precision_findings
from babysit.config import validate
from babysit.data.batching import Batches
from babysit.run import run
from babysit.train.loop import Callback, Trainer

pytestmark = pytest.mark.usefixtures("one_thread")


def ids(found, at_least="warning"):
    order = ("info", "warning", "error")
    return {f.id for f in found if order.index(f.severity) >= order.index(at_least)}


# --------------------------------------------------------------------------- the rule on records


def test_the_rule_reads_each_sign_on_its_own():
    healthy = [{"epoch": e, "step": 100 * e, "grad_scale": 65536.0, "skipped_steps": 0} for e in (1, 2)]
    assert precision_findings(healthy, [], precision="fp16") == []
    low_scale = [{**healthy[0], "grad_scale": 0.5}, healthy[1]]
    (found,) = precision_findings(low_scale, [], precision="fp16")
    assert found.evidence["min_grad_scale"] == 0.5 and "0.5" in found.message
    # beyond the 16 skips calibration may take: 16 + 11 of 200 steps (5.5%) fires; 16 + 10 (5%) does not
    assert ids(precision_findings([{**healthy[0], "skipped_steps": 27}, healthy[1]], [], precision="fp16"))
    assert not precision_findings([{**healthy[0], "skipped_steps": 26}, healthy[1]], [], precision="fp16")
    monitors = [{"step": 1, "layers": {"fc1": {"act_absmax": FP16_MAX / 2 - 1}, "fc2": {"act_absmax": 3.0}}}]
    assert precision_findings(healthy, monitors, precision="fp16") == []
    monitors[0]["layers"]["fc1"]["act_absmax"] = FP16_MAX / 2
    (found,) = precision_findings(healthy, monitors, precision="fp16")
    assert found.layer == "fc1" and found.evidence["activation_absmax"] == {"fc1": FP16_MAX / 2}
    # only fp16 runs: bf16 has fp32's range
    assert precision_findings(low_scale, monitors, precision="bf16") == []


def test_the_rule_survives_damaged_records():
    metrics = [None, {"epoch": 1, "grad_scale": None, "skipped_steps": "x", "step": 3}, {"epoch": 2}]
    monitors = [{"step": 1}, {"layers": {"a": None, "b": {"act_absmax": None}}}, "junk"]
    assert precision_findings(metrics, monitors, precision="fp16") == []


# --------------------------------------------------------------------------- the loop and the monitors


class Loud(nn.Module):
    """A hidden layer whose outputs sit near ``level`` (a finite fp16 number), then a small readout."""

    def __init__(self, level: float):
        super().__init__()
        self.fc1, self.act, self.fc2 = nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3)
        with torch.no_grad():
            self.fc1.weight.zero_()
            self.fc1.bias.fill_(level)
            self.fc2.weight.mul_(1e-6)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


class Records(Callback):
    def __init__(self):
        self.logs = []

    def on_epoch_end(self, trainer, logs):
        self.logs.append(dict(logs))


def fit(model, precision, epochs=2, lr=1e-3):
    gen = torch.Generator().manual_seed(0)
    x, y = torch.randn(256, 8, generator=gen), torch.randint(0, 3, (256,), generator=gen)
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    records = Records()
    trainer = Trainer(model, nn.CrossEntropyLoss(), optimizer, precision=precision, callbacks=[records])
    monitor = Monitor(model, optimizer, every=4)

    class Watch(Callback):
        def on_batch_end(self, trainer, loss):
            monitor.observe_loss(loss)

    trainer.callbacks.append(Watch())
    trainer.fit(Batches(x, y, 32, gen), epochs=epochs)
    monitor.detach()
    return records.logs, monitor.records


def test_fp16_runs_write_the_scale_and_skipped_steps():
    logs, records = fit(Loud(1.0), "fp16")
    # the scale calibrates down from 2^16 in the first steps (each halving skips one), then holds
    skipped = [log["skipped_steps"] for log in logs]
    assert skipped[1] == 0 and logs[0]["grad_scale"] == 65536.0 / 2 ** skipped[0] == logs[1]["grad_scale"]
    assert all("act_absmax" in r["layers"]["act"] for r in records)
    # fp32 writes neither
    logs, records = fit(Loud(1.0), "fp32")
    assert "grad_scale" not in logs[0] and "act_absmax" not in records[0]["layers"]["act"]


def test_a_layer_near_fp16s_largest_value_is_found():
    logs, records = fit(Loud(40000.0), "fp16")
    peak = max(r["layers"]["act"]["act_absmax"] for r in records)
    assert 30000 < peak < FP16_MAX  # finite in fp16, within 2x of its largest value
    (found,) = precision_findings(logs, records, precision="fp16")
    assert found.id == "fp16_overflow" and found.layer in ("fc1", "act")
    logs, records = fit(Loud(100.0), "fp16")  # the same net, far from the ceiling
    assert precision_findings(logs, records, precision="fp16") == []


def test_gradients_that_overflow_are_skipped_and_found():
    # a loss multiplied by 1e5: at any scale >= 1 its gradients pass 65504 in the fp16 backward of the
    # readout, so every step is skipped and the scale halves each step down below 1
    model = Loud(1.0)
    with torch.no_grad():
        model.fc2.weight.normal_(0, 1.0)

    class Huge(nn.Module):
        def forward(self, out, y):
            return 1e5 * nn.functional.cross_entropy(out, y) + (out.float() * 1e3).pow(2).mean()

    gen = torch.Generator().manual_seed(0)
    x, y = torch.randn(256, 8, generator=gen), torch.randint(0, 3, (256,), generator=gen)
    records = Records()
    trainer = Trainer(model, Huge(), torch.optim.SGD(model.parameters(), lr=1e-3), precision="fp16",
                      callbacks=[records])
    before = [p.detach().clone() for p in model.parameters()]
    trainer.fit(Batches(x, y, 32, gen), epochs=3)
    skipped = sum(log["skipped_steps"] for log in records.logs)
    assert skipped > 0.05 * trainer.state.step
    assert records.logs[-1]["grad_scale"] < 1
    (found,) = precision_findings(records.logs, [], precision="fp16")
    assert "skipped" in found.message and found.evidence["min_grad_scale"] < 1
    # a skipped step leaves the weights as they were
    if skipped == trainer.state.step:
        assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))


# --------------------------------------------------------------------------- through the run path


def spec_for(path, precision="fp16", **model):
    return validate({"name": "fp16", "seed": 0,
                     "data": {"source": "npz", "path": str(path), "preprocess": [], "batch_size": 64},
                     "model": {"kind": "mlp", "hidden": [32], **model},
                     "optimizer": {"name": "adam", "lr": 1e-2}, "train": {"epochs": 4, "precision": precision},
                     "checks": {"every": 2, "preflight": False}})


def blobs(tmp_path, scale):
    """Three separable blobs in 8-D, inputs times ``scale``."""
    gen = np.random.default_rng(0)
    centres = gen.normal(size=(3, 8)) * 3
    y = gen.integers(0, 3, 600)
    x = (centres[y] + gen.normal(size=(600, 8))) * scale
    path = tmp_path / f"blobs{scale:g}.npz"
    np.savez(path, x=x.astype(np.float32), y=y)
    return path


def test_an_fp16_run_whose_inputs_overflow_gets_the_finding(tmp_path):
    loud = run(spec_for(blobs(tmp_path, 3e3)), tmp_path / "loud", quiet=True, report=False)
    found = {f.id: f for f in loud.findings}
    assert "fp16_overflow" in found, [f.id for f in loud.findings]
    metrics = [json.loads(line) for line in (loud.path / "metrics.jsonl").read_text().splitlines()]
    assert any("grad_scale" in m and "skipped_steps" in m for m in metrics)


def test_a_healthy_fp16_run_gets_no_overflow_finding(tmp_path):
    quiet = run(spec_for(blobs(tmp_path, 1.0)), tmp_path / "quiet", quiet=True, report=False)
    assert "fp16_overflow" not in {f.id for f in quiet.findings}
    assert quiet.summary["test_acc"] > 0.9
