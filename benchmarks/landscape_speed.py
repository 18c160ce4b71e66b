"""babysit.landscape against the naive reference code most landscape tools are built like.

The model: the MNIST-1D MLP example (examples/mnist1d-mlp.yaml: 40-100-100-10, ReLU,
dropout 0.2, 15,210 parameters), trained briefly by ``babysit train`` into a temporary
folder and loaded back with ``babysit.load_run`` (best weights, eval mode), in float64 on
the CPU, on the fixed sample of 1,000 training examples ``babysit landscape`` uses.

Timed, each by babysit and by a naive reference in the same process, on the same sample:

- ``top5``: the top-5 Hessian eigenvalues to a relative residual ||Hv - λv|| / λmax of
  1e-6. babysit: Lanczos with full re-orthogonalisation (``hessian_eigenvalues``). The
  reference: power iteration with deflation (Gram-Schmidt against the pairs found), as
  PyHessian's ``eigenvalues(top_n=5)`` does, run to the same residual (PyHessian itself
  stops on a relative change of the eigenvalue of 1e-3, which leaves it at 2-3e-3), with
  an H v that makes one Python-level pass over mini-batches of 100 (double backward per
  batch through the module's own parameters, summed weighted by batch size).
- ``trace``: Hutchinson with 100 Rademacher probes; the reference with the batched H v.
- ``density``: stochastic Lanczos quadrature, 10 runs x 90 steps, full
  re-orthogonalisation in both; the reference with the batched H v.
- ``surface``: the loss on a 31x31 grid of filter-normalised directions. babysit:
  ``loss_surface`` (one functional call per grid point, or vmap over chunks of points);
  the reference: for each point, write the weights into the model and loop over the
  mini-batches, as loss-landscapes does.

Prints one JSON line: seconds, H v products, residuals and speed ratios (reference /
babysit). Never asserted as a test.

    python benchmarks/landscape_speed.py [--threads 1] [--epochs 5]
"""

from __future__ import annotations

import argparse
import json
import math
import tempfile
import time
from pathlib import Path

import torch
from torch import Tensor, nn

import babysit
from babysit import config, landscape
from babysit.landscape import HessianOperator
from babysit.run import run

ROOT = Path(__file__).resolve().parent.parent
SAMPLES, NAIVE_BATCH = 1000, 100
TOL = 1e-6
PROBES, DENSITY_STEPS, DENSITY_RUNS, GRID = 100, 90, 10, 31
POWER_MAX_STEPS = 3000  # per eigenpair


# --------------------------------------------------------------------------- the reference


class NaiveHessian:
    """H v as reference code computes it: per mini-batch, forward, gradient with a graph,
    gradient of (g . v); summed weighted by batch size. Python loops, module parameters."""

    def __init__(self, model: nn.Module, loss_fn: nn.Module, x: Tensor, y: Tensor, batch: int):
        self.model, self.loss_fn = model, loss_fn
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.batches = list(zip(torch.split(x, batch), torch.split(y, batch), strict=True))
        self.n = len(x)
        self.products = 0

    def matvec(self, v: list[Tensor]) -> list[Tensor]:
        out = [torch.zeros_like(p) for p in self.params]
        for xb, yb in self.batches:
            loss = self.loss_fn(self.model(xb), yb)
            grads = torch.autograd.grad(loss, self.params, create_graph=True)
            hv = torch.autograd.grad(grads, self.params, grad_outputs=v)
            for o, h in zip(out, hv, strict=True):
                o.add_(h, alpha=len(xb) / self.n)
        self.products += 1
        return out


def dot(a: list[Tensor], b: list[Tensor]) -> Tensor:
    return sum((x * y).sum() for x, y in zip(a, b, strict=True))


def normalise(v: list[Tensor]) -> list[Tensor]:
    norm = math.sqrt(float(dot(v, v)))
    return [t / norm for t in v]


def orthogonalise(v: list[Tensor], basis: list[list[Tensor]]) -> list[Tensor]:
    for b in basis:
        c = dot(v, b)
        v = [t - c * u for t, u in zip(v, b, strict=True)]
    return v


