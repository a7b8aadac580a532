"""A grid's results as data: a tidy frame (one row per grid position and metric) and the pivoted display frame.

Positions are the grid's cells grouped over seeds. Values are means over the seeds that finished (std when more
than one did); a position nobody finished shows "pending" (new, queued, running) or "failed", never a number.
The paper's numbers sit in a "paper" sub-row under each of our rows, matched by the grid's axis labels.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from pandas.core.groupby import DataFrameGroupBy

from sweepdae.errors import SweepdaeError
from sweepdae.grid.spec import AxisSpec, GridSpec
from sweepdae.metrics import METRICS, MetricInfo, metric_info
from sweepdae.recipe import recipe_from_dict
from sweepdae.report.paper import PAPER_SCALE, get_reference, paper_value

__all__ = ["METRICS", "MetricInfo", "TableData", "build_table", "metric_info", "scale_line"]

PENDING = ("new", "queued", "running")
# What the findings read per seed, whether or not the grid's [report] lists them (REPRODUCTION.md: readouts; the
# last, the regime gate's baseline).
FINDING_METRICS = ("probe_top1", "knn_top1", "probe_gain", "fid", "random_features_probe_top1")


@dataclass
class TableData:
    """Everything a renderer needs for one grid (under one profile); `display`, `bold` and `state` align."""

    grid: str
    profile: str | None
    mirrors: str
    row_dim: str | None
    col_dim: str | None
    metrics: list[str]
    trajectory: bool  # rows are trajectory steps (deltas vs the previous step are shown)
    tidy: pd.DataFrame  # row, col, metric, mean, std, n, n_cells, status, state, paper, step, ...
    positions: pd.DataFrame  # one row per grid position: row, col, step, keys, recipe, denoising, counts
    seeds: pd.DataFrame  # one row per finished cell and metric: row_i, col_i, row, col, seed, metric, value
    display: pd.DataFrame  # index (row label, "ours" | "paper"), columns = headers; strings
    bold: pd.DataFrame  # bool, best value per column
    state: pd.DataFrame  # done | partial | pending | failed | n/a | paper | empty
    scale: str
    citation: str | None
    notes: list[str] = field(default_factory=list)


def _resolve(dim: str | None, axes: Sequence[AxisSpec]) -> str | None:
    """A report dimension (axis name, knob path, "step", "seed", "label") -> the coordinate name cells carry."""
    if dim is None or dim in ("step", "seed", "label"):
        return dim
    for a in axes:
        if dim == a.name or dim in a.paths:
            return a.name
    return dim


def _strip_seed(label: str) -> str:
    return re.sub(r"\s*seed=\d+$", "", str(label))


def _coord(dim: str, cell: Mapping[str, Any], steps: list[str]) -> tuple[str | None, int | None]:
    """A cell's label along `dim` and, for steps, the step index (the order)."""
    coords = cell.get("coords") or {}
    if dim == "step":
        step = cell.get("step")
        if isinstance(step, int) and 0 <= step < len(steps):
            return steps[step], step
        return (str(coords["step"]), None) if "step" in coords else (None, None)
    if dim == "seed":
        seed = coords.get("seed", cell.get("seed"))
        return (None, None) if seed is None else (str(seed), None)
    if dim == "label":
        return _strip_seed(str(cell.get("label", ""))), None
    value = coords.get(dim)
    return (None, None) if value is None else (str(value), None)


def _order(dim: str | None, labels: Iterable[str], axes: Sequence[AxisSpec], steps: list[str]) -> dict[str, int]:
    """Label -> position: the axis' (or trajectory's) own order, then first appearance for anything else."""
    known: list[str] = []
    if dim == "step":
        known = list(steps)
    elif dim == "seed":
        known = sorted({x for x in labels if x.isdigit()}, key=int)
    else:
        known = next((list(a.labels) for a in axes if a.name == dim), [])
    out = {x: i for i, x in enumerate(known)}
    for x in labels:
        out.setdefault(x, len(out))
    return out


