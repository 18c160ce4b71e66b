"""Live monitors: the numbers against hand computation, the sampling, the explosion guard,
and each while-training finding on a network built to have it (and none on healthy ones).

The pathologies are CS231n's: very negative biases kill ReLUs, N(0, 1) weights saturate a
10-layer tanh net, N(0, 0.01^2) weights collapse its activations, a deep sigmoid stack
loses its gradient, a too-large init blows it up, and a huge / tiny learning rate moves the
weights by far more / far less than the healthy 1e-3 of their size per step.
"""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn

from babysit import config
from babysit.checks.findings import Finding
from babysit.checks.monitors import (
    DEAD_FRACTION,
    UPDATE_RATIO_HIGH,
    UPDATE_RATIO_LOW,
    Monitor,
    monitor_findings,
    monitor_summary,
    monitored_layers,
)
from babysit.checks.monitors.rules import DORMANT_FRACTION, DORMANT_TAU
from babysit.checks.watch import watch
from babysit.data.batching import Batches
from babysit.run import run
from babysit.rundir import read_jsonl
from babysit.train.callbacks import Checkpointer, EarlyStopping, MonitorCallback
from babysit.train.checkpoint import load_checkpoint
from babysit.train.loop import Callback, Trainer

pytestmark = pytest.mark.usefixtures("one_thread")


def data(n=512, inputs=20, classes=4, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, inputs, generator=gen)
    return x, x[:, :classes].argmax(1)


def stack(depth, width=64, inputs=20, outputs=4, act=nn.Tanh, std=None, seed=0):
    torch.manual_seed(seed)
    layers, size = [], inputs
    for _ in range(depth):
        layers += [nn.Linear(size, width), act()]
        size = width
    net = nn.Sequential(*layers, nn.Linear(size, outputs))
    if std is not None:
        for m in net:
            if isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, std=std)
                nn.init.zeros_(m.bias)
    return net


def train_watched(net, opt, steps=60, every=10, x=None, y=None, batch=64):
    x, y = (x, y) if x is not None else data()
    with watch(net, opt, every=every) as w:
        for step in range(steps):
            start = (step * batch) % len(x)
            loss = nn.functional.cross_entropy(net(x[start:start + batch]), y[start:start + batch])
            opt.zero_grad()
            loss.backward()
            opt.step()
            if not w.step(loss):
                break
    return w


def warnings_of(findings):
    return {f.id: f for f in findings if f.severity in ("warning", "error")}


# --------------------------------------------------------------------------- the numbers


def test_statistics_match_hand_computation():
    x, y = data(64)
    net = nn.Sequential(nn.Linear(20, 16), nn.ReLU(), nn.Linear(16, 8), nn.Tanh(), nn.Linear(8, 4))
    with torch.no_grad():
        net[0].bias[:5] = -100.0  # exactly units 0-4 of the ReLU are dead for every input
    twin = nn.Sequential(*[m for m in net])  # same modules: the hand computation reads them first
    lr = 0.05
    opt = torch.optim.SGD(net.parameters(), lr=lr)

    # the truth, by hand, before the step
    h0 = torch.relu(twin[0](x))
    h0.retain_grad()
    h1 = torch.tanh(twin[2](h0))
    h1.retain_grad()
    loss = nn.functional.cross_entropy(twin[4](h1), y)
    loss.backward()
    weights = [net[0].weight, net[2].weight, net[4].weight]
    grads = [w.grad.clone() for w in weights]
    norms = [w.detach().norm().item() for w in weights]
    h0_grad, h1_grad = h0.grad.clone(), h1.grad.clone()
    h0, h1 = h0.detach(), h1.detach()
    opt.zero_grad()

    monitor = Monitor(net, opt, every=1)
    loss = nn.functional.cross_entropy(net(x), y)
    loss.backward()
    opt.step()
    monitor.observe_loss(loss)
    monitor.detach()
    layers = monitor.records[0]["layers"]

    for name, w, g, w_norm in zip(("0", "2", "4"), weights, grads, norms, strict=True):
        assert layers[name]["grad_norm"] == pytest.approx(g.norm().item(), rel=1e-5)
        after = w.detach().norm().item()  # the weights as the step left them
        assert after != pytest.approx(w_norm, rel=1e-6)
        assert layers[name]["weight_norm"] == pytest.approx(after, rel=1e-6)
        # plain SGD: Δw = -lr g, so ||Δw|| / ||w|| = lr ||g|| / ||w||
        assert layers[name]["update_ratio"] == pytest.approx(lr * g.norm().item() / after, rel=1e-4)
    assert layers["1"]["act_mean"] == pytest.approx(h0.mean().item(), rel=1e-5)
    assert layers["1"]["act_std"] == pytest.approx(h0.std().item(), rel=1e-5)
    assert layers["1"]["dead_fraction"] == pytest.approx(5 / 16)
    assert layers["3"]["saturated_fraction"] == pytest.approx((h1.abs() > 0.99).float().mean().item())
    assert "dead_fraction" not in layers["3"] and "saturated_fraction" not in layers["1"]
    assert layers["1"]["act_grad_rms"] == pytest.approx(h0_grad.square().mean().sqrt().item(), rel=1e-5)
    assert layers["3"]["act_grad_rms"] == pytest.approx(h1_grad.square().mean().sqrt().item(), rel=1e-5)
    hist = layers["1"]["hist"]
    assert sum(hist["counts"]) == h0.numel() and hist["lo"] == 0.0
    assert hist["hi"] == pytest.approx(h0.max().item())
    assert monitor.records[0]["loss"] == pytest.approx(loss.item())


