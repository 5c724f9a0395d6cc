"""The ``onnxopt`` command: one module per command, ``common`` for what they share, ``app``
for the Typer application and the entry point. Only the CLI prints."""

from onnxopt.cli.app import app, main

__all__ = ["app", "main"]