def _fmt(v: float, digits: int) -> str:
    return f"{v:.{digits}f}"


def _numeric_label(s: str) -> bool:
    return bool(re.fullmatch(r"-?\d+(\.\d+)?", s))


def build_table(spec: GridSpec | Mapping[str, Any], cells_df: pd.DataFrame, grid_cells: Sequence[Mapping[str, Any]],
                *, profile: str | None = None, runs_dir: Path | None = None) -> TableData:
    """The tidy data and display frame of one grid from its spec (`Plan.grid_spec()` or its stored form), the
    store's cell frame and the grid's registered cells; the cells' folders are found under `runs_dir`."""
    spec = GridSpec.of(spec)
    metrics, axes, steps, mirrors = list(spec.report.metrics), spec.axes, list(spec.steps), spec.mirrors
    row_dim, col_dim = _resolve(spec.report.rows, axes), _resolve(spec.report.cols, axes)
    if row_dim is None and col_dim is None and steps:
        row_dim = "step"
    ref = get_reference(mirrors)
    extras = [a.name for a in axes if a.name not in (row_dim, col_dim)]
    if steps and "step" not in (row_dim, col_dim):
        extras.append("step")
    pos = _positions(grid_cells, row_dim, col_dim, extras, steps)
    # -- join the store's results ------------------------------------------------------------------------------
    df = cells_df if cells_df is not None else pd.DataFrame()
    if "key" in df.columns:
        df = df.drop_duplicates("key", keep="last").set_index("key")
    got = df.reindex(pos["key"])
    pos["recipe"] = list(got["recipe"]) if "recipe" in got else [None] * len(pos)
    split_notes = _place_rows(pos, extras, row_dim, col_dim, axes, steps)
    _seed_values(pos, got, metrics, runs_dir)
    g = pos.groupby(["row_i", "col_i"], sort=True)
    agg = _aggregate(pos, g)
    tidy = _tidy(agg, g, metrics, mirrors, by_traj=ref is not None and ref.kind == "trajectory")
    seeds = _per_seed(pos, [*dict.fromkeys([*metrics, *FINDING_METRICS])])
    up = {(ri, ci): _upsampled(r) for ri, ci, r in zip(agg["row_i"], agg["col_i"], agg["recipe"], strict=True)}
    tidy["upsampled"] = [up.get((ri, ci), False) for ri, ci in zip(tidy["row_i"], tidy["col_i"], strict=True)]
    tidy["state"] = np.select(
        [tidy["n"] > 0, tidy["n_done"] > 0, tidy["n_pending"] > 0],
        [np.where(tidy["n"] < tidy["n_cells"], "partial", "done"), "n/a", "pending"], default="failed")
    tidy.insert(0, "grid", spec.name)
    tidy.insert(1, "profile", profile)
    display, bold, state, notes = _pivot(tidy, metrics, row_dim, col_dim)
    notes[:0] = split_notes
    citation = ref.citation if ref else None
    if ref and ref.note:
        notes.append(f"{citation}: {ref.note}.")
    flagged = agg[[up.get((ri, ci), False) for ri, ci in zip(agg["row_i"], agg["col_i"], strict=True)]]
    if len(flagged):
        where = ", ".join(" ".join(str(v) for v in (r, c) if v) for r, c in zip(flagged["row"], flagged["col"],
                                                                                 strict=True))
        notes.append(f"upsampled: {where} (images resized up from smaller originals: pixels the data never had).")
    recipes = [r for r in pos["recipe"] if isinstance(r, Mapping)]
    return TableData(grid=spec.name, profile=profile, mirrors=mirrors, row_dim=row_dim,
                     col_dim=col_dim, metrics=metrics, trajectory=row_dim == "step", tidy=tidy, positions=agg,
                     seeds=seeds, display=display, bold=bold, state=state, citation=citation, notes=notes,
                     scale=scale_line(recipes, profile, spec.profile_description))


