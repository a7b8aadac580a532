"""The store's registry, kept in the cells' study's user attrs: grids (`grid:<name>:<profile>`), SLURM jobs
(`job:<job_id>`), the store's identity (`store_id`); and the `sweepdae tune` studies beside the cells' study."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import optuna
from optuna.trial import TrialState

from sweepdae.errors import StoreError
from sweepdae.store._base import StoreBase, guarded
from sweepdae.store._common import jsonable
from sweepdae.store._url import _QuietOptuna

STORE_ID_ATTR = "store_id"  # study user attr of the cells' study: the store's identity (`Store.identity`)
TUNE_STUDY_PREFIX = "sweepdae-tune:"


def tune_study_name(grid: str, profile: str | None, metric: str) -> str:
    """The Optuna study of `sweepdae tune` over `grid` under `profile`, for `metric`."""
    return f"{TUNE_STUDY_PREFIX}{grid}:{profile or ''}:{metric}"


@dataclass(frozen=True)
class JobRecord:
    """A job submitted to a cluster (`sweepdae run --executor slurm`), kept by the store as study user attr
    `job:<job_id>` so that every machine sharing the store sees which job holds which cell."""

    job_id: str
    keys: list[str]  # the cells it runs
    grid: str = ""
    profile: str = ""
    train_key: str | None = None  # the training its cells share
    labels: list[str] = field(default_factory=list)
    log: str = ""  # the job's stdout file
    submitted: float = 0.0  # unix time
    options: dict[str, Any] = field(default_factory=dict)  # its resolved `[slurm]` options

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> JobRecord:
        """Read a record back; ValueError when `job_id` is not a string or `keys` not a list."""
        if not isinstance(raw.get("job_id"), str) or not isinstance(raw.get("keys"), list):
            raise ValueError(f"a job needs a string job_id and a list of keys: {dict(raw)!r:.200}")
        return cls(job_id=raw["job_id"], keys=[str(k) for k in raw["keys"]], grid=str(raw.get("grid") or ""),
                   profile=str(raw.get("profile") or ""), train_key=raw.get("train_key"),
                   labels=[str(x) for x in raw.get("labels") or []], log=str(raw.get("log") or ""),
                   submitted=float(raw.get("submitted") or 0), options=dict(raw.get("options") or {}))


class Registry(StoreBase):
    """Grids, cluster jobs, tune studies and the store's identity."""

    # ------------------------------------------------------------------ grids
    @guarded
    def register_grid(self, name: str, *, profile: str, spec: dict[str, Any], cells: list[dict[str, Any]]) -> None:
        """Remember a grid so reports know every one of its cells, also those never run.

        Stored as study user attr `grid:{name}:{profile}` = {name, profile, spec, cells: [{key, label, coords,
        step}], updated}. Idempotent: registering the same content again writes nothing.
        """
        entry: dict[str, Any] = {
            "name": name,
            "profile": profile,
            "spec": spec,
            "cells": [
                {"key": c["key"], "label": c.get("label"), "coords": c.get("coords"), "step": c.get("step"),
                 **({"train_key": c["train_key"]} if c.get("train_key") else {})}
                for c in cells
            ],
        }
        jsonable(entry, f"grid {name!r}")
        entry = json.loads(json.dumps(entry))  # tuples -> lists, as the storage will hand them back
        attr = f"grid:{name}:{profile}"
        current = self._storage.get_study_user_attrs(self._study_id).get(attr)
        if isinstance(current, dict) and {k: v for k, v in current.items() if k != "updated"} == entry:
            return
        self._storage.set_study_user_attr(self._study_id, attr, {**entry, "updated": time.time()})

    @guarded
    def grids(self) -> list[dict[str, Any]]:
        """Registered grids, each {name, profile, spec, cells, updated}, sorted by (name, profile)."""
        return self._registered_grids()

    # ------------------------------------------------------------------ cluster jobs
    @guarded
    def record_jobs(self, jobs: Iterable[JobRecord | Mapping[str, Any]]) -> None:
        """Remember jobs submitted to a cluster (a `JobRecord`, or its dict with at least `job_id` and `keys`),
        so that every machine sharing the store sees which job holds which cell (`status`, `cancel`, a rerun that
        must not submit twice)."""
        for job in jobs:
            record = job if isinstance(job, JobRecord) else JobRecord.from_dict(job)
            raw = record.to_dict()
            jsonable(raw, f"job {record.job_id}")
            self._storage.set_study_user_attr(self._study_id, f"job:{record.job_id}", json.loads(json.dumps(raw)))

    @guarded
    def jobs(self) -> list[JobRecord]:
        """Every recorded cluster job, oldest submission first."""
        attrs = self._storage.get_study_user_attrs(self._study_id)
        found = [JobRecord.from_dict(v) for k, v in attrs.items() if k.startswith("job:") and isinstance(v, dict)]
        return sorted(found, key=lambda j: (j.submitted, j.job_id))

    # ------------------------------------------------------------------ identity
    @guarded
    def identity(self, *, create: bool = True) -> str | None:
        """This store's id: a random hex string kept in its own metadata (study user attr `store_id`), so it is the
        same whichever URL reaches the store (a symlinked journal, a host alias). Made on first use (None when
        `create` is false and there is none yet). Two first uses at once may both write one: each reads back the
        stored one, and a folder marked with the losing id is only ever kept, never removed, by `gc`."""
        sid = self._storage.get_study_user_attrs(self._study_id).get(STORE_ID_ATTR)
        if isinstance(sid, str) and sid:
            return sid
        if not create:
            return None
        self._storage.set_study_user_attr(self._study_id, STORE_ID_ATTR, uuid.uuid4().hex)
        return str(self._storage.get_study_user_attrs(self._study_id)[STORE_ID_ATTR])

    # ------------------------------------------------------------------ tune studies
    @guarded
    def tune_study(self, name: str, *, direction: str, sampler: optuna.samplers.BaseSampler | None = None,
                   attrs: Mapping[str, Any] | None = None) -> optuna.Study:
        """The Optuna study of a `sweepdae tune` search (created on first use, in this store's storage, beside
        the cells' study): its trials are real Optuna trials with params and values. `attrs` go to its user
        attrs. A study's direction is fixed when it is created."""
        with _QuietOptuna():
            try:
                study = optuna.load_study(study_name=name, storage=self._storage, sampler=sampler)
            except KeyError:
                study = optuna.create_study(study_name=name, storage=self._storage, sampler=sampler,
                                            direction=optuna.study.StudyDirection[direction.upper()],
                                            load_if_exists=True)
        have = study.direction.name.lower()
        if have != direction:
            raise StoreError(f"store {self.url}: study {name!r} was created to {have} its metric; a study keeps its "
                             f"direction (asked: {direction})")
        for k, v in (attrs or {}).items():
            jsonable(v, f"study attr {k}")
            if study.user_attrs.get(k) != v:
                study.set_user_attr(k, v)
        return study

    @guarded
    def tune_studies(self) -> list[optuna.Study]:
        """Every `sweepdae tune` study of the store, by name."""
        names = sorted(s.study_name for s in self._storage.get_all_studies()
                       if s.study_name.startswith(TUNE_STUDY_PREFIX))
        with _QuietOptuna():
            return [optuna.load_study(study_name=n, storage=self._storage) for n in names]

    @guarded
    def fail_abandoned_tune_trials(self, study: optuna.Study, *, dead_owner: Callable[[str], bool]
                                   ) -> list[tuple[int, str]]:
        """Fail the RUNNING trials of a tune study whose process `dead_owner` says is gone (user attr `owner`,
        with `error` = "its tune process stopped"), so the search goes on; returns (trial number, owner) of each.
        """
        failed: list[tuple[int, str]] = []
        for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            owner = str(t.user_attrs.get("owner", ""))
            if owner and dead_owner(owner):
                # Optuna's public API tells a trial only through the `Trial` that asked for it: the storage's
                # setters finish a trial another process asked for.
                self._storage.set_trial_user_attr(t._trial_id, "error", "its tune process stopped")
                self._storage.set_trial_state_values(t._trial_id, TrialState.FAIL)
                failed.append((t.number, owner))
        return failed
