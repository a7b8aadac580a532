"""Look at the LaTeX report as a reader would: `sweepdae report --latex` on a store (default: a copy of the shipped
example's), report.tex through pdflatex, its pages to PNG with poppler's pdftoppm; prints the overfull boxes, where
and at what size each table went (or that it had to be scaled), the page count and which page holds which table.

    python benchmarks/latex_pages.py [--store URL --runs-dir DIR] [--out /tmp/latex_pages]
                                     [--pages 1,3] [--dpi 80] [--twocolumn]

--twocolumn also compiles each tables/*.tex alone in a two-column page (3.25 in columns, as ICML or CVPR), the
layout in which a table must fit its column or go across the page, and renders those pages too. Needs pdflatex
and pdftoppm (.ci/setup --dev installs both).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "reports" / "examples" / "cpu"
ENV = {**os.environ, "max_print_line": "10000"}  # log lines unwrapped, so one table's line is one line
TWOCOLUMN = r"""\documentclass[twocolumn]{article}
\usepackage[T1]{fontenc}
\usepackage[utf8]{inputenc}
\usepackage{lmodern}
\usepackage[text={6.75in,9in},columnsep=0.25in]{geometry}
\usepackage{booktabs,graphicx}
\begin{document}
\input{tables/%s}
\end{document}
"""


def pdflatex(folder: Path, name: str) -> tuple[float, str]:
    t0 = time.perf_counter()
    for _ in range(2):  # twice: the \ref's to sections resolve on the second run
        run = subprocess.run(["pdflatex", "-interaction=nonstopmode", "-halt-on-error", name], cwd=folder,
                             capture_output=True, text=True, timeout=300, env=ENV)
        if run.returncode != 0:
            sys.exit(f"pdflatex {name} failed:\n{run.stdout[-2000:]}")
    return time.perf_counter() - t0, (folder / name).with_suffix(".log").read_text(errors="replace")


def summary(log: str) -> str:
    over = [float(x) for x in re.findall(r"Overfull \\hbox \(([\d.]+)pt too wide\)", log)]
    placed = re.findall(r"^sweepdae: table (\S+) as (.*)$", log, flags=re.M)
    widest = f", widest {max(over):.1f} pt" if over else ""
    return f"{len(over)} overfull \\hbox{widest}" + "".join(f"\n  {t}: {how}" for t, how in placed)


def pages_png(pdf: Path, dest: Path, pages: list[int] | None, dpi: int) -> list[Path]:
    info = subprocess.run(["pdfinfo", str(pdf)], capture_output=True, text=True, check=True).stdout
    n = int(re.search(r"^Pages:\s+(\d+)", info, flags=re.M).group(1))  # type: ignore[union-attr]
    out = []
    for p in pages or range(1, n + 1):
        if p > n:
            continue
        stem = dest / f"{pdf.stem}-p{p:02d}"
        subprocess.run(["pdftoppm", "-png", "-r", str(dpi), "-f", str(p), "-l", str(p), "-singlefile", str(pdf),
                        str(stem)], check=True)
        out.append(stem.with_suffix(".png"))
    print(f"{pdf.name}: {n} pages")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--store", default="", help="default: a copy of the shipped example's store")
    ap.add_argument("--runs-dir", default="", help="the cells' folders (default: the shipped example's)")
    ap.add_argument("--out", type=Path, default=Path("/tmp/latex_pages"))
    ap.add_argument("--pages", default="", help="comma-separated page numbers of report.pdf (default: all)")
    ap.add_argument("--dpi", type=int, default=80)
    ap.add_argument("--twocolumn", action="store_true")
    a = ap.parse_args()
    for tool in ("pdflatex", "pdftoppm", "pdfinfo"):
        if not shutil.which(tool):
            sys.exit(f"{tool} not found: run .ci/setup --dev (texlive-latex-base, poppler-utils)")
    if a.out.exists():
        shutil.rmtree(a.out)
    sweepdae = shutil.which("sweepdae") or str(ROOT / ".venv/bin/sweepdae")
    t0 = time.perf_counter()
    store, runs = a.store, a.runs_dir
    if not store:  # a copy: reading never touches the committed store
        a.out.mkdir(parents=True)
        shutil.copy(EXAMPLE / "store.journal", a.out / "store.journal")
        store, runs = f"journal:{a.out / 'store.journal'}", runs or str(EXAMPLE / "runs")
    subprocess.run([sweepdae, "report", "--latex", "--store", store, "--out", str(a.out),
                    *(["--runs-dir", runs] if runs else [])], check=True, capture_output=True)
    print(f"sweepdae report --latex: {time.perf_counter() - t0:.1f} s")
    png = a.out / "png"
    png.mkdir()
    seconds, log = pdflatex(a.out, "report.tex")
    print(f"report.tex: pdflatex x2 {seconds:.1f} s; {summary(log)}")
    for label, page in re.findall(r"\\newlabel\{(tab:[^}]*)\}\{\{[^}]*\}\{(\d+)\}", (a.out / "report.aux").read_text()):
        print(f"  {label}: page {page}")
    pages = [int(p) for p in a.pages.split(",") if p.strip()] or None
    for p in pages_png(a.out / "report.pdf", png, pages, a.dpi):
        print(f"  {p}")
    if a.twocolumn:
        for table in sorted((a.out / "tables").glob("*.tex")):
            doc = a.out / f"twocol-{table.stem}.tex"
            doc.write_text(TWOCOLUMN % table.stem)
            seconds, log = pdflatex(a.out, doc.name)
            print(f"{doc.name}: {seconds:.1f} s; {summary(log)}")
            for p in pages_png(doc.with_suffix(".pdf"), png, None, a.dpi):
                print(f"  {p}")


if __name__ == "__main__":
    main()
