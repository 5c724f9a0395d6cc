"""``onnxopt distill``: train a student ONNX model to reproduce a teacher ONNX model.

Only the two ONNX files and unlabeled inputs are needed; labels are optional (``--labels`` or a
``labels`` key in ``--data``). The student's structure is kept: only initializer values change.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import numpy as np
import typer

from onnxopt.cli.common import BatchOpt, HtmlOpt
from onnxopt.errors import DataError, OptionError


def read_labels(path: Path) -> np.ndarray:
    """Labels from an ``.npy`` or from the ``labels`` key of an ``.npz``."""
    if not path.exists():
        raise DataError(f"{path}: no such file")
    try:
        z = np.load(path, allow_pickle=False)
        if hasattr(z, "files"):
            with z:
                arr = z["labels"]
        else:
            arr = np.asarray(z)
    except KeyError as e:
        raise DataError(f"{path}: no 'labels' array in the archive") from e
    except (ValueError, OSError) as e:
        raise DataError(f"{path}: cannot read labels ({e})") from e
    if arr.dtype.kind not in "iu":
        raise DataError(f"{path}: labels must be integers, not {arr.dtype}")
    return arr.reshape(-1).astype(np.int64)


def _progress_bar(console: Any) -> tuple[Any, Any]:
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    bar = Progress(
        TextColumn("distill epoch {task.fields[epoch]}"),
        BarColumn(),
        TextColumn("loss {task.fields[loss]}  held-out {task.fields[val]}"),
        TimeElapsedColumn(),
        console=console,
        transient=True,
    )
    task = bar.add_task("distill", total=1, epoch="-", loss="-", val="-")

    def update(p: Any) -> None:
        val = "-" if p.val_loss is None else f"{p.val_loss:.4f}"
        if p.val_agreement is not None:
            val += f" (top-1 {p.val_agreement:.1%})"
        bar.update(
            task,
            total=p.epochs * p.steps,
            completed=(p.epoch - 1) * p.steps + p.step,
            epoch=f"{p.epoch}/{p.epochs}",
            loss=f"{p.loss:.4f}",
            val=val,
        )

    return bar, update


StudentOpt = Annotated[Path, typer.Argument(help="Student .onnx (e.g. a pruned model).")]
TeacherOpt = Annotated[Path, typer.Option("--teacher", help="Teacher .onnx.")]
DataOpt = Annotated[
    Path,
    typer.Option("--data", help="Unlabeled inputs: .npz / folder of .npy (keys = input names)."),
]
OutputOpt = Annotated[
    Path, typer.Option("-o", "--output", help="Where to write the distilled student.")
]
EpochsOpt = Annotated[int, typer.Option("--epochs", help="Training epochs.")]
LrOpt = Annotated[float, typer.Option("--lr", help="Adam learning rate (cosine decay).")]
TemperatureOpt = Annotated[
    float, typer.Option("--temperature", help="KL temperature T (loss scaled by T^2).")
]
LabelsOpt = Annotated[
    Path | None,
    typer.Option(
        "--labels", help="Integer labels (.npy, or .npz key 'labels') for a hard-label term."
    ),
]
AlphaOpt = Annotated[
    float | None,
    typer.Option(
        "--alpha", help="Weight of the hard-label loss (default 0.5 with --labels, else 0)."
    ),
]
FeatureOpt = Annotated[
    list[str] | None,
    typer.Option("--feature", help="Match intermediate tensors TEACHER:STUDENT (repeatable)."),
]
LossOpt = Annotated[str, typer.Option("--loss", help="auto, kl, mse or cosine.")]
BatchSizeOpt = Annotated[int, typer.Option("--batch-size", help="Samples per training step.")]
ValFractionOpt = Annotated[
    float, typer.Option("--val-fraction", help="Held-out fraction for early stopping.")
]
PatienceOpt = Annotated[
    int, typer.Option("--patience", help="Epochs without held-out improvement before stopping.")
]
BnOpt = Annotated[
    str,
    typer.Option(
        "--bn", help="BatchNormalization statistics: eval (stored) or train (batch, updated)."
    ),
]
SeedOpt = Annotated[int, typer.Option("--seed", help="Random seed.")]
CacheDirOpt = Annotated[
    Path | None,
    typer.Option("--cache-dir", help="Keep teacher outputs here (memory-mapped) for reuse."),
]

PassesOpt = Annotated[
    str | None,
    typer.Option(
        "--passes",
        help="Passes run on the student first (default: cleanup; 'none' runs nothing).",
    ),
]


def distill_cmd(
    student: StudentOpt,
    teacher: TeacherOpt,
    data: DataOpt,
    output: OutputOpt,
    epochs: EpochsOpt = 30,
    lr: LrOpt = 2e-3,
    temperature: TemperatureOpt = 4.0,
    labels: LabelsOpt = None,
    alpha: AlphaOpt = None,
    feature: FeatureOpt = None,
    loss: LossOpt = "auto",
    batch_size: BatchSizeOpt = 64,
    batch: BatchOpt = None,
    val_fraction: ValFractionOpt = 0.1,
    patience: PatienceOpt = 8,
    bn: BnOpt = "eval",
    seed: SeedOpt = 0,
    cache_dir: CacheDirOpt = None,
    passes: PassesOpt = None,
    html: HtmlOpt = None,
) -> None:
    """Distill TEACHER into STUDENT on unlabeled data; only the student's weights change."""
    from onnxopt.cli.common import clean_first, console, pre_passes, write_model
    from onnxopt.data import load_feeds
    from onnxopt.model import load_model
    from onnxopt.passes.distill.config import DistillConfig
    from onnxopt.passes.distill.trainer import distill

    s_model, t_model = load_model(student), load_model(teacher)
    s_model = clean_first(s_model, pre_passes(passes, default=["cleanup"]), "the student")
    feeds = load_feeds(data, s_model, batch=batch)
    lab = read_labels(labels) if labels is not None else None
    if alpha is None:
        alpha = 0.5 if lab is not None else 0.0
    if lab is None and feeds.labels is not None and alpha > 0:
        lab = feeds.stacked_labels()
    if alpha > 0 and lab is None:
        raise OptionError("--alpha > 0 needs --labels (or a 'labels' key in --data)")
    cfg = DistillConfig.from_options(
        {
            "epochs": epochs,
            "lr": lr,
            "temperature": temperature,
            "alpha": alpha,
            "loss": loss,
            "batch_size": batch_size,
            "val_fraction": val_fraction,
            "patience": patience,
            "seed": seed,
            "bn_mode": bn,
            "features": feature or [],
            "cache_dir": str(cache_dir) if cache_dir is not None else None,
        }
    )
    bar, update = _progress_bar(console)
    with bar:
        res = distill(s_model, t_model, feeds, cfg, labels=lab, progress=update)
    write_model(res.model, output, source=student)
    _render(res, f"distill {student.name} <- {teacher.name}")
    console.print(f"wrote {output}")
    if html is not None:
        from onnxopt.cli.report import distill_page

        distill_page(res, s_model, teacher, html)


