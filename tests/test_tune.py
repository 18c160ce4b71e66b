"""The finders: the lr range test's suggestion is stable, trains well and respects known
stability limits; the batch-size finder measures what fits and what is fastest.

The learning-rate tests follow Smith (2015/2017) and fastai's lr_find; the closed-form
check uses gradient descent on least squares, where the largest stable step is
``2 / lambda_max`` of the loss's Hessian.
"""

from __future__ import annotations

import io
import json
import math
import struct
from pathlib import Path

import pytest
import torch
from torch import nn

from babysit import config
from babysit.errors import BabysitError
from babysit.optim.optimizers import build_optimizer
from babysit.run import prepare, run
from babysit.tune import (
    BatchFindResult,
    LRFindResult,
    batch_find,
    batch_find_lines,
    batch_find_table,
    batch_finder,
    batch_sizes,
    format_lr,
    lr_find,
    lr_find_from_spec,
    lr_schedule,
    smooth_in_log_lr,
    write_lr_find,
)
from babysit.tune.progress import StepProgress
from helpers import run_cli

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "mnist1d-mlp.yaml"
FAST = ["data.source=spirals", "data.samples=300", "data.batch_size=32", "name=spirals-fast"]


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def mnist1d_results() -> dict[int, LRFindResult]:
    """The range test on the example, seeds 0-4 (init, validation split, shuffling, dropout)."""
    return {seed: lr_find_from_spec(config.load(EXAMPLE, [f"seed={seed}"])) for seed in range(5)}


def _png_size(path: Path) -> tuple[int, int]:
    """Width and height from a PNG's signature and IHDR chunk; fails on anything else."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG signature"
    assert data[12:16] == b"IHDR"
    assert data[-8:-4] == b"IEND"
    return struct.unpack(">II", data[16:24])


# --------------------------------------------------------------------------- lr_find: the example


def test_suggestion_is_stable_across_seeds(mnist1d_results):
    suggestions = [r.suggestion for r in mnist1d_results.values()]
    assert max(suggestions) / min(suggestions) <= 2.0, suggestions


def test_suggestion_sits_below_the_minimum_and_the_divergence(mnist1d_results):
    for result in mnist1d_results.values():
        assert result.note is None
        assert result.suggestion == pytest.approx(result.lr_at_minimum / 10)
        assert 1e-4 < result.suggestion < 0.1  # AdamW on a small MLP: the usual decade
        if result.diverged_at is not None:
            assert result.lr_at_minimum < result.diverged_at
        assert len(result.lrs) == len(result.losses) == len(result.smoothed) <= 200
        # the curve really has the range test's shape: lower at its minimum than at the start
        lowest = min(result.smoothed)
        assert lowest < 0.8 * result.losses[0]


@pytest.mark.slow
def test_training_at_the_suggestion_reaches_the_example_accuracy(mnist1d_results, tmp_path):
    """Reproduction: the suggestion trains about as well as the example's hand-picked rate (0.01).

    Both are trained with seeds 0-4 (one data split, data.split_seed 0) and compared by their
    mean test accuracy: one run's accuracy moves by 1-4 points with the seed, and a
    single-seed comparison failed on another machine (69.3% against 73.4%). Measured here
    (one thread): suggestion 0.0042: 68.1, 72.3, 68.4, 71.1, 71.4% (mean 70.26, sd 1.89);
    lr 0.01: 71.8, 72.1, 73.9, 71.6, 72.0% (mean 72.28, sd 0.93). The difference of the means
    is -2.0 points with a standard error of 0.94, so its bar sits 3 standard errors below:
    -4.9 points. The suggestion's own mean has a standard error of 0.85: its bar, 3 of those
    under its mean, is 67.7%, at the published MNIST-1D MLP baseline (about 68%).
    """
    lr = format_lr(mnist1d_results[0].suggestion)
    accuracy: dict[str, list[float]] = {"suggested": [], "example": []}
    for seed in range(5):
        for name, overrides in (("suggested", [f"optimizer.lr={lr}"]), ("example", [])):
            spec = config.load(EXAMPLE, [*overrides, f"seed={seed}"])
            accuracy[name].append(run(spec, out=tmp_path / f"{name}-{seed}", quiet=True, report=False).summary["test_acc"])
    means = {name: sum(v) / len(v) for name, v in accuracy.items()}
    print(json.dumps({"lr": lr, "test_acc": accuracy, "means": means}))
    assert means["suggested"] >= 0.677, (lr, accuracy)
    assert means["suggested"] >= means["example"] - 0.049, (lr, accuracy)


# --------------------------------------------------------------------------- lr_find: closed form


def _least_squares(seed: int, n: int = 256, d: int = 8) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Ill-conditioned least squares and its largest stable gradient-descent step.

    For ``L(w) = mean((x w - y)^2)`` the Hessian is ``2 x^T x / n``; gradient descent
    converges iff ``lr < 2 / lambda_max`` of it.
    """
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g) * torch.logspace(0, 1, d)  # feature scales 1..10
    y = x @ torch.randn(d, 1, generator=g) + 0.1 * torch.randn(n, 1, generator=g)
    hessian = 2 * x.double().T @ x.double() / n
    return x, y, 2 / torch.linalg.eigvalsh(hessian).max().item()


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_gradient_descent_on_least_squares_stops_just_past_the_stability_limit(seed):
    """Full-batch GD: no stop below 2/lambda_max (no false alarm), a stop soon above it.

    Past the limit the error along the top eigenvector grows by ``|1 - lr lambda|`` a step
    from rounding level, so the loss shows it some steps later; with 200 steps a decade
    that is about 1.5x the limit.
    """
    x, y, stable = _least_squares(seed)
    torch.manual_seed(seed)
    result = lr_find(nn.Linear(8, 1, bias=False), nn.MSELoss(),
                     lambda m: torch.optim.SGD(m.parameters(), lr=1.0), x, y, "full",
                     start=1e-5, end=1.0, steps=1000, seed=seed)
    assert result.diverged_at is not None
    assert stable <= result.diverged_at <= 2.0 * stable, result.diverged_at / stable
    assert all(math.isfinite(v) for v in result.losses[:-1])
    assert result.suggestion < 0.5 * stable


