"""The ``babysit`` command.

    babysit train [SPEC] [KEY=VALUE ...] [--out DIR] [--resume]
    babysit lr-find [SPEC] [KEY=VALUE ...] [--out DIR] [--start LR] [--end LR] [--steps N]
    babysit batch-find [SPEC] [KEY=VALUE ...] [--max N] [--out DIR]
    babysit report RUN [--out FILE]
    babysit compare RUN RUN ... [--out FILE]

A mistake the user can make (a bad spec key or value, a missing file, bad data) ends with
one line on stderr naming the problem and exit code 2, never a traceback.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import typer

from babysit.errors import BabysitError

app = typer.Typer(
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


@app.command()
def train(
    args: list[str] = typer.Argument(
        None,
        metavar="[SPEC] [KEY=VALUE]...",
        help="A YAML experiment spec (none: the default MLP on MNIST-1D), then overrides with dotted keys, "
        "e.g. optimizer.lr=0.01 model.hidden=[256,256] data.batch_size=full.",
        show_default=False,
    ),
    out: Path | None = typer.Option(
        None, "--out", "-o", help="The run directory (default runs/<name>, or runs/<name>-N when that exists)."
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
    from babysit.train.runner import run, run_line, summary_table

    spec_path, overrides = _split_spec_and_overrides(args or [])
    if resume and spec_path is None and out is not None:
        # resuming a run directory: its own config.yaml is the spec
        if not (out / "checkpoints" / "last.pt").exists():
            raise BabysitError(f"{out}: no checkpoint to resume from (expected {out / 'checkpoints' / 'last.pt'})")
        spec_path = out / "config.yaml"
    spec = config.load(spec_path, overrides)
    result = run(spec, out, resume=resume, quiet=quiet)
    typer.echo(f"run directory: {result.path}")
    _console().print(summary_table(result))
    typer.echo(run_line(result.summary))
    _print_findings(result.findings, result.path / "findings.json")
    typer.echo(f"report: {result.path / 'report.html'}")


def _console() -> Any:
    """A rich console on stdout, at least 100 columns wide (tables stay readable in logs and pipes)."""
    from rich.console import Console

    return Console(file=sys.stdout, width=max(100, Console().width))


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


@app.command()
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
    overfit a tiny subset, input scaling, symmetric init and mixing across the batch.
    Exit code 1 when a check finds an error.

    Example:

      babysit check examples/mnist1d-mlp.yaml model.init=zeros
    """
    from babysit import config
    from babysit.checks.findings import finding_lines
    from babysit.checks.preflight import preflight
    from babysit.train.runner import preflight_inputs, prepare

    spec_path, overrides = _split_spec_and_overrides(args or [])
    spec = config.load(spec_path, overrides)
    _, splits, model, loss_fn = prepare(spec)
    findings = preflight(model, loss_fn, **preflight_inputs(spec, splits))
    for line in finding_lines(findings) or ["preflight: no problems found"]:
        typer.echo(line)
    if any(f.severity == "error" for f in findings):
        raise typer.Exit(1)


@app.command("lr-find")
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


@app.command("batch-find")
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
    table, the largest batch that fits and the batch with the best throughput. Nothing is
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


@app.command()
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


@app.command()
def compare(
    run_dirs: list[Path] = typer.Argument(..., metavar="RUN RUN...", help="Run directories to put side by side.",
                                          show_default=False),
    out: Path = typer.Option(Path("compare.html"), "--out", "-o", help="Where to write the page."),
) -> None:
    """Compare runs on one HTML page: curves overlaid, final metrics and findings side by
    side, and the spec keys that differ.

    Example:

      babysit compare runs/mnist1d-logreg runs/mnist1d-mlp runs/mnist1d-cnn --out runs/compare.html
    """
    from babysit.report import compare as compare_runs

    typer.echo(f"wrote {compare_runs(run_dirs, out)}")


def main() -> None:
    """Entry point: run the app, turning user errors into one line and exit code 2."""
    try:
        app()  # standalone: usage errors and --help are handled (and exit) the usual way
    except BabysitError as exc:
        typer.echo(f"error: {exc}", err=True)
        sys.exit(BabysitError.exit_code)
    except KeyboardInterrupt:
        typer.echo("interrupted; continue with --resume", err=True)
        sys.exit(130)


if __name__ == "__main__":
    main()
