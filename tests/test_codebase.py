"""Rules of the codebase itself: no dead code in the package, no test machinery in the package, and test modules
that import nothing from each other (shared helpers are fixtures of tests/conftest.py)."""

from __future__ import annotations

import ast
import re
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# Public API kept for library users although the package itself does not call it (name: why).
LIBRARY_API = {"with_updates": "Recipe.with_updates: a recipe with some knobs changed, for scripts and notebooks",
               "relativize_journal": "store._paths.relativize_journal: rewrites a journal made before sweepdae kept "
                                     "paths relative (the shipped example was converted with it)",
               # overrides that Optuna calls: JournalFileBackend's interface
               "append_logs": "SafeJournalFileBackend.append_logs, called by Optuna's journal storage",
               "read_logs": "SafeJournalFileBackend.read_logs, called by Optuna's journal storage"}


def _registered(node: ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef) -> bool:
    """`@app.command()`, `@app.callback()`: the decorator itself makes the definition reachable."""
    return any(isinstance(d, ast.Call) and isinstance(d.func, ast.Attribute) and d.func.attr in ("command", "callback")
               for d in node.decorator_list)


def test_every_definition_is_used_by_the_package() -> None:
    sources = {p: p.read_text() for p in sorted((ROOT / "sweepdae").rglob("*.py"))}
    words = Counter(re.findall(r"\w+", "\n".join([*sources.values(),
                                                   *(p.read_text() for p in (ROOT / "templates").glob("*.j2"))])))
    unused = []
    for path, src in sources.items():
        for node in ast.walk(ast.parse(src)):
            if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) or _registered(node):
                continue
            if node.name.startswith("__") or node.name in LIBRARY_API or words[node.name] > 1:
                continue
            unused.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name}")
    assert not unused, "defined but never used by sweepdae: " + ", ".join(unused)


def test_no_test_machinery_in_the_package() -> None:
    """Database launchers, synthetic stores and fixtures live under tests/: the package imports no test tool."""
    assert not list((ROOT / "sweepdae").rglob("testing.py"))
    for path in sorted((ROOT / "sweepdae").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            assert not [n for n in names if n.split(".")[0] in ("pytest", "hypothesis")], path


def test_test_modules_import_no_other_test_module() -> None:
    tests = {p.stem for p in (ROOT / "tests").glob("test_*.py")} | {"conftest"}
    for path in sorted((ROOT / "tests").glob("test_*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            assert not [n for n in names if n.split(".")[0] in tests | {"tests"}], (path.name, names)
