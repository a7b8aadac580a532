"""Expand a Grid (with a profile) into Cells: product x zip axes, trajectories, include/exclude, seeds."""

from __future__ import annotations

import dataclasses
import itertools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sweepdae.errors import GridError, RecipeError
from sweepdae.grid._source import _Ctx
from sweepdae.grid._values import _fmt
from sweepdae.grid.schema import MAX_CELLS, Axis, Grid, SlurmSpec
from sweepdae.grid.spec import AxisSpec, GridSpec
from sweepdae.recipe import KNOBS, Recipe, recipe_from_flat
from sweepdae.resources import resource_dir
from sweepdae.utils import plain


@dataclass(frozen=True)
class Cell:
    """One unit of work: a fully resolved recipe, its key (identity), a human label and where it sits in the grid."""

    key: str
    label: str
    recipe: Recipe = field(repr=False)
    coords: dict[str, str]  # axis name (or "step") -> label at this cell
    step: int | None  # trajectory position, None outside trajectories
    seed: int

    @property
    def train_key(self) -> str:
        """The training this cell evaluates (shared by every cell whose recipe trains the same way)."""
        return self.recipe.train_key()

    def to_json(self) -> dict[str, Any]:
        return {"key": self.key, "train_key": self.train_key, "label": self.label, "coords": self.coords,
                "step": self.step, "seed": self.seed, "recipe": self.recipe.to_dict()}


@dataclass(frozen=True)
class Plan:
    grid: Grid
    profile: str | None
    cells: tuple[Cell, ...]

    @property
    def slurm(self) -> SlurmSpec:
        """The SLURM options of this plan's jobs: the grid's `[slurm]` with its profile's `slurm` table over it."""
        return self.grid.slurm.with_profile(self.grid.profiles.get(self.profile) if self.profile else None)

    def grid_spec(self) -> GridSpec:
        """What the store keeps about the grid so reports can lay it out without the file."""
        g = self.grid
        prof = g.profiles.get(self.profile) if self.profile else None
        return GridSpec(name=g.name, title=g.title, description=g.description, mirrors=g.mirrors,
                        profile=self.profile, profile_description=prof.description if prof else "",
                        axes=tuple(AxisSpec(name=a.name, paths=a.paths, labels=a.labels) for a in g.axes),
                        steps=tuple(s.label for s in g.trajectory), seeds=tuple(sorted({c.seed for c in self.cells})),
                        report=g.report, path=shown_path(g.path))

    def spec(self) -> dict[str, Any]:
        """`grid_spec()` as the store keeps it (JSON)."""
        return self.grid_spec().to_json()


def shown_path(path: str) -> str:
    """Where a grid came from, as the store and reports keep it (no machine's folders): a shipped grid as
    `grids/NAME.toml`, a file under the working directory relative to it, any other file by its name."""
    p = Path(path)
    if not p.is_file():
        return p.name or path
    p = p.resolve()
    if p.parent == resource_dir("grids").resolve():
        return f"grids/{p.name}"
    try:
        return p.relative_to(Path.cwd().resolve()).as_posix()
    except ValueError:
        return p.name


def resolve_profile(grid: Grid, profile: str | None) -> str | None:
    if profile is None:
        return grid.default_profile
    if profile not in grid.profiles:
        valid = ", ".join(grid.profiles) or "none"
        raise GridError(f"{grid.path}: --profile: grid {grid.name!r} has no profile {profile!r}; valid: {valid}")
    return profile


def under_profile(grid: Grid, profile: str | None) -> tuple[str | None, dict[str, Any], list[Axis], tuple[int, ...]]:
    """(profile name, base knobs, axes, seeds) of the grid under `profile` (None = its default profile): what
    `expand` and `tune`'s search space start from."""
    pname = resolve_profile(grid, profile)
    prof = grid.profiles[pname] if pname else None
    base = {**grid.base, **(prof.overrides if prof else {})}
    axes = [_profiled(a, prof.axes.get(a.name), prof.keep.get(a.name)) if prof else a for a in grid.axes]
    seeds = (prof.seeds if prof and prof.seeds else None) or grid.seeds
    return pname, base, axes, tuple(seeds)


