"""Trials -> tidy pandas DataFrames (one row per key, or one row per attempt). pandas is imported lazily so
workers that only claim and complete do not pay for it."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from optuna.trial import FrozenTrial

from sweepdae.store._trials import decisive, finish_time, key_status, start_time

if TYPE_CHECKING:
    import pandas as pd

CELL_COLUMNS = [
    "key", "label", "status", "attempts", "train_key", "reused_training", "grid", "grids", "trial", "attempt",
    "owner", "started", "finished",
    "duration_s", "failure_class", "error", "traceback_tail", "artifact_dir", "recipe", "recipe_overrides",
    "progress", "info",
]
ATTEMPT_COLUMNS = [
    "trial", "key", "label", "attempt", "state", "train_key", "reused_training", "grid", "owner", "started",
    "finished", "duration_s",
    "lease_expires", "failure_class", "error", "traceback_tail", "duplicate", "stale", "retry_of",
    "recovered_from", "reason", "artifact_dir", "recipe", "recipe_overrides", "progress", "info",
]
_FAILURE_FIELDS = ("failure_class", "error", "traceback_tail")


def _trial_fields(trial: FrozenTrial) -> dict[str, Any]:
    """The columns every row shares, from one trial."""
    attrs = trial.user_attrs
    raw_info = attrs.get("info")
    info: Mapping[str, Any] = raw_info if isinstance(raw_info, Mapping) else {}
    started, finished = start_time(trial), finish_time(trial)
    failed = trial.state.name == "FAIL"
    row: dict[str, Any] = {
        "trial": trial.number,
        "label": attrs.get("label"),
        "attempt": attrs.get("attempt"),
        # the training the cell evaluates; reused_training: it evaluated a training another cell made
        "train_key": info.get("train_key") or attrs.get("train_key"),
        "reused_training": info.get("reused_training"),
        "grid": attrs.get("grid"),
        "owner": attrs.get("owner"),
        "started": started,
        "finished": finished,
        "duration_s": finished - started if started is not None and finished is not None else None,
        # A reaper may write its failure attrs just before the owner completes the trial: show them on FAILs only.
        **{name: attrs.get(name) if failed else None for name in _FAILURE_FIELDS},
        "artifact_dir": info.get("artifact_dir") or info.get("run_dir"),  # relative to the runs folder
        "recipe": attrs.get("recipe"),
        "recipe_overrides": attrs.get("recipe_overrides") or {},
        "progress": attrs.get("progress"),
        "info": dict(info),
    }
    metrics = attrs.get("metrics")
    if isinstance(metrics, Mapping) and trial.state.name == "COMPLETE":
        row.update({f"metric.{name}": value for name, value in metrics.items()})
    timings = info.get("timings")
    if isinstance(timings, Mapping):
        row.update({f"time.{name}": value for name, value in timings.items()})
    return row


def _frame(rows: list[dict[str, Any]], columns: list[str]) -> pd.DataFrame:
    import pandas as pd

    extra = sorted({name for row in rows for name in row} - set(columns))
    frame = pd.DataFrame(rows, columns=[*columns, *extra])
    for name in ("started", "finished"):
        frame[name] = pd.to_datetime(frame[name].astype("float64"), unit="s", utc=True)
    for name in ("trial", "attempt", "retry_of", "recovered_from"):
        if name in frame:  # whole numbers that may be missing: pandas' nullable integer
            frame[name] = frame[name].astype("Int64")
    for name in extra:
        if name.startswith(("metric.", "time.")):
            frame[name] = pd.to_numeric(frame[name], errors="coerce").astype("float64")
    return frame


def cells_frame(
    groups: dict[str, list[FrozenTrial]],
    grid_cells: dict[str, dict[str, Any]],
    keys: list[str] | None,
) -> pd.DataFrame:
    """One row per key; keys of registered grids without trials appear with status "new"."""
    if keys is None:
        keys = list(dict.fromkeys([*groups, *grid_cells]))
    rows: list[dict[str, Any]] = []
    for key in keys:
        trials = groups.get(key, [])
        chosen = decisive(trials)
        row = _trial_fields(chosen) if chosen is not None else {}
        grids = {t.user_attrs.get("grid") for t in trials} | set(grid_cells.get(key, {}).get("grids", []))
        row.update(
            key=key,
            label=row.get("label") or grid_cells.get(key, {}).get("label"),
            status=key_status(trials).value,
            attempts=max((int(t.user_attrs.get("attempt") or 0) for t in trials), default=0),
            grids=sorted(g for g in grids if isinstance(g, str)),
        )
        rows.append(row)
    frame = _frame(rows, CELL_COLUMNS)
    frame["attempts"] = frame["attempts"].astype("int64")
    return frame


def attempts_frame(groups: dict[str, list[FrozenTrial]], keys: list[str] | None) -> pd.DataFrame:
    """One row per trial of the given keys (all keys when None), in trial-number order."""
    wanted = groups.keys() if keys is None else [k for k in keys if k in groups]
    trials = sorted((t for key in wanted for t in groups[key]), key=lambda t: t.number)
    rows = []
    for trial in trials:
        attrs = trial.user_attrs
        rows.append({
            **_trial_fields(trial),
            "key": attrs["key"],
            "state": trial.state.name,
            "lease_expires": attrs.get("lease_expires"),
            "duplicate": bool(attrs.get("duplicate", False)),
            "stale": bool(attrs.get("stale", False)),
            "retry_of": attrs.get("retry_of"),
            "recovered_from": attrs.get("recovered_from"),
            "reason": attrs.get("reason"),
        })
    return _frame(rows, ATTEMPT_COLUMNS)
