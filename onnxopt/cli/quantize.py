"""``onnxopt quantize``: int8 quantization through the PassManager (static or dynamic), or 4-bit
weight-only MatMulNBits with ``--bits 4`` (``--target onnxruntime``)."""

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
    MaxMetricDropOpt,
    MetricOpt,
    MetricOutputOpt,
    MinCosineOpt,
    MinTop1AgreementOpt,
    ReportOpt,
    ShapeOpt,
    TargetOpt,
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
    ptq: dict[str, Any] | None = None,
) -> QuantizeConfig:
    """The quantize-int8 configuration from CLI values (None: the config's default); ``ptq``:
    rounding, equalize, bias_correction, latency_aware."""
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
            **(ptq or {}),
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
    typer.Option(
        "--calibrator",
        help="minmax, percentile (the default), entropy or mse; a MatMul input that "
        "smoothing scaled keeps its full range (min/max) whatever this is.",
    ),
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
BitsOpt = Annotated[
    int,
    typer.Option(
        "--bits",
        help="8: int8 (--mode static/dynamic); 4: weight-only MatMulNBits (--target onnxruntime).",
    ),
]
AlgoOpt = Annotated[
    str | None,
    typer.Option("--algo", help="--bits 4: rtn (the default), hqq (data-free search) or gptq."),
]
BlockSizeOpt = Annotated[
    int | None,
    typer.Option("--block-size", help="--bits 4: weights per scale along K: 32, 64 or 128."),
]
RoundingOpt = Annotated[
    str | None,
    typer.Option(
        "--rounding",
        help="auto (the default: gptq on models with attention, nearest otherwise), nearest, adaround (learned rounding, layer by layer on the data) or gptq (rounding with error feedback: one pass, wide layers too).",
    ),
]
EqualizeOpt = Annotated[
    bool | None,
    typer.Option(
        "--equalize/--no-equalize",
        help="Cross-layer equalization of Conv/Gemm chains before rounding (exact in float).",
    ),
]
BiasCorrectionOpt = Annotated[
    str | None,
    typer.Option(
        "--bias-correction",
        help="empirical (the default: measured on the data), data-free (BatchNorm statistics) or off.",
    ),
]
LatencyAwareOpt = Annotated[
    bool | None,
    typer.Option(
        "--latency-aware/--no-latency-aware",
        help="Time each layer in int8 and float on this CPU; the slower in int8 stay float (default on).",
    ),
]
SymmetricOpt = Annotated[
    bool | None,
    typer.Option(
        "--symmetric/--asymmetric",
        help="--bits 4: symmetric blocks (no zero points) or asymmetric (the default).",
    ),
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
    rounding: RoundingOpt = None,
    equalize: EqualizeOpt = None,
    bias_correction: BiasCorrectionOpt = None,
    latency_aware: LatencyAwareOpt = None,
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
    html: HtmlOpt = None,
    strict: StrictOpt = False,
    allow_slower: AllowSlowerOpt = False,
    latency_batch: LatencyBatchOpt = None,
    metric_output: MetricOutputOpt = None,
    bits: BitsOpt = 8,
    algo: AlgoOpt = None,
    block_size: BlockSizeOpt = None,
    symmetric: SymmetricOpt = None,
    target: TargetOpt = "onnx",
    max_memory: MaxMemoryOpt = None,
) -> None:
    """Quantize to int8 (static with calibration data, or dynamic), or MatMul weights to int4.

    --bits 4 writes com.microsoft.MatMulNBits (weight-only; --algo rtn, hqq or gptq)."""
    from onnxopt.cli.common import run_and_report

    pre, quantizer, mode = _choose(
        bits,
        {"algo": algo, "block_size": block_size, "symmetric": symmetric},
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
        {
            "rounding": rounding,
            "equalize": equalize,
            "bias_correction": bias_correction,
            "latency_aware": latency_aware,
        },
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
        html=html,
        strict=strict,
        budget=budget,
        title=f"onnxopt quantize ({mode})",
        target=target,
        allow_slower=allow_slower,
        latency_batch=latency_batch,
        metric_output=metric_output,
        max_memory=max_memory,
    )
    quant = [p for p in rep.passes if p.name.startswith("quantize")]
    if quant and quant[-1].name == "quantize-int4" and quant[-1].status == "kept":
        render_layers(quant[-1].details)
    if strict and quant and quant[-1].status != "kept":
        raise typer.Exit(1)


