"""`babysit landscape RUN` and `babysit.load_run` on tiny trained runs, against independent
truth: the exact Hessian of the loaded model on the training split (torch.func.hessian),
the checkpoints the run wrote, and losses recomputed directly."""

from __future__ import annotations

import copy
import json
import shutil

import matplotlib.image
import pytest
import torch
from torch.func import functional_call

import babysit
from babysit import config, landscape
from babysit.landscape.run import landscape_run
from babysit.report.figures import PNG_SIGNATURE
from babysit.run import run
from babysit.run.load import trajectory_files
from babysit.train.checkpoint import load_checkpoint
from helpers import run_cli

pytestmark = pytest.mark.usefixtures("one_thread")

# 51 parameters (2-8-3), so SLQ's Krylov spaces are exhausted and its nodes are eigenvalues
TINY = ["data.source=spirals", "data.samples=300", "model.hidden=[8]", "data.batch_size=64",
        "train.epochs=3", "checks.preflight=false", "checks.monitors=false"]
ITEMS = "spectrum,surface,trajectory,interpolate"
RESOLUTION = 7


def train(path, *overrides):
    return run(config.load(None, [*TINY, *overrides]), out=path, quiet=True)


@pytest.fixture(scope="module")
def runs(tmp_path_factory, one_thread):
    """One run with a trajectory (every 2 steps; 4 steps an epoch), one without (another
    seed), the first run's landscape of every item."""
    root = tmp_path_factory.mktemp("landscape")
    first = train(root / "a", "train.trajectory_every=2")
    second = train(root / "b", "seed=1")
    result = landscape_run(first.path, ITEMS, resolution=RESOLUTION, quiet=True)
    return {"a": first, "b": second, "landscape": result, "root": root}


def exact_hessian(model, loss_fn, x, y):
    """The Hessian of the mean loss over (x, y) w.r.t. all parameters, flattened, in eval mode."""
    model = copy.deepcopy(model).double().eval()
    names = [n for n, _ in model.named_parameters()]
    params = dict(model.named_parameters())
    theta = torch.cat([p.detach().reshape(-1) for p in params.values()])
    sizes = [p.numel() for p in params.values()]

    def loss(flat):
        state = {n: t.view(params[n].shape) for n, t in zip(names, torch.split(flat, sizes), strict=True)}
        return loss_fn(functional_call(model, state, (x.double(),)), y)

    return torch.func.hessian(loss)(theta), torch.func.grad(loss)(theta), float(loss(theta))


# --------------------------------------------------------------------------- the spectrum


def test_spectrum_matches_the_exact_hessian(runs):
    s = runs["landscape"]["spectrum"]
    loaded = babysit.load_run(runs["a"].path)
    train_split = loaded.splits.train
    assert runs["landscape"]["samples"] == len(train_split)  # 1000 > 216: the whole split
    hessian, gradient, loss = exact_hessian(loaded.model, loaded.loss_fn, train_split.x, train_split.y)
    exact = torch.linalg.eigvalsh(hessian)  # ascending
    scale = float(exact.abs().max())
    assert runs["landscape"]["dtype"] == "float64" and runs["landscape"]["parameters"] == len(exact) == 51
    assert s["top_eigenvalues"] == pytest.approx(exact.flip(0)[:5].tolist(), abs=1e-7 * scale)
    assert s["bottom_eigenvalues"] == pytest.approx(exact[:5].tolist(), abs=1e-7 * scale)
    assert s["lambda_max"] == s["top_eigenvalues"][0] and s["lambda_min"] == s["bottom_eigenvalues"][0]
    residuals = torch.tensor(s["top_residuals"] + s["bottom_residuals"], dtype=torch.float64)
    assert float(residuals.max()) / scale == pytest.approx(s["max_relative_residual"], rel=1e-6)
    assert s["max_relative_residual"] < 1e-6 and s["converged"]
    trace = float(exact.sum())
    assert abs(s["trace"] - trace) <= 3 * s["trace_std_error"] and s["trace_probes"] == 100
    assert s["gradient_norm"] == pytest.approx(float(gradient.norm()), rel=1e-9)
    assert s["loss"] == pytest.approx(loss, rel=1e-12)
    # a 3-epoch network is no critical point: its gradient is far above the tolerance
    assert s["critical_point"] == "not_critical" and s["gradient_norm"] > 1e-3
    # the positive part: eigenvalues above 1e-6 of the largest |eigenvalue| (SLQ's nodes are exact here)
    positive = exact[exact > 1e-6 * scale]
    assert s["positive_condition_number"] == pytest.approx(float(positive.max() / positive.min()), rel=1e-6)
    negative_mass = float(exact.clamp(max=0).abs().sum()) / float(exact.clamp(min=0).sum())
    assert s["negative_positive_mass_ratio"] == pytest.approx(negative_mass, rel=0.5)  # 10 SLQ probes
    weights = torch.tensor(s["density"]["weights"], dtype=torch.float64)
    assert bool((weights >= 0).all()) and float(weights.sum()) == pytest.approx(1.0, abs=1e-12)
    lr = s["learning_rate"]
    spec = loaded.spec.optimizer
    assert lr["lr"] == spec.lr and lr["two_over_lambda_max"] == pytest.approx(2 / float(exact[-1]), rel=1e-9)
    assert lr["limit"] == pytest.approx(2 * (1 + spec.momentum) / (float(exact[-1]) + spec.weight_decay), rel=1e-9)
    assert lr["verdict"].split(":")[0] in ("above the limit", "near the limit", "below the limit", "far below the limit")


