"""A grid's `[tune]` table: the metric, direction and knob ranges of `sweepdae tune`."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

from sweepdae.grid._source import _Ctx, _shorten, _table, _tname
from sweepdae.grid._values import _check_knob, _flatten, _no_seed
from sweepdae.metrics import METRICS
from sweepdae.recipe import KNOBS, suggest

__all__ = ["TuneParam", "TuneSpec", "parse_tune"]

_TUNE_KEYS = {"metric", "direction", "params"}
_TUNE_PARAM_KEYS = {"int": {"type", "low", "high", "step", "log"}, "float": {"type", "low", "high", "step", "log"},
                    "categorical": {"type", "choices"}}


@dataclass(frozen=True)
class TuneParam:
    """A `[tune.params]` range of one knob: int or float in [low, high] (log-uniform when `log`, on a grid of
    `step` when given), or a categorical over `choices`."""

    kind: str  # "int" | "float" | "categorical"
    low: float = 0
    high: float = 0
    step: float | None = None
    log: bool = False
    choices: tuple[Any, ...] = ()


@dataclass(frozen=True)
class TuneSpec:
    """A grid's `[tune]` table: the default metric and direction of `sweepdae tune`, and ranges that replace the
    axes setting the same knobs (knob path -> range)."""

    metric: str | None = None
    direction: str | None = None
    params: dict[str, TuneParam] = field(default_factory=dict)


def parse_tune(v: Any, ctx: _Ctx) -> TuneSpec:
    t = _table(v, "tune", ctx)
    for k in t:
        if k not in _TUNE_KEYS:
            raise ctx.error(f"tune.{k}", f"unknown key{suggest(k, _TUNE_KEYS)}; valid: {', '.join(sorted(_TUNE_KEYS))}")
    metric = t.get("metric")
    if metric is not None and (not isinstance(metric, str) or metric not in METRICS):
        raise ctx.error("tune.metric", f"unknown metric {metric!r}{suggest(str(metric), METRICS)}; valid: "
                        + ", ".join(METRICS))
    direction = t.get("direction")
    if direction is not None and direction not in ("maximize", "minimize"):
        raise ctx.error("tune.direction", f"must be \"maximize\" or \"minimize\", got {direction!r}")
    params: dict[str, TuneParam] = {}
    for path, spec in _flatten(_table(t.get("params", {}), "tune.params", ctx)):
        params[path] = _tune_param(path, spec, f"tune.params.{path}", ctx)
    return TuneSpec(metric=metric, direction=direction, params=params)


def _tune_param(path: str, spec: Any, key: str, ctx: _Ctx) -> TuneParam:
    _no_seed(path, key, ctx)
    if path not in KNOBS:
        raise ctx.error(key, f"unknown knob {path!r}{suggest(path, KNOBS)}")
    if not isinstance(spec, dict):
        raise ctx.error(key, 'must be a table like { type = "int", low = 2, high = 32 }, got ' + _tname(spec))
    kind = spec.get("type")
    if kind not in _TUNE_PARAM_KEYS:
        raise ctx.error(f"{key}.type", f"must be \"int\", \"float\" or \"categorical\", got {kind!r}")
    for k in spec:
        if k not in _TUNE_PARAM_KEYS[kind]:
            raise ctx.error(f"{key}.{k}", f"unknown key for a {kind} range; valid: "
                            + ", ".join(sorted(_TUNE_PARAM_KEYS[kind])))
    if kind == "categorical":
        choices = spec.get("choices")
        if not isinstance(choices, list) or not choices:
            raise ctx.error(f"{key}.choices", "must be a non-empty array of the knob's values")
        checked = [_check_knob(path, c, f"{key}.choices", ctx) for c in choices]
        if len({json.dumps(c, sort_keys=True) for c in checked}) != len(checked):
            raise ctx.error(f"{key}.choices", "must not repeat a value")
        if not all(isinstance(c, (str, int, float, bool)) or c is None for c in checked):
            raise ctx.error(f"{key}.choices", "must hold strings, numbers or booleans")
        return TuneParam(kind=kind, choices=tuple(checked))
    typ = int if kind == "int" else (int, float)
    bounds = {}
    for b in ("low", "high"):
        x = spec.get(b)
        if isinstance(x, bool) or not isinstance(x, typ) or not _finite(x):
            raise ctx.error(f"{key}.{b}", f"must be {'an integer' if kind == 'int' else 'a number'}, got {x!r}"[:200])
        if b == "low" and spec.get("log") is True and not x > 0:  # said before the knob's own range would be
            raise ctx.error(f"{key}.low", "a log range needs low > 0")
        got = _check_knob(path, int(x) if kind == "int" else float(x), f"{key}.{b}", ctx)
        if isinstance(got, bool) or not isinstance(got, (int, float)):
            raise ctx.error(key, f"knob {path!r} takes {type(got).__name__} values: give it a categorical")
        bounds[b] = x
    if not bounds["low"] < bounds["high"]:
        raise ctx.error(key, f"low ({bounds['low']}) must be below high ({bounds['high']})")
    log = spec.get("log", False)
    if not isinstance(log, bool):
        raise ctx.error(f"{key}.log", f"must be true or false, got {log!r}")
    step = spec.get("step")
    if step is not None:
        if isinstance(step, bool) or not isinstance(step, typ) or not step > 0 or not _finite(step) \
                or step > bounds["high"] - bounds["low"]:
            raise ctx.error(f"{key}.step", f"must be a positive {'integer' if kind == 'int' else 'number'}, at most "
                            f"high - low ({bounds['high'] - bounds['low']:g}), got {_shorten(repr(step))}")
        if log:
            raise ctx.error(f"{key}.step", "a log range takes no step (Optuna samples it continuously)")
    if log and not bounds["low"] > 0:
        raise ctx.error(f"{key}.low", "a log range needs low > 0")
    return TuneParam(kind=kind, low=bounds["low"], high=bounds["high"], step=step, log=log)


def _finite(x: float) -> bool:
    try:
        return math.isfinite(x)
    except OverflowError:  # an int too large for a float
        return False