def _positions(grid_cells: Sequence[Mapping[str, Any]], row_dim: str | None, col_dim: str | None, extras: list[str],
               steps: list[str]) -> pd.DataFrame:
    """One row per registered cell: its key, row and column labels, step, seed and the labels of the other axes
    (`x:<axis>`)."""
    recs: list[dict[str, Any]] = []
    for c in grid_cells:
        coords = c.get("coords") or {}
        row, rstep = _coord(row_dim, c, steps) if row_dim else ("", None)
        included = "include" in coords  # an [[include]] cell: on no axis, its row is its own label
        if row is None or (included and not row):
            row = str(coords.get("include") or _strip_seed(str(c.get("label", ""))))
        col, cstep = _coord(col_dim, c, steps) if col_dim else ("", None)
        rec: dict[str, Any] = {"key": str(c["key"]), "row_base": row, "col": col if col is not None else "other",
                               "step": c.get("step") if isinstance(c.get("step"), int) else None,
                               "seed": _coord("seed", c, steps)[0], "included": included,
                               "where": _where(coords, c.get("step"))}
        for e in extras:
            rec[f"x:{e}"] = _coord(e, c, steps)[0]
        recs.append(rec)
    return pd.DataFrame(recs, columns=["key", "row_base", "col", "step", "seed", "included", "where",
                                       *[f"x:{e}" for e in extras]])


def _place_rows(pos: pd.DataFrame, extras: list[str], row_dim: str | None, col_dim: str | None,
                axes: Sequence[AxisSpec], steps: list[str]) -> list[str]:
    """Name and order the rows and columns of `pos` in place (`row`, `row_i`, `col_i`): an axis neither rows nor
    columns show, and that varies, adds its label to the row. Returns the notes of rows split by recipe."""
    axis_cells = ~pos["included"].astype(bool)
    varying = [e for e in extras if pos.loc[axis_cells, f"x:{e}"].nunique(dropna=True) > 1]
    row_orders = [("row_base", _order(row_dim, pos["row_base"].unique(), axes, steps))]
    row_orders += [(f"x:{e}", _order(e, pos[f"x:{e}"].dropna().unique(), axes, steps)) for e in varying]
    for name, order in row_orders:
        pos[f"o:{name}"] = pos[name].map(order).fillna(-1).astype(int)
    if varying:
        parts = [[(x if e == "step" else f"{e}={x}") for x in pos[f"x:{e}"].astype(str)] for e in varying]
        pos["row"] = [base if inc else f"{base} ({', '.join(p)})" if base else ", ".join(p)
                      for base, inc, p in zip(pos["row_base"], pos["included"], zip(*parts, strict=True),
                                              strict=True)]
    else:
        pos["row"] = pos["row_base"]
    blank = pos["row"].eq("")
    if blank.any() and not blank.all() and all(w == () for w in pos.loc[blank, "where"]):
        pos.loc[blank, "row"] = "base"  # the grid's base point (no axis) beside [[include]] rows: name it
    split_notes = _split_mixed(pos)
    col_order = _order(col_dim, pos["col"].unique(), axes, steps)
    pos["col_i"] = pos["col"].map(col_order).astype(int)
    ranked = pos.sort_values([f"o:{n}" for n, _ in row_orders], kind="stable")["row"].drop_duplicates()
    pos["row_i"] = pos["row"].map({r: i for i, r in enumerate(ranked)}).astype(int)
    return split_notes


