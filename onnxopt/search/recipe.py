"""Reading and validating a recipe into a :class:`~.space.Space` (the format is described in
:mod:`.space`). Everything is checked before any trial runs: an unknown pass, family or alias,
an unknown option (against the pass's ``config_class`` fields), a value the configuration
refuses, an empty range, an unknown setting, a precision no registered pass provides, options
for a pass the search never runs, and the ordering constraints (``registry.ORDER``). Each is a
one-line :class:`~onnxopt.errors.OptionError`.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Mapping, Sequence
from dataclasses import fields
from pathlib import Path
from typing import Any

from onnxopt.contract import Pass
from onnxopt.errors import OptionError
from onnxopt.search.space import (
    DEFAULT_PRECISION,
    DEFAULT_RANGES,
    DEPENDS,
    FLOAT,
    OFF_VALUES,
    PRECISION,
    PRECISION_TAGS,
    Settings,
    Space,
    Stage,
    Step,
)


def read_recipe(path: str | Path) -> dict[str, Any]:
    """A recipe file (``.toml``, ``.yaml``/``.yml`` or ``.json``) as a dict; one-line errors."""
    p = Path(path)
    if not p.is_file():
        raise OptionError(f"recipe {p}: no such file")
    text = p.read_text()
    suffix = p.suffix.lower()
    try:
        if suffix == ".toml":
            import tomllib

            data = tomllib.loads(text)
        elif suffix in (".yaml", ".yml"):
            data = _yaml(text)
        elif suffix == ".json":
            data = json.loads(text)
        else:
            raise OptionError(f"recipe {p}: expected a .toml, .yaml or .json file")
    except OptionError:
        raise
    except Exception as e:  # noqa: BLE001 - parser errors of three libraries
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise OptionError(f"recipe {p}: cannot parse: {msg}") from e
    if not isinstance(data, dict):
        raise OptionError(f"recipe {p}: expected a table of passes at the top")
    return data


def _yaml(text: str) -> Any:
    try:
        import yaml
    except ImportError as e:  # pragma: no cover - pyyaml is in the dev extra
        raise OptionError("YAML recipes need PyYAML (pip install pyyaml); or write TOML") from e
    return yaml.safe_load(text) or {}


def build_space(
    recipe: Mapping[str, Any] | None = None, *, target: str = "onnx", **overrides: Any
) -> Space:
    """Validate ``recipe`` (None: the defaults) against the registry; one-line OptionError
    for an unknown pass or option, a bad value, an empty range or a broken ordering.

    A recipe's table replaces that pass's default ranges; passes it does not mention keep
    theirs (:data:`DEFAULT_RANGES`). ``overrides`` replace ``[search]`` settings (``seed``,
    ``trials``, ...; None: keep). ``target``: the search's ``--target``; a precision pass
    that writes ops it does not allow (quantize-int4's MatMulNBits, an onnxruntime contrib
    op) is left out of the default precisions, and named in a recipe it is an error: every
    such trial would fail."""
    from onnxopt.passes import registry

    tables, search = _split_recipe(dict(recipe or {}))
    settings = _settings(search, overrides)
    user = _ranges(tables, registry)
    precision = _precision_values(search.pop(PRECISION, None), user, registry, target)
    pipeline = search.pop("pipeline", None)
    if search:
        known = ", ".join(sorted({f.name for f in fields(Settings)} | {"pipeline", PRECISION}))
        raise OptionError(f"recipe: unknown setting '{next(iter(search))}'; known: {known}")
    names = _pipeline(pipeline, user, precision, registry)
    used = set(names) | {p for p in precision if p is not None}
    ranges = {k: dict(v) for k, v in DEFAULT_RANGES.items() if k in used}
    ranges.update(user)
    stages = _stages(names, ranges, precision, registry)
    _check_order(stages, registry)
    return Space(stages, settings, "recipe" if recipe is not None else "defaults")


def _split_recipe(recipe: dict[str, Any]) -> tuple[dict[str, dict[str, Any]], dict[str, Any]]:
    """(per-table options with dotted keys folded in, the ``[search]`` settings)."""
    search = dict(recipe.pop("search", None) or {})
    tables: dict[str, dict[str, Any]] = {}
    for key, value in recipe.items():
        if key == PRECISION:
            search[PRECISION] = value
            continue
        table, dot, option = str(key).partition(".")
        if dot:
            tables.setdefault(table, {})[option] = value
        elif isinstance(value, Mapping):
            tables.setdefault(table, {}).update(value)
        else:
            raise OptionError(
                f"recipe: '{key}' must be a table of options (or write '{key}.OPTION')"
            )
    return tables, search


def _settings(search: dict[str, Any], overrides: Mapping[str, Any]) -> Settings:
    names = {f.name for f in fields(Settings)}
    values = {k: search.pop(k) for k in list(search) if k in names}
    values.update({k: v for k, v in overrides.items() if v is not None})
    try:
        return Settings(**values)
    except TypeError as e:
        raise OptionError(f"recipe [search]: {e}") from e
    except OptionError as e:
        raise OptionError(f"recipe [search]: {e}") from e


def _as_list(table: str, option: str, value: Any) -> list[Any]:
    values = list(value) if isinstance(value, list | tuple) else [value]
    if not values:
        raise OptionError(f"recipe: {table}.{option}: empty range")
    return [None if isinstance(v, str) and v.lower() in ("none", "null") else v for v in values]


def _ranges(tables: dict[str, dict[str, Any]], registry: Any) -> dict[str, dict[str, list[Any]]]:
    """Per pass name: option -> values, each value checked by the pass's configuration."""
    known = registry.all_passes()
    out: dict[str, dict[str, list[Any]]] = {}
    for table, options in tables.items():
        names = _expand(table, registry)
        if len(names) != 1 and options:
            raise OptionError(
                f"recipe: [{table}] names {len(names)} passes ({', '.join(names)}); give "
                "options per pass"
            )
        for name in names:
            ranges = out.setdefault(name, {})
            for option, value in options.items():
                ranges[option] = _as_list(table, option, value)
            _check_values(known[name], ranges)
    return out


