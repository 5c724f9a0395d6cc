"""``onnxopt merge``: several models become one verified ONNX graph."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from onnxopt.cli.common import (
    BatchOpt,
    HtmlOpt,
    IntRangeOpt,
    ShapeOpt,
    console,
    split_list,
    write_model,
)
from onnxopt.errors import OptionError

HELP = "\n\n".join(
    [
        "Merge two or more models into one ONNX graph that one onnxruntime session runs.",
        "Modes: average | weighted | vote | max (parallel, combining each member's first output), "
        "serial (--io-map A.out:B.in chains members), stack (a Gemm meta-learner fitted on "
        "labeled --data: --meta logistic|ridge), cascade (first model = cheap, second = "
        "expensive; --threshold T or --target-accuracy A on labeled --data).",
        "Cascade batch semantics: the gate decides for the whole batch. The cheap answer is "
        "returned only when every sample of the batch has top softmax probability >= T; otherwise "
        "the expensive member runs on the whole batch. Use batch 1 for per-sample routing.",
        "The merged graph is verified against the members run separately in onnxruntime (on "
        "--data, or synthesized inputs); fitted modes report held-out accuracy of each member and "
        "of the ensemble.",
    ]
)


def _floats(text: str | None, what: str) -> list[float] | None:
    if text is None:
        return None
    try:
        return [float(x) for x in text.replace(" ", "").split(",") if x]
    except ValueError as e:
        raise OptionError(f"{what} {text!r}: expected comma-separated numbers") from e


ModelsOpt = Annotated[list[Path], typer.Argument(help="member .onnx files (cascade: cheap first)")]
OutputOpt = Annotated[Path, typer.Option("-o", "--output", help="merged .onnx to write")]
ModeOpt = Annotated[
    str, typer.Option("--mode", "-m", help="average|weighted|vote|max|serial|stack|cascade")
]
OnOpt = Annotated[
    str | None,
    typer.Option("--on", help="combine raw 'outputs' or softmax 'probs' (stack defaults to probs)"),
]
WeightsOpt = Annotated[str | None, typer.Option("--weights", help="weighted: 0.5,0.5")]
FitWeightsOpt = Annotated[
    Path | None, typer.Option("--fit-weights", help="weighted: fit weights on labeled .npz")
]
IoMapOpt = Annotated[
    list[str] | None,
    typer.Option("--io-map", help="serial: A.out:B.in (repeat, or comma-separate)"),
]
InputMapOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--input-map",
        help="share inputs: MEMBER.INPUT:NAME, MEMBER = file stem or "
        "index (inputs with the same name are shared anyway)",
    ),
]
KeepMemberOutputsOpt = Annotated[
    bool, typer.Option("--keep-member-outputs", help="also output each member's own scores")
]
MetaOpt = Annotated[str, typer.Option("--meta", help="stack: logistic|ridge")]
ThresholdOpt = Annotated[
    float | None, typer.Option("--threshold", help="cascade: gate on top probability >= T")
]
TargetAccuracyOpt = Annotated[
    float | None,
    typer.Option("--target-accuracy", help="cascade: choose T on --data to reach A (percent)"),
]
DataOpt = Annotated[
    Path | None,
    typer.Option(
        "--data", help="labeled .npz: fit, verify, accuracy (keys = input names + labels)"
    ),
]
OutputNameOpt = Annotated[
    str | None, typer.Option("--output-name", help="name of the combined output")
]
MemberOutputOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--member-output",
        help="which output of each member to combine: NAME for all, or MEMBER:NAME (member = "
        "file stem or index; repeatable); default: each member's class scores",
    ),
]
NoCseOpt = Annotated[bool, typer.Option("--no-cse", help="skip cross-model deduplication")]
JsonOutOpt = Annotated[Path | None, typer.Option("--json", help="write the report as JSON")]

PassesOpt = Annotated[
    str | None,
    typer.Option(
        "--passes",
        help="passes run on each member first (default: cleanup; 'none' runs nothing)",
    ),
]


def merge_cmd(
    models: ModelsOpt,
    output: OutputOpt,
    mode: ModeOpt = "average",
    on: OnOpt = None,
    weights: WeightsOpt = None,
    fit_weights: FitWeightsOpt = None,
    io_map: IoMapOpt = None,
    input_map: InputMapOpt = None,
    keep_member_outputs: KeepMemberOutputsOpt = False,
    member_output: MemberOutputOpt = None,
    meta: MetaOpt = "logistic",
    threshold: ThresholdOpt = None,
    target_accuracy: TargetAccuracyOpt = None,
    data: DataOpt = None,
    output_name: OutputNameOpt = None,
    shape: ShapeOpt = None,
    int_range: IntRangeOpt = None,
    batch: BatchOpt = None,
    no_cse: NoCseOpt = False,
    json_out: JsonOutOpt = None,
    passes: PassesOpt = None,
    html: HtmlOpt = None,
) -> None:
    from onnxopt.data import parse_int_range, parse_shape_overrides
    from onnxopt.passes.ensemble.config import MergeConfig
    from onnxopt.passes.ensemble.merge import merge

    for p in models:
        if p.resolve() == output.resolve():
            raise OptionError(f"{output}: refusing to overwrite a member; choose another -o")
    config = MergeConfig.from_options(
        {
            "mode": mode,
            "on": on,
            "weights": _floats(weights, "--weights"),
            "fit_data": fit_weights,
            "data": data,
            "io_map": io_map or None,
            "input_map": input_map or None,
            "meta": meta,
            "threshold": threshold,
            "target_accuracy": target_accuracy,
            "output": output_name,
            "batch": batch,
            "shapes": parse_shape_overrides(shape),
            "int_range": parse_int_range(int_range),
            "cse": not no_cse,
            "keep_member_outputs": keep_member_outputs,
            "member_output": split_list(member_output) or None,
        }
    )
    from onnxopt.cli.common import clean_first, pre_passes
    from onnxopt.model import load_model

    pre = pre_passes(passes, default=["cleanup"])
    members = [clean_first(load_model(p), pre, f"'{p.stem}'") for p in models]
    stems = tuple(p.stem for p in models)
    if config.labels is None and len(set(stems)) == len(stems):
        config = config.replace(labels=stems)  # the members' names, as when merged from files
    model, report = merge(members, config=config)
    write_model(model, output, source=None)
    if json_out is not None:
        json_out.write_text(report.to_json())
    render(report, output)
    if html is not None:
        from onnxopt.cli.report import merge_page

        merge_page(report, model, output, html)


def register(app: typer.Typer) -> None:
    """Add the ``merge`` command to ``app``."""
    app.command("merge", help=HELP)(merge_cmd)


def render(report, output: Path | None = None) -> None:  # noqa: ANN001 - MergeReport
    """Print a MergeReport as tables."""
    t = Table(title=f"merge ({report.mode}) -> {output}" if output else f"merge ({report.mode})")
    for col in ("member", "opset", "nodes", "params", "MACs", "accuracy %"):
        t.add_column(col, justify="left" if col == "member" else "right")
    for m in report.members:
        acc = report.accuracy.get(m["label"])
        t.add_row(
            m["label"],
            str(m["opset"]),
            str(m["nodes"]),
            f"{m['params']:,}",
            f"{m['macs']:,}",
            "" if acc is None else f"{acc:.2f}",
        )
    s = report.summary
    acc = report.accuracy.get("ensemble")
    t.add_row(
        "[bold]ensemble[/bold]",
        str(report.opset),
        str(s.get("nodes", "")),
        f"{s.get('params', 0):,}",
        f"{s.get('macs', 0):,}",
        "" if acc is None else f"[bold]{acc:.2f}[/bold]",
    )
    console.print(t)
    c = report.cse
    console.print(f"inputs: {', '.join(report.inputs)}   outputs: {', '.join(report.outputs)}")
    console.print(
        f"cross-model CSE: {c.get('initializers', 0)} initializers "
        f"({c.get('initializer_bytes', 0):,} bytes), {c.get('nodes', 0)} nodes merged"
    )
    if report.params:
        console.print(
            "parameters: " + ", ".join(f"{k}={_fmt(v)}" for k, v in report.params.items())
        )
    v = report.verification
    if report.verified is not None:
        state = "[green]verified[/green]" if report.verified else "[red]NOT verified[/red]"
        console.print(
            f"{state} against the members run separately: {v.get('runs')} runs, "
            f"max abs diff {v.get('max_abs', 0):.3g}"
            + (" (synthesized inputs)" if v.get("synthesized") else "")
        )
    if report.accuracy_split:
        console.print(f"accuracy: {report.accuracy_split}")
    for n in report.notes:
        console.print(f"note: {n}")
    console.print(f"done in {report.seconds:.2f} s")


def _fmt(v: object) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, list):
        return "[" + ", ".join(_fmt(x) for x in v) + "]"
    return str(v)
