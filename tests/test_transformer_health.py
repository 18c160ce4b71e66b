"""Transformer health (``checks.transformer``): the attention probe against hand computations,
qk-layernorm and z-loss against their definitions, and the two findings on networks and runs
built to have the problem (and on healthy ones)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from babysit import config
from babysit.checks.transformer import (
    ATTENTION_LOGIT_BAR,
    COLLAPSE_FRACTION,
    entropy_collapse,
    logit_growth,
    transformer_findings,
)
from babysit.config import ModelSpec
from babysit.data.batching import Batches
from babysit.errors import BabysitError
from babysit.families.language import LANGUAGE
from babysit.nets import build
from babysit.nets.gpt import GPT, CausalSelfAttention, transformer_probe
from babysit.optim import losses
from babysit.report.figures_transformer import transformer_figure
from babysit.run import run
from babysit.rundir import read_jsonl
from babysit.train.callbacks.transformer import TransformerHealthCallback
from babysit.train.loop import Trainer

pytestmark = pytest.mark.usefixtures("one_thread")

ATTENTION_IDS = ("attention_entropy_collapse", "attention_logit_growth")
# a small GPT on the shipped text, 2 epochs of 49 steps, sampled every 10 steps: 1-4 s a run
SMALL_GPT = ["data.source=text", "data.context=16", "data.batch_size=32", "data.train_size=1600", "model.kind=gpt",
             "model.layers=1", "model.heads=2", "model.embed=32", "model.dropout=0", "optimizer.name=adam",
             "train.epochs=2", "train.device=cpu", "checks.transformer=true", "checks.every=10",
             "train.early_stopping.patience=null"]


def _softmax(row: list[float]) -> list[float]:
    top = max(row)
    exps = [math.exp(v - top) for v in row]
    return [e / sum(exps) for e in exps]


def test_probed_attention_matches_a_hand_computation():
    # one head of size 2: q = diag(2, 3) x, k = v = x, on three known tokens
    attn = CausalSelfAttention(embed=2, heads=1, dropout=0.0).double().eval()
    with torch.no_grad():
        attn.qkv.weight.copy_(torch.tensor([[2, 0], [0, 3], [1, 0], [0, 1], [1, 0], [0, 1]], dtype=torch.float64))
        attn.qkv.bias.zero_()
    x = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]], dtype=torch.float64)
    # by hand: logits[i][j] = q_i . k_j / sqrt(2) for the keys j <= i
    r = math.sqrt(2)
    logits = [[2 / r], [0.0, 3 / r], [2 / r, 3 / r, 5 / r]]
    entropies = [-sum(p * math.log(p) for p in _softmax(row)) for row in logits]
    expected_entropy = (entropies[1] + entropies[2]) / 2  # query 0 sees one key: left out
    fused = attn(x)
    attn.probe = {}
    explicit = attn(x)
    probe, attn.probe = attn.probe, None
    assert probe["entropy"].shape == (1,) and probe["max_logit"].shape == (1,)
    assert probe["entropy"].item() == pytest.approx(expected_entropy, rel=1e-12)
    assert probe["max_logit"].item() == pytest.approx(5 / r, rel=1e-12)
    assert torch.allclose(explicit, fused, atol=1e-12)  # the explicit path computes what the fused one does


def test_transformer_probe_matches_a_manual_forward_and_leaves_the_model_as_it_was():
    torch.manual_seed(0)
    net = GPT(vocab=11, context=8, embed=16, layers=2, heads=4, dropout=0.2).train()
    ids = torch.randint(0, 11, (5, 8))
    rng = torch.get_rng_state()
    stats = transformer_probe(net, ids)
    assert torch.equal(torch.get_rng_state(), rng) and net.training  # no random draws, mode restored
    assert all(block.attn.probe is None for block in net.blocks)
    net.eval()
    with torch.no_grad():  # the residual stream by hand: embeddings, then each block
        x = net.token(ids) + net.position(torch.arange(8))
        rms = []
        for block in net.blocks:
            x = block(x)
            rms.append(x.pow(2).mean(-1).sqrt().mean())
        log_z = net.head(net.norm(x)).logsumexp(-1).mean()
    assert torch.allclose(stats["rms"], torch.stack(rms), rtol=1e-5)
    assert stats["log_z"].item() == pytest.approx(log_z.item(), rel=1e-5)
    assert stats["entropy"].shape == (2, 4) and stats["max_logit"].shape == (2, 4)
    uniform = sum(math.log(t + 1) for t in range(1, 8)) / 7  # the most a head can score
    assert bool((stats["entropy"] <= uniform + 1e-5).all()) and bool((stats["entropy"] > 0.9 * uniform).all())


def _scale_queries_and_keys(net: GPT, factor: float) -> None:
    """Multiply every block's query and key weights by ``factor``: logits x factor^2."""
    with torch.no_grad():
        for block in net.blocks:
            C = block.attn.proj.weight.shape[0]
            block.attn.qkv.weight[: 2 * C] *= factor


