"""Synthetic report tables for the report tests: an in-memory store, and one axis "x" with values per label and
seed as store rows."""

from __future__ import annotations

from typing import Any

import pandas as pd


def _recipe(target: str = "eps", output_space: str = "latent") -> dict[str, Any]:
    return {"data": {"name": "fashion-mnist", "image_size": 32}, "tokenizer": {"name": "patch_pca", "patch_size": 8},
            "model": {"size": "micro"}, "train": {"epochs": 2}, "seed": 0,
            "objective": {"target": target, "output_space": output_space}}


def _row(key: str, metrics: dict[str, float], status: str = "done", recipe: dict[str, Any] | None = None
         ) -> dict[str, Any]:
    return {"key": key, "label": key, "status": status, "attempts": 1, "recipe": recipe or _recipe(),
            "info": {"artifacts": {}, "run_dir": key}, **{f"metric.{k}": v for k, v in metrics.items()}}


def list_table(mirrors: str, values: dict[str, list[float]], *, metric: str = "probe_top1",
               extra: dict[str, dict[str, list[float]]] | None = None, missing: set[tuple[str, str]] = frozenset(),
               findings: list[str] | None = None) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """One axis "x" with the given labels; values[label][i] is seed i's value; extra[metric][label] likewise."""
    labels = list(values)
    n = len(next(iter(values.values())))
    spec = {"name": mirrors, "mirrors": mirrors, "axes": [{"name": "x", "paths": ["a.b"], "labels": labels}],
            "steps": [], "seeds": list(range(n)),
            "report": {"rows": "x", "cols": None, "metrics": [metric], "findings": findings or []}}
    cells, rows = [], []
    for lab in labels:
        for s in range(n):
            key = f"{lab}-{s}"
            cells.append({"key": key, "label": f"x={lab} seed={s}", "coords": {"x": lab, "seed": str(s)},
                          "step": None, "seed": s})
            if (lab, str(s)) in missing:
                continue
            m = {metric: values[lab][s], **{k: v[lab][s] for k, v in (extra or {}).items()}}
            rows.append(_row(key, m))
    return {"name": mirrors, "profile": "test", "spec": spec, "cells": cells}, rows


class FakeStore:
    """`grids()` and `cells(keys)` over in-memory records, as `sweepdae.store.Store` returns them; keys without a
    record are "new" (absent). `cells_calls` lists the keys each `cells` call asked for."""

    def __init__(self, grids: list[dict[str, Any]], rows: list[dict[str, Any]]) -> None:
        self._grids = grids
        self._frame = pd.DataFrame(rows)
        self.cells_calls: list[list[str] | None] = []

    def grids(self) -> list[dict[str, Any]]:
        return self._grids

    def cells(self, keys: list[str] | None = None) -> pd.DataFrame:
        self.cells_calls.append(keys)
        if keys is None or self._frame.empty:
            return self._frame
        return self._frame[self._frame["key"].isin(keys)].reset_index(drop=True)
