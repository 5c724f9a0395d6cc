"""``onnxopt report``: the HTML page of a saved run (``--report RUN.json``), offline.

The page is drawn from the JSON alone: its ``analysis`` (per-layer error, profiles, changed
regions) is there when the run had ``--html``. Give ``--original`` and ``--optimized`` to
compute it now for a report saved without it. Also: the converters that give ``merge`` and
``distill`` (whose results are not a pass pipeline) the same page.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from onnxopt.cli.common import (
    BatchOpt,
    DataOpt,
    IntRangeOpt,
    ShapeOpt,
    add_analysis,
    feeds_for,
    write_html,
)

RunOpt = Annotated[Path, typer.Argument(help="A JSON report written by --report.")]
OutOpt = Annotated[Path, typer.Option("-o", "--output", help="Where to write the HTML page.")]
OriginalOpt = Annotated[
    Path | None,
    typer.Option("--original", help="The run's input model: compute the analysis now."),
]
OptimizedOpt = Annotated[
    Path | None, typer.Option("--optimized", help="The run's output model (with --original).")
]
TitleOpt = Annotated[str | None, typer.Option("--title", help="The page's title.")]


def report_cmd(
    run: RunOpt,
    output: OutOpt,
    original: OriginalOpt = None,
    optimized: OptimizedOpt = None,
    data: DataOpt = None,
    shape: ShapeOpt = None,
    int_range: IntRangeOpt = None,
    batch: BatchOpt = None,
    title: TitleOpt = None,
) -> None:
    """Write the HTML page of a saved JSON report (one self-contained file, offline)."""
    from onnxopt.errors import OptionError
    from onnxopt.html import read_report
    from onnxopt.model import load_model
    from onnxopt.report import PipelineReport

    data_dict = read_report(run)
    if (original is None) != (optimized is None):
        raise OptionError("give both --original and --optimized (or neither)")
    if original is not None and optimized is not None:
        a, b = load_model(original), load_model(optimized)
        holder = PipelineReport()
        feeds = feeds_for(a, data, shape, int_range, batch)
        add_analysis(holder, a, b, feeds, title or f"onnxopt: {original.name}")
        data_dict["analysis"] = holder.analysis
    if title:
        data_dict.setdefault("analysis", {})["title"] = title
    write_html(data_dict, output)


def register(app: typer.Typer) -> None:
    """Add the ``report`` command to ``app``."""
    app.command("report")(report_cmd)


# ------------------------------------------------------------------------------------------------
# merge and distill as one-step pipelines


def _summary(model: Any) -> dict[str, Any]:
    from onnxopt.report import summary_dict
    from onnxopt.summary import ModelSummary

    return summary_dict(ModelSummary.of(model))


def merge_page(rep: Any, model: Any, output: Path, path: Path) -> None:
    """The page of a merge: one step from the members to the merged graph, the members'
    table and the merged graph's profile."""
    members = rep.members
    before = {k: sum(m.get(src, 0) for m in members) for k, src in _MEMBER_KEYS}
    v = rep.verification or {}
    step = {
        "name": f"merge ({rep.mode})",
        "exact": False,
        "status": "kept" if rep.verified is not False else "error",
        "reason": "" if rep.verified is not False else "differs from the members run separately",
        "rewrites": len(members),
        "before": before,
        "after": _summary(model),
        "vs_original": {"max_abs": v.get("max_abs"), "accuracy": rep.accuracy.get("ensemble")},
        "seconds": rep.seconds,
        "notes": list(rep.notes),
        "details": {"members": [_member_row(m, rep.accuracy) for m in members]},
    }
    report = {
        "passes": [step],
        "original": before,
        "final": step["after"],
        "feeds": "synthesized" if v.get("synthesized") else "data",
        "budget": rep.accuracy_split or "the members' combination, run separately",
        "seconds": rep.seconds,
        "notes": list(rep.notes),
        "analysis": {"title": f"onnxopt merge: {output.name}"},
    }
    report["analysis"].update(_profile_only(model))
    write_html(report, path)


_MEMBER_KEYS = (("nodes", "nodes"), ("params", "params"), ("flops", "macs"))


def _member_row(m: dict[str, Any], accuracy: dict[str, float]) -> dict[str, Any]:
    return {
        "member": m["label"],
        "opset": m.get("opset"),
        "nodes": m.get("nodes"),
        "params": m.get("params"),
        "MACs": m.get("macs"),
        "accuracy": accuracy.get(m["label"]),
    }


def _profile_only(model: Any) -> dict[str, Any]:
    from onnxopt.errors import OnnxoptError, first_line
    from onnxopt.opprofile import profile_model
    from onnxopt.synth import get_feeds

    try:
        return {"profile": {"after": profile_model(model, get_feeds(model).subset(1))}}
    except (OnnxoptError, RuntimeError) as e:
        return {"errors": {"profile": first_line(e)}}


def distill_page(res: Any, student: Any, teacher: Path, path: Path) -> None:
    """The page of a distillation: one step (the student's weights), its held-out statistics
    and the training curve."""
    b, a = res.before, res.after
    step = {
        "name": "distill",
        "exact": False,
        "status": "kept",
        "rewrites": len(res.updated),
        "before": _summary(student),
        "after": _summary(res.model),
        "vs_original": {"accuracy": a.val_accuracy},
        "seconds": res.seconds,
        "notes": list(res.notes),
        "details": {
            "history": [vars(h) for h in res.history],
            "best_epoch": res.best_epoch,
            "held_out": {
                "loss": [b.val_loss, a.val_loss],
                "agreement": [b.val_agreement, a.val_agreement],
                "accuracy": [b.val_accuracy, a.val_accuracy],
            },
        },
    }
    report = {
        "passes": [step],
        "original": step["before"],
        "final": step["after"],
        "feeds": f"teacher {teacher.name}",
        "budget": "held-out loss (early stopping)",
        "seconds": res.seconds,
        "accuracy_original": b.val_accuracy,
        "accuracy_final": a.val_accuracy,
        "notes": list(res.notes),
        "analysis": {"title": f"onnxopt distill: {teacher.name} -> student"},
    }
    write_html(report, path)
