"""The engine's defaults, each defined once. A pass family's own defaults are the field
defaults of its configuration dataclass (``QuantizeConfig``, ``PruneConfig``, ...)."""

from __future__ import annotations

#: lossy budget when the user gives none: every float output's cosine to the original
MIN_COSINE = 0.99

#: the exact passes' float32 tolerance: |a - b| <= ATOL * max(1, max|ref|) + RTOL * |ref|
EXACT_RTOL = 1e-4
EXACT_ATOL = 1e-5

#: an exact candidate may differ from the previous stage by this many times the model's own float
#: noise (onnxruntime's optimizations on vs off), where that is wider than the fixed tolerance
NOISE_FACTOR = 4

#: exact passes are verified on at most this many runs of --data (lossy passes on every run)
EXACT_VERIFY_RUNS = 8

#: runs synthesized when no --data is given
SYNTH_RUNS = 4

#: at most this many extra verification runs when bisecting one pass's sites
MAX_BISECT_TRIALS = 24
#: and at most this many seconds (what is left untried is dropped, and the report says so)
MAX_BISECT_SECONDS = 300.0

#: a failed speed pass (int8, pruning) is bisected only when its candidate with every site
#: rewritten runs in at most this fraction of its input's time: a subset rewrites less and gains
#: less, and each bisection trial re-runs the pass (on the PP-OCRv5 recognizer, a 0.97x
#: candidate was bisected in 4 trials, 98 s, to end "not faster" at 0.99x)
BISECT_SPEED_RATIO = 0.95
