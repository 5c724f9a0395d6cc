"""``onnxopt verify``: run two models on the same inputs and compare every output."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from onnxopt.cli.common import (
    BatchOpt,
    DataOpt,
    IntRangeOpt,
    MaxAbsErrOpt,
    MaxAccuracyDropOpt,
    MinCosineOpt,
    MinTop1AgreementOpt,
    ShapeOpt,
    budget_from,
    console,
    feeds_for,
)


def verify_cmd(
    model_a: Annotated[Path, typer.Argument(help="Reference model.")],
    model_b: Annotated[Path, typer.Argument(help="Candidate model.")],
    data: DataOpt = None,
    shape: ShapeOpt = None,
    int_range: IntRangeOpt = None,
    batch: BatchOpt = None,
    exact: Annotated[
        bool,
        typer.Option(
            "--exact/--budget", help="Judge with the exact tolerance (default) or the lossy budget."
        ),
    ] = True,  # noqa: E501
    min_cosine: MinCosineOpt = None,
    max_abs_err: MaxAbsErrOpt = None,
    min_top1_agreement: MinTop1AgreementOpt = None,
    max_accuracy_drop: MaxAccuracyDropOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Run two models on the same inputs and compare every output. Exit 1 if they differ."""
    from onnxopt.data import check_feeds
    from onnxopt.model import load_model
    from onnxopt.runner import Runner
    from onnxopt.verify import Exact, accuracy, compare

    a, b = load_model(model_a), load_model(model_b)
    feeds = feeds_for(a, data, shape, int_range, batch)
    check_feeds(feeds, b)
    runner = Runner()
    ra, rb = runner.run(a, feeds), runner.run(b, feeds)
    cmp = compare(ra, rb, percentiles=True)
    acc = None
    if feeds.labels is not None:
        acc = (accuracy(ra, feeds.labels), accuracy(rb, feeds.labels))
    if exact:
        verdict = Exact().check(ra, rb)
    else:
        verdict = budget_from(min_cosine, max_abs_err, min_top1_agreement, max_accuracy_drop).check(
            cmp, acc
        )
    if as_json:
        out = cmp.to_dict()
        out.update(ok=verdict.ok, reasons=verdict.reasons, accuracy=acc)
        console.print_json(json.dumps(out, default=str))
    else:
        _print_table(cmp, f"{model_a.name} vs {model_b.name} ({feeds.source})")
        if acc:
            console.print(f"accuracy {acc[0]:.2f}% vs {acc[1]:.2f}%")
        console.print(
            "[green]match[/]" if verdict.ok else f"[red]differ[/]: {escape(verdict.reason)}"
        )
    if not verdict.ok:
        raise typer.Exit(1)


def _print_table(cmp, title: str) -> None:  # noqa: ANN001 - Comparison
    t = Table(title=title, title_justify="left")
    for c in ("output", "dtype", "max abs", "p99 abs", "max rel", "cosine", "top-1"):
        t.add_column(c)
    for s in cmp.outputs.values():
        t.add_row(
            s.name,
            s.dtype,
            f"{s.max_abs:.3g}",
            "-" if s.p99_abs is None else f"{s.p99_abs:.3g}",
            f"{s.max_rel:.3g}",
            f"{s.cosine:.6f}",
            "-" if s.top1 is None else f"{s.top1:.4f}",
        )
    console.print(t)


def register(app: typer.Typer) -> None:
    """Add the ``verify`` command to ``app``."""
    app.command("verify")(verify_cmd)
