"""Training leases. Cells that share a train_key evaluate one training. Trainings are trials of a second study,
"sweepdae-trainings", keyed by train_key, under the same contract as cells (atomic claim, leases, reaping,
exactly-once COMPLETE), so exactly one process trains a train_key at a time, on any backend and across machines
(no file locks: flock is unreliable on NFS and Lustre)."""

from __future__ import annotations

from collections.abc import Callable, Collection
from typing import Any

import optuna
from optuna.trial import TrialState

from sweepdae.errors import StoreError
from sweepdae.store._base import StoreBase, guarded
from sweepdae.store._common import DEFAULT_LEASE_S, Claim, LeaseState, TrainingLease
from sweepdae.store._queue import CellQueue, Reason
from sweepdae.store._trials import CellStatus, key_of, key_status, next_attempt
from sweepdae.store._url import _QuietOptuna

TRAININGS_STUDY = "sweepdae-trainings"


class Trainings(StoreBase):
    """The training leases of a store, in its trainings study (made on first use)."""

    _trainings: CellQueue | None = None

    @guarded
    def used_train_keys(self) -> set[str]:
        """The trainings some cell still needs: its train_key is on a remembered trial or a registered grid cell."""
        used = {str(tk) for t in self._trials() if (tk := t.user_attrs.get("train_key"))}
        for grid in self._registered_grids():
            used |= {str(c["train_key"]) for c in grid.get("cells", []) if c.get("train_key")}
        trs = self._training_store(create=False)
        if trs is not None:  # a training being made is in use whoever asked for it
            used |= {k for k, v in trs.status().items() if v in (CellStatus.RUNNING, CellStatus.QUEUED)}
        return used

    def _training_store(self, *, create: bool) -> CellQueue | None:
        if self._trainings is None:
            with _QuietOptuna():
                try:
                    study = optuna.load_study(storage=self._storage, study_name=TRAININGS_STUDY)
                except KeyError:
                    if not create:
                        return None
                    study = optuna.create_study(storage=self._storage, study_name=TRAININGS_STUDY,
                                                direction="maximize", load_if_exists=True)
            self._trainings = CellQueue(self._parsed, self._storage, study, life=self._life)
        return self._trainings

    @guarded
    def acquire_training(self, train_key: str, *, owner: str, lease_s: float = DEFAULT_LEASE_S,
                         label: str = "") -> TrainingLease:
        """Take the lease on training `train_key`, or say who has it or that it is done.

        Returns `TrainingLease` with state `LeaseState.MINE` (this owner now trains it: heartbeat, then
        `complete_training` or `fail_training` the returned claim), `BUSY` (another owner trains it; `owner`
        says who) or `DONE` (`info` is what `complete_training` recorded: host, folder, cell)."""
        trs = self._training_store(create=True)
        assert trs is not None
        for _ in range(5):
            trials = trs._key_trials(train_key)
            status = key_status(trials)
            if status is CellStatus.DONE:
                done = next(t for t in trials if t.state == TrialState.COMPLETE)
                return TrainingLease(LeaseState.DONE, None, dict(done.user_attrs.get("info") or {}), "")
            if status is CellStatus.RUNNING:
                running = [t for t in trials if t.state == TrialState.RUNNING][-1]
                return TrainingLease(LeaseState.BUSY, None, {}, str(running.user_attrs.get("owner", "?")))
            if status is not CellStatus.QUEUED:
                trs._add_waiting(key=train_key, label=label or train_key[:12], recipe={}, grid=None,
                                 attempt=next_attempt(trials), retry_of=trials[-1].number if trials else None,
                                 reason=Reason.ENQUEUE, recipe_overrides={})
            claim = trs.claim(owner, lease_s=lease_s, keys={train_key})
            if claim is not None:
                return TrainingLease(LeaseState.MINE, claim, {}, owner)
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

    @guarded
    def training_status(self, train_keys: list[str] | None = None) -> dict[str, str]:
        """train_key -> "new" | "queued" | "running" | "done" | "failed"."""
        trs = self._training_store(create=False)
        if trs is None:
            return {k: CellStatus.NEW.value for k in train_keys or []}
        return trs.status(train_keys)
