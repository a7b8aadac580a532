"""Pieces the Store is built from: the Claim record, lease states, backend errors, JSON checks, retry overrides,
the owner check."""

from __future__ import annotations

import json
import os
import socket
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from optuna.exceptions import StorageInternalError
from optuna.trial import FrozenTrial

from sweepdae.errors import StoreError
from sweepdae.store._trials import deep_merge
from sweepdae.utils import alive

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


class LeaseState(StrEnum):
    """What `Store.acquire_training` found about a training."""

    MINE = "mine"  # this owner now trains it (with the claim to heartbeat and complete)
    BUSY = "busy"  # another owner trains it
    DONE = "done"  # it is trained (with the info its trainer recorded)


@dataclass(frozen=True)
class TrainingLease:
    """What `Store.acquire_training` found: `LeaseState.MINE` (with the claim to heartbeat and complete), `BUSY`
    (`owner` trains it) or `DONE` (with the `info` its trainer recorded)."""

    state: LeaseState
    claim: Claim | None
    info: dict[str, Any]
    owner: str


def is_backend_error(exc: BaseException) -> bool:
    if isinstance(exc, (StorageInternalError, OSError)):
        return True
    sa_exc = sys.modules.get("sqlalchemy.exc")  # only loaded for RDB storages
    return sa_exc is not None and isinstance(exc, sa_exc.SQLAlchemyError)


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


def dead_local_owner(owner: str) -> bool:
    """A coordinator (or tune process) of this host whose process is gone (killed): its claims need not wait for
    their lease. An owner is `host:pid`, or `tag@host:pid` (a SLURM job's coordinator:
    `slurm-<job id>.<restart>@host:pid`)."""
    host, _, pid = owner.rpartition("@")[2].rpartition(":")
    if host != socket.gethostname() or not pid.isdigit():
        return False
    return not alive(int(pid))
