"""The store contract, run against every backend (journal file, SQLite, PostgreSQL), plus URL handling,
concurrent workers and a PostgreSQL restart.

PostgreSQL tests start a throwaway server (the `pg_server` fixture of conftest.py) once per session and give each
test a fresh schema (`pg_url`); they skip with a reason when the server binaries are missing (apt install postgresql).
"""

from __future__ import annotations

import multiprocessing
import pickle
import random
import shutil
import socket
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from optuna.trial import FrozenTrial, TrialState

from sweepdae.errors import StoreError
from sweepdae.store import CellStatus, Store, open_store
from sweepdae.store._trials import duplicate_of, status_from_states

BACKENDS = ["journal", "sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)]


# ---------------------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An empty SQLite store, made once: creating Optuna's tables costs ~0.5 s, copying the file ~1 ms."""
    path = tmp_path_factory.mktemp("sqlite") / "template.db"
    open_store(f"sqlite:///{path}").close()
    return path


@pytest.fixture(params=BACKENDS)
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "journal":
        return f"journal:{tmp_path / 'store.journal'}"
    if request.param == "sqlite":
        shutil.copyfile(request.getfixturevalue("sqlite_template"), tmp_path / "store.db")
        return f"sqlite:///{tmp_path / 'store.db'}"
    return str(request.getfixturevalue("pg_url"))


@pytest.fixture
def store(store_url: str) -> Iterator[Store]:
    s = open_store(store_url)
    yield s
    s.close()


def cell(i: int, grid: str = "g") -> dict[str, Any]:
    return {"key": f"key{i:03d}", "label": f"cell {i}", "recipe": {"seed": i, "train": {"micro_batch": 64}},
            "grid": grid}


def trials_of(store: Store, key: str) -> list[FrozenTrial]:
    return [t for t in store._trials() if t.user_attrs.get("key") == key]


def assert_no_orphans(store: Store) -> None:
    """No keyless trial and nothing left RUNNING."""
    trials = store._trials()
    assert all("key" in t.user_attrs for t in trials)
    assert not [t.number for t in trials if t.state == TrialState.RUNNING]


# ---------------------------------------------------------------------------------------------- contract
class TestStoreContract:
    """Every backend keeps the contract written on `Store`."""

    def test_enqueue_dedups_and_reports(self, store: Store) -> None:
        assert store.enqueue([cell(0), cell(1), cell(0)]) == {"key000": "queued", "key001": "queued"}
        assert store.enqueue([cell(0)]) == {"key000": "already-queued"}
        assert len(trials_of(store, "key000")) == 1
        c = store.claim("w")
        assert c is not None and c.key == "key000"
        assert store.enqueue([cell(0)]) == {"key000": "running"}
        assert store.complete(c, metrics={"probe_top1": 0.7}, info={})
        assert store.enqueue([cell(0), cell(2)]) == {"key000": "cached", "key002": "queued"}
        assert len(trials_of(store, "key000")) == 1

    def test_claim_fifo_then_none(self, store: Store) -> None:
        store.enqueue([cell(i) for i in range(5)])
        claims = [store.claim("w", lease_s=30) for _ in range(5)]
        assert [c.key for c in claims if c] == [f"key{i:03d}" for i in range(5)]
        assert store.claim("w") is None
        assert store.claim("w") is None
        first = claims[0]
        assert first is not None
        assert (first.label, first.recipe, first.attempt, first.grid) == ("cell 0", cell(0)["recipe"], 1, "g")
        assert len(store._trials()) == 5  # an empty queue made no trial
        for c in claims:
            assert c is not None
            store.complete(c, metrics={}, info={})
        assert_no_orphans(store)

    def test_claim_records_owner_and_lease(self, store: Store) -> None:
        store.enqueue([cell(0)])
        before = time.time()
        c = store.claim("host:123", lease_s=50)
        assert c is not None
        attrs = trials_of(store, "key000")[0].user_attrs
        assert attrs["owner"] == "host:123"
        assert before <= attrs["started"] <= time.time()
        assert attrs["lease_expires"] == pytest.approx(attrs["started"] + 50)

    def test_complete_fail_retry_and_attempts(self, store: Store) -> None:
        store.enqueue([cell(0)])
        c1 = store.claim("w")
        assert c1 is not None and c1.attempt == 1
        store.fail(c1, failure_class="oom", error="CUDA out of memory", traceback_tail="Traceback ...",
                   retry=True, info={"recipe_overrides": {"train": {"micro_batch": 32}}})
        assert store.status(["key000"]) == {"key000": "queued"}
        c2 = store.claim("w")
        assert c2 is not None
        assert (c2.key, c2.attempt, c2.recipe["train"]["micro_batch"], c2.recipe["seed"]) == ("key000", 2, 32, 0)
        assert trials_of(store, "key000")[-1].user_attrs["retry_of"] == c1.number
        store.fail(c2, failure_class="crash", error="boom", traceback_tail="tb", retry=False)
        assert store.status(["key000"]) == {"key000": "failed"}
        assert store.claim("w") is None
        assert store.enqueue([cell(0)]) == {"key000": "queued"}  # a failed key is queued afresh
        assert store.enqueue([cell(0)]) == {"key000": "already-queued"}
        c3 = store.claim("w")
        assert c3 is not None and c3.attempt == 3 and c3.recipe_overrides == {}
        assert store.complete(c3, metrics={"objective": 0.5, "probe_top1": 0.5},
                              info={"artifact_dir": "runs/key000"})
        row = store.cells().set_index("key").loc["key000"]
        assert (row["status"], row["attempts"], row["attempt"], row["metric.probe_top1"]) == ("done", 3, 3, 0.5)
        frame = store.attempts(["key000"])
        assert list(frame["state"]) == ["FAIL", "FAIL", "COMPLETE"]
        assert list(frame["failure_class"][:2]) == ["oom", "crash"]
        assert trials_of(store, "key000")[-1].value == 0.5

    def test_status_computation(self, store: Store) -> None:
        store.enqueue([cell(i) for i in range(4)])
        done, running, failed = store.claim("w"), store.claim("w"), store.claim("w")
        assert done and running and failed
        store.complete(done, metrics={}, info={})
        store.fail(failed, failure_class="crash", error="x", traceback_tail="", retry=False)
        store.register_grid("g", profile="demo", spec={"axes": {}},
                            cells=[{"key": "key099", "label": "never run"}])
        assert store.status() == {"key000": "done", "key001": "running", "key002": "failed", "key003": "queued",
                                  "key099": "new"}
        assert store.status(["key003", "nope"]) == {"key003": "queued", "nope": "new"}

    def test_reap_stale_after_lease_expiry(self, store: Store) -> None:
        store.enqueue([cell(0), cell(1)])
        c = store.claim("w", lease_s=10)
        assert c is not None
        t0 = time.time()
        assert store.reap_stale(now=t0 + 5) == []
        assert store.heartbeat(c)
        assert store.reap_stale(now=t0 + 500) == ["key000"]
        assert store.reap_stale(now=t0 + 500) == []  # the retry is WAITING, not RUNNING
        assert not store.heartbeat(c)
        assert store.status(["key000"]) == {"key000": "queued"}
        reaped, retry = trials_of(store, "key000")
        assert reaped.state == TrialState.FAIL
        assert reaped.user_attrs["failure_class"] == "killed" and reaped.user_attrs["stale"] is True
        assert retry.state == TrialState.WAITING and retry.user_attrs["attempt"] == 2
        c1, c2 = store.claim("w"), store.claim("w")  # FIFO by trial number: the retry queues behind key001
        assert c1 is not None and c1.key == "key001"
        assert c2 is not None and c2.key == "key000" and c2.attempt == 2

    def test_complete_after_reap_with_waiting_retry(self, store: Store) -> None:
        store.enqueue([cell(0)])
        c = store.claim("slow", lease_s=1)
        assert c is not None
        assert store.reap_stale(now=time.time() + 100) == ["key000"]
        assert store.complete(c, metrics={"probe_top1": 0.9}, info={"artifact_dir": "a"})
        assert store.status() == {"key000": "done"}
        complete = [t for t in trials_of(store, "key000") if t.state == TrialState.COMPLETE]
        assert len(complete) == 1
        assert complete[0].user_attrs["recovered_from"] == c.number
        assert complete[0].user_attrs["metrics"] == {"probe_top1": 0.9}
        assert store.claim("w") is None
        assert_no_orphans(store)

    def test_complete_after_reap_while_retry_runs(self, store: Store) -> None:
        store.enqueue([cell(0)])
        c1 = store.claim("slow", lease_s=1)
        assert c1 is not None
        store.reap_stale(now=time.time() + 100)
        c2 = store.claim("fast")
        assert c2 is not None and c2.key == "key000"
        assert store.complete(c1, metrics={"probe_top1": 0.9}, info={})  # kept: c2's trial is taken over
        assert not store.heartbeat(c2)  # the retry learns its work is no longer needed
        assert not store.complete(c2, metrics={"probe_top1": 0.1}, info={})
        complete = [t for t in trials_of(store, "key000") if t.state == TrialState.COMPLETE]
        assert [t.user_attrs["metrics"]["probe_top1"] for t in complete] == [0.9]
        assert (complete[0].number, complete[0].user_attrs["recovered_from"]) == (c2.number, c1.number)
        assert store.cells()["metric.probe_top1"].tolist() == [0.9]
        assert_no_orphans(store)

    def test_complete_after_reap_when_nothing_is_left(self, store: Store) -> None:
        store.enqueue([cell(0)])
        c1 = store.claim("slow", lease_s=1)
        assert c1 is not None
        store.reap_stale(now=time.time() + 100)
        c2 = store.claim("fast")
        assert c2 is not None
        store.fail(c2, failure_class="crash", error="x", traceback_tail="", retry=False)
        assert store.status() == {"key000": "failed"}
        assert store.complete(c1, metrics={"probe_top1": 0.9}, info={})  # on a new attempt
        assert store.status() == {"key000": "done"}
        (done,) = [t for t in trials_of(store, "key000") if t.state == TrialState.COMPLETE]
        assert done.user_attrs["recovered_from"] == c1.number and done.user_attrs["attempt"] == 3
        assert_no_orphans(store)

    def test_complete_after_reap_when_retry_finished_first(self, store: Store) -> None:
        store.enqueue([cell(0)])
        c1 = store.claim("slow", lease_s=1)
        assert c1 is not None
        store.reap_stale(now=time.time() + 100)
        c2 = store.claim("fast")
        assert c2 is not None
        assert store.complete(c2, metrics={"probe_top1": 0.1}, info={})
        assert not store.complete(c1, metrics={"probe_top1": 0.9}, info={})  # dropped: the key is done
        complete = [t for t in trials_of(store, "key000") if t.state == TrialState.COMPLETE]
        assert [t.user_attrs["metrics"]["probe_top1"] for t in complete] == [0.1]

    def test_duplicate_waiting_trials_resolved_at_claim(self, store: Store) -> None:
        # What two racing enqueue() calls leave behind: two WAITING trials of one key.
        for _ in range(2):
            store._study.enqueue_trial(params={}, user_attrs={**cell(0), "attempt": 1})
        store.enqueue([cell(1)])
        c = store.claim("w")
        assert c is not None and c.key == "key000"
        c_next = store.claim("w")
        assert c_next is not None and c_next.key == "key001"  # the copy was failed and skipped
        dup = trials_of(store, "key000")[1]
        assert dup.state == TrialState.FAIL and dup.user_attrs["duplicate"] is True
        assert store.status(["key000"]) == {"key000": "running"}
        assert store.claim("w") is None
        # The lower copy wins even when the higher one is claimed first (the other order of the race).
        for _ in range(2):
            store._study.enqueue_trial(params={}, user_attrs={**cell(2), "attempt": 1})
        low, high = trials_of(store, "key002")
        assert duplicate_of(high, [low, high]) is low
        assert duplicate_of(low, [low, high]) is None

    def test_yielded_duplicate_rescues_a_lost_retry(self, store: Store) -> None:
        """Process A claims copy T2 and sees T1 RUNNING; T1's owner fails it with retry=True while T2 is still
        RUNNING (so it queues nothing); A then fails T2 as a duplicate and must queue the retry itself."""
        for _ in range(2):
            store._study.enqueue_trial(params={}, user_attrs={**cell(0), "attempt": 1})
        c1 = store.claim("owner-of-t1")
        assert c1 is not None
        snapshot = store._trials()
        t2 = trials_of(store, "key000")[1]
        assert store._storage.set_trial_state_values(t2._trial_id, TrialState.RUNNING)  # A's CAS
        store.fail(c1, failure_class="oom", error="x", traceback_tail="", retry=True,
                   info={"recipe_overrides": {"train": {"micro_batch": 32}}})
        assert store.status() == {"key000": "running"}  # only T2, about to be failed: no retry queued
        yielded: set[str] = set()
        assert store._take(t2, {"key000": [t for t in snapshot if t.user_attrs["key"] == "key000"]}, "A", 60,
                           yielded) is None
        store._rescue(yielded)
        assert store.status() == {"key000": "queued"}
        retry = store.claim("w")
        assert retry is not None and retry.attempt == 2 and retry.recipe["train"]["micro_batch"] == 32

    def test_keyless_waiting_trial_is_failed_as_spurious(self, store: Store) -> None:
        store._study.enqueue_trial(params={})
        store.enqueue([cell(0)])
        c = store.claim("w")
        assert c is not None and c.key == "key000"
        (foreign,) = [t for t in store._trials() if "key" not in t.user_attrs]
        assert foreign.state == TrialState.FAIL and foreign.user_attrs["spurious"] is True

    def test_dataframes(self, store: Store) -> None:
        grid_cells = [{"key": cell(i)["key"], "label": cell(i)["label"], "coords": {"seed": i}, "step": None}
                      for i in range(3)]
        store.register_grid("g", profile="demo", spec={"axes": {"seed": [0, 1, 2]}}, cells=grid_cells)
        store.enqueue([cell(0), cell(1)])
        c0, c1 = store.claim("w"), store.claim("w")
        assert c0 and c1
        store.record_progress(c1, phase="train", epoch=3)
        info = {"artifact_dir": "runs/key000", "timings": {"train_s": 12.5}, "git": "abc"}
        store.complete(c0, metrics={"probe_top1": 0.61, "fid": float("nan"), "objective": 0.61}, info=info)
        frame = store.cells()
        for column in ("key", "label", "status", "attempts", "grid", "grids", "owner", "started", "finished",
                       "failure_class", "error", "artifact_dir", "recipe", "metric.probe_top1", "metric.fid",
                       "time.train_s", "progress"):
            assert column in frame.columns, column
        rows = frame.set_index("key")
        assert list(rows.index) == ["key000", "key001", "key002"]
        assert list(rows["status"]) == ["done", "running", "new"]
        assert rows.loc["key002", "label"] == "cell 2" and rows.loc["key002", "attempts"] == 0
        assert rows.loc["key000", "metric.probe_top1"] == 0.61
        assert rows.loc["key000", "metric.fid"] != rows.loc["key000", "metric.fid"]  # NaN
        assert rows.loc["key000", "artifact_dir"] == "runs/key000"
        assert rows.loc["key000", "time.train_s"] == 12.5
        assert rows.loc["key000", "recipe"] == cell(0)["recipe"]
        assert rows.loc["key000", "grids"] == ["g"]
        assert rows.loc["key001", "progress"]["epoch"] == 3
        assert str(rows["started"].dtype).startswith("datetime64")
        assert len(store.attempts()) == 2
        assert list(store.cells(["key001"])["key"]) == ["key001"]

    def test_register_grid_is_idempotent(self, store: Store) -> None:
        cells = [{"key": "a", "label": "A", "coords": {"x": 1}, "step": 0}]
        store.register_grid("g", profile="paper", spec={"axes": {"x": [1]}}, cells=cells)
        first = store.grids()
        store.register_grid("g", profile="paper", spec={"axes": {"x": [1]}}, cells=cells)
        assert store.grids() == first  # nothing rewritten, not even `updated`
        store.register_grid("g", profile="demo", spec={"axes": {"x": [1]}}, cells=cells)
        assert [(g["name"], g["profile"]) for g in store.grids()] == [("g", "demo"), ("g", "paper")]
        assert first[0]["cells"] == cells

    def test_reopen_sees_everything(self, store: Store, store_url: str) -> None:
        store.enqueue([cell(0), cell(1)])
        c = store.claim("w")
        assert c is not None
        store.complete(c, metrics={"probe_top1": 0.5}, info={})
        with open_store(store_url, create=False) as again:
            assert again.status() == {"key000": "done", "key001": "queued"}

    def test_closed_store_refuses(self, store: Store) -> None:
        store.close()
        with pytest.raises(StoreError, match="closed"):
            store.status()


# ---------------------------------------------------------------------------------------------- poison cells
def _die_under(store: Store, attempt: int) -> list[str]:
    """Claim the queued cell and let its coordinator die: the reaper finds the lease expired."""
    c = store.claim(f"host:{attempt}", lease_s=5)
    assert c is not None and c.attempt == attempt
    return store.reap_stale(now=time.time() + 60)


class TestPoisonCells:
    """A cell whose attempts keep taking their coordinator down is quarantined, on every backend."""

    def test_quarantined_after_three_dead_coordinators_in_a_row(self, store: Store,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.delenv("SWEEPDAE_POISON_ATTEMPTS", raising=False)
        store.enqueue([cell(0)])
        assert [_die_under(store, a) for a in (1, 2, 3)] == [["key000"], ["key000"], []]
        assert store.status() == {"key000": "failed"} and store.claim("w") is None
        last = trials_of(store, "key000")[-1]
        assert last.user_attrs["poison"] is True and last.user_attrs["failure_class"] == "killed"
        assert "poison cell" in last.user_attrs["error"] and "3 attempts in a row" in last.user_attrs["error"]
        # `sweepdae run` enqueues it again: a fresh count, so one more death requeues it
        assert store.enqueue([cell(0)]) == {"key000": "queued"}
        assert _die_under(store, 4) == ["key000"]

    def test_a_finished_attempt_breaks_the_run(self, store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.delenv("SWEEPDAE_POISON_ATTEMPTS", raising=False)
        store.enqueue([cell(0)])
        assert _die_under(store, 1) == ["key000"] and _die_under(store, 2) == ["key000"]
        c = store.claim("w")
        assert c is not None
        store.fail(c, failure_class="crash", error="boom", traceback_tail="", retry=True)  # the cell itself failed
        assert _die_under(store, 4) == ["key000"] and _die_under(store, 5) == ["key000"]
        assert store.status() == {"key000": "queued"}

    @pytest.mark.parametrize(("setting", "requeued"), [("1", [[]]), ("0", [["key000"]] * 4)])
    def test_the_count_is_configurable(self, store: Store, monkeypatch: pytest.MonkeyPatch, setting: str,
                                       requeued: list[list[str]]) -> None:
        monkeypatch.setenv("SWEEPDAE_POISON_ATTEMPTS", setting)
        store.enqueue([cell(0)])
        assert [_die_under(store, a) for a in range(1, len(requeued) + 1)] == requeued

    def test_a_bad_setting_is_one_line(self, store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv("SWEEPDAE_POISON_ATTEMPTS", "three")
        with pytest.raises(StoreError, match="SWEEPDAE_POISON_ATTEMPTS must be a whole number"):
            store.reap_stale()


# ---------------------------------------------------------------------------------------------- lost replies
class _Quiet:
    def message(self, text: str) -> None:
        pass


def test_a_failure_committed_before_the_connection_dropped_queues_one_retry(store: Store, store_url: str,
                                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """The database commits the FAIL, then the connection drops before the reply: the coordinator's store call
    raises, it calls `fail` again (PatientStore), and exactly one retry is queued."""
    from optuna.exceptions import StorageInternalError

    from sweepdae.store import PatientStore

    store.enqueue([cell(0)])
    c = store.claim("w")
    assert c is not None
    real = store._storage.set_trial_state_values
    dropped: list[int] = []

    def commit_then_drop(trial_id: int, state: TrialState, values: Any = None) -> bool:
        ok = real(trial_id, state, values)
        if state == TrialState.FAIL and not dropped:
            dropped.append(trial_id)
            if store.kind == "postgresql":  # really cut every connection of the store, as a lost server would
                import psycopg

                with psycopg.connect(store_url, autocommit=True) as conn:
                    conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                                 "WHERE pid <> pg_backend_pid() AND datname = current_database()")
            raise StorageInternalError("server closed the connection unexpectedly (after the commit)")
        return ok

    monkeypatch.setattr(store._storage, "set_trial_state_values", commit_then_drop)
    PatientStore(store, _Quiet(), outage_s=30).fail(c, failure_class="crash", error="boom", traceback_tail="",
                                                    retry=True, info={})
    assert dropped == [c._trial_id]
    trials = trials_of(store, "key000")
    assert [t.state for t in trials] == [TrialState.FAIL, TrialState.WAITING]
    assert trials[1].user_attrs["retry_of"] == c.number and trials[1].user_attrs["reason"] == "retry"
    store.fail(c, failure_class="crash", error="boom", traceback_tail="", retry=True)  # yet another late call
    assert len(trials_of(store, "key000")) == 2
    retry = store.claim("w")
    assert retry is not None and retry.attempt == 2


def test_a_patient_store_waits_out_an_outage_once_per_call(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """PatientStore retries a call whose backend is down (once per outermost call: `forget` calls `forgettable`),
    says so, gives up after `outage_s`, and shares the store's closed state."""
    from sweepdae.errors import StoreUnavailable
    from sweepdae.store import PatientStore

    said: list[str] = []

    class View:
        def message(self, text: str) -> None:
            said.append(text)

    monkeypatch.setattr("sweepdae.store._base.time.sleep", lambda s: None)
    with open_store(f"journal:{tmp_path / 'store.journal'}") as store:
        store.enqueue([cell(0)])
        real = store._storage.get_study_user_attrs
        down = [3]

        def flaky(study_id: int) -> dict[str, Any]:
            if down[0]:
                down[0] -= 1
                raise OSError("journal briefly unreadable")
            return real(study_id)

        monkeypatch.setattr(store._storage, "get_study_user_attrs", flaky)
        patient = PatientStore(store, View(), outage_s=60)
        assert patient.forget(["nope"]) == []  # after three failed reads: nothing to forget
        assert down == [0] and len(said) == 2 and said[0].startswith("store unreachable (forget)")
        down[0] = 1
        with pytest.raises(StoreUnavailable):  # no patience: the first failure is the last
            PatientStore(store, View(), outage_s=0).grids()
        assert patient.status() == {"key000": "queued"}
    with pytest.raises(StoreError, match="closed"):
        patient.status()


def test_jobs_are_records(tmp_path: Path) -> None:
    from sweepdae.store import JobRecord

    with open_store(f"journal:{tmp_path / 'store.journal'}") as store:
        full = JobRecord(job_id="7_0", keys=["a", "b"], grid="g", profile="demo", train_key="tk", labels=["x", "y"],
                         log="/tmp/7_0.out", submitted=2.0, options={"time": 5, "cpus": 1})
        store.record_jobs([full, {"job_id": "6_0", "keys": ["c"], "submitted": 1.0}])
        assert store.jobs() == [JobRecord(job_id="6_0", keys=["c"], submitted=1.0), full]
        assert JobRecord.from_dict(full.to_dict()) == full
        with pytest.raises(ValueError, match="string job_id"):
            store.record_jobs([{"job_id": 8, "keys": []}])


@given(st.lists(st.sampled_from([TrialState.WAITING, TrialState.RUNNING, TrialState.COMPLETE, TrialState.FAIL])))
def test_status_precedence(states: list[TrialState]) -> None:
    status = status_from_states(states)
    if TrialState.COMPLETE in states:
        assert status is CellStatus.DONE
    elif TrialState.RUNNING in states:
        assert status is CellStatus.RUNNING
    elif TrialState.WAITING in states:
        assert status is CellStatus.QUEUED
    elif states:
        assert status is CellStatus.FAILED
    else:
        assert status is CellStatus.NEW


# ---------------------------------------------------------------------------------------------- URLs
@pytest.mark.parametrize("url", [
    "mysql://u:hunter2@h/db", "sqlite://", "sqlite:relative.db", "journal:", "store.json", "redis://h:6379",
    "postgresql+psycopg2://u:hunter2@h/db", "postgresql://u:hunter2@h:notaport/db",
])
def test_malformed_url_is_one_line(url: str) -> None:
    with pytest.raises(StoreError) as info:
        open_store(url)
    message = str(info.value)
    assert "\n" not in message and "hunter2" not in message
    assert "expected" in message
    assert info.value.__cause__ is None


def test_unreachable_postgres_fails_fast_with_masked_password() -> None:
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    t0 = time.monotonic()
    with pytest.raises(StoreError) as info:
        open_store(f"postgresql://user:hunter2@127.0.0.1:{port}/db")
    assert time.monotonic() - t0 < 10
    message = str(info.value)
    assert "\n" not in message and "hunter2" not in message and "***" in message
    assert f"127.0.0.1:{port}" in message


def test_silent_postgres_times_out() -> None:
    """A server that accepts TCP but never answers (a hung host) fails after connect_timeout, not forever."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    port = listener.getsockname()[1]
    accepted: list[socket.socket] = []
    threading.Thread(target=lambda: accepted.append(listener.accept()[0]), daemon=True).start()
    try:
        t0 = time.monotonic()
        with pytest.raises(StoreError, match="cannot open store"):
            open_store(f"postgresql://u@127.0.0.1:{port}/db", connect_timeout=2)
        assert time.monotonic() - t0 < 8
    finally:
        for conn in accepted:
            conn.close()
        listener.close()


def test_read_only_open_of_missing_store_creates_nothing(tmp_path: Path) -> None:
    path = tmp_path / "missing.journal"
    with pytest.raises(StoreError, match="no store at"):
        open_store(f"journal:{path}", create=False)
    assert not path.exists()
    with pytest.raises(StoreError, match="no store at"):
        open_store(f"sqlite:///{tmp_path / 'missing.db'}", create=False)
    assert not (tmp_path / "missing.db").exists()


def test_read_only_open_of_journal_without_study(tmp_path: Path) -> None:
    path = tmp_path / "empty.journal"
    path.touch()
    with pytest.raises(StoreError, match="no store at"):
        open_store(str(path), create=False)
    assert path.stat().st_size == 0


def test_missing_server_binaries_give_an_install_hint(monkeypatch: pytest.MonkeyPatch, pg_launcher: Any) -> None:
    monkeypatch.setattr(pg_launcher, "find_postgres_bin", lambda: None)
    reason = pg_launcher.postgres_unavailable_reason()
    assert reason is not None and "apt install postgresql" in reason


def test_claim_is_picklable(tmp_path: Path) -> None:
    with open_store(f"journal:{tmp_path / 's.journal'}") as s:
        s.enqueue([cell(0)])
        c = s.claim("w")
    assert c is not None and pickle.loads(pickle.dumps(c)) == c


@pytest.mark.postgres
def test_read_only_open_of_empty_postgres(pg_url: str) -> None:
    with pytest.raises(StoreError, match="no store at"):
        open_store(pg_url, create=False)


def test_url_resolution(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("SWEEPDAE_STORE", raising=False)
    with open_store(None) as s:
        assert s.kind == "journal"
    assert (tmp_path / "sweepdae.journal").exists()
    monkeypatch.setenv("SWEEPDAE_STORE", str(tmp_path / "sub" / "env.log"))
    with open_store() as s:
        s.enqueue([cell(0)])
    assert (tmp_path / "sub" / "env.log").exists()


# ---------------------------------------------------------------------------------------------- concurrency
def _run_workers(drain_queue: Any, url: str, n_workers: int, cells: list[dict[str, Any]]) -> dict[str, list[str]]:
    ctx = multiprocessing.get_context("spawn")
    barrier, results = ctx.Barrier(n_workers), ctx.Queue()
    procs = []
    for w in range(n_workers):
        mine = cells[:]
        random.Random(w).shuffle(mine)  # every worker enqueues the same keys, in its own order
        procs.append(ctx.Process(target=drain_queue, args=(url, f"w{w}", mine, barrier, results)))
    for p in procs:
        p.start()
    out = dict(results.get(timeout=120) for _ in procs)
    for p in procs:
        p.join(timeout=30)
        assert p.exitcode == 0
    return out


@pytest.mark.parametrize("backend", ["journal", pytest.param("postgresql", marks=pytest.mark.postgres)])
def test_concurrent_claimers_complete_each_key_once(backend: str, tmp_path: Path, request: pytest.FixtureRequest,
                                                    store_workers: Any) -> None:
    """4 spawned workers drain 40 cells: 30 queued beforehand, 10 enqueued by all 4 at once (a race that
    leaves duplicate WAITING trials). Every key must be completed exactly once and nothing left RUNNING."""
    if backend == "journal":
        url = f"journal:{tmp_path / 'shared.journal'}"
    else:
        url = request.getfixturevalue("pg_url")
    with open_store(url) as s:
        s.enqueue([cell(i) for i in range(30)])
    done = _run_workers(store_workers.drain_queue, url, n_workers=4, cells=[cell(i) for i in range(30, 40)])
    counts = Counter(key for keys in done.values() for key in keys)
    assert sorted(counts) == [cell(i)["key"] for i in range(40)]
    assert set(counts.values()) == {1}
    with open_store(url, create=False) as s:
        assert set(s.status().values()) == {"done"}
        trials = s._trials()
        complete = Counter(t.user_attrs["key"] for t in trials if t.state == TrialState.COMPLETE)
        assert set(complete.values()) == {1} and len(complete) == 40
        # Every other trial is a duplicate copy from the enqueue race, failed at claim time.
        others = [t for t in trials if t.state != TrialState.COMPLETE]
        assert all(t.state == TrialState.FAIL and t.user_attrs.get("duplicate") for t in others)
        assert_no_orphans(s)


@pytest.mark.parametrize("backend", ["journal", pytest.param("postgresql", marks=[pytest.mark.postgres,
                                                                                    pytest.mark.slow])])
def test_chaos_workers_keep_every_result_once(backend: str, tmp_path: Path, request: pytest.FixtureRequest,
                                              store_workers: Any) -> None:
    """4 misbehaving workers (racing enqueues, failures with retries, overrun leases, late completions, reaping
    each other): no key is completed twice, nothing is left unfinished, and a key only ends failed when its
    last real attempt declined a retry."""
    if backend == "journal":
        url = f"journal:{tmp_path / 'chaos.journal'}"
    else:
        url = request.getfixturevalue("pg_url")
    open_store(url).close()
    ctx = multiprocessing.get_context("spawn")
    barrier, results = ctx.Barrier(4), ctx.Queue()
    n_cells = 20 if backend == "journal" else 30
    procs = [ctx.Process(target=store_workers.chaos_worker, args=(url, f"w{w}", 1000 + w, n_cells, barrier, results))
             for w in range(4)]
    for p in procs:
        p.start()
    seen = Counter[str]()
    for _ in procs:
        seen.update(results.get(timeout=300)[1])
    for p in procs:
        p.join(timeout=30)
        assert p.exitcode == 0
    assert seen["fail"] >= 4 and seen["late-complete-True"] + seen["late-complete-False"] >= 4
    with open_store(url) as s:
        s.reap_stale(now=time.time() + 3600)
        trials = s._trials()
        assert not [t.number for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
        complete = Counter(t.user_attrs["key"] for t in trials if t.state == TrialState.COMPLETE)
        assert max(complete.values()) == 1
        status = s.status()
        assert len(status) == n_cells
        for key, value in status.items():
            if value == "failed":
                real = [t for t in trials if t.user_attrs["key"] == key and not t.user_attrs.get("duplicate")]
                assert real[-1].user_attrs.get("retry") is False, key


# ---------------------------------------------------------------------------------------------- PostgreSQL restart
@pytest.mark.postgres
def test_postgres_restart_mid_use(pg_server: Any, pg_url: str) -> None:
    url = pg_url
    with open_store(url) as s:
        s.enqueue([cell(0), cell(1)])
        c = s.claim("w")
        assert c is not None
        pg_server.restart()
        assert s.heartbeat(c)
        assert s.complete(c, metrics={"probe_top1": 0.5}, info={})
        c2 = s.claim("w")
        assert c2 is not None and c2.key == "key001"
        pg_server.restart()
        s.fail(c2, failure_class="crash", error="x", traceback_tail="", retry=False)
        assert s.status() == {"key000": "done", "key001": "failed"}


@pytest.mark.postgres
def test_postgres_down_is_a_store_error(pg_server: Any, pg_url: str) -> None:
    url = pg_url
    with open_store(url) as s:
        s.enqueue([cell(0)])
        pg_server.shutdown()
        try:
            with pytest.raises(StoreError) as info:
                s.status()
            assert "\n" not in str(info.value)
        finally:
            pg_server.start()
        assert s.status() == {"key000": "queued"}