def test_sampling_hooks_only_around_sampled_steps_and_training_unchanged():
    x, y = data(256)
    results = []
    for monitored in (False, True):
        net = stack(2, act=nn.ReLU)
        opt = torch.optim.Adam(net.parameters(), lr=1e-2)
        monitor = Monitor(net, opt, every=4) if monitored else None
        hooked_steps = []
        for step in range(1, 13):
            if monitor is not None and any(m._forward_hooks for m in net):
                hooked_steps.append(step)
            loss = nn.functional.cross_entropy(net(x[:64]), y[:64])
            opt.zero_grad()
            loss.backward()
            opt.step()
            if monitor is not None:
                monitor.observe_loss(loss)
        if monitor is not None:
            assert hooked_steps == [1, 5, 9]  # armed for the sampled forwards only
            assert [r["step"] for r in monitor.records] == [1, 5, 9]
            assert "hist" in monitor.records[0]["layers"]["1"] and "hist" not in monitor.records[1]["layers"]["1"]
            monitor.detach()
            assert not any(m._forward_hooks for m in net)
            assert not opt._optimizer_step_pre_hooks and not opt._optimizer_step_post_hooks
            assert not any(p._backward_hooks for p in net.parameters() if p._backward_hooks)
        results.append(torch.cat([p.detach().flatten() for p in net.parameters()]))
    assert torch.equal(results[0], results[1])  # watching does not change the training


def test_lbfgs_and_models_without_activation_modules():
    class Functional(nn.Module):  # relu called as a function: watch the Linear outputs instead
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(20, 16), nn.Linear(16, 4)

        def forward(self, x):
            return self.b(torch.relu(self.a(x)))

    net = Functional()
    activations, weights = monitored_layers(net)
    assert [n for n, _ in activations] == ["a", "b"] and [n for n, _ in weights] == ["a", "b"]
    x, y = data(128)
    opt = torch.optim.LBFGS(net.parameters(), lr=0.5, max_iter=5)
    monitor = Monitor(net, opt, every=2)
    for _ in range(4):
        def closure():
            opt.zero_grad()
            loss = nn.functional.cross_entropy(net(x), y)
            loss.backward()
            return loss
        loss = opt.step(closure)
        monitor.observe_loss(loss)
    monitor.detach()
    assert [r["step"] for r in monitor.records] == [1, 3]
    assert {"act_std", "grad_norm", "update_ratio"} <= set(monitor.records[0]["layers"]["a"])


