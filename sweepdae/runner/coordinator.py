"""The coordinator: claim queued cells for free slots, launch them, watch them, record results, retry failures.

One coordinator per machine. All store writes of a machine go through it (so SQLite is safe with one machine);
several coordinators share a journal file (one machine) or PostgreSQL (several). A claimed cell holds a lease that
the coordinator renews while the cell's process lives; `reap_stale` turns expired leases of dead coordinators
back into queued attempts, whose cells resume from their last checkpoint.
"""

from __future__ import annotations

import json
import math
import os
import signal
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

from sweepdae.cell import (
    EVENTS,
    EXIT_IO,
    FAILURE,
    INTERRUPTIONS,
    RECIPE,
    RESULT,
    STOP,
    classify_exit,
    read_result,
    read_trained,
    train_dir,
)
from sweepdae.recipe import recipe_from_dict
from sweepdae.runner.launch import Handle, Launcher, launch_accelerate, launch_fork
from sweepdae.runner.slots import Slot
from sweepdae.runner.view import View
from sweepdae.store import Claim, LeaseState, PatientStore, Store, dead_local_owner
from sweepdae.store._paths import portable, portable_text, resolve_runs_dir, stored_runs_dir
from sweepdae.utils import atomic_write_json, plain, read_events

HEARTBEAT_S = float(os.environ.get("SWEEPDAE_HEARTBEAT_S", "10"))
LEASE_S = float(os.environ.get("SWEEPDAE_LEASE_S", "60"))  # a coordinator silent this long is presumed dead
REAP_EVERY_S = min(15.0, LEASE_S / 2)
WAIT_POLL_S = 2.0  # how often cells waiting for a training look at it again
BUSY_RECHECK_S = 10.0  # a training another coordinator holds is asked about again after this long
# how long the store may stay unreachable (e.g. a PostgreSQL restart) before the coordinator gives up; the running
# cells go on meanwhile, their results wait on disk
STORE_OUTAGE_S = float(os.environ.get("SWEEPDAE_STORE_OUTAGE_S", "900"))


@dataclass
class Running:
    claim: Claim
    slot: Slot
    handle: Handle
    run_dir: Path
    started: float
    offset: int = 0
    last_beat: float = 0.0
    last_event: dict[str, Any] = field(default_factory=dict)
    port: int | None = None
    train_key: str = ""
    train_claim: Claim | None = None  # the training lease it holds while it trains (None: evaluates a finished one)


class Decision(StrEnum):
    """What a claimed cell does about its training (`Coordinator._training_decision`)."""

    START = "start"  # the training is finished here, or the cell takes its lease and makes it
    WAIT = "wait"  # another cell is making it: hold the claim
    ELSEWHERE = "elsewhere"  # it lives on another machine: give the claim back


@dataclass
class Waiting:
    """A claimed cell whose training another cell is making (here or on another machine)."""

    claim: Claim
    train_key: str
    why: str
    last_beat: float = field(default_factory=time.time)


@dataclass
class Options:
    runs_dir: Path
    slots: list[Slot]
    launcher: str = Launcher.AUTO
    max_retries: int = 1
    fail_fast: bool = False
    keys: set[str] | None = None  # only these cells (the grid of `run`); None = any queued cell (`worker`)
    forever: bool = False
    poll_s: float = 0.2
    env: dict[str, str] = field(default_factory=dict)
    owner: str | None = None  # how this coordinator signs its claims (default host:pid; a SLURM job adds its id)
    dead_owner: Callable[[str], bool] | None = None  # also certainly gone (beside this host's dead processes)


STORES_DIR = "stores"  # runs/_train/<train_key>/stores/<store id>: the stores whose cells use the training
LEGACY_MARK = "legacy"  # a mark of an unknown store: the training was there before sweepdae recorded its stores


def mark_training(folder: Path, store_id: str) -> None:
    """Record that the store `store_id` uses the training in `folder` (one empty file per store: two stores
    sharing runs/ never rewrite each other's mark).

    A folder that already holds something but records no store was made before sweepdae recorded them, maybe by
    another store sharing runs/: it also gets the `legacy` mark (an unknown owner), so that once this store no
    longer uses it, `gc` keeps it as it keeps any unmarked training (unless --include-unmarked). A training this
    store makes is marked before it starts, so its folder is empty (or absent) then and gets no legacy mark."""
    marks = folder / STORES_DIR
    if not marks.is_dir() and folder.is_dir() and any(p.name != STORES_DIR for p in folder.iterdir()):
        marks.mkdir(exist_ok=True)
        (marks / LEGACY_MARK).touch()
    marks.mkdir(parents=True, exist_ok=True)
    (marks / store_id).touch()