def test_qk_norm_normalises_each_heads_queries_and_keys_and_bounds_the_logits():
    torch.manual_seed(0)
    attn = CausalSelfAttention(embed=8, heads=2, dropout=0.0, qk_norm=True).eval()
    with torch.no_grad():
        attn.q_norm.weight.uniform_(0.5, 1.5)
        attn.k_norm.bias.uniform_(-0.5, 0.5)
    x = torch.randn(3, 5, 8)
    q, k, v = attn.qkv(x).split(8, dim=2)
    q, k, v = (t.view(3, 5, 2, 4).transpose(1, 2) for t in (q, k, v))
    q = F.layer_norm(q, (4,), attn.q_norm.weight, attn.q_norm.bias)
    k = F.layer_norm(k, (4,), attn.k_norm.weight, attn.k_norm.bias)
    scores = (q @ k.transpose(-2, -1) / 2).masked_fill(torch.ones(5, 5, dtype=torch.bool).triu(1), float("-inf"))
    expected = attn.proj((scores.softmax(-1) @ v).transpose(1, 2).reshape(3, 5, 8))
    assert torch.allclose(attn(x), expected, atol=1e-5)
    # queries and keys blown up 100x: without qk-layernorm the first block's logits follow (x 1e4;
    # later blocks see a changed stream); with it (unit gains) |q.k| / sqrt(hs) <= |q| |k| / sqrt(hs)
    # = sqrt(hs) * sqrt(hs) / sqrt(hs) = sqrt(hs), since a layer-normalised vector has norm sqrt(hs)
    ids = torch.randint(0, 11, (4, 8))
    for qk_norm in (False, True):
        torch.manual_seed(1)
        net = GPT(vocab=11, context=8, embed=16, layers=2, heads=4, qk_norm=qk_norm)
        plain = transformer_probe(net, ids)["max_logit"]
        _scale_queries_and_keys(net, 100.0)
        scaled = transformer_probe(net, ids)["max_logit"]
        if qk_norm:
            assert plain.max().item() <= math.sqrt(4) + 1e-4 and scaled.max().item() <= math.sqrt(4) + 1e-4
        else:
            assert torch.allclose(scaled[0], 1e4 * plain[0], rtol=1e-4) and scaled.max() > ATTENTION_LOGIT_BAR


