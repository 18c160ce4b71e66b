"""The ``babysit`` command.

    babysit train [SPEC] [KEY=VALUE ...] [--out DIR] [--resume]

A mistake the user can make (a bad spec key or value, a missing file, bad data) ends with
one line on stderr naming the problem and exit code 2, never a traceback.
"""

from __future__ import annotations

import sys
from pathlib import Path

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
    from babysit.train.runner import main_summary_lines, run

    spec_path, overrides = _split_spec_and_overrides(args or [])
    if resume and spec_path is None and out is not None:
        # resuming a run directory: its own config.yaml is the spec
        if not (out / "checkpoints" / "last.pt").exists():
            raise BabysitError(f"{out}: no checkpoint to resume from (expected {out / 'checkpoints' / 'last.pt'})")
        spec_path = out / "config.yaml"
    spec = config.load(spec_path, overrides)
    result = run(spec, out, resume=resume, quiet=quiet)
    for line in main_summary_lines(result):
        typer.echo(line)


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
