"""The import arrows of docs/ARCHITECTURE.md, checked on the source: the engine imports no pass
family, the CLI, the API or the search; no pass imports the CLI, the API or the search (which
sits above the passes, like the API); no import cycle anywhere.

Every import counts, module-level or inside a function (a lazy import is still an arrow).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

#: layers that sit above the engine (everything else under onnxopt/ is engine)
NOT_ENGINE = (
    "onnxopt.passes",
    "onnxopt.cli",
    "onnxopt.api",
    "onnxopt.search",
    "onnxopt.onnx2torch",
    "onnxopt.zoo",
    "onnxopt.examples",
    "onnxopt.__main__",
)


def _module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    if parts[0] == "passes":  # installed as onnxopt.passes
        parts = ["onnxopt", *parts]
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _sources() -> dict[str, Path]:
    files = list((ROOT / "onnxopt").rglob("*.py")) + list((ROOT / "passes").rglob("*.py"))
    return {_module_name(p): p for p in files}


def _imports(name: str, path: Path, known: set[str]) -> set[str]:
    """The project modules ``name`` imports (``from pkg import mod`` counts as ``pkg.mod``)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            for a in node.names:
                sub = f"{base}.{a.name}"
                out.add(sub if sub in known else base)
    return {m for m in out if m in known and m != name}


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    src = _sources()
    return {name: _imports(name, path, set(src)) for name, path in src.items()}


def _in(module: str, prefixes: tuple[str, ...]) -> bool:
    return any(module == p or module.startswith(p + ".") for p in prefixes)


def test_engine_imports_no_pass_cli_or_api(graph):
    bad = [
        (m, d)
        for m, deps in graph.items()
        if m != "onnxopt" and not _in(m, NOT_ENGINE)
        for d in deps
        if _in(d, NOT_ENGINE)
    ]
    assert not bad, f"engine modules import upper layers: {sorted(bad)}"


def test_passes_and_converter_do_not_import_cli_or_api(graph):
    lower = ("onnxopt.passes", "onnxopt.onnx2torch", "onnxopt.zoo")
    bad = [
        (m, d)
        for m, deps in graph.items()
        if _in(m, lower)
        for d in deps
        if _in(d, ("onnxopt.cli", "onnxopt.api", "onnxopt.search"))
    ]
    assert not bad, f"passes import the CLI, the API or the search: {sorted(bad)}"


def test_converter_imports_no_pass(graph):
    bad = [
        (m, d)
        for m, deps in graph.items()
        if _in(m, ("onnxopt.onnx2torch",))
        for d in deps
        if _in(d, ("onnxopt.passes",))
    ]
    assert not bad, f"onnx2torch imports passes: {sorted(bad)}"


def test_no_import_cycles(graph):
    cycles = [c for c in _strongly_connected(graph) if len(c) > 1]
    assert not cycles, f"import cycles: {cycles}"


def _strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's algorithm, iterative."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []
    counter = 0
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                comp = []
                while True:
                    w = stack.pop()
                    on_stack.discard(w)
                    comp.append(w)
                    if w == node:
                        break
                out.append(sorted(comp))
    return out


def test_the_checker_sees_arrows():
    """The checks above read real imports: a known arrow is found."""
    src = _sources()
    deps = _imports("onnxopt.pipeline", src["onnxopt.pipeline"], set(src))
    assert {"onnxopt.contract", "onnxopt.verify", "onnxopt.bisection"} <= deps


def test_search_does_not_import_the_cli(graph):
    bad = [
        (m, d)
        for m, deps in graph.items()
        if _in(m, ("onnxopt.search",))
        for d in deps
        if _in(d, ("onnxopt.cli",))
    ]
    assert not bad, f"the search imports the CLI: {sorted(bad)}"
