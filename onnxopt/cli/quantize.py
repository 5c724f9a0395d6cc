"""``onnxopt quantize``: int8 quantization through the PassManager (static or dynamic)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from onnxopt.cli.common import (
    AllowSlowerOpt,
    BatchOpt,
    IntRangeOpt,
    MaxAbsErrOpt,
    MaxAccuracyDropOpt,
    MaxMetricDropOpt,
    MetricOpt,
    MetricOutputOpt,
    MinCosineOpt,
    MinTop1AgreementOpt,
    ReportOpt,
    ShapeOpt,
    budget_from,
    build_config,
    pre_passes,
    split_list,
)
from onnxopt.errors import DataError, OptionError

if TYPE_CHECKING:  # pragma: no cover
    from onnxopt.passes.quantize.config import QuantizeConfig

#: CLI flags of the quantize-int8 options whose flag is not ``--`` + the name with dashes
FLAGS = {"per_channel": "--per-tensor", "fallback": "--no-fallback"}


def quantize_config(
    calibrator: str | None = None,
    percentile: float | None = None,
    per_tensor: bool = False,
    activations: str | None = None,
    exclude: list[str] | None = None,
    no_fallback: bool = False,
    smooth: float | None = None,
) -> QuantizeConfig:
    """The quantize-int8 configuration from CLI values (None: the config's default)."""
    from onnxopt.passes.quantize.config import QuantizeConfig

    return build_config(
        QuantizeConfig,
        {
            "calibrator": calibrator,
            "percentile": percentile,
            "per_channel": not per_tensor,
            "activations": activations,
            "exclude": split_list(exclude),
            "fallback": not no_fallback,
            "smooth": smooth,
        },
        FLAGS,
    )


ModelOpt = Annotated[Path, typer.Argument(help="Input .onnx model.")]
OutputOpt = Annotated[Path, typer.Option("-o", "--output", help="Where to write the int8 model.")]
DataOpt = Annotated[
    Path | None,
    typer.Option(
        "--data", help="Calibration .npz / folder of .npy (keys = input names; 'labels' optional)."
    ),
]
ModeOpt = Annotated[
    str,
    typer.Option(
        "--mode", help="static (calibrated QDQ) or dynamic (int8 weights, no data needed)."
    ),
]
CalibratorOpt = Annotated[
    str | None,
    typer.Option("--calibrator", help="minmax, percentile (the default), entropy or mse."),
]
PercentileOpt = Annotated[
    float | None,
    typer.Option("--percentile", help="Percentile in (50, 100] for --calibrator percentile."),
]
PerTensorOpt = Annotated[
    bool, typer.Option("--per-tensor", help="One weight scale per tensor instead of per channel.")
]
ActivationsOpt = Annotated[
    str | None,
    typer.Option(
        "--activations",
        help="uint8 (the default: asymmetric, fastest on CPU) or int8-sym (TensorRT).",
    ),
]
ExcludeOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--exclude", help="Node name or op type kept in float (repeatable, or comma-separated)."
    ),
]
SmoothOpt = Annotated[
    float | None,
    typer.Option(
        "--smooth",
        help="SmoothQuant alpha in [0, 1]: move MatMul input outliers into the weights (transformers).",
    ),
]
NoFallbackOpt = Annotated[
    bool,
    typer.Option(
        "--no-fallback", help="Do not return sensitive nodes to float to meet the budget."
    ),
]
PassesOpt = Annotated[
    str | None,
    typer.Option(
        "--passes",
        help="Passes to run before quantizing (default: cleanup,fusion where available).",
    ),
]
StrictOpt = Annotated[
    bool, typer.Option("--strict", help="Exit non-zero if quantization is rolled back.")
]


def quantize_cmd(
    model: ModelOpt,
    output: OutputOpt,
    data: DataOpt = None,
    mode: ModeOpt = "static",
    calibrator: CalibratorOpt = None,
    percentile: PercentileOpt = None,
    per_tensor: PerTensorOpt = False,
    activations: ActivationsOpt = None,
    exclude: ExcludeOpt = None,
    smooth: SmoothOpt = None,
    no_fallback: NoFallbackOpt = False,
    passes: PassesOpt = None,
    shape: ShapeOpt = None,
    int_range: IntRangeOpt = None,
    batch: BatchOpt = None,
    min_cosine: MinCosineOpt = None,
    max_abs_err: MaxAbsErrOpt = None,
    min_top1_agreement: MinTop1AgreementOpt = None,
    max_accuracy_drop: MaxAccuracyDropOpt = None,
    metric: MetricOpt = None,
    max_metric_drop: MaxMetricDropOpt = None,
    report: ReportOpt = None,
    strict: StrictOpt = False,
    allow_slower: AllowSlowerOpt = False,
    metric_output: MetricOutputOpt = None,
) -> None:
    """Quantize a model to int8 (static with calibration data, or dynamic)."""
    from onnxopt.cli.common import run_and_report

    pre, quantizer = _passes(
        mode,
        data,
        passes,
        calibrator,
        percentile,
        per_tensor,
        activations,
        exclude,
        no_fallback,
        smooth,
    )
    budget = budget_from(
        min_cosine, max_abs_err, min_top1_agreement, max_accuracy_drop, metric, max_metric_drop
    )
    _, rep = run_and_report(
        model,
        [*pre, quantizer],
        output,
        data=data,
        shape=shape,
        int_range=int_range,
        batch=batch,
        report_path=report,
        strict=strict,
        budget=budget,
        title=f"onnxopt quantize ({mode})",
        allow_slower=allow_slower,
        metric_output=metric_output,
    )
    quant = [p for p in rep.passes if p.name.startswith("quantize")]
    if strict and quant and quant[-1].status != "kept":
        raise typer.Exit(1)


def _passes(
    mode: str,
    data: Path | None,
    passes: str | None,
    calibrator: str | None,
    percentile: float | None,
    per_tensor: bool,
    activations: str | None,
    exclude: list[str] | None,
    no_fallback: bool,
    smooth: float | None,
) -> tuple[list[str], Any]:
    """The passes to run first (default: cleanup and fusion) and the configured quantizer."""
    if mode not in ("static", "dynamic"):
        raise OptionError(f"--mode {mode!r}: choose static or dynamic")
    pre = pre_passes(passes, default=["cleanup", "fusion"])
    if mode == "dynamic":
        from onnxopt.passes.quantize import QuantizeDynamic
        from onnxopt.passes.quantize.config import DynamicQuantizeConfig

        values = {"per_channel": not per_tensor, "exclude": split_list(exclude)}
        return pre, QuantizeDynamic(build_config(DynamicQuantizeConfig, values, FLAGS))
    if data is None:
        raise DataError(
            "--mode static needs calibration data: give --data CALIB.npz (or use --mode dynamic)"
        )
    from onnxopt.passes.quantize import QuantizeInt8

    config = quantize_config(
        calibrator, percentile, per_tensor, activations, exclude, no_fallback, smooth
    )
    return pre, QuantizeInt8(config)


def register(app: typer.Typer) -> None:
    """Add the ``quantize`` command to ``app``."""
    app.command("quantize")(quantize_cmd)