def _render(res: Any, title: str) -> None:
    """Print a DistillResult: held-out loss, agreement and accuracy before and after."""
    from rich.table import Table

    from onnxopt.cli.common import console

    table = Table(title=title, title_justify="left")
    table.add_column("held-out")
    table.add_column("before", justify="right")
    table.add_column("after", justify="right")
    table.add_row(
        "loss (" + ",".join(sorted(set(res.losses.values()))) + ")",
        f"{res.before.val_loss:.4f}",
        f"{res.after.val_loss:.4f}",
    )
    if res.before.val_agreement is not None:
        table.add_row(
            "top-1 agreement", f"{res.before.val_agreement:.2%}", f"{res.after.val_agreement:.2%}"
        )
    if res.before.val_accuracy is not None:
        table.add_row(
            "accuracy", f"{res.before.val_accuracy:.2f}%", f"{res.after.val_accuracy:.2f}%"
        )
    console.print(table)
    console.print(
        f"best epoch {res.best_epoch} of {len(res.history)}; {len(res.updated)} initializers "
        f"updated; torch/onnxruntime parity {res.parity_max_abs:.1e}; {res.seconds:.1f}s"
    )
    for note in res.notes:
        console.print(f"note: {note}")


def register(app: typer.Typer) -> None:
    """Add the ``distill`` command to ``app``."""
    app.command("distill")(distill_cmd)
