"""Sweep execution: enqueue a grid's missing cells and run them on this machine's slots."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sweepdae.errors import SweepdaeError
from sweepdae.grid import Plan
from sweepdae.runner.coordinator import Coordinator, Options
from sweepdae.runner.slots import Slot, detect_gpus, free_port, make_slots, parse_gpus
from sweepdae.runner.view import View, make_view
from sweepdae.store import Store

__all__ = ["Coordinator", "Options", "RunSummary", "Slot", "detect_gpus", "enqueue_cells", "enqueue_plan", "free_port",
           "make_slots", "parse_gpus", "register_plan", "run_cells", "run_plan", "run_worker", "runs_dir_for"]


@dataclass
class RunSummary:
    total: int
    cached: int
    done: list[str]
    failed: list[str]
    statuses: dict[str, str]
    interrupted: bool = False  # Ctrl-C (or a preemption) stopped it: a sweep of several grids stops too

    @property
    def ok(self) -> bool:
        return not self.failed and all(s == "done" for s in self.statuses.values())


def runs_dir_for(runs_dir: str | os.PathLike[str] | None) -> Path:
    return Path(runs_dir or os.environ.get("SWEEPDAE_RUNS", "runs")).resolve()


def select(plan: Plan, only: str | None, *, allow_empty: bool = False) -> list[Any]:
    """Cells of the plan whose label matches the --only regular expression (or key prefix); none is an error
    unless `allow_empty` (one grid of several that `sweepdae run` is given)."""
    if not only:
        return list(plan.cells)
    try:
        pat = re.compile(only)
    except re.error as e:
        raise SweepdaeError(f"--only: invalid regular expression {only!r}: {e}") from None
    cells = [c for c in plan.cells if pat.search(c.label) or c.key.startswith(only)]
    if not cells and not allow_empty:
        raise SweepdaeError(f"--only {only!r} matches none of the {len(plan.cells)} cells of {plan.grid.name}")
    return cells


def register_plan(store: Store, plan: Plan) -> None:
    """Register the grid (under its profile) and its cells, so that `status` and `report` show it, pending cells
    included. Idempotent."""
    store.register_grid(plan.grid.name, profile=plan.profile or "", spec=plan.spec(),
                        cells=[{"key": c.key, "label": c.label, "coords": c.coords, "step": c.step, "seed": c.seed,
                                "train_key": c.train_key} for c in plan.cells])


def enqueue_plan(store: Store, plan: Plan, cells: list[Any]) -> dict[str, str]:
    """Register the grid and enqueue its cells that are not done, queued or running (dedup by key)."""
    register_plan(store, plan)
    return enqueue_cells(store, cells, grid=plan.grid.name, profile=plan.profile, params=cell_params(plan))


def cell_params(plan: Plan) -> dict[str, dict[str, Any]]:
    """key -> the cell's grid coordinates as the store turns them into Optuna params (what optuna-dashboard shows):
    `<grid>/<profile>/<axis>` -> {value: its label, choices: the axis' labels under the profile}, seed included."""
    prefix = f"{plan.grid.name}/{plan.profile or 'base'}/"
    choices: dict[str, list[str]] = {}
    for c in plan.cells:
        for name, label in c.coords.items():
            if label not in choices.setdefault(name, []):
                choices[name].append(label)
    return {c.key: {prefix + name: {"value": label, "choices": choices[name]} for name, label in c.coords.items()}
            for c in plan.cells}


def enqueue_cells(store: Store, cells: list[Any], *, grid: str, profile: str | None,
                  params: dict[str, dict[str, Any]] | None = None) -> dict[str, str]:
    """Enqueue cells that are not done, queued or running (dedup by key); key -> what happened."""
    return store.enqueue([{"key": c.key, "label": c.label, "recipe": c.recipe.to_dict(), "grid": grid,
                           "profile": profile or "", "train_key": c.train_key,
                           **({"params": params[c.key]} if params and c.key in params else {})} for c in cells])


def run_plan(store: Store, plan: Plan, *, only: str | None = None, gpus: str = "auto", gpus_per_cell: int = 1,
             cells_per_gpu: int = 1, cpu_cells: int = 1, max_retries: int = 1, fail_fast: bool = False,
             runs_dir: str | None = None, launcher: str = "auto", plain: bool | None = None,
             view: View | None = None) -> RunSummary:
    """`sweepdae run`: enqueue, then coordinate until every selected cell is done or failed for good."""
    cells = select(plan, only)
    register_plan(store, plan)
    return run_cells(store, cells, grid=plan.grid.name, profile=plan.profile, params=cell_params(plan),
                     title=f"{plan.grid.name} ({plan.profile or 'base'})", gpus=gpus, gpus_per_cell=gpus_per_cell,
                     cells_per_gpu=cells_per_gpu, cpu_cells=cpu_cells, max_retries=max_retries, fail_fast=fail_fast,
                     runs_dir=runs_dir, launcher=launcher, plain=plain, view=view)


def run_cells(store: Store, cells: list[Any], *, grid: str, profile: str | None, title: str, gpus: str = "auto",
              gpus_per_cell: int = 1, cells_per_gpu: int = 1, cpu_cells: int = 1, max_retries: int = 1,
              fail_fast: bool = False, runs_dir: str | None = None, launcher: str = "auto",
              plain: bool | None = None, view: View | None = None, close_view: bool = True,
              params: dict[str, dict[str, Any]] | None = None) -> RunSummary:
    """Enqueue `cells` (of grid `grid`) and coordinate until each is done or failed for good (`run`, `tune`)."""
    slots = make_slots(parse_gpus(gpus, detect_gpus() if gpus == "auto" else None), gpus_per_cell=gpus_per_cell,
                       cells_per_gpu=cells_per_gpu, cpu_cells=cpu_cells)
    outcome = enqueue_cells(store, cells, grid=grid, profile=profile, params=params)
    cached = sum(1 for v in outcome.values() if v == "cached")
    view = view or make_view(total=len(cells), cached=cached, title=title, plain=plain)
    if cached:
        view.message(f"{cached} of {len(cells)} cells already done (cached), not run again")
    keys = {c.key for c in cells}
    coord = Coordinator(store, Options(runs_dir=runs_dir_for(runs_dir), slots=slots, launcher=launcher,
                                       max_retries=max_retries, fail_fast=fail_fast, keys=keys), view)
    try:
        coord.run()
    finally:
        if close_view:
            view.close()
    _say_parked(coord)
    statuses = store.status(sorted(keys))
    return RunSummary(total=len(cells), cached=cached, done=coord.done, failed=coord.failed_for_good,
                      statuses=statuses, interrupted=bool(coord.stopping))


def _say_parked(coord: Coordinator) -> None:
    if coord.parked:
        why = sorted(set(coord.parked.values()))
        coord.view.message(f"{len(coord.parked)} cells left queued: their training is on another machine "
                           f"({'; '.join(why[:3])}). Run `sweepdae worker` there, or share the runs folder.")


def run_worker(store: Store, *, gpus: str = "auto", gpus_per_cell: int = 1, cells_per_gpu: int = 1,
               cpu_cells: int = 1, max_retries: int = 1, forever: bool = False, runs_dir: str | None = None,
               launcher: str = "auto", plain: bool | None = None) -> RunSummary:
    """`sweepdae worker`: run queued cells of any grid until none are left (or forever)."""
    slots = make_slots(parse_gpus(gpus, detect_gpus() if gpus == "auto" else None), gpus_per_cell=gpus_per_cell,
                       cells_per_gpu=cells_per_gpu, cpu_cells=cpu_cells)
    st = store.status()
    todo = sum(1 for s in st.values() if s in ("queued", "running"))
    view = make_view(total=todo, cached=0, title="worker", plain=plain)
    coord = Coordinator(store, Options(runs_dir=runs_dir_for(runs_dir), slots=slots, launcher=launcher,
                                       max_retries=max_retries, forever=forever), view)
    try:
        coord.run()
    finally:
        view.close()
    _say_parked(coord)
    return RunSummary(total=todo, cached=0, done=coord.done, failed=coord.failed_for_good, statuses={})
