"""A non-editable `pip install .` still finds the templates and the shipped grids, and the sdist carries the documents
the README names (slow tier: real builds)."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_non_editable_install_ships_templates_and_grids(tmp_path: Path) -> None:
    target, src = tmp_path / "site", tmp_path / "src"
    # build from the tracked files only, as a clean clone would: a checkout's stale sweepdae.egg-info/SOURCES.txt
    # makes setuptools add modules that the package list leaves out
    for name in subprocess.run(["git", "ls-files"], cwd=ROOT, check=True, capture_output=True,
                               text=True).stdout.splitlines():
        if (ROOT / name).is_file():
            (src / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, src / name)
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--target",
                    str(target), str(src)], check=True, capture_output=True, timeout=300, cwd=tmp_path)
    # -S: no site-packages, so the editable install of the checkout cannot answer instead
    code = ("import sweepdae, sweepdae.resources as r; "
            "print(sweepdae.__file__); print(r.resource_dir('templates')); print(r.resource_dir('grids')); "
            "print(sorted(p.name for p in r.resource_dir('templates').iterdir())); print(r.shipped_grids())")
    out = subprocess.run([sys.executable, "-S", "-c", code], check=True, capture_output=True, text=True, cwd=tmp_path,
                         env={"PYTHONPATH": str(target), "PATH": "/usr/bin:/bin"}).stdout.splitlines()
    assert out[0].startswith(str(target))
    assert out[1].startswith(str(target)) and out[2].startswith(str(target))  # not the checkout's folders
    assert "report.html.j2" in out[3] and "tables.tex.j2" in out[3]
    assert "quickstart" in out[4] and "tokenizer_dims" in out[4]
    # every module of the checkout is in the install (a cell runs `python -m sweepdae.cell`); importing them all
    # would need torch, which -S hides
    here = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "sweepdae").rglob("*.py"))
    shipped = sorted(str(p.relative_to(target)) for p in (target / "sweepdae").rglob("*.py"))
    assert set(here) <= set(shipped), sorted(set(here) - set(shipped))


@pytest.mark.slow
def test_sdist_ships_the_documents_readme_names(tmp_path: Path) -> None:
    """README.md is the package's long description: the documents it names (REPRODUCTION.md, docs/paper.md, ...)
    travel with it in the sdist (MANIFEST.in)."""
    src = tmp_path / "src"
    for name in subprocess.run(["git", "ls-files"], cwd=ROOT, check=True, capture_output=True,
                               text=True).stdout.splitlines():
        if (ROOT / name).is_file():
            (src / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, src / name)
    code = "from setuptools import build_meta as b; import sys; print(b.build_sdist(sys.argv[1]))"
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path / "dist")], cwd=src, check=True,
                         capture_output=True, text=True, timeout=300).stdout.splitlines()[-1]
    with tarfile.open(tmp_path / "dist" / out) as tar:
        shipped = {n.split("/", 1)[1] for n in tar.getnames() if "/" in n}
    named = set(re.findall(r"(?<![\w/.-])((?:[\w-]+/)*[\w-]+\.md)\b", (ROOT / "README.md").read_text()))
    assert {"REPRODUCTION.md", "docs/paper.md", "docs/slurm.md"} <= named
    assert named <= shipped, sorted(named - shipped)
