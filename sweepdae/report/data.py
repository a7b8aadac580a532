"""The whole report as data: one `GridReport` per registered (grid, profile), built from the store's two calls.

Store inputs (the only ones used): `store.grids()` -> [{name, profile, spec (`Plan.spec()`), cells: [{key, label,
coords, step, seed?}]}] and `store.cells(keys)` -> a DataFrame with one row per key (key, label, status, recipe,
info, `metric.<name>`, ...); keys it leaves out are "new".
"""

from __future__ import annotations

import datetime as _dt
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import pandas as pd

from sweepdae import __version__
from sweepdae.errors import SweepdaeError
from sweepdae.report.figures import FigureData, figure_data
from sweepdae.report.findings import Verdict, compute_findings
from sweepdae.report.paper import HEADLINE_FINDINGS
from sweepdae.report.provenance import Provenance, summarize_provenance
from sweepdae.report.tables import TableData, build_table

__all__ = ["GridReport", "ReportData", "ReportStore", "build_report"]


class ReportStore(Protocol):
    """What a report reads from a store (`sweepdae.store.Store` satisfies it)."""

    def grids(self) -> list[dict[str, Any]]: ...

    def cells(self, keys: list[str] | None = None) -> pd.DataFrame: ...


@dataclass
class GridReport:
    """One section of the report: a grid under one profile."""

    name: str
    profile: str | None
    slug: str  # unique, [a-z0-9-] only: safe in file names, HTML ids and LaTeX \input
    spec: dict[str, Any]
    table: TableData
    findings: list[Verdict]
    figures: list[FigureData]
    provenance: Provenance
    n_cells: int

    @property
    def title(self) -> str:
        return str(self.spec.get("title") or self.name)

    @property
    def description(self) -> str:
        return str(self.spec.get("description") or "")


@dataclass
class ReportData:
    sections: list[GridReport]
    version: str = __version__
    created: str = ""
    headlines: list[dict[str, Any]] = field(default_factory=list)


def _slug(text: str, taken: set[str]) -> str:
    base = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "grid"
    slug, n = base, 2
    while slug in taken:
        slug, n = f"{base}-{n}", n + 1
    taken.add(slug)
    return slug


def _select(registered: list[dict[str, Any]], grids: list[str] | None) -> list[dict[str, Any]]:
    names = sorted({str(g.get("name")) for g in registered})
    if grids is None:
        if not registered:
            raise SweepdaeError("no grids are registered in the store yet; run `sweepdae run GRID` first")
        return sorted(registered, key=lambda g: (str(g.get("name")), str(g.get("profile"))))
    unknown = [g for g in grids if g not in names]
    if unknown:
        raise SweepdaeError(f"grid {unknown[0]!r} is not registered in the store; registered: "
                            + (", ".join(names) or "none"))
    order = {n: i for i, n in enumerate(dict.fromkeys(grids))}
    chosen = [g for g in registered if g.get("name") in order]
    return sorted(chosen, key=lambda g: (order[str(g.get("name"))], str(g.get("profile"))))


def _headlines(sections: list[GridReport]) -> list[dict[str, Any]]:
    out = []
    for h in HEADLINE_FINDINGS:
        verdicts = [{"section": s.slug, "title": s.title, "profile": s.profile, **v}
                    for s in sections for v in s.findings if v["finding"] in h.checks]
        out.append({"number": h.number, "text": h.text, "checks": list(h.checks), "verdicts": verdicts})
    return out


def build_report(store: ReportStore, grids: list[str] | None = None, *, runs_dir: Path | None = None) -> ReportData:
    """Tables, findings, figure data and provenance of the named grids (None = every registered grid); several
    profiles of one grid are separate sections; the cells' folders (denoising examples) are found under
    `runs_dir`. Raises SweepdaeError for a grid the store does not know."""
    selected = _select(list(store.grids()), grids)
    keys = list(dict.fromkeys(str(c["key"]) for g in selected for c in (g.get("cells") or []) if "key" in c))
    frame = store.cells(keys) if keys else None
    if frame is None or "key" not in getattr(frame, "columns", ()):
        frame = pd.DataFrame({"key": pd.Series([], dtype=str)})
    frame = frame.drop_duplicates("key", keep="last").set_index("key", drop=False)
    sections: list[GridReport] = []
    taken: set[str] = set()
    for g in selected:
        name = str(g.get("name"))
        profile = g.get("profile")
        spec: dict[str, Any] = dict(g.get("spec") or {})
        spec.setdefault("name", name)
        cells: list[Mapping[str, Any]] = [c for c in (g.get("cells") or []) if "key" in c]
        own = frame.loc[frame.index.intersection([str(c["key"]) for c in cells])].reset_index(drop=True)
        table = build_table(spec, own, cells, profile=profile, runs_dir=runs_dir)
        sections.append(GridReport(name=name, profile=profile, slug=_slug(f"{name}-{profile or 'base'}", taken),
                                   spec=spec, table=table, findings=compute_findings(spec, table),
                                   figures=figure_data(table), provenance=summarize_provenance(own),
                                   n_cells=len(cells)))
    created = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return ReportData(sections=sections, created=created, headlines=_headlines(sections))
