"""``onnxopt bench``: latency, throughput and memory of one or more models in onnxruntime."""

from __future__ import annotations

import csv
import io
import json
import math
import os
import tempfile
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from onnxopt.cli.common import IntRangeOpt, ShapeOpt, console, err_console
from onnxopt.data import parse_int_range, parse_shape_overrides

CSV_FIELDS = (
    "model",
    "batch",
    "provider",
    "threads",
    "optimization",
    "runs",
    "p50",
    "p90",
    "p99",
    "mean",
    "std",
    "throughput",
    "session_ms",
    "peak_rss_mb",
    "session_rss_mb",
    "file_bytes",
    "ratio",
    "within_noise",
    "inputs",
    "synthesized",
)


def rows(results: list[Any]) -> list[dict[str, Any]]:
    """Flat dicts with ``ratio`` (median latency vs the first model at the same batch) and
    ``within_noise`` (95 % median intervals overlap) added."""
    first: dict[int, Any] = {}
    out = []
    for r in results:
        base = first.setdefault(r.batch, r)
        d = r.to_dict()
        d["ratio"] = r.ratio(base)
        d["within_noise"] = base is not r and r.within_noise(base)
        out.append(d)
    return out


def to_csv(results: list[Any]) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=CSV_FIELDS, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    for d in rows(results):
        w.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in d.items()})
    return buf.getvalue()


def table(results: list[Any]) -> Table:
    t = Table(title="latency in ms (onnxruntime)", title_justify="left")
    for c, j in (
        ("model", "left"),
        ("batch", "right"),
        ("p50", "right"),
        ("p90", "right"),
        ("p99", "right"),
        ("mean ± std", "right"),
        ("samples/s", "right"),
        ("session", "right"),
        ("peak RSS", "right"),
        ("size", "right"),
        ("vs first", "right"),
    ):
        t.add_column(c, justify=j)
    multi = len({r.model for r in results}) > 1
    for d, r in zip(rows(results), results, strict=True):
        if not multi or d["ratio"] == 1.0 and not d["within_noise"]:
            vs = "-" if not multi else "1.00x"
        else:
            vs = f"{d['ratio']:.2f}x" + (" [dim](noise)[/]" if d["within_noise"] else "")
        t.add_row(
            escape(r.model),
            str(r.batch),
            _ms(r.p50),
            _ms(r.p90),
            _ms(r.p99),
            f"{_ms(r.mean)} ± {_ms(r.std)}",
            f"{r.throughput:,.0f}",
            f"{r.session_ms:.0f} ms",
            f"{r.peak_rss_mb:.0f} MiB",
            _size(r.file_bytes),
            vs,
        )
    return t


def _ms(v: float) -> str:
    """Three significant digits without switching to exponent notation."""
    if v >= 100:
        return f"{v:.0f}"
    if v <= 0:
        return "0"
    return f"{v:.{max(0, 2 - math.floor(math.log10(v)))}f}"


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def _write(path: Path, text: str) -> None:
    if str(path) == "-":
        typer.echo(text, nl=not text.endswith("\n"))
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)


class _Bar:
    """A rich progress bar per (model, batch) on stderr; silent when stderr is not a terminal."""

    def __init__(self, enabled: bool) -> None:
        self.p = None
        self.tasks: dict[str, Any] = {}
        if enabled:
            from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

            self.p = Progress(
                TextColumn("[bold]{task.description}"),
                BarColumn(),
                TextColumn("{task.percentage:>3.0f}%"),
                TimeElapsedColumn(),
                console=err_console,
                transient=True,
            )

    def __enter__(self) -> _Bar:
        if self.p is not None:
            self.p.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.p is not None:
            self.p.stop()

    def __call__(self, what: str, done: float, total: float) -> None:
        if self.p is None:
            return
        if what not in self.tasks:
            self.tasks[what] = self.p.add_task(what, total=total)
        self.p.update(self.tasks[what], completed=done, total=total)


