"""`Store`: the results store and work queue of every sweep, over one Optuna study; `PatientStore`: the same
store, its calls retried through an outage of the backend."""

from __future__ import annotations

from typing import Protocol

from sweepdae.store._base import Retry
from sweepdae.store._queue import CellQueue
from sweepdae.store._registry import Registry
from sweepdae.store._trainings import Trainings


class Store(CellQueue, Registry, Trainings):
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

    Its parts: the cell queue (`_queue.CellQueue`), grids, cluster jobs, tune studies and identity
    (`_registry.Registry`), training leases (`_trainings.Trainings`), over one study (`_base.StoreBase`).
    """

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Release connections (RDB engine pool). Further calls raise StoreError. Idempotent."""
        if self._closed:
            return
        self._life.closed = True  # also of its trainings queue and of every PatientStore over it
        backend = getattr(self._storage, "_backend", None)  # _CachedStorage(RDBStorage)
        engine = getattr(backend, "engine", None)
        if engine is not None:
            try:
                engine.dispose()
            except Exception:  # closing a pool to a dead server must not raise
                pass


class Messages(Protocol):
    """Where a PatientStore says that the store went away and came back (the coordinator's view)."""

    def message(self, text: str) -> None: ...


class PatientStore(Store):
    """The store, with every call retried through an outage of the database (a StoreError caused by the backend:
    connection refused, server restarting, journal briefly unreadable) for up to `outage_s` seconds, said through
    `view.message`. It shares the store's connection and open/closed state.

    Retrying is safe for every call a coordinator makes: `complete` and `fail` are idempotent per claim in the
    store's contract, and a `claim` whose reply was lost leaves a RUNNING trial whose lease expires and is reaped."""

    def __init__(self, store: Store, view: Messages, outage_s: float) -> None:
        vars(self).update(vars(store))  # the same storage, index and open/closed state (and trainings queue, once made)
        self._retry = Retry(outage_s, view.message)
