"""``onnxopt debug``: compare two models tensor by tensor in bounded memory, name the first
tensor that goes wrong, and cut a failing rewrite down to a small subgraph (``--reduce``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from onnxopt.cli.common import (
    BatchOpt,
    DataOpt,
    IntRangeOpt,
    ShapeOpt,
    console,
    err_console,
    feeds_for,
    write_text_atomic,
)

ModelA = Annotated[Path, typer.Argument(help="Reference model (the original).")]
ModelB = Annotated[Path, typer.Argument(help="Model under test (the rewritten one).")]
ThresholdOpt = Annotated[
    float,
    typer.Option(
        "--threshold", help="A tensor is wrong when max|a-b| / max(1, max|a|) exceeds this."
    ),
]
RunsOpt = Annotated[int, typer.Option("--runs", help="Compare on at most this many runs.")]
ReduceOpt = Annotated[
    Path | None,
    typer.Option(
        "--reduce",
        help="Write the smallest subgraph of B that still differs here (.onnx; its inputs and "
        "expected outputs go to .npz, the original nodes to .orig.onnx).",
    ),
]
JsonOpt = Annotated[
    Path | None, typer.Option("--json", help="Write every tensor's comparison as JSON here.")
]
ChunkOpt = Annotated[
    int | None,
    typer.Option(
        "--chunk-mb", help="Outputs held per chunk, both models (default: 1/8 of the larger)."
    ),
]
TopOpt = Annotated[int, typer.Option("--top", help="Rows in the table of the worst tensors.")]


def debug_cmd(
    model_a: ModelA,
    model_b: ModelB,
    data: DataOpt = None,
    shape: ShapeOpt = None,
    int_range: IntRangeOpt = None,
    batch: BatchOpt = None,
    runs: RunsOpt = 4,
    threshold: ThresholdOpt = 1e-3,
    reduce: ReduceOpt = None,
    json_out: JsonOpt = None,
    chunk_mb: ChunkOpt = None,
    top: TopOpt = 12,
) -> None:
    """Compare A and B tensor by tensor in bounded memory; find where they part.

    Prints the first tensor over the threshold (exit 1 if there is one) and, with --reduce,
    the smallest failing subgraph."""
    from onnxopt.data import check_feeds
    from onnxopt.errors import OptionError
    from onnxopt.layerwise import compare_layers
    from onnxopt.mapped import open_mapped

    if runs < 1:
        raise OptionError(f"--runs {runs}: must be at least 1")
    if chunk_mb is not None and chunk_mb < 1:
        raise OptionError(f"--chunk-mb {chunk_mb}: must be at least 1")
    a, b = open_mapped(model_a), open_mapped(model_b)
    feeds = feeds_for(a.proto, data, shape, int_range, batch, limit=runs).subset(runs)
    check_feeds(feeds, b.proto)
    bar = _Progress()
    with bar:
        rep = compare_layers(
            a,
            b,
            feeds,
            threshold=threshold,
            max_bytes=chunk_mb << 20 if chunk_mb else None,
            progress=bar.update,
        )
    print_layers(rep, model_a.name, model_b.name, feeds.source, top)
    if json_out is not None:
        write_text_atomic(json_out, json.dumps(rep.to_dict(), indent=1))
    if reduce is not None:
        _reduce(a, b, feeds, rep, reduce)
    if rep.first_over is not None:
        raise typer.Exit(1)


class _Progress:
    """A rich progress bar on stderr when it is a terminal."""

    def __init__(self) -> None:
        from rich.progress import Progress

        self.bar = (
            Progress(console=err_console, transient=True) if err_console.is_terminal else None
        )
        self.task: Any = None

    def __enter__(self) -> _Progress:
        if self.bar is not None:
            self.bar.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.bar is not None:
            self.bar.stop()

    def update(self, what: str, done: int, total: int) -> None:
        if self.bar is None:
            return
        if self.task is None:
            self.task = self.bar.add_task(what, total=total)
        self.bar.update(self.task, completed=done, total=total)


def print_layers(rep: Any, name_a: str, name_b: str, source: str, top: int) -> None:
    """The summary, the first tensor over the threshold, the jump and the worst tensors."""
    console.print(
        f"[bold]{escape(name_a)} vs {escape(name_b)}[/]: {len(rep.rows)} tensors in common "
        f"({rep.tensors_a} in A, {rep.tensors_b} in B), {rep.runs} run{'s' * (rep.runs != 1)} of "
        f"{escape(source)}, "
        f"{rep.chunks} chunk{'s' * (rep.chunks != 1)} of at most {rep.max_bytes / 2**20:.0f} MB, "
        f"{rep.seconds:.1f} s"
    )
    for note in rep.notes:
        console.print(f"note: {escape(note)}")
    if rep.first_over is None:
        console.print(f"[green]every tensor within {rep.threshold:g}[/]")
    else:
        console.print(
            f"[red]first tensor over {rep.threshold:g}[/]: {_describe(rep.rows[rep.first_over])}"
        )
    if rep.jump is not None:
        console.print(f"the error jumps at {_describe(rep.rows[rep.jump])}")
    worst = sorted((r for r in rep.rows if r["error"]), key=lambda r: r["error"], reverse=True)[
        :top
    ]
    if not worst:
        return
    t = Table(title="tensors with the largest error", title_justify="left")
    for col in ("tensor", "op", "depth", "error", "SQNR dB", "cosine", "match"):
        t.add_column(col, justify="left" if col in ("tensor", "op", "match") else "right")
    for r in worst:
        t.add_row(
            escape(r["tensor"]),
            r["op"],
            str(r["depth"]),
            f"{r['error']:.3g}",
            "-" if r["sqnr_db"] is None else f"{r['sqnr_db']:.1f}",
            "-" if r["cosine"] is None else f"{r['cosine']:.6f}",
            r["match"],
        )
    console.print(t)


def _describe(r: dict[str, Any]) -> str:
    how = (
        f" (B's '{escape(r['other'])}', matched through provenance)" if r["match"] != "name" else ""
    )
    sq = "" if r["sqnr_db"] is None else f", SQNR {r['sqnr_db']:.1f} dB"
    cos = "" if r["cosine"] is None else f", cosine {r['cosine']:.6f}"
    return (
        f"'{escape(r['tensor'])}' ({r['op']} '{escape(r['node'])}', depth {r['depth']}){how}: "
        f"error {r['error']:.3g}{sq}{cos}" + (f"; {escape(r['note'])}" if r["note"] else "")
    )


def _reduce(a: Any, b: Any, feeds: Any, rep: Any, out: Path) -> None:
    from onnxopt.reduce import reduce_failure

    red = reduce_failure(a, b, feeds, rep)
    if red.model is None:
        console.print(f"[yellow]not reduced[/]: {escape(red.why)}")
        return
    files = red.save(out)
    console.print(
        f"reduced {red.candidates} candidate node{'s' * (red.candidates != 1)} to "
        f"{len(red.nodes)} in {red.tests} subgraph run{'s' * (red.tests != 1)}: "
        f"{', '.join(escape(n) for n in red.nodes)}; {escape(red.why)}"
    )
    console.print("wrote " + ", ".join(str(f) for f in files))


def register(app: typer.Typer) -> None:
    """Add the ``debug`` command to ``app``."""
    app.command("debug")(debug_cmd)