def test_dormant_fraction_matches_hand_computation():
    # Sokar et al. 2023: s_i = E|h_i| / mean_k E|h_k| over the batch and positions, dormant when
    # s_i <= 0.025. A fixed (batch 4, units 5, positions 3) tensor passed unchanged through an
    # identity 1x1 conv and a Hardtanh wide enough to be the identity
    gen = torch.Generator().manual_seed(0)
    scale = torch.tensor([1.0, 1.0, 0.01, 0.0, 0.011])  # E|h| of units 2 and 4 either side of tau x mean
    h = torch.randn(4, 5, 3, generator=gen).sign() * (1 + torch.rand(4, 5, 3, generator=gen))
    h = h / h.abs().mean(dim=(0, 2), keepdim=True) * scale[:, None]
    conv = nn.Conv1d(5, 5, 1, bias=False)
    with torch.no_grad():
        conv.weight.copy_(torch.eye(5)[:, :, None])
    torch.manual_seed(0)
    gru = nn.GRU(3, 6, batch_first=True)
    with torch.no_grad():
        gru.weight_ih_l0[[2, 8, 14]] *= 1e-5  # hidden unit 2: tiny input weights for all three gates
        gru.weight_hh_l0[[2, 8, 14]] *= 1e-5
        gru.bias_ih_l0.zero_()
        gru.bias_hh_l0.zero_()

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.act, self.gru = conv, nn.Hardtanh(-10.0, 10.0), gru

        def forward(self, x):
            return self.gru(self.act(self.conv(x)))[0]

    net = Net()
    with torch.no_grad():
        assert torch.equal(net.act(net.conv(h)), h)
        g = net(h)  # (batch, positions, hidden units)

    def hand(per_unit_abs_means):
        mean = sum(per_unit_abs_means) / len(per_unit_abs_means)
        return sum(m / mean <= DORMANT_TAU for m in per_unit_abs_means) / len(per_unit_abs_means)

    act_means = [h[:, i, :].abs().mean().item() for i in range(5)]
    assert act_means[2] / (sum(act_means) / 5) <= DORMANT_TAU < act_means[4] / (sum(act_means) / 5)
    expected_act = hand(act_means)
    assert expected_act == pytest.approx(2 / 5)  # units 2 (tiny) and 3 (zero)
    expected_gru = hand([g[:, :, i].abs().mean().item() for i in range(6)])
    assert expected_gru == pytest.approx(1 / 6)

    opt = torch.optim.SGD(net.parameters(), lr=0.0)
    monitor = Monitor(net, opt, every=1)
    loss = net(h).square().mean()
    loss.backward()
    opt.step()
    monitor.observe_loss(loss)
    monitor.detach()
    layers = monitor.records[0]["layers"]
    assert layers["act"]["dormant_fraction"] == pytest.approx(expected_act)
    assert layers["gru"]["dormant_fraction"] == pytest.approx(expected_gru)
    assert "dormant_fraction" not in layers["conv"]  # a weight layer, not an activation


# --------------------------------------------------------------------------- the rules


def records_with(layer, key, values, kind="ReLU"):
    return [{"step": 1 + 10 * i, "layers": {layer: {"type": kind, "act_std": 1.0, key: v}}}
            for i, v in enumerate(values)]


def test_rule_thresholds_and_persistence():
    ids = lambda recs: [(f.id, f.severity) for f in monitor_findings(recs)]  # noqa: E731
    below, above = DEAD_FRACTION - 0.01, DEAD_FRACTION + 0.01
    assert ids(records_with("r", "dead_fraction", [below] * 9)) == []
    assert ids(records_with("r", "dead_fraction", [above] * 9)) == [("dead_relu", "warning")]
    # present at init only, gone later: info, with the step it cleared by
    info = monitor_findings(records_with("r", "dead_fraction", [0.9, 0.9, 0.1, 0.0, 0.0, 0.0]))
    assert [(f.id, f.severity) for f in info] == [("dead_relu", "info")] and "step 21" in info[0].message
    # appearing late and staying: a warning
    assert ids(records_with("r", "dead_fraction", [0.0] * 6 + [0.8] * 3)) == [("dead_relu", "warning")]

    def weight_records(ratio):
        return [{"step": 1 + 10 * i, "layers": {"fc": {"type": "Linear", "update_ratio": ratio}}} for i in range(5)]

    assert ids(weight_records(1e-3)) == []
    assert ids(weight_records(UPDATE_RATIO_HIGH * 1.5)) == [("update_ratio_high", "warning")]
    assert ids(weight_records(UPDATE_RATIO_LOW / 1.5)) == [("update_ratio_low", "warning")]
    summary = monitor_summary(weight_records(2e-3))
    assert summary["update_ratio_median"] == {"fc": pytest.approx(2e-3)} and summary["samples"] == 5


