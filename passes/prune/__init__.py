"""Structured channel pruning (lossy): see :mod:`.prune` for the pass and its steps, :mod:`.config`
for the options and :mod:`.plan` for what ``--dry-run`` shows."""

from onnxopt.passes.prune.prune import Prune

PASSES = [Prune]
