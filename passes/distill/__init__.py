"""Knowledge distillation (lossy): :mod:`.distill` is the pass, configured by
:class:`.config.DistillConfig`; :mod:`.trainer` (with :mod:`.teacher`, :mod:`.train`,
:mod:`.losses` and :mod:`.result`) is the trainer it runs (usable alone: ``onnxopt distill``)."""

from onnxopt.passes.distill.distill import Distill

PASSES = [Distill]
