"""The ``cryopose`` command: one Typer app, one module per command group.

Errors a user can cause (bad files, bad arguments) print as one line on stderr and exit with
status 1; ``--debug`` shows the traceback instead.

Example usage::

    cryopose info particles.star map.mrc
"""

from __future__ import annotations

import sys

import typer

import cryopose
from cryopose.errors import CryoposeError

app = typer.Typer(
    name="cryopose",
    help="Deep learning for cryo-EM particle alignment and cryo-ET particle picking.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)

_state = {"debug": False}


def _version_callback(value: bool) -> None:
    if value:
        typer.echo(f"cryopose {cryopose.__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", callback=_version_callback, is_eager=True, help="Print the version."
    ),
    debug: bool = typer.Option(False, "--debug", help="Show full tracebacks on errors."),
) -> None:
    """Deep learning for cryo-EM particle alignment and cryo-ET particle picking."""
    _state["debug"] = debug


def _register_commands() -> None:
    # Each command module adds its commands to ``app``; imported here so that
    # ``cryopose --help`` lists them all.
    from cryopose.cli import (  # noqa: F401
        benchmark,
        demo,
        density,
        evaluate,
        evaluate_poses,
        fsc,
        infer,
        info,
        pipeline,
        project,
        prune,
        reconstruct,
        recover,
        refine,
        simulate,
        stream,
        tomo,
        train,
    )


_register_commands()


def main(argv: list[str] | None = None) -> int:
    """Run the command line; return the exit status.

    Typer handles ``--help`` and usage errors (exit status 2). Errors from the library become
    one line on stderr and exit status 1; ``--debug`` re-raises them with the traceback.
    """
    args = sys.argv[1:] if argv is None else list(argv)
    debug = "--debug" in args
    try:
        app(args=args, prog_name="cryopose")
    except SystemExit as exc:
        code = exc.code
        if code is None:
            return 0
        if isinstance(code, int):
            return code
        typer.echo(str(code), err=True)
        return 1
    except KeyboardInterrupt:
        typer.echo("Interrupted.", err=True)
        return 130
    except Exception as exc:
        if debug:
            raise
        if isinstance(exc, CryoposeError | OSError | ValueError):
            typer.echo(f"error: {exc}", err=True)
        else:
            name = type(exc).__name__
            typer.echo(f"error: {name}: {exc} (run with --debug for details)", err=True)
        return 1
    return 0
