"""The LaTeX report compiles and every table fits its page: report.tex as written, and each tables/*.tex alone in a
one-column article and in a two-column paper (3.25 in columns, as ICML or CVPR), with `pdflatex -halt-on-error`.
Any overfull \\hbox fails, and so does a table that had to be scaled down to fit (the last resort of the rule in
templates/tables.tex.j2). pdflatex comes from `.ci/setup --dev`; nothing here skips without it.

Default suite: a quickstart-like store and a store of hostile labels, written in-process (~10 s), and the committed
example's .tex files as shipped. Slow tier: the shipped store re-rendered by `sweepdae report --latex` (~35 s).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from _tables import FakeStore

from sweepdae.report import write_reports

EXAMPLE = Path(__file__).resolve().parent.parent / "reports" / "examples" / "cpu"
ENV = {**os.environ, "max_print_line": "10000"}  # one log line per message: the table lines below are parsed whole
PREAMBLE = r"""\usepackage[T1]{fontenc}
\usepackage[utf8]{inputenc}
\usepackage{lmodern}
\usepackage{booktabs,graphicx}
"""
WRAPPERS = {  # a paper that \input's a table file as it is
    "onecol": r"\documentclass{article}" + "\n" + PREAMBLE,
    "twocol": r"\documentclass[twocolumn]{article}" + "\n" + PREAMBLE
              + r"\usepackage[text={6.75in,9in},columnsep=0.25in]{geometry}" + "\n",
}




def _recipe(seed: int) -> dict[str, Any]:
    return {"data": {"name": "fashion-mnist", "image_size": 32, "train_size": 12000, "test_size": 2000},
            "tokenizer": {"name": "patch_pca", "patch_size": 8}, "noise": {"schedule": "linear_gamma2"},
            "model": {"size": "micro"}, "train": {"epochs": 4, "batch_size": 128},
            "objective": {"target": "eps", "output_space": "latent"}, "seed": seed}


def _one_axis_grid(name: str, title: str, labels: list[str], metrics: dict[str, list[float]], seeds: int = 1,
                   description: str = "") -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """A grid of one axis (the table's rows, no columns), `seeds` seeds, every cell done."""
    spec = {"name": name, "title": title, "description": description, "mirrors": "tab2", "profile": "smoke",
            "profile_description": "2-core CPU", "seeds": list(range(seeds)), "steps": [],
            "axes": [{"name": "tokenizer", "paths": ["tokenizer.name"], "labels": labels}],
            "report": {"rows": "tokenizer", "cols": None, "metrics": list(metrics), "findings": []},
            "path": f"{name}.toml"}
    cells, rows = [], []
    for i, label in enumerate(labels):
        for seed in range(seeds):
            key = f"{name}-{i}-{seed}"
            cells.append({"key": key, "label": f"{label} seed={seed}", "coords": {"tokenizer": label,
                                                                                  "seed": str(seed)},
                          "step": None, "seed": seed})
            info = {"timings": {"train_s": 60.0, "wall_s": 90.0}, "artifacts": {}, "run_dir": key,
                    "provenance": {"sweepdae": "0.1.0", "git_commit": "0123456789abcdef", "git_dirty": False,
                                   "device": "cpu", "torch": "2.4.0", "cpu_threads": 2}}
            rows.append({"key": key, "label": f"{label} seed={seed}", "status": "done", "attempts": 1,
                         "failure_class": None, "error": None, "recipe": _recipe(seed), "info": info,
                         **{f"metric.{m}": v[i] + 0.3 * seed for m, v in metrics.items()}})
    return {"name": name, "profile": "smoke", "spec": spec, "cells": cells}, rows


def quickstart_like() -> FakeStore:
    """grids/quickstart.toml's report: three tokenizers, one seed, the probe beside its random-init baselines."""
    labels = ["patch_pca d=16", "patch_pca d=128", "pixel"]
    g, rows = _one_axis_grid(
        "quickstart", "Quickstart: does denoising pre-training beat random init? (patch PCA at two latent dims, "
        "pixels)", labels, {"probe_top1": [71.2, 74.9, 69.3], "probe_gain": [21.0, 25.2, 18.4],
                            "random_init_probe_top1": [48.1, 47.5, 50.9],
                            "raw_pixel_probe_top1": [44.0, 44.0, 44.0]})
    return FakeStore([g], rows)


def hostile_labels() -> FakeStore:
    """Labels that LaTeX reads as syntax after a row's \\\\ ([ and *), and a title and description with blank
    lines (issue 26, item 8)."""
    g, rows = _one_axis_grid("hostile", "Hostile\n\nlabels", ["[ours]", "*star", "plain"],
                             {"probe_top1": [60.0, 61.0, 62.0]}, seeds=2, description="First.\n\nSecond.")
    return FakeStore([g], rows)


# -- compiling -----------------------------------------------------------------------------------------------
def pdflatex(folder: Path, name: str, runs: int = 1) -> str:
    """Compile `name` in `folder` (-halt-on-error); its log. Fails the test on an error."""
    assert shutil.which("pdflatex"), "pdflatex is missing: .ci/setup --dev installs it (texlive-latex-base)"
    for _ in range(runs):
        run = subprocess.run(["pdflatex", "-interaction=nonstopmode", "-halt-on-error", name], cwd=folder,
                             capture_output=True, text=True, timeout=120, env=ENV)
        assert run.returncode == 0, f"{name}:\n{run.stdout[-3000:]}"
    return (folder / name).with_suffix(".log").read_text(errors="replace")


def overfull(log: str) -> list[str]:
    return re.findall(r"^Overfull \\hbox .*$", log, flags=re.M)


def placements(log: str) -> dict[str, str]:
    """tab:label -> how tables.tex.j2 placed it, e.g. "table (\\small, tabcolsep 6pt)"."""
    return dict(re.findall(r"^sweepdae: table (\S+) as (.*)$", log, flags=re.M))


def compile_all(out: Path) -> dict[str, dict[str, str]]:
    """report.tex and every tables/*.tex in both wrappers; asserts no overfull box and no scaled table. Returns
    {document: placements}."""
    logs = {"report.tex": pdflatex(out, "report.tex", runs=2)}  # twice: the section references resolve
    for table in sorted((out / "tables").glob("*.tex")):
        for kind, preamble in WRAPPERS.items():
            doc = out / f"{kind}-{table.stem}.tex"
            doc.write_text(preamble + "\\begin{document}\n\\input{tables/" + table.stem + "}\n\\end{document}\n")
            logs[doc.name] = pdflatex(out, doc.name)
    seen: dict[str, dict[str, str]] = {}
    for name, log in logs.items():
        assert not overfull(log), (name, overfull(log))
        seen[name] = placements(log)
        scaled = [t for t, how in seen[name].items() if "scaled" in how]
        assert not scaled, (name, scaled)
    return seen


def pdf_text(pdf: Path) -> str:
    return subprocess.run(["pdftotext", "-layout", str(pdf), "-"], capture_output=True, text=True,
                          check=True).stdout


# -- tests ---------------------------------------------------------------------------------------------------
def test_quickstart_report_compiles_fits_and_says_it_tests_no_finding(tmp_path: Path) -> None:
    write_reports(quickstart_like(), grids=None, out=tmp_path, html=False, latex=True, csv=False)
    doc = (tmp_path / "report.tex").read_text()
    assert "No grid in this report tests any of the paper's 6 headline findings." in doc
    assert "no grid in this report tests it" not in doc  # not six lines saying so
    seen = compile_all(tmp_path)
    assert set(seen["report.tex"]) == {"tab:quickstart-smoke"}


def test_a_label_starting_with_bracket_or_star_and_a_title_with_blank_lines(tmp_path: Path) -> None:
    """Issue 26 item 8: "[ours]" after \\\\ was \\\\'s optional argument (pdflatex stopped: "Missing number"), "*star"
    lost its star (\\\\*), and a blank line in the title ended \\section's argument ("Paragraph ended")."""
    write_reports(hostile_labels(), grids=None, out=tmp_path, html=False, latex=True, csv=False)
    tex = (tmp_path / "tables" / "hostile-smoke.tex").read_text()
    assert r"\section{Hostile labels}" in tex and "First.\n\nSecond." in tex  # paragraphs stay in the text
    seen = compile_all(tmp_path)
    assert seen["twocol-hostile-smoke.tex"]["tab:hostile-smoke"].startswith("table (")  # one metric: in the column
    text = pdf_text(tmp_path / "report.pdf")
    assert "[ours]" in text and "*star" in text and "Hostile labels" in text


@pytest.fixture(scope="module")
def shipped_copy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The committed example's .tex files and figures, copied (compiling never writes into the checkout)."""
    out = tmp_path_factory.mktemp("shipped")
    shutil.copy(EXAMPLE / "report.tex", out)
    shutil.copytree(EXAMPLE / "tables", out / "tables")
    shutil.copytree(EXAMPLE / "figures", out / "figures")
    return out


def test_the_shipped_tex_files_compile_with_every_table_in_its_page(shipped_copy: Path) -> None:
    seen = compile_all(shipped_copy)
    assert len(seen["report.tex"]) == 7  # the seven sections' tables, none scaled
    wide = seen["twocol-tokenizer-dims-cpu.tex"]["tab:tokenizer-dims-cpu"]
    assert wide.startswith("table* (\\small"), wide  # 12 value columns: across a two-column page, at \small
    # the headline findings: a table, one row per grid that tests a finding (kl_unnecessary: cpu and cpu_fitted)
    first = pdf_text(shipped_copy / "report.pdf").split("\f")[0]
    assert re.findall(r"kl_unnecessary +Sec\. (\d+) +(\w+)", first) == [("5", "agrees"), ("6", "inconclusive")]
    assert "no grid in this report tests it" not in first
    assert r"75.2 $\rightarrow$ 800" in (shipped_copy / "tables" / "epochs-cpu.tex").read_text()  # was "75.2 ? 800"


@pytest.mark.slow
def test_the_shipped_store_renders_latex_that_compiles_and_fits(tmp_path: Path, sweepdae: Any) -> None:
    """`sweepdae report --latex` on the shipped store (a copy), then every document compiles with every table in
    its page; the tables it writes are the committed ones (the example is rendered with the current templates)."""
    store = tmp_path / "store.journal"
    shutil.copy(EXAMPLE / "store.journal", store)
    out = tmp_path / "out"
    p = sweepdae(tmp_path, "report", "--latex", "--store", f"journal:{store}", "--out", str(out), "--runs-dir",
                 str(EXAMPLE / "runs"), timeout=600)
    assert p.returncode == 0, p.stderr
    for table in sorted((EXAMPLE / "tables").glob("*.tex")):
        assert (out / "tables" / table.name).read_text() == table.read_text(), table.name
    seen = compile_all(out)
    assert len(seen["report.tex"]) == 7