def _expand(name: str, registry: Any) -> list[str]:
    try:
        return registry.expand([name])
    except OptionError as e:
        raise OptionError(f"recipe: {e}") from e


def _check_values(cls: type[Pass], ranges: dict[str, list[Any]]) -> None:
    """Every value of every option builds a valid configuration (the others at defaults)."""
    options = {k: v for k, v in ranges.items() if k != "enabled"}
    if "enabled" in ranges and any(not isinstance(v, bool) for v in ranges["enabled"]):
        raise OptionError(f"recipe: {cls.name}.enabled: must be true or false")
    if cls.config_class is None:
        if options:
            raise OptionError(f"recipe: {cls.name}: takes no options (got {', '.join(options)})")
        return
    off = OFF_VALUES.get(cls.name)
    for option, values in options.items():
        for v in values:
            if off is not None and option == off[0] and v == off[1]:
                continue
            cls.config_class.from_options({option: v}, where=f"recipe: {cls.name}")


def _precision_values(
    raw: Any, user: dict[str, dict[str, list[Any]]], registry: Any, target: str = "onnx"
) -> list[str | None]:
    """Precision values -> pass names (None: float). Without a list: fp32, int8, every pass
    tagged "precision" and every precision pass the recipe gives options for, less those
    whose ops ``target`` does not allow."""
    precise = _precision_passes(registry)

    def refused(name: str | None) -> str:
        return precise[name].target_error(target) if name is not None else ""

    if raw is None:
        tagged = [n for n, c in precise.items() if "precision" in c.tags and not refused(n)]
        raw = [*DEFAULT_PRECISION, *tagged, *[n for n in user if n in precise]]
        raw = [v for v in raw if v in FLOAT or _precision_pass(v, precise, missing_ok=True)]
    values = _as_list("search", PRECISION, raw)
    out: list[str | None] = []
    for v in values:
        name = _precision_pass(str(v), precise)
        if refused(name):
            raise OptionError(
                f"recipe: precision '{v}': {refused(name)} (every such trial would fail)"
            )
        if name not in out:
            out.append(name)
    return out


