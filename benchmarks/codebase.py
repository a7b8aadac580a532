"""Counts of the package's structure: import cycles, imports inside functions, untyped seams, module and function
sizes, and citations of documents that are not in the repository.

    .venv/bin/python benchmarks/codebase.py [--json]

The import graph takes every `import sweepdae...` / `from sweepdae... import` of a module, those inside functions
included and those under `if TYPE_CHECKING:` excluded (as import-linter's grimp builds it: `from pkg import mod` is an
edge to pkg.mod, `from pkg import name` an edge to pkg's `__init__`).
Cycles are the graph's strongly connected components of more than one module (Tarjan).
"""

from __future__ import annotations

import argparse
import ast
import json
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "sweepdae"
LONG_FUNCTION = 80
BIG_MODULE = 800


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _is_type_checking(node: ast.If) -> bool:
    t = node.test
    return (isinstance(t, ast.Name) and t.id == "TYPE_CHECKING") or (
        isinstance(t, ast.Attribute) and t.attr == "TYPE_CHECKING")


def _resolve(mod: str, is_pkg: bool, node: ast.ImportFrom) -> str:
    if node.level == 0:
        return node.module or ""
    base = mod.split(".") if is_pkg else mod.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def imports_of(path: Path, modules: set[str]) -> tuple[set[str], int]:
    """(sweepdae modules this file imports, how many of those import statements sit inside a function)."""
    mod, is_pkg = module_name(path), path.name == "__init__.py"
    tree = ast.parse(path.read_text())
    found: set[str] = set()
    inside = 0

    def target(name: str) -> str | None:
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name or None

    def visit(node: ast.AST, in_function: bool) -> None:
        nonlocal inside
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child):
                for sub in child.orelse:
                    visit(sub, in_function)
                continue
            names: list[str] = []
            if isinstance(child, ast.Import):
                names = [a.name for a in child.names]
            elif isinstance(child, ast.ImportFrom):
                base = _resolve(mod, is_pkg, child)
                # `from pkg import mod` depends on pkg.mod; `from pkg import name` on pkg (its __init__)
                names = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in child.names]
            hits = {t for t in (target(n) for n in names if n.startswith("sweepdae")) if t and t != mod}
            if hits:
                found.update(hits)
                inside += in_function
            visit(child, in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)))

    visit(tree, False)
    found.discard(mod)
    return found, inside


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []
    sys.setrecursionlimit(10_000)

    def strong(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                strong(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            strong(v)
    return out


def long_functions(path: Path) -> list[tuple[str, int]]:
    tree = ast.parse(path.read_text())
    out = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno:
            n = node.end_lineno - node.lineno + 1
            if n > LONG_FUNCTION:
                out.append((f"{module_name(path)}.{node.name}", n))
    return out


# A document named alone: README.md, REPRODUCTION.md, BENCHMARKS.md, ...
BARE_NAME = re.compile(r"\b([A-Z][A-Z_]+\.md)(#[\w-]+)?\b")
# A document named by its path: docs/paper.md, ../REPRODUCTION.md, reports/examples/README.md, with an optional anchor
PATH = re.compile(r"(?<![\w/.-])((?:\.{1,2}/|[\w-][\w.-]*/)+[\w.-]+\.md)(#[\w-]+)?")
SKIP_SUFFIXES = {".journal", ".png", ".pdf", ".pt", ".npz", ".svg", ".csv", ".json"}


def tracked_files() -> list[str]:
    out = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    return out.split()


def citations() -> list[tuple[str, int, str, str, str]]:
    """(citing file, line, cited name as written, resolved document path or "", anchor or "") of every citation."""
    files = tracked_files()
    md = {f for f in files if f.endswith(".md")}
    by_name = {Path(f).name: f for f in md}
    out = []
    for f in files:
        p = ROOT / f
        if Path(f).suffix in SKIP_SUFFIXES or not p.is_file():
            continue
        try:
            text = p.read_text()
        except (UnicodeDecodeError, OSError):
            continue
        for i, line in enumerate(text.splitlines(), 1):
            spans = []
            for m in PATH.finditer(line):
                spans.append(m.span(1))
                name, anchor = m.group(1), (m.group(2) or "")[1:]
                found = ""
                for base in (ROOT, p.parent):  # from the repository root, or relative to the citing file
                    target = (base / name).resolve()
                    if target.is_relative_to(ROOT) and str(target.relative_to(ROOT)) in md:
                        found = str(target.relative_to(ROOT))
                        break
                out.append((f, i, name, found, anchor))
            for m in BARE_NAME.finditer(line):
                if any(a <= m.start(1) < b for a, b in spans):
                    continue  # the tail of a path already checked
                out.append((f, i, m.group(1), by_name.get(m.group(1), ""), (m.group(2) or "")[1:]))
    return out


def cited_documents() -> list[str]:
    """Tracked files' citations of a document (*.md, by name or path) the repository does not hold."""
    return [f"{f}:{i}: {name}" for f, i, name, found, _ in citations() if not found]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    paths = sorted(PACKAGE.rglob("*.py"))
    modules = {module_name(p) for p in paths}
    graph: dict[str, set[str]] = {}
    inside = 0
    for p in paths:
        graph[module_name(p)], n = imports_of(p, modules)
        inside += n
    text = {p: p.read_text() for p in paths}
    counts = {
        "cycles": cycles(graph),
        "imports_inside_functions": inside,
        "store_any": sum(len(re.findall(r"\bstore: Any\b", t)) for t in text.values()),
        "dict_str_any": sum(len(re.findall(r"dict\[str, Any\]", t)) for t in text.values()),
        "modules_over_800": sorted((module_name(p), len(t.splitlines())) for p, t in text.items()
                                   if len(t.splitlines()) > BIG_MODULE),
        "functions_over_80": sorted((f for p in paths for f in long_functions(p)), key=lambda f: -f[1]),
        "missing_documents": cited_documents(),
    }
    if args.json:
        print(json.dumps(counts, indent=1))
        return
    print(f"import cycles: {len(counts['cycles'])}")
    for c in counts["cycles"]:
        print("  " + " <-> ".join(c))
    for k in ("imports_inside_functions", "store_any", "dict_str_any"):
        print(f"{k}: {counts[k]}")
    print(f"modules over {BIG_MODULE} lines: {len(counts['modules_over_800'])}")
    for m, n in counts["modules_over_800"]:
        print(f"  {m}: {n}")
    print(f"functions over {LONG_FUNCTION} lines: {len(counts['functions_over_80'])}")
    for f, n in counts["functions_over_80"]:
        print(f"  {f}: {n}")
    print(f"citations of documents not in the repository: {len(counts['missing_documents'])}")
    for line in counts["missing_documents"]:
        print("  " + line)


if __name__ == "__main__":
    main()
