"""Checks and verification of a merged ensemble.

- :func:`live`: only the nodes (and initializers) the merged outputs need;
- :func:`verify`: the merged graph, run in onnxruntime, must equal (Exact float32 tolerance:
  ``|a-b| <= 1e-5 max(1, max|b|) + 1e-4 |b|``) the numpy combination of the members run
  separately on the same feeds; with labels, accuracy per member and for the ensemble.

The merged model's structural check (``onnx.checker`` and strict shape inference) is the
engine's :func:`onnxopt.pipeline.structural_check`, called by the merge.
"""

from __future__ import annotations

import numpy as np
import onnx

from onnxopt.data import Feeds
from onnxopt.errors import ModelError
from onnxopt.passes.ensemble.cascade import ancestors, reads
from onnxopt.passes.ensemble.context import MergeContext, Reference
from onnxopt.passes.ensemble.modes import np_confidence
from onnxopt.runner import Runs
from onnxopt.synth import get_feeds
from onnxopt.verify import Exact, accuracy


def live(
    nodes: list[onnx.NodeProto], inits: list[onnx.TensorProto], outputs: list[str]
) -> tuple[list[onnx.NodeProto], list[onnx.TensorProto]]:
    """The nodes the outputs need (in order) and the initializers those nodes read."""
    keep = ancestors(nodes, outputs)
    needed = [n for i, n in enumerate(nodes) if i in keep]
    used = {x for n in needed for x in reads(n)} | set(outputs)
    return needed, [t for t in inits if t.name in used]


def verify(ctx: MergeContext, model: onnx.ModelProto, reference: Reference) -> None:
    """Run ``model`` and the members on the evaluation (or synthesized) feeds and compare;
    fills ``ctx.report`` (verification, accuracy).

    Raises:
        ModelError: the merged graph does not reproduce the members' combination.
    """
    cfg, report = ctx.config, ctx.report
    feeds = ctx.eval_feeds
    if feeds is None:
        feeds = get_feeds(
            ctx.stub, None, shapes=cfg.shapes, int_range=cfg.int_range, runs=int(cfg.runs)
        )
        report.notes += feeds.notes
    member_runs = None if cfg.mode == "serial" else ctx.member_runs(feeds)
    ref = reference(member_runs, feeds)
    got = ctx.runner.run(model, feeds)
    verdict = Exact().check(ref, got)
    diffs = [
        float(
            np.max(np.abs(np.asarray(r[k], np.float64) - np.asarray(g[k], np.float64)), initial=0.0)
        )
        for r, g in zip(ref, got)
        for k in r
    ]
    report.verified = bool(verdict)
    report.verification = {
        "runs": len(feeds.runs),
        "samples": feeds.num_samples,
        "synthesized": feeds.synthesized,
        "max_abs": max(diffs, default=0.0),
        "tolerance": "Exact (float32 rtol 1e-4, atol 1e-5)",
    }
    if not verdict:
        raise ModelError(
            f"merged graph does not reproduce the members' combination: {verdict.reason}"
        )
    if feeds.labels is not None and member_runs is not None:
        _accuracy(ctx, feeds, member_runs, got)


def _accuracy(ctx: MergeContext, feeds: Feeds, member_runs: list[Runs], got: Runs) -> None:
    """Accuracy of each member and of the ensemble; for a cascade, the cheap fraction."""
    report, labels = ctx.report, feeds.labels
    for m, rs in zip(ctx.members, member_runs):
        report.accuracy[m.label] = accuracy(rs, labels, m.scores)
    report.accuracy["ensemble"] = accuracy(got, labels, report.outputs[0])
    if not report.accuracy_split:
        report.accuracy_split = f"accuracy on {len(feeds.stacked_labels())} samples of --data"
    if ctx.config.mode == "cascade":
        conf = [
            np_confidence(rs[ctx.members[0].scores], ctx.cheap_is_probs).min()
            for rs in member_runs[0]
        ]
        report.params["cheap_fraction"] = float(
            np.mean(np.asarray(conf) >= np.float32(report.params["threshold"]))
        )
