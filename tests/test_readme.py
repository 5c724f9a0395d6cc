"""The README's "Where things are" table: every pass is listed, and every link points at a file
that exists (so a newcomer finds a pass, its test and its benchmark in one hop)."""

from __future__ import annotations

import re
from pathlib import Path

from onnxopt.passes import registry

ROOT = Path(__file__).resolve().parents[1]


def _section() -> str:
    text = (ROOT / "README.md").read_text()
    start = text.index("## Where things are")
    return text[start : text.index("\n## ", start + 1)]


def test_every_pass_has_a_row():
    rows = _section()
    missing = [name for name in registry.all_passes() if f"`{name}`" not in rows]
    assert not missing, f"README 'Where things are' lacks {missing}"


def test_every_link_exists():
    links = re.findall(r"\]\(([^)#]+)\)", _section())
    assert links
    broken = [p for p in links if not (ROOT / p).exists()]
    assert not broken, f"broken README links: {broken}"


def test_each_pass_row_names_its_module_and_test():
    for line in _section().splitlines():
        m = re.match(
            r"\| (\w+) \| `([\w-]+)` \| \[[^]]+\]\(([^)]+)\) \| \[[^]]+\]\(([^)]+)\)", line
        )
        if not m:
            continue
        family, name, code, test = m.groups()
        cls = registry.all_passes()[name]
        assert code.endswith(cls.__module__.rsplit(".", 1)[-1] + ".py"), (name, code)
        assert test == f"tests/passes/{family}/test_{Path(code).stem}.py", (name, test)
