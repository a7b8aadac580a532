"""Pieces the Store is built from: the Claim record, error translation, JSON checks, retry overrides."""

from __future__ import annotations

import functools
import json
import os
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, ParamSpec, TypeVar

from optuna.exceptions import StorageInternalError
from optuna.trial import FrozenTrial

from sweepdae.errors import StoreError, StoreUnavailable
from sweepdae.store._trials import deep_merge
from sweepdae.store._url import describe_error

P = ParamSpec("P")
R = TypeVar("R")

DEFAULT_LEASE_S = 120.0  # also the lease assumed for a RUNNING trial that never got a `lease_expires`
DEFAULT_POISON_ATTEMPTS = 3


def poison_attempts() -> int:
    """After how many attempts in a row whose coordinator died (reaped as stale) a cell is quarantined:
    $SWEEPDAE_POISON_ATTEMPTS (default 3; 0 = never)."""
    raw = os.environ.get("SWEEPDAE_POISON_ATTEMPTS", "").strip()
    if not raw:
        return DEFAULT_POISON_ATTEMPTS
    try:
        n = int(raw)
    except ValueError:
        n = -1
    if n < 0:
        raise StoreError(f"SWEEPDAE_POISON_ATTEMPTS must be a whole number >= 0 (0 = never quarantine), got {raw!r}")
    return n


@dataclass(frozen=True)
class Claim:
    """One cell taken from the queue by `Store.claim`: pass it back to heartbeat/record_progress/complete/fail.

    `recipe` is the cell's recipe with `recipe_overrides` (set by a retry, e.g. a halved micro-batch) applied;
    the key stays the key of the original recipe. Picklable, so a coordinator can hand it to a subprocess.
    """

    number: int  # Optuna trial number (unique in the study)
    key: str
    label: str
    recipe: dict[str, Any]
    attempt: int
    grid: str | None = None
    owner: str = ""
    lease_s: float = DEFAULT_LEASE_S
    started: float = 0.0
    recipe_overrides: dict[str, Any] = field(default_factory=dict)
    train_key: str | None = None  # the training the cell evaluates (None for trials queued before schema 2)
    _trial_id: int = -1


@dataclass(frozen=True)
class TrainingLease:
    """What `Store.acquire_training` found: "mine" (with the claim to heartbeat and complete), "busy" (another
    owner trains it) or "done" (with the info its trainer recorded)."""

    state: str
    claim: Claim | None
    info: dict[str, Any]
    owner: str


def is_backend_error(exc: BaseException) -> bool:
    if isinstance(exc, (StorageInternalError, OSError)):
        return True
    sa_exc = sys.modules.get("sqlalchemy.exc")  # only loaded for RDB storages
    return sa_exc is not None and isinstance(exc, sa_exc.SQLAlchemyError)


def guarded(method: Callable[P, R]) -> Callable[P, R]:
    """Turn a lost database or unreadable journal into one StoreError line (the server may come back)."""

    @functools.wraps(method)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        store: Any = args[0]  # a Store; typed loosely to keep this module free of it
        if store._closed:
            raise StoreError(f"store {store.url} is closed")
        try:
            return method(*args, **kwargs)
        except StoreError:
            raise
        except Exception as exc:
            if is_backend_error(exc):
                raise StoreUnavailable(f"store {store.url}: {describe_error(exc)}") from exc
            raise

    return wrapper


def jsonable(value: Any, what: str) -> None:
    try:
        json.dumps(value, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{what} is not JSON-serialisable: {exc}") from None


def overrides_after(trial: FrozenTrial) -> dict[str, Any]:
    """Recipe overrides for the attempt after `trial`: its own, deep-merged with `info["recipe_overrides"]` when
    it failed asking for a retry (e.g. a halved micro-batch after an out-of-memory error)."""
    attrs = trial.user_attrs
    overrides = dict(attrs.get("recipe_overrides") or {})
    info = attrs.get("info")
    if attrs.get("retry") and isinstance(info, Mapping) and isinstance(info.get("recipe_overrides"), Mapping):
        overrides = deep_merge(overrides, info["recipe_overrides"])
    return overrides