def _seed_values(pos: pd.DataFrame, got: pd.DataFrame, metrics: list[str], runs_dir: Path | None) -> None:
    """Each cell's status, its metrics where it is done (`v:<metric>`, NaN elsewhere) and its denoising examples,
    set in `pos` from the store's rows `got` (aligned with `pos`)."""
    pos["status"] = (got["status"].to_numpy() if "status" in got else np.full(len(pos), None))
    pos["status"] = pos["status"].fillna("new").astype(str)
    done = (pos["status"] == "done").to_numpy()
    for m in dict.fromkeys([*metrics, *FINDING_METRICS]):
        col = f"metric.{m}"
        vals = pd.to_numeric(got[col], errors="coerce").to_numpy(dtype=float) if col in got else np.full(len(pos),
                                                                                                       np.nan)
        pos[f"v:{m}"] = np.where(done, vals, np.nan)
    pos["denoising"] = [_artifact(i, runs_dir) for i in (got["info"] if "info" in got else [None] * len(pos))]


def _aggregate(pos: pd.DataFrame, g: DataFrameGroupBy) -> pd.DataFrame:
    """One row per grid position (`g`: `pos` grouped by row_i, col_i): labels, step, keys, a recipe, denoising
    examples and the counts of its cells by status."""
    first = g.first()
    counts = pd.crosstab([pos["row_i"], pos["col_i"]], pos["status"])
    agg = pd.DataFrame({"row": first["row"], "row_base": first["row_base"], "col": first["col"],
                        "step": g["step"].agg(lambda s: s.iloc[0] if s.nunique(dropna=False) == 1 else None),
                        "keys": g["key"].agg(list), "n_cells": g.size()})
    agg["recipe"] = g["recipe"].agg(lambda s: next((r for r in s if isinstance(r, Mapping)), None))
    agg["denoising"] = g["denoising"].agg(lambda s: next((p for p in s if p), None))
    statuses = [s for s in ("done", "running", "queued", "new", "failed") if s in counts.columns]
    statuses += [s for s in counts.columns if s not in statuses]
    counts = counts.reindex(agg.index, fill_value=0)
    agg["n_done"] = counts["done"] if "done" in counts else 0
    agg["n_failed"] = counts["failed"] if "failed" in counts else 0
    agg["n_pending"] = sum((counts[s] for s in PENDING if s in counts), start=pd.Series(0, index=agg.index))
    summary = [", ".join(f"{int(n)} {s}" for s, n in zip(statuses, vals, strict=True) if n)
               for vals in counts[statuses].to_numpy()]
    agg["status"] = summary
    return agg.reset_index()


def _tidy(agg: pd.DataFrame, g: DataFrameGroupBy, metrics: list[str], mirrors: str, *, by_traj: bool) -> pd.DataFrame:
    """One row per position and metric: mean, std and count over the seeds that finished, and the paper's value
    (by trajectory step, or by row and column label)."""
    tidy_parts = []
    for m in metrics:
        t = agg[["row", "row_base", "col", "row_i", "col_i", "step", "n_cells", "n_done", "n_failed", "n_pending",
                 "status"]].copy()
        t.insert(3, "metric", m)
        stats = g[f"v:{m}"].agg(["mean", "std", "count"]).reset_index(drop=True)
        t["mean"], t["std"], t["n"] = stats["mean"].to_numpy(), stats["std"].to_numpy(), stats["count"].to_numpy()
        t["paper"] = [paper_value(mirrors, None, None, m, step=s) if by_traj else
                      paper_value(mirrors, rb or None, c or None, m)
                      for rb, c, s in zip(t["row_base"], t["col"], t["step"], strict=True)]
        t["paper"] = t["paper"].astype(float)
        tidy_parts.append(t)
    return pd.concat(tidy_parts, ignore_index=True)


def _where(coords: Mapping[str, Any], step: Any) -> tuple[tuple[str, str], ...]:
    """A cell's place in its grid apart from its seed: its coordinates (axes, trajectory step, include label)."""
    out = {str(k): str(v) for k, v in coords.items() if k != "seed"}
    if isinstance(step, int):
        out["step#"] = str(step)
    return tuple(sorted(out.items()))