def naive_top_eigenvalues(hess: NaiveHessian, k: int, tol: float, generator: torch.Generator):
    """Power iteration with deflation (PyHessian's eigenvalues), stopped on the residual."""
    found, values, residuals = [], [], []
    scale = None
    for _ in range(k):
        v = normalise(orthogonalise([torch.randn(p.shape, generator=generator, dtype=p.dtype)
                                     for p in hess.params], found))
        lam, residual = 0.0, math.inf
        for _ in range(POWER_MAX_STEPS):
            hv = hess.matvec(v)
            lam = float(dot(hv, v))
            residual = math.sqrt(float(dot(*(2 * [[h - lam * t for h, t in zip(hv, v, strict=True)]]))))
            if residual <= tol * (scale or abs(lam)):
                break
            v = normalise(orthogonalise(hv, found))
        scale = scale or abs(lam)
        found.append(v)
        values.append(lam)
        residuals.append(residual)
    return values, residuals


def naive_trace(hess: NaiveHessian, probes: int, generator: torch.Generator) -> float:
    total = 0.0
    for _ in range(probes):
        z = [torch.randint(0, 2, p.shape, generator=generator).to(p.dtype) * 2 - 1 for p in hess.params]
        total += float(dot(hess.matvec(z), z))
    return total / probes


def naive_density(hess: NaiveHessian, steps: int, runs: int, generator: torch.Generator) -> list[float]:
    """SLQ as PyHessian's density: Lanczos with full re-orthogonalisation, per run."""
    nodes = []
    for _ in range(runs):
        v = normalise([torch.randint(0, 2, p.shape, generator=generator).to(p.dtype) * 2 - 1 for p in hess.params])
        basis, alphas, betas = [v], [], []
        w = None
        for i in range(steps):
            w = hess.matvec(basis[-1])
            alpha = float(dot(w, basis[-1]))
            alphas.append(alpha)
            w = orthogonalise(orthogonalise(w, basis), basis)
            beta = math.sqrt(float(dot(w, w)))
            if i == steps - 1 or beta < 1e-10:
                break
            betas.append(beta)
            basis.append([t / beta for t in w])
        t = torch.diag(torch.tensor(alphas, dtype=torch.float64))
        if betas:
            off = torch.tensor(betas, dtype=torch.float64)
            t += torch.diag(off, 1) + torch.diag(off, -1)
        nodes += torch.linalg.eigvalsh(t).tolist()
    return nodes


def naive_surface(model: nn.Module, loss_fn: nn.Module, x: Tensor, y: Tensor, directions, steps: int) -> Tensor:
    """Write theta + a d1 + b d2 into the model for each grid point; loop over the batches."""
    params = dict(model.named_parameters())
    start = {n: p.detach().clone() for n, p in params.items()}
    coords = torch.linspace(-1, 1, steps, dtype=torch.float64)
    losses = torch.empty(steps, steps, dtype=torch.float64)
    batches = list(zip(torch.split(x, NAIVE_BATCH), torch.split(y, NAIVE_BATCH), strict=True))
    with torch.no_grad():
        for i, a in enumerate(coords.tolist()):
            for j, b in enumerate(coords.tolist()):
                for n, p in params.items():
                    p.copy_(start[n] + a * directions[0][n] + b * directions[1][n])
                losses[i, j] = sum(float(loss_fn(model(xb), yb)) * len(xb) for xb, yb in batches) / len(x)
        for n, p in params.items():
            p.copy_(start[n])
    return losses


# --------------------------------------------------------------------------- the run


