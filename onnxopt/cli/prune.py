"""``onnxopt prune``: structured channel pruning through the PassManager (or ``--dry-run``)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from onnxopt.cli.common import (
    AllowSlowerOpt,
    BatchOpt,
    HtmlOpt,
    IntRangeOpt,
    LatencyBatchOpt,
    MaxAbsErrOpt,
    MaxAccuracyDropOpt,
    MaxMemoryOpt,
    MetricOutputOpt,
    MinCosineOpt,
    MinTop1AgreementOpt,
    ReportOpt,
    ShapeOpt,
    budget_from,
    build_config,
    console,
    feeds_for,
    pre_passes,
    split_list,
)
from onnxopt.errors import OptionError

if TYPE_CHECKING:  # pragma: no cover
    from onnxopt.passes.prune.config import PruneConfig


#: CLI flags of the prune options whose flag is not ``--`` + the name with dashes
FLAGS = {"global_rank": "--global", "reconstruct": "--no-reconstruct"}


def prune_config(
    ratio: float | None = None,
    target_flops: float | None = None,
    global_rank: bool = False,
    importance: str | None = None,
    round_to: int | str | None = None,
    keep: list[str] | None = None,
    max_ratio: float | None = None,
    no_reconstruct: bool = False,
) -> PruneConfig:
    """The prune configuration from CLI values (None: the config's default); a bad value is
    a one-line OptionError naming the flag."""
    from onnxopt.passes.prune.config import PruneConfig

    if ratio is not None and target_flops is not None:
        raise OptionError("give --ratio or --target-flops, not both")
    return build_config(
        PruneConfig,
        {
            "ratio": ratio,
            "target_flops": target_flops,
            "global_rank": global_rank,
            "importance": importance,
            "round_to": round_to,
            "keep": split_list(keep),
            "max_ratio": max_ratio,
            "reconstruct": False if no_reconstruct else None,
        },
        FLAGS,
    )


def render_plan(plan: Any, out: Any = console) -> None:
    """Print the channel groups of a plan as a rich table."""
    from rich.table import Table

    from onnxopt.passes.prune.plan import group_table

    rows = group_table(plan.analysis, plan.scores, plan.kept)
    t = Table(title=f"channel groups ({plan.method} importance)")
    for col in ("group", "producers", "channels", "unit", "importance kept", "status"):
        t.add_column(col)
    for r in rows:
        prods = ", ".join(r["producers"][:3]) + (" …" if len(r["producers"]) > 3 else "")
        unit = f"{r['block']} channels" if r["block"] > 1 else "channel"  # head, conv/norm group
        chans = f"{r['channels_before']} -> {r['channels_after']}"
        status = "prunable" if r["prunable"] else f"kept: {r['reason']}"
        t.add_row(str(r["group"]), prods, chans, unit, f"{r['importance_kept']:.3f}", status)
    out.print(t)
    before, after = plan.macs.total, plan.macs.estimate(plan.kept)
    out.print(
        f"estimated MACs {before:,.0f} -> {after:,.0f} ({after / max(before, 1):.1%}); "
        f"{sum(r['prunable'] for r in rows)} of {len(rows)} groups prunable"
    )
    for n in plan.notes:
        out.print(f"note: {n}")


def render_result(details: dict[str, Any], out: Any = console, top: int = 10) -> None:
    """Print what a kept prune did: the pruned groups and the layers with the largest cuts
    (every layer is in the JSON report)."""
    from rich.table import Table

    groups = [r for r in details.get("groups", []) if r["channels_after"] < r["channels_before"]]
    refit = f", {details['refit_layers']} layers refit" if details.get("reconstructed") else ""
    t = Table(
        title=f"pruned groups ({details.get('importance')} importance{refit})", title_justify="left"
    )
    for col in ("group", "producers", "channels", "importance kept"):
        t.add_column(col)
    for r in groups:
        prods = ", ".join(r["producers"][:2]) + (" …" if len(r["producers"]) > 2 else "")
        t.add_row(
            str(r["group"]),
            prods,
            f"{r['channels_before']} -> {r['channels_after']}",
            f"{r['importance_kept']:.3f}",
        )
    out.print(t)
    changed = sorted(
        (
            r
            for r in details.get("layers", [])
            if (r["macs_before"], r["params_before"]) != (r["macs_after"], r["params_after"])
        ),
        key=lambda r: r["macs_after"] - r["macs_before"],
    )
    t = Table(title="layers with the largest MAC cuts", title_justify="left")
    for col, j in (("layer", "left"), ("params", "right"), ("MACs", "right"), ("kept", "right")):
        t.add_column(col, justify=j)
    for r in changed[:top]:
        t.add_row(
            r["node"],
            f"{r['params_before']:,} -> {r['params_after']:,}",
            f"{r['macs_before']:,} -> {r['macs_after']:,}",
            f"{r['macs_after'] / max(r['macs_before'], 1):.0%}",
        )
    out.print(t)
    if len(changed) > top:
        out.print(f"{len(changed) - top} more changed layers in the --report JSON")


def print_latency(
    before: Path,
    after: Path,
    data: Path | None,
    shape: list[str] | None,
    int_range: str | None,
    out: Any = console,
) -> None:
    """Latency of the input and the pruned model (onnxruntime CPU, 2 s each). A failure to
    measure is reported, not raised: the pruned model is already written."""
    from onnxopt.bench import bench
    from onnxopt.cli.bench import table
    from onnxopt.data import parse_int_range, parse_shape_overrides
    from onnxopt.errors import OnnxoptError

    try:
        res = bench(
            [before, after],
            data=data,
            shapes=parse_shape_overrides(shape),
            int_range=parse_int_range(int_range),
            warmup=5,
            seconds=2.0,
            isolate=False,
        )
    except OnnxoptError as e:
        out.print(f"latency not measured: {e}")
        return
    out.print(table(res))


ModelOpt = Annotated[Path, typer.Argument(help="Input .onnx model.")]
OutputOpt = Annotated[
    Path | None, typer.Option("-o", "--output", help="Where to write the pruned model.")
]
RatioOpt = Annotated[
    float | None, typer.Option("--ratio", help="Fraction of each group's channels to remove.")
]
TargetFlopsOpt = Annotated[
    float | None,
    typer.Option("--target-flops", help="Keep this fraction of the original MACs (e.g. 0.5)."),
]
GlobalRankOpt = Annotated[
    bool, typer.Option("--global", help="Rank channels across groups instead of per group.")
]
ImportanceOpt = Annotated[
    str | None,
    typer.Option(
        "--importance",
        help="l1, l2, bn-scale or activation (default: activation with --data, else l2).",
    ),
]
RoundToOpt = Annotated[
    str | None,
    typer.Option(
        "--round-to",
        help="Round kept widths up to a multiple of this (a group exactly this wide stays whole). auto (the default): onnxruntime's CPU channel block here (16 with AVX-512, 8 with AVX2); 1: no rounding.",
    ),
]
KeepOpt = Annotated[
    list[str] | None,
    typer.Option("--keep", help="Node whose channels stay (repeatable or comma-separated)."),
]
MaxRatioOpt = Annotated[
    float | None, typer.Option("--max-ratio", help="At most this fraction of any group removed.")
]
DataOpt = Annotated[
    Path | None,
    typer.Option(
        "--data", help="Data .npz / folder of .npy: importance, reconstruction and verification."
    ),
]
CalibDataOpt = Annotated[
    Path | None,
    typer.Option(
        "--calib-data", help="Learn from this data instead (e.g. a train split); verify on --data."
    ),
]
NoReconstructOpt = Annotated[
    bool, typer.Option("--no-reconstruct", help="Do not refit layers after slicing.")
]
DryRunOpt = Annotated[
    bool, typer.Option("--dry-run", help="Print the channel groups and the plan; write nothing.")
]
PassesOpt = Annotated[
    str | None,
    typer.Option(
        "--passes",
        help="Passes to run before pruning, comma-separated (default: cleanup, which folds "
        "the constant expressions raw exports leave; 'none' runs nothing first).",
    ),
]
StrictOpt = Annotated[
    bool, typer.Option("--strict", help="Exit non-zero if pruning is rolled back.")
]
LatencyOpt = Annotated[
    bool,
    typer.Option("--latency/--no-latency", help="Time the input and the pruned model (2 s each)."),
]


def prune_cmd(
    model: ModelOpt,
    output: OutputOpt = None,
    ratio: RatioOpt = None,
    target_flops: TargetFlopsOpt = None,
    global_rank: GlobalRankOpt = False,
    importance: ImportanceOpt = None,
    round_to: RoundToOpt = None,
    keep: KeepOpt = None,
    max_ratio: MaxRatioOpt = None,
    data: DataOpt = None,
    calib_data: CalibDataOpt = None,
    no_reconstruct: NoReconstructOpt = False,
    dry_run: DryRunOpt = False,
    passes: PassesOpt = None,
    shape: ShapeOpt = None,
    int_range: IntRangeOpt = None,
    batch: BatchOpt = None,
    min_cosine: MinCosineOpt = None,
    max_abs_err: MaxAbsErrOpt = None,
    min_top1_agreement: MinTop1AgreementOpt = None,
    max_accuracy_drop: MaxAccuracyDropOpt = None,
    report: ReportOpt = None,
    html: HtmlOpt = None,
    strict: StrictOpt = False,
    latency: LatencyOpt = True,
    allow_slower: AllowSlowerOpt = False,
    latency_batch: LatencyBatchOpt = None,
    metric_output: MetricOutputOpt = None,
    max_memory: MaxMemoryOpt = None,
) -> None:
    """Remove whole channels (and attention heads) from coupled layers; refit on data."""
    config = prune_config(
        ratio, target_flops, global_rank, importance, round_to, keep, max_ratio, no_reconstruct
    )
    pre = pre_passes(passes, default=["cleanup"])
    if dry_run:
        dry_run_plan(model, config, pre, calib_data or data, shape, int_range, batch)
        return
    if output is None:
        raise OptionError("give -o OUT (or --dry-run)")
    from onnxopt.cli.common import run_and_report
    from onnxopt.passes.prune import Prune

    budget = budget_from(min_cosine, max_abs_err, min_top1_agreement, max_accuracy_drop)
    _, rep = run_and_report(
        model,
        [*pre, Prune(config)],
        output,
        data=data,
        shape=shape,
        int_range=int_range,
        batch=batch,
        report_path=report,
        html=html,
        strict=strict,
        budget=budget,
        title="onnxopt prune",
        calib_data=calib_data,
        allow_slower=allow_slower,
        latency_batch=latency_batch,
        metric_output=metric_output,
        max_memory=max_memory,
    )
    pr = [p for p in rep.passes if p.name == "prune"]
    if pr and pr[-1].kept and pr[-1].details:
        render_result(pr[-1].details)
        if latency:
            print_latency(model, output, data, shape, int_range)
    if strict and pr and pr[-1].status != "kept":
        raise typer.Exit(1)


def dry_run_plan(
    model: Path,
    config: Any,
    pre: list[str],
    data: Path | None,
    shape: list[str] | None,
    int_range: str | None,
    batch: int | None,
) -> None:
    """Print the channel groups and the plan for the model as the real run would see it:
    after the same passes first (verified like any run), on the same data."""
    from onnxopt.model import load_model
    from onnxopt.passes.prune.plan import make_plan
    from onnxopt.passes.registry import manager

    m = load_model(model)
    feeds = feeds_for(m, data, shape, int_range, batch) if data is not None else None
    if pre:
        before = len(m.graph.node)
        vfeeds = feeds if feeds is not None else feeds_for(m, None, shape, int_range, batch)
        m, rep = manager(pre).run(m, vfeeds)
        kept = [p.name for p in rep.passes if p.kept]
        console.print(
            f"ran {', '.join(pre)} first (as the real run does): {before} -> "
            f"{len(m.graph.node)} nodes" + (f" ({', '.join(kept)})" if kept else "")
        )
    render_plan(make_plan(m, config, feeds))


def register(app: typer.Typer) -> None:
    """Add the ``prune`` command to ``app``."""
    app.command("prune")(prune_cmd)
