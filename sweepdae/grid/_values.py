"""Knob values as a grid sets them: dotted paths from nested tables, each value checked against its knob
(recipe.KNOBS), seeds, and how a value reads in a label."""

from __future__ import annotations

from typing import Any

from sweepdae.errors import RecipeError
from sweepdae.grid._source import _Ctx, _table
from sweepdae.recipe import KNOBS, Bounds, coerce_knob, suggest
from sweepdae.utils import plain

MAX_AXIS_VALUES = 1000


def _seeds(v: Any, key: str, ctx: _Ctx) -> tuple[int, ...]:
    if isinstance(v, int) and not isinstance(v, bool):
        v = [v]
    if not isinstance(v, list) or not v or not all(isinstance(s, int) and not isinstance(s, bool) for s in v):
        raise ctx.error(key, f"must be a non-empty array of integers, got {v!r}"[:200])
    bounds = KNOBS["seed"].bounds or Bounds(0, 2**31 - 1)
    if len(v) > MAX_AXIS_VALUES or len(set(v)) != len(v) or any(s not in bounds for s in v):
        raise ctx.error(key, f"must hold distinct integers {bounds.describe()} (at most {MAX_AXIS_VALUES})")
    return tuple(v)


def _flatten(d: dict[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    """Nested TOML tables -> dotted knob paths; stops at values that are not tables."""
    out: list[tuple[str, Any]] = []
    for k, v in d.items():
        path = f"{prefix}{k}"
        if isinstance(v, dict) and path not in KNOBS and path.count(".") < 1 and not _is_axis_table(v):
            out.extend(_flatten(v, path + "."))
        else:
            out.append((path, v))
    return out


def _is_axis_table(v: dict[str, Any]) -> bool:
    return "values" in v


def _check_knob(path: str, value: Any, key: str, ctx: _Ctx) -> Any:
    if path not in KNOBS:
        raise ctx.error(key, f"unknown knob {path!r}{suggest(path, KNOBS)}")
    try:
        return plain(coerce_knob(path, value))
    except RecipeError as e:
        raise ctx.error(key, str(e)) from None


def _knob_table(v: Any, key: str, ctx: _Ctx) -> dict[str, Any]:
    t = _table(v, key, ctx)
    out: dict[str, Any] = {}
    for path, value in _flatten(t):
        _no_seed(path, f"{key}.{path}", ctx)
        out[path] = _check_knob(path, value, f"{key}.{path}", ctx)
    return out


def _no_seed(path: str, key: str, ctx: _Ctx) -> None:
    """The expansion sets every cell's seed from the seeds lists: a `seed` knob anywhere else would be overwritten."""
    if path == "seed":
        raise ctx.error(key, "a cell's seed comes from grid.seeds or profiles.NAME.seeds (an [[include]] cell may "
                        "set its own seed or seeds); remove it here")


def _fmt(v: Any) -> str:
    if isinstance(v, bool):
        return "on" if v else "off"
    if isinstance(v, float):
        # six significant digits, as every shipped label reads (1e-04 -> 0.0001), unless that is another number:
        # 1.00000001e-4 keeps its exact (shortest round-trip) form, so two values never share a label
        short = f"{v:g}"
        return short if float(short) == v else repr(v)
    return str(v)
