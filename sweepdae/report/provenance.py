"""Where a grid's numbers came from: sweepdae versions, git commits, devices, how many machines, and the time spent
per cell (from each cell's `info.provenance` and `info.timings`). Host names stay in the store: a report names no
machine.

Cells that measured their phases (`sweepdae.cell.Phases`: `info.provenance.phases` and `world_size`) add, per
phase, the mean wall seconds and images decoded per cell and the largest peak host RSS and GPU memory
(`Provenance.measured`, in the order the phases run), the world sizes the cells ran at (`world_sizes`) and how many
cells recorded their phases (`cells_measured`; older cells did not, and the HTML report says "not recorded")."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

__all__ = ["PHASES", "Provenance", "summarize_provenance"]

# The phases `sweepdae.cell` times, in the order they run.
PHASES = ("data_s", "tokenizer_s", "train_s", "probe_s", "fid_s", "figures_s")
SLOWEST = 5


@dataclass
class Provenance:
    versions: list[str] = field(default_factory=list)  # sweepdae versions
    commits: list[str] = field(default_factory=list)  # "abc123def456" or "abc123def456 (dirty)"
    devices: list[str] = field(default_factory=list)
    machines: int = 0  # distinct hosts that ran the cells (counted, never named)
    torch: list[str] = field(default_factory=list)
    cpu_threads: list[str] = field(default_factory=list)  # torch's intra-op threads, where the cells recorded it
    cells_timed: int = 0
    total_s: float = 0.0
    mean_s: float | None = None
    median_s: float | None = None
    max_s: float | None = None
    phases: dict[str, float] = field(default_factory=dict)  # phase -> mean seconds over timed cells
    slowest: list[tuple[str, float]] = field(default_factory=list)  # (cell label, wall seconds)
    world_sizes: list[int] = field(default_factory=list)  # processes per cell, where the cells recorded it
    # phase -> {"cells", "seconds" (mean), "decoded" (mean per cell), "peak_rss_mb" (max), "peak_gpu_mb" (max or
    # None)} over the cells that measured it
    measured: dict[str, dict[str, float | None]] = field(default_factory=dict)
    cells_measured: int = 0  # cells that recorded their phases (older cells did not)

    def to_json(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


def _add(seen: dict[str, None], value: Any) -> None:
    if value is not None and value != "":
        seen.setdefault(str(value), None)


def summarize_provenance(cells: pd.DataFrame) -> Provenance:
    """Summarize the `info` column of a grid's cells (missing or malformed info is skipped)."""
    if "info" not in cells.columns or cells.empty:
        return Provenance()
    versions: dict[str, None] = {}
    commits: dict[str, None] = {}
    devices: dict[str, None] = {}
    hosts: dict[str, None] = {}
    torch: dict[str, None] = {}
    threads: dict[str, None] = {}
    walls: list[float] = []
    labels: list[str] = []
    phases: dict[str, list[float]] = {p: [] for p in PHASES}
    worlds: dict[int, None] = {}
    measured: dict[str, list[Mapping[str, Any]]] = {}
    n_measured = 0
    names = cells["label"] if "label" in cells.columns else cells.get("key", pd.Series([""] * len(cells)))
    for label, info in zip(names, cells["info"], strict=True):
        if not isinstance(info, Mapping):
            continue
        prov = info.get("provenance")
        if isinstance(prov, Mapping):
            _add(versions, prov.get("sweepdae"))
            commit = prov.get("git_commit")
            if commit:
                _add(commits, str(commit)[:12] + (" (dirty)" if prov.get("git_dirty") else ""))
            _add(devices, prov.get("device"))
            _add(hosts, prov.get("host"))
            _add(torch, prov.get("torch"))
            _add(threads, prov.get("cpu_threads"))
            if isinstance(prov.get("world_size"), int):
                worlds.setdefault(prov["world_size"], None)
            if isinstance(prov.get("phases"), Mapping) and prov["phases"]:
                n_measured += 1
                for name, m in prov["phases"].items():
                    if isinstance(m, Mapping):
                        measured.setdefault(str(name), []).append(m)
        timings = info.get("timings")
        if isinstance(timings, Mapping):
            wall = timings.get("wall_s")
            if wall is None:  # older cells: the phases add up to (almost) the wall time
                parts = [float(v) for p in PHASES if isinstance(v := timings.get(p), (int, float))]
                wall = sum(parts) if parts else None
            if isinstance(wall, (int, float)) and np.isfinite(wall):
                walls.append(float(wall))
                labels.append(str(label))
            for p in PHASES:
                v = timings.get(p)
                if isinstance(v, (int, float)) and np.isfinite(v):
                    phases[p].append(float(v))
    out = Provenance(versions=list(versions), commits=list(commits), devices=list(devices), machines=len(hosts),
                     torch=list(torch), cpu_threads=list(threads), cells_timed=len(walls))
    if walls:
        w = np.asarray(walls)
        out.total_s, out.mean_s, out.median_s, out.max_s = (float(w.sum()), float(w.mean()), float(np.median(w)),
                                                            float(w.max()))
        order = np.argsort(-w, kind="stable")[:SLOWEST]
        out.slowest = [(labels[i], float(w[i])) for i in order]
    out.phases = {p: float(np.mean(v)) for p, v in phases.items() if v}
    out.world_sizes = sorted(worlds)
    ran = [p.removesuffix("_s") for p in PHASES]  # the phases in the order they run, then any others by name
    out.measured = {name: _measured(measured[name])
                    for name in sorted(measured, key=lambda n: (ran.index(n) if n in ran else len(ran), n))}
    out.cells_measured = n_measured
    return out


def _measured(ms: list[Mapping[str, Any]]) -> dict[str, float | None]:
    """One phase over the cells that measured it: mean seconds and images decoded, largest peaks."""

    def nums(k: str) -> list[float]:
        return [float(v) for m in ms if isinstance(v := m.get(k), (int, float)) and np.isfinite(v)]

    sec, dec, rss, gpu = nums("seconds"), nums("decoded"), nums("peak_rss_mb"), nums("peak_gpu_mb")
    return {"cells": float(len(ms)), "seconds": float(np.mean(sec)) if sec else None,
            "decoded": float(np.mean(dec)) if dec else None, "peak_rss_mb": max(rss) if rss else None,
            "peak_gpu_mb": max(gpu) if gpu else None}
