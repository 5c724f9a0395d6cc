"""What the CLI commands share: the consoles, the common options, progress bars, feeds and
budgets from options, and the run-report-write sequence. The CLI owns all terminal output."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Annotated, Any

import onnx
import typer
from rich.console import Console

from onnxopt.contract import PassConfig
from onnxopt.data import Feeds, parse_int_range, parse_shape_overrides
from onnxopt.defaults import SYNTH_RUNS
from onnxopt.errors import OptionError
from onnxopt.model import load_model, save_model
from onnxopt.synth import get_feeds
from onnxopt.verify import Budget


def _console(stderr: bool) -> Console:
    probe = Console(stderr=stderr)
    # piped output: rich would wrap tables at 80 columns; reports read better wider
    return Console(stderr=stderr, highlight=False, width=None if probe.is_terminal else 160)


console = _console(False)
err_console = _console(True)

# ------------------------------------------------------------------------------------------------
# Options more than one command takes

DataOpt = Annotated[
    Path | None,
    typer.Option("--data", help=".npz or folder of .npy (keys = input names; 'labels' optional)."),
]  # noqa: E501
CalibOpt = Annotated[
    Path | None,
    typer.Option(
        "--calib-data",
        help="Separate inputs for passes to learn from (calibration, pruning); default: --data.",
    ),
]  # noqa: E501
ShapeOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--shape", help="Dynamic dims for synthesized inputs: name=1x3x224x224 (repeatable)."
    ),
]  # noqa: E501
IntRangeOpt = Annotated[
    str | None,
    typer.Option("--int-range", help="Range LOW,HIGH for synthesized integer inputs (token ids)."),
]  # noqa: E501
BatchOpt = Annotated[
    int | None, typer.Option("--batch", help="Samples per run when the batch dim is dynamic.")
]  # noqa: E501
ReportOpt = Annotated[Path | None, typer.Option("--report", help="Write the JSON report here.")]
HtmlOpt = Annotated[
    Path | None,
    typer.Option(
        "--html",
        help="Write a one-page HTML report here: the passes, per-layer error, onnxruntime's "
        "per-op profile, trade-offs, changed regions (also stored in --report's JSON).",
    ),
]
PassesOpt = Annotated[
    str | None,
    typer.Option("--passes", help="Comma-separated passes or families. See `onnxopt passes`."),
]  # noqa: E501
StrictOpt = Annotated[
    bool, typer.Option("--strict", help="Exit non-zero if a pass fails verification.")
]  # noqa: E501
TargetOpt = Annotated[
    str, typer.Option("--target", help="onnx (standard ops) or onnxruntime (contrib ops allowed).")
]  # noqa: E501
MinCosineOpt = Annotated[
    float | None,
    typer.Option("--min-cosine", help="Lossy budget: min cosine vs the original (default 0.99)."),
]  # noqa: E501
MaxAbsErrOpt = Annotated[
    float | None, typer.Option("--max-abs-err", help="Lossy budget: max abs error vs the original.")
]  # noqa: E501
MinTop1AgreementOpt = Annotated[
    float | None,
    typer.Option(
        "--min-top1-agreement", help="Lossy budget: argmax agreement with the original (0-1)."
    ),
]  # noqa: E501
MaxAccuracyDropOpt = Annotated[
    float | None,
    typer.Option(
        "--max-accuracy-drop",
        help="Lossy budget: accuracy drop in points (needs labels in --data).",
    ),
]  # noqa: E501

MetricOpt = Annotated[
    str | None,
    typer.Option(
        "--metric",
        help="Lossy budget: a Python callable module:function (or file.py:function) scoring "
        "the outputs of the --data runs, fn(runs, labels) -> float, higher is better (OCR "
        "exact text, recall, mAP); used by the fallback and the verifier.",
    ),
]
MaxMetricDropOpt = Annotated[
    float | None,
    typer.Option(
        "--max-metric-drop", help="How far --metric may fall below the original's (default 0)."
    ),
]


AllowSlowerOpt = Annotated[
    bool,
    typer.Option(
        "--allow-slower",
        help="Keep int8 / pruning even when the model is not faster than its input (by default "
        "such a pass is rolled back: median of interleaved runs, 2 threads).",
    ),
]
LatencyBatchOpt = Annotated[
    int | None,
    typer.Option(
        "--latency-batch",
        help="Judge speed at this batch size (the runs stacked along axis 0), the one you "
        "deploy at: int8 that does not pay at batch 1 can at 32 (default: the median-size run).",
    ),
]
MetricOutputOpt = Annotated[
    str | None,
    typer.Option(
        "--metric-output",
        help="The output accuracy and top-1 read (default: the one holding class scores; an "
        "integer label output is compared as it is).",
    ),
]


MaxMemoryOpt = Annotated[
    str | None,
    typer.Option(
        "--max-memory",
        help="Memory budget: bytes, 8G, 512M or 60% (the default: 60% of RAM). Above it, "
        "fewer verification runs; a model whose session would not fit runs block by block.",
    ),
]


class RichProgress:
    """A ProgressSink drawing rich progress bars on stderr."""

    def __init__(self) -> None:
        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

        self.progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            TextColumn("{task.completed}/{task.total}"),
            TimeElapsedColumn(),
            console=err_console,
            transient=True,
        )
        self.main: Any = None
        self.sub: Any = None

    def start(self, total: int) -> None:
        self.progress.start()
        self.main = self.progress.add_task("passes", total=total)

    def pass_started(self, name: str, index: int) -> None:
        self.progress.update(self.main, description=f"pass {name}", completed=index)

    def update(self, what: str, done: int, total: int) -> None:
        if self.sub is None:
            self.sub = self.progress.add_task(what, total=total)
        self.progress.update(self.sub, description=what, completed=done, total=total)

    def pass_done(self, report: Any) -> None:
        self.progress.advance(self.main)
        if self.sub is not None:
            self.progress.remove_task(self.sub)
            self.sub = None

    def stop(self) -> None:
        self.progress.stop()


def progress() -> RichProgress | None:
    """Progress bars when stderr is a terminal."""
    return RichProgress() if err_console.is_terminal else None


def feeds_for(
    model: onnx.ModelProto,
    data: Path | None,
    shape: list[str] | None = None,
    int_range: str | None = None,
    batch: int | None = None,
    runs: int = SYNTH_RUNS,
    limit: int | None = None,
) -> Feeds:
    """Feeds from ``--data`` or synthesized from ``--shape`` / ``--int-range``."""
    return get_feeds(
        model,
        data,
        shapes=parse_shape_overrides(shape),
        int_range=parse_int_range(int_range),
        batch=batch,
        runs=runs,
        limit=limit,
    )


def budget_from(
    min_cosine: float | None = None,
    max_abs_err: float | None = None,
    min_top1_agreement: float | None = None,
    max_accuracy_drop: float | None = None,
    metric: str | None = None,
    max_metric_drop: float | None = None,
) -> Budget:
    """A Budget from CLI options; cosine defaults to 0.99 when nothing else is set. ``metric``
    (``module:function``) is loaded here: a bad name is a one-line OptionError."""
    if max_metric_drop is not None and metric is None:
        raise OptionError("--max-metric-drop needs --metric module:function")
    if (
        min_cosine is None
        and max_abs_err is None
        and min_top1_agreement is None
        and max_accuracy_drop is None
        and metric is None
    ):
        min_cosine = Budget().min_cosine
    task = None
    if metric is not None:
        from onnxopt.metric import load_metric

        task = load_metric(metric)
    return Budget(
        min_cosine=min_cosine,
        max_abs_err=max_abs_err,
        min_top1_agreement=min_top1_agreement,
        max_accuracy_drop=max_accuracy_drop,
        metric=task,
        max_metric_drop=0.0 if max_metric_drop is None else max_metric_drop,
    )


def split_list(values: str | list[str] | None) -> list[str]:
    """``a,b`` or a repeated option (``--x a --x b,c``) as one list, blanks dropped."""
    if values is None:
        return []
    items = [values] if isinstance(values, str) else values
    return [x.strip() for item in items for x in item.split(",") if x.strip()]


def build_config(
    cls: type[PassConfig], values: dict[str, Any], flags: dict[str, str] | None = None
) -> PassConfig:
    """``cls(**values)`` (values left None keep the config's defaults); a bad value is a
    one-line OptionError naming the CLI flag: ``--percentile 120.0: must be in (50, 100]``."""
    try:
        return cls(**{k: v for k, v in values.items() if v is not None})
    except OptionError as e:
        if e.option is None:
            raise
        flag = (flags or {}).get(e.option, "--" + e.option.replace("_", "-"))
        raise OptionError(f"{flag} {e.value!r}: {e.why}") from e


def pre_passes(passes: str | None, default: list[str]) -> list[str]:
    """The passes a rewriting command runs first: ``--passes`` (``none``: nothing), else
    ``default`` (the families this build has)."""
    if passes is None:
        from onnxopt.passes import registry

        return [f for f in default if registry.family_passes(f)]
    names = split_list(passes)
    return [] if names == ["none"] else names


def clean_first(model: onnx.ModelProto, passes: list[str], what: str) -> onnx.ModelProto:
    """``model`` after ``passes`` (verified like any run, on synthesized inputs), saying so:
    the cleanup a rewriting command runs first, so raw exports work as well as clean ones."""
    if not passes:
        return model
    from onnxopt.passes.registry import manager

    out, report = manager(passes).run(model)
    kept = [p.name for p in report.passes if p.kept]
    console.print(
        f"ran {', '.join(passes)} on {what} first: {len(model.graph.node)} -> "
        f"{len(out.graph.node)} nodes" + (f" ({', '.join(kept)})" if kept else "")
    )
    return out


def write_model(model: onnx.ModelProto, out: Path, source: Path | None) -> Path:
    """Atomic write; refuses to overwrite the input."""
    return save_model(model, out, source=source)


def write_text_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file in the same folder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def run_and_report(
    model_path: Path,
    passes: list[Any] | None,
    output: Path | None,
    *,
    data: Path | None,
    shape: list[str] | None,
    int_range: str | None,
    batch: int | None,
    report_path: Path | None,
    strict: bool,
    target: str = "onnx",
    budget: Budget | None = None,
    options: dict | None = None,
    title: str | None = None,
    calib_data: Path | None = None,
    html: Path | None = None,
    **settings: Any,
):
    """Load, run the passes (names or instances) with verification, print the report and
    write the model, the JSON report and the HTML page atomically. ``settings`` go to the
    PassManager (``allow_slower``, ``metric_output``). Returns (model, report)."""
    from onnxopt.cli.render import render
    from onnxopt.passes.registry import manager

    model = load_model(model_path)
    pm = manager(
        passes,
        budget=budget,
        target=target,
        strict=strict,
        options=options,
        progress=progress(),
        measure_candidates=html is not None,
        **settings,
    )
    feeds = feeds_for(model, data, shape, int_range, batch)
    calib = feeds_for(model, calib_data, shape, int_range, batch) if calib_data else None
    out_model, report = pm.run(model, feeds, calib)
    if title:
        console.print(f"[bold]{title}[/]")
    render(report, console)
    if output is not None:
        write_model(out_model, output, source=model_path)
        console.print(f"wrote {output}")
    if html is not None:
        add_analysis(report, model, out_model, feeds, f"{title or 'onnxopt'}: {model_path.name}")
    if report_path is not None:
        write_text_atomic(report_path, report.to_json())
    if html is not None:
        write_html(report.to_dict(), html)
    return out_model, report


def add_analysis(report: Any, original: onnx.ModelProto, final: Any, feeds: Feeds, title: str):
    """Fill ``report.analysis`` for the HTML page (per-layer error, profiles, regions)."""
    from onnxopt.analysis import analyze

    err_console.print("building the HTML report: per-layer comparison, profiles, regions")
    report.analysis = analyze(original, final, feeds)
    report.analysis["title"] = title


def write_html(report: dict[str, Any], path: Path) -> None:
    """Render a report dict as the HTML page at ``path`` (atomically)."""
    from onnxopt.html import write_page

    write_page(report, path)
    console.print(f"wrote {path}")
