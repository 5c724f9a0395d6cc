"""``onnxopt search``: the best model under a budget, found automatically.

Sits above the pass families, like the API: it may import the passes and the registry; the
engine never imports it. Modules: :mod:`.space` (the search space as data) and :mod:`.recipe`
(reading and validating it before any trial), :mod:`.driver` (one search from start to end),
:mod:`.cache` (content-addressed step results on disk, the journal ``--resume`` reads),
:mod:`.work` (what a worker runs: one step, one evaluation), :mod:`.executors` (a local process
pool or Ray tasks), :mod:`.scheduler` (the trial tree, successive halving, progress),
:mod:`.pareto` (fronts and the choice), :mod:`.output` (JSON, HTML, reports) and
:mod:`.parallel` (calibration statistics split across workers, merged exactly).
"""
