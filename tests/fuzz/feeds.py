"""Inputs for fuzzed graphs: the verification distribution, and the adversarial inputs the
oracle compares on, which verification never sees.

- ``verify``: floats uniform in [0.25, 1) (positive only, so that a rewrite that holds only for
  positive inputs passes verification and must be caught afterwards); integer inputs uniform
  in their valid range.
- ``seed1``, ``seed2``: standard normal floats from other seeds;
- ``zeros``, ``negative`` (−|N(0,1)|), ``large`` (N(0,1) scaled by 1000, or 16 in float16 so
  that x³ stays finite); integer inputs take the low, negative and high ends of their range;
- ``specials``: NaN, +Inf and −Inf sprinkled over normal values, for graphs whose motifs are
  exact on them;
- ``batch1``, ``batch3``: dynamic graphs also run with other batch sizes.
"""

from __future__ import annotations

import numpy as np
import onnx

from tests.fuzz.builder import BATCH, InputInfo

LARGE = {"float32": 1000.0, "float16": 16.0}


def _shape(info: InputInfo, batch: int) -> tuple[int, ...]:
    if info.batch and info.shape:
        return (batch, *info.shape[1:])
    return info.shape


def _ints(info: InputInfo, kind: str, shape: tuple[int, ...], rng: np.random.Generator):
    dtype = onnx.helper.tensor_dtype_to_np_dtype(info.elem)
    lo, hi = info.lo, info.hi
    if kind == "zeros":
        v = np.full(shape, 0 if lo <= 0 < hi else lo)
    elif kind == "negative":
        v = rng.integers(lo, min(hi, 0), shape) if lo < 0 else np.full(shape, lo)
    elif kind == "large":
        v = np.full(shape, hi - 1)
    else:
        v = rng.integers(lo, hi, shape)
    return np.asarray(v, dtype)


def _floats(kind: str, shape: tuple[int, ...], dtype: np.dtype, rng: np.random.Generator):
    if kind == "verify":
        v = rng.uniform(0.25, 1.0, shape)
    elif kind == "zeros":
        v = np.zeros(shape)
    elif kind == "negative":
        v = -np.abs(rng.standard_normal(shape))
    elif kind == "large":
        v = rng.standard_normal(shape) * LARGE[np.dtype(dtype).name]
    else:
        v = rng.standard_normal(shape)
        if kind == "specials" and v.size:
            flat = v.reshape(-1)
            picks = rng.choice(flat.size, size=max(1, flat.size // 4), replace=False)
            flat[picks] = rng.choice([np.nan, np.inf, -np.inf], size=picks.size)
    return np.asarray(v, dtype)


def feed(
    inputs: list[InputInfo], kind: str, seed: int, batch: int = BATCH
) -> dict[str, np.ndarray]:
    """One run of inputs of ``kind`` (see the module docstring)."""
    rng = np.random.default_rng(seed)
    out = {}
    for info in inputs:
        if info.kind == "overridable" and kind == "verify":
            continue  # verification runs on the default; other runs override it
        shape = _shape(info, batch)
        dtype = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(info.elem))
        if dtype.kind == "f":
            out[info.name] = _floats(kind, shape, dtype, rng)
        else:
            out[info.name] = _ints(info, kind, shape, rng)
    return out


def verification(inputs: list[InputInfo], runs: int = 2) -> list[dict[str, np.ndarray]]:
    return [feed(inputs, "verify", 1000 + i) for i in range(runs)]


def adversarial(
    inputs: list[InputInfo], *, specials: bool, dynamic: bool
) -> list[tuple[str, dict[str, np.ndarray]]]:
    """The inputs the oracle compares on, named by kind."""
    kinds = ["seed1", "seed2", "zeros", "negative", "large"] + (["specials"] if specials else [])
    out = [(k, feed(inputs, k, 2000 + i)) for i, k in enumerate(kinds)]
    if dynamic and any(i.batch for i in inputs):
        out += [(f"batch{n}", feed(inputs, "seed", 3000 + n, batch=n)) for n in (1, 3)]
    return out