def test_one_finding_per_id_naming_the_worst_layer():
    recs = [{"step": 1 + 10 * i, "layers": {
        "a": {"type": "ReLU", "dead_fraction": 0.6}, "b": {"type": "ReLU", "dead_fraction": 0.95},
        "c": {"type": "ReLU", "dead_fraction": 0.1}}} for i in range(4)]
    (finding,) = monitor_findings(recs)
    assert finding.layer == "b" and set(finding.evidence["layers"]) == {"a", "b"}
    assert "a 60%" in finding.message


def test_dormant_rule_threshold_and_no_double_report_with_dead_relu():
    ids = lambda recs: [(f.id, f.severity, f.layer) for f in monitor_findings(recs)]  # noqa: E731
    below, above = DORMANT_FRACTION - 0.01, DORMANT_FRACTION + 0.01
    assert ids(records_with("t", "dormant_fraction", [below] * 9, "Tanh")) == []
    assert ids(records_with("t", "dormant_fraction", [above] * 9, "Tanh")) == [("dormant_units", "warning", "t")]
    assert ids(records_with("t", "dormant_fraction", [0.9, 0.1, 0.0, 0.0, 0.0, 0.0], "GELU")) == [
        ("dormant_units", "info", "t")]
    # a ReLU layer: its dead units are dormant too. Reported by dead_relu, it is left out here; with few
    # dead units but most alive and nearly silent, dormant_units adds that
    def relu_records(dead, dormant):
        return [{"step": 1 + 10 * i, "layers": {"r": {"type": "ReLU", "dead_fraction": dead,
                                                      "dormant_fraction": dormant}}} for i in range(6)]

    assert ids(relu_records(0.9, 0.95)) == [("dead_relu", "warning", "r")]
    assert ids(relu_records(0.1, 0.8)) == [("dormant_units", "warning", "r")]
    assert ids(relu_records(0.1, 0.3)) == []


# --------------------------------------------------------------------------- pathologies


def test_dead_relu_names_the_layer_with_the_negative_bias():
    net = stack(3, act=nn.ReLU)
    with torch.no_grad():
        net[2].bias.fill_(-50.0)  # the second hidden layer's ReLU (module "3") never fires
    w = train_watched(net, torch.optim.Adam(net.parameters(), lr=1e-3))
    found = warnings_of(w.findings())
    assert found["dead_relu"].layer == "3"
    assert found["dead_relu"].evidence["dead_fraction"] == 1.0


@pytest.mark.parametrize("act", [nn.Tanh, nn.GELU])
def test_dormant_units_names_the_layer_with_tiny_incoming_weights(act):
    net = stack(3, act=act)
    with torch.no_grad():
        # 48 of the 64 units of the second hidden layer (module "3"): incoming weights scaled by
        # 1e-4, so |h| is tiny, and no outgoing weights, so (under SGD) nothing pulls them back
        net[2].weight[:48] *= 1e-4
        net[2].bias[:48] *= 1e-4
        net[4].weight[:, :48] = 0.0
    w = train_watched(net, torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9))
    found = warnings_of(w.findings())
    assert found["dormant_units"].layer == "3"
    assert found["dormant_units"].evidence["dormant_fraction"] == pytest.approx(0.75)
    assert set(found["dormant_units"].evidence["layers"]) == {"3"}
    assert "dead_relu" not in found and "saturated_activations" not in found
    # the same units under Adam grow back within a few steps: reported as at initialisation only
    net = stack(3, act=act)
    with torch.no_grad():
        net[2].weight[:48] *= 1e-4
        net[2].bias[:48] *= 1e-4
    w = train_watched(net, torch.optim.Adam(net.parameters(), lr=1e-3))
    assert [(f.id, f.severity, f.layer) for f in w.findings()] == [("dormant_units", "info", "3")]


