"""The ``babysit`` command.

    babysit train [SPEC] [KEY=VALUE ...] [--out DIR] [--resume]
    babysit lr-find [SPEC] [KEY=VALUE ...] [--out DIR] [--start LR] [--end LR] [--steps N]
    babysit batch-find [SPEC] [KEY=VALUE ...] [--max N] [--out DIR]
    babysit report RUN [--out FILE]
    babysit compare RUN RUN ... [--out FILE]
    babysit landscape RUN [--what spectrum,surface,trajectory,interpolate] [--resolution 31] [--samples N] [--other RUN]
    babysit ensemble RUN RUN ... [--out DIR]
    babysit sample RUN [--prompt TEXT] [--tokens N] [--temperature T] [--top-k K] [--seed S]
    babysit search SPEC [KEY=VALUE ...] [--trials N] [--storage URL] [--study NAME] [--refine] [--sampler random|grid|tpe] [--folds K] [--out DIR]
    babysit study NAME [--quick] [--out DIR] [--quiet]

A mistake the user can make (a bad spec key or value, a missing file, bad data) ends with
one line on stderr naming the problem and exit code 2, never a traceback.
"""

from __future__ import annotations

import errno
import os
import signal
import sys
import threading
import warnings
from pathlib import Path
from typing import Any

import typer
from typer.core import TyperCommand, TyperGroup

from babysit.errors import BabysitError, stop_behind


def _flags_without_placeholder(params: list[Any]) -> list[Any]:
    """typer (0.2x) writes a type after every option in --help, ``--quiet -q <bool>`` for an
    on/off flag that takes no value: an empty metavar shows nothing there."""
    for param in params:
        if getattr(param, "is_flag", False) and param.metavar is None:
            param.metavar = ""
    return params


class Command(TyperCommand):
    """A babysit verb: typer's command, its flags (and --help) shown without a placeholder."""

    def get_params(self, ctx: Any) -> list[Any]:
        return _flags_without_placeholder(super().get_params(ctx))


class Group(TyperGroup):
    """The ``babysit`` command group: its --help shown without a placeholder; its verbs are
    :class:`Command`."""

    def get_params(self, ctx: Any) -> list[Any]:
        return _flags_without_placeholder(super().get_params(ctx))


