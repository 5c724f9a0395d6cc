"""The ``onnxopt`` Typer application and its entry point.

Bad input (a missing or broken file, wrong feeds, an unknown pass or option) is one line on
stderr and exit code 2; ``--debug`` shows the traceback. No output file is written unless the
run succeeds.
"""

from __future__ import annotations

import importlib
import logging
import sys
from typing import Annotated

import typer
from rich.markup import escape

from onnxopt.cli.common import console, err_console
from onnxopt.errors import OnnxoptError

app = typer.Typer(
    name="onnxopt",
    help="Verified ONNX graph optimization: every pass is checked in onnxruntime.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)

#: the commands, one module of ``onnxopt.cli`` each, in the order ``--help`` lists them
COMMANDS = [
    "optimize",
    "verify",
    "inspect",
    "passes",
    "demo",
    "bench",
    "quantize",
    "prune",
    "merge",
    "distill",
    "debug",
    "report",
    "search",
]


@app.callback()
def _root(
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks and debug logs.")] = False,
    version: Annotated[bool, typer.Option("--version", help="Print the version.")] = False,
) -> None:
    if version:
        from onnxopt import __version__

        console.print(f"onnxopt {__version__}")
        raise typer.Exit(0)
    logging.basicConfig(
        level=logging.DEBUG if debug else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )


for _name in COMMANDS:
    importlib.import_module(f"onnxopt.cli.{_name}").register(app)


def main(argv: list[str] | None = None) -> int:
    """Entry point: one-line errors (exit 2) for bad input; tracebacks only with --debug."""
    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args
    try:
        app(args=args, prog_name="onnxopt", standalone_mode=True)
    except SystemExit as e:
        return int(e.code or 0) if not isinstance(e.code, str) else 2
    except OnnxoptError as e:
        if debug:
            raise
        err_console.print(f"[red]error:[/] {escape(str(e))}", soft_wrap=True, highlight=False)
        return 2
    except KeyboardInterrupt:
        err_console.print("interrupted")
        return 130
    except Exception as e:  # noqa: BLE001 - last resort: one line, not a traceback
        if debug:
            raise
        err_console.print(
            f"[red]internal error:[/] {type(e).__name__}: {escape(str(e))} (rerun with --debug)",
            soft_wrap=True,
        )
        return 1
    return 0


def entry() -> None:
    sys.exit(main())
