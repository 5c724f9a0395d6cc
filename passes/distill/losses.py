"""The distillation losses that need no training state (see :mod:`.trainer` for the maths).

- ``kl``: ``T² · KL(softmax(t/T) ‖ softmax(s/T))`` over rows of the last axis; a teacher output
  that already is a probability vector is used as ``log t``;
- ``auto`` picks ``kl`` for float outputs of rank 2 with more than one column, else ``mse``.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def kl_loss(s: Any, t: Any, temperature: float, t_is_prob: bool) -> Any:
    """``T² · KL(softmax(t/T) ‖ softmax(s/T))`` over rows of the last axis (torch tensors)."""
    import torch.nn.functional as F

    c = s.shape[-1]
    s2, t2 = s.reshape(-1, c), t.reshape(-1, c)
    if t_is_prob:
        t2 = t2.clamp_min(1e-12).log()
    log_ps = F.log_softmax(s2 / temperature, dim=-1)
    log_pt = F.log_softmax(t2 / temperature, dim=-1)
    return F.kl_div(log_ps, log_pt, log_target=True, reduction="batchmean") * temperature**2


def looks_like_probabilities(a: np.ndarray) -> bool:
    """Rows of the last axis are non-negative and sum to 1 (a Softmax output)."""
    sample = np.asarray(a[: min(len(a), 256)], dtype=np.float64)
    return bool(
        sample.size and (sample >= 0).all() and np.allclose(sample.sum(axis=-1), 1.0, atol=1e-3)
    )


def default_loss(arr: np.ndarray) -> str:
    """The ``auto`` loss for a teacher output like ``arr``."""
    return "kl" if arr.dtype.kind == "f" and arr.ndim == 2 and arr.shape[-1] > 1 else "mse"