def _flat(d: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """A stored recipe as dotted knob path -> JSON text, without its seed (what seeds of one position share)."""
    out: dict[str, str] = {}
    for k, v in d.items():
        path = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(_flat(v, f"{path}."))
        elif path != "seed":
            out[path] = json.dumps(v, sort_keys=True, default=str)
    return out


def _identity(recipe: Mapping[str, Any]) -> dict[str, str] | None:
    """What the cell's key hashes apart from the seed (knobs a step reads), or None for a recipe of an older
    schema that no longer validates. Two recipes may differ in a knob nothing reads and still be seeds of one
    recipe: a key shared by two grids keeps the recipe of whichever grid queued it first."""
    try:
        r = recipe_from_dict(dict(recipe))
    except SweepdaeError:
        return None
    ident = {**r.train_identity(), **r.eval_identity()}
    return {k: json.dumps(v, sort_keys=True, default=str) for k, v in ident.items() if k != "seed"}


def _split_mixed(pos: pd.DataFrame) -> list[str]:
    """Give a row of its own to every recipe of a grid position: a report row holds only cells that differ by
    seed alone, so a mean over them is a mean over seeds. Positions share a row label when two grid points (or an
    axis point and an [[include]]) carry one label -- stores planned before such grids were refused -- and their
    cells must never be averaged as if they were seeds. Renames `pos["row"]` in place; returns the notes."""
    moved: list[str] = []
    rows = pos["row"].tolist()
    for (row, _col), idx in pos.groupby(["row", "col"], sort=False).indices.items():
        if len(idx) < 2:
            continue
        places = {i: pos["where"].iat[i] for i in idx}
        flats = {i: _flat(r) for i in idx if isinstance(r := pos["recipe"].iat[i], Mapping)}
        # the cheap test first (stored recipes equal on every knob both name); parse only when they are not
        shared = set.intersection(*(set(f) for f in flats.values())) if flats else set()
        differ = {p for p in shared if len({f[p] for f in flats.values()}) > 1}
        idents: dict[int, dict[str, str]] = {}
        if differ:
            for i, f in flats.items():
                idents[i] = _identity(pos["recipe"].iat[i]) or {p: f[p] for p in differ}
            shared = set.intersection(*(set(f) for f in idents.values()))
            differ = {p for p in shared if len({f[p] for f in idents.values()}) > 1}
        if len(set(places.values())) < 2 and not differ:
            continue
        knobs = sorted(differ)
        for i in idx:
            place = ", ".join(f"{k.removesuffix('#')}={v}" for k, v in places[i]) if len(set(places.values())) > 1 \
                else ""
            recipe = ", ".join(f"{k}={idents[i][k]}" for k in knobs) if i in idents else \
                ("recipe not recorded" if knobs else "")
            rows[i] = f"{row} [{'; '.join(x for x in (place, recipe) if x)}]"
        moved.append(str(row))
    pos["row"] = rows
    if not moved:
        return []
    return [f"shown apart, not averaged: {', '.join(dict.fromkeys(moved))} (cells of one label that differ by "
            "more than seed, from a store that accepted duplicate labels; each row holds one recipe's seeds)."]


def _per_seed(pos: pd.DataFrame, metrics: list[str]) -> pd.DataFrame:
    """Finished cells' values, one row per (position, seed, metric): what the findings pair by seed."""
    cols = ["row_i", "col_i", "row", "col", "seed", "metric", "value"]
    parts = [pos.assign(metric=m, value=pos[f"v:{m}"])[cols] for m in metrics]
    out = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=cols)
    out = out[np.isfinite(out["value"].astype(float))]
    out = out.assign(seed=out["seed"].fillna("0").astype(str))
    return out.reset_index(drop=True)