def timed(fn):
    started = time.perf_counter()
    value = fn()
    return value, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (both methods)")
    parser.add_argument("--epochs", type=int, default=5, help="epochs of training before the landscape")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory() as folder:
        spec = config.load(ROOT / "examples" / "mnist1d-mlp.yaml",
                           [f"train.epochs={args.epochs}", "train.device=cpu", "checks.preflight=false",
                            "checks.monitors=false"])
        (_, train_seconds) = timed(lambda: run(spec, out=Path(folder) / "run", quiet=True))
        loaded = babysit.load_run(Path(folder) / "run")
    model = loaded.model.double().eval()
    loss_fn = loaded.loss_fn
    train = loaded.splits.train
    index = torch.randperm(len(train), generator=torch.Generator().manual_seed(0))[:SAMPLES].sort().values
    x, y = train.x[index].double(), train.y[index]
    op = HessianOperator(model, loss_fn, (x, y))
    naive = NaiveHessian(model, loss_fn, x, y, NAIVE_BATCH)
    result: dict[str, object] = {"benchmark": "landscape_speed", "model": "examples/mnist1d-mlp.yaml",
                                 "parameters": op.dim, "samples": SAMPLES, "dtype": "float64",
                                 "threads": torch.get_num_threads(), "train_epochs": args.epochs,
                                 "train_seconds": round(train_seconds, 2), "torch": torch.__version__}

    # one H v each, the building block (after a warm-up)
    v = torch.randn(op.dim, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    v_list = list(op.unflatten(v).values())
    hv_naive = torch.cat([t.reshape(-1) for t in naive.matvec(v_list)])
    hv = op.matvec(v)
    result["hv_relative_difference"] = float((hv - hv_naive).norm() / hv.norm())
    _, t_op = timed(lambda: [op.matvec(v) for _ in range(20)])
    _, t_naive = timed(lambda: [naive.matvec(v_list) for _ in range(20)])
    result["hv_ms"] = {"babysit": round(1e3 * t_op / 20, 3), "naive": round(1e3 * t_naive / 20, 3)}

    # top-5 to 1e-6 relative residual
    start = op.matvecs
    eig, t_top = timed(lambda: landscape.hessian_eigenvalues(op, k=5, which="top", tol=TOL, seed=0))
    lam_max = float(eig.eigenvalues[0])
    naive.products = 0
    (values, residuals), t_top_naive = timed(
        lambda: naive_top_eigenvalues(naive, 5, TOL, torch.Generator().manual_seed(0)))
    result["top5"] = {
        "babysit_s": round(t_top, 3), "naive_power_s": round(t_top_naive, 3),
        "speedup": round(t_top_naive / t_top, 1),
        "babysit_products": op.matvecs - start, "naive_products": naive.products,
        "babysit_max_relative_residual": float(eig.residuals.max()) / lam_max,
        "naive_max_relative_residual": max(residuals) / abs(values[0]),
        "naive_converged": max(residuals) <= TOL * abs(values[0]),
        "eigenvalues": [round(float(e), 10) for e in eig.eigenvalues],
        "naive_eigenvalues": [round(e, 10) for e in sorted(values, reverse=True)],
    }

    trace, t_trace = timed(lambda: landscape.hessian_trace(op, probes=PROBES, seed=0))
    naive_value, t_trace_naive = timed(lambda: naive_trace(naive, PROBES, torch.Generator().manual_seed(0)))
    result["trace"] = {"babysit_s": round(t_trace, 3), "naive_s": round(t_trace_naive, 3),
                       "speedup": round(t_trace_naive / t_trace, 2), "trace": trace.trace,
                       "std_error": trace.std_error, "naive_trace": naive_value}

    density, t_density = timed(lambda: landscape.spectral_density(op, steps=DENSITY_STEPS, runs=DENSITY_RUNS, seed=0))
    nodes, t_density_naive = timed(
        lambda: naive_density(naive, DENSITY_STEPS, DENSITY_RUNS, torch.Generator().manual_seed(0)))
    result["density"] = {"babysit_s": round(t_density, 3), "naive_s": round(t_density_naive, 3),
                         "speedup": round(t_density_naive / t_density, 2),
                         "top_node": float(density.nodes.max()), "naive_top_node": max(nodes)}

    directions = landscape.random_directions(model, 2, seed=0)
    surface, t_surface = timed(lambda: landscape.loss_surface(model, loss_fn, (x, y), directions=directions, steps=GRID))
    naive_losses, t_surface_naive = timed(lambda: naive_surface(model, loss_fn, x, y, directions, GRID))
    result["surface_31x31"] = {"babysit_s": round(t_surface, 3), "naive_s": round(t_surface_naive, 3),
                               "speedup": round(t_surface_naive / t_surface, 2),
                               "max_abs_difference": float((surface.losses - naive_losses).abs().max())}
    print(json.dumps(result))


if __name__ == "__main__":
    main()
