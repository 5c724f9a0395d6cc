"""Knowledge distillation (lossy): :mod:`.distill` is the pass; :mod:`.trainer`,
:mod:`.train` and :mod:`.teacher` are the trainer it runs (usable alone: ``onnxopt distill``)."""

from onnxopt.passes.distill.distill import Distill

PASSES = [Distill]
