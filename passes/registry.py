"""The explicit list of pass families. The engine finds passes only through here.

Each family module exposes ``PASSES``: its pass classes in run order. A family name is also an
alias that expands to all of its passes (``"cleanup"`` runs every cleanup pass).
"""

from __future__ import annotations

import importlib
import logging
from types import ModuleType

from onnxopt.errors import OptionError
from onnxopt.passes.base import Pass

logger = logging.getLogger(__name__)

#: family alias -> module; the order is the default order of families
FAMILIES: dict[str, str] = {
    "cleanup": "onnxopt.passes.cleanup",
    "fusion": "onnxopt.passes.fusion",
    "prune": "onnxopt.passes.prune",
    "distill": "onnxopt.passes.distill",
    "quantize": "onnxopt.passes.quantize",
}

#: what ``optimize`` runs without ``--passes``: every exact pass
DEFAULT_PIPELINE: list[str] = ["cleanup", "fusion"]

#: convenience aliases
ALIASES: dict[str, list[str]] = {
    "exact": ["cleanup", "fusion"],
    # static int8 is what "quantize" means; quantize-dynamic is asked for by name
    "quantize": ["quantize-int8"],
}


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


def expand(names: list[str]) -> list[str]:
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


def resolve(names: list[str | Pass]) -> list[Pass]:
    """Instances for names (aliases expanded); Pass instances pass through."""
    known = all_passes()
    out: list[Pass] = []
    for item in names:
        if isinstance(item, Pass):
            out.append(item)
            continue
        for n in expand([item]):
            out.append(known[n]())
    return out
