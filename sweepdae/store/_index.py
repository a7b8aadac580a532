"""Narrow reads for the queue paths (claim, retry, rescue, reap): what a call needs, not every trial of the study.

`Store._trials()` loads every trial with every attribute (recipes included). On an RDB storage Optuna's cache
re-reads every unfinished trial from the database on each call, so a claim with 1,000 cells queued read 1,000
trials and their JSON attributes: ~0.4 s per claim on SQLite and PostgreSQL, quadratic over a drain
(benchmarks/bench_store.py). On a database these reads are SQL over the trial and attribute tables; on a journal
(replayed in memory) plain filters.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Protocol

from optuna.storages import BaseStorage, RDBStorage
from optuna.trial import FrozenTrial, TrialState

from sweepdae.store._trials import key_of

WAITING_PAGE = 64  # WAITING trials listed per query
# sweepdae's one addition to Optuna's schema: a partial index on the `key` attribute's value (its first
# KEY_PREFIX characters, so an odd huge value can never exceed a b-tree row), so a cell's trials are found
# without scanning every attribute row.
KEY_INDEX = "ix_sweepdae_trial_key"
KEY_PREFIX = 100


@dataclass(frozen=True)
class Ref:
    """A trial without its attributes: enough to order the queue and pick a candidate."""

    trial_id: int
    number: int
    key: str | None  # None: a trial without a string `key` (not a cell)


class TrialIndex(Protocol):
    def waiting(self) -> Iterator[Ref]:
        """Every WAITING trial of the study, by trial number (lazily: a claim usually takes the first)."""

    def key_trials(self, key: str) -> list[FrozenTrial]:
        """Every trial of one cell key, by trial number, read now."""

    def running(self) -> list[FrozenTrial]:
        """Every RUNNING trial of the study, by trial number, read now."""


class MemoryIndex:
    """Any storage, through `get_all_trials` (cheap on a journal: its trials are replayed in memory)."""

    def __init__(self, storage: BaseStorage, study_id: int) -> None:
        self._storage, self._study_id = storage, study_id

    def _all(self, states: tuple[TrialState, ...] | None = None) -> list[FrozenTrial]:
        return self._storage.get_all_trials(self._study_id, deepcopy=False, states=states)

    def waiting(self) -> Iterator[Ref]:
        for t in sorted(self._all((TrialState.WAITING,)), key=lambda t: t.number):
            yield Ref(t._trial_id, t.number, key_of(t))

    def key_trials(self, key: str) -> list[FrozenTrial]:
        return sorted((t for t in self._all() if key_of(t) == key), key=lambda t: t.number)

    def running(self) -> list[FrozenTrial]:
        return sorted(self._all((TrialState.RUNNING,)), key=lambda t: t.number)


class SQLIndex:
    """An RDB storage: ids and keys by SQL over Optuna's `trials` / `trial_user_attributes` tables, then only
    the trials needed, one by one through `storage.get_trial` (finished ones come from Optuna's cache)."""

    def __init__(self, storage: BaseStorage, rdb: RDBStorage, study_id: int) -> None:
        from optuna.storages._rdb import models  # Optuna's table definitions (the schema its storage writes)

        self._storage, self._engine, self._study_id = storage, rdb.engine, study_id
        self._trial = models.TrialModel
        self._attr = models.TrialUserAttributeModel

    def _rows(self, stmt: Any) -> list[Any]:
        with self._engine.connect() as conn:
            return list(conn.execute(stmt))

    def _load(self, trial_ids: list[int]) -> list[FrozenTrial]:
        return sorted((self._storage.get_trial(i) for i in trial_ids), key=lambda t: t.number)

    def waiting(self) -> Iterator[Ref]:
        import sqlalchemy as sa

        t, a = self._trial, self._attr
        after = -1
        while True:  # in pages: a claim usually takes the first candidate, so it reads one short page
            stmt = (sa.select(t.trial_id, t.number, a.value_json)
                    .select_from(t)
                    .outerjoin(a, sa.and_(a.trial_id == t.trial_id, a.key == "key"))
                    .where(t.study_id == self._study_id, t.state == TrialState.WAITING, t.number > after)
                    .order_by(t.number)
                    .limit(WAITING_PAGE))
            rows = self._rows(stmt)
            for tid, num, raw in rows:
                yield Ref(int(tid), int(num), _json_str(raw))
            if len(rows) < WAITING_PAGE:
                return
            after = int(rows[-1][1])

    def key_trials(self, key: str) -> list[FrozenTrial]:
        import sqlalchemy as sa

        t, a = self._trial, self._attr
        # Optuna stores every attribute as json.dumps(value), so the key's row holds exactly json.dumps(key).
        value = json.dumps(key)
        # Literals where the partial index must match the query's text: its predicate and its expression.
        prefix = sa.func.substr(a.value_json, sa.literal_column("1"), sa.literal_column(str(KEY_PREFIX)))
        rows = (sa.select(a.trial_id)
                .where(a.key == sa.literal_column("'key'"), prefix == value[:KEY_PREFIX], a.value_json == value))
        stmt = sa.select(t.trial_id).where(t.study_id == self._study_id, t.trial_id.in_(rows))
        return self._load([int(r[0]) for r in self._rows(stmt)])

    def running(self) -> list[FrozenTrial]:
        import sqlalchemy as sa

        t = self._trial
        stmt = sa.select(t.trial_id).where(t.study_id == self._study_id, t.state == TrialState.RUNNING)
        return self._load([int(r[0]) for r in self._rows(stmt)])


def ensure_key_index(engine: Any) -> None:
    """Create KEY_INDEX when it is missing (store opens that may create). Any failure (two processes creating it
    at once, no rights) leaves the lookups correct, only slower: they scan the attribute rows instead."""
    import sqlalchemy as sa

    exists = {  # catalog lookups (SQLAlchemy does not reflect expression indexes); other dialects: no index
        "postgresql": "SELECT 1 FROM pg_indexes WHERE schemaname = current_schema() AND indexname = :name",
        "sqlite": "SELECT 1 FROM sqlite_master WHERE type = 'index' AND name = :name",
    }.get(engine.dialect.name)
    if exists is None:
        return
    try:
        with engine.connect() as conn:
            if conn.execute(sa.text(exists), {"name": KEY_INDEX}).first() is not None:
                return
        with engine.begin() as conn:
            conn.execute(sa.text(f"CREATE INDEX IF NOT EXISTS {KEY_INDEX} ON trial_user_attributes "
                                 f"(substr(value_json, 1, {KEY_PREFIX})) WHERE key = 'key'"))
    except sa.exc.SQLAlchemyError:
        pass


def _json_str(raw: str | None) -> str | None:
    """The `key` attribute's value when it is a string (as `key_of` reads it), else None."""
    if raw is None:
        return None
    try:
        value = json.loads(raw)
    except ValueError:
        return None
    return value if isinstance(value, str) else None


def make_index(storage: BaseStorage, study_id: int) -> TrialIndex:
    """SQL reads for an RDB storage (bare or behind Optuna's cache), in-memory filters for anything else."""
    rdb = storage if isinstance(storage, RDBStorage) else getattr(storage, "_backend", None)
    if isinstance(rdb, RDBStorage):
        return SQLIndex(storage, rdb, study_id)
    return MemoryIndex(storage, study_id)