app = typer.Typer(
    cls=Group,
    name="babysit",
    help="Build, train and babysit neural networks on PyTorch.\n\n"
    "Every run leaves runs/<name>/ with the resolved spec, metrics, checkpoints and TensorBoard events.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.callback()
def _root() -> None:
    """Build, train and babysit neural networks on PyTorch."""


def _split_spec_and_overrides(args: list[str]) -> tuple[Path | None, list[str]]:
    """The first argument is the spec file unless it looks like KEY=VALUE."""
    if args and "=" not in args[0]:
        spec = Path(args[0])
        if not spec.exists() and spec.suffix not in (".yaml", ".yml"):
            raise BabysitError(f"argument {args[0]!r}: not a spec file, and not an override of the form KEY=VALUE")
        return spec, args[1:]
    stray = [a for a in args if "=" not in a]
    if stray:
        raise BabysitError(f"argument {stray[0]!r}: expected KEY=VALUE after the spec (the spec file comes first)")
    return None, list(args)


@app.command(cls=Command)
def train(
    args: list[str] = typer.Argument(
        None,
        metavar="[SPEC] [KEY=VALUE]...",
        help="A YAML experiment spec (none: the default MLP on MNIST-1D), then overrides with dotted keys, "
        "e.g. optimizer.lr=0.01 model.hidden=[256,256] data.batch_size=full.",
        show_default=False,
    ),
    out_text: str | None = typer.Option(
        None, "--out", "-o", help="The run directory (default runs/<name>, or runs/<name>-N when that exists): "
        "a new or empty folder, or the run itself with --resume.", show_default=False,
    ),
    resume: bool = typer.Option(
        False, "--resume", help="Continue the run in --out (or the newest runs/<name>*) from its last checkpoint."
    ),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress output; only the final lines."),
) -> None:
    """Train the network a spec describes and write its run directory.

    Examples:

      babysit train                                  # the default: an MLP on MNIST-1D

      babysit train examples/mnist1d-cnn.yaml

      babysit train examples/spirals-mlp.yaml optimizer.lr=0.3 train.epochs=100

      babysit train examples/mnist1d-cnn.yaml --out runs/cnn --resume
    """
    from babysit import config
    from babysit.run import run
    from babysit.run.summary import run_line, summary_table

    if out_text is not None and not out_text.strip():  # typer would read '' as '.', the current folder
        raise BabysitError("--out: empty; name the run directory (an unset shell variable?)")
    out = Path(out_text) if out_text is not None else None
    spec_path, overrides = _split_spec_and_overrides(args or [])
    if resume and spec_path is None and out is not None:
        # resuming a run directory: its own config.yaml is the spec
        if not (out / "config.yaml").is_file():
            raise BabysitError(f"{out}: not a babysit run (no config.yaml); nothing to resume")
        spec_path = out / "config.yaml"
    spec = config.load(spec_path, overrides)
    result = run(spec, out, resume=resume, quiet=quiet)
    if result.rank:  # under torchrun: rank 0 reports the run
        return
    typer.echo(f"run directory: {result.path}")
    _console().print(summary_table(result))
    typer.echo(run_line(result.summary))
    _print_findings(result.findings, result.path / "findings.json")
    typer.echo(f"report: {result.path / 'report.html'}")


def _check_seed(seed: int) -> int:
    """A --seed torch and numpy take: in [0, 2**63)."""
    if not 0 <= seed < 2**63:
        raise BabysitError(f"--seed: must be in [0, 2**63), got {seed}")
    return seed


def _console() -> Any:
    """A rich console on stdout, at least 100 columns wide (tables stay readable in logs and pipes)."""
    from rich.console import Console

    return Console(file=sys.stdout, width=max(100, Console().width))


def _print_table(table: Any) -> None:
    """Print a rich table on stdout, never cutting a cell: the console is widened (beyond 100
    columns, beyond the terminal) when the table's narrowest layout needs it."""
    from rich.measure import Measurement

    console = _console()
    needed = Measurement.get(console, console.options.update_width(10_000), table).minimum
    if needed > console.width:
        console.width = needed
    console.print(table)


def _print_findings(findings: list, where: Path) -> None:
    """The run's findings as a compact table at the end (most severe first)."""
    if not findings:
        typer.echo("findings: none; nothing looked wrong")
        return
    from babysit.checks.findings import findings_table

    counts = ", ".join(f"{sum(f.severity == s for f in findings)} {s}" for s in ("error", "warning", "info")
                       if any(f.severity == s for f in findings))
    _console().print(findings_table(findings, title=f"findings ({counts})"))
    typer.echo(f"findings written to {where}")


@app.command(cls=Command)
def check(
    args: list[str] = typer.Argument(
        None,
        metavar="[SPEC] [KEY=VALUE]...",
        help="A YAML experiment spec (none: the default), then overrides with dotted keys.",
        show_default=False,
    ),
) -> None:
    """Run only the preflight checks of a spec: nothing is trained and nothing is written.

    Checks the loss at init, the gradients against finite differences, that the network can
    overfit a tiny subset, input scaling, symmetric init and mixing across the batch; and the
    data: examples shared between splits, duplicates with conflicting labels, class balance.
    Exit code 1 when a check finds an error.

    Example:

      babysit check examples/mnist1d-mlp.yaml model.init=zeros
    """
    from babysit import config
    from babysit.checks.findings import finding_lines
    from babysit.run import assemble

    spec_path, overrides = _split_spec_and_overrides(args or [])
    spec = config.load(spec_path, overrides)
    built = assemble(spec)  # what babysit train builds first: it refuses what train refuses
    findings = built.family.preflight(spec, built.model, built.loss_fn, built.splits)
    lines = finding_lines(findings)
    if all(f.severity == "info" for f in findings):  # notes (info) are not problems
        lines.append("preflight: no problems found" + (" (notes above)" if findings else ""))
    for line in lines:
        typer.echo(line)
    if any(f.severity == "error" for f in findings):
        raise typer.Exit(1)


@app.command("lr-find", cls=Command)
def lr_find_command(
    args: list[str] = typer.Argument(
        None,
        metavar="[SPEC] [KEY=VALUE]...",
        help="A YAML experiment spec (none: the default), then overrides with dotted keys.",
        show_default=False,
    ),
    out: Path | None = typer.Option(
        None, "--out", "-o",
        help="Where to write lr_find.png and lr_find.json (default runs/<name>-lr-find, or -2, -3... when that exists).",
    ),
    start: float = typer.Option(1e-7, "--start", help="The first (smallest) learning rate."),
    end: float = typer.Option(10.0, "--end", help="The last (largest) learning rate, unless the loss diverges first."),
    steps: int = typer.Option(200, "--steps", help="Mini-batch steps from --start to --end, the lr growing exponentially."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar; only the final lines."),
) -> None:
    """Find a learning rate: the range test (Smith 2015/2017, fastai's lr_find).

    Trains a fresh copy of the spec's network with its optimizer and batch size while the
    learning rate grows exponentially from --start to --end, one mini-batch per rate, and
    stops when the loss diverges (its smoothed value above 4x its minimum, or not finite).
    The suggestion is the rate where the smoothed loss is lowest, divided by 10. The curve
    is smoothed without lag (a centred kernel in log-lr), so the suggestion does not move
    with early spikes or from seed to seed. Writes lr_find.png (loss against lr) and
    lr_find.json; nothing is trained for real.

    Examples:

      babysit lr-find examples/mnist1d-mlp.yaml

      babysit lr-find examples/mnist1d-cnn.yaml optimizer.name=sgd --start 1e-5 --end 1

      babysit lr-find examples/spirals-mlp.yaml data.batch_size=32 --out runs/spirals-lr -q
    """
    import shlex

    from babysit import config
    from babysit.tune.lr_finder import (
        format_lr,
        lr_find_directory,
        lr_find_from_spec,
        write_lr_find,
    )

    spec_path, overrides = _split_spec_and_overrides(args or [])
    spec = config.load(spec_path, overrides)
    result = lr_find_from_spec(spec, start=start, end=end, steps=steps, quiet=quiet)
    directory = lr_find_directory(spec, out)
    extra = {"name": spec.run_name, "optimizer": spec.optimizer.name, "batch_size": spec.data.batch_size,
             "seed": spec.seed, "start": start, "end": end, "steps": steps}
    title = f"lr range test: {spec.run_name} ({spec.optimizer.name}, batch {spec.data.batch_size})"
    json_path, png_path = write_lr_find(result, directory, title=title, extra=extra)
    lr = format_lr(result.suggestion)
    if result.lr_at_minimum is not None:
        typer.echo(f"smoothed loss lowest at lr {format_lr(result.lr_at_minimum)}")
    typer.echo(f"diverged at lr {format_lr(result.diverged_at)}" if result.diverged_at is not None
               else f"no divergence up to lr {format_lr(result.lrs[-1])}")
    if result.note:
        typer.echo(f"note: {result.note}")
    typer.echo(f"suggested learning rate: {lr}")
    typer.echo(f"wrote {png_path} and {json_path.name}")
    keep = [o for o in overrides if o.split("=", 1)[0].strip() != "optimizer.lr"]
    command = ["babysit", "train", *([str(spec_path)] if spec_path is not None else []), *keep, f"optimizer.lr={lr}"]
    typer.echo(f"use it: {shlex.join(command)}")


@app.command("batch-find", cls=Command)
def batch_find_command(
    args: list[str] = typer.Argument(
        None,
        metavar="[SPEC] [KEY=VALUE]...",
        help="A YAML experiment spec (none: the default), then overrides with dotted keys.",
        show_default=False,
    ),
    max_batch: int | None = typer.Option(
        None, "--max", help="The largest batch to try (default: the training-set size).", show_default=False
    ),
    steps: int = typer.Option(
        5, "--steps", help="Timed training steps per block; 3 blocks per batch size after 2 warm-up steps, the fastest counting."
    ),
    out: Path | None = typer.Option(None, "--out", "-o", help="Also write batch_find.json into this directory."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar; only the table."),
) -> None:
    """Find a batch size: time training steps at 8, 16, 32... and report samples per second.

    Each size gets a fresh copy of the spec's network and optimizer on its device (and
    precision) and a few full training steps (forward, backward, optimizer step) after a
    warm-up; on CUDA the clock waits for the GPU. The search stops at the first size that
    runs out of GPU memory, or at the cap (--max, or the training-set size). Prints the
    table, the largest batch that fits and the batch with the best throughput, and the
    gradient noise scale B_noise at initialisation (McCandlish et al. 2018: about the batch
    beyond which larger ones stop cutting the steps; it grows during training). Nothing is
    trained for real and nothing is written unless --out is given.

    Examples:

      babysit batch-find examples/mnist1d-cnn.yaml

      babysit batch-find examples/mnist1d-mlp.yaml train.precision=bf16 --max 1024 --out runs/batch
    """
    from rich.console import Console

    from babysit import config
    from babysit.tune.batch_finder import (
        batch_find_from_spec,
        batch_find_lines,
        batch_find_table,
        write_batch_find,
    )

    spec_path, overrides = _split_spec_and_overrides(args or [])
    spec = config.load(spec_path, overrides)
    result = batch_find_from_spec(spec, max_batch=max_batch, steps=steps, quiet=quiet)
    Console(file=sys.stdout).print(batch_find_table(result))
    for line in batch_find_lines(result):
        typer.echo(line)
    if out is not None:
        path = write_batch_find(result, out, extra={"name": spec.run_name, "precision": spec.train.precision,
                                                    "steps": steps})
        typer.echo(f"wrote {path}")


@app.command(cls=Command)
def report(
    run_dir: Path = typer.Argument(..., metavar="RUN", help="A run directory (what babysit train wrote).",
                                   show_default=False),
    out: Path | None = typer.Option(None, "--out", "-o", help="Where to write the page (default RUN/report.html)."),
) -> None:
    """Write (or redraw) a run's report: one self-contained HTML page, no network needed.

    The page shows the spec and final metrics, the findings (most severe first, each with
    its evidence), the loss, accuracy and learning-rate curves, the per-layer monitors, the
    first layer's weights, the loss landscape when there is one, and the resolved spec.
    `babysit train` writes it at the end of every run.

    Example:

      babysit report runs/mnist1d-mlp
    """
    from babysit.report import render

    typer.echo(f"wrote {render(run_dir, out)}")


@app.command(cls=Command)
def compare(
    run_dirs: list[Path] = typer.Argument(..., metavar="RUN RUN...", help="Run directories to put side by side.",
                                          show_default=False),
    out: Path | None = typer.Option(
        None, "--out", "-o", help="Where to write the page (default runs/compare.html, or runs/compare-N.html "
        "when that exists).", show_default=False),
) -> None:
    """Compare runs on one HTML page: curves overlaid, final metrics and findings side by
    side, and the spec keys that differ.

    Example:

      babysit compare runs/mnist1d-logreg runs/mnist1d-mlp runs/mnist1d-cnn
    """
    from babysit.report import compare as compare_runs

    typer.echo(f"wrote {compare_runs(run_dirs, out if out is not None else _compare_path())}")


def _compare_path(folder: Path = Path("runs")) -> Path:
    """``runs/compare.html``, or ``runs/compare-2.html``, ``-3``... when that exists: like the
    run directories, a new page never overwrites an earlier one."""
    from babysit.rundir import next_free

    stem = next_free(folder / "compare", taken=lambda path: path.with_name(f"{path.name}.html").exists())
    return stem.with_name(f"{stem.name}.html")


@app.command(cls=Command)
def landscape(
    run_dir: Path = typer.Argument(..., metavar="RUN", help="A run directory (what babysit train wrote).",
                                   show_default=False),
    what: str = typer.Option("spectrum,surface", "--what", "-w",
                             help="Comma-separated: spectrum, surface, trajectory, interpolate."),
    resolution: int = typer.Option(31, "--resolution", "-r",
                                   help="Grid points per axis of the surfaces and points on the interpolation line (odd)."),
    samples: int = typer.Option(1000, "--samples",
                                help="Training examples to compute on: a fixed, seeded sample (all when fewer)."),
    other: Path | None = typer.Option(None, "--other",
                                      help="interpolate: another run of the same network (default: this run's initial weights).",
                                      show_default=False),
    span: float = typer.Option(1.0, "--span", help="Surfaces cover -span..span along their (filter-normalised) directions."),
    seed: int = typer.Option(0, "--seed", help="Seeds the sample, start vectors, probes and directions."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar; only the final lines."),
) -> None:
    """Map the loss landscape around a run's best weights.

    spectrum: top-5 and bottom-5 Hessian eigenvalues with residuals (Lanczos),
    the trace (Hutchinson, 100 probes), the eigenvalue density (SLQ), the
    critical-point class, condition number and 2/λmax next to the lr used.

    surface: the loss on a 2D grid along filter-normalised random directions,
    and 1D curves (also along the top eigenvector).

    trajectory: the surface along the PCA directions of the weight snapshots
    saved with train.trajectory_every=N, with the training path on it.

    interpolate: the loss on the line from the initial weights (or --other
    RUN) to the trained ones, and its barrier.

    Eval mode, float64 on the CPU for small models, seeded. Writes
    RUN/landscape.json, RUN/figures/landscape_*.png, and redraws the report.

    Examples:

      babysit landscape runs/mnist1d-mlp

      babysit landscape runs/mnist1d-mlp --what spectrum --samples 4000

      babysit landscape runs/mlp-0 --what interpolate --other runs/mlp-1
    """
    from babysit.landscape.run import landscape_lines, landscape_run

    result = landscape_run(run_dir, what, resolution=resolution, samples=samples, other=other, span=span,
                           seed=_check_seed(seed), quiet=quiet)
    for line in landscape_lines(result, what):
        typer.echo(line)
    typer.echo(f"wrote {run_dir / 'landscape.json'}, figures in {run_dir / 'figures'}, report {run_dir / 'report.html'}")


@app.command(cls=Command)
def ensemble(
    run_dirs: list[Path] = typer.Argument(..., metavar="RUN RUN...", help="Run directories (what babysit train wrote) "
                                          "trained on the same data, e.g. the same spec with different seeds.",
                                          show_default=False),
    out: Path | None = typer.Option(
        None, "--out", "-o",
        help="Where to write ensemble.json and ensemble.png (default runs/ensemble, or runs/ensemble-N when that exists).",
    ),
    calibrated: bool = typer.Option(
        False, "--calibrated",
        help="Divide each member's logits by the temperature fitted on its validation split (its calibration.json) "
             "before averaging. Off by default: averaging already softens the members, and calibrated members can "
             "make an underconfident ensemble; compare the losses.",
    ),
) -> None:
    """Score the ensemble of trained runs: the mean of their predicted probabilities.

    Loads each run's best weights and its data exactly as it trained (own seed and
    preprocessing), averages the members' softmax (or sigmoid) probabilities, or their
    outputs for hinge, mse, mae and regression, and reports validation and test loss and
    accuracy of the ensemble and of each member. Writes ensemble.json and a bar chart,
    ensemble.png. The runs must share their data and loss and be scored on one test set.

    Example:

      for s in 0 1 2 3 4; do babysit train examples/mnist1d-mlp.yaml seed=$s --out runs/mlp-$s -q; done

      babysit ensemble runs/mlp-0 runs/mlp-1 runs/mlp-2 runs/mlp-3 runs/mlp-4
    """
    from babysit.run.ensemble import (
        ensemble_directory,
        ensemble_lines,
        ensemble_runs,
        ensemble_table,
        write_ensemble,
    )

    result = ensemble_runs(run_dirs, calibrated=calibrated)
    _print_table(ensemble_table(result))
    for line in ensemble_lines(result):
        typer.echo(line)
    json_path, png_path = write_ensemble(result, ensemble_directory(out))
    typer.echo(f"wrote {json_path} and {png_path.name}")


@app.command(cls=Command)
def search(
    args: list[str] = typer.Argument(
        ..., metavar="SPEC [KEY=VALUE]...",
        help="A YAML experiment spec with a search: section, then overrides with dotted keys.", show_default=False,
    ),
    trials: int = typer.Option(20, "--trials", help="Trials in the study, counting those of every process sharing it."),
    storage: str | None = typer.Option(
        None, "--storage", help="An Optuna storage URL (sqlite:///search.db, postgresql://user@host/db); "
        "default a journal file, OUT/journal.log.", show_default=False),
    study: str | None = typer.Option(None, "--study", help="The study name (default the spec's name).", show_default=False),
    refine: bool = typer.Option(False, "--refine", help="Then a second stage of --trials trials in a narrower space "
                                "around the best 20% (coarse to fine)."),
    sampler: str = typer.Option("random", "--sampler", help="random (log-uniform for scales), grid or tpe."),
    folds: int | None = typer.Option(None, "--folds", help="Score each trial by K-fold cross-validation (small data sets).",
                                     show_default=False),
    out: Path | None = typer.Option(None, "--out", "-o", help="The search directory (default runs/<name>-search)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No line per trial; only the table and the final lines."),
) -> None:
    """Search hyperparameters: Optuna over the spec's search: section, each trial a run.

    The space is the spec's search: section, a distribution per dotted key:
    loguniform(a, b) for scales, uniform(a, b), intuniform(a, b), choice(x, y, ...).
    Each trial trains the spec with the drawn values (same seed, no preflight or
    monitors) into OUT/trials/<n>/ and is scored by what the spec's early stopping
    watches: its lowest validation loss, or highest validation accuracy. A trial whose
    validation loss passes 3x its initial value or turns NaN is pruned and says why;
    Optuna's median rule prunes the ones worse than the median of the finished trials. Several processes started with the same --storage and --study
    share the work; --trials counts the whole study. Writes best.yaml (the best spec,
    ready for babysit train), trials.csv, trials.json and search.png.

    Examples:

      babysit search examples/mnist1d-mlp-search.yaml --trials 20

      babysit search examples/mnist1d-mlp-search.yaml --trials 40 --refine --sampler tpe

      babysit search spec.yaml --trials 100 --storage postgresql://me@db-host/search --study mlp   # on each machine
    """
    from babysit import config
    from babysit.tune.search import search as run_search
    from babysit.tune.search import search_lines, search_table

    spec_path, overrides = _split_spec_and_overrides(args)
    spec = config.load(spec_path, overrides)
    result = run_search(spec, trials, storage=storage, study=study, refine=refine, sampler=sampler, folds=folds,
                        out=out, quiet=quiet)
    _print_table(search_table(result))
    for line in search_lines(result):
        typer.echo(line)


@app.command(cls=Command)
def sample(
    run_dir: Path = typer.Argument(..., metavar="RUN", help="A language-model run (model.kind gpt on data.source: text).",
                                   show_default=False),
    prompt: str = typer.Option("", "--prompt", "-p", help="The text to continue (characters the run's text contains)."),
    tokens: int = typer.Option(200, "--tokens", help="Characters to generate."),
    temperature: float = typer.Option(0.8, "--temperature", "-t",
                                      help="Divides the logits: below 1 safer, above 1 wilder; 0 always takes the likeliest."),
    top_k: int | None = typer.Option(None, "--top-k", help="Draw only among the k likeliest characters.", show_default=False),
    seed: int = typer.Option(0, "--seed", help="Seeds the draws: the same seed gives the same text."),
    calibrated: bool = typer.Option(
        False, "--calibrated",
        help="Multiply --temperature by the temperature fitted on the run's validation text (calibration.json): "
             "--temperature 1 then draws from the calibrated next-character probabilities. Off by default, so "
             "--temperature keeps its usual meaning.",
    ),
) -> None:
    """Generate text with a trained language model: continue --prompt one character at a time.

    Uses the run's best weights (else its last) and the vocabulary of the text it trained on.

    Examples:

      babysit sample runs/text-gpt --prompt "Shall I compare thee" --tokens 300

      babysit sample runs/text-gpt --prompt "When" --temperature 0.5 --top-k 10 --seed 3
    """
    from babysit.families.language import sample_text

    typer.echo(sample_text(run_dir, prompt, tokens, temperature=temperature, top_k=top_k, seed=_check_seed(seed),
                           calibrated=calibrated))


@app.command(cls=Command)
def study(
    name: str = typer.Argument(..., metavar="NAME", show_default=False,
                               help="activations, init, optimizers, batch, normalization or depth."),
    quick: bool = typer.Option(False, "--quick", help="The small version: well under a minute, same direction."),
    out: Path | None = typer.Option(
        None, "--out", "-o", help="The study directory (default runs/study-<name>, or runs/study-<name>-N when that exists)."
    ),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress lines; only the table and the conclusion."),
) -> None:
    """Rerun a classic experiment behind a rule of thumb and see the evidence.

    Writes results.json, table.csv, figures/*.png and report.html (the table, the figures
    and a conclusion in plain words computed from the numbers). The studies:

      activations    sigmoid, tanh, relu, leaky_relu, elu, maxout: steps to a target accuracy, dead/saturated units

      init           10-layer tanh and relu nets, small/large normal, xavier, kaiming: activation std per layer at init

      optimizers     sgd, momentum, nesterov, adam, adamw, rmsprop, lbfgs, newton, quickprop: loss vs steps and time

      batch          full batch, single sample, mini-batches: loss against epochs and wall time

      normalization  none, batch, layer, group, weight: the largest stable learning rate and the accuracy

      depth          plain against residual deep nets: vanishing gradients and the skip path

    Examples:

      babysit study activations --quick

      babysit study init --out runs/init-study
    """
    from babysit.studies import rich_table, run_study

    result = run_study(name, quick=quick, out=out, progress=None if quiet else typer.echo)
    _print_table(rich_table(result))
    for line in result.conclusion:
        typer.echo(line)
    typer.echo(f"study directory: {result.path} ({result.seconds:.1f} s); report: {result.path / 'report.html'}")


class Interrupted(BaseException):
    """Ctrl-C, raised instead of KeyboardInterrupt: typer turns a KeyboardInterrupt into a
    silent exit 130, and the user should learn how to continue."""


def _interrupted(signum: int, frame: Any) -> None:
    raise Interrupted


# click's exception classes, found through the one typer exports (typer vendors click in
# recent versions and depends on it in older ones)
_CLICK = {cls.__name__: cls for cls in typer.BadParameter.__mro__}
_UsageError, _ClickException = _CLICK["UsageError"], _CLICK["ClickException"]
# errors of the machine rather than of babysit: one line naming the file, exit code 2
_OS_ERRORS = {errno.EACCES: "permission denied", errno.EPERM: "permission denied",
              errno.EROFS: "read-only file system", errno.ENOSPC: "disk full", errno.EDQUOT: "disk quota exceeded",
              errno.ENOTDIR: "not a folder", errno.EISDIR: "is a folder", errno.ENAMETOOLONG: "name too long"}


def _verb() -> str:
    return next((a for a in sys.argv[1:] if not a.startswith("-")), "")


def _fail(message: str, code: int = BabysitError.exit_code) -> None:
    typer.echo(f"error: {message}", err=True)
    sys.exit(code)


def main() -> None:
    """Entry point: run the app, turning user errors (a bad spec, a bad option, a folder that
    cannot be written) into one line and exit code 2, and Ctrl-C into one line saying how to
    continue, and exit code 130. Warnings raised on the way are held back: after a failure the
    error line is all that prints; after a success each distinct warning prints once, last."""
    main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGINT, _interrupted) if main_thread else None
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("default")
            try:
                code = app(prog_name="babysit", standalone_mode=False)  # errors come here, not as click's boxes
            except Exception as exc:
                # a library's cleanup that fails mid-interrupt (Optuna's journal lock raises
                # FileNotFoundError when a Ctrl-C lands as it releases) must not turn Ctrl-C
                # into a traceback
                interrupt = stop_behind(exc)
                if not isinstance(interrupt, KeyboardInterrupt | Interrupted):
                    raise
                raise interrupt from None
        for line in dict.fromkeys(f"warning: {w.category.__name__}: {str(w.message).strip()[:200]}"
                                  for w in caught):
            typer.echo(line, err=True)
        if isinstance(code, int) and code:  # typer.Exit(n), or --help's 0
            sys.exit(code)
    except BabysitError as exc:
        _fail(str(exc))
    except _UsageError as exc:
        verb = " ".join(exc.ctx.command_path.split()[1:]) if exc.ctx is not None else ""
        if type(exc).__name__ == "NoArgsIsHelpError":  # bare `babysit`: the help, as before
            typer.echo(exc.format_message())
            sys.exit(exc.exit_code)
        verb = verb or (_verb() if _verb() in {c.name or c.callback.__name__ for c in app.registered_commands} else "")
        message = " ".join(exc.format_message().split()).rstrip(".")  # one line
        _fail(f"{message}; see babysit {verb + ' ' if verb else ''}--help", exc.exit_code)
    except _ClickException as exc:
        _fail(" ".join(exc.format_message().split()), exc.exit_code)
    except OSError as exc:
        if exc.errno == errno.EPIPE:  # output piped into head: stop quietly
            sys.stderr = open(os.devnull, "w")  # noqa: SIM115 (the interpreter closes it at exit)
            sys.exit(1)
        if exc.errno not in _OS_ERRORS:
            raise
        where = exc.filename if exc.filename is not None else "a file"
        _fail(f"{where}: {_OS_ERRORS[exc.errno]}")
    except (KeyboardInterrupt, Interrupted):
        hint = {"train": "; continue with babysit train ... --resume",
                "search": "; the same babysit search command continues the study",
                "study": "; a study writes its directory only when it finishes",
                "landscape": "; landscape.json is written only when every item is done"}.get(_verb(), "")
        typer.echo(f"interrupted{hint}", err=True)
        sys.exit(130)
    finally:
        if main_thread and previous is not None:
            signal.signal(signal.SIGINT, previous)


if __name__ == "__main__":
    main()
