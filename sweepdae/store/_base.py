"""What every part of the Store shares: the connection to one Optuna study, the closed state, the reads every
part makes, and `guarded` (one StoreError line for a backend failure; retries through an outage when asked)."""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Concatenate, ParamSpec, TypeVar

import optuna
from optuna.trial import FrozenTrial, TrialState

from sweepdae.errors import StoreError, StoreUnavailable
from sweepdae.store._common import is_backend_error
from sweepdae.store._index import make_index
from sweepdae.store._trials import key_of
from sweepdae.store._url import StoreURL, describe_error

P = ParamSpec("P")
R = TypeVar("R")
S = TypeVar("S", bound="StoreBase")


@dataclass
class Life:
    """Open or closed, shared by a store, its trainings queue and every `PatientStore` over it."""

    closed: bool = False


@dataclass
class Retry:
    """Retry a store call through an outage of the backend (a `StoreUnavailable`: connection refused, server
    restarting, journal briefly unreadable) for up to `outage_s` seconds, saying so through `say`.

    Only the outermost call retries: a call made inside another (`forget` -> `forgettable`) fails through to it,
    so an outage is waited out once per call, not once per level. A store is used by one thread at a time."""

    outage_s: float
    say: Callable[[str], None]
    active: bool = False

    def call(self, name: str, once: Callable[[], R]) -> R:
        if self.active:
            return once()
        self.active = True
        try:
            down_since: float | None = None
            delay = 0.5
            while True:
                try:
                    result = once()
                except StoreUnavailable as e:  # the backend's fault: the same call may work once it is back
                    now = time.time()
                    if down_since is None:
                        down_since = now
                        self.say(f"store unreachable ({name}): {e}; retrying for up to {self.outage_s:.0f} s, "
                                 "running cells go on")
                    if now - down_since >= self.outage_s:
                        raise
                    time.sleep(delay)
                    delay = min(2 * delay, 10.0)
                    continue
                if down_since is not None:
                    self.say(f"store reachable again after {time.time() - down_since:.0f} s")
                return result
        finally:
            self.active = False


def guarded(method: Callable[Concatenate[S, P], R]) -> Callable[Concatenate[S, P], R]:
    """Turn a lost database or unreadable journal into one StoreError line (the server may come back); refuse
    calls on a closed store; on a store with a `Retry`, retry through an outage."""

    @functools.wraps(method)
    def wrapper(self: S, /, *args: P.args, **kwargs: P.kwargs) -> R:
        if self._closed:
            raise StoreError(f"store {self.url} is closed")

        def once() -> R:
            try:
                return method(self, *args, **kwargs)
            except StoreError:
                raise
            except Exception as exc:
                if is_backend_error(exc):
                    raise StoreUnavailable(f"store {self.url}: {describe_error(exc)}") from exc
                raise

        return once() if self._retry is None else self._retry.call(method.__name__, once)

    return wrapper


class StoreBase:
    """One Optuna study of a store's storage, and the reads every part of the Store makes of it."""

    _retry: Retry | None = None  # set by `PatientStore`

    def __init__(self, parsed: StoreURL, storage: optuna.storages.BaseStorage, study: optuna.Study, *,
                 life: Life | None = None) -> None:
        self.url = parsed.shown  # password masked
        self.kind = parsed.kind
        self._storage = storage
        self._study = study
        self._study_id = storage.get_study_id_from_name(study.study_name)
        self._index = make_index(storage, self._study_id)  # narrow reads for claim / retry / rescue / reap
        self._life = life or Life()
        self._parsed = parsed

    def __repr__(self) -> str:
        return f"Store({self.url!r})"

    @property
    def _closed(self) -> bool:
        return self._life.closed

    @property
    def folder(self) -> Path | None:
        """The folder of a journal or SQLite store file (records keep the runs folder relative to it); None for
        a database server."""
        if self.kind == "journal":
            return Path(self._parsed.target).expanduser().absolute().parent
        if self.kind == "sqlite" and self._parsed.target != "sqlite:///:memory:":
            return Path(self._parsed.target[len("sqlite:///"):]).expanduser().absolute().parent
        return None

    def _trials(self, states: Sequence[TrialState] | None = None) -> list[FrozenTrial]:
        return self._remembered(self._storage.get_all_trials(self._study_id, deepcopy=False, states=states))

    def _key_trials(self, key: str) -> list[FrozenTrial]:
        return self._remembered(self._index.key_trials(key))

    def _forgotten(self) -> dict[str, int]:
        """key -> the last trial number `forget` dropped (study user attrs `forget:<key>`)."""
        attrs = self._storage.get_study_user_attrs(self._study_id)
        return {k[len("forget:"):]: int(v["before"]) for k, v in attrs.items()
                if k.startswith("forget:") and isinstance(v, dict) and isinstance(v.get("before"), int)}

    def _remembered(self, trials: list[FrozenTrial]) -> list[FrozenTrial]:
        """Trials minus those of forgotten cells (Optuna cannot delete a trial: `forget` hides them)."""
        forgotten = self._forgotten()
        if not forgotten:
            return trials
        return [t for t in trials if not ((k := key_of(t)) in forgotten and t.number <= forgotten[k])]

    def _registered_grids(self) -> list[dict[str, Any]]:
        """The grids registered in this study (`Store.register_grid`), sorted by (name, profile)."""
        attrs = self._storage.get_study_user_attrs(self._study_id)
        found = [v for k, v in attrs.items() if k.startswith("grid:") and isinstance(v, dict)]
        return sorted(found, key=lambda g: (str(g.get("name")), str(g.get("profile"))))

    def _grid_cells(self) -> dict[str, dict[str, Any]]:
        """key -> {label, grids} for every cell of every registered grid."""
        cells: dict[str, dict[str, Any]] = {}
        for grid in self._registered_grids():
            for cell in grid.get("cells", []):
                entry = cells.setdefault(cell["key"], {"label": cell.get("label"), "grids": []})
                if grid["name"] not in entry["grids"]:
                    entry["grids"].append(grid["name"])
        return cells
