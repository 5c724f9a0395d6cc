"""Checks and verification of a merged ensemble.

- :func:`checked`: ``onnx.checker`` and strict shape inference, as a one-line ModelError;
- :func:`live`: only the nodes (and initializers) the merged outputs need;
- :func:`verify`: the merged graph, run in onnxruntime, must equal (Exact float32 tolerance:
  ``|a-b| <= 1e-5 max(1, max|b|) + 1e-4 |b|``) the numpy combination of the members run
  separately on the same feeds; with labels, accuracy per member and for the ensemble.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import onnx

from onnxopt.errors import ModelError, first_line
from onnxopt.passes.ensemble.cascade import ancestors, reads
from onnxopt.passes.ensemble.fit import accuracy
from onnxopt.passes.ensemble.modes import np_confidence
from onnxopt.synth import get_feeds
from onnxopt.verify import Exact

if TYPE_CHECKING:  # pragma: no cover
    from onnxopt.passes.ensemble.merge import _Ctx as Ctx

Runs = list[dict[str, np.ndarray]]


def _stacked(runs: Runs, name: str) -> np.ndarray:
    return np.concatenate([r[name] for r in runs])


def live(nodes: list[onnx.NodeProto], inits: list[onnx.TensorProto], outputs: list[str]
          ) -> tuple[list[onnx.NodeProto], list[onnx.TensorProto]]:
    """The nodes the outputs need (in order) and the initializers those nodes read."""
    keep = ancestors(nodes, outputs)
    live = [n for i, n in enumerate(nodes) if i in keep]
    used = {x for n in live for x in reads(n)} | set(outputs)
    return live, [t for t in inits if t.name in used]


def checked(model: onnx.ModelProto) -> onnx.ModelProto:
    try:
        onnx.checker.check_model(model)
        return onnx.shape_inference.infer_shapes(model, strict_mode=True)
    except Exception as e:  # noqa: BLE001 - checker and inference raise several kinds
        first = first_line(e)
        raise ModelError(f"merged model is invalid: {first}") from e


def verify(ctx: Ctx, model: onnx.ModelProto, reference: Any) -> None:
    o, report = ctx.o, ctx.report
    feeds = ctx.eval_feeds
    if feeds is None:
        feeds = get_feeds(ctx.stub, None, shapes=o.get("shapes"), int_range=o.get("int_range"),
                          runs=int(o.get("runs", 4)))
        report.notes += feeds.notes
    member_runs = None if o.mode == "serial" else ctx.member_runs(feeds)
    ref = reference(member_runs, feeds)
    got = ctx.runner.run(model, feeds)
    verdict = Exact().check(ref, got)
    diffs = [float(np.max(np.abs(np.asarray(r[k], np.float64) - np.asarray(g[k], np.float64)),
                          initial=0.0)) for r, g in zip(ref, got) for k in r]
    report.verified = bool(verdict)
    report.verification = {"runs": len(feeds.runs), "samples": feeds.num_samples,
                           "synthesized": feeds.synthesized, "max_abs": max(diffs, default=0.0),
                           "tolerance": "Exact (float32 rtol 1e-4, atol 1e-5)"}
    if not verdict:
        raise ModelError(f"merged graph does not reproduce the members' combination: "
                         f"{verdict.reason}")
    if feeds.labels is not None and member_runs is not None:
        y = feeds.stacked_labels()
        for m, rs in zip(ctx.members, member_runs):
            report.accuracy[m.label] = accuracy(_stacked(rs, m.output_names[0]), y)
        report.accuracy["ensemble"] = accuracy(_stacked(got, report.outputs[0]), y)
        if not report.accuracy_split:
            report.accuracy_split = f"accuracy on {len(y)} samples of --data"
        if o.mode == "cascade":
            conf = [np_confidence(rs[ctx.members[0].output_names[0]], ctx.cheap_is_probs).min()
                    for rs in member_runs[0]]
            report.params["cheap_fraction"] = float(
                np.mean(np.asarray(conf) >= np.float32(report.params["threshold"])))
