"""``onnxopt optimize``: a pipeline of passes, each verified in onnxruntime and rolled back if
it fails."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from onnxopt.cli.common import (
    AllowSlowerOpt,
    BatchOpt,
    CalibOpt,
    DataOpt,
    HtmlOpt,
    IntRangeOpt,
    LatencyBatchOpt,
    MaxAbsErrOpt,
    MaxAccuracyDropOpt,
    MaxMemoryOpt,
    MetricOutputOpt,
    MinCosineOpt,
    MinTop1AgreementOpt,
    PassesOpt,
    ReportOpt,
    ShapeOpt,
    StrictOpt,
    TargetOpt,
    budget_from,
    run_and_report,
    split_list,
)
from onnxopt.errors import OptionError

HALF_PASSES = ("convert-fp16", "convert-bf16")

KeepIoTypesOpt = Annotated[
    bool | None,
    typer.Option(
        "--keep-io-types/--no-keep-io-types",
        help="convert-fp16/convert-bf16: keep float32 graph inputs and outputs (Casts at the "
        "boundary; the default) or make them half precision.",
    ),
]


def half_options(passes: list[str] | None, keep_io_types: bool | None) -> dict | None:
    """``--keep-io-types`` as options of the half-precision passes in ``passes``; an
    OptionError when it is given without one."""
    if keep_io_types is None:
        return None
    from onnxopt.passes.registry import expand

    chosen = [n for n in expand(passes or []) if n in HALF_PASSES]
    if not chosen:
        raise OptionError(
            f"--keep-io-types applies to {' or '.join(HALF_PASSES)}: add one to --passes"
        )
    return {n: {"keep_io_types": keep_io_types} for n in chosen}


def optimize_cmd(
    model: Annotated[Path, typer.Argument(help="Input .onnx (never modified).")],
    output: Annotated[
        Path, typer.Option("-o", "--output", help="Where to write the optimized model.")
    ],  # noqa: E501
    passes: PassesOpt = None,
    data: DataOpt = None,
    calib_data: CalibOpt = None,
    shape: ShapeOpt = None,
    int_range: IntRangeOpt = None,
    batch: BatchOpt = None,
    report: ReportOpt = None,
    html: HtmlOpt = None,
    strict: StrictOpt = False,
    target: TargetOpt = "onnx",
    min_cosine: MinCosineOpt = None,
    max_abs_err: MaxAbsErrOpt = None,
    min_top1_agreement: MinTop1AgreementOpt = None,
    max_accuracy_drop: MaxAccuracyDropOpt = None,
    allow_slower: AllowSlowerOpt = False,
    latency_batch: LatencyBatchOpt = None,
    metric_output: MetricOutputOpt = None,
    max_memory: MaxMemoryOpt = None,
    keep_io_types: KeepIoTypesOpt = None,
) -> None:
    """Run passes (default: every exact pass), each verified in onnxruntime or rolled back."""
    budget = budget_from(min_cosine, max_abs_err, min_top1_agreement, max_accuracy_drop)
    names = split_list(passes) if passes is not None else None
    options = half_options(names, keep_io_types)
    run_and_report(
        model,
        names,
        output,
        data=data,
        shape=shape,
        int_range=int_range,
        batch=batch,
        report_path=report,
        html=html,
        strict=strict,
        target=target,
        budget=budget,
        calib_data=calib_data,
        allow_slower=allow_slower,
        latency_batch=latency_batch,
        metric_output=metric_output,
        max_memory=max_memory,
        options=options,
    )


def register(app: typer.Typer) -> None:
    """Add the ``optimize`` command to ``app``."""
    app.command("optimize")(optimize_cmd)
