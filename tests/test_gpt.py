"""The GPT and the text source: causal attention, tied weights, ln V at init, learning the text,
and ``babysit sample``."""

from __future__ import annotations

import json
import math
from collections import Counter
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from babysit import config, data
from babysit.checks.findings import PREFLIGHT_IDS
from babysit.config import DataSpec, ModelSpec
from babysit.data.text import decode, encode, read_text, split_text, vocabulary, windows
from babysit.errors import BabysitError
from babysit.nets import build
from babysit.nets.gpt import CausalSelfAttention, generate
from babysit.optim import losses
from babysit.run import run
from helpers import run_cli

pytestmark = pytest.mark.usefixtures("one_thread")
EXAMPLES = Path(__file__).resolve().parents[1] / "examples"

# the example's network, trained briefly: about a minute on one core
TRAIN = ["train.device=cpu", "train.epochs=24", "data.batch_size=16", "train.early_stopping.patience=null"]


def test_text_source_splits_the_text_in_order_into_windows():
    text = read_text()
    spec = DataSpec(source="text", context=32, val_fraction=0.1, test_fraction=0.1)
    splits = data.load(spec)
    vocab = splits.class_names
    assert vocab == sorted(set(text)) and splits.num_classes == len(vocab)
    train, val, test = split_text(text, 0.1, 0.1)
    assert train + val + test == text and len(test) == round(0.1 * len(text))
    # windows are consecutive, non-overlapping pieces of their own part, targets shifted by one
    x, y = splits.train.x, splits.train.y
    assert x.dtype == torch.int64 and x.shape[1] == 32
    assert decode(x.flatten().tolist(), vocab) == train[:x.numel()]
    assert torch.equal(x[:, 1:], y[:, :-1]) and torch.equal(y[:-1, -1], x[1:, 0])
    assert decode(splits.val.x[0].tolist(), vocab) == val[:32]
    assert decode(splits.test.x[0].tolist(), vocab) == test[:32]
    assert splits.input_shape == (32,) and splits.task == "classification"


def test_text_helpers_and_their_errors(tmp_path):
    vocab = vocabulary("hello world")
    assert decode(encode("low", vocab), vocab) == "low"
    with pytest.raises(BabysitError, match="not in the model's vocabulary"):
        encode("xyz", vocab)
    x, y = windows(torch.arange(11).numpy(), 5)
    assert x.tolist() == [[0, 1, 2, 3, 4], [5, 6, 7, 8, 9]] and y[1].tolist() == [6, 7, 8, 9, 10]
    with pytest.raises(BabysitError, match="text file not found"):
        data.load(DataSpec(source="text", path=str(tmp_path / "missing.txt")))
    short = tmp_path / "short.txt"
    short.write_text("a few words only, " * 10, encoding="utf-8")
    with pytest.raises(BabysitError, match="fewer than one window"):
        data.load(DataSpec(source="text", path=str(short), context=64))
    binary = tmp_path / "binary.txt"
    binary.write_bytes(b"\xff\xfe\x00\x81" * 100)
    with pytest.raises(BabysitError, match="not a UTF-8 text file"):
        data.load(DataSpec(source="text", path=str(binary)))


def test_attention_is_the_masked_softmax_and_causal():
    torch.manual_seed(0)
    attn = CausalSelfAttention(embed=16, heads=4, dropout=0.0).eval()
    x = torch.randn(2, 7, 16)
    q, k, v = attn.qkv(x).split(16, dim=2)
    q, k, v = (t.view(2, 7, 4, 4).transpose(1, 2) for t in (q, k, v))
    scores = q @ k.transpose(-2, -1) / math.sqrt(4)
    scores = scores.masked_fill(torch.ones(7, 7, dtype=torch.bool).triu(1), float("-inf"))
    expected = attn.proj((scores.softmax(-1) @ v).transpose(1, 2).reshape(2, 7, 16))
    assert torch.allclose(attn(x), expected, atol=1e-5)


def test_gpt_is_causal_ties_its_weights_and_starts_at_ln_vocab():
    torch.manual_seed(0)
    net = build(ModelSpec(kind="gpt", layers=2, heads=4, embed=32), (16,), 50).eval()
    ids = torch.randint(0, 50, (3, 16))
    changed = ids.clone()
    changed[:, 9] = (changed[:, 9] + 1) % 50
    a, b = net(ids), net(changed)
    assert torch.allclose(a[:, :9], b[:, :9], atol=1e-6)  # the past does not see the future
    assert not torch.allclose(a[:, 9:], b[:, 9:])
    assert net.head.weight is net.token.weight
    assert sum(p.numel() for p in net.parameters()) == sum(p.numel() for p in set(net.parameters()))
    targets = torch.randint(0, 50, (3, 16))
    initial = losses.build_loss("cross_entropy", "classification", 50, per_token=True)(net(ids), targets)
    assert abs(initial.item() - math.log(50)) < 0.05  # GPT-2 init: near-uniform predictions


