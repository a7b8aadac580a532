"""Pure functions over Optuna trials: group them by cell key, compute a key's status, pick its decisive attempt.

Every trial sweepdae writes carries the cell's `key` in `user_attrs`; trials without one (made by other tools, or
by a bare `Study.ask()`) are not cells and are ignored here.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Mapping
from enum import StrEnum
from typing import Any

from optuna.trial import FrozenTrial, TrialState


class CellStatus(StrEnum):
    """Status of one cell key, computed over all its trials (attempts)."""

    NEW = "new"  # no trial at all (registered in a grid, never enqueued)
    QUEUED = "queued"  # a WAITING trial
    RUNNING = "running"  # a RUNNING trial
    DONE = "done"  # a COMPLETE trial
    FAILED = "failed"  # only FAIL (or PRUNED) trials


# The precedence of `status_from_states`: the first state present decides.
_PRECEDENCE: tuple[tuple[TrialState, CellStatus], ...] = (
    (TrialState.COMPLETE, CellStatus.DONE),
    (TrialState.RUNNING, CellStatus.RUNNING),
    (TrialState.WAITING, CellStatus.QUEUED),
    (TrialState.FAIL, CellStatus.FAILED),
    (TrialState.PRUNED, CellStatus.FAILED),
)


def status_from_states(states: Iterable[TrialState]) -> CellStatus:
    """done if any COMPLETE; else running if any RUNNING; else queued if any WAITING; else failed; else new."""
    present = set(states)
    for state, status in _PRECEDENCE:
        if state in present:
            return status
    return CellStatus.NEW


def key_of(trial: FrozenTrial) -> str | None:
    key = trial.user_attrs.get("key")
    return key if isinstance(key, str) else None


def group_by_key(trials: Iterable[FrozenTrial]) -> dict[str, list[FrozenTrial]]:
    """key -> its trials in trial-number order (creation order)."""
    groups: dict[str, list[FrozenTrial]] = defaultdict(list)
    for trial in trials:
        key = key_of(trial)
        if key is not None:
            groups[key].append(trial)
    for group in groups.values():
        group.sort(key=lambda t: t.number)
    return dict(groups)


def key_status(trials: Iterable[FrozenTrial]) -> CellStatus:
    return status_from_states(t.state for t in trials)


def next_attempt(trials: Iterable[FrozenTrial]) -> int:
    """1 + the highest attempt number recorded for the key (1 for a key never enqueued)."""
    return 1 + max((int(t.user_attrs.get("attempt", 0) or 0) for t in trials), default=0)


def decisive(trials: list[FrozenTrial]) -> FrozenTrial | None:
    """The attempt that explains a key's status: its first COMPLETE trial, else the newest RUNNING, else the
    newest WAITING, else the newest FAIL that is not a duplicate (a duplicate only says another trial ran)."""
    if not trials:
        return None
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    if complete:
        return complete[0]
    for state in (TrialState.RUNNING, TrialState.WAITING):
        matching = [t for t in trials if t.state == state]
        if matching:
            return matching[-1]
    real = [t for t in trials if not t.user_attrs.get("duplicate")]
    return (real or trials)[-1]


def start_time(trial: FrozenTrial) -> float | None:
    """Unix time the attempt started: our `started` attr (UTC-safe), else Optuna's naive local datetime."""
    started = trial.user_attrs.get("started")
    if isinstance(started, (int, float)):
        return float(started)
    return trial.datetime_start.timestamp() if trial.datetime_start is not None else None


def finish_time(trial: FrozenTrial) -> float | None:
    finished = trial.user_attrs.get("finished")
    if isinstance(finished, (int, float)):
        return float(finished)
    return trial.datetime_complete.timestamp() if trial.datetime_complete is not None else None


def clean_metrics(metrics: Mapping[str, Any]) -> dict[str, float | None]:
    """Metric values as JSON-safe floats: NaN and +-inf become None (strict JSON has no NaN)."""
    out: dict[str, float | None] = {}
    for name, value in metrics.items():
        number = float(value)
        out[str(name)] = number if math.isfinite(number) else None
    return out


def deep_merge(base: Mapping[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """`base` with `overrides` applied; nested dicts merge key by key, anything else is replaced."""
    merged: dict[str, Any] = dict(base)
    for name, value in overrides.items():
        current = merged.get(name)
        if isinstance(current, Mapping) and isinstance(value, Mapping):
            merged[name] = deep_merge(current, value)
        else:
            merged[name] = value
    return merged


def duplicate_of(trial: FrozenTrial, key_trials: list[FrozenTrial]) -> FrozenTrial | None:
    """The trial that makes `trial` a duplicate: a COMPLETE one of its key, or a lower-numbered unfinished one.

    Judged on the snapshot read before `trial` was claimed, which is sound: a finished trial stays finished,
    and every lower-numbered trial already exists in it (numbers are handed out in creation order).
    """
    for other in key_trials:
        if other.number == trial.number:
            continue
        if other.state == TrialState.COMPLETE:
            return other
        if other.state in (TrialState.WAITING, TrialState.RUNNING) and other.number < trial.number:
            return other
    return None
