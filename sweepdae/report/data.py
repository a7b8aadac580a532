"""The whole report as data: one `GridReport` per registered (grid, profile), built from the store's two calls.

Store inputs (the only ones used): `store.grids()` -> [{name, profile, spec (`Plan.spec()`), cells: [{key, label,
coords, step, seed?}]}] and `store.cells(keys)` -> a DataFrame with one row per key (key, label, status, recipe,
info, `metric.<name>`, ...); keys it leaves out are "new".
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import re
from collections.abc import Mapping
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import pandas as pd

from sweepdae import __version__
from sweepdae.errors import SweepdaeError
from sweepdae.grid.spec import GridSpec
from sweepdae.report.figures import FigureData, curve_figure, figure_data, tune_history_figure
from sweepdae.report.findings import Verdict, compute_findings
from sweepdae.report.paper import HEADLINE_FINDINGS, Headline
from sweepdae.report.provenance import Provenance, summarize_provenance
from sweepdae.report.tables import TableData, build_table

__all__ = ["GridReport", "HeadlineVerdicts", "ReportData", "ReportStore", "TuneReport", "build_report", "file_stem",
           "tune_reports"]


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
    spec: GridSpec
    table: TableData
    findings: list[Verdict]
    figures: list[FigureData]
    provenance: Provenance
    n_cells: int

    @property
    def title(self) -> str:
        return self.spec.title or self.name

    @property
    def description(self) -> str:
        return self.spec.description


@dataclass
class TuneReport:
    """A `sweepdae tune` study: its best recipe, every trial, the history and the parameter importances."""

    study: str
    grid: str
    profile: str
    metric: str
    direction: str
    slug: str
    counts: dict[str, int]  # complete, pruned, failed, running
    best: dict[str, Any] | None  # {number, value, params, per_seed, cells}
    trials: list[dict[str, Any]]  # {number, state, value, params, note}
    importances: dict[str, float]
    importance_note: str
    figures: list[FigureData]


@dataclass
class HeadlineVerdicts:
    """A headline finding of the paper and the verdict of every section that tests it."""

    headline: Headline
    verdicts: list[tuple[GridReport, Verdict]]


@dataclass
class ReportData:
    sections: list[GridReport]
    version: str = __version__
    created: str = ""
    headlines: list[HeadlineVerdicts] = field(default_factory=list)
    tunes: list[TuneReport] = field(default_factory=list)


def _slug(text: str, taken: set[str]) -> str:
    base = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:80].strip("-") or "grid"  # a file name's length
    slug, n = base, 2
    while slug in taken:
        slug, n = f"{base}-{n}", n + 1
    taken.add(slug)
    return slug


# A grid name used as it is in a file name (data/<name>.csv): letters, digits, _ . + -, not starting with a dot.
_SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+-]{0,99}")


def file_stem(name: str, taken: set[str]) -> str:
    """A file-name stem for a grid's data files: its name when that is a safe file name, else a slug of it plus a
    hash of the name. Names come back from a store, which may be shared and holds whatever a grid was registered
    as (`../../x`); a file of the report is never named by them unchecked. Unique within `taken` (compared case
    folded, as a macOS or Windows folder would)."""
    stem = name if _SAFE_NAME.fullmatch(name) and ".." not in name else (
        (re.sub(r"[^A-Za-z0-9_+-]+", "-", name).strip("-")[:60] or "grid") + "-"
        + hashlib.sha256(name.encode("utf-8", "surrogatepass")).hexdigest()[:8])
    out, n = stem, 2
    while out.casefold() in taken:
        out, n = f"{stem}-{n}", n + 1
    taken.add(out.casefold())
    return out


def _select(registered: list[dict[str, Any]], grids: list[str] | None, tuned: AbstractSet[str] = frozenset()
            ) -> list[dict[str, Any]]:
    """The registered grids named (all when None); a name that only a tune study knows selects no section."""
    names = sorted({str(g.get("name")) for g in registered})
    if grids is None:
        if not registered and not tuned:
            raise SweepdaeError("no grids are registered in the store yet; run `sweepdae run GRID` first")
        return sorted(registered, key=lambda g: (str(g.get("name")), str(g.get("profile"))))
    unknown = [g for g in grids if g not in names and g not in tuned]
    if unknown:
        raise SweepdaeError(f"grid {unknown[0]!r} is not registered in the store; registered: "
                            + (", ".join(sorted({*names, *tuned})) or "none"))
    order = {n: i for i, n in enumerate(dict.fromkeys(grids))}
    chosen = [g for g in registered if g.get("name") in order]
    return sorted(chosen, key=lambda g: (order[str(g.get("name"))], str(g.get("profile"))))


def _tuned_grids(studies: list[Any], registered: list[dict[str, Any]], grids: list[str] | None
                 ) -> list[dict[str, Any]]:
    """A grid entry (as `store.grids()` gives one) per tune study whose grid and profile no `run` registered: the
    cells its trials ran, one row per point the search tried (its seeds averaged), so that a store that only
    `sweepdae tune` filled still shows every cell's result and training curve, not just the study."""
    have = {(str(g.get("name")), str(g.get("profile") or "")) for g in registered}
    found: dict[tuple[str, str], dict[str, Any]] = {}
    for study in studies:
        attrs = study.user_attrs
        name, profile = str(attrs.get("grid", "")), str(attrs.get("profile") or "")
        if not name or (name, profile) in have or (grids is not None and name not in grids):
            continue
        entry = found.setdefault((name, profile), {
            "name": name, "profile": profile or None, "cells": [],
            "spec": {"name": name, "title": f"{name}: the cells of its tune trials",
                     "description": "Every cell that `sweepdae tune` ran for this grid, one row per point it tried.",
                     "mirrors": "", "profile": profile or None, "profile_description": "", "axes": [], "steps": [],
                     "report": {"rows": "label", "cols": None, "metrics": [], "findings": []}, "path": ""}})
        metrics = entry["spec"]["report"]["metrics"]
        if str(attrs.get("metric", "probe_top1")) not in metrics:
            metrics.append(str(attrs.get("metric", "probe_top1")))
        seen = {c["key"] for c in entry["cells"]}
        for t in study.get_trials(deepcopy=False):
            keys, labels = t.user_attrs.get("cells") or [], t.user_attrs.get("labels") or []
            for key, label in zip(keys, labels, strict=False):
                if not isinstance(key, str) or key in seen:
                    continue
                seen.add(key)
                seed = re.search(r"seed=(\d+)$", str(label))
                coords = {str(k): str(v) for k, v in t.params.items()}
                entry["cells"].append({"key": key, "label": str(label), "step": None,
                                       "coords": {**coords, "seed": seed.group(1) if seed else "0"}})
    return [e for e in found.values() if e["cells"]]