def test_dead_relu_layer_is_not_reported_again_as_dormant():
    net = stack(3, act=nn.ReLU)
    with torch.no_grad():
        net[2].bias.fill_(-50.0)  # module "3" dead, hence dormant too
    w = train_watched(net, torch.optim.Adam(net.parameters(), lr=1e-3))
    assert w.records[-1]["layers"]["3"]["dormant_fraction"] == 1.0
    assert "dead_relu" in warnings_of(w.findings())
    assert "dormant_units" not in {f.id for f in w.findings()}


def test_saturated_tanh_with_unit_normal_init():
    net = stack(10, std=1.0)
    w = train_watched(net, torch.optim.SGD(net.parameters(), lr=0.01))
    found = warnings_of(w.findings())
    assert "saturated_activations" in found
    assert found["saturated_activations"].evidence["saturated_fraction"] > 0.5


def test_activation_collapse_with_tiny_init():
    net = stack(10, std=0.01)
    w = train_watched(net, torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9))
    found = warnings_of(w.findings())
    assert "activation_collapse" in found and "vanishing_gradients" in found
    assert found["activation_collapse"].layer == "3"  # the second tanh: std below 10% of the first
    assert "saturated_activations" not in found


def test_vanishing_gradients_in_a_deep_sigmoid_stack():
    torch.manual_seed(0)
    net = stack(8, act=nn.Sigmoid)
    w = train_watched(net, torch.optim.SGD(net.parameters(), lr=0.1))
    found = warnings_of(w.findings())
    assert found["vanishing_gradients"].layer == "1"  # the first sigmoid gets the least
    assert found["vanishing_gradients"].evidence["gradient_ratio_first_to_last"] < 1e-3
    assert "exploding_gradients" not in found


def test_exploding_gradients_with_a_too_large_init():
    net = stack(10, act=nn.ReLU, std=0.5)  # gain ~ 0.5 * sqrt(64 / 2) = 2.8 a layer
    w = train_watched(net, torch.optim.Adam(net.parameters(), lr=1e-4), steps=30)
    found = warnings_of(w.findings())
    assert found["exploding_gradients"].layer == "1"
    assert "vanishing_gradients" not in found


def test_update_ratio_high_and_low_with_a_huge_and_a_tiny_learning_rate():
    net = stack(2, act=nn.ReLU)
    high = warnings_of(train_watched(net, torch.optim.SGD(net.parameters(), lr=3.0), steps=40).findings())
    assert "update_ratio_high" in high
    net = stack(2, act=nn.ReLU)
    low = warnings_of(train_watched(net, torch.optim.SGD(net.parameters(), lr=1e-7), steps=40).findings())
    assert set(low) == {"update_ratio_low"}


def test_healthy_networks_raise_nothing():
    for act, lr in ((nn.ReLU, 1e-2), (nn.Tanh, 1e-2)):
        torch.manual_seed(0)
        net = stack(4, act=act)
        for m in net:
            if isinstance(m, nn.Linear):
                gain = nn.init.calculate_gain("relu" if act is nn.ReLU else "tanh")
                nn.init.xavier_normal_(m.weight, gain=gain)
        w = train_watched(net, torch.optim.Adam(net.parameters(), lr=lr), steps=120)
        assert warnings_of(w.findings()) == {}, [f.message for f in w.findings()]
        assert "dormant_units" not in {f.id for f in w.findings()}
        # tanh: none dormant; relu: the last hidden layer ends ~33% dead and ~37% dormant, the
        # healthy range DORMANT_FRACTION leaves alone
        dormant = max(e["dormant_fraction"] for r in w.records for e in r["layers"].values() if "dormant_fraction" in e)
        assert dormant < (DORMANT_FRACTION if act is nn.ReLU else 0.05)


# --------------------------------------------------------------------------- the guard


class BumpLR(Callback):
    """Raises the learning rate to a diverging value from a given epoch on."""

    def __init__(self, epoch, lr):
        self.epoch, self.lr = epoch, lr

    def on_epoch_start(self, trainer):
        if trainer.state.epoch >= self.epoch:
            for group in trainer.optimizer.param_groups:
                group["lr"] = self.lr


