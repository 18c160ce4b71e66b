"""babysit in a training script of the user's own, in the style of pytorch/examples' MNIST
example adapted to digits: functional ``F.relu``, ``log_softmax`` + ``nll_loss``, its own
loop, with ``babysit.preflight`` and ``babysit.watch`` added as the README shows. Each
planted bug gets its finding with advice that follows the cause; the clean script gets no
warning.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from torch import nn

import babysit

pytestmark = pytest.mark.usefixtures("one_thread")


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(64, 128)
        self.fc2 = nn.Linear(128, 64)
        self.fc3 = nn.Linear(64, 10)

    def forward(self, x):
        x = F.relu(self.fc1(x))
        x = F.relu(self.fc2(x))
        return F.log_softmax(self.fc3(x), dim=1)


def digits():
    x, y = load_digits(return_X_y=True)
    x = torch.tensor(x, dtype=torch.float32)
    x = (x - x.mean()) / x.std()  # one mean and std for every pixel, as pytorch/examples does
    return x, torch.tensor(y)


def train(seed, *, lr=0.05, shuffle_labels=False, zero_grad=True, epochs=6):
    """The user's script; returns (preflight findings, watch findings, test accuracy)."""
    torch.manual_seed(seed)
    x, y = digits()
    order = torch.randperm(len(x))
    x, y = x[order], y[order]
    x_train, y_train, x_test, y_test = x[:1400], y[:1400], x[1400:], y[1400:]
    if shuffle_labels:  # the bug: labels shuffled separately from their inputs
        y_train = y_train[torch.randperm(len(y_train))]
    model = Net()
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    before = babysit.preflight(model, F.nll_loss, (x_train[:256], y_train[:256]))
    with babysit.watch(model, optimizer) as w:
        for _ in range(epochs):
            model.train()
            for i in torch.randperm(len(x_train)).split(64):
                loss = F.nll_loss(model(x_train[i]), y_train[i])
                if zero_grad:
                    optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                if not w.step(loss):
                    break
            if w.stopped:
                break
    model.eval()
    with torch.no_grad():
        accuracy = (model(x_test).argmax(1) == y_test).float().mean().item()
    return before, w.findings(), accuracy


def loud(findings):
    return {f.id: f for f in findings if f.severity != "info"}


def raises_the_lr(findings):
    return [f.id for f in findings if f.severity != "info" and "raise the learning rate" in f.advice.lower()]


@pytest.mark.parametrize("seed", range(3))
def test_the_clean_script_gets_no_warning(seed):
    before, during, accuracy = train(seed)
    assert loud(before) == {} and loud(during) == {}, [(f.id, f.message) for f in before + during]
    assert accuracy > 0.9  # seeds 0-4: 0.957-0.985, mean 0.970, sd 0.010: the bar is 7 sd below


@pytest.mark.parametrize("seed", range(3))
def test_a_learning_rate_100x_kills_the_net_and_the_advice_is_to_lower_it(seed):
    _, during, accuracy = train(seed, lr=5.0)
    found = loud(during)
    # seeds 0-4: loss_exploded, and dead_relu at 98-100% of fc2's inputs, every time
    assert "dead_relu" in found or {"loss_exploded", "nonfinite_loss"} & set(found), sorted(found)
    if "dead_relu" in found:
        assert found["dead_relu"].layer in ("fc2", "fc3")  # measured on the layers' inputs: F.relu has no module
        assert found["dead_relu"].advice.startswith("Lower the learning rate")
        assert "re-initialise" in found["dead_relu"].advice
    assert raises_the_lr(during) == []


@pytest.mark.parametrize("seed", range(3))
def test_labels_shuffled_apart_from_their_inputs_leave_the_loss_at_chance(seed):
    _, during, accuracy = train(seed, shuffle_labels=True)
    found = loud(during)
    assert "loss_at_chance" in found, sorted(found)
    assert "label" in found["loss_at_chance"].advice
    assert accuracy < 0.35  # seeds 0-4: 0.033-0.179, mean 0.103, sd 0.05: the bar is 5 sd above


@pytest.mark.parametrize("seed", range(3))
def test_a_forgotten_zero_grad_is_gradients_accumulate(seed):
    _, during, _ = train(seed, zero_grad=False, lr=0.005)
    found = loud(during)
    assert "gradients_accumulate" in found, sorted(found)  # seeds 0-4: the ratio is 4.8-8.1 against the bar 0.1
    assert found["gradients_accumulate"].severity == "error"
    assert "zero_grad" in found["gradients_accumulate"].advice


def test_intended_accumulation_over_micro_batches_is_not_flagged():
    torch.manual_seed(0)
    x, y = digits()
    model = Net()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    with babysit.watch(model, optimizer) as w:
        for step, i in enumerate(torch.randperm(1600).split(16)):
            F.nll_loss(model(x[i]), y[i]).backward()  # four micro-batches per optimizer step
            if step % 4 == 3:
                optimizer.step()
                optimizer.zero_grad()
                w.step(torch.tensor(0.5))
    assert "gradients_accumulate" not in {f.id for f in w.findings()}


def test_a_net_dead_from_the_start_is_never_told_to_raise_its_learning_rate():
    torch.manual_seed(0)
    x, y = digits()
    model = Net()
    with torch.no_grad():
        model.fc1.bias.fill_(-100.0)  # every unit of fc1 is 0 for every example: nothing below it learns
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    with babysit.watch(model, optimizer) as w:
        for i in torch.randperm(1600).split(16):
            loss = F.nll_loss(model(x[i]), y[i])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            w.step(loss)
    found = {f.id: f for f in w.findings()}
    assert found["dead_relu"].severity == "warning" and found["dead_relu"].layer == "fc2"
    assert found["dead_relu"].evidence["input_dead_fraction"] == 1.0
    assert raises_the_lr(w.findings()) == []
    if "update_ratio_low" in found:  # fc1 does not move at all: explained by the dead units
        assert found["update_ratio_low"].severity == "info"
        assert found["update_ratio_low"].evidence["explained_by"] == "dead_relu"