ModelsOpt = Annotated[
    list[Path], typer.Argument(help="One or more .onnx models; the first is the baseline.")
]
DataOpt = Annotated[
    Path | None,
    typer.Option("--data", help=".npz or folder of .npy with real inputs (keys = input names)."),
]
ThreadsOpt = Annotated[
    int, typer.Option("--threads", help="Intra-op threads (0: onnxruntime's default).")
]
WarmupOpt = Annotated[int, typer.Option("--warmup", help="Untimed runs first.")]
RunsOpt = Annotated[int, typer.Option("--runs", help="Timed runs.")]
SecondsOpt = Annotated[
    float | None, typer.Option("--seconds", help="Time per measurement instead of --runs.")
]
ProviderOpt = Annotated[
    str, typer.Option("--provider", help="cpu, or another provider onnxruntime lists as available.")
]
OptimizationOpt = Annotated[
    str,
    typer.Option(
        "--optimization", help="onnxruntime graph optimizations: disable, basic, extended, all."
    ),
]
IsolateOpt = Annotated[
    bool,
    typer.Option(
        "--isolate/--in-process",
        help="Measure each model in a fresh subprocess (clean peak memory) or in this one.",
    ),
]
AsJsonOpt = Annotated[
    Path | None, typer.Option("--json", help="Write JSON results here ('-' for stdout).")
]
AsCsvOpt = Annotated[
    Path | None, typer.Option("--csv", help="Write CSV results here ('-' for stdout).")
]
LatenciesOpt = Annotated[
    bool, typer.Option("--latencies", help="Include every latency in the JSON.")
]

BatchesOpt = Annotated[
    str | None,
    typer.Option(
        "--batch", help="Batch sizes, e.g. 1,8,32 (dynamic batch only; default: the model's)."
    ),
]


def bench_cmd(
    models: ModelsOpt,
    data: DataOpt = None,
    shape: ShapeOpt = None,
    int_range: IntRangeOpt = None,
    batch: BatchesOpt = None,
    threads: ThreadsOpt = 0,
    warmup: WarmupOpt = 10,
    runs: RunsOpt = 100,
    seconds: SecondsOpt = None,
    provider: ProviderOpt = "cpu",
    optimization: OptimizationOpt = "all",
    isolate: IsolateOpt = True,
    as_json: AsJsonOpt = None,
    as_csv: AsCsvOpt = None,
    latencies: LatenciesOpt = False,
) -> None:
    """Latency (p50/p90/p99, mean ± std), throughput, session time, memory and size.

    With two or more models, the table shows each one's median latency against the first;
    "(noise)" marks a difference inside the 95 % confidence intervals of the medians.
    """
    from onnxopt.bench import bench

    quiet = str(as_json) == "-" or str(as_csv) == "-"
    with _Bar(err_console.is_terminal) as bar:
        results = bench(
            models,
            data=data,
            shapes=parse_shape_overrides(shape),
            int_range=parse_int_range(int_range),
            batch=batch,
            threads=threads,
            warmup=warmup,
            runs=runs,
            seconds=seconds,
            provider=provider,
            optimization=optimization,
            isolate=isolate,
            progress=bar,
        )
    if not quiet:
        console.print(table(results))
        notes = sorted({n for r in results for n in r.notes})
        for n in notes:
            console.print(f"[dim]note: {escape(n)}[/]")
        console.print(f"[dim]memory: {escape(results[0].memory_method)}[/]")
    if as_json is not None:
        payload = [
            dict(d, **({"latencies_ms": r.latencies_ms} if latencies else {}))
            for d, r in zip(rows(results), results, strict=True)
        ]
        _write(as_json, json.dumps(payload, indent=2))
    if as_csv is not None:
        _write(as_csv, to_csv(results))


def register(app: typer.Typer) -> None:
    """Add the ``bench`` command to ``app``."""
    app.command("bench")(bench_cmd)
