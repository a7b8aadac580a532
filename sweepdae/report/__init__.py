"""sweepdae.report: the paper's tables and figures from the store, with the paper's numbers beside ours.

Data first, render second (as optuna's plots): `build_report(store, grids)` computes every table, finding, figure's
data and provenance summary as plain data (`ReportData`, what tests assert on); `write_reports` renders it:

    out/report.html              one self-contained page (inline CSS, figures as data URIs, no scripts)
    out/report.tex, tables/*.tex booktabs tables and a minimal document that inputs them (pdflatex report.tex)
    out/figures/*.svg|pdf        every figure
    out/data/<grid>.csv|json     the tidy data behind every table (one row per grid position and metric)
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import pandas as pd

from sweepdae.errors import SweepdaeError
from sweepdae.report.data import GridReport, ReportData, ReportStore, build_report, file_stem
from sweepdae.report.figures import FigureData, RenderedFigure, save_figure, write_atomic
from sweepdae.report.findings import compute_findings
from sweepdae.report.paper import HEADLINE_FINDINGS, PAPER, get_reference, paper_value
from sweepdae.report.render import render_html, render_tex_document, render_tex_section
from sweepdae.report.tables import TableData, build_table
from sweepdae.utils import plain

__all__ = ["HEADLINE_FINDINGS", "PAPER", "GridReport", "ReportData", "ReportStore", "TableData", "build_report",
           "build_table", "compute_findings", "default_runs_dir", "get_reference", "paper_value", "write_reports"]

# The tidy columns worth keeping in the CSV/JSON data (internal join columns are left out).
DATA_COLUMNS = ["grid", "profile", "row", "col", "metric", "mean", "std", "n", "n_cells", "n_done", "n_failed",
                "n_pending", "status", "state", "paper", "step", "row_i", "col_i"]


def _records(frame: pd.DataFrame) -> list[dict[str, Any]]:
    cols = [c for c in DATA_COLUMNS if c in frame.columns]
    return [{k: plain(v, strict=True) for k, v in rec.items()} for rec in frame[cols].to_dict("records")]


def _write(path: Path, text: str, written: list[Path], out: Path) -> None:
    # names are slugs or file_stem; this guards the rule: every file lands under --out (which may itself be "../x")
    if path.name in ("", ".", "..") or not path.resolve().is_relative_to(out.resolve()):
        raise SweepdaeError(f"report: refusing to write {path}: not a plain file name under {out}")
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, text)
    written.append(path)


# What a spreadsheet reads as a formula when a cell starts with it (OWASP, CSV injection): such text gets a
# leading ' so that it shows as the text it is. Numbers (-1.5, also a label such as "-8") stay numbers. A sign
# then a space, with nothing after it that calls or links (the paper's own step labels, "- class conditioning"),
# computes nothing and is kept as it is, so the data of a report already shipped reads the same.
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
_NUMBER = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")
_INERT_SIGNED = re.compile(r"[+-] [^=+\-@(|!\t\r\n\"']*")


def _csv_text(v: Any) -> Any:
    if (isinstance(v, str) and v.startswith(_FORMULA_START) and not _NUMBER.fullmatch(v)
            and not _INERT_SIGNED.fullmatch(v)):
        return "'" + v
    return v


def _write_data(report: ReportData, out: Path, written: list[Path]) -> None:
    by_grid: dict[str, list[GridReport]] = {}
    for s in report.sections:
        by_grid.setdefault(s.name, []).append(s)
    taken: set[str] = set()
    for name, sections in by_grid.items():
        stem = file_stem(name, taken)  # never the stored name unchecked: a shared store holds any name
        tidy = pd.concat([s.table.tidy for s in sections], ignore_index=True)
        cols = [c for c in DATA_COLUMNS if c in tidy.columns]
        text = tidy[cols].map(_csv_text) if hasattr(tidy, "map") else tidy[cols].applymap(_csv_text)
        _write(out / "data" / f"{stem}.csv", text.to_csv(index=False), written, out)
        doc = {"grid": name, "sweepdae": report.version, "created": report.created,
               "sections": [{"profile": s.profile, "spec": s.spec.to_json(), "scale": s.table.scale,
                             "citation": s.table.citation, "findings": [v.to_json() for v in s.findings],
                             "provenance": s.provenance.to_json(),
                             "rows": _records(s.table.tidy)} for s in sections]}
        _write(out / "data" / f"{stem}.json", json.dumps(doc, indent=1, default=str, allow_nan=False) + "\n", written,
               out)


def default_runs_dir(store: ReportStore) -> Path:
    """Where a report looks for the cells' folders when not told: $SWEEPDAE_RUNS, else ./runs when it exists,
    else `runs` beside a journal or SQLite store file, else ./runs. (The store keeps each folder relative to it.)"""
    if os.environ.get("SWEEPDAE_RUNS"):
        return Path(os.environ["SWEEPDAE_RUNS"])
    here = Path("runs")
    url, kind = str(getattr(store, "url", "")), getattr(store, "kind", None)
    prefix = {"journal": "journal:", "sqlite": "sqlite:///"}.get(str(kind))
    beside = Path(url.removeprefix(prefix)).parent / "runs" if prefix else None
    return beside if not here.is_dir() and beside is not None and beside.is_dir() else here


def write_reports(store: ReportStore, *, grids: list[str] | None, out: Path, html: bool, latex: bool,
                  csv: bool, runs_dir: Path | None = None) -> list[Path]:
    """Write the report of the named grids (None = every registered grid) under `out`; returns the files written.
    The cells' folders (their denoising examples) are looked up under `runs_dir` (default: `default_runs_dir`).

    Raises SweepdaeError when a named grid is not registered (the message lists the registered ones), and for
    any file it cannot write (each file is written whole or not at all).
    """
    report = build_report(store, grids, runs_dir=runs_dir if runs_dir is not None else default_runs_dir(store))
    out = Path(out)
    try:
        return _write_all(report, out, html=html, latex=latex, csv=csv)
    except OSError as e:  # a full disk, no permission, --out naming a file: one line, and no file half-written
        where = f"{e.filename}" if e.filename else f"under {out}"
        raise SweepdaeError(f"report: cannot write {where}: {e.strerror or e}") from None


def _write_all(report: ReportData, out: Path, *, html: bool, latex: bool, csv: bool) -> list[Path]:
    if out.exists() and not out.is_dir():
        raise SweepdaeError(f"report: the output folder {out} is a file; name a folder (it is created if missing)")
    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    rendered: dict[str, list[tuple[FigureData, RenderedFigure]]] = {}
    if html or latex:
        for s in report.sections:
            rendered[s.slug] = [(fd, save_figure(fd, out / "figures", f"{s.slug}-{fd.name}")) for fd in s.figures]
        for t in report.tunes:
            rendered[t.slug] = [(fd, save_figure(fd, out / "figures", f"{t.slug}-{fd.name}")) for fd in t.figures]
    if html:
        _write(out / "report.html", render_html(report, rendered), written, out)
    if latex:
        tables = []
        for s in report.sections:
            path = out / "tables" / f"{s.slug}.tex"
            _write(path, render_tex_section(s, rendered.get(s.slug, []), out), written, out)
            tables.append(path)
        _write(out / "report.tex", render_tex_document(report, tables, out), written, out)
    if csv:
        _write_data(report, out, written)
        for t in report.tunes:
            doc = {"study": t.study, "grid": t.grid, "profile": t.profile, "metric": t.metric,
                   "direction": t.direction, "counts": t.counts, "best": t.best, "trials": t.trials,
                   "importances": t.importances, "importance_note": t.importance_note}
            _write(out / "data" / f"{t.slug}.json",
                   json.dumps(plain(doc, strict=True), indent=1, allow_nan=False) + "\n", written, out)
    for figs in rendered.values():
        for _, rf in figs:
            written.extend([rf.svg, rf.pdf])
    return written