def expand(grid: Grid, profile: str | None = None) -> Plan:
    """Every cell of the grid under `profile` (None = the grid's default profile), in a stable order."""
    pname, base, axes, seeds = under_profile(grid, profile)

    # (knobs, coords, step, include label, seeds, index of the [[include]] or None)
    points: list[tuple[dict[str, Any], dict[str, str], int | None, str | None, tuple[int, ...], int | None]] = []
    steps = grid.trajectory or ()
    n_points = len(steps) or 1
    for a in axes:
        n_points *= len(a.values)
    n_cells = n_points * len(seeds) + sum(len(inc.get("__seeds__", seeds)) for inc in grid.include)
    if n_cells > MAX_CELLS:
        raise GridError(f"{grid.path}: grid expands to {n_cells} cells, more than {MAX_CELLS}")
    for combo in itertools.product(*[range(len(a.values)) for a in axes]):
        knobs: dict[str, Any] = {}
        coords: dict[str, str] = {}
        for a, i in zip(axes, combo, strict=True):
            knobs.update(dict(zip(a.paths, a.values[i], strict=True)))
            coords[a.name] = a.labels[i]
        if steps:
            acc: dict[str, Any] = {}
            for si, s in enumerate(steps):
                acc = {**acc, **s.set}
                points.append(({**knobs, **acc}, {**coords, "step": s.label}, si, None, seeds, None))
        else:
            points.append((knobs, coords, None, None, seeds, None))
    points = [p for p in points if not _excluded(grid, {**base, **p[0]}, p[1], pname)]
    for j, inc in enumerate(grid.include):
        inc = dict(inc)
        label = inc.pop("__label__", None)
        own_seeds = inc.pop("__seeds__", None)
        points.append((inc, {"include": label or _auto_label(inc)}, None, label, own_seeds or seeds, j))

    cells: list[Cell] = []
    seen: set[str] = set()
    # A report row gathers the cells of one label (the seed apart) as seeds of one recipe, so two grid points
    # whose recipes differ by more than the seed must not share a label: label -> (first point, its recipe)
    rows: dict[str, tuple[int, Recipe]] = {}
    for n, (knobs, coords, step, inc_label, point_seeds, _) in enumerate(points):
        row = _label(axes, coords, step, grid, inc_label)
        for seed in point_seeds:
            flat = {**base, **knobs, "seed": seed}
            try:
                recipe = recipe_from_flat(flat)
            except RecipeError as e:
                where = " ".join(f"{k}={v}" for k, v in coords.items())
                raise GridError(f"{grid.path}: cell [{where}]{' (profile ' + pname + ')' if pname else ''}: {e}"
                                ) from None
            first = rows.setdefault(row, (n, recipe))
            if first[0] != n and _seedless_key(first[1]) != _seedless_key(recipe):
                raise _same_label(grid, pname, row, points[first[0]], points[n])
            key = recipe.key()
            if key in seen:  # two grid points that resolve to the same recipe are one cell
                continue
            seen.add(key)
            label = f"{row} seed={seed}" if row else f"seed={seed}"
            cells.append(Cell(key=key, label=label, recipe=recipe, coords={**coords, "seed": str(seed)}, step=step,
                              seed=seed))
    if not cells:
        raise GridError(f"{grid.path}: the grid expands to no cells (every point excluded?)")
    return Plan(grid=grid, profile=pname, cells=tuple(cells))


def _profiled(axis: Axis, values: tuple[Any, ...] | None, keep: tuple[str, ...] | None) -> Axis:
    """The axis under a profile: new values for its labels, or for the subset of labels the profile keeps."""
    if values is None:
        return axis
    return Axis(name=axis.name, paths=axis.paths, values=values, labels=keep or axis.labels, bare=axis.bare)


def _excluded(grid: Grid, knobs: dict[str, Any], coords: dict[str, str], profile: str | None) -> bool:
    """Whether a pattern of the grid's [[exclude]] or of `profile`'s own [[profiles.NAME.exclude]] matches: it does
    when, for every knob in it, the cell's axis label (knobs on an axis) or resolved value (other knobs) is among
    the pattern's values."""
    for pat in (*grid.exclude, *(grid.profiles[profile].exclude if profile else ())):
        hit = True
        for path, vals in pat.items():
            axis_label = next((coords[a.name] for a in grid.axes if path in a.paths and a.name in coords), None)
            if axis_label is not None:
                ok = axis_label in {_fmt(x) for x in vals}
            else:  # the resolved value: a knob nothing sets has its default
                ok = knobs.get(path, plain(KNOBS[path].default)) in vals
            if not ok:
                hit = False
                break
        if hit:
            return True
    return False


def _auto_label(knobs: dict[str, Any]) -> str:
    return " ".join(f"{p.rsplit('.', 1)[-1]}={_fmt(v)}" for p, v in knobs.items()) or "base"


def _label(axes: list[Axis], coords: dict[str, str], step: int | None, grid: Grid, inc_label: str | None) -> str:
    """A grid point's label, without the seed (a cell's label is this and `seed=N`)."""
    parts: list[str] = []
    if inc_label is not None or "include" in coords:
        parts.append(coords["include"])
    else:
        for a in axes:
            i = a.labels.index(coords[a.name])
            parts.append(a.label_at(i))
        if step is not None:
            parts.append(grid.trajectory[step].label)
    return " ".join(parts)


def _seedless_key(recipe: Recipe) -> str:
    """The key of the recipe at seed 0: equal for two recipes that differ by the seed alone."""
    return recipe.key() if recipe.seed == 0 else dataclasses.replace(recipe, seed=0).key()


_Point = tuple[dict[str, Any], dict[str, str], int | None, str | None, tuple[int, ...], int | None]


def _same_label(grid: Grid, pname: str | None, row: str, a: _Point, b: _Point) -> GridError:
    """One line naming the grid key of the second of two points with one label and different recipes."""
    def which(p: _Point) -> str:
        if p[5] is not None:
            return f"include[{p[5]}]"
        return "[" + " ".join(f"{k}={v}" for k, v in p[1].items()) + "]"

    inc = b[5] if b[5] is not None else a[5]
    if inc is not None:  # an [[include]]: its label, given or made of its knobs
        key = f"include[{inc}].label" if grid.include[inc].get("__label__") is not None else f"include[{inc}]"
        fix = "give it a label = \"...\" of its own"
    else:  # two axis points whose labels join to the same text
        key, fix = "axes", "give the axes labels that tell the cells apart"
    prof = f" (profile {pname})" if pname else ""
    return _Ctx(grid.path, grid.source).error(
        key, f"{which(a)} and {which(b)}{prof} are both labelled {row!r} but differ by more than the seed, so a "
        f"report would average them as one row; {fix}")