def _precision_passes(registry: Any) -> dict[str, type[Pass]]:
    return {
        n: c
        for n, c in registry.all_passes().items()
        if not c.exact and any(t in PRECISION_TAGS for t in c.tags)
    }


def _precision_pass(
    value: str, precise: dict[str, type[Pass]], missing_ok: bool = False
) -> str | None:
    """``fp32`` -> None; a pass name; else the first precision pass with ``value`` as one of
    the dash-separated words of its name (``int8`` -> ``quantize-int8``)."""
    v = value.lower()
    if v in FLOAT:
        return None
    if v in precise:
        return v
    for name in precise:
        if v in name.split("-"):
            return name
    if missing_ok:
        return None
    known = ", ".join([FLOAT[0], *precise])
    raise OptionError(
        f"recipe: precision '{value}': no registered pass provides it; known: {known}"
    )


def _pipeline(
    pipeline: Any,
    user: dict[str, dict[str, list[Any]]],
    precision: list[str | None],
    registry: Any,
) -> list[str]:
    """The stage names in order: pass names (families expanded) and ``precision``. Default:
    the exact families, then the lossy passes with ranges in registry order, then precision."""
    precise = set(_precision_passes(registry))
    known = registry.all_passes()
    if pipeline is None:
        exact = _expand_all(registry.default_pipeline(), registry)
        searched = set(DEFAULT_RANGES) | set(user)
        lossy = [n for n in known if n in searched and n not in precise and not known[n].exact]
        extra = [n for n in known if n in user and known[n].exact and n not in exact]
        names = [*extra, *exact, *lossy]
    else:
        names = []
        for item in _as_list("search", "pipeline", pipeline):
            expanded = [PRECISION] if item == PRECISION else _expand(str(item), registry)
            for n in expanded:  # a precision pass named here places the precision stage
                n = PRECISION if n in precise else n
                if n not in names:
                    names.append(n)
    if PRECISION not in names and any(p is not None for p in precision):
        names.append(PRECISION)
    chosen = set(names) | {p for p in precision if p is not None}
    for name in user:
        if name not in chosen:
            why = "no precision value selects it" if name in precise else "not in the pipeline"
            raise OptionError(f"recipe: options for '{name}', which the search never runs ({why})")
    return names


def _expand_all(names: Sequence[str], registry: Any) -> list[str]:
    return [n for name in names for n in _expand(name, registry)]


def _stages(
    names: list[str],
    ranges: dict[str, dict[str, list[Any]]],
    precision: list[str | None],
    registry: Any,
) -> list[Stage]:
    known = registry.all_passes()
    stages: list[Stage] = []
    exact: list[str] = []
    for name in [*names, ""]:
        if name and name != PRECISION and known[name].exact:
            exact.append(name)
            continue
        if exact:
            stages.append(Stage("exact", _exact_choices(exact, ranges, known)))
            exact = []
        if name == PRECISION:
            choices: list[Step | None] = []
            for p in precision:
                choices += [None] if p is None else _grid(known[p], ranges.get(p, {}))
            stages.append(Stage(PRECISION, choices))
        elif name:
            stages.append(Stage(name, _lossy_choices(known[name], ranges.get(name, {}))))
    return stages


def _exact_choices(
    names: list[str], ranges: dict[str, dict[str, list[Any]]], known: dict[str, type[Pass]]
) -> list[Step | None]:
    per_pass = []
    for n in names:
        opts = {k: v for k, v in ranges.get(n, {}).items() if k != "enabled"}
        per_pass.append([(n, combo) for combo in _combos(known[n], opts)])
    out: list[Step | None] = []
    for combo in itertools.product(*per_pass):
        options = tuple((n, kv) for n, kv in combo if kv)
        out.append(Step(tuple(names), options, exact=True))
    return out


