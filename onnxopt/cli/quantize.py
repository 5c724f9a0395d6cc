"""``onnxopt quantize``: int8 quantization through the PassManager (static or dynamic)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from onnxopt.cli.common import budget_from, build_config, split_list
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

    return build_config(QuantizeConfig, {
        "calibrator": calibrator, "percentile": percentile, "per_channel": not per_tensor,
        "activations": activations, "exclude": split_list(exclude),
        "fallback": not no_fallback, "smooth": smooth,
    }, FLAGS)


def quantize_cmd(
    model: Annotated[Path, typer.Argument(help="Input .onnx model.")],
    output: Annotated[Path, typer.Option("-o", "--output", help="Where to write the int8 model.")],
    data: Annotated[Path | None, typer.Option("--data", help="Calibration .npz / folder of .npy (keys = input names; 'labels' optional).")] = None,  # noqa: E501
    mode: Annotated[str, typer.Option("--mode", help="static (calibrated QDQ) or dynamic (int8 weights, no data needed).")] = "static",  # noqa: E501
    calibrator: Annotated[str | None, typer.Option("--calibrator", help="minmax, percentile (the default), entropy or mse.")] = None,  # noqa: E501
    percentile: Annotated[float | None, typer.Option("--percentile", help="Percentile in (50, 100] for --calibrator percentile.")] = None,  # noqa: E501
    per_tensor: Annotated[bool, typer.Option("--per-tensor", help="One weight scale per tensor instead of per channel.")] = False,  # noqa: E501
    activations: Annotated[str | None, typer.Option("--activations", help="uint8 (the default: asymmetric, fastest on CPU) or int8-sym (TensorRT).")] = None,  # noqa: E501
    exclude: Annotated[list[str] | None, typer.Option("--exclude", help="Node name or op type kept in float (repeatable, or comma-separated).")] = None,  # noqa: E501
    smooth: Annotated[float | None, typer.Option("--smooth", help="SmoothQuant alpha in [0, 1]: move MatMul input outliers into the weights (transformers).")] = None,  # noqa: E501
    no_fallback: Annotated[bool, typer.Option("--no-fallback", help="Do not return sensitive nodes to float to meet the budget.")] = False,  # noqa: E501
    passes: Annotated[str | None, typer.Option("--passes", help="Passes to run before quantizing (default: cleanup,fusion where available).")] = None,  # noqa: E501
    shape: Annotated[list[str] | None, typer.Option("--shape", help="Dynamic dims for synthesized inputs (dynamic mode): name=1x128.")] = None,  # noqa: E501
    int_range: Annotated[str | None, typer.Option("--int-range", help="Range LOW,HIGH for synthesized integer inputs.")] = None,  # noqa: E501
    batch: Annotated[int | None, typer.Option("--batch", help="Samples per run when the batch dim is dynamic.")] = None,  # noqa: E501
    min_cosine: Annotated[float | None, typer.Option("--min-cosine", help="Budget: min cosine vs fp32 (default 0.99).")] = None,  # noqa: E501
    max_abs_err: Annotated[float | None, typer.Option("--max-abs-err", help="Budget: max abs error vs fp32.")] = None,  # noqa: E501
    min_top1_agreement: Annotated[float | None, typer.Option("--min-top1-agreement", help="Budget: argmax agreement with fp32 (0-1).")] = None,  # noqa: E501
    max_accuracy_drop: Annotated[float | None, typer.Option("--max-accuracy-drop", help="Budget: accuracy drop in points (needs labels).")] = None,  # noqa: E501
    report: Annotated[Path | None, typer.Option("--report", help="Write the JSON report here.")] = None,  # noqa: E501
    strict: Annotated[bool, typer.Option("--strict", help="Exit non-zero if quantization is rolled back.")] = False,  # noqa: E501
) -> None:
    """Quantize a model to int8 (static with calibration data, or dynamic)."""
    from onnxopt.cli.common import run_and_report

    if mode not in ("static", "dynamic"):
        raise OptionError(f"--mode {mode!r}: choose static or dynamic")
    if passes is None:
        from onnxopt.passes import registry

        pre = [f for f in ("cleanup", "fusion") if registry.family_passes(f)]
    else:
        pre = [p for p in passes.split(",") if p]
    if mode == "static":
        if data is None:
            raise DataError("--mode static needs calibration data: give --data CALIB.npz "
                            "(or use --mode dynamic)")
        from onnxopt.passes.quantize import QuantizeInt8

        quantizer = QuantizeInt8(quantize_config(calibrator, percentile, per_tensor,
                                                 activations, exclude, no_fallback, smooth))
    else:
        from onnxopt.passes.quantize import QuantizeDynamic
        from onnxopt.passes.quantize.config import DynamicQuantizeConfig

        quantizer = QuantizeDynamic(build_config(DynamicQuantizeConfig, {
            "per_channel": not per_tensor, "exclude": split_list(exclude)}, FLAGS))
    budget = budget_from(min_cosine, max_abs_err, min_top1_agreement, max_accuracy_drop)
    _, rep = run_and_report(model, [*pre, quantizer], output, data=data, shape=shape,
                            int_range=int_range, batch=batch, report_path=report,
                            strict=strict, budget=budget, title=f"onnxopt quantize ({mode})")
    quant = [p for p in rep.passes if p.name.startswith("quantize")]
    if strict and quant and quant[-1].status != "kept":
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    """Add the ``quantize`` command to ``app``."""
    app.command("quantize")(quantize_cmd)