def test_a_single_loss_spike_neither_stops_the_test_nor_moves_the_suggestion():
    """One batch whose loss reads 50x (gradient untouched) mid-run: same stop, same suggestion."""
    spec = config.load(EXAMPLE)
    _, splits, model, loss_fn = prepare(spec)
    calls = {"n": 0}

    def spiky(out, target):
        loss = loss_fn(out, target)
        calls["n"] += 1
        if calls["n"] == 60:  # lr ~ 1e-5, where the curve is still flat
            return loss + (49 * loss).detach()
        return loss

    def factory(m):
        return build_optimizer(spec.optimizer, m)

    args = (splits.train.x, splits.train.y, spec.data.batch_size)
    clean = lr_find(model, loss_fn, factory, *args, seed=0)
    spiked = lr_find(model, spiky, factory, *args, seed=0)
    assert spiked.losses[59] > 20 * clean.losses[59]
    assert len(spiked.lrs) > 60 and spiked.diverged_at == clean.diverged_at
    assert spiked.suggestion == pytest.approx(clean.suggestion, rel=0.1)


# --------------------------------------------------------------------------- lr_find: behaviour


def _tiny_problem():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(128, 4, generator=g)
    y = (x[:, 0] + x[:, 1] > 0).long()
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Dropout(0.1), nn.Linear(16, 2))
    return model, x, y


def _sgd(m):
    return torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9)


def test_lr_find_leaves_the_model_and_the_global_rng_alone():
    model, x, y = _tiny_problem()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rng = torch.get_rng_state()
    lr_find(model, nn.CrossEntropyLoss(), _sgd, x, y, 16, start=1e-4, end=10.0, steps=40, seed=3)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert torch.equal(rng, torch.get_rng_state())
    assert all(p.grad is None for p in model.parameters())


