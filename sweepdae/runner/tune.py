"""`sweepdae tune GRID --trials N`: Optuna's adaptive search over a grid's recipe space, on the sweep's own store.

The space: one categorical per axis of the grid (a zip is one categorical over its tuples, by label), under the
profile; `[tune.params]` may replace axes with ranges (int, float, log, categorical) of knobs. Each trial is one
point of that space: its cells (one per seed of the grid) are ordinary cells with the keys `sweepdae run` gives
them, enqueued and run by the same coordinator and launchers. So a point already done, by `run` or by an earlier
tune, is read back, not trained again. The trial's value is the mean of the metric over the seeds.

A study lives in the store as the Optuna study `sweepdae-tune:<grid>:<profile>:<metric>` (`store.tune_study_name`),
with real params and values (optuna-dashboard shows it as it is). What is recorded:

* a point that the grid's [[exclude]] rules out, or whose recipe fails validation: PRUNED, with no training;
* a point the sampler proposes again: PRUNED as a duplicate, and it does not count;
* `--trials N`: N COMPLETE trials in all. The search stops early once every point of a finite space was tried.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import random
import socket
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import optuna
from optuna.trial import TrialState

from sweepdae.errors import RecipeError, SweepdaeError
from sweepdae.grid import Cell, Grid
from sweepdae.grid.expand import _excluded, _fmt, under_profile
from sweepdae.grid.schema import Axis, TuneParam
from sweepdae.metrics import METRICS, metric_info
from sweepdae.recipe import recipe_from_flat
from sweepdae.store import Store, dead_local_owner, tune_study_name

SAMPLERS = ("tpe", "random", "grid")
MAX_ENUMERATED = 100_000  # a space this small is enumerated: exhaustion is detected, duplicates are replaced
MAX_DUPLICATES = 200  # proposals of tried points in a row before the search gives up on the sampler


def default_direction(metric: str) -> str:
    """FID and losses minimise, accuracies maximise (`metrics.METRICS`' higher_is_better)."""
    return "maximize" if metric_info(metric).higher_is_better else "minimize"


@dataclass(frozen=True)
class Dim:
    """One dimension of the search space: an axis of the grid (its labels), or a `[tune.params]` range."""

    name: str  # the parameter's name in the study: the axis name, or the knob path
    axis: Axis | None = None
    param: TuneParam | None = None

    def suggest(self, trial: optuna.Trial) -> Any:
        if self.axis is not None:
            return trial.suggest_categorical(self.name, list(self.axis.labels))
        p = self.param
        assert p is not None
        if p.kind == "categorical":
            return trial.suggest_categorical(self.name, list(p.choices))
        if p.kind == "int":
            return trial.suggest_int(self.name, int(p.low), int(p.high), step=int(p.step or 1), log=p.log)
        return trial.suggest_float(self.name, float(p.low), float(p.high), step=p.step, log=p.log)

    def knobs(self, value: Any) -> dict[str, Any]:
        if self.axis is not None:
            i = self.axis.labels.index(value)
            return dict(zip(self.axis.paths, self.axis.values[i], strict=True))
        return {self.name: value}

    def shown(self, value: Any) -> str:
        if self.axis is not None:
            return self.axis.label_at(self.axis.labels.index(value))
        return f"{self.name.rsplit('.', 1)[-1]}={_fmt(value)}"

    def points(self) -> list[Any] | None:
        """Every value, when there are finitely many (axes, categoricals, stepped ints and floats); else None."""
        if self.axis is not None:
            return list(self.axis.labels)
        p = self.param
        assert p is not None
        if p.kind == "categorical":
            return list(p.choices)
        if p.kind == "int" and not p.log:
            step = int(p.step or 1)
            return list(range(int(p.low), int(p.high) + 1, step))
        if p.kind == "float" and p.step and not p.log:
            n = int(math.floor((float(p.high) - float(p.low)) / p.step + 1e-9)) + 1
            return [float(p.low) + i * p.step for i in range(n)]
        return None


@dataclass(frozen=True)
class Space:
    grid: Grid
    profile: str | None
    base: dict[str, Any]
    seeds: tuple[int, ...]
    dims: tuple[Dim, ...]

    def size(self) -> int | None:
        n = 1
        for d in self.dims:
            pts = d.points()
            if pts is None:
                return None
            n *= len(pts)
        return n

    def cells(self, point: dict[str, Any]) -> list[Cell] | str:
        """The cells of a point (one per seed), or why it has none (excluded, an invalid recipe)."""
        knobs = dict(self.base)
        coords: dict[str, str] = {}
        for d in self.dims:
            knobs.update(d.knobs(point[d.name]))
            coords[d.name] = point[d.name] if d.axis is not None else _fmt(point[d.name])
        if _excluded(self.grid, knobs, coords, self.profile):
            return "excluded by the grid's [[exclude]] rules (or its profile's)"
        label = " ".join(d.shown(point[d.name]) for d in self.dims)
        cells = []
        for seed in self.seeds:
            try:
                recipe = recipe_from_flat({**knobs, "seed": seed})
            except RecipeError as e:
                return f"invalid recipe: {e}"
            cells.append(Cell(key=recipe.key(), label=f"{label} seed={seed}", recipe=recipe,
                              coords={**coords, "seed": str(seed)}, step=None, seed=seed))
        return cells


def search_space(grid: Grid, profile: str | None) -> Space:
    """The grid's space under the profile: its axes as categoricals, except those `[tune.params]` replaces."""
    if grid.trajectory:
        raise SweepdaeError(f"{grid.path}: tune: grid {grid.name!r} is a trajectory (each step builds on the one "
                            "before), not a space of independent points; tune a grid with [axes] or [tune.params]")
    pname, base, axes, seeds = under_profile(grid, profile)
    params = grid.tune.params
    dims: list[Dim] = []
    for a in axes:
        covered = [p for p in a.paths if p in params]
        if covered and len(covered) < len(a.paths):
            raise SweepdaeError(f"{grid.path}: tune.params: {covered[0]} is on axis {a.name!r}, which also sets "
                                f"{', '.join(p for p in a.paths if p not in params)}: give a range for all of "
                                "them or none")
        if not covered:
            dims.append(Dim(a.name, axis=a))
    dims += [Dim(path, param=p) for path, p in params.items()]
    if not dims:
        raise SweepdaeError(f"{grid.path}: tune: nothing to search: the grid has no [axes] and no [tune.params]")
    return Space(grid=grid, profile=pname, base=base, seeds=seeds, dims=tuple(dims))


def make_sampler(name: str, seed: int | None, space: Space) -> optuna.samplers.BaseSampler:
    if name == "tpe":
        return optuna.samplers.TPESampler(seed=seed)
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if name == "grid":
        grid_space: dict[str, list[Any]] = {}
        for d in space.dims:
            pts = d.points()
            if pts is None:
                raise SweepdaeError(f"--sampler grid: {d.name} is a continuous range; give it a step")
            grid_space[d.name] = pts
        return optuna.samplers.GridSampler(grid_space, seed=seed)
    raise SweepdaeError(f"--sampler: expected one of {', '.join(SAMPLERS)}, got {name!r}")


def _point_key(point: dict[str, Any]) -> str:
    return json.dumps(point, sort_keys=True, default=str)


@dataclass
class TuneSummary:
    study: str
    completed: int
    pruned: int
    failed: int
    best_value: float | None
    best_params: dict[str, Any]
    exhausted: bool
    stopped: bool


RunCells = Callable[[list[Cell]], Any]  # runs cells to an end (done or failed for good); returns a RunSummary


def tune(store: Store, space: Space, *, trials: int, metric: str, direction: str, sampler: str, seed: int | None,
         run_cells: RunCells, say: Callable[[str], None]) -> TuneSummary:
    """Run trials until `trials` of the study are COMPLETE, the space is exhausted, or a run is interrupted."""
    if metric not in METRICS:
        raise SweepdaeError(f"--metric: unknown metric {metric!r}; valid: {', '.join(METRICS)}")
    if direction not in ("maximize", "minimize"):
        raise SweepdaeError(f"--direction: expected maximize or minimize, got {direction!r}")
    name = tune_study_name(space.grid.name, space.profile, metric)
    study = store.tune_study(name, direction=direction, sampler=make_sampler(sampler, seed, space),
                             attrs={"grid": space.grid.name, "profile": space.profile or "", "metric": metric,
                                    "seeds": list(space.seeds), "params": [d.name for d in space.dims]})
    for number, owner in store.fail_abandoned_tune_trials(study, dead_owner=dead_local_owner):
        say(f"trial {number}: its tune process ({owner}) stopped; marked failed")
    size = space.size()
    tried = _tried(study)
    completed = sum(1 for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))
    rng = random.Random(seed)
    duplicates = 0
    exhausted = stopped = False
    if completed >= trials:
        say(f"{name}: {completed} trials already complete (asked for {trials}); nothing to run")
    while completed < trials:
        if size is not None and len(tried) >= size:
            exhausted = True
            say(f"{name}: every one of the {size} points of the space was tried; stopping at {completed} trials")
            break
        trial = study.ask()
        point = {d.name: d.suggest(trial) for d in space.dims}
        pk = _point_key(point)
        if pk in tried:
            trial.set_user_attr("duplicate_of", tried[pk])
            study.tell(trial, state=TrialState.PRUNED)
            duplicates += 1
            if duplicates >= MAX_DUPLICATES:
                say(f"{name}: the sampler proposed {duplicates} tried points in a row; stopping")
                break
            if size is not None and size <= MAX_ENUMERATED:  # the next trial takes an untried point
                untried = [p for p in _all_points(space) if _point_key(p) not in tried]
                if untried:
                    study.enqueue_trial(rng.choice(untried))
            continue
        duplicates = 0
        trial.set_user_attr("owner", f"{socket.gethostname()}:{os.getpid()}")
        cells = space.cells(point)
        if isinstance(cells, str):
            trial.set_user_attr("pruned", cells)
            study.tell(trial, state=TrialState.PRUNED)
            tried[pk] = trial.number
            say(f"trial {trial.number}: {_shown(space, point)}: pruned, {cells}")
            continue
        trial.set_user_attr("cells", [c.key for c in cells])
        trial.set_user_attr("labels", [c.label for c in cells])
        summary = run_cells(cells)
        values = _metric_values(store, [c.key for c in cells], metric)
        if len(values) == len(cells):
            value = sum(values) / len(values)
            trial.set_user_attr("per_seed", values)
            study.tell(trial, value)
            tried[pk] = trial.number
            completed += 1
            best = study.best_trial
            say(f"trial {trial.number}: {_shown(space, point)}: {metric} {value:.2f} over {len(values)} seeds; "
                f"best {best.value:.2f} (trial {best.number}); {completed} of {trials} complete")
        else:
            why = "interrupted" if getattr(summary, "interrupted", False) else \
                f"{len(cells) - len(values)} of its {len(cells)} cells have no {metric} (failed)"
            trial.set_user_attr("error", why)
            study.tell(trial, state=TrialState.FAIL)
            say(f"trial {trial.number}: {_shown(space, point)}: failed, {why}")
        if getattr(summary, "interrupted", False):
            stopped = True
            break
    done = study.get_trials(deepcopy=False)
    best_t = _best(study)
    return TuneSummary(study=name, completed=sum(t.state == TrialState.COMPLETE for t in done),
                       pruned=sum(t.state == TrialState.PRUNED for t in done),
                       failed=sum(t.state == TrialState.FAIL for t in done),
                       best_value=best_t.value if best_t else None,
                       best_params=dict(best_t.params) if best_t else {}, exhausted=exhausted, stopped=stopped)


def _tried(study: optuna.Study) -> dict[str, int]:
    """point -> the trial that settled it (complete, or pruned as invalid)."""
    tried: dict[str, int] = {}
    for t in study.get_trials(deepcopy=False):
        if t.state == TrialState.COMPLETE or (t.state == TrialState.PRUNED and "pruned" in t.user_attrs):
            tried.setdefault(_point_key(t.params), t.number)
    return tried


def _best(study: optuna.Study) -> Any:
    try:
        return study.best_trial
    except ValueError:
        return None


def _shown(space: Space, point: dict[str, Any]) -> str:
    return " ".join(d.shown(point[d.name]) for d in space.dims)


def _all_points(space: Space) -> list[dict[str, Any]]:
    values = [d.points() or [] for d in space.dims]
    return [dict(zip((d.name for d in space.dims), combo, strict=True)) for combo in itertools.product(*values)]


def _metric_values(store: Store, keys: list[str], metric: str) -> list[float]:
    df = store.cells(keys)
    col = f"metric.{metric}"
    if df.empty or col not in df.columns:
        return []
    done = df[(df["status"] == "done")]
    return [float(v) for v in done[col] if v == v]
