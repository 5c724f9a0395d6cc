"""``onnxopt passes``: every pass, its family, exact or lossy, and what it does."""

from __future__ import annotations

import typer
from rich.markup import escape
from rich.table import Table

from onnxopt.cli.common import console


def passes_cmd() -> None:
    """List every pass: family, exact or lossy, and what it does."""
    from onnxopt.passes import registry

    t = Table(title="passes (families are aliases: --passes cleanup,fusion)", title_justify="left")
    for c in ("family", "pass", "kind", "what it does"):
        t.add_column(c)
    for fam, classes in registry.families().items():
        if not classes:
            t.add_row(fam, "-", "-", "[dim]no pipeline pass (see its command)[/]")
        for cls in classes:
            t.add_row(fam, cls.name, "exact" if cls.exact else "lossy", escape(cls.summary))
    console.print(t)
    console.print(f"default for `optimize`: {', '.join(registry.DEFAULT_PIPELINE)}")


def register(app: typer.Typer) -> None:
    """Add the ``passes`` command to ``app``."""
    app.command("passes")(passes_cmd)