def test_lr_find_is_reproducible_per_seed():
    model, x, y = _tiny_problem()
    kwargs = dict(start=1e-4, end=10.0, steps=40)
    a = lr_find(model, nn.CrossEntropyLoss(), _sgd, x, y, 16, seed=1, **kwargs)
    b = lr_find(model, nn.CrossEntropyLoss(), _sgd, x, y, 16, seed=1, **kwargs)
    c = lr_find(model, nn.CrossEntropyLoss(), _sgd, x, y, 16, seed=2, **kwargs)
    assert a.losses == b.losses and a.suggestion == b.suggestion
    assert a.losses != c.losses


def test_lr_schedule_is_log_spaced_from_start_to_end():
    lrs = lr_schedule(1e-6, 1.0, 7)
    assert lrs[0] == pytest.approx(1e-6) and lrs[-1] == pytest.approx(1.0)
    ratios = [b / a for a, b in zip(lrs, lrs[1:], strict=False)]
    assert ratios == pytest.approx([10.0] * 6)


def test_smoothing_has_no_lag():
    """A symmetric valley in log-lr keeps its minimum where it is (an EMA would move it right)."""
    lrs = lr_schedule(1e-4, 1.0, 81)
    losses = [(math.log10(lr) + 2) ** 2 for lr in lrs]
    smooth = smooth_in_log_lr(lrs, losses)
    assert lrs[smooth.index(min(smooth))] == pytest.approx(1e-2)


def test_the_notes_say_when_the_range_misses_the_minimum():
    model, x, y = _tiny_problem()
    flat = lr_find(model, nn.CrossEntropyLoss(), _sgd, x, y, 16, start=1e-9, end=1e-6, steps=20)
    assert flat.diverged_at is None and "minimum is noise; raise end" in flat.note
    falling = lr_find(model, nn.CrossEntropyLoss(), _sgd, x, y, 16, start=1e-4, end=0.3, steps=40)
    assert falling.diverged_at is None and "still falling at lr 0.3; raise end" in falling.note
    nan = lr_find(model, lambda out, t: out.sum() * float("nan"), _sgd, x, y, 16, start=1e-3, end=1.0, steps=20)
    assert nan.diverged_at == pytest.approx(1e-3) and "lower start" in nan.note
    assert nan.to_dict()["losses"] == [None]


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"start": 0.0}, "start must be a number > 0"),
    ({"start": 1.0, "end": 0.5}, "end must be a number > start"),
    ({"steps": 2}, "steps must be an integer >= 5"),
    ({"batches_per_lr": 0}, "batches_per_lr must be >= 1"),
])
def test_lr_find_rejects_bad_ranges(kwargs, message):
    model, x, y = _tiny_problem()
    with pytest.raises(BabysitError, match=message):
        lr_find(model, nn.CrossEntropyLoss(), _sgd, x, y, 16, **kwargs)


def test_lbfgs_is_refused():
    with pytest.raises(BabysitError, match="lbfgs"):
        lr_find_from_spec(config.load(None, [*FAST, "optimizer.name=lbfgs"]))


def test_format_lr_reads_back_as_the_same_float():
    for lr in (0.004237, 1e-5, 2.5e-7, 3.0, 0.1):
        text = format_lr(lr)
        spec = config.load(None, [f"optimizer.lr={text}"])
        assert spec.optimizer.lr == pytest.approx(float(f"{lr:.2g}"))


# --------------------------------------------------------------------------- lr_find: files


def test_files_are_written_and_the_figure_is_a_png(tmp_path):
    result = lr_find_from_spec(config.load(None, FAST), start=1e-4, end=10.0, steps=30)
    json_path, png_path = write_lr_find(result, tmp_path / "out", extra={"name": "spirals-fast"})
    data = json.loads(json_path.read_text())
    assert data["name"] == "spirals-fast" and data["suggestion"] == result.suggestion
    assert len(data["lrs"]) == len(data["losses"]) == len(data["smoothed"])
    width, height = _png_size(png_path)
    assert width > 300 and height > 200


def test_progress_bar_draws_on_a_terminal_only():
    terminal, log = io.StringIO(), io.StringIO()
    for stream, force in ((terminal, True), (log, None)):
        with StepProgress("lr-find", 3, stream=stream, force_terminal=force) as bar:
            for i in range(3):
                bar.update(i + 1, "loss 1.0")
            bar.finish(3)
    assert "lr-find" in terminal.getvalue()
    assert log.getvalue() == ""