def test_attention_gradients_match_finite_differences_with_qk_norm_and_on_the_probed_path():
    torch.manual_seed(0)
    attn = CausalSelfAttention(embed=4, heads=2, dropout=0.0, qk_norm=True).double()
    x = torch.randn(2, 3, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(attn, (x,))
    attn.probe = {}
    assert torch.autograd.gradcheck(attn, (x,))


def test_the_default_gpt_keeps_gpt2s_parameters_and_initialisation():
    torch.manual_seed(3)
    plain = build(ModelSpec(kind="gpt", layers=2, heads=2, embed=16), (8,), 11)
    torch.manual_seed(3)
    normed = build(ModelSpec(kind="gpt", layers=2, heads=2, embed=16, qk_norm=True), (8,), 11)
    assert not [name for name in plain.state_dict() if "_norm" in name]
    extra = {name: t for name, t in normed.state_dict().items() if name not in plain.state_dict()}
    assert sorted(extra) == [f"blocks.{b}.attn.{n}_norm.{p}" for b in (0, 1) for n in "kq" for p in ("bias", "weight")]
    # the qk-layernorm draws no random numbers: every shared weight is the default network's
    assert all(torch.equal(t, normed.state_dict()[name]) for name, t in plain.state_dict().items())


def test_z_loss_is_its_closed_form_and_its_gradient():
    logits = torch.tensor([[[1.0, 2.0, 0.5], [0.0, -1.0, 3.0]]], requires_grad=True)  # (B=1, T=2, V=3)
    targets = torch.tensor([[1, 2]])
    coef = 1e-2
    loss = losses.ZLoss(losses.PerToken(torch.nn.CrossEntropyLoss()), coef)(logits, targets)
    rows = logits.detach().tolist()[0]
    lse = [math.log(sum(math.exp(v) for v in row)) for row in rows]
    ce = sum(lse[i] - rows[i][t] for i, t in enumerate([1, 2])) / 2
    assert loss.item() == pytest.approx(ce + coef * (lse[0] ** 2 + lse[1] ** 2) / 2, rel=1e-6)
    # d/ds_j of coef * mean(lse^2) = coef * 2 lse softmax_j / N, on top of cross-entropy's (softmax - onehot) / N
    loss.backward()
    for i, (row, t) in enumerate(zip(rows, [1, 2], strict=True)):
        p = _softmax(row)
        expected = [(p[j] - (j == t)) / 2 + coef * lse[i] * p[j] for j in range(3)]
        assert logits.grad[0, i].tolist() == pytest.approx(expected, rel=1e-5)


def test_z_loss_pulls_log_z_towards_zero_in_training():
    ids = torch.randint(0, 11, (64, 9), generator=torch.Generator().manual_seed(0))
    final = {}
    for coef in (0.0, 0.1):
        torch.manual_seed(0)
        net = GPT(vocab=11, context=8, embed=16, layers=1, heads=2)
        loss_fn = losses.PerToken(torch.nn.CrossEntropyLoss())
        loss_fn = losses.ZLoss(loss_fn, coef) if coef else loss_fn
        optimizer = torch.optim.Adam(net.parameters(), lr=1e-2)
        for _ in range(30):
            loss = loss_fn(net(ids[:, :-1]), ids[:, 1:])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        final[coef] = transformer_probe(net, ids[:, :-1])["log_z"].item()
    # without it log Z drifts up from ln 11 = 2.4 (the softmax does not care); with 0.1 it is pulled to 0
    # (seeds 0-4 of data and init: 2.75-2.92 without, 0.10-0.27 with)
    assert final[0.0] > 2.0 and abs(final[0.1]) < 0.5 * final[0.0]


def test_loss_z_is_refused_without_a_softmax_and_wraps_the_language_loss(tmp_path):
    with pytest.raises(BabysitError, match="^loss_z: .*loss: mse has none"):
        run(config.load(None, [*SMALL_GPT, "loss=mse", "loss_z=1e-4"]), tmp_path / "mse", quiet=True)
    spec = config.load(None, [*SMALL_GPT, "loss_z=1e-4"])
    from babysit import data
    splits = data.load(spec.data)
    assert isinstance(LANGUAGE.build(spec, splits)[1], losses.ZLoss)
    plain = LANGUAGE.build(config.load(None, SMALL_GPT), splits)[1]
    assert isinstance(plain, losses.PerToken)  # loss_z: 0 leaves the loss as it was


def _probed_records(net: GPT, tmp_path, name: str) -> list[dict]:
    """transformer.jsonl of a run that cannot move the weights (SGD at lr 0), sampled every step."""
    ids = torch.randint(0, 11, (32, 9), generator=torch.Generator().manual_seed(0))
    path = tmp_path / f"{name}.jsonl"
    loss = losses.PerToken(torch.nn.CrossEntropyLoss())
    trainer = Trainer(net, loss, torch.optim.SGD(net.parameters(), lr=0.0),
                      callbacks=[TransformerHealthCallback(path, every=1)])
    trainer.fit(Batches(ids[:, :-1], ids[:, 1:], 16, torch.Generator().manual_seed(0)), epochs=1)
    return read_jsonl(path)


def test_a_gpt_built_to_collapse_gets_attention_entropy_collapse(tmp_path):
    torch.manual_seed(0)
    healthy = GPT(vocab=11, context=8, embed=16, layers=2, heads=2)
    records = _probed_records(healthy, tmp_path, "healthy")
    assert [r["step"] for r in records] == [1, 2] and records[0]["T"] == 8 and len(records[0]["blocks"]) == 2
    assert transformer_findings(records) == []
    torch.manual_seed(0)
    collapsed = GPT(vocab=11, context=8, embed=16, layers=2, heads=2)
    _scale_queries_and_keys(collapsed, 100.0)  # logits x 1e4: each query's softmax is one-hot
    records = _probed_records(collapsed, tmp_path, "collapsed")
    found = entropy_collapse(records)
    assert [(f.id, f.severity) for f in found] == [("attention_entropy_collapse", "warning")]
    heads = found[0].evidence["heads"]
    assert sorted((h["block"], h["head"]) for h in heads) == [(0, 0), (0, 1), (1, 0), (1, 1)]
    assert all(h["entropy"] < COLLAPSE_FRACTION * math.log(8) and h["max_logit"] > ATTENTION_LOGIT_BAR for h in heads)
    assert found[0].layer in ("blocks.0.attn", "blocks.1.attn") and "block" in found[0].message
    assert "model.qk_norm: true" in found[0].advice
    # a head as sharp but with moderate logits (a previous-token head doing its job): info, not a warning
    sharp = [dict(r, blocks=[dict(b, max_logit_heads=[10.0, 10.0]) for b in r["blocks"]]) for r in records]
    assert [f.severity for f in entropy_collapse(sharp)] == ["info"]


def test_logit_growth_rule_on_records():
    def records(max_logits, log_zs):
        return [{"step": 10 * i, "T": 16, "log_z": z, "blocks": [{"entropy": [2.0, 2.0], "max_logit": m}]}
                for i, (m, z) in enumerate(zip(max_logits, log_zs, strict=True))]

    flat_z = [4.0] * 9
    growing = [1, 5, 12, 20, 40, 70, 120, 200, 400]
    [found] = logit_growth(records(growing, flat_z))
    assert found.layer == "blocks.0.attn" and found.evidence["blocks"]["0"]["factor"] == pytest.approx(400 / 20)
    assert "model.qk_norm: true" in found.advice and "loss_z: 1e-4" not in found.advice
    assert "lower optimizer.lr" in logit_growth(records(growing, flat_z), qk_norm=True)[0].advice
    # grown and levelled off, or growing but well inside the softmax's range: bounded
    assert logit_growth(records([1, 100, 300, 320, 310, 330, 320, 340, 330], flat_z)) == []
    assert logit_growth(records([0.1, 0.5, 1, 2, 3, 5, 8, 12, 20], flat_z)) == []
    # the output logits drifting to a large negative log Z (output logit divergence), a NaN sample skipped
    drifting = records([5.0] * 9, [4, 2, -1, -4, -8, None, -15, -25, -40])
    [found] = transformer_findings(drifting)
    assert found.id == "attention_logit_growth" and found.layer == "output logits" and "loss_z: 1e-4" in found.advice
    assert found.evidence["log_z"]["to"] == 40 and found.evidence["log_z"]["from_step"] == 20  # |log Z| = 1 there
    assert "raise loss_z" in logit_growth(drifting, loss_z=1e-4)[0].advice
    assert logit_growth(records([1.0, 1e3], [4.0, 4.0])) == []  # two samples are no trend


def test_a_high_lr_gpt_run_gets_logit_growth_and_qk_norm_with_z_loss_bounds_it(tmp_path):
    # Adam at lr 5e-2 without qk-layernorm: over seeds 0-4 the max attention logit ends at 591-1312
    # (bar 50), 4.5-9.6x its value a third of the way in (bar 3), and the sharpest head at
    # 0.003-0.008 ln T; with qk_norm and loss_z 1e-4 the logits end at 11-14 and no head below 0.35 ln T.
    grown = run(config.load(None, [*SMALL_GPT, "optimizer.lr=0.05", "seed=1"]), tmp_path / "grown", quiet=True,
                report=False)
    found = {f.id: f for f in grown.findings if f.id in ATTENTION_IDS}
    assert sorted(found) == sorted(ATTENTION_IDS)
    assert found["attention_logit_growth"].severity == "warning" and found["attention_logit_growth"].layer == "blocks.0.attn"
    bounded = run(config.load(None, [*SMALL_GPT, "optimizer.lr=0.05", "seed=1", "model.qk_norm=true", "loss_z=1e-4"]),
                  tmp_path / "bounded", quiet=True, report=False)
    assert not [f for f in bounded.findings if f.id in ATTENTION_IDS]
    records = read_jsonl(bounded.path / "transformer.jsonl")
    assert max(r["blocks"][0]["max_logit"] for r in records) < ATTENTION_LOGIT_BAR


def test_a_healthy_short_gpt_run_gets_no_warning(tmp_path):
    result = run(config.load(None, [*SMALL_GPT, "optimizer.lr=0.003"]), tmp_path / "healthy", quiet=True, report=False)
    assert not [(f.id, f.message) for f in result.findings if f.severity != "info"]
    records = read_jsonl(result.path / "transformer.jsonl")
    assert [r["step"] for r in records] == [1, 10, 20, 30, 40, 50, 60, 70, 80, 90]
    block = records[-1]["blocks"][0]
    assert records[-1]["T"] == 16 and len(block["entropy"]) == 2 and len(block["max_logit_heads"]) == 2
    assert block["max_logit"] == max(block["max_logit_heads"]) and block["rms"] > 0
    fig = transformer_figure(records)
    assert fig is not None and len(fig.axes) == 4 and transformer_figure([]) is None