def _upsampled(recipe: Any) -> bool:
    """Whether a cell's images are an upsample of smaller originals (recipe.Recipe.upsampled)."""
    if not isinstance(recipe, Mapping):
        return False
    try:
        return recipe_from_dict(dict(recipe)).upsampled
    except SweepdaeError:  # a recipe of an older schema that no longer validates
        return False


def _artifact(info: Any, runs_dir: Path | None) -> str | None:
    """The cell's denoising-examples PNG (info.artifacts.denoising): relative to its run folder, which is relative
    to the runs folder (`runs_dir`; older stores kept absolute folders, used as they are)."""
    if not isinstance(info, Mapping):
        return None
    arts = info.get("artifacts")
    path = arts.get("denoising") if isinstance(arts, Mapping) else None
    if not isinstance(path, str) or not path:
        return None
    run_dir = info.get("run_dir")
    found = Path(run_dir) / path if isinstance(run_dir, str) and run_dir else Path(path)
    return str(runs_dir / found if runs_dir is not None else found)


def _headers(metrics: list[str], cols: list[str], col_dim: str | None) -> list[tuple[str, str, str]]:
    """(metric, column label, header text) of every display column, metric by metric."""
    numeric_cols = bool(cols) and all(_numeric_label(c) for c in cols)
    headers: list[tuple[str, str, str]] = []
    for m in metrics:
        for c in cols:
            ch = (f"{col_dim}={c}" if numeric_cols else c) if col_dim else ""
            h = ch if (col_dim and len(metrics) == 1) else (f"{metric_info(m).short} {ch}".strip() if col_dim
                                                           else metric_info(m).title)
            headers.append((m, c, h))
    return headers


def _best(headers: list[tuple[str, str, str]], rows: list[str], cell: Mapping[tuple[str, str, str], Any]
          ) -> dict[tuple[str, str], float]:
    """The best value per column among finished positions (max for accuracies, min for FID), as shown."""
    best: dict[tuple[str, str], float] = {}
    for m, c, _ in headers:
        info = metric_info(m)
        vals = [round(rec["mean"], info.digits) for r in rows if (rec := cell.get((r, m, c)))
                and rec["state"] in ("done", "partial")]
        if len(set(vals)) >= 2:  # one value, or all equal as shown: nothing stands out, nothing is bold
            best[(m, c)] = max(vals) if info.higher_is_better else min(vals)
    return best