def test_guard_stops_at_once_and_keeps_the_last_good_checkpoint(tmp_path):
    x, y = data(640)
    net = stack(2, act=nn.ReLU)
    opt = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9)
    early = EarlyStopping("train_loss", patience=None)
    monitors = MonitorCallback(tmp_path / "monitors.jsonl", every=5)
    batches = Batches(x, y, 32, torch.Generator().manual_seed(0))  # 20 steps an epoch
    trainer = Trainer(net, nn.CrossEntropyLoss(), opt, callbacks=[
        monitors, early, BumpLR(2, 5.0),
        Checkpointer(tmp_path / "ckpt", generator=torch.Generator(), epochs=10, every_s=0.0, early_stopping=early)])
    state = trainer.fit(batches, epochs=10)
    assert state.diverged and state.stop_reason.startswith("loss_exploded")
    assert monitors.guard.id == "loss_exploded" and monitors.guard.evidence["loss"] > 3 * monitors.guard.evidence["initial_loss"]
    assert 40 < state.step <= 46  # stopped at the first sample after the lr jump at step 41
    last = load_checkpoint(tmp_path / "ckpt" / "last.pt")
    assert last["loop"]["epoch"] == 2 and all(torch.isfinite(v).all() for v in last["model"].values())
    assert all(torch.isfinite(p).all() for p in net.parameters())  # the best weights were put back
    lines = [json.loads(line) for line in (tmp_path / "monitors.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines][:3] == [1, 6, 11]


def test_guard_catches_a_nonfinite_loss():
    x, y = data(256)
    x[100] = float("nan")  # one poisoned example, in the 4th batch of 32
    net = stack(2, act=nn.ReLU)
    opt = torch.optim.SGD(net.parameters(), lr=0.01)
    guard = []
    with watch(net, opt, every=1) as w:
        for step in range(8):
            loss = nn.functional.cross_entropy(net(x[32 * step: 32 * step + 32]), y[32 * step: 32 * step + 32])
            opt.zero_grad()
            loss.backward()
            opt.step()
            if not w.step(loss):
                guard.append(step)
                break
    assert guard == [3]
    (finding,) = [f for f in w.findings() if f.severity == "error"]
    assert finding.id == "nonfinite_loss" and finding.step == 4


def test_guard_thresholds():
    net = stack(1)
    monitor = Monitor(net, torch.optim.SGD(net.parameters(), lr=0.1), explosion_factor=3.0)
    assert monitor.check_loss(2.0, 1) is None  # the reference
    assert monitor.check_loss(5.9, 11) is None
    finding = monitor.check_loss(6.1, 21)
    assert isinstance(finding, Finding) and finding.id == "loss_exploded" and finding.step == 21
    assert monitor.check_loss(math.inf, 31) is None  # reported once
    monitor.detach()


# --------------------------------------------------------------------------- in a run


def test_run_writes_monitors_findings_and_resumes_the_guard_reference(tmp_path):
    spec = config.load(None, ["data.source=spirals", "data.samples=600", "model.hidden=[32]",
                              "train.epochs=3", "checks.every=5", "optimizer.lr=1e-7"])
    result = run(spec, out=tmp_path / "run", quiet=True)
    records = read_jsonl(tmp_path / "run" / "monitors.jsonl")
    steps_per_epoch = result.summary["steps"] // 3
    assert [r["step"] for r in records] == list(range(1, result.summary["steps"] + 1, 5))
    findings = json.loads((tmp_path / "run" / "findings.json").read_text())
    assert "update_ratio_low" in {f["id"] for f in findings}
    assert result.summary["findings"]["warning"] >= 1
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tmp_path / "run" / "tb"), size_guidance={"tensors": 0})
    events.Reload()
    texts = [t for t in events.Tags()["tensors"] if "findings" in t]
    assert texts, events.Tags()
    # a resumed run keeps sampling on the same grid and the guard keeps the first loss as reference
    spec = config.load(None, ["data.source=spirals", "data.samples=600", "model.hidden=[32]",
                              "train.epochs=5", "checks.every=5", "optimizer.lr=1e-7"])
    resumed = run(spec, out=tmp_path / "run", resume=True, quiet=True)
    records2 = read_jsonl(tmp_path / "run" / "monitors.jsonl")
    assert [r["step"] for r in records2] == list(range(1, resumed.summary["steps"] + 1, 5))
    assert records2[0] == records[0]
    assert resumed.summary["steps"] == 5 * steps_per_epoch