def _headlines(sections: list[GridReport]) -> list[HeadlineVerdicts]:
    return [HeadlineVerdicts(h, [(s, v) for s in sections for v in s.findings if v.finding in h.checks])
            for h in HEADLINE_FINDINGS]


def build_report(store: ReportStore, grids: list[str] | None = None, *, runs_dir: Path | None = None) -> ReportData:
    """Tables, findings, figure data and provenance of the named grids (None = every registered grid); several
    profiles of one grid are separate sections; the cells' folders (denoising examples) are found under
    `runs_dir`. Raises SweepdaeError for a grid the store does not know."""
    reader = getattr(store, "tune_studies", None)
    studies = list(reader()) if callable(reader) else []
    tuned = {str(st.user_attrs.get("grid", "")) for st in studies}
    registered = list(store.grids())
    selected = _select(registered, grids, tuned) + _tuned_grids(studies, registered, grids)
    keys = list(dict.fromkeys(str(c["key"]) for g in selected for c in (g.get("cells") or []) if "key" in c))
    frame = store.cells(keys) if keys else None
    if frame is None or "key" not in getattr(frame, "columns", ()):
        frame = pd.DataFrame({"key": pd.Series([], dtype=str)})
    frame = frame.drop_duplicates("key", keep="last").set_index("key", drop=False)
    sections: list[GridReport] = []
    taken: set[str] = set()
    reader = getattr(store, "training_curves", None)  # a store that keeps loss curves (sweepdae's Store does)
    curves: dict[str, dict[str, Any]] = reader() if callable(reader) else {}
    for g in selected:
        name = str(g.get("name"))
        profile = g.get("profile")
        stored = g.get("spec")
        spec = GridSpec.from_json(stored if isinstance(stored, Mapping) else {}, name=name)
        cells: list[Mapping[str, Any]] = [c for c in (g.get("cells") or []) if "key" in c]
        own = frame.loc[frame.index.intersection([str(c["key"]) for c in cells])].reset_index(drop=True)
        table = build_table(spec, own, cells, profile=profile, runs_dir=runs_dir)
        figures = figure_data(table)
        trained = list(dict.fromkeys(str(c["train_key"]) for c in cells if c.get("train_key")))
        if not trained and "train_key" in own:  # cells a tune study ran: their trainings are on their results
            trained = list(dict.fromkeys(str(k) for k in own["train_key"] if isinstance(k, str) and k))
        loss = curve_figure([curves[tk] for tk in trained if tk in curves])
        if loss is not None:
            figures.append(loss)
        sections.append(GridReport(name=name, profile=profile, slug=_slug(f"{name}-{profile or 'base'}", taken),
                                   spec=spec, table=table, findings=compute_findings(spec, table),
                                   figures=figures, provenance=summarize_provenance(own),
                                   n_cells=len(cells)))
    created = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    names = set(grids) if grids else None
    return ReportData(sections=sections, created=created, headlines=_headlines(sections),
                      tunes=tune_reports(store, names, taken, studies=studies))


