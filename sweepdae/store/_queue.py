"""The cell queue: enqueue, claim (atomic WAITING -> RUNNING), leases, reaping, results, retries, and the
queries over one study's cells. The Store's contract (its class docstring) says what each call guarantees."""

from __future__ import annotations

import time
from collections.abc import Callable, Collection, Mapping
from enum import StrEnum
from typing import TYPE_CHECKING, Any

from optuna.distributions import CategoricalDistribution
from optuna.exceptions import UpdateFinishedTrialError
from optuna.trial import FrozenTrial, TrialState

from sweepdae.errors import StoreError
from sweepdae.store import _frame
from sweepdae.store._base import StoreBase, guarded
from sweepdae.store._common import DEFAULT_LEASE_S, Claim, jsonable, overrides_after, poison_attempts
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

if TYPE_CHECKING:
    import pandas as pd

_ERROR_CHARS = 2_000  # `error` is one message; keep rows small
_TRACEBACK_CHARS = 10_000  # the tail of a traceback is where the cause is


class Enqueued(StrEnum):
    """What `enqueue` did with a cell."""

    CACHED = "cached"  # a COMPLETE trial exists
    RUNNING = "running"
    ALREADY_QUEUED = "already-queued"
    QUEUED = "queued"  # a new WAITING trial (also for a failed key)


class Reason(StrEnum):
    """Why an attempt was queued (trial user attr `reason`)."""

    ENQUEUE = "enqueue"  # by a user (`run`, `worker`, `tune`)
    RETRY = "retry"  # its previous attempt failed asking for one
    REAPED = "reaped"  # its previous attempt's lease ran out
    RECOVERED = "recovered"  # made to hold the late result of a reaped attempt
    RELEASED = "released"  # its previous attempt was given back unrun


class CellQueue(StoreBase):
    """The cells of one study as a work queue (the cells' study, or the trainings' study keyed by train_key)."""

    @guarded
    def forgotten_at(self, key: str) -> float | None:
        """When `forget` last dropped the results of `key` (a Unix time), None when it never did. A `result.json`
        of the key made before then is the forgotten result: the coordinator must not record it again."""
        mark = self._storage.get_study_user_attrs(self._study_id).get(f"forget:{key}")
        when = mark.get("time") if isinstance(mark, dict) else None
        return float(when) if isinstance(when, (int, float)) and not isinstance(when, bool) else None

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
                result[key] = Enqueued.CACHED
            elif status is CellStatus.RUNNING:
                result[key] = Enqueued.RUNNING
            elif status is CellStatus.QUEUED:
                result[key] = Enqueued.ALREADY_QUEUED
            else:
                self._add_waiting(
                    key=key,
                    label=str(cell.get("label") or key[:12]),
                    recipe=recipe,
                    grid=cell.get("grid"),
                    attempt=next_attempt(trials),
                    retry_of=trials[-1].number if trials else None,
                    reason=Reason.ENQUEUE,
                    recipe_overrides={},
                    train_key=cell.get("train_key"),
                    params=cell.get("params"),
                )
                result[key] = Enqueued.QUEUED
        return result

    def _add_waiting(self, *, key: str, label: str, recipe: dict[str, Any], grid: str | None, attempt: int,
                     retry_of: int | None, reason: Reason, recipe_overrides: dict[str, Any],
                     train_key: str | None = None, params: dict[str, Any] | None = None) -> None:
        attrs: dict[str, Any] = {
            "key": key, "label": label, "recipe": recipe, "grid": grid, "attempt": attempt,
            "retry_of": retry_of, "reason": reason.value, "enqueued": time.time(),
        }
        if train_key:
            attrs["train_key"] = train_key
        if params:
            attrs["params"] = params
        if recipe_overrides:
            attrs["recipe_overrides"] = recipe_overrides
        self._study.enqueue_trial(params={}, user_attrs=attrs)

    def _enqueue_retry(self, trials: list[FrozenTrial], *, retry_of: FrozenTrial, reason: Reason) -> bool:
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
        reason = Reason.REAPED if trial.user_attrs.get("stale") else Reason.RETRY
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
                self._enqueue_retry(trials, retry_of=last, reason=Reason.REAPED if last.user_attrs.get("stale")
                                    else Reason.RETRY)

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
        if trial.user_attrs.get("reason") == Reason.ENQUEUE:
            return deaths
        earlier = [t for t in self._key_trials(str(key_of(trial))) if t.number < trial.number
                   and not t.user_attrs.get("duplicate") and not t.user_attrs.get("released")]
        for t in reversed(earlier):
            if t.state != TrialState.FAIL or not t.user_attrs.get("stale") or t.user_attrs.get("poison"):
                break
            deaths += 1
            if t.user_attrs.get("reason") == Reason.ENQUEUE:
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
                                  reason=Reason.RECOVERED, recipe_overrides=claim.recipe_overrides,
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
                          grid=claim.grid, attempt=claim.attempt, retry_of=claim.number, reason=Reason.RELEASED,
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
