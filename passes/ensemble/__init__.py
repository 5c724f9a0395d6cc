"""Ensemble merging: N models into one verified graph (:func:`.merge.merge`, ``onnxopt merge``),
configured by :class:`.config.MergeConfig`.

An ensemble changes the model's function, so merging is not a pass of the pipeline and the
family lists no passes.
"""

PASSES: list = []