def test_step_size_verdict_words():
    from babysit.landscape.run import step_size_verdict

    assert step_size_verdict(4.0, 0.6).get("verdict").startswith("above the limit")  # 2/4 = 0.5
    assert step_size_verdict(4.0, 0.4).get("verdict").startswith("near the limit")
    assert step_size_verdict(4.0, 0.1).get("verdict").startswith("below the limit")
    assert step_size_verdict(4.0, 1e-4).get("verdict").startswith("far below")
    # heavy ball: the limit grows to 2(1+m)/lambda; Nesterov: (2+2m)/((1+2m) lambda)
    assert step_size_verdict(4.0, 0.1, "momentum", 0.9)["limit"] == pytest.approx(0.95)
    assert step_size_verdict(4.0, 0.1, "nesterov", 0.5)["limit"] == pytest.approx(3 / 8)
    assert step_size_verdict(4.0, 0.1, "adam")["verdict"].startswith("not comparable")
    assert step_size_verdict(-1.0, 0.1)["limit"] is None


# --------------------------------------------------------------------------- surfaces, lines


def test_surface_and_interpolation_values(runs):
    result = runs["landscape"]
    f, i = result["surface"], result["interpolation"]
    losses = torch.tensor(f["losses"], dtype=torch.float64)
    mid = RESOLUTION // 2
    assert losses.shape == (RESOLUTION, RESOLUTION) and f["coordinates"][mid] == 0.0
    assert float(losses[mid, mid]) == f["center_loss"] == pytest.approx(result["spectrum"]["loss"], rel=1e-12)
    assert f["min_loss"] == float(losses.min()) and f["max_loss"] == float(losses.max())
    # the sharpest direction is steeper at its centre than either random one of the same length
    curvature = f["curvature_at_center"]
    assert curvature["top Hessian eigenvector"] > max(curvature["random direction 1"], curvature["random direction 2"])
    # interpolation from the initial weights: alpha 0 is the init, alpha 1 the trained weights
    loaded = babysit.load_run(runs["a"].path)
    start = copy.deepcopy(loaded.model).double()
    start.load_state_dict(loaded.initial_state)
    x, y = loaded.splits.train.x.double(), loaded.splits.train.y
    with torch.no_grad():
        assert i["loss_start"] == pytest.approx(float(loaded.loss_fn(start.eval()(x), y)), rel=1e-12)
    assert i["alphas"][0] == 0.0 and i["alphas"][-1] == 1.0 and len(i["alphas"]) == RESOLUTION
    assert i["loss_end"] == pytest.approx(f["center_loss"], rel=1e-12)
    assert i["barrier"] >= 0.0 and i["start"] == "initialisation"


