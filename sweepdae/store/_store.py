"""`Store`: the results store and work queue of every sweep, over one Optuna study."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Collection, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import optuna
from optuna.distributions import CategoricalDistribution
from optuna.exceptions import UpdateFinishedTrialError
from optuna.trial import FrozenTrial, TrialState

from sweepdae.errors import StoreError
from sweepdae.store import _frame
from sweepdae.store._common import (
    DEFAULT_LEASE_S,
    Claim,
    TrainingLease,
    guarded,
    jsonable,
    overrides_after,
    poison_attempts,
)
from sweepdae.store._index import make_index
from sweepdae.store._trials import (
    CellStatus,
    clean_metrics,
    deep_merge,
    duplicate_of,
    group_by_key,
    key_of,
    key_status,
    next_attempt,
    start_time,
)
from sweepdae.store._url import StoreURL, _QuietOptuna

if TYPE_CHECKING:
    import pandas as pd

TRAININGS_STUDY = "sweepdae-trainings"
STORE_ID_ATTR = "store_id"  # study user attr of the cells' study: the store's identity (`Store.identity`)
_ERROR_CHARS = 2_000  # `error` is one message; keep rows small
_TRACEBACK_CHARS = 10_000  # the tail of a traceback is where the cause is


class Store:
    """Results store and work queue of every sweep: one Optuna study named "sweepdae" holds every cell of every
    grid as trials, keyed by the cell key in `user_attrs["key"]`. Create it with `open_store(url)`.

    Contract (the same on every backend; `tests/test_store.py::TestStoreContract` checks it on all three):

    * Backends: journal file (default; safe for many processes on one file system), PostgreSQL (many machines),
      SQLite (only when one coordinator process makes every store call: SQLite has no row locks, and two
      processes can claim the same trial).
    * A cell key has attempts (trials). Its status is computed over all of them: done if any COMPLETE; else
      running if any RUNNING; else queued if any WAITING; else failed if any FAIL; else new (see `CellStatus`).
    * Everything is kept in trial `user_attrs` (Optuna 5 has no public system-attr setters): `key`, `label`,
      `recipe`, `grid`, `attempt` (1 + the highest earlier attempt), `retry_of` (trial number), `reason`
      (enqueue | retry | reaped | recovered), `recipe_overrides`, `enqueued`; on claim `owner`,
      `lease_expires`, `started` (unix times); `progress`; on completion `metrics`, `info`, `finished`; on
      failure `failure_class`, `error`, `traceback_tail`, `info`, `finished`, `retry`; markers `duplicate`,
      `stale`, `spurious`, `recovered_from`.
    * Claiming never calls `Study.ask()`: it moves the oldest WAITING trial to RUNNING with the storage's atomic
      WAITING -> RUNNING transition, so an empty queue returns None and no sampler-made ("spurious") trial is
      ever created. A keyless WAITING trial (not ours) that gets claimed is failed with `spurious=True`.
    * Duplicates: two processes enqueueing the same key at once can both add a WAITING trial. Claim resolves it:
      a claimed trial whose key already has a COMPLETE trial, or an unfinished (WAITING/RUNNING) trial with a
      lower number, is failed with `duplicate=True` and the next trial is claimed. "Lowest unfinished number
      wins" makes the decision the same in every process, so exactly one of the copies runs. If that leaves
      the key with nothing unfinished while its last real attempt failed asking for a retry (whose owner saw
      the copy RUNNING and queued none), the claimer queues the retry itself. A copy that runs after an
      earlier attempt finished is numbered (and overridden) as that attempt's retry.
    * Leases: a claim holds a lease (`lease_expires`) that `heartbeat` renews. `reap_stale` fails every RUNNING
      trial whose lease ran out (`failure_class="killed"`, `stale=True`) and enqueues the next attempt. Leases
      are our own on every backend (JournalStorage has no heartbeats; RDB heartbeats only run in `optimize`).
    * Exactly-once results: a worker whose trial was reaped but who finishes anyway still records its result
      (`complete` returns True) unless the key is done by then: the result goes onto the key's lowest
      unfinished trial -- its WAITING retry (claimed first), or the retry another worker already runs (taken
      over: that worker's `heartbeat` and `complete` then return False) -- or onto a new trial if none is left.
      Every COMPLETE of a key is the exclusive finish of the one trial a claim may keep running (the lowest
      unfinished of its key), so a key never gets two COMPLETE trials. (If a take-over and the retry's own
      completion happen within milliseconds, `metrics` and `info` may come from the two different runs.)
    * COMPLETE needs a finite objective value: `metrics["objective"]` when given and finite, else the linear
      probe's top-1 (`probe_top1`, the paper's readout), else 0.0. The study direction is "maximize"; nothing in
      sweepdae reads the value (the metrics are in `user_attrs`): it is what optuna-dashboard plots. A cell
      enqueued with `params` (its grid coordinates) gets them as Optuna params when it completes.
    * Storage failures (server down, unreadable journal) raise `StoreError` with one line; the PostgreSQL engine
      uses `pool_pre_ping`, so the same Store keeps working after a server restart.
    """

    def __init__(self, parsed: StoreURL, storage: optuna.storages.BaseStorage, study: optuna.Study) -> None:
        self.url = parsed.shown  # password masked
        self.kind = parsed.kind
        self._storage = storage
        self._study = study
        self._study_id = storage.get_study_id_from_name(study.study_name)
        self._index = make_index(storage, self._study_id)  # narrow reads for claim / retry / rescue / reap
        self._closed = False
        self._parsed = parsed
        self._trainings: Store | None = None

    def __repr__(self) -> str:
        return f"Store({self.url!r})"

    @property
    def folder(self) -> Path | None:
        """The folder of a journal or SQLite store file (records keep the runs folder relative to it); None for
        a database server."""
        if self.kind == "journal":
            return Path(self._parsed.target).expanduser().absolute().parent
        if self.kind == "sqlite" and self._parsed.target != "sqlite:///:memory:":
            return Path(self._parsed.target[len("sqlite:///"):]).expanduser().absolute().parent
        return None

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ reading
    def _trials(self, states: Sequence[TrialState] | None = None) -> list[FrozenTrial]:
        return self._remembered(self._storage.get_all_trials(self._study_id, deepcopy=False, states=states))

    def _key_trials(self, key: str) -> list[FrozenTrial]:
        return self._remembered(self._index.key_trials(key))

    def _forgotten(self) -> dict[str, int]:
        """key -> the last trial number `forget` dropped (study user attrs `forget:<key>`)."""
        attrs = self._storage.get_study_user_attrs(self._study_id)
        return {k[len("forget:"):]: int(v["before"]) for k, v in attrs.items()
                if k.startswith("forget:") and isinstance(v, dict) and isinstance(v.get("before"), int)}

    @guarded
    def forgotten_at(self, key: str) -> float | None:
        """When `forget` last dropped the results of `key` (a Unix time), None when it never did. A `result.json`
        of the key made before then is the forgotten result: the coordinator must not record it again."""
        mark = self._storage.get_study_user_attrs(self._study_id).get(f"forget:{key}")
        when = mark.get("time") if isinstance(mark, dict) else None
        return float(when) if isinstance(when, (int, float)) and not isinstance(when, bool) else None

    def _remembered(self, trials: list[FrozenTrial]) -> list[FrozenTrial]:
        """Trials minus those of forgotten cells (Optuna cannot delete a trial: `forget` hides them)."""
        forgotten = self._forgotten()
        if not forgotten:
            return trials
        return [t for t in trials if not ((k := key_of(t)) in forgotten and t.number <= forgotten[k])]

    def _grid_cells(self) -> dict[str, dict[str, Any]]:
        """key -> {label, grids} for every cell of every registered grid."""
        cells: dict[str, dict[str, Any]] = {}
        for grid in self.grids():
            for cell in grid.get("cells", []):
                entry = cells.setdefault(cell["key"], {"label": cell.get("label"), "grids": []})
                if grid["name"] not in entry["grids"]:
                    entry["grids"].append(grid["name"])
        return cells

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
        attrs = self._storage.get_study_user_attrs(self._study_id)
        found = [v for k, v in attrs.items() if k.startswith("grid:") and isinstance(v, dict)]
        return sorted(found, key=lambda g: (str(g.get("name")), str(g.get("profile"))))

    # ------------------------------------------------------------------ cluster jobs
    @guarded
    def record_jobs(self, jobs: list[dict[str, Any]]) -> None:
        """Remember jobs submitted to a cluster (`sweepdae run --executor slurm`), each a dict with at least
        `job_id` and `keys` (the cells it runs); kept as study user attr `job:<job_id>`, so that every machine
        sharing the store sees which job holds which cell (`status`, `cancel`, a rerun that must not submit twice).
        """
        for job in jobs:
            if not isinstance(job.get("job_id"), str) or not isinstance(job.get("keys"), list):
                raise ValueError(f"a job needs a string job_id and a list of keys: {job!r:.200}")
            jsonable(job, f"job {job['job_id']}")
            self._storage.set_study_user_attr(self._study_id, f"job:{job['job_id']}", json.loads(json.dumps(job)))

    @guarded
    def jobs(self) -> list[dict[str, Any]]:
        """Every recorded cluster job, oldest submission first."""
        attrs = self._storage.get_study_user_attrs(self._study_id)
        found = [v for k, v in attrs.items() if k.startswith("job:") and isinstance(v, dict)]
        return sorted(found, key=lambda j: (float(j.get("submitted") or 0), str(j.get("job_id"))))

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
        from sweepdae.runner.tune import STUDY_PREFIX

        names = sorted(s.study_name for s in self._storage.get_all_studies() if s.study_name.startswith(STUDY_PREFIX))
        with _QuietOptuna():
            return [optuna.load_study(study_name=n, storage=self._storage) for n in names]

    # ------------------------------------------------------------------ queue
    @guarded
    def enqueue(self, cells: list[dict[str, Any]]) -> dict[str, str]:
        """Queue every cell that is not done, running or queued; return key -> what happened.

        Each cell is a dict with `key`, `label`, `recipe` (dict) and `grid` (name); optionally `params`, its grid
        coordinates (name -> {"value": label, "choices": [labels]}), which it gets as Optuna params when done.
        Results: "cached" (a COMPLETE trial exists), "running", "already-queued", or "queued" (a new WAITING
        trial, also for failed keys).
        Concurrent calls for the same keys may add duplicate WAITING trials; `claim` resolves them.
        """
        groups = group_by_key(self._trials())
        result: dict[str, str] = {}
        for cell in cells:
            key = cell.get("key")
            if not isinstance(key, str) or not key:
                raise ValueError(f"cell without a string 'key': {cell!r:.200}")
            if key in result:
                continue
            recipe = cell.get("recipe", {})
            if not isinstance(recipe, dict):
                raise ValueError(f"cell {key}: 'recipe' must be a dict, got {type(recipe).__name__}")
            jsonable(recipe, f"recipe of cell {key}")
            trials = groups.get(key, [])
            status = key_status(trials)
            if status is CellStatus.DONE:
                result[key] = "cached"
            elif status is CellStatus.RUNNING:
                result[key] = "running"
            elif status is CellStatus.QUEUED:
                result[key] = "already-queued"
            else:
                self._add_waiting(
                    key=key,
                    label=str(cell.get("label") or key[:12]),
                    recipe=recipe,
                    grid=cell.get("grid"),
                    attempt=next_attempt(trials),
                    retry_of=trials[-1].number if trials else None,
                    reason="enqueue",
                    recipe_overrides={},
                    train_key=cell.get("train_key"),
                    params=cell.get("params"),
                )
                result[key] = "queued"
        return result

    def _add_waiting(self, *, key: str, label: str, recipe: dict[str, Any], grid: str | None, attempt: int,
                     retry_of: int | None, reason: str, recipe_overrides: dict[str, Any],
                     train_key: str | None = None, params: dict[str, Any] | None = None) -> None:
        attrs: dict[str, Any] = {
            "key": key, "label": label, "recipe": recipe, "grid": grid, "attempt": attempt,
            "retry_of": retry_of, "reason": reason, "enqueued": time.time(),
        }
        if train_key:
            attrs["train_key"] = train_key
        if params:
            attrs["params"] = params
        if recipe_overrides:
            attrs["recipe_overrides"] = recipe_overrides
        self._study.enqueue_trial(params={}, user_attrs=attrs)

    def _enqueue_retry(self, trials: list[FrozenTrial], *, retry_of: FrozenTrial, reason: str) -> bool:
        """Queue the next attempt of the key of `trials` (fresh) unless it is done or has an unfinished trial.

        The new attempt copies label, recipe and grid from `retry_of` and its recipe overrides, deep-merged with
        `info["recipe_overrides"]` of a failure that asked for them.
        """
        if key_status(trials) in (CellStatus.DONE, CellStatus.RUNNING, CellStatus.QUEUED):
            return False
        attrs = retry_of.user_attrs
        overrides = overrides_after(retry_of)
        key = str(attrs["key"])
        self._add_waiting(
            key=key,
            label=str(attrs.get("label") or key[:12]),
            recipe=dict(attrs.get("recipe") or {}),
            grid=attrs.get("grid"),
            attempt=next_attempt(trials),
            retry_of=retry_of.number,
            reason=reason,
            recipe_overrides=overrides,
            train_key=attrs.get("train_key"),
            params=attrs.get("params"),
        )
        return True

    def _retry_after(self, trial_id: int) -> bool:
        """Queue the attempt after the finished trial `trial_id` (read fresh); True when queued."""
        trial = self._storage.get_trial(trial_id)
        key = key_of(trial)
        if key is None:
            return False
        reason = "reaped" if trial.user_attrs.get("stale") else "retry"
        trials = self._key_trials(key)
        if any(t.user_attrs.get("retry_of") == trial.number and not t.user_attrs.get("duplicate") for t in trials):
            return False  # queued already (by an earlier call whose reply was lost)
        return self._enqueue_retry(trials, retry_of=trial, reason=reason)

    def _finish(self, trial_id: int, state: TrialState, attrs: Mapping[str, Any],
                value: float | None = None) -> bool:
        """Write `attrs`, then move a RUNNING trial to `state`; False when someone else finished it first. A COMPLETE
        trial also gets its grid coordinates as Optuna params (`_set_params`)."""
        try:
            for name, attr in attrs.items():
                self._storage.set_trial_user_attr(trial_id, name, attr)
            if state == TrialState.COMPLETE:
                self._set_params(trial_id)
            return self._storage.set_trial_state_values(
                trial_id, state, [value] if value is not None else None
            )
        except UpdateFinishedTrialError:
            return False

    def _set_params(self, trial_id: int) -> None:
        """The cell's grid coordinates (user attr `params`: name -> {value, choices}, see `enqueue`) as Optuna
        params, categoricals over the axis labels, so that optuna-dashboard shows each cell where it sits. A name
        whose choices changed since (the grid file was edited) keeps its older cells' params; this one is skipped."""
        params = self._storage.get_trial(trial_id).user_attrs.get("params")
        if not isinstance(params, dict):
            return
        for name, p in params.items():
            try:
                dist = CategoricalDistribution(list(p["choices"]))
                self._storage.set_trial_param(trial_id, name, dist.to_internal_repr(p["value"]), dist)
            except (ValueError, KeyError, TypeError):
                continue

    def _rescue(self, keys: set[str]) -> None:
        """After failing duplicates of `keys`: if a key is left with no COMPLETE, RUNNING or WAITING trial and its
        last real attempt failed asking for a retry (`retry` or `stale`), queue that retry. Its owner (or the
        reaper) may have skipped it because it saw our duplicate RUNNING; we failed the duplicate first and read
        second, so whichever of us reads last sees both failures."""
        for key in keys:
            trials = self._key_trials(key)
            real = [t for t in trials if not t.user_attrs.get("duplicate")]
            if not real or key_status(trials) in (CellStatus.DONE, CellStatus.RUNNING, CellStatus.QUEUED):
                continue
            last = real[-1]
            stale = last.user_attrs.get("stale") and not last.user_attrs.get("poison")
            if last.state == TrialState.FAIL and (last.user_attrs.get("retry") or stale):
                self._enqueue_retry(trials, retry_of=last, reason="reaped" if last.user_attrs.get("stale")
                                    else "retry")

    @guarded
    def claim(self, owner: str, *, lease_s: float = DEFAULT_LEASE_S, keys: Collection[str] | None = None,
              skip_train_keys: Collection[str] = ()) -> Claim | None:
        """Take the oldest queued cell (FIFO by trial number), or None when the queue is empty.

        With `keys`, only cells among those keys are taken (`sweepdae run GRID` runs its own grid's cells;
        `sweepdae worker` passes None and takes any). Cells whose `train_key` is in `skip_train_keys` are left
        queued (their training is busy or lives on another machine: the coordinator does other work).

        The trial becomes RUNNING with user attrs `owner`, `lease_expires` (now + `lease_s`) and `started`.
        Duplicate and keyless WAITING trials met on the way are failed (`duplicate` / `spurious`) and skipped.
        """
        yielded: set[str] = set()
        claim: Claim | None = None
        while claim is None:
            # The queue without attributes; each candidate's key is read only when it is tried (reading every
            # trial per claim made a claim cost O(study size), see _index).
            listed = False
            for ref in self._index.waiting():
                if keys is not None and ref.key is not None and ref.key not in keys:
                    continue
                # The key's trials are read before the WAITING -> RUNNING move (see `duplicate_of`: sound).
                group = self._key_trials(ref.key) if ref.key is not None else []
                if skip_train_keys and any(t._trial_id == ref.trial_id and t.user_attrs.get("train_key")
                                           in skip_train_keys for t in group):
                    continue  # left queued; not "listed", so an all-skipped queue ends the claim with None
                listed = True
                try:
                    if not self._storage.set_trial_state_values(ref.trial_id, TrialState.RUNNING):
                        continue  # another process took it
                except UpdateFinishedTrialError:
                    continue
                trial = next((t for t in group if t._trial_id == ref.trial_id), None)
                if trial is None:  # keyless (not a cell): read it to fail it as spurious
                    trial = self._storage.get_trial(ref.trial_id)
                claim = self._take(trial, {ref.key: group} if ref.key is not None else {}, owner, lease_s, yielded)
                if claim is not None:
                    break
            if not listed:
                break
            # Everything listed was taken or skipped: look again.
        if yielded:
            self._rescue(yielded)
        return claim

    def _take(self, trial: FrozenTrial, groups: dict[str, list[FrozenTrial]], owner: str, lease_s: float,
              yielded: set[str]) -> Claim | None:
        """Turn the trial we just moved to RUNNING into a Claim, or fail it as spurious/duplicate (None)."""
        now = time.time()
        key = key_of(trial)
        if key is None:
            self._finish(trial._trial_id, TrialState.FAIL, {"spurious": True})
            return None
        winner = duplicate_of(trial, groups.get(key, []))
        if winner is not None:
            reason = f"trial {winner.number} of the same key is {winner.state.name}"
            self._finish(trial._trial_id, TrialState.FAIL, {"duplicate": True, "error": reason})
            if winner.state != TrialState.COMPLETE:
                yielded.add(key)
            return None
        attrs = dict(trial.user_attrs)
        # A copy from an enqueue race that runs after an earlier attempt of its key already finished is, in
        # effect, that attempt's retry (whose owner queued none, seeing this copy WAITING): number it so.
        # (a released attempt was given back, not run: the attempt that replaces it keeps its number)
        earlier = [t for t in groups.get(key, []) if t.number < trial.number and not t.user_attrs.get("duplicate")
                   and not t.user_attrs.get("released")]
        updates: dict[str, Any] = {"owner": owner, "lease_expires": now + lease_s, "started": now}
        if earlier and int(attrs.get("attempt") or 1) <= int(earlier[-1].user_attrs.get("attempt") or 1):
            updates.update(attempt=next_attempt(earlier), retry_of=earlier[-1].number)
            if earlier[-1].state == TrialState.FAIL:
                updates["recipe_overrides"] = deep_merge(attrs.get("recipe_overrides") or {},
                                                         overrides_after(earlier[-1]))
        try:
            for name, value in updates.items():
                self._storage.set_trial_user_attr(trial._trial_id, name, value)
        except UpdateFinishedTrialError:
            return None  # reaped between our claim and here (clocks far apart)
        attrs.update(updates)
        overrides = dict(attrs.get("recipe_overrides") or {})
        return Claim(
            number=trial.number,
            key=key,
            label=str(attrs.get("label") or key[:12]),
            recipe=deep_merge(attrs.get("recipe") or {}, overrides),
            attempt=int(attrs.get("attempt") or 1),
            grid=attrs.get("grid"),
            owner=owner,
            lease_s=lease_s,
            started=now,
            recipe_overrides=overrides,
            train_key=attrs.get("train_key"),
            _trial_id=trial._trial_id,
        )

    @guarded
    def heartbeat(self, claim: Claim) -> bool:
        """Renew the claim's lease; False when the cell should stop: its trial is no longer RUNNING (reaped, or
        completed with the result of an earlier, reaped worker that finished after all)."""
        trial = self._storage.get_trial(claim._trial_id)
        if trial.state != TrialState.RUNNING:
            return False
        try:
            self._storage.set_trial_user_attr(claim._trial_id, "lease_expires", time.time() + claim.lease_s)
        except UpdateFinishedTrialError:
            return False
        return True

    @guarded
    def record_progress(self, claim: Claim, **fields: Any) -> bool:
        """Replace the small `progress` dict of the claim's trial (e.g. phase, epoch); False if not RUNNING."""
        progress = {**fields, "updated": time.time()}
        jsonable(progress, "progress")
        try:
            self._storage.set_trial_user_attr(claim._trial_id, "progress", progress)
        except UpdateFinishedTrialError:
            return False
        return True

    @guarded
    def reap_stale(self, now: float | None = None, *, dead_owner: Callable[[str], bool] | None = None
                   ) -> list[str]:
        """Fail every RUNNING trial whose lease expired before `now` (default: time.time()) with
        `failure_class="killed"`, `stale=True`, and queue the next attempt of its key unless the key is done or
        has another unfinished trial. Returns the keys queued again. Keyless RUNNING trials older than the
        default lease are failed as `spurious`.

        `dead_owner(owner)` may say that an owner is certainly gone (a coordinator of this host whose process
        no longer exists); its trials are reaped at once, lease or not.

        Poison cells: a cell whose coordinator died during $SWEEPDAE_POISON_ATTEMPTS (default 3) of its attempts in
        a row -- the cell may be what kills it (memory, a driver crash) -- is not queued again but left failed
        with `poison=True` and the reason in `error`. Enqueueing it again (`sweepdae run`) starts a new count."""
        now = time.time() if now is None else now
        limit = poison_attempts()
        requeued: list[str] = []
        for trial in self._index.running():
            lease = trial.user_attrs.get("lease_expires")
            if not isinstance(lease, (int, float)):
                started = start_time(trial)
                lease = (started if started is not None else now) + DEFAULT_LEASE_S
            gone = dead_owner is not None and dead_owner(str(trial.user_attrs.get("owner", "")))
            if lease >= now and not gone:
                continue
            key = key_of(trial)
            if key is None:
                self._finish(trial._trial_id, TrialState.FAIL, {"spurious": True, "finished": now})
                continue
            owner = trial.user_attrs.get("owner", "?")
            attrs: dict[str, Any] = {
                "failure_class": "killed", "stale": True, "finished": now,
                "error": f"lease expired {now - float(lease):.0f} s ago (owner {owner}); no heartbeat",
            }
            deaths = self._parent_deaths(trial)
            if limit and deaths >= limit:
                attrs.update(poison=True, error=f"quarantined as a poison cell: its coordinator died during {deaths} "
                             f"attempts in a row (SWEEPDAE_POISON_ATTEMPTS={limit}); not queued again. Last: "
                             + attrs["error"])
            if not self._finish(trial._trial_id, TrialState.FAIL, attrs):
                continue  # finished meanwhile by its owner or by another reaper
            if not attrs.get("poison") and self._retry_after(trial._trial_id):
                requeued.append(key)
        return requeued

    def _parent_deaths(self, trial: FrozenTrial) -> int:
        """Attempts in a row, ending with `trial` (being reaped), whose coordinator died: reaped (stale) ones,
        back to the last (re-)enqueue by a user. Duplicates and released attempts never ran and are skipped."""
        deaths = 1
        if trial.user_attrs.get("reason") == "enqueue":
            return deaths
        earlier = [t for t in self._key_trials(str(key_of(trial))) if t.number < trial.number
                   and not t.user_attrs.get("duplicate") and not t.user_attrs.get("released")]
        for t in reversed(earlier):
            if t.state != TrialState.FAIL or not t.user_attrs.get("stale") or t.user_attrs.get("poison"):
                break
            deaths += 1
            if t.user_attrs.get("reason") == "enqueue":
                break
        return deaths

    # ------------------------------------------------------------------ results
    @guarded
    def complete(self, claim: Claim, *, metrics: dict[str, float], info: dict[str, Any]) -> bool:
        """Record the cell's result and mark it done; True when this result is the key's result.

        Sets user attrs `metrics` (non-finite values stored as None), `info` (timings, artifact_dir,
        provenance) and `finished`, then tells COMPLETE with value `metrics["objective"]` if given and finite,
        else `probe_top1`, else 0.0. When the trial is no longer RUNNING (a reaper failed it) the result is not
        lost: unless the key is done, it is written onto the key's lowest unfinished trial -- its WAITING retry
        (claimed first) or the retry another worker is running (taken over: that worker's heartbeat and complete
        then return False) -- or onto a new trial when there is none; `recovered_from` = this claim's trial number.
        Returns False, dropping the result, only when the key is already done by another trial.
        """
        clean = clean_metrics(metrics)
        jsonable(info, "info")
        objective = clean.get("objective", clean.get("probe_top1"))
        value = float(objective) if objective is not None else 0.0
        attrs: dict[str, Any] = {"metrics": clean, "info": info, "finished": time.time()}
        if self._finish(claim._trial_id, TrialState.COMPLETE, attrs, value):
            return True
        return self._recover(claim, attrs, value)

    def _recover(self, claim: Claim, attrs: dict[str, Any], value: float) -> bool:
        """Record the result of a claim whose trial was failed under it (see `complete`).

        Every COMPLETE of a key goes through the exclusive finish of one trial: the claimed one, or here the
        lowest unfinished trial of the key, which is also the only one a claim may keep running. So two workers
        (this one, the retry's runner, another late one) can never both complete the key.
        """
        extra = {"owner": claim.owner, "started": claim.started, "recovered_from": claim.number}
        for _ in range(20):
            trials = self._key_trials(claim.key)
            if any(t.state == TrialState.COMPLETE for t in trials):
                return False
            unfinished = [t for t in trials if t.state in (TrialState.WAITING, TrialState.RUNNING)]
            if not unfinished:
                # Nothing queued or running (no retry was asked for): a new attempt to put the result on.
                own = next((t for t in trials if t._trial_id == claim._trial_id), None)
                base = own.user_attrs.get("recipe") if own is not None else None
                self._add_waiting(key=claim.key, label=claim.label, recipe=base if base is not None else claim.recipe,
                                  grid=claim.grid, attempt=next_attempt(trials), retry_of=claim.number,
                                  reason="recovered", recipe_overrides=claim.recipe_overrides,
                                  params=own.user_attrs.get("params") if own is not None else None)
                continue
            target = unfinished[0]
            if target.state == TrialState.WAITING:
                try:
                    if not self._storage.set_trial_state_values(target._trial_id, TrialState.RUNNING):
                        continue  # claimed by a worker meanwhile: take it over on the next round
                except UpdateFinishedTrialError:
                    continue
            if self._finish(target._trial_id, TrialState.COMPLETE, {**extra, **attrs}, value):
                return True
        raise StoreError(f"store {self.url}: could not record the late result of trial {claim.number} "
                         f"(key {claim.key}): the key's trials kept changing")

    @guarded
    def fail(self, claim: Claim, *, failure_class: str, error: str, traceback_tail: str, retry: bool,
             info: dict[str, Any] | None = None) -> None:
        """Record a failed attempt and, when `retry`, queue the next one.

        Sets user attrs `failure_class`, `error` (first 2,000 chars), `traceback_tail` (last 10,000 chars),
        `info`, `finished`, `retry`, and tells FAIL. The retry gets `retry_of` = this trial's number and
        `recipe_overrides` = this claim's overrides deep-merged with `info["recipe_overrides"]` (e.g. a halved
        micro-batch); it is not queued when the key is done or already has another unfinished trial. When the
        trial is no longer RUNNING (reaped), nothing is written: the reaper already queued the next attempt.
        Calling it again for the same claim (its reply was lost: the database committed the FAIL, then the
        connection dropped) queues the retry if it is not queued yet, and never a second one.
        """
        info = dict(info or {})
        jsonable(info, "info")
        attrs = {
            "failure_class": failure_class, "error": error[:_ERROR_CHARS],
            "traceback_tail": traceback_tail[-_TRACEBACK_CHARS:], "info": info, "finished": time.time(),
            "retry": retry,
        }
        if not self._finish(claim._trial_id, TrialState.FAIL, attrs):
            trial = self._storage.get_trial(claim._trial_id)
            ours = trial.state == TrialState.FAIL and not (trial.user_attrs.get("stale") or
                                                           trial.user_attrs.get("released"))
            if not ours:
                return  # reaped (its reaper queued the next attempt) or completed with a late result
            retry = bool(trial.user_attrs.get("retry"))  # what the committed call asked for
        if retry:
            self._retry_after(claim._trial_id)

    # ------------------------------------------------------------------ queries
    @guarded
    def status(self, keys: list[str] | None = None) -> dict[str, str]:
        """key -> "new" | "queued" | "running" | "done" | "failed" (one pass over the trials).

        Without `keys`: every key that has a trial or belongs to a registered grid.
        """
        groups = group_by_key(self._trials())
        if keys is None:
            keys = list(dict.fromkeys([*groups, *self._grid_cells()]))
        return {key: key_status(groups.get(key, [])).value for key in keys}

    @guarded
    def cells(self, keys: list[str] | None = None) -> pd.DataFrame:
        """Tidy table, one row per key (its decisive attempt: the COMPLETE one, else the newest RUNNING, WAITING
        or FAIL): key, label, status, attempts, grid, grids, trial, attempt, owner, started, finished (UTC
        timestamps), duration_s, failure_class, error, traceback_tail, artifact_dir, recipe, recipe_overrides,
        progress, info, then `metric.<name>` and `time.<name>` (from info["timings"]) columns.
        Without `keys`: every key that has a trial or belongs to a registered grid (status "new")."""
        return _frame.cells_frame(group_by_key(self._trials()), self._grid_cells(), keys)

    @guarded
    def attempts(self, keys: list[str] | None = None) -> pd.DataFrame:
        """Tidy table, one row per trial of a cell (keyless trials left out), in trial order: trial, key,
        label, attempt, state, grid, owner, started, finished, duration_s, lease_expires, failure_class, error,
        traceback_tail, duplicate, stale, retry_of, recovered_from, reason, artifact_dir, recipe,
        recipe_overrides, progress, info, `metric.*`, `time.*`."""
        return _frame.attempts_frame(group_by_key(self._trials()), keys)

    @guarded
    def release(self, claim: Claim, *, reason: str) -> bool:
        """Give a claimed cell back to the queue without using up an attempt (its training is busy or lives on
        another machine). The claim's trial fails with `released=True`; a WAITING trial with the same attempt
        number, recipe overrides and train_key takes its place. False when the trial was no longer RUNNING."""
        attrs = {"released": True, "failure_class": "released", "error": reason[:_ERROR_CHARS],
                 "finished": time.time()}
        if not self._finish(claim._trial_id, TrialState.FAIL, attrs):
            return False
        trials = self._key_trials(claim.key)
        if key_status(trials) in (CellStatus.DONE, CellStatus.RUNNING, CellStatus.QUEUED):
            return True
        own = next((t for t in trials if t._trial_id == claim._trial_id), None)
        base = own.user_attrs.get("recipe") if own is not None else None
        self._add_waiting(key=claim.key, label=claim.label, recipe=base if base is not None else claim.recipe,
                          grid=claim.grid, attempt=claim.attempt, retry_of=claim.number, reason="released",
                          recipe_overrides=claim.recipe_overrides, train_key=claim.train_key,
                          params=own.user_attrs.get("params") if own is not None else None)
        return True

    @guarded
    def forgettable(self, keys: list[str]) -> list[str]:
        """The keys among `keys` that have results to forget; StoreError, before anything is written, when one of
        them is queued or running (naming it and how many are)."""
        out, busy = [], []
        for key in keys:
            trials = self._key_trials(key)
            if not trials:
                continue
            status = key_status(trials)
            if status in (CellStatus.QUEUED, CellStatus.RUNNING):
                busy.append((key, status.value))
            out.append(key)
        if busy:
            key, what = busy[0]
            more = f" (and {len(busy) - 1} more queued or running)" if len(busy) > 1 else ""
            raise StoreError(f"cell {key[:12]} is {what}{more}: stop it before forgetting it; nothing was forgotten")
        return out

    @guarded
    def forget(self, keys: list[str]) -> list[str]:
        """Drop the results (done or failed attempts) of these cells, so the next run computes them again;
        returns the keys forgotten. A queued or running cell is refused (StoreError) before any key is
        forgotten. The trials stay in the storage (Optuna cannot delete one) but every query skips them.
        Trainings are untouched."""
        out = self.forgettable(keys)  # all or nothing: a refusal half-way would leave some keys forgotten
        for key in out:
            trials = self._key_trials(key)
            self._storage.set_study_user_attr(self._study_id, f"forget:{key}",
                                              {"before": max(t.number for t in trials), "time": time.time()})
        return out

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

    @guarded
    def used_train_keys(self) -> set[str]:
        """The trainings some cell still needs: its train_key is on a remembered trial or a registered grid cell."""
        used = {str(tk) for t in self._trials() if (tk := t.user_attrs.get("train_key"))}
        for grid in self.grids():
            used |= {str(c["train_key"]) for c in grid.get("cells", []) if c.get("train_key")}
        trs = self._training_store(create=False)
        if trs is not None:  # a training being made is in use whoever asked for it
            used |= {k for k, v in trs.status().items() if v in ("running", "queued")}
        return used

    # ------------------------------------------------------------------ trainings
    # Cells that share a train_key evaluate one training. Trainings are trials of a second study,
    # "sweepdae-trainings", keyed by train_key, under the same contract as cells (atomic claim, leases, reaping,
    # exactly-once COMPLETE), so exactly one process trains a train_key at a time, on any backend and across
    # machines (no file locks: flock is unreliable on NFS and Lustre).
    def _training_store(self, *, create: bool) -> Store | None:
        if self._trainings is None:
            with _QuietOptuna():
                try:
                    study = optuna.load_study(storage=self._storage, study_name=TRAININGS_STUDY)
                except KeyError:
                    if not create:
                        return None
                    study = optuna.create_study(storage=self._storage, study_name=TRAININGS_STUDY,
                                                direction="maximize", load_if_exists=True)
            self._trainings = Store(self._parsed, self._storage, study)
        return self._trainings

    @guarded
    def acquire_training(self, train_key: str, *, owner: str, lease_s: float = DEFAULT_LEASE_S,
                         label: str = "") -> TrainingLease:
        """Take the lease on training `train_key`, or say who has it or that it is done.

        Returns `TrainingLease` with state "mine" (this owner now trains it: heartbeat, then
        `complete_training` or `fail_training` the returned claim), "busy" (another owner trains it; `owner`
        says who) or "done" (`info` is what `complete_training` recorded: host, folder, cell)."""
        trs = self._training_store(create=True)
        assert trs is not None
        for _ in range(5):
            trials = trs._key_trials(train_key)
            status = key_status(trials)
            if status is CellStatus.DONE:
                done = next(t for t in trials if t.state == TrialState.COMPLETE)
                return TrainingLease("done", None, dict(done.user_attrs.get("info") or {}), "")
            if status is CellStatus.RUNNING:
                running = [t for t in trials if t.state == TrialState.RUNNING][-1]
                return TrainingLease("busy", None, {}, str(running.user_attrs.get("owner", "?")))
            if status is not CellStatus.QUEUED:
                trs._add_waiting(key=train_key, label=label or train_key[:12], recipe={}, grid=None,
                                 attempt=next_attempt(trials), retry_of=trials[-1].number if trials else None,
                                 reason="enqueue", recipe_overrides={})
            claim = trs.claim(owner, lease_s=lease_s, keys={train_key})
            if claim is not None:
                return TrainingLease("mine", claim, {}, owner)
        raise StoreError(f"store {self.url}: training {train_key[:12]}: its trials kept changing")

    @guarded
    def heartbeat_training(self, claim: Claim) -> bool:
        """Renew a training lease; False when it was lost (reaped)."""
        trs = self._training_store(create=True)
        assert trs is not None
        return trs.heartbeat(claim)

    @guarded
    def complete_training(self, claim: Claim, *, info: dict[str, Any]) -> bool:
        """Mark the training done; `info` says where it lives (host, folder relative to the runs folder)."""
        trs = self._training_store(create=True)
        assert trs is not None
        return trs.complete(claim, metrics={}, info=info)

    @guarded
    def fail_training(self, claim: Claim, *, error: str) -> None:
        """Give a training lease back unfinished: the next `acquire_training` takes it (and resumes)."""
        trs = self._training_store(create=True)
        assert trs is not None
        trs.fail(claim, failure_class="training", error=error, traceback_tail="", retry=False)

    @guarded
    def reap_stale_trainings(self, now: float | None = None, *, dead_owner: Callable[[str], bool] | None = None
                             ) -> list[str]:
        """`reap_stale` for training leases: the train_keys whose trainer stopped heartbeating."""
        trs = self._training_store(create=False)
        return trs.reap_stale(now, dead_owner=dead_owner) if trs is not None else []

    @guarded
    def forget_trainings(self, train_keys: list[str]) -> list[str]:
        """Drop these finished trainings, so the next run trains them again (their folder is lost: the machine
        that made them is gone, its /tmp was cleared); returns the keys forgotten. One being made is refused
        (StoreError). Cells keep their results."""
        trs = self._training_store(create=False)
        return trs.forget(train_keys) if trs is not None else []

    @guarded
    def training_curves(self, train_keys: Collection[str] | None = None) -> dict[str, dict[str, Any]]:
        """train_key -> {label, grid, fields, points} of each finished training whose loss curve the store keeps
        (about 200 points, recorded with the training: `cell.train.CURVE_FIELDS`)."""
        trs = self._training_store(create=False)
        if trs is None:
            return {}
        out: dict[str, dict[str, Any]] = {}
        for t in trs._trials((TrialState.COMPLETE,)):
            k = key_of(t)
            info = t.user_attrs.get("info") or {}
            if k is None or (train_keys is not None and k not in train_keys) or not info.get("curve"):
                continue
            out[k] = {"label": info.get("label"), "grid": info.get("grid"), "fields": info.get("curve_fields"),
                      "points": info["curve"]}
        return out

    def training_status(self, train_keys: list[str] | None = None) -> dict[str, str]:
        """train_key -> "new" | "queued" | "running" | "done" | "failed"."""
        trs = self._training_store(create=False)
        if trs is None:
            return {k: CellStatus.NEW.value for k in train_keys or []}
        return trs.status(train_keys)

    def close(self) -> None:
        """Release connections (RDB engine pool). Further calls raise StoreError. Idempotent."""
        if self._closed:
            return
        self._closed = True
        if self._trainings is not None:
            self._trainings._closed = True
        backend = getattr(self._storage, "_backend", None)  # _CachedStorage(RDBStorage)
        engine = getattr(backend, "engine", None)
        if engine is not None:
            try:
                engine.dispose()
            except Exception:  # closing a pool to a dead server must not raise
                pass
