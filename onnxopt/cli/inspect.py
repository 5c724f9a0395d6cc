"""``onnxopt inspect``: what a model holds (ops, nodes, parameters, MACs, size, I/O)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from onnxopt.cli.common import console


def inspect_cmd(
    model: Annotated[Path, typer.Argument(help="Model to summarize.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Op histogram, node/parameter counts, MACs, size, opset, inputs and outputs."""
    from onnxopt.cli.render import fmt_bytes, fmt_int
    from onnxopt.model import load_model
    from onnxopt.summary import ModelSummary

    s = ModelSummary.of(load_model(model))
    if as_json:
        console.print_json(json.dumps(s.to_dict(), default=str))
        return
    console.print(f"[bold]{model}[/]  opset {s.opset}  IR {s.ir_version}")
    console.print(
        f"nodes {s.nodes}  params {fmt_int(s.params)}  MACs {fmt_int(s.flops)}"
        f"{'' if s.flops_complete else ' (some shapes unknown)'}  "
        f"size {fmt_bytes(s.bytes)}"
    )
    for label, specs in (("inputs", s.inputs), ("outputs", s.outputs)):
        console.print(f"{label}: " + ", ".join(str(x) for x in specs))
    t = Table(title="ops", title_justify="left")
    t.add_column("op")
    t.add_column("count", justify="right")
    for op, n in s.ops.items():
        t.add_row(op, str(n))
    console.print(t)


def register(app: typer.Typer) -> None:
    """Add the ``inspect`` command to ``app``."""
    app.command("inspect")(inspect_cmd)
