"""The input-bound check (babysit.checks.input_bound): the loop's timing of the wait for data at
the sampled steps, the rule over metrics.jsonl, and a run fed by a slow iterable."""

from __future__ import annotations

import json
import time

import pytest
import torch
from torch import nn

from babysit.checks.input_bound import INPUT_WAIT_FRACTION, MIN_SAMPLES, input_bound_findings
from babysit.config import Experiment
from babysit.data.batching import Batches
from babysit.report.html import finding_figure
from babysit.run import runner
from babysit.rundir import read_run
from babysit.train.loop import Trainer

pytestmark = pytest.mark.usefixtures("one_thread")
SLEEP_S = 0.005  # per batch: far longer than a step of the small networks below (well under 1 ms)


def epoch(n, wait, samples):
    return {"epoch": n, "step": 10 * n, "input_wait": wait, "input_wait_samples": samples}


def test_the_rule_fires_above_30_percent_over_enough_samples():
    found = input_bound_findings([epoch(1, 0.5, 3), epoch(2, 0.3, 3)])
    assert [f.id for f in found] == ["input_bound"] and found[0].severity == "warning"
    evidence = found[0].evidence
    assert evidence["input_wait"] == pytest.approx(0.4) and evidence["sampled_steps"] == 6
    assert evidence["epochs"] == 2 and evidence["worst_epoch"] == 1 and evidence["threshold"] == INPUT_WAIT_FRACTION
    assert "data.workers" in found[0].advice and "data.in_memory_limit" in found[0].advice
    assert input_bound_findings([epoch(1, 0.9, MIN_SAMPLES - 1)]) == []  # too few samples to say
    assert input_bound_findings([epoch(1, 0.3, 50)]) == []  # at the bar: not above it
    # records without a timing (a GAN's, an older run's, events) are passed by
    assert input_bound_findings([{"event": "loss_spike", "step": 3}, {"epoch": 1, "train_loss": 1.0},
                                 epoch(2, None, 5)]) == []


class Slow:
    """Batches that take SLEEP_S to fetch each: a loader that cannot keep up (the rest as ``batches``)."""

    def __init__(self, batches):
        self.batches = batches

    def __iter__(self):
        for batch in self.batches:
            time.sleep(SLEEP_S)
            yield batch

    def __len__(self):
        return len(self.batches)

    def __getattr__(self, name):
        return getattr(self.batches, name)


def test_the_loop_times_the_sampled_steps_only_and_logs_the_wait_per_epoch():
    x, y = torch.randn(256, 8), torch.randint(0, 2, (256,))
    model = nn.Linear(8, 2)
    trainer = Trainer(model, nn.CrossEntropyLoss(), torch.optim.SGD(model.parameters(), lr=0.1), input_wait_every=3)
    state = trainer.fit(Slow(Batches(x, y, 32, torch.Generator().manual_seed(0))), epochs=2)
    logs = state.logs
    assert logs["input_wait_samples"] == 3  # steps 8..15 of the second epoch: 9, 12, 15
    assert logs["input_wait"] > 0.5  # measured: about 0.95 (5 ms asleep against a step of ~0.1 ms)
    plain = Trainer(model, nn.CrossEntropyLoss(), torch.optim.SGD(model.parameters(), lr=0.1))
    assert "input_wait" not in plain.fit(Batches(x, y, 32, torch.Generator()), epochs=1).logs  # not asked: no timing


def spirals(**checks):
    return Experiment(seed=0, data={"source": "spirals", "samples": 600, "batch_size": 32},
                      model={"hidden": [32]}, train={"epochs": 2, "device": "cpu"},
                      checks={"preflight": False, "every": 2, **checks})


def test_a_run_fed_by_a_slow_loader_gets_input_bound_with_its_figure(tmp_path, monkeypatch):
    assemble = runner.assemble

    def slowly(*args, **kwargs):  # the run's own batches, each fetched SLEEP_S late
        built = assemble(*args, **kwargs)
        built.batches = Slow(built.batches)
        return built

    monkeypatch.setattr(runner, "assemble", slowly)
    result = runner.run(spirals(), out=tmp_path / "r", quiet=True, report=False)
    found = {f.id: f for f in result.findings}
    assert "input_bound" in found, sorted(found)
    assert found["input_bound"].evidence["input_wait"] > 0.5  # measured about 0.9
    assert found["input_bound"].evidence["sampled_steps"] >= MIN_SAMPLES
    assert finding_figure(found["input_bound"].to_dict(), read_run(tmp_path / "r")) is not None


def test_the_in_memory_path_on_mnist1d_is_not_input_bound(tmp_path):
    spec = Experiment(seed=0, data={"source": "mnist1d"}, train={"epochs": 3, "device": "cpu"},
                      checks={"preflight": False})
    result = runner.run(spec, out=tmp_path / "r", quiet=True, report=False)
    assert "input_bound" not in [f.id for f in result.findings]
    records = [json.loads(line) for line in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()]
    waits = [r["input_wait"] for r in records if "input_wait" in r]
    assert len(waits) == 3 and max(waits) < INPUT_WAIT_FRACTION  # measured: about 0.01 (views of a tensor)
