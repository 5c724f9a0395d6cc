"""The ``onnxopt`` command. It owns all terminal output: rich tables and progress bars.

Bad input (a missing or broken file, wrong feeds, an unknown pass) is one line on stderr and
exit code 2; ``--debug`` shows the traceback. No output file is written unless the run succeeds.
"""

from __future__ import annotations

import importlib
import json
import logging
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from onnxopt.commands.common import budget_from, console, err_console, feeds_for, write_model
from onnxopt.errors import OnnxoptError

app = typer.Typer(
    name="onnxopt",
    help="Verified ONNX graph optimization: every pass is checked in onnxruntime.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)

_STATE = {"debug": False}

#: feature commands, one module each (see onnxopt/commands/)
FEATURE_COMMANDS = ["bench", "quantize", "prune", "merge", "distill"]


@app.callback()
def _root(
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks and debug logs.")] = False,
    version: Annotated[bool, typer.Option("--version", help="Print the version.")] = False,
) -> None:
    if version:
        from onnxopt import __version__

        console.print(f"onnxopt {__version__}")
        raise typer.Exit(0)
    _STATE["debug"] = debug
    logging.basicConfig(level=logging.DEBUG if debug else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")


# ------------------------------------------------------------------------------------------------
# Shared option types

DataOpt = Annotated[Path | None, typer.Option("--data", help=".npz or folder of .npy (keys = input names; 'labels' optional).")]  # noqa: E501
ShapeOpt = Annotated[list[str] | None, typer.Option("--shape", help="Dynamic dims for synthesized inputs: name=1x3x224x224 (repeatable).")]  # noqa: E501
IntRangeOpt = Annotated[str | None, typer.Option("--int-range", help="Range LOW,HIGH for synthesized integer inputs (token ids).")]  # noqa: E501
BatchOpt = Annotated[int | None, typer.Option("--batch", help="Samples per run when the batch dim is dynamic.")]  # noqa: E501
ReportOpt = Annotated[Path | None, typer.Option("--report", help="Write the JSON report here.")]
MinCos = Annotated[float | None, typer.Option("--min-cosine", help="Lossy budget: min cosine vs the original (default 0.99).")]  # noqa: E501
MaxAbs = Annotated[float | None, typer.Option("--max-abs-err", help="Lossy budget: max abs error vs the original.")]  # noqa: E501
MinTop1 = Annotated[float | None, typer.Option("--min-top1-agreement", help="Lossy budget: argmax agreement with the original (0-1).")]  # noqa: E501
MaxDrop = Annotated[float | None, typer.Option("--max-accuracy-drop", help="Lossy budget: accuracy drop in points (needs labels in --data).")]  # noqa: E501


class RichProgress:
    """A ProgressSink drawing rich progress bars on stderr."""

    def __init__(self) -> None:
        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

        self.progress = Progress(
            TextColumn("[bold]{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
            TimeElapsedColumn(), console=err_console, transient=True,
        )
        self.main = None
        self.sub = None

    def start(self, total: int) -> None:
        self.progress.start()
        self.main = self.progress.add_task("passes", total=total)

    def pass_started(self, name: str, index: int) -> None:
        self.progress.update(self.main, description=f"pass {name}", completed=index)

    def update(self, what: str, done: int, total: int) -> None:
        if self.sub is None:
            self.sub = self.progress.add_task(what, total=total)
        self.progress.update(self.sub, description=what, completed=done, total=total)

    def pass_done(self, report) -> None:  # noqa: ANN001 - PassReport
        self.progress.advance(self.main)
        if self.sub is not None:
            self.progress.remove_task(self.sub)
            self.sub = None

    def stop(self) -> None:
        self.progress.stop()


def _progress() -> RichProgress | None:
    return RichProgress() if err_console.is_terminal else None


def run_and_report(
    model_path: Path,
    passes: list[str] | None,
    output: Path | None,
    *,
    data: Path | None,
    shape: list[str] | None,
    int_range: str | None,
    batch: int | None,
    report_path: Path | None,
    strict: bool,
    target: str = "onnx",
    budget=None,  # noqa: ANN001
    options: dict | None = None,
    title: str | None = None,
    calib_data: Path | None = None,
):
    """Load, run the PassManager, print the report, write outputs atomically."""
    from onnxopt.model import load_model
    from onnxopt.pipeline import PassManager
    from onnxopt.report import render

    model = load_model(model_path)
    pm = PassManager(passes, budget=budget, target=target, strict=strict, options=options,
                     progress=_progress())
    feeds = feeds_for(model, data, shape, int_range, batch)
    calib = feeds_for(model, calib_data, shape, int_range, batch) if calib_data else None
    out_model, report = pm.run(model, feeds, calib)
    if title:
        console.print(f"[bold]{title}[/]")
    render(report, console)
    if output is not None:
        write_model(out_model, output, source=model_path)
        console.print(f"wrote {output}")
    if report_path is not None:
        _write_text_atomic(report_path, report.to_json())
    return out_model, report


def _write_text_atomic(path: Path, text: str) -> None:
    import os
    import tempfile

    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def _split_passes(passes: str | None) -> list[str] | None:
    if passes is None:
        return None
    return [p.strip() for p in passes.split(",") if p.strip()]


# ------------------------------------------------------------------------------------------------
# Commands


@app.command("optimize")
def optimize_cmd(
    model: Annotated[Path, typer.Argument(help="Input .onnx (never modified).")],
    output: Annotated[Path, typer.Option("-o", "--output", help="Where to write the optimized model.")],
    passes: Annotated[str | None, typer.Option("--passes", help="Comma-separated passes or families (default: every exact pass). See `onnxopt passes`.")] = None,  # noqa: E501
    data: DataOpt = None,
    calib_data: Annotated[Path | None, typer.Option("--calib-data", help="Separate inputs for passes to learn from (calibration, pruning); default: --data.")] = None,  # noqa: E501
    shape: ShapeOpt = None,
    int_range: IntRangeOpt = None,
    batch: BatchOpt = None,
    report: ReportOpt = None,
    strict: Annotated[bool, typer.Option("--strict", help="Exit non-zero if any pass fails verification.")] = False,  # noqa: E501
    target: Annotated[str, typer.Option("--target", help="onnx (standard ops) or onnxruntime (contrib ops allowed).")] = "onnx",  # noqa: E501
    min_cosine: MinCos = None,
    max_abs_err: MaxAbs = None,
    min_top1_agreement: MinTop1 = None,
    max_accuracy_drop: MaxDrop = None,
) -> None:
    """Run a pipeline of passes; each is verified in onnxruntime and rolled back if it fails."""
    budget = budget_from(min_cosine, max_abs_err, min_top1_agreement, max_accuracy_drop)
    run_and_report(model, _split_passes(passes), output, data=data, shape=shape,
                   int_range=int_range, batch=batch, report_path=report, strict=strict,
                   target=target, budget=budget, calib_data=calib_data)


@app.command("verify")
def verify_cmd(
    model_a: Annotated[Path, typer.Argument(help="Reference model.")],
    model_b: Annotated[Path, typer.Argument(help="Candidate model.")],
    data: DataOpt = None,
    shape: ShapeOpt = None,
    int_range: IntRangeOpt = None,
    batch: BatchOpt = None,
    exact: Annotated[bool, typer.Option("--exact/--budget", help="Judge with the exact tolerance (default) or the lossy budget.")] = True,  # noqa: E501
    min_cosine: MinCos = None,
    max_abs_err: MaxAbs = None,
    min_top1_agreement: MinTop1 = None,
    max_accuracy_drop: MaxDrop = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Run two models on the same inputs and compare every output. Exit 1 if they differ."""
    from rich.table import Table

    from onnxopt.data import check_feeds
    from onnxopt.model import load_model
    from onnxopt.verify import Exact, Runner, accuracy, compare

    a, b = load_model(model_a), load_model(model_b)
    feeds = feeds_for(a, data, shape, int_range, batch)
    check_feeds(feeds, b)
    runner = Runner()
    ra, rb = runner.run(a, feeds), runner.run(b, feeds)
    cmp = compare(ra, rb)
    acc = None
    if feeds.labels is not None:
        acc = (accuracy(ra, feeds.labels), accuracy(rb, feeds.labels))
    if exact:
        verdict = Exact().check(ra, rb)
    else:
        verdict = budget_from(min_cosine, max_abs_err, min_top1_agreement,
                              max_accuracy_drop).check(cmp, acc)
    if as_json:
        out = cmp.to_dict()
        out.update(ok=verdict.ok, reasons=verdict.reasons, accuracy=acc)
        console.print_json(json.dumps(out, default=str))
    else:
        t = Table(title=f"{model_a.name} vs {model_b.name} ({feeds.source})", title_justify="left")
        for c in ("output", "dtype", "max abs", "p99 abs", "max rel", "cosine", "top-1"):
            t.add_column(c)
        for s in cmp.outputs.values():
            t.add_row(s.name, s.dtype, f"{s.max_abs:.3g}", f"{s.p99_abs:.3g}", f"{s.max_rel:.3g}",
                      f"{s.cosine:.6f}", "-" if s.top1 is None else f"{s.top1:.4f}")
        console.print(t)
        if acc:
            console.print(f"accuracy {acc[0]:.2f}% vs {acc[1]:.2f}%")
        console.print("[green]match[/]" if verdict.ok else f"[red]differ[/]: {escape(verdict.reason)}")
    if not verdict.ok:
        raise typer.Exit(1)


@app.command("inspect")
def inspect_cmd(
    model: Annotated[Path, typer.Argument(help="Model to summarize.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Op histogram, node/parameter counts, MACs, size, opset, inputs and outputs."""
    from rich.table import Table

    from onnxopt.model import ModelSummary, load_model
    from onnxopt.report import _fmt_bytes, _fmt_int

    s = ModelSummary.of(load_model(model))
    if as_json:
        console.print_json(json.dumps(s.to_dict(), default=str))
        return
    console.print(f"[bold]{model}[/]  opset {s.opset}  IR {s.ir_version}")
    console.print(f"nodes {s.nodes}  params {_fmt_int(s.params)}  MACs {_fmt_int(s.flops)}"
                  f"{'' if s.flops_complete else ' (some shapes unknown)'}  size {_fmt_bytes(s.bytes)}")
    for label, specs in (("inputs", s.inputs), ("outputs", s.outputs)):
        console.print(f"{label}: " + ", ".join(str(x) for x in specs))
    t = Table(title="ops", title_justify="left")
    t.add_column("op")
    t.add_column("count", justify="right")
    for op, n in s.ops.items():
        t.add_row(op, str(n))
    console.print(t)


@app.command("passes")
def passes_cmd() -> None:
    """List every pass: family, exact or lossy, and what it does."""
    from rich.table import Table

    from onnxopt.passes import registry

    t = Table(title="passes (families are aliases: --passes cleanup,fusion)", title_justify="left")
    for c in ("family", "pass", "kind", "what it does"):
        t.add_column(c)
    for fam, classes in registry.families().items():
        if not classes:
            t.add_row(fam, "-", "-", "[dim]not available in this build[/]")
        for cls in classes:
            t.add_row(fam, cls.name, "exact" if cls.exact else "lossy", escape(cls.summary))
    console.print(t)
    console.print(f"default for `optimize`: {', '.join(registry.DEFAULT_PIPELINE)}")


@app.command("demo")
def demo_cmd(
    out_dir: Annotated[Path, typer.Option("--out", help="Folder for the outputs.")] = Path("out/demo"),
) -> None:
    """Run the whole pipeline on the bundled example (examples/digits_cnn.onnx) and print the report."""
    from onnxopt.demo import run_demo

    run_demo(out_dir, console=console, progress=_progress())


def _register_features() -> None:
    for name in FEATURE_COMMANDS:
        try:
            mod = importlib.import_module(f"onnxopt.commands.{name}")
        except ModuleNotFoundError as e:
            if e.name == f"onnxopt.commands.{name}":
                continue
            raise
        mod.register(app)


_register_features()


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
        err_console.print(f"[red]internal error:[/] {type(e).__name__}: {escape(str(e))} (rerun with --debug)",
                          soft_wrap=True)
        return 1
    return 0


def entry() -> None:
    sys.exit(main())
