"""Rules of the codebase itself: no dead code in the package, no test machinery in the package, test modules
that import nothing from each other (shared helpers are fixtures of tests/conftest.py), and a repository that stands
on its own: every document a tracked file cites exists in it, every anchor a citation names exists in that document,
and docs/paper.md's reference numbers are those the reports print (sweepdae/report/paper.py)."""

from __future__ import annotations

import ast
import importlib.util
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from sweepdae.report.paper import PAPER

ROOT = Path(__file__).resolve().parent.parent


def _codebase() -> Any:
    """benchmarks/codebase.py, the rules these tests and its counts share."""
    spec = importlib.util.spec_from_file_location("codebase_counts", ROOT / "benchmarks" / "codebase.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


CB = _codebase()
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


# -- the repository stands on its own --------------------------------------------------------------------------------
def slug(heading: str) -> str:
    """GitHub's anchor for a Markdown heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[`*_]", "", heading.strip().lower())
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(doc: Path) -> set[str]:
    text = doc.read_text()
    out = {slug(m.group(1)) for m in re.finditer(r"^#{1,6} +(.+?) *#*$", text, re.M)}
    return out | set(re.findall(r"""<a\s+(?:id|name)=["']([^"']+)["']""", text))


def test_every_cited_document_is_in_the_repository() -> None:
    missing = CB.cited_documents()
    assert not missing, "documents cited but not in the repository:\n" + "\n".join(missing)


def test_every_cited_anchor_exists() -> None:
    bad = [f"{f}:{i}: {name}#{anchor}" for f, i, name, found, anchor in CB.citations()
           if found and anchor and anchor not in anchors(ROOT / found)]
    assert not bad, "anchors cited but not in their document:\n" + "\n".join(bad)


def test_the_rules_find_every_form_of_citation() -> None:
    notes, paper = "NOTES" + ".md", "PAPER" + ".md"  # split, so that this file cites neither
    line = f"see ../shared/{notes} and {paper}, docs/paper.md#table-2 and [x](../REPRODUCTION.md#the-six-findings)"
    assert [(m.group(1), m.group(2)) for m in CB.PATH.finditer(line)] == [
        (f"../shared/{notes}", None), ("docs/paper.md", "#table-2"), ("../REPRODUCTION.md", "#the-six-findings")]
    assert [m.group(1) for m in CB.BARE_NAME.finditer(line)] == [notes, paper, "REPRODUCTION.md"]
    assert slug("Table 2") == "table-2" and slug("Knobs and their sources") == "knobs-and-their-sources"
    assert slug("`sweepdae tune`: the study") == "sweepdae-tune-the-study"


# docs/paper.md's section of each table or figure a grid mirrors (`[grid] mirrors` -> anchor)
PAPER_SECTIONS = {"tab1": "table-1", "tab2": "table-2", "fig5": "figure-5", "tab3": "table-3",
                  "noise_levels": "noise-levels", "augmentation": "augmentation", "epochs": "epochs",
                  "model_size": "model-size", "encoder_depth": "encoder-depth", "probe_t": "probe-t"}


def paper_section(anchor: str) -> str:
    """The text of docs/paper.md's heading whose anchor is `anchor`, up to the next heading."""
    parts = re.split(r"^(#{1,6} +.+)$", (ROOT / "docs" / "paper.md").read_text(), flags=re.M)
    for head, body in zip(parts[1::2], parts[2::2], strict=True):
        if slug(head.lstrip("#")) == anchor:
            return body
    raise AssertionError(f"docs/paper.md has no section #{anchor}")


def test_every_mirrored_reference_has_a_section() -> None:
    assert set(PAPER_SECTIONS) == set(PAPER)


@pytest.mark.parametrize("ref_id", sorted(PAPER_SECTIONS))
def test_docs_paper_numbers_are_the_reports(ref_id: str) -> None:
    """Every number a section of docs/paper.md gives is one the reports print for that table, and the reverse."""
    ref = PAPER[ref_id]
    printed = {f"{v:.1f}" for values in ref.values.values() for v in values.values() if v is not None}
    written = set(re.findall(r"(?<![\w.])\d+\.\d(?!\d)", paper_section(PAPER_SECTIONS[ref_id])))
    assert written == printed, (ref_id, sorted(written ^ printed))


# -- the package's structure: one-way imports, sizes (benchmarks/codebase.py counts them) -------------------------
def test_the_cycle_finder_finds_cycles() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a", "d"}, "d": set(), "e": {"e2"}, "e2": {"e"}}
    assert sorted(CB.cycles(graph)) == [["a", "b", "c"], ["e", "e2"]]
    assert CB.cycles({"a": {"b"}, "b": set()}) == []


def test_the_import_graph_of_the_package_has_no_cycle() -> None:
    """Imports inside functions included, `if TYPE_CHECKING:` ones excluded."""
    paths = sorted((ROOT / "sweepdae").rglob("*.py"))
    modules = {CB.module_name(p) for p in paths}
    graph = {CB.module_name(p): CB.imports_of(p, modules)[0] for p in paths}
    assert sum(len(v) for v in graph.values()) > 200  # the graph was built
    assert CB.cycles(graph) == []


def test_imports_of_the_package_inside_functions_say_why() -> None:
    """An import of a sweepdae module inside a function stays only to keep a heavy dependency (torch, pandas) out of
    a light import path, and says so on its line."""
    silent = []
    for p in sorted((ROOT / "sweepdae").rglob("*.py")):
        lines = p.read_text().splitlines()
        for node in ast.walk(ast.parse("\n".join(lines))):
            if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            for sub in ast.walk(node):
                if isinstance(sub, ast.ImportFrom) and (sub.module or "").startswith("sweepdae") \
                        and "#" not in lines[sub.lineno - 1]:
                    silent.append(f"{p.relative_to(ROOT)}:{sub.lineno}")
    assert not silent, f"imports inside functions without a reason: {sorted(set(silent))}"


def test_module_and_function_sizes() -> None:
    """No module over 800 lines; at most two functions over 80 lines."""
    paths = sorted((ROOT / "sweepdae").rglob("*.py"))
    big = [(str(p.relative_to(ROOT)), n) for p in paths if (n := len(p.read_text().splitlines())) > CB.BIG_MODULE]
    assert not big
    long = [f for p in paths for f in CB.long_functions(p)]
    assert len(long) <= 2, long


def test_the_layers_contract_holds() -> None:
    """pyproject's [tool.importlinter]: cli -> runner -> cell -> ... -> recipe, and no cycle inside a package."""
    exe = Path(sys.executable).parent / "lint-imports"
    done = subprocess.run([str(exe)], cwd=ROOT, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stdout[-3000:]
    assert "2 kept, 0 broken" in done.stdout