def tune_reports(store: ReportStore, grids: set[str] | None, taken: set[str], *, studies: list[Any] | None = None
                 ) -> list[TuneReport]:
    """Every tune study of the store (of `grids` when given), as report data."""
    import optuna  # a quarter second to import: loaded when a report is built, not with the package
    from optuna.trial import TrialState

    if studies is None:
        reader = getattr(store, "tune_studies", None)
        studies = list(reader()) if callable(reader) else []
    out: list[TuneReport] = []
    for study in studies:
        attrs = study.user_attrs
        grid = str(attrs.get("grid", ""))
        if grids is not None and grid not in grids:
            continue
        metric = str(attrs.get("metric", "value"))
        direction = study.direction.name.lower()
        trials = study.get_trials(deepcopy=False)
        complete = [t for t in trials if t.state == TrialState.COMPLETE and t.value is not None]
        rows, history = [], []
        best_v: float | None = None
        for t in trials:
            note = str(t.user_attrs.get("pruned") or t.user_attrs.get("error") or
                       (f"duplicate of trial {t.user_attrs['duplicate_of']}" if "duplicate_of" in t.user_attrs
                        else ""))
            rows.append({"number": t.number, "state": t.state.name.lower(), "value": t.value,
                         "params": dict(t.params), "note": note})
            if t in complete:
                v = float(t.value)  # type: ignore[arg-type]
                better = best_v is None or (v > best_v if direction == "maximize" else v < best_v)
                best_v = v if better else best_v
                history.append({"number": t.number, "value": v, "best": best_v})
        best = None
        if complete:
            b = study.best_trial
            best = {"number": b.number, "value": b.value, "params": dict(b.params),
                    "per_seed": b.user_attrs.get("per_seed"), "cells": b.user_attrs.get("labels")}
        importances: dict[str, float] = {}
        note = ""
        varied = {k for t in complete for k in t.params if len({str(u.params.get(k)) for u in complete}) > 1}
        if len(complete) < 3 or not varied:
            note = "parameter importances need 3 complete trials that vary a parameter"
        else:
            try:
                found = optuna.importance.get_param_importances(study, params=sorted(varied))
                importances = {k: float(v) for k, v in found.items()}
                note = (f"fANOVA (Optuna's default evaluator) over the {len(complete)} complete trials, of the "
                        "parameters they vary; few trials make it rough")
            except (RuntimeError, ValueError) as e:
                note = f"no importances: {e}"
        slug = _slug(f"tune-{grid}-{attrs.get('profile') or 'base'}-{metric}", taken)
        figures = [tune_history_figure(study.study_name, metric, direction, history)] if history else []
        counts = {s: sum(1 for t in trials if t.state.name.lower() == s)
                  for s in ("complete", "pruned", "fail", "running")}
        out.append(TuneReport(study=study.study_name, grid=grid, profile=str(attrs.get("profile") or ""),
                              metric=metric, direction=direction, slug=slug, counts=counts, best=best, trials=rows,
                              importances=importances, importance_note=note, figures=figures))
    return out
