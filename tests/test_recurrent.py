"""Recurrent nets (rnn, gru, lstm): how a sequence is read, what the classifier and the language
model see, clipping on by default, the monitors on the recurrent weights, every check on a
real run, and the GRU on MNIST-1D against the published baseline (slow).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from babysit import config
from babysit.checks.monitors import Monitor
from babysit.config import ModelSpec, validate
from babysit.data.batching import Batches
from babysit.errors import BabysitError
from babysit.nets import build
from babysit.nets.recurrent import _to_sequence, sequence_layout
from babysit.optim import losses
from babysit.run import prepare, run
from babysit.train import Trainer
from helpers import run_cli

pytestmark = pytest.mark.usefixtures("one_thread")

EXAMPLE = Path(__file__).parent.parent / "examples" / "mnist1d-gru.yaml"


def small(kind: str, **fields) -> ModelSpec:
    return ModelSpec(kind=kind, hidden=fields.pop("hidden", [8]), **fields)


# --------------------------------------------------------------------------- reading a sequence


def test_examples_become_sequences_of_steps():
    x = torch.arange(2 * 3 * 5, dtype=torch.float32).reshape(2, 3, 5)
    assert sequence_layout((40,)) == (40, 1) and sequence_layout((3, 5)) == (5, 3)
    seq = _to_sequence(x, (3, 5))  # a 3-channel signal of length 5: 5 steps of 3 channels
    assert seq.shape == (2, 5, 3) and torch.equal(seq[:, 2], x[:, :, 2])
    rows = _to_sequence(torch.randn(2, 8, 8), (8, 8))  # an image: one row a step
    assert rows.shape == (2, 8, 8)
    image = torch.randn(2, 1, 8, 8)
    assert torch.equal(_to_sequence(image, (1, 8, 8))[:, 3], image[:, 0, 3])
    assert torch.equal(_to_sequence(x[:, 0], (5,))[..., 0], x[:, 0])


@pytest.mark.parametrize("kind", ["rnn", "gru", "lstm"])
@pytest.mark.parametrize("bidirectional", [False, True])
def test_the_classifier_reads_the_final_hidden_state(kind, bidirectional):
    torch.manual_seed(0)
    net = build(small(kind, hidden=[6, 5], bidirectional=bidirectional), (12,), 4).eval()
    x = torch.randn(3, 12)
    h = x.unsqueeze(-1)  # (B, T, 1)
    for layer in net.rnn:
        h, _ = layer(h)
    # forward direction: its state after the last step; backward: after reading back to step 0
    final = torch.cat([h[:, -1, :5], h[:, 0, 5:]], 1) if bidirectional else h[:, -1]
    assert torch.allclose(net(x), net.head(final), atol=1e-6)
    assert [type(m).__name__ for m in net.rnn] == [{"rnn": "RNN", "gru": "GRU", "lstm": "LSTM"}[kind]] * 2


def test_initialisation_forget_gate_and_orthogonal_recurrence():
    lstm = build(small("lstm", hidden=[6]), (10,), 3)
    bias = lstm.rnn[0].bias_ih_l0 + lstm.rnn[0].bias_hh_l0
    assert torch.equal(bias[6:12], torch.ones(6))  # the forget gate starts open (i, f, g, o)
    gru = build(small("gru", hidden=[6], init="orthogonal"), (10,), 3)
    for block in gru.rnn[0].weight_hh_l0.detach().split(6):  # each gate's recurrent matrix
        assert torch.allclose(block @ block.T, torch.eye(6), atol=1e-5)
    assert small("rnn").activation == "tanh"  # Elman's unit unless the spec says relu


# --------------------------------------------------------------------------- language model


def test_the_language_model_never_sees_the_future():
    torch.manual_seed(0)
    lm = build(small("lstm", hidden=[16, 16], embedding=8), (12,), 20).eval()
    tokens = torch.randint(0, 20, (2, 12))
    changed = tokens.clone()
    changed[:, 7:] = (changed[:, 7:] + 1) % 20
    a, b = lm(tokens), lm(changed)
    assert a.shape == (2, 12, 20)
    assert torch.equal(a[:, :7], b[:, :7]) and not torch.allclose(a[:, 7:], b[:, 7:])


def sequence_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits.flatten(0, 1), targets.flatten())  # (B, T, V) vs (B, T)


def test_the_language_model_learns_next_tokens_well_below_the_unigram_entropy():
    # a synthetic text whose next token is a function of the previous two (a second-order
    # sequence): unigram entropy ln 6, while a model that reads context can be certain
    vocab, length = 6, 4000
    gen = torch.Generator().manual_seed(0)
    text = [0, 1]
    for _ in range(length):
        text.append((text[-1] + 2 * text[-2] + 1) % vocab)
    text = torch.tensor(text)
    windows = text.unfold(0, 17, 3)  # (N, 17): inputs are the first 16, targets the next 16
    x, y = windows[:, :-1], windows[:, 1:]
    counts = torch.bincount(y.flatten(), minlength=vocab).double()
    unigram = float(-(counts / counts.sum() * (counts / counts.sum()).clamp_min(1e-12).log()).sum())
    torch.manual_seed(0)
    lm = build(small("gru", hidden=[32], embedding=16), (16,), vocab)
    trainer = Trainer(lm, sequence_loss, torch.optim.Adam(lm.parameters(), lr=1e-2), grad_clip=1.0)
    trainer.fit(Batches(x, y, 64, gen), epochs=15)
    with torch.no_grad():
        loss = sequence_loss(lm(x), y).item()
    assert loss < 0.1 * unigram, (loss, unigram)


# --------------------------------------------------------------------------- clipping and monitors


def test_gradient_clipping_is_on_by_default_and_bounds_the_step(tmp_path):
    spec = validate({"model": {"kind": "gru"}})
    assert spec.optimizer.grad_clip == 1.0
    assert validate({"model": {"kind": "gru"}, "optimizer": {"grad_clip": None}}).optimizer.grad_clip is None
    assert validate({"model": {"kind": "mlp"}}).optimizer.grad_clip is None
    # one full-batch plain-SGD step: exactly -lr * g * min(1, 1 / ||g||), g the raw gradient
    spec = validate({"data": {"source": "mnist1d", "train_size": 200, "batch_size": "full"},
                     "model": {"kind": "rnn", "hidden": [16]}, "loss": "hinge",
                     "optimizer": {"name": "sgd", "lr": 0.5, "momentum": 0.0},
                     "train": {"epochs": 1, "device": "cpu"}, "checks": {"preflight": False, "monitors": False}})
    _, splits, start, _ = prepare(spec)
    losses.build_loss(spec.loss, splits.task, splits.num_classes)(start(splits.train.x), splits.train.y).backward()
    raw = torch.cat([p.grad.flatten() for p in start.parameters()])
    assert raw.norm() > 2  # so the clip is what sets the step's length
    result = run(spec, tmp_path / "run", quiet=True, report=False)
    step = torch.cat([(a - b).detach().flatten() for a, b in zip(result.model.parameters(), start.parameters(), strict=True)])
    assert torch.allclose(step, -0.5 * raw / raw.norm(), atol=1e-5)


def test_the_monitors_follow_every_recurrent_matrix():
    torch.manual_seed(0)
    net = build(small("gru", hidden=[8, 8]), (20,), 3)
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    monitor = Monitor(net, opt, every=1)
    x, y = torch.randn(16, 20), torch.randint(0, 3, (16,))
    before = {n: p.detach().clone() for n, p in net.named_parameters()}
    loss = F.cross_entropy(net(x), y)
    opt.zero_grad()
    loss.backward()
    opt.step()
    monitor.observe_loss(loss)
    record = monitor.records[0]["layers"]
    for layer in ("rnn.0", "rnn.1"):
        for matrix in ("weight_ih_l0", "weight_hh_l0"):
            entry = record[f"{layer}.{matrix}"]
            param = net.get_parameter(f"{layer}.{matrix}")
            assert entry["type"] == "GRU"
            assert math.isclose(entry["grad_norm"], param.grad.norm().item(), rel_tol=1e-5)
            change = (param.detach() - before[f"{layer}.{matrix}"]).norm() / param.detach().norm()
            assert math.isclose(entry["update_ratio"], change.item(), rel_tol=1e-4)
    assert record["rnn.0"]["type"] == "GRU" and record["rnn.0"]["act_std"] > 0  # hidden states watched
    assert "act_grad_rms" in record["rnn.0"]  # the gradient reaching layer 1's hidden states
    monitor.detach()


@pytest.mark.parametrize("kind, source, lr", [
    ("lstm", "mnist1d", 3e-3),  # 40 steps of one value
    ("rnn", "digits", 1e-2),  # 8x8 images, one row a step (a plain rnn learns 40-step MNIST-1D slowly)
])
def test_trains_with_every_check_and_no_false_warnings(kind, source, lr, tmp_path):
    spec = validate({"data": {"source": source, "train_size": 400, "batch_size": 50},
                     "model": {"kind": kind, "hidden": [32]}, "optimizer": {"name": "adam", "lr": lr},
                     "train": {"epochs": 4, "device": "cpu"}, "checks": {"every": 5}})
    result = run(spec, tmp_path / "run", quiet=True, report=False)
    assert result.summary["steps"] == 32 and result.summary["train_loss"] < 0.95 * math.log(10)
    findings = json.loads((result.path / "findings.json").read_text())
    # preflight (gradient check with float64 recurrence, overfitting 20 examples, batch mixing)
    # and the monitors find nothing; the only warning a 4-epoch run may earn is that it was
    # still improving when it ended, which is true
    assert [f["id"] for f in findings if f["severity"] != "info" and f["id"] != "not_converged"] == []
    records = [json.loads(line) for line in (result.path / "monitors.jsonl").read_text().splitlines()]
    assert "rnn.0.weight_hh_l0" in records[-1]["layers"] and "rnn.0" in records[-1]["layers"]


# --------------------------------------------------------------------------- bad specs


@pytest.mark.parametrize("overrides, message", [
    (["model.kind=gru", "model.hidden=[]"], "model.hidden: a gru needs at least one recurrent layer"),
    (["model.kind=rnn", "model.activation=sigmoid"], "model.activation: an rnn's cell is tanh or relu"),
    (["model.kind=lstm", "model.activation=relu"], "model.activation: a lstm's gates have fixed nonlinearities"),
    (["model.kind=gru", "model.norm=batch"], "model.norm: does not apply to recurrent nets"),
    (["model.kind=gru", "model.embedding=8", "model.bidirectional=true"], "model.bidirectional: a language model"),
    (["model.kind=gru", "model.embedding=8"], "model.embedding: a language model takes token ids"),
    (["model.kind=gru", "model.embedding=0"], "model.embedding: must be >= 1"),
])
def test_bad_recurrent_specs_are_one_line_errors(overrides, message, capsys, tmp_path):
    code, out, err = run_cli(["train", *overrides, "data.train_size=50", "train.epochs=1", "train.device=cpu",
                              "--out", str(tmp_path / "r")], capsys, cwd=tmp_path)
    assert code == BabysitError.exit_code == 2
    assert message in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err


# --------------------------------------------------------------------------- the published baseline


@pytest.mark.slow
def test_gru_on_mnist1d_as_a_sequence_reaches_the_published_baseline(tmp_path):
    # Greydanus 2020 ("Scaling down deep learning", the MNIST-1D paper): GRU baseline about 91%
    spec = config.load(EXAMPLE, ["train.device=cpu"])
    assert spec.model.kind == "gru" and spec.data.source == "mnist1d"
    result = run(spec, tmp_path / "gru", quiet=True, report=False)
    assert result.summary["test_acc"] >= 0.91, result.summary
    assert [f.id for f in result.findings if f.severity != "info"] == []