def test_figures_are_valid_pngs_and_the_report_shows_them(runs):
    path = runs["a"].path
    names = {"density", "eigenvalues", "surface", "curves_1d", "trajectory", "interpolation"}
    assert set(runs["landscape"]["figures"]) == {f"landscape_{n}.png" for n in names}
    for name in names:
        file = path / "figures" / f"landscape_{name}.png"
        assert file.read_bytes()[:8] == PNG_SIGNATURE
        image = matplotlib.image.imread(file)  # decodes: a valid PNG
        assert image.shape[0] > 100 and image.shape[1] > 100
    page = (path / "report.html").read_text(encoding="utf-8")
    assert 'id="landscape"' in page and "landscape_surface" in page and "landscape_trajectory" in page
    assert "spectrum.critical_point" in page and page.count("data:image/png;base64,") >= 6
    saved = json.loads((path / "landscape.json").read_text(encoding="utf-8"))
    assert saved["spectrum"]["top_eigenvalues"] == runs["landscape"]["spectrum"]["top_eigenvalues"]


# --------------------------------------------------------------------------- load_run


def test_load_run_gives_the_best_weights_the_splits_and_the_loss(runs):
    path = runs["a"].path
    rng = torch.get_rng_state()
    loaded = babysit.load_run(path)
    assert torch.equal(torch.get_rng_state(), rng)  # rebuilding the run leaves the global RNG alone
    best = torch.load(path / "checkpoints" / "best.pt", weights_only=True)["model"]
    state = loaded.model.state_dict()
    assert loaded.checkpoint == "best.pt" and state.keys() == best.keys()
    assert all(torch.equal(state[k], v) for k, v in best.items())
    trained = runs["a"].splits
    for name in ("train", "val", "test"):
        assert torch.equal(getattr(loaded.splits, name).x, getattr(trained, name).x.cpu())
        assert torch.equal(getattr(loaded.splits, name).y, getattr(trained, name).y.cpu())
    assert isinstance(loaded.loss_fn, torch.nn.CrossEntropyLoss)
    # the seeded init rebuilt is the snapshot the trajectory saved at step 0
    step0 = load_checkpoint(trajectory_files(path)[0])
    assert step0["step"] == 0
    assert torch.equal(step0["weights"], torch.cat([loaded.initial_state[n].reshape(-1) for n in step0["names"]]))