def _pivot(tidy: pd.DataFrame, metrics: list[str], row_dim: str | None, col_dim: str | None
           ) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame, list[str]]:
    """Tidy -> display strings with bold and state masks: (row, ours|paper) x (metric, col) headers."""
    cols = tidy[["col_i", "col"]].drop_duplicates().sort_values("col_i")["col"].tolist()
    rows = tidy[["row_i", "row"]].drop_duplicates().sort_values("row_i")["row"].tolist()
    headers = _headers(metrics, cols, col_dim)
    cell = {(r, m, c): rec for r, m, c, rec in zip(tidy["row"], tidy["metric"], tidy["col"],
                                                   tidy.to_dict("records"), strict=True)}
    index: list[tuple[str, str]] = []
    text: list[list[str]] = []
    bold: list[list[bool]] = []
    state: list[list[str]] = []
    prev_ours: dict[tuple[str, str], float] = {}
    prev_paper: dict[tuple[str, str], float] = {}
    partial = False
    best = _best(headers, rows, cell)
    for r in rows:
        o_text, o_bold, o_state, p_text, p_state = [], [], [], [], []
        for m, c, _ in headers:
            info = metric_info(m)
            rec = cell.get((r, m, c))
            if rec is None:
                o_text.append("")
                o_bold.append(False)
                o_state.append("empty")
                p_text.append("")
                p_state.append("empty")
                continue
            st = str(rec["state"])
            if st in ("done", "partial"):
                mean = float(rec["mean"])
                s = _fmt(mean, info.digits)
                if rec["n"] > 1 and math.isfinite(rec["std"]):
                    s += f" ± {_fmt(float(rec['std']), info.digits)}"
                if row_dim == "step" and (m, c) in prev_ours:
                    s += f" ({mean - prev_ours[(m, c)]:+.{info.digits}f})"
                if st == "partial":
                    s += "*"
                    partial = True
                prev_ours[(m, c)] = mean
                o_bold.append(round(mean, info.digits) == best.get((m, c)))
            else:
                s = st
                prev_ours.pop((m, c), None)
                o_bold.append(False)
            o_text.append(s)
            o_state.append(st)
            pv = rec["paper"]
            if pv is not None and math.isfinite(pv):
                ps = _fmt(pv, info.digits)
                if row_dim == "step" and (m, c) in prev_paper:
                    ps += f" ({pv - prev_paper[(m, c)]:+.{info.digits}f})"
                prev_paper[(m, c)] = pv
                p_text.append(ps)
                p_state.append("paper")
            else:
                prev_paper.pop((m, c), None)
                p_text.append("")
                p_state.append("empty")
        index.append((r, "ours"))
        text.append(o_text)
        bold.append(o_bold)
        state.append(o_state)
        if any(x == "paper" for x in p_state):
            index.append((r, "paper"))
            text.append(p_text)
            bold.append([False] * len(p_text))
            state.append(p_state)
    idx = pd.MultiIndex.from_tuples(index, names=[row_dim or "", "source"])
    names = [h for _, _, h in headers]
    notes = []
    if partial:
        notes.append("* mean of the seeds that finished; the others are still pending or failed.")
    return (pd.DataFrame(text, index=idx, columns=names), pd.DataFrame(bold, index=idx, columns=names),
            pd.DataFrame(state, index=idx, columns=names), notes)


def _get(recipe: Mapping[str, Any], path: str) -> Any:
    cur: Any = recipe
    for part in path.split("."):
        if not isinstance(cur, Mapping) or part not in cur:
            return None
        cur = cur[part]
    return cur


def _values(recipes: list[Mapping[str, Any]], path: str) -> str | None:
    seen: dict[str, None] = {}
    for r in recipes:
        v = _get(r, path)
        if v is not None:
            seen.setdefault(str(v), None)
    return "/".join(seen) if seen else None


def scale_line(recipes: Iterable[Mapping[str, Any]], profile: str | None, profile_description: str = "") -> str:
    """What the numbers were measured at (dataset, image and patch size, model, epochs, batch), beside the paper's
    scale, so nobody mistakes a Fashion-MNIST run for ImageNet."""
    rs = list(recipes)
    unique = {repr(sorted((k, repr(v)) for k, v in r.items())): r for r in rs}  # a few distinct recipes suffice
    rs = list(unique.values())
    prof = f"profile {profile}" if profile else "base profile"
    if not rs:
        return f"Scale ({prof}): unknown until a cell is queued. Paper: {PAPER_SCALE}."
    data, size, patch = _values(rs, "data.name"), _values(rs, "data.image_size"), _values(rs, "tokenizer.patch_size")
    parts = [data or "dataset ?"]
    if size:
        parts.append(f"{size} px images")
    if patch:
        tokens = ""
        if size and patch and size.isdigit() and patch.isdigit() and int(patch):
            tokens = f" ({(int(size) // int(patch)) ** 2} tokens)"
        parts.append(f"{patch} px patches{tokens}")
    for path, fmt in (("model.size", "model {}"), ("train.epochs", "{} epochs"), ("train.batch_size", "batch {}")):
        v = _values(rs, path)
        if v:
            parts.append(fmt.format(v))
    train, test = _values(rs, "data.train_size"), _values(rs, "data.test_size")
    if train or test:
        parts.append("train " + ("all" if train in (None, "0") else train) + " / test "
                     + ("all" if test in (None, "0") else test) + " images")
    return f"Scale ({prof}): " + ", ".join(parts) + f". Paper: {PAPER_SCALE}."