# --------------------------------------------------------------------------- batch_find


def _batch_problem(n: int = 300):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 20, generator=g)
    y = torch.randint(0, 3, (n,), generator=g)
    model = nn.Sequential(nn.Linear(20, 32), nn.ReLU(), nn.Linear(32, 3))
    return model, x, y


def _adam(m):
    return torch.optim.Adam(m.parameters(), lr=1e-3)


def test_batch_sizes_are_powers_of_two_up_to_the_cap():
    assert batch_sizes(300) == [8, 16, 32, 64, 128, 256]
    assert batch_sizes(256) == [8, 16, 32, 64, 128, 256]
    assert batch_sizes(3) == [3]
    with pytest.raises(BabysitError):
        batch_sizes(0)


def test_batch_find_measures_every_size_up_to_the_training_set():
    model, x, y = _batch_problem()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    result = batch_find(model, nn.CrossEntropyLoss(), _adam, x, y, steps=2, warmup=1, repeats=1)
    assert result.sizes == [8, 16, 32, 64, 128, 256]  # monotone, powers of two, capped by len(x)
    assert result.out_of_memory_at is None and result.largest == 256 and result.cap == 300
    assert result.best in result.sizes
    best = result.sizes.index(result.best)
    assert result.samples_per_s[best] == max(result.samples_per_s)
    for size, seconds, rate in zip(result.sizes, result.seconds_per_step, result.samples_per_s, strict=True):
        assert seconds > 0 and rate == pytest.approx(size / seconds)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_batch_find_honours_max_and_explicit_sizes():
    model, x, y = _batch_problem()
    capped = batch_find(model, nn.CrossEntropyLoss(), _adam, x, y, max_batch=50, steps=1, warmup=0, repeats=1)
    assert capped.sizes == [8, 16, 32] and capped.cap == 50
    chosen = batch_find(model, nn.CrossEntropyLoss(), _adam, x, y, sizes=[64, 10, 64], steps=1, warmup=0, repeats=1)
    assert chosen.sizes == [10, 64]
    beyond = batch_find(model, nn.CrossEntropyLoss(), _adam, x, y, sizes=[512], steps=1, warmup=0, repeats=1)
    assert beyond.sizes == [512]  # the data is cycled to fill a batch larger than the set


def test_out_of_memory_ends_the_search_and_empties_the_cache(monkeypatch):
    model, x, y = _batch_problem()
    real_step, emptied = batch_finder.train_step, []

    def step(model, loss_fn, optimizer, xb, yb, autocast):
        if len(xb) >= 64:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        real_step(model, loss_fn, optimizer, xb, yb, autocast)

    monkeypatch.setattr(batch_finder, "train_step", step)
    monkeypatch.setattr(batch_finder, "_empty_cache", emptied.append)
    result = batch_find(model, nn.CrossEntropyLoss(), _adam, x, y, steps=1, warmup=1, repeats=1)
    assert result.sizes == [8, 16, 32]
    assert result.out_of_memory_at == 64 and result.largest == 32
    assert emptied == [x.device]
    assert batch_find_lines(result)[0] == "largest batch that fits: 32 (out of memory at 64)"


def test_out_of_memory_at_the_first_size_is_reported(monkeypatch):
    model, x, y = _batch_problem()

    def step(*args):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory")

    monkeypatch.setattr(batch_finder, "train_step", step)
    result = batch_find(model, nn.CrossEntropyLoss(), _adam, x, y, steps=1)
    assert result.sizes == [] and result.largest is None and result.best is None
    assert "no batch fits" in batch_find_lines(result)[0]


def test_other_errors_are_not_mistaken_for_out_of_memory(monkeypatch):
    model, x, y = _batch_problem()

    def step(*args):
        raise RuntimeError("mat1 and mat2 shapes cannot be multiplied")

    monkeypatch.setattr(batch_finder, "train_step", step)
    with pytest.raises(RuntimeError, match="shapes"):
        batch_find(model, nn.CrossEntropyLoss(), _adam, x, y, steps=1)


