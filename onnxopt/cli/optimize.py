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
    metric_output: MetricOutputOpt = None,
    max_memory: MaxMemoryOpt = None,
) -> None:
    """Run passes (default: every exact pass), each verified in onnxruntime or rolled back."""
    budget = budget_from(min_cosine, max_abs_err, min_top1_agreement, max_accuracy_drop)
    run_and_report(
        model,
        split_list(passes) if passes is not None else None,
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
        metric_output=metric_output,
        max_memory=max_memory,
    )


def register(app: typer.Typer) -> None:
    """Add the ``optimize`` command to ``app``."""
    app.command("optimize")(optimize_cmd)
