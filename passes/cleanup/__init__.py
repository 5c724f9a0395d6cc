"""cleanup passes (all exact), in run order.

remove-identity, fold-shapes, fold-constants, remove-noops, dedup-initializers, cse, dead-code:
shape folding first turns shape arithmetic into constants the constant folder and the no-op
rules can use; dedup runs before CSE so nodes reading equal weights compare equal.
fold-constants also lifts ``Constant`` nodes into initializers (see ``lift``).

Both torch exporters leave ``NodeProto.domain`` unset, which onnx-graphsurgeon reports as
``None``: ``_util.STANDARD_DOMAINS`` includes it, or no pass would touch an exported model.
"""

from onnxopt.passes.cleanup.cse import CommonSubexpressions
from onnxopt.passes.cleanup.dead_code import DeadCode
from onnxopt.passes.cleanup.dedup import DedupInitializers
from onnxopt.passes.cleanup.fold_constants import FoldConstants
from onnxopt.passes.cleanup.fold_shapes import FoldShapes
from onnxopt.passes.cleanup.identity import RemoveIdentity
from onnxopt.passes.cleanup.noops import RemoveNoops

PASSES = [
    RemoveIdentity,
    FoldShapes,
    FoldConstants,
    RemoveNoops,
    DedupInitializers,
    CommonSubexpressions,
    DeadCode,
]

__all__ = [
    "PASSES",
    "CommonSubexpressions",
    "DeadCode",
    "DedupInitializers",
    "FoldConstants",
    "FoldShapes",
    "RemoveIdentity",
    "RemoveNoops",
]
