"""Which output of each member an ensemble combines, and the label output recomputed from the
combined scores.

- ``--member-output NAME`` names the output for every member; ``--member-output M:NAME`` for
  member ``M`` (its label, file stem, or index). Without it each member contributes the output
  that holds class scores: the first float output of rank >= 2 with more than one class, else
  its first float output. A classifier converted by skl2onnx outputs ``label`` (int64) first and
  ``probabilities`` second: the scores are chosen, not the labels.
- When members also output integer labels (rank 1), the merged model outputs a label too,
  recomputed from the combined scores: ``label = classes[argmax(scores, -1)]``, with the classes
  the members' classifiers declare (``classlabels_int64s`` / ``classlabels_ints`` of an
  ``ai.onnx.ml`` classifier; 0..C-1 when none does). Members that declare different classes
  are refused.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper

from onnxopt.errors import OptionError
from onnxopt.passes.ensemble.harmonize import Member

FLOAT_TYPES = (onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE, onnx.TensorProto.FLOAT16)
INT_TYPES = (onnx.TensorProto.INT64, onnx.TensorProto.INT32)


def _elem(vi: onnx.ValueInfoProto) -> int:
    return vi.type.tensor_type.elem_type


def _dims(vi: onnx.ValueInfoProto) -> list:
    t = vi.type.tensor_type
    return [d.dim_value if d.HasField("dim_value") else None for d in t.shape.dim]


def _describe(m: Member) -> str:
    return ", ".join(
        f"{v.name} {onnx.helper.tensor_dtype_to_np_dtype(_elem(v)).name}" if _elem(v) else v.name
        for v in m.model.graph.output
    )


def parse_member_outputs(specs: tuple[str, ...] | None, members: list[Member]) -> dict[str, str]:
    """``{member label: output name}`` from ``NAME`` / ``MEMBER:NAME`` items."""
    chosen: dict[str, str] = {}
    for spec in specs or ():
        who, sep, name = spec.rpartition(":")
        if not sep:
            for m in members:
                chosen.setdefault(m.label, name)
            continue
        m = _find(members, who)
        chosen[m.label] = name
    return chosen


def _find(members: list[Member], who: str) -> Member:
    for i, m in enumerate(members):
        if who in (m.label, str(i)):
            return m
    labels = ", ".join(m.label for m in members)
    raise OptionError(f"--member-output {who!r}: no such member (members: {labels})")


def choose(m: Member, named: str | None) -> tuple[str, str]:
    """(the output ``m`` contributes, why); a named output must exist and hold floats."""
    outs = list(m.model.graph.output)
    if named is not None:
        vi = next((v for v in outs if v.name == named), None)
        if vi is None:
            raise OptionError(
                f"--member-output: member '{m.label}' has no output {named!r} "
                f"(its outputs: {_describe(m)})"
            )
        if _elem(vi) not in FLOAT_TYPES:
            raise OptionError(
                f"--member-output: '{m.label}.{named}' is not a float output; the ensemble "
                f"combines scores (its outputs: {_describe(m)})"
            )
        return named, "named by --member-output"
    for vi in outs:
        dims = _dims(vi)
        if _elem(vi) in FLOAT_TYPES and len(dims) >= 2 and (dims[-1] or 2) > 1:
            return vi.name, "its class scores"
    for vi in outs:
        if _elem(vi) in FLOAT_TYPES:
            return vi.name, "its first float output"
    raise OptionError(
        f"member '{m.label}' has no float output to combine (its outputs: {_describe(m)})"
    )


def label_output(m: Member) -> str | None:
    """``m``'s integer label vector output, if it has one."""
    for vi in m.model.graph.output:
        if _elem(vi) in INT_TYPES and len(_dims(vi)) == 1:
            return vi.name
    return None


def declared_classes(m: Member) -> np.ndarray | None:
    """The integer classes an ``ai.onnx.ml`` classifier of ``m`` declares, if any."""
    for node in m.model.graph.node:
        if node.domain != "ai.onnx.ml" or not node.op_type.endswith("Classifier"):
            continue
        for a in node.attribute:
            if a.name in ("classlabels_int64s", "classlabels_ints") and a.ints:
                return np.asarray(a.ints, dtype=np.int64)
    return None


def merged_classes(members: list[Member], n_classes: int) -> np.ndarray:
    """The classes of the recomputed label: the ones the members declare, all alike."""
    found = [(m.label, c) for m in members if (c := declared_classes(m)) is not None]
    for label, c in found[1:]:
        if not np.array_equal(c, found[0][1]):
            raise OptionError(
                f"members '{found[0][0]}' and '{label}' declare different classes; their "
                "labels cannot be recomputed from combined scores"
            )
    classes = found[0][1] if found else np.arange(n_classes, dtype=np.int64)
    if classes.size != n_classes:
        raise OptionError(
            f"member '{found[0][0]}' declares {classes.size} classes but the scores have "
            f"{n_classes}"
        )
    return classes


def label_nodes(scores: str, classes: np.ndarray, out: str) -> tuple[list, list]:
    """Nodes and initializers computing ``out = classes[argmax(scores, -1)]``."""
    cls_name, arg = f"{out}_classes", f"{out}_argmax"
    nodes = [
        helper.make_node("ArgMax", [scores], [arg], axis=-1, keepdims=0, name=f"{out}_argmax"),
        helper.make_node("Gather", [cls_name, arg], [out], axis=0, name=f"{out}_gather"),
    ]
    inits = [onnx.numpy_helper.from_array(classes.astype(np.int64), cls_name)]
    return nodes, inits
