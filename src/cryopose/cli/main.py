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
    from cryopose.cli import info  # noqa: F401


_register_commands()


def main(argv: list[str] | None = None) -> int:
    """Run the command line; return the exit status."""
    args = sys.argv[1:] if argv is None else argv
    debug = "--debug" in args
    try:
        app(args=args, prog_name="cryopose", standalone_mode=False)
    except typer.Exit as exc:
        return int(exc.exit_code)
    except typer.Abort:
        typer.echo("Aborted.", err=True)
        return 130
    except KeyboardInterrupt:
        typer.echo("Interrupted.", err=True)
        return 130
    except Exception as exc:  # noqa: BLE001 - the one place that turns errors into a line
        import click

        if isinstance(exc, click.exceptions.ClickException):
            exc.show()
            return exc.exit_code
        if debug:
            raise
        if isinstance(exc, CryoposeError | OSError | ValueError):
            typer.echo(f"error: {exc}", err=True)
        else:
            typer.echo(f"error: {type(exc).__name__}: {exc} (run with --debug for details)", err=True)
        return 1
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