def _lossy_choices(cls: type[Pass], ranges: dict[str, list[Any]]) -> list[Step | None]:
    enabled = ranges.get("enabled", [True])
    out: list[Step | None] = [None] if False in enabled else []
    if True in enabled:
        for step in _grid(cls, ranges):
            if step is None:
                if None not in out:
                    out.insert(0, None)
            else:
                out.append(step)
    if not out:
        raise OptionError(f"recipe: {cls.name}: no choice left")
    return out


def _grid(cls: type[Pass], ranges: dict[str, list[Any]]) -> list[Step | None]:
    """One step per combination of the options (None where an option takes its off value)."""
    options = {k: v for k, v in ranges.items() if k != "enabled"}
    off = OFF_VALUES.get(cls.name)
    out: list[Step | None] = []
    for kv in _combos(cls, options, off):
        out.append(None if kv is None else Step((cls.name,), ((cls.name, kv),) if kv else ()))
    return out


def _combos(
    cls: type[Pass], options: dict[str, list[Any]], off: tuple[str, Any] | None = None
) -> list[tuple[tuple[str, Any], ...] | None]:
    """Every combination, normalized by the configuration (None: an off value)."""
    keys = sorted(options)
    out: list[tuple[tuple[str, Any], ...] | None] = []
    for values in itertools.product(*(options[k] for k in keys)):
        raw = dict(zip(keys, values, strict=True))
        if _inactive(cls.name, raw, options):
            continue  # a variant of an option that this combination does not read
        if off is not None and off[0] in raw and raw[off[0]] == off[1]:
            out.append(None)
            continue
        if cls.config_class is None:
            out.append(())
            continue
        config = cls.config_class.from_options(raw, where=f"recipe: {cls.name}").to_dict()
        unread = _unread(cls.name, raw)
        out.append(tuple((k, _jsonable(config[k])) for k in keys if k not in unread))
    unique: list[tuple[tuple[str, Any], ...] | None] = []
    for c in out:
        if c not in unique:
            unique.append(c)
    return unique


def _unread(name: str, raw: dict[str, Any]) -> set[str]:
    """The options of ``raw`` that its other values make unread (:data:`DEPENDS`)."""
    return {
        option
        for option, (other, value) in DEPENDS.get(name, {}).items()
        if option in raw and other in raw and raw[other] != value
    }


def _inactive(name: str, raw: dict[str, Any], options: dict[str, list[Any]]) -> bool:
    """Whether ``raw`` sets an unread option to anything but its first value (a duplicate)."""
    return any(raw[o] != options[o][0] for o in _unread(name, raw))


def _jsonable(v: Any) -> Any:
    """Hashable and JSON-able (tuples stay tuples; JSON writes them as lists)."""
    if isinstance(v, tuple | list):
        return tuple(_jsonable(x) for x in v)
    if isinstance(v, str | int | float | bool) or v is None:
        return v
    return str(v)


def _check_order(stages: list[Stage], registry: Any) -> None:
    """The ordering constraints (registry.ORDER) hold for every choice of a stage followed by
    every choice of each later stage (a stage's choices are alternatives: int8 and int4 are
    two precisions, not a sequence, so they are never checked against each other)."""
    from onnxopt.pipeline import validate_order

    known = registry.all_passes()
    per_stage = [
        [[known[n]() for n in (c.passes if c is not None else ())] for c in s.choices]
        for s in stages
    ]
    try:
        for i, choices in enumerate(per_stage):
            for first in choices:
                validate_order(first, registry.ORDER)
                for later in per_stage[i + 1 :]:
                    for then in later:
                        validate_order([*first, *then], registry.ORDER)
    except OptionError as e:
        raise OptionError(f"recipe: {e}") from e