def test_the_table_lists_sizes_in_order_and_marks_the_best():
    from rich.console import Console

    result = BatchFindResult(sizes=[8, 16, 32], seconds_per_step=[1e-3, 1e-3, 4e-3],
                             samples_per_s=[8e3, 16e3, 8e3], device="cpu", cap=40)
    stream = io.StringIO()
    Console(file=stream, width=100).print(batch_find_table(result))
    rows = [line for line in stream.getvalue().splitlines() if line.strip("│ ").split(" ")[0].isdigit()]
    assert [int(r.strip("│ ").split()[0]) for r in rows] == [8, 16, 32]
    assert "best" in rows[1] and "largest" in rows[2]
    assert batch_find_lines(result)[1] == "best throughput: batch 16, 16,000 samples/s"


# --------------------------------------------------------------------------- the command line




def test_cli_lr_find_writes_the_figure_and_prints_the_command(tmp_path, capsys):
    code, out, err = run_cli(["lr-find", *FAST, "optimizer.lr=0.5", "--start", "1e-4", "--steps", "40",
                              "--out", str(tmp_path / "lr")], capsys)
    assert code == 0, err
    data = json.loads((tmp_path / "lr" / "lr_find.json").read_text())
    _png_size(tmp_path / "lr" / "lr_find.png")
    assert data["name"] == "spirals-fast" and data["steps"] == 40 and data["start"] == 1e-4
    lr = format_lr(data["suggestion"])
    assert f"suggested learning rate: {lr}" in out
    use = next(line for line in out.splitlines() if line.startswith("use it: "))
    # the overrides given are kept, the old optimizer.lr is replaced by the suggestion
    assert use.endswith(f"optimizer.lr={lr}") and "optimizer.lr=0.5" not in use and "data.samples=300" in use
    command = use.removeprefix("use it: babysit train ").split()
    assert config.load(None, command).optimizer.lr == pytest.approx(float(lr))


def test_cli_lr_find_default_directory_never_overwrites(tmp_path, capsys):
    for _ in range(2):
        code, _, err = run_cli(["lr-find", *FAST, "--steps", "20", "-q"], capsys, cwd=tmp_path)
        assert code == 0, err
    assert (tmp_path / "runs" / "spirals-fast-lr-find" / "lr_find.png").exists()
    assert (tmp_path / "runs" / "spirals-fast-lr-find-2" / "lr_find.json").exists()


def test_cli_batch_find_prints_the_table(tmp_path, capsys):
    code, out, err = run_cli(["batch-find", *FAST, "--max", "64", "--steps", "1", "-q",
                              "--out", str(tmp_path)], capsys)
    assert code == 0, err
    assert "samples / s" in out and "largest batch that fits: 64" in out and "best throughput: batch" in out
    data = json.loads((tmp_path / "batch_find.json").read_text())
    assert data["sizes"] == [8, 16, 32, 64] and data["best"] in data["sizes"]


@pytest.mark.parametrize(("args", "expected"), [
    (["lr-find", "--start", "-1"], "start must be a number > 0"),
    (["lr-find", "--start", "1", "--end", "0.1"], "end must be a number > start"),
    (["lr-find", "--steps", "3"], "steps must be an integer >= 5"),
    (["lr-find", "optimizer.name=lbfgs"], "lbfgs"),
    (["lr-find", "optimizer.lr=-1"], "optimizer.lr: must be > 0"),
    (["lr-find", "nope.yaml"], "nope.yaml: spec file not found"),
    (["batch-find", "--max", "0"], "--max must be >= 1"),
    (["batch-find", "modle.kind=mlp"], "modle: unknown key"),
])
def test_cli_bad_input_is_one_line_and_exit_2(args, expected, tmp_path, capsys):
    code, out, err = run_cli(args, capsys, cwd=tmp_path)
    assert code == 2, (out, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and expected in lines[0], err
    assert not (tmp_path / "runs").exists()


def test_cli_help_shows_examples(capsys):
    for command in ("lr-find", "batch-find"):
        code, out, _ = run_cli([command, "--help"], capsys)
        assert code == 0 and f"babysit {command} examples/" in out
