"""``onnxopt search``: the best model under a budget, found automatically.

    onnxopt search MODEL --data X.npz [--calib-data C.npz] [--recipe R.toml]
        --max-accuracy-drop 1 [--max-latency-ms T] [--max-size-mb S]
        [--executor local|ray] [--ray-address auto|HOST:PORT] --out DIR [--resume] [--seed N]

The recipe is validated before anything runs (one line, exit 2). Writes DIR/front.json,
DIR/front.html, DIR/trials.json, DIR/reports/ and DIR/best.onnx. Ctrl-C stops the workers and
keeps the cache; ``--resume`` continues where it stopped.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.live import Live
from rich.table import Table

from onnxopt.cli.common import (
    BatchOpt,
    CalibOpt,
    DataOpt,
    IntRangeOpt,
    MaxAbsErrOpt,
    MaxAccuracyDropOpt,
    MetricOutputOpt,
    MinCosineOpt,
    MinTop1AgreementOpt,
    ShapeOpt,
    TargetOpt,
    budget_from,
    console,
    err_console,
    feeds_for,
)
from onnxopt.model import load_model

RecipeOpt = Annotated[
    Path | None,
    typer.Option(
        "--recipe", help="Search space: a .toml, .yaml or .json recipe (default: built in)."
    ),
]
MaxLatencyOpt = Annotated[
    float | None, typer.Option("--max-latency-ms", help="Only models at most this slow (batch 1).")
]
MaxSizeOpt = Annotated[
    float | None, typer.Option("--max-size-mb", help="Only models at most this large.")
]
ExecutorOpt = Annotated[
    str, typer.Option("--executor", help="local (a process pool) or ray (Ray tasks).")
]
RayAddressOpt = Annotated[
    str | None,
    typer.Option(
        "--ray-address",
        help="Join a Ray cluster: auto or HOST:PORT (default: start a local Ray instance).",
    ),
]
WorkersOpt = Annotated[
    int | None,
    typer.Option("--workers", help="Local worker processes, or CPUs of a local Ray instance."),
]
OutOpt = Annotated[Path, typer.Option("--out", help="Folder for the results and the cache.")]
ResumeOpt = Annotated[
    bool, typer.Option("--resume", help="Continue the search in --out from its cache.")
]
SeedOpt = Annotated[
    int | None, typer.Option("--seed", help="Seeds the sample of a space larger than --trials.")
]
TrialsOpt = Annotated[int | None, typer.Option("--trials", help="At most this many trials.")]
ObjectiveOpt = Annotated[
    str | None,
    typer.Option("--objective", help="The model chosen: fastest, smallest or accurate."),
]


def search_cmd(
    model: Annotated[Path, typer.Argument(help="Input .onnx (never modified).")],
    out: OutOpt,
    data: DataOpt = None,
    calib_data: CalibOpt = None,
    recipe: RecipeOpt = None,
    batch: BatchOpt = None,
    shape: ShapeOpt = None,
    int_range: IntRangeOpt = None,
    max_accuracy_drop: MaxAccuracyDropOpt = None,
    min_cosine: MinCosineOpt = None,
    max_abs_err: MaxAbsErrOpt = None,
    min_top1_agreement: MinTop1AgreementOpt = None,
    max_latency_ms: MaxLatencyOpt = None,
    max_size_mb: MaxSizeOpt = None,
    executor: ExecutorOpt = "local",
    ray_address: RayAddressOpt = None,
    workers: WorkersOpt = None,
    resume: ResumeOpt = False,
    seed: SeedOpt = None,
    trials: TrialsOpt = None,
    objective: ObjectiveOpt = None,
    metric_output: MetricOutputOpt = None,
    target: TargetOpt = "onnx",
) -> None:
    """Search passes and options for the fastest model within the budget (a Pareto front)."""
    from onnxopt.search import driver, pareto
    from onnxopt.search.executors import make_executor
    from onnxopt.search.recipe import build_space, read_recipe

    space = build_space(
        read_recipe(recipe) if recipe else None,
        target=target,
        seed=seed,
        trials=trials,
        objective=objective,
    )
    make_executor(executor, workers=workers, address=ray_address)  # option errors first
    m = load_model(model)
    req = driver.Request(
        model=m,
        feeds=feeds_for(m, data, shape, int_range, batch),
        calib=feeds_for(m, calib_data, shape, int_range, batch) if calib_data else None,
        space=space,
        budget=budget_from(min_cosine, max_abs_err, min_top1_agreement, max_accuracy_drop),
        out=out,
        constraints=pareto.Constraints(max_latency_ms, max_size_mb),
        executor=executor,
        ray_address=ray_address,
        workers=workers,
        resume=resume,
        metric_output=metric_output,
        target=target,
        name=model.name,
    )
    live = LiveTable() if err_console.is_terminal else None
    try:
        with live or _Nothing():
            result, paths, info = driver.run(req, live.update if live else None)
    except KeyboardInterrupt:
        err_console.print(
            f"search interrupted: finished steps and evaluations are kept in {out / 'cache'}; "
            "rerun with --resume to continue"
        )
        raise
    render_result(result, info, paths)


class _Nothing:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: Any) -> None:
        return None


class LiveTable:
    """The live progress table: phase, trials done and failed, what runs, the best so far
    and the estimated time left (on stderr, while the search runs)."""

    def __init__(self) -> None:
        self.live = Live(self._table({}), console=err_console, refresh_per_second=4, transient=True)

    def __enter__(self) -> LiveTable:
        self.live.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.live.__exit__(*exc)

    def update(self, snap: dict[str, Any]) -> None:
        self.live.update(self._table(snap))

    def _table(self, snap: dict[str, Any]) -> Table:
        t = Table(title="onnxopt search", show_header=False, box=None)
        t.add_column("what", style="bold")
        t.add_column("value")
        if not snap:
            t.add_row("phase", "starting workers")
            return t
        c = snap.get("computed", {})
        t.add_row(
            "phase",
            {"cheap": "cheap trials", "full": "full verification"}.get(
                snap["phase"], snap["phase"]
            ),
        )
        t.add_row("trials", f"{snap['done']}/{snap['trials']} done, {snap['failed']} failed")
        t.add_row(
            "computed",
            f"{c.get('steps', 0)} steps, {c.get('evals', 0)} evaluations "
            f"(cached: {c.get('steps_cached', 0)} steps, {c.get('evals_cached', 0)} evaluations)",
        )
        running = snap.get("running") or []
        t.add_row("running", ", ".join(running[:4]) + (" …" if len(running) > 4 else "") or "-")
        b = snap.get("best")
        if b:
            q = "-" if b.get("quality") is None else f"{b['quality']:.2f}"
            t.add_row(
                "best so far", f"{b['id']} {b['label']}: {b['latency_ms']:.4g} ms, quality {q}"
            )
        eta = snap.get("eta_s")
        t.add_row("time left", "estimating" if eta is None else f"~{eta:.0f} s")
        return t


def render_result(result: Any, info: dict[str, Any], paths: dict[str, Path]) -> None:
    """The front as a table, the choice, and where everything was written."""
    t = Table(title=f"Pareto front ({info['metric_name']}, budget {info['budget']})")
    for col in ("trial", "passes", "quality", "ms", "speed-up", "MB", "within budget", "node"):
        t.add_column(col)
    chosen = result.chosen["id"] if result.chosen else None
    for p in sorted(result.front, key=lambda p: p["latency_ms"]):
        mark = " *" if p["id"] == chosen else ""
        q = "-" if p.get("quality") is None else f"{p['quality']:.2f}"
        sp = p.get("speedup")
        t.add_row(
            p["id"] + mark,
            p["label"],
            q,
            f"{p['latency_ms']:.4g}",
            "-" if sp is None else f"{sp:.2f}x",
            f"{p['size_mb']:.3g}",
            "yes" if p.get("feasible") else (p.get("why") or "no"),
            str(p.get("node", "")),
        )
    console.print(t)
    failed = [ts for ts in result.trials if ts.error]
    for ts in failed[:5]:
        console.print(f"[yellow]failed[/] {ts.trial.id} {ts.trial.label()}: {ts.error}")
    if len(failed) > 5:
        console.print(f"… and {len(failed) - 5} more failed trials (see trials.json)")
    console.print(info["summary"])
    for what, path in paths.items():
        console.print(f"wrote {what}: {path}")


def register(app: typer.Typer) -> None:
    """Add the ``search`` command to ``app``."""
    app.command("search")(search_cmd)
