"""The one registry: the explicit list of pass families, and how names become passes.

Each family package lists its pass classes in run order in ``PASSES``. A family name is also an
alias that expands to all of its passes (``"cleanup"`` runs every cleanup pass). The engine
knows no pass by name: :func:`resolve` turns names into instances, and :func:`manager` builds
an :class:`~onnxopt.pipeline.PassManager` from names with the ordering constraints below.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Mapping, Sequence
from types import ModuleType
from typing import Any

from onnxopt.contract import Pass
from onnxopt.errors import OptionError
from onnxopt.pipeline import PassManager

logger = logging.getLogger(__name__)

#: family alias -> module; the order is the default order of families
FAMILIES: dict[str, str] = {
    "cleanup": "onnxopt.passes.cleanup",
    "fusion": "onnxopt.passes.fusion",
    "prune": "onnxopt.passes.prune",
    "distill": "onnxopt.passes.distill",
    "quantize": "onnxopt.passes.quantize",
    "precision": "onnxopt.passes.precision",
}

#: what ``optimize`` runs without ``--passes``: every exact pass
DEFAULT_PIPELINE: list[str] = ["cleanup", "fusion"]

#: convenience aliases
ALIASES: dict[str, list[str]] = {
    "exact": ["cleanup", "fusion"],
    # static int8 is what "quantize" means; quantize-dynamic is asked for by name
    "quantize": ["quantize-int8"],
    # half precision is what "precision" means; bf16 and int4 are asked for by name
    "precision": ["convert-fp16"],
}

#: ordering constraints between pass tags: (a, b) means every ``a`` runs before every ``b``;
#: checked by the PassManager before anything runs
ORDER: list[tuple[str, str]] = [
    ("cleanup", "fusion"),
    ("cleanup", "quantize"),
    ("fusion", "quantize"),
    ("prune", "distill"),
    ("prune", "quantize"),
    ("distill", "quantize"),
    # precision changes come after the exact and structural passes, which expect float32
    ("cleanup", "precision"),
    ("fusion", "precision"),
    ("prune", "precision"),
    ("distill", "precision"),
    # int4 and int8 both quantize MatMul weights: int4 takes them first (MatMulNBits), int8
    # then quantizes what is left (convolutions); half precision comes last, since int8
    # calibration and int4's Hessians read float32 activations and both skip non-float32
    # weights
    ("int4", "quantize"),
    ("int4", "half"),
    ("quantize", "half"),
]


def _module(family: str) -> ModuleType | None:
    try:
        return importlib.import_module(FAMILIES[family])
    except ModuleNotFoundError as e:
        if e.name and FAMILIES[family].startswith(e.name):
            return None  # family not installed in this build
        raise


def family_passes(family: str) -> list[type[Pass]]:
    mod = _module(family)
    if mod is None:
        return []
    return list(getattr(mod, "PASSES", []))


def all_passes() -> dict[str, type[Pass]]:
    """Every pass by name, in family order."""
    out: dict[str, type[Pass]] = {}
    for fam in FAMILIES:
        for cls in family_passes(fam):
            out[cls.name] = cls
    return out


def families() -> dict[str, list[type[Pass]]]:
    return {fam: family_passes(fam) for fam in FAMILIES}


def default_pipeline() -> list[str]:
    """The families ``optimize`` runs without ``--passes`` that this build has."""
    return [f for f in DEFAULT_PIPELINE if family_passes(f)]


def expand(names: Sequence[str]) -> list[str]:
    """Expand aliases and family names into pass names (order kept, duplicates dropped)."""
    known = all_passes()
    out: list[str] = []
    for raw in names:
        name = raw.strip()
        if not name:
            continue
        if name in ALIASES:
            sub = expand(ALIASES[name])
        elif name in FAMILIES and name not in known:
            sub = [c.name for c in family_passes(name)]
            if not sub:
                raise OptionError(f"pass family '{name}' is not available in this build")
        elif name in known:
            sub = [name]
        else:
            choices = sorted(set(known) | set(FAMILIES) | set(ALIASES))
            raise OptionError(f"unknown pass '{name}'; known: {', '.join(choices)}")
        for s in sub:
            if s not in out:
                out.append(s)
    return out


def resolve(
    names: Sequence[str | Pass], options: Mapping[str, Mapping[str, Any]] | None = None
) -> list[Pass]:
    """Instances for names (aliases expanded), each configured from ``options[pass name]``
    (validated: a bad key or value is a one-line OptionError); Pass instances pass through."""
    known = all_passes()
    options = dict(options or {})
    out: list[Pass] = []
    for item in names:
        if isinstance(item, Pass):
            out.append(item)
            continue
        for n in expand([item]):
            out.append(known[n].from_options(options.pop(n, None)))
    if options:
        raise OptionError(
            f"options for '{next(iter(options))}', which is not in the pipeline "
            f"({', '.join(p.name for p in out)})"
        )
    return out


def manager(
    passes: Sequence[str | Pass] | None = None,
    *,
    options: Mapping[str, Mapping[str, Any]] | None = None,
    **settings: Any,
) -> PassManager:
    """A :class:`PassManager` for pass names or instances (default: every exact pass), with
    the families' ordering constraints. ``options`` configure passes by name
    (``{"prune": {"ratio": 0.5}}``); ``settings`` go to the manager (budget, target, ...)."""
    chosen = default_pipeline() if passes is None else passes
    return PassManager(resolve(chosen, options), order=ORDER, **settings)
