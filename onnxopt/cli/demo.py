"""``onnxopt demo``: the whole pipeline on the bundled example, with a readable report.

The example (``onnxopt/examples/digits_cnn.onnx``, made by ``make_example.py`` beside it) is a small
residual CNN trained on scikit-learn's digits. The demo runs every available pass family:
cleanup and fusion (exact), then channel pruning, distillation and int8 quantization (lossy),
calibrated on 256 training images and judged on the 360 labeled test images with an accuracy
budget of one point. It then benchmarks the original against the result.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from onnxopt.cli.common import console, progress
from onnxopt.errors import OnnxoptError
from onnxopt.examples import FOLDER as EXAMPLES

DEMO_PASSES = ["cleanup", "fusion", "prune", "distill", "quantize-int8"]


def find_example() -> tuple[Path, Path, Path]:
    model = EXAMPLES / "digits_cnn.onnx"
    calib = EXAMPLES / "digits_calib.npz"
    test = EXAMPLES / "digits_test.npz"
    for p in (model, calib, test):
        if not p.exists():
            raise OnnxoptError(f"{p} not found: run `python -m onnxopt.examples.make_example`")
    return model, calib, test


def run_demo(out_dir: Path, console: Any, progress: Any = None) -> Any:
    from onnxopt.cli.render import render
    from onnxopt.data import load_feeds
    from onnxopt.model import load_model, save_model
    from onnxopt.passes import registry
    from onnxopt.passes.registry import manager
    from onnxopt.verify import Budget

    model_path, calib_path, test_path = find_example()
    model = load_model(model_path)
    feeds = load_feeds(test_path, model, batch=40)
    calib = load_feeds(calib_path, model, batch=32)
    known = registry.all_passes()
    available = [f for f in DEMO_PASSES if f in known or registry.family_passes(f)]
    missing = [f for f in DEMO_PASSES if f not in available]
    console.print(
        f"[bold]onnxopt demo[/]: {model_path.name}, passes {', '.join(available)}"
        f"; budget: accuracy drop <= 1 point on {len(feeds)} labeled test batches"
    )
    options = {
        "prune": {"ratio": 0.25},
        "distill": {"epochs": 8},
    }
    pm = manager(
        available,
        budget=Budget(min_cosine=None, max_accuracy_drop=1.0),
        options=options,
        progress=progress,
        measure_candidates=True,  # the HTML page's trade-off plot
    )
    out_model, report = pm.run(model, feeds, calib)
    render(report, console)
    if missing:
        console.print(f"[yellow]not in this build[/]: {', '.join(missing)}")
    out_dir.mkdir(parents=True, exist_ok=True)
    out_path = save_model(out_model, out_dir / "digits_cnn.opt.onnx")
    from onnxopt.cli.common import add_analysis, write_html

    add_analysis(report, model, out_model, feeds, f"onnxopt demo: {model_path.name}")
    (out_dir / "report.json").write_text(report.to_json())
    console.print(f"wrote {out_path} and {out_dir / 'report.json'}")
    write_html(report.to_dict(), out_dir / "report.html")
    from onnxopt.bench import bench
    from onnxopt.cli.bench import rows, table

    console.print("[bold]latency[/] (onnxruntime, all graph optimizations, 1 thread):")
    results = bench([model_path, out_path], batch=[1, 32], runs=200, warmup=20, threads=1)
    console.print(table(results))
    half = len(results) // 2  # models in the order given, batches inner
    slower = [d["batch"] for d in rows(results)[half:] if d["ratio"] > 1 and not d["within_noise"]]
    if slower and any(p.name.startswith("quantize") and p.kept for p in report.passes):
        console.print(
            f"[dim]slower at batch {', '.join(map(str, slower))}: on a "
            f"{report.original.get('params', 0):,}-parameter model each op takes "
            f"microseconds, and the int8 model's extra ops (quantize / dequantize, "
            f"layout transposes) cost more than its int8 kernels save; on the zoo's "
            f"larger models int8 runs 2-3.4x faster (README, benchmarks)[/]"
        )
    return report


def demo_cmd(
    out_dir: Annotated[Path, typer.Option("--out", help="Folder for the outputs.")] = Path(
        "out/demo"
    ),
) -> None:
    """Run the whole pipeline on the bundled example and print the report."""
    run_demo(out_dir, console=console, progress=progress())


def register(app: typer.Typer) -> None:
    """Add the ``demo`` command to ``app``."""
    app.command("demo")(demo_cmd)