def training_stores(folder: Path) -> set[str] | None:
    """The ids of the stores that use the training in `folder`; None when it records none (made before sweepdae
    recorded them)."""
    marks = folder / STORES_DIR
    return {p.name for p in marks.iterdir() if p.is_file()} if marks.is_dir() else None


class Coordinator:
    """Runs queued cells until none are left (or forever), with at most one cell per slot."""

    def __init__(self, store: Store, opts: Options, view: View) -> None:
        self.store = PatientStore(store, view, STORE_OUTAGE_S)
        self.opts = opts
        self.view = view
        self.owner = opts.owner or f"{socket.gethostname()}:{os.getpid()}"
        self.running: dict[int, Running] = {}  # slot index -> running cell
        self.waiting: dict[str, Waiting] = {}  # cell key -> claimed cell waiting for its training
        self.blocked: dict[str, float] = {}  # train_key -> until when its cells are not claimed (inf: for good)
        self.parked: dict[str, str] = {}  # cell key -> why it was given back (its training lives elsewhere)
        self._last_wait_poll = 0.0
        self._identity: str | None = None  # the store's id, read once (`Store.identity`)
        self.stopping = 0  # 1 after the first Ctrl-C, 2 after the second
        self.preempt_deadline: float | None = None  # set by `preempt`: running cells are killed after it
        self._killed_late = False
        self._preempt_asked: tuple[float, str] | None = None  # by a signal handler: the loop acts on it
        self.failed_for_good: list[str] = []
        self.done: list[str] = []
        self._last_reap = 0.0

    # -- lifecycle -----------------------------------------------------------------------------------------------
    def run(self) -> None:
        old = signal.signal(signal.SIGINT, self._on_sigint)
        try:
            self._loop()
        finally:
            signal.signal(signal.SIGINT, old)
            for w in list(self.waiting.values()):  # claimed but never started: back to the queue
                self.store.release(w.claim, reason="its coordinator stopped while it waited for its training")
            self.waiting.clear()
            if self.running:  # second Ctrl-C or an error: stop now, the cells stay resumable
                for r in self.running.values():
                    r.handle.signal(signal.SIGKILL)
                for r in list(self.running.values()):
                    self._wait(r)
                    self._finish(r, interrupted=True)

    def _on_sigint(self, signum: int, frame: Any) -> None:
        self.stopping += 1
        if self.stopping == 1:
            self.view.message("Ctrl-C: no new cells; running cells stop after their checkpoint (Ctrl-C again: now)")
            for r in self.running.values():
                r.handle.signal(signal.SIGINT)
        else:
            raise KeyboardInterrupt

    def request_preempt(self, grace_s: float = 60.0, why: str = "asked to give the node back") -> None:
        """`preempt` at the loop's next turn (within `Options.poll_s`): what a signal handler calls, since the
        handler may interrupt the loop halfway through a store call or a print."""
        self._preempt_asked = self._preempt_asked or (grace_s, why)

    def preempt(self, grace_s: float = 60.0, why: str = "asked to give the node back") -> None:
        """Give the machine back soon (SLURM's pre-timeout signal, a preemption, `scontrol requeue`): claim nothing
        more; a cell that is training checkpoints at its next step and exits (its folder's STOP file), one that is
        evaluating stops now (its training is safe on disk); whatever still runs after `grace_s` is killed. Every
        one of them is queued again and resumes from its checkpoint."""
        if self.preempt_deadline is not None:
            return
        self.preempt_deadline = time.time() + grace_s
        self.stopping = max(self.stopping, 1)
        self.view.message(f"{why}: no new cells; running cells checkpoint and stop")
        for r in list(self.running.values()):
            try:
                (r.run_dir / STOP).touch()
            except OSError:
                r.handle.signal(signal.SIGINT)
                continue
            if r.last_event.get("phase") != "train" or r.last_event.get("reused_training"):
                r.handle.signal(signal.SIGINT)

    def _loop(self) -> None:
        while True:
            if self._preempt_asked is not None and self.preempt_deadline is None:
                self.preempt(*self._preempt_asked)
            if self.preempt_deadline is not None and not self._killed_late and time.time() > self.preempt_deadline:
                self._killed_late = True
                for r in self.running.values():
                    r.handle.signal(signal.SIGKILL)
            # running cells first: their heartbeats renew the leases before the reaper looks (after a store outage
            # longer than the lease, the reaper would otherwise requeue cells that are still running here)
            for idx, r in list(self.running.items()):
                self._watch(r)
                if r.handle.poll() is not None:
                    del self.running[idx]
                    self._finish(r)
            now = time.time()
            if now - self._last_reap > REAP_EVERY_S:
                self._last_reap = now
                for key in self.store.reap_stale(dead_owner=self._dead_owner):
                    self.view.message(f"requeued stale cell {key[:10]} (its coordinator stopped)")
                for tk in self.store.reap_stale_trainings(dead_owner=self._dead_owner):
                    self.view.message(f"training {tk[:10]} freed (its trainer stopped)")
            self._beat_waiting(now)
            if not self.stopping and not (self.opts.fail_fast and self.failed_for_good):
                poll = now - self._last_wait_poll > WAIT_POLL_S
                if poll:
                    self._last_wait_poll = now
                for slot in self.opts.slots:
                    if slot.index in self.running:
                        continue
                    if poll and self._start_waiting(slot):
                        continue
                    claim = self.store.claim(self.owner, lease_s=LEASE_S, keys=self.opts.keys,
                                             skip_train_keys=self._skip_train_keys(now))
                    if claim is None:
                        break
                    if not self._adopt(claim):
                        self._dispatch(claim, slot)
            self.view.refresh()
            if not self.running:
                if self.stopping or (self.opts.fail_fast and self.failed_for_good):
                    return
                if not self.waiting and not self._work_left():
                    if not self.opts.forever:
                        return
                    time.sleep(2.0)
            time.sleep(self.opts.poll_s)

    def _dead_owner(self, owner: str) -> bool:
        return dead_local_owner(owner) or (self.opts.dead_owner is not None and self.opts.dead_owner(owner))

    # -- trainings -----------------------------------------------------------------------------------------------
    def _train_key(self, claim: Claim) -> str:
        if claim.train_key:
            return str(claim.train_key)
        return recipe_from_dict(claim.recipe).train_key()  # a trial queued before train keys were recorded

    def _skip_train_keys(self, now: float) -> set[str]:
        for tk in [tk for tk, until in self.blocked.items() if until <= now]:
            del self.blocked[tk]
        return set(self.blocked) | {w.train_key for w in self.waiting.values()}

    def _dispatch(self, claim: Claim, slot: Slot) -> None:
        """Start a claimed cell now (its training is finished here, or it takes the training's lease and trains
        it), or hold it until its training is made, or give it back when that training lives on another
        machine."""
        tk = self._train_key(claim)
        decision, lease = self._training_decision(claim, tk)
        if decision == Decision.START:
            self._start(claim, slot, tk, train_claim=lease)
        elif decision == Decision.WAIT:
            self.waiting[claim.key] = Waiting(claim, tk, lease)
            self.view.cell_waiting(claim.key, claim.label, lease)
        else:  # Decision.ELSEWHERE
            self.store.release(claim, reason=lease)
            self.blocked[tk] = float("inf")
            self.parked[claim.key] = lease
            self.view.message(f"{claim.label}: {lease}; left queued for a worker there")

    def _training_decision(self, claim: Claim, tk: str) -> tuple[Decision, Any]:
        """(START, training claim or None) | (WAIT, why) | (ELSEWHERE, why)."""
        decision = self._decide_training(claim, tk)
        if decision[0] == Decision.START:  # this store makes or uses the folder: `gc` of another store must keep it
            mark_training(train_dir(self.opts.runs_dir / claim.key, tk), self._store_id())
        return decision

    def _store_id(self) -> str:
        if self._identity is None:
            self._identity = str(self.store.identity())
        return self._identity

    def _decide_training(self, claim: Claim, tk: str) -> tuple[Decision, Any]:
        folder = train_dir(self.opts.runs_dir / claim.key, tk)
        if read_trained(folder, tk) is not None:
            return Decision.START, None
        lease = self.store.acquire_training(tk, owner=self.owner, lease_s=LEASE_S, label=claim.label)
        if lease.state == LeaseState.MINE:
            return Decision.START, lease.claim
        if lease.state == LeaseState.BUSY:
            if lease.owner != self.owner:
                self.blocked[tk] = time.time() + BUSY_RECHECK_S
            where = "here" if lease.owner == self.owner else lease.owner
            return Decision.WAIT, f"training {tk[:10]} is being made ({where})"
        info = lease.info
        where = resolve_runs_dir(str(info.get("runs_dir", "?")), self.store.folder)
        if info.get("host") == socket.gethostname() and where == str(self.opts.runs_dir):
            # finished here, then its folder was removed: the cell trains it again
            self.view.message(f"{claim.label}: training {tk[:10]} was removed from {folder}; training it again")
            return Decision.START, None
        return Decision.ELSEWHERE, (f"training {tk[:10]} lives on {info.get('host', '?')} "
                             f"({where}/{info.get('train_dir', '')})")

    def _start_waiting(self, slot: Slot) -> bool:
        """Start the first waiting cell whose training is now finished here or free to take."""
        for key, w in list(self.waiting.items()):
            decision, lease = self._training_decision(w.claim, w.train_key)
            if decision == Decision.WAIT:
                if lease != w.why:
                    w.why = lease
                continue
            del self.waiting[key]
            self.view.cell_unwaiting(key)
            if decision == Decision.START:
                self._start(w.claim, slot, w.train_key, train_claim=lease)
                return True
            self.store.release(w.claim, reason=lease)
            self.blocked[w.train_key] = float("inf")
            self.parked[key] = lease
            self.view.message(f"{w.claim.label}: {lease}; left queued for a worker there")
        return False

    def _beat_waiting(self, now: float) -> None:
        for key, w in list(self.waiting.items()):
            if now - w.last_beat > HEARTBEAT_S:
                w.last_beat = now
                if not self.store.heartbeat(w.claim):
                    del self.waiting[key]
                    self.view.cell_unwaiting(key)

    def _settle_training(self, r: Running) -> None:
        """Record the training a cell made (its `trained` event, or at its end), or give the lease back."""
        if r.train_claim is None:
            return
        folder = train_dir(r.run_dir, r.train_key)
        info = read_trained(folder, r.train_key)
        if info is not None:
            self.store.complete_training(r.train_claim, info={
                "host": socket.gethostname(), "runs_dir": stored_runs_dir(self.opts.runs_dir, self.store.folder),
                "train_dir": str(folder.relative_to(self.opts.runs_dir)), "cell": r.claim.key,
                "label": r.claim.label, "grid": r.claim.grid, "steps": info.steps,
                "seconds": info.seconds, "curve_fields": info.curve_fields,
                "curve": _finite(info.curve or [])})
            self._last_wait_poll = 0.0  # cells waiting for it may start now
        elif r.handle.poll() is not None:
            self.store.fail_training(r.train_claim, error=f"cell {r.claim.label} ended before its training did")
        else:
            return
        r.train_claim = None

    def _adopt(self, claim: Claim) -> bool:
        """A claim of a cell this coordinator is already running (its lease was reaped while the store was
        unreachable, and the cell queued again): the running process carries on under the new claim."""
        for r in self.running.values():
            if r.claim.key == claim.key:
                self.view.message(f"{claim.label}: lease renewed under attempt {claim.attempt} (already running)")
                r.claim = claim
                r.last_beat = time.time()
                return True
        return False

    def _work_left(self) -> bool:
        st = self.store.status(sorted(self.opts.keys) if self.opts.keys is not None else None)
        # cells given back because their training lives on another machine are that machine's work
        return any(s == "running" or (s == "queued" and k not in self.parked) for k, s in st.items())

    # -- one cell ------------------------------------------------------------------------------------------------
    def _start(self, claim: Claim, slot: Slot, train_key: str = "", train_claim: Claim | None = None) -> None:
        run_dir = self.opts.runs_dir / claim.key
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / STOP).unlink(missing_ok=True)  # an earlier attempt's stop request is not this one's
        overrides = dict(claim.recipe_overrides or {})
        recipe = claim.recipe  # the store merged the attempt's overrides (e.g. a halved micro-batch) into it
        atomic_write_json(run_dir / RECIPE, {"key": claim.key, "label": claim.label, "recipe": recipe,
                                             "overrides": overrides, "attempt": claim.attempt, "grid": claim.grid})
        env = {**os.environ, **self.opts.env, "SWEEPDAE_ATTEMPT": str(claim.attempt),
               "SWEEPDAE_COORDINATOR_PID": str(os.getpid())}
        if not slot.gpus:  # share this machine's cores among its concurrent CPU cells
            cpu_slots = sum(1 for s in self.opts.slots if not s.gpus)
            # (a user's OMP_NUM_THREADS wins: e.g. two coordinators on one machine)
            env.setdefault("SWEEPDAE_CPU_THREADS", os.environ.get("OMP_NUM_THREADS")
                           or str(max(1, (os.cpu_count() or 1) // cpu_slots)))
        # a finished result of this key already on disk (e.g. its first coordinator was reaped while the cell
        # ended): record it instead of training again -- unless it is the result `forget` dropped
        self._set_aside_forgotten(claim, run_dir)
        if read_result(run_dir, claim.key) is not None:
            rc_handle: Handle = _DoneHandle()
        elif self._launcher(slot) == Launcher.FORK:
            rc_handle = launch_fork(run_dir, slot, env=env)
        else:
            ports = {r.port for r in self.running.values() if r.port}
            h = launch_accelerate(run_dir, slot, env=env, ports_in_use=ports)
            rc_handle = h
        offset = (run_dir / EVENTS).stat().st_size if (run_dir / EVENTS).exists() else 0
        r = Running(claim=claim, slot=slot, handle=rc_handle, run_dir=run_dir, started=time.time(), offset=offset,
                    last_beat=time.time(), port=getattr(rc_handle, "port", None),
                    train_key=train_key or self._train_key(claim), train_claim=train_claim)
        self.running[slot.index] = r
        self.view.cell_started(claim.key, claim.label, slot.label, claim.attempt)

    def _set_aside_forgotten(self, claim: Claim, run_dir: Path) -> None:
        """A result.json made before `forget` last dropped the key's results is that forgotten result (its folder
        was not where `forget` looked, e.g. another runs folder): recording it would undo the forget. It is renamed
        result.json.forgotten, so neither this start nor `_finish` reads it, and the cell runs again. Made = the
        earlier of the cell's own `finished` time and the file's mtime (a clock off between machines sets a result
        aside rather than record a forgotten one: that costs a re-run, never a wrong result)."""
        result = read_result(run_dir, claim.key)
        if result is None:
            return
        forgot = self.store.forgotten_at(claim.key)
        if forgot is None:
            return
        try:
            made = (run_dir / RESULT).stat().st_mtime
        except OSError:
            return
        finished = result.finished  # 0.0: a result.json that does not say (its mtime alone then)
        if isinstance(finished, (int, float)) and not isinstance(finished, bool) and finished > 0:
            made = min(made, float(finished))
        if made >= forgot:
            return
        os.replace(run_dir / RESULT, run_dir / (RESULT + ".forgotten"))
        self.view.message(f"{claim.label}: its result.json predates `sweepdae forget`; set aside as "
                          f"{RESULT}.forgotten, the cell runs again")

    def _launcher(self, slot: Slot) -> str:
        if self.opts.launcher != Launcher.AUTO:
            return self.opts.launcher
        return Launcher.FORK if not slot.gpus else Launcher.ACCELERATE

    def _watch(self, r: Running) -> None:
        events, r.offset = read_events(r.run_dir / EVENTS, r.offset)
        for e in events:
            r.last_event.update(e)
            self.view.cell_event(r.claim.key, e)
            if e.get("phase") == "trained":
                self._settle_training(r)
        now = time.time()
        if now - r.last_beat > HEARTBEAT_S:
            r.last_beat = now
            if not self.store.heartbeat(r.claim):
                self.view.message(f"lease of {r.claim.label} lost (reaped); its result will still be kept")
            if r.train_claim is not None and not self.store.heartbeat_training(r.train_claim):
                r.train_claim = None  # reaped: another coordinator may train it (resuming the checkpoint)

    def _wait(self, r: Running) -> None:
        for _ in range(100):
            if r.handle.poll() is not None:
                return
            time.sleep(0.05)

    def _finish(self, r: Running, interrupted: bool = False) -> None:
        self._watch(r)
        self._settle_training(r)
        rc = r.handle.poll()
        elapsed = time.time() - r.started
        key = r.claim.key
        result = read_result(r.run_dir, key)
        if result is not None:
            info = {"timings": {**result.timings, "wall_s": elapsed}, "artifacts": result.artifacts,
                    "run_dir": _stored_run_dir(r.run_dir, self.opts.runs_dir),
                    "provenance": result.provenance, "steps": result.steps,
                    "resumed_from_epoch": result.resumed_from_epoch, "tokenizer": result.tokenizer,
                    "slot": r.slot.label, "overrides": dict(r.claim.recipe_overrides or {}),
                    "train_key": result.train_key, "reused_training": result.reused_training,
                    "trained_by": result.trained_by}
            metrics = {k: float(v) for k, v in result.metrics.items()}
            # no machine paths in the store: tokenizer cache paths relative to the runs folder, and so on
            recorded = self.store.complete(r.claim, metrics=metrics, info=jsonable(portable(info, self.opts.runs_dir)))
            self.done.append(key)
            self.view.cell_finished(key, "done" if recorded else "done (already recorded)", metrics)
            return
        failure = _read_json(r.run_dir / FAILURE) or {}
        cls, retryable = classify_exit(rc, failure, interrupted=interrupted or bool(self.stopping))
        interrupted = interrupted or bool(self.stopping) or cls in INTERRUPTIONS
        attempt = int(getattr(r.claim, "attempt", 1))
        overrides: dict[str, Any] | None = {}
        if cls == "oom":
            overrides = _oom_overrides(r.claim.recipe, r.last_event.get("phase"))
            retryable = retryable and overrides is not None
        # an interrupted cell (Ctrl-C, SIGKILL of the coordinator) is resumable and does not use up a retry
        retry = interrupted or (retryable and attempt <= self.opts.max_retries)
        tail = failure.get("traceback_tail") or _log_tail(r.run_dir)
        error = failure.get("error") or (f"exit code {rc}: could not write {FAILURE} (no space left on the device?)"
                                         if rc == EXIT_IO else f"exit code {rc}")
        info = {"exit_code": rc, "run_dir": _stored_run_dir(r.run_dir, self.opts.runs_dir), "wall_s": elapsed,
                "slot": r.slot.label,
                "recipe_overrides": overrides or {}, "last_event": r.last_event}
        runs = self.opts.runs_dir  # tracebacks keep source paths relative to their package, and no runs folder
        self.store.fail(r.claim, failure_class=cls, error=portable_text(error, runs),
                        traceback_tail=portable_text(tail, runs), retry=retry, info=jsonable(portable(info, runs)))
        if not retry:
            self.failed_for_good.append(key)
        status = "interrupted (resumable)" if interrupted else ("failed, retrying" if retry else "failed")
        self.view.cell_finished(key, status, {}, error=f"{cls}: {error}")


def _finite(points: list[list[Any]]) -> list[list[Any]]:
    """Curve points as JSON the store takes: NaN and inf as null."""
    return [[v if isinstance(v, (int, float)) and math.isfinite(v) else None for v in p] for p in points]


def _stored_run_dir(run_dir: Path, runs_dir: Path) -> str:
    """The cell's folder as the store keeps it: relative to the runs folder (reports resolve it against theirs),
    so no machine's paths end up in the store or a report."""
    try:
        return run_dir.relative_to(runs_dir).as_posix()
    except ValueError:
        return run_dir.name


def jsonable(obj: Any) -> Any:
    """Round-trip through JSON so the store only ever sees plain values (`plain`; anything else as its str)."""
    return json.loads(json.dumps(plain(obj), default=str))


class _DoneHandle:
    pid = 0
    port = None

    def poll(self) -> int | None:
        return 0

    def signal(self, sig: int) -> None:
        pass


def _read_json(path: Path) -> dict[str, Any] | None:
    """The JSON object in `path`, or None (missing, unreadable, not JSON, or not an object)."""
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) else None


def _log_tail(run_dir: Path, n: int = 4000) -> str:
    try:
        with open(run_dir / "cell.log", "rb") as f:
            f.seek(0, 2)
            size = f.tell()
            f.seek(max(0, size - n))
            return f.read().decode(errors="replace")
    except OSError:
        return ""


def _oom_overrides(recipe: dict[str, Any], phase: Any) -> dict[str, Any] | None:
    """The next attempt's overrides after out-of-memory in `phase` (the cell's last event), None for no retry.

    Training (or a cell that died before saying its phase): the training micro-batch halved. Any other phase
    does not depend on that knob, so a retry would fail the same way: the phases with a batch of their own (the
    tokenizer fit, FID) already halved it in-process down to 1 (cell/memory.py) before failing."""
    if phase not in (None, "train"):
        return None
    return _halve_micro_batch(recipe)


def _halve_micro_batch(recipe: dict[str, Any]) -> dict[str, Any] | None:
    """Out of memory: half the micro-batch, twice the accumulation, same effective batch (None if it cannot).

    `recipe` is the attempt's recipe (overrides of earlier attempts already merged); the result is the nested
    override the store deep-merges into the next attempt.
    """
    batch = int(recipe["train"]["batch_size"])
    micro = int(recipe["train"]["micro_batch_size"] or batch)
    if micro <= 1 or micro % 2:
        return None
    return {"train": {"micro_batch_size": micro // 2}}