def test_per_token_loss_is_the_mean_over_every_position():
    outputs, targets = torch.randn(4, 6, 9), torch.randint(0, 9, (4, 6))
    loss = losses.build_loss("cross_entropy", "classification", 9, per_token=True)(outputs, targets)
    manual = -F.log_softmax(outputs, -1).gather(-1, targets[..., None]).mean()
    assert torch.allclose(loss, manual)


def test_generate_is_seeded_and_greedy_at_temperature_zero():
    torch.manual_seed(0)
    net = build(ModelSpec(kind="gpt", layers=1, heads=2, embed=16), (8,), 20)
    start = torch.tensor([[1, 2, 3]])
    one = generate(net, start, 12, 8, generator=torch.Generator().manual_seed(5))
    two = generate(net, start, 12, 8, generator=torch.Generator().manual_seed(5))
    assert torch.equal(one, two) and one.shape == (1, 15)
    greedy = generate(net, start, 1, 8, temperature=0)
    assert greedy[0, -1] == net.eval()(start)[0, -1].argmax()
    top1 = generate(net, start, 5, 8, top_k=1, generator=torch.Generator().manual_seed(1))
    assert torch.equal(top1, generate(net, start, 5, 8, temperature=0))


def test_gpt_needs_token_data_and_sizes_that_fit(tmp_path):
    with pytest.raises(BabysitError, match="gpt models sequences of token ids"):
        run(config.load(None, ["model.kind=gpt", "data.source=spirals", "train.epochs=1"]), tmp_path / "a", quiet=True)
    with pytest.raises(BabysitError, match="model.embed: must be a multiple of model.heads"):
        build(ModelSpec(kind="gpt", embed=30, heads=4), (8,), 10)
    with pytest.raises(BabysitError, match="gives token ids"):
        run(config.load(None, ["data.source=text", "train.epochs=1"]), tmp_path / "b", quiet=True)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    path = tmp_path_factory.mktemp("gpt") / "text-gpt"
    spec = config.load(EXAMPLES / "text-gpt.yaml", TRAIN)
    return spec, run(spec, out=path, quiet=True)


@pytest.mark.slow
def test_gpt_learns_the_text_well_below_its_unigram_entropy(trained):
    spec, result = trained
    train_text = split_text(read_text(), spec.data.val_fraction, spec.data.test_fraction)[0]
    counts = Counter(train_text[1:])  # the characters the training windows predict
    total = sum(counts.values())
    unigram = -sum(c / total * math.log(c / total) for c in counts.values())  # nats
    val = result.summary["val_loss"]
    print(json.dumps({"unigram_entropy_nats": round(unigram, 4), "val_loss": round(val, 4),
                      "test_loss": round(result.summary["test_loss"], 4), "ratio": round(val / unigram, 3),
                      "val_acc": round(result.summary["val_acc"], 4), "steps": result.summary["steps"],
                      "wall_time_s": result.summary["wall_time_s"]}))
    assert val < 0.75 * unigram  # at least a quarter below what the character frequencies alone give
    # the diagnosis measures against the same yardstick: the chance loss of its targets
    chance = losses.chance_loss("cross_entropy", "classification", result.splits.num_classes, result.splits.train.y)
    assert abs(chance - unigram) < 0.02  # the windows drop the text's last few characters
    assert not [f.id for f in result.findings if f.id in PREFLIGHT_IDS]  # ln V at init, gradients, overfit
    assert not [f.id for f in result.findings if f.severity == "error"]
    sample = json.loads((result.path / "text_sample.json").read_text())
    assert len(sample["text"]) == 400 and set(sample["text"]) <= set(result.splits.class_names)
    assert "What it makes" in (result.path / "report.html").read_text()


@pytest.mark.slow
def test_sample_command_continues_the_prompt(trained, capsys):
    _, result = trained
    code, out, err = run_cli(["sample", str(result.path), "--prompt", "Shall I", "--tokens", "60", "--seed", "1"],
                             capsys)
    assert code == 0, err
    text = out.rstrip("\n")
    assert text.startswith("Shall I") and len(text) == len("Shall I") + 60
    again = run_cli(["sample", str(result.path), "--prompt", "Shall I", "--tokens", "60", "--seed", "1"], capsys)[1]
    other = run_cli(["sample", str(result.path), "--prompt", "Shall I", "--tokens", "60", "--seed", "2"], capsys)[1]
    assert again == out and other != out
    code, _, err = run_cli(["sample", str(result.path), "--prompt", "Zebra€"], capsys)
    assert code == 2 and err.count("\n") == 1 and "vocabulary" in err
    code, _, err = run_cli(["sample", str(result.path), "--temperature", "-1"], capsys)
    assert code == 2 and "--temperature" in err


def test_sample_refuses_a_run_that_is_not_a_language_model(tmp_path, capsys):
    (tmp_path / "config.yaml").write_text("name: x\nmodel: {kind: mlp}\n")
    code, _, err = run_cli(["sample", str(tmp_path)], capsys)
    assert code == 2 and "babysit sample continues text" in err
