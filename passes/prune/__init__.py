"""Structured channel pruning (lossy): see :mod:`.prune` for the pass and its steps."""

from onnxopt.passes.prune.prune import Prune

PASSES = [Prune]
