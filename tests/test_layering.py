"""Two floors, imports one way: ``pipelines`` (the data floor) imports nothing of
``gssl_fast``, so it can be reused alone."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def imported_modules(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module)
    return names


def test_pipelines_import_nothing_of_gssl_fast():
    offenders = {str(p.relative_to(ROOT)): sorted(m for m in imported_modules(p) if m.split(".")[0] == "gssl_fast")
                 for p in sorted((ROOT / "pipelines").rglob("*.py"))}
    assert {k: v for k, v in offenders.items() if v} == {}