def render_layers(details: dict[str, Any], show: int = 10) -> None:
    """quantize-int4's per-layer errors (the worst ``show``) and its weight bytes."""
    from rich.table import Table

    from onnxopt.cli.common import console
    from onnxopt.cli.render import fmt_bytes

    layers = sorted(details.get("layers", []), key=lambda r: -r["error"])
    table = Table(title="quantize-int4: relative output error per layer (worst first)")
    for col in ("node", "op", "K×N", "bits", "error", "4-bit error"):
        table.add_column(col, justify="left" if col in ("node", "op") else "right")
    for r in layers[:show]:
        table.add_row(
            r["node"], r["op"], f"{r['K']}×{r['N']}", str(r["bits"]), f"{r['error']:.4f}",
            f"{r['error_4bit']:.4f}",
        )  # fmt: skip
    console.print(table)
    bits = sorted({r["bits"] for r in layers})
    counts = ", ".join(f"{sum(r['bits'] == b for r in layers)} at {b} bits" for b in bits)
    console.print(
        f"{len(layers)} layers ({counts}); weights {fmt_bytes(details['weight_bytes_before'])}"
        f" → {fmt_bytes(details['weight_bytes_after'])}; the JSON report (--report) lists all"
    )


def _choose(bits: int, int4: dict[str, Any], mode: str, *args: Any):
    """(passes to run first, the quantizer, the title's mode) for ``--bits``; ``int4``: the
    --bits 4 options (None: not given); ``args`` are :func:`_passes`'s after ``mode`` (data,
    passes, the int8 options)."""
    if bits == 4:
        data, passes, exclude = args[0], args[1], args[6]
        pre, quantizer = _int4(int4, data, passes, exclude)
        return pre, quantizer, f"int4 {quantizer.config.algo}"
    if bits != 8:
        raise OptionError(f"--bits {bits}: choose 8 (int8) or 4 (weight-only MatMulNBits)")
    if any(v is not None for v in int4.values()):
        raise OptionError("--algo, --block-size and --symmetric apply to --bits 4")
    return (*_passes(mode, *args), mode)


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
    ptq: dict[str, Any],
) -> tuple[list[str], Any]:
    """The passes to run first (default: cleanup and fusion) and the configured quantizer."""
    if mode not in ("static", "dynamic"):
        raise OptionError(f"--mode {mode!r}: choose static or dynamic")
    pre = pre_passes(passes, default=["cleanup", "fusion"])
    if mode == "dynamic" and any(v is not None for v in ptq.values()):
        raise OptionError(
            "--rounding, --equalize, --bias-correction and --latency-aware apply to --mode static"
        )
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
        calibrator, percentile, per_tensor, activations, exclude, no_fallback, smooth, ptq
    )
    return pre, QuantizeInt8(config)


def _int4(
    int4: dict[str, Any],
    data: Path | None,
    passes: str | None,
    exclude: list[str] | None,
) -> tuple[list[str], Any]:
    """--bits 4: the passes to run first (default: cleanup; fusion's onnxruntime rules would
    fold the MatMuls into contrib attention ops) and the configured quantize-int4."""
    from onnxopt.passes.precision import QuantizeInt4
    from onnxopt.passes.precision.config import Int4Config

    values = {**int4, "exclude": split_list(exclude)}
    config = build_config(Int4Config, values)
    if config.algo == "gptq" and data is None:
        raise DataError("--algo gptq needs calibration data: give --data CALIB.npz")
    return pre_passes(passes, default=["cleanup"]), QuantizeInt4(config)


def register(app: typer.Typer) -> None:
    """Add the ``quantize`` command to ``app``."""
    app.command("quantize")(quantize_cmd)