def test_load_run_falls_back_to_last_and_refuses_bad_directories(runs, tmp_path):
    copied = tmp_path / "copy"
    shutil.copytree(runs["b"].path, copied)
    (copied / "checkpoints" / "best.pt").unlink()
    loaded = babysit.load_run(copied)
    last = torch.load(copied / "checkpoints" / "last.pt", weights_only=True)["model"]
    assert loaded.checkpoint == "last.pt"
    assert all(torch.equal(loaded.model.state_dict()[k], v) for k, v in last.items())
    with pytest.raises(babysit.errors.BabysitError, match="no such run directory"):
        babysit.load_run(tmp_path / "missing")
    with pytest.raises(babysit.errors.BabysitError, match="no config.yaml"):
        babysit.load_run(tmp_path)
    (copied / "checkpoints" / "last.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(babysit.errors.BabysitError, match="not a readable babysit checkpoint"):
        babysit.load_run(copied)


def test_the_api_leaves_the_loaded_model_untouched(runs):
    loaded = babysit.load_run(runs["a"].path)
    model = loaded.model
    model.train()
    next(model.parameters()).requires_grad_(False)  # a frozen layer stays frozen
    before = {k: v.clone() for k, v in model.state_dict().items()}
    flags = [m.training for m in model.modules()]
    grads = [p.requires_grad for p in model.parameters()]
    data = (loaded.splits.train.x, loaded.splits.train.y)
    landscape.hessian_eigenvalues(model, loaded.loss_fn, data, k=2)
    landscape.hessian_trace(model, loaded.loss_fn, data, probes=4)
    landscape.classify_critical_point(model, loaded.loss_fn, data)
    landscape.loss_surface(model, loaded.loss_fn, data, steps=3)
    landscape.interpolate(model, loaded.initial_state, loaded.loss_fn, data, steps=3)
    after = model.state_dict()
    assert all(torch.equal(after[k], v) and after[k].dtype == v.dtype for k, v in before.items())
    assert [m.training for m in model.modules()] == flags and [p.requires_grad for p in model.parameters()] == grads


# --------------------------------------------------------------------------- trajectory


def test_trajectory_snapshots_every_n_steps(runs):
    path = runs["a"].path
    steps = [int(p.stem.removeprefix("step_")) for p in trajectory_files(path)]
    total = runs["a"].summary["steps"]
    assert total == 12 and steps == list(range(0, total + 1, 2))
    last = load_checkpoint(path / "checkpoints" / "last.pt")["model"]
    final = load_checkpoint(trajectory_files(path)[-1])
    assert final["format"] == "babysit-trajectory-1" and final["step"] == total
    assert torch.equal(final["weights"], torch.cat([last[n].reshape(-1) for n in final["names"]]))
    assert not (runs["b"].path / "checkpoints" / "trajectory").exists()  # off: no callback, no folder

    t = runs["landscape"]["trajectory"]
    assert t["snapshots"] == len(steps) and t["steps"] == steps and len(t["path"]) == len(steps)
    ratio = t["explained_variance_ratio"]
    assert ratio[0] >= ratio[1] >= 0 and sum(ratio) <= 1 + 1e-12
    assert t["center_loss"] == pytest.approx(runs["landscape"]["spectrum"]["loss"], rel=1e-12)


def test_resume_keeps_the_trajectory(tmp_path, capsys):
    out = tmp_path / "r"
    train(out, "train.epochs=2", "train.trajectory_every=3")
    stale = out / "checkpoints" / "trajectory" / "step_999999.pt"  # from a segment that was lost
    shutil.copy(trajectory_files(out)[-1], stale)
    code, _, err = run_cli(["train", "--out", str(out), "--resume", "train.epochs=3", "-q"], capsys)
    assert code == 0, err
    steps = [int(p.stem.removeprefix("step_")) for p in trajectory_files(out)]
    assert steps == [0, 3, 6, 9, 12] and not stale.exists()
    last = load_checkpoint(out / "checkpoints" / "last.pt")["model"]
    final = load_checkpoint(trajectory_files(out)[-1])
    assert torch.equal(final["weights"], torch.cat([last[n].reshape(-1) for n in final["names"]]))


# --------------------------------------------------------------------------- the command


def test_cli_interpolates_to_another_run_and_is_deterministic(runs, capsys):
    a, b = runs["a"].path, runs["b"].path
    args = ["landscape", str(a), "--what", "interpolate", "--other", str(b), "-r", "5", "-q"]
    code, out, err = run_cli(args, capsys)
    assert code == 0, err
    assert "interpolation" in out and "barrier" in out
    first = json.loads((a / "landscape.json").read_text())
    i = first["interpolation"]
    other = babysit.load_run(b)
    mine = babysit.load_run(a).splits.train  # the line is measured on this run's training sample
    x, y = mine.x, mine.y
    with torch.no_grad():
        assert i["loss_end"] == pytest.approx(float(other.loss_fn(other.model.double()(x.double()), y)), rel=1e-12)
    assert i["loss_start"] == pytest.approx(first["spectrum"]["loss"], rel=1e-12)
    assert str(b) in i["end"] and "spectrum" in first  # earlier sections are kept
    code, _, err = run_cli(args, capsys)
    second = json.loads((a / "landscape.json").read_text())["interpolation"]
    assert code == 0 and {k: v for k, v in second.items() if k != "seconds"} == {
        k: v for k, v in i.items() if k != "seconds"}


def test_cli_spectrum_on_a_sample_is_deterministic(runs, capsys):
    path = runs["b"].path
    outputs = []
    for _ in range(2):
        code, out, err = run_cli(["landscape", str(path), "--what", "spectrum", "--samples", "100", "-q"], capsys)
        assert code == 0, err
        saved = json.loads((path / "landscape.json").read_text())
        assert saved["samples"] == 100 and "surface" not in saved
        outputs.append({k: v for k, v in saved["spectrum"].items() if k != "seconds"})
    assert outputs[0] == outputs[1]
    assert "end point:" in out and "learning rate:" in out


@pytest.mark.parametrize("args, message", [
    (["MISSING"], "no such run directory"),
    (["RUN", "--what", "spectrum,hills"], "unknown item 'hills'"),
    (["B", "--what", "trajectory"], "0 trajectory snapshots"),
    (["RUN", "--resolution", "10"], "must be odd"),
    (["RUN", "--other", "B"], "only used by --what interpolate"),
])
def test_cli_bad_inputs_exit_2_with_one_line(runs, capsys, args, message):
    names = {"RUN": str(runs["a"].path), "B": str(runs["b"].path), "MISSING": str(runs["root"] / "nope")}
    code, out, err = run_cli(["landscape", *[names.get(a, a) for a in args]], capsys)
    assert code == 2
    assert message in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err
