"""`sweepdae run --executor slurm`: a sweep's cells as SLURM jobs, submitted through submitit.

Unit of submission: **one job per training group** -- the not-done cells of one `train_key` (the cells that evaluate
one training; see `Recipe.train_key`). Why not N generic workers draining the queue:

* A group's cells share one training. One job trains it once and then evaluates every cell of the group on the
  same node, with no job idling while another job's training finishes.
* A group is one recipe, so it asks for one size of job. `[slurm.by.AXIS."LABEL"]` gives a ViT-L group more time
  and GPUs than a ViT-B one; a generic worker could claim either, and would have to ask for the largest.
* Every queued or running cell belongs to one known job. `status` shows its job id, state and log, `cancel`
  knows what to scancel, and a rerun submits exactly the groups that have no live job.

Groups with the same resources are submitted together as one job array (one sbatch call).

Inside a job, `CellGroupJob` runs the ordinary coordinator over its cells' keys against the shared store, signing
its claims `slurm-<job id>.<restart count>@host:pid`. On SLURM's pre-timeout signal (submitit's USR2) or SIGTERM
(preemption, `scontrol requeue`, `scancel`), it asks `Coordinator.preempt`: a cell that is training checkpoints at
its next step, and a cell that is evaluating stops; both are queued again as interrupted, which uses up no retry.
Then:

* after USR2, submitit checkpoints the job (the same `CellGroupJob`) and requeues it;
* after SIGTERM, SLURM itself requeues a requeued or preempted job, and a cancelled job stays cancelled. Its
  cells wait queued for the next `sweepdae run --executor slurm`.

A job that died without a word (node failure, SIGKILL) leaves RUNNING trials. Whoever looks next reaps them at
once, with no wait for the lease: the job's next incarnation, the `--wait` loop, a rerun, or `cancel`. They ask
SLURM whether the owning job is still alive (`dead_job_owner`).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sweepdae.errors import SweepdaeError
from sweepdae.grid.schema import PER_GPU_KEYS, check_slurm_options, layer_slurm_options, tomllib
from sweepdae.runner.coordinator import Coordinator, Options
from sweepdae.runner.slots import detect_gpus, make_slots
from sweepdae.runner.view import make_view
from sweepdae.store import JobRecord, Store, open_store, parse_url, resolve_url

# states in which a job still holds (or will hold) its cells; anything else, or a job SLURM no longer knows, has
# ended (cancelling a pending array task on its own makes it vanish from squeue, scontrol and sacct alike)
LIVE_STATES = frozenset({"PENDING", "RUNNING", "CONFIGURING", "COMPLETING", "REQUEUED", "REQUEUE_HOLD",
                         "REQUEUE_FED", "RESIZING", "SUSPENDED", "STOPPED", "SIGNALING", "STAGE_OUT", "PREEMPTED"})
DEFAULTS: dict[str, Any] = {"time": 60, "cpus": 4, "max_requeues": 3}
GRACE_S = float(os.environ.get("SWEEPDAE_SLURM_GRACE_S", "60"))  # how long running cells get to checkpoint
USER_CONFIG = "~/.config/sweepdae/slurm.toml"


# -- options ---------------------------------------------------------------------------------------------------------
def user_config(path: str | os.PathLike[str] | None = None) -> dict[str, Any]:
    """The user's SLURM defaults: $SWEEPDAE_SLURM_CONFIG, else ~/.config/sweepdae/slurm.toml (a flat table of
    the `[slurm]` keys, e.g. `account = "proj42"`); {} when there is none."""
    p = Path(path or os.environ.get("SWEEPDAE_SLURM_CONFIG") or USER_CONFIG).expanduser()
    if not p.exists():
        if path or os.environ.get("SWEEPDAE_SLURM_CONFIG"):
            raise SweepdaeError(f"{p}: no such SLURM config file")
        return {}
    try:
        doc = tomllib.loads(p.read_text())
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as e:
        raise SweepdaeError(f"{p}: not a readable TOML file: {str(e).splitlines()[0] if str(e) else e}") from None

    def error(key: str, message: str) -> SweepdaeError:  # a flat file's keys are named as written there
        return SweepdaeError(f"{p}: {key if 'slurm' in doc else key.removeprefix('slurm.')}: {message}")

    opts = check_slurm_options(doc, "slurm", error) if "slurm" not in doc else check_slurm_options(
        doc["slurm"], "slurm", error)
    return opts


def resources(cells: Iterable[Any], spec: Any, *, cli: dict[str, Any], config: dict[str, Any],
              gpus_per_cell: int) -> dict[str, Any]:
    """The options of one group's job. Precedence, highest first: the command line; the grid's
    `[slurm.by.AXIS."LABEL"]` for the group's cells (the largest time, GPUs, CPUs and memory when they differ);
    the grid's `[slurm]`; the user config; `DEFAULTS`, with `gpus` = --gpus-per-cell. Per-GPU CPUs and memory
    (`cpus_per_gpu`, `mem_gb_per_gpu`) become the job's totals `cpus`, `mem_gb` for its GPUs, as SLURM's
    --cpus-per-gpu / --mem-per-gpu do, unless a higher layer gives the total."""
    out: dict[str, Any] = layer_slurm_options(layer_slurm_options({**DEFAULTS, "gpus": gpus_per_cell}, config),
                                              spec.options)
    by: dict[str, Any] = {}
    for cell in cells:
        for axis, per_label in spec.by.items():
            opts = per_label.get(cell.coords.get(axis), {})
            for k, v in opts.items():
                if k in by and isinstance(v, (int, float)) and k != "max_requeues":
                    by[k] = max(by[k], v)
                else:
                    by.setdefault(k, v)
    for per, total in PER_GPU_KEYS.items():  # one table cannot give both (check_slurm_options); nor may two of a job
        if per in by and total in by:
            raise SweepdaeError(f"[slurm.by] tables of one job give both {total} and {per}: give the same one in each")
    out = layer_slurm_options(layer_slurm_options(out, by), {k: v for k, v in cli.items() if v is not None})
    gpus = max(1, int(out.get("gpus") or 0))
    for per, total in PER_GPU_KEYS.items():
        if per in out:
            out[total] = out[per] * gpus
    return out


def executor_parameters(opts: dict[str, Any]) -> dict[str, Any]:
    """submitit SlurmExecutor parameters of a job's options."""
    params: dict[str, Any] = {"time": int(opts["time"]), "cpus_per_task": int(opts["cpus"]), "ntasks_per_node": 1,
                              "nodes": 1, "additional_parameters": {"requeue": True}}
    for k in ("partition", "account", "qos", "constraint"):
        if opts.get(k):
            params[k] = opts[k]
    if opts.get("mem_gb"):
        params["mem"] = f"{max(1, round(float(opts['mem_gb']) * 1024))}M"
    if int(opts.get("gpus") or 0) > 0:
        params["gres"] = f"gpu:{int(opts['gpus'])}"
    return params


# -- the cluster -----------------------------------------------------------------------------------------------------
def _command(*args: str, timeout: float = 60) -> str:
    try:
        done = subprocess.run(list(args), capture_output=True, text=True, timeout=timeout, check=False)
    except FileNotFoundError:
        raise SweepdaeError(f"{args[0]}: not found; --executor slurm needs the SLURM client commands "
                            "(sbatch, squeue, sacct, scancel) on this machine") from None
    except subprocess.TimeoutExpired:
        raise SweepdaeError(f"{args[0]}: no answer from SLURM in {timeout:.0f} s") from None
    if done.returncode != 0:
        msg = (done.stderr or done.stdout).strip().splitlines()
        raise SweepdaeError(f"{' '.join(args[:2])}: {msg[-1] if msg else f'exit status {done.returncode}'}")
    return done.stdout


def job_states(job_ids: Iterable[str]) -> dict[str, str]:
    """job id (`123` or an array task `123_4`) -> its state: what squeue says of live jobs, else sacct's final
    state, else "GONE" (SLURM knows it no more)."""
    ids = sorted(set(job_ids))
    if not ids:
        return {}
    states: dict[str, str] = {}
    for line in _command("squeue", "--me", "--array", "--noheader", "--format=%i|%T").splitlines():
        jid, _, state = line.strip().partition("|")
        if jid in ids:
            states[jid] = state.strip()
    rest = [j for j in ids if j not in states]
    for chunk in (rest[i:i + 200] for i in range(0, len(rest), 200)):
        out = _command("sacct", "--noheader", "--parsable2", "--allocations", "--format=JobID,State",
                       "--jobs=" + ",".join(chunk))
        for line in out.splitlines():
            jid, _, state = line.strip().partition("|")
            if jid in chunk:
                states[jid] = state.split()[0] if state.strip() else "UNKNOWN"  # "CANCELLED by 0" -> CANCELLED
    return {j: states.get(j, "GONE") for j in ids}


def is_live(state: str) -> bool:
    return state in LIVE_STATES


def owner_tag(job_id: str, restart: int) -> str:
    return f"slurm-{job_id}.{restart}"


def parse_owner(owner: str) -> tuple[str, int] | None:
    """(job id, restart count) of a claim signed by a SLURM job's coordinator, else None."""
    tag, at, _ = owner.partition("@")
    if not at or not tag.startswith("slurm-"):
        return None
    job_id, _, restart = tag[len("slurm-"):].rpartition(".")
    return (job_id, int(restart)) if job_id and restart.isdigit() else None


@dataclass
class DeadJobOwner:
    """`dead_owner` for the store's reaper: a claim's owner is gone when its SLURM job has ended, or when it was an
    earlier incarnation of a job that has since been requeued (`me` = this job's id and restart count). SLURM is
    asked at most every `every_s` seconds."""

    me: tuple[str, int] | None = None
    every_s: float = 5.0
    _states: dict[str, str] = field(default_factory=dict)
    _asked: float = 0.0

    def __call__(self, owner: str) -> bool:
        parsed = parse_owner(owner)
        if parsed is None:
            return False
        job_id, restart = parsed
        if self.me is not None and job_id == self.me[0]:
            return restart < self.me[1]
        now = time.time()
        if job_id not in self._states or now - self._asked > self.every_s:
            try:
                self._states.update(job_states([job_id, *self._states]))
            except SweepdaeError:
                return False  # SLURM does not answer: let the lease decide
            self._asked = now
        return not is_live(self._states.get(job_id, "GONE"))


# -- inside a job ----------------------------------------------------------------------------------------------------
def _submitit() -> Any:
    try:
        import submitit
    except ImportError:
        raise SweepdaeError("--executor slurm needs submitit: pip install 'sweepdae[slurm]'") from None
    return submitit


class CellGroupJob:
    """What a SLURM job runs: the coordinator over one training group's cells, against the shared store.
    submitit pickles it; on USR2 it checkpoints it (`checkpoint`: the same object) and requeues the job. (Not a
    subclass of submitit's Checkpointable, which only adds that method: reading job states, for `status`, needs
    no submitit.)"""

    def __init__(self, *, store_url: str, runs_dir: str, keys: list[str], launcher: str = "auto", gpus: int = 1,
                 max_retries: int = 1, grace_s: float = GRACE_S) -> None:
        self.store_url, self.runs_dir, self.keys = store_url, runs_dir, list(keys)
        self.launcher, self.gpus = launcher, gpus
        self.max_retries, self.grace_s = max_retries, grace_s

    def checkpoint(self, *args: Any, **kwargs: Any) -> Any:
        return _submitit().helpers.DelayedSubmission(self, *args, **kwargs)

    def __call__(self) -> dict[str, Any]:
        submitit = _submitit()
        env = submitit.JobEnvironment()
        job_id, restart = str(env.job_id), int(os.environ.get("SLURM_RESTART_COUNT", "0") or 0)
        if os.environ.get("SLURM_CPUS_PER_TASK"):  # the cells' threads: this job's CPUs, not the node's
            os.environ.setdefault("OMP_NUM_THREADS", os.environ["SLURM_CPUS_PER_TASK"])
        # one slot over every GPU the job was given (CUDA_VISIBLE_DEVICES): its cells run one at a time, each on
        # all of them; a CPU job (gpus = 0) uses none, even on a node that has some
        gpus = detect_gpus()[: self.gpus] if self.gpus else []
        slots = make_slots(gpus, gpus_per_cell=max(1, len(gpus)), cells_per_gpu=1, cpu_cells=1)
        store = open_store(self.store_url, create=False)
        view = make_view(total=len(self.keys), cached=0, title=f"slurm job {job_id}", plain=True)
        if self.gpus and len(gpus) < self.gpus:
            view.message(f"job {job_id} asked for {self.gpus} GPUs and sees {len(gpus)} that CUDA can use; its "
                         f"cells run on {'those' if gpus else 'the CPU'}")
        coord = Coordinator(store, Options(runs_dir=Path(self.runs_dir), slots=slots, launcher=self.launcher,
                                           max_retries=self.max_retries, keys=set(self.keys),
                                           owner=f"{owner_tag(job_id, restart)}@{socket.gethostname()}:{os.getpid()}",
                                           dead_owner=DeadJobOwner(me=(job_id, restart))), view)
        requeue = signal.getsignal(signal.SIGUSR2)  # submitit's: checkpoint this object, requeue the job, exit
        got: list[int] = []

        def on_signal(signum: int, frame: Any) -> None:
            got.append(signum)
            coord.request_preempt(self.grace_s, why=f"job {job_id}: {signal.Signals(signum).name}")

        signal.signal(signal.SIGUSR2, on_signal)
        signal.signal(signal.SIGTERM, on_signal)
        view.message(f"job {job_id} (restart {restart}) on {socket.gethostname()}: {len(self.keys)} cells, "
                     f"slots {', '.join(s.label for s in slots)}")
        try:
            coord.run()
        finally:
            view.close()
            store.close()
        if signal.SIGUSR2 in got and callable(requeue):
            requeue(signal.SIGUSR2, None)  # raises SystemExit once requeued
        if got:  # SIGTERM: SLURM requeues a requeued or preempted job itself; a cancelled one stays cancelled
            sys.exit(128 + got[-1])
        return {"job_id": job_id, "done": coord.done, "failed": coord.failed_for_good}


# -- submitting ------------------------------------------------------------------------------------------------------
@dataclass
class Group:
    train_key: str
    cells: list[Any]
    options: dict[str, Any]


def job_store_url(url: str | None) -> str:
    """The store URL as the jobs must see it: resolved ($SWEEPDAE_STORE, the default) and, for a journal file, made
    absolute (a job's working folder may differ). It travels in the job's pickle under runs/_slurm/: a password in
    a PostgreSQL URL is better kept in ~/.pgpass or $PGPASSWORD."""
    u = resolve_url(url)
    parsed = parse_url(u)
    if parsed.kind == "journal":
        return "journal:" + str(Path(parsed.target).expanduser().resolve())
    return u


def check_store(store: Store, warn: Callable[[str], None]) -> None:
    """PostgreSQL is the store for cluster jobs; a journal file works on a shared filesystem; SQLite is refused."""
    if store.kind == "sqlite":
        raise SweepdaeError("--executor slurm: an SQLite store cannot be shared by cluster jobs (two workers were "
                            "measured claiming one trial); use --store postgresql://... (or journal:PATH on a "
                            "filesystem every node shares)")
    if store.kind == "journal":
        warn("journal store: every node must see the same file, on a shared filesystem with working file locks "
             "(NFS without them can corrupt it); PostgreSQL is the store for clusters")


def plan_groups(store: Store, cells: list[Any], *, spec: Any, cli: dict[str, Any], config: dict[str, Any],
                gpus_per_cell: int) -> tuple[list[Group], dict[str, str]]:
    """The groups to submit: the queued cells of `cells` that no live job holds, by train_key. Also returns
    key -> the live job already holding it. Trials held by jobs that ended are reaped first."""
    store.reap_stale(dead_owner=DeadJobOwner())
    store.reap_stale_trainings(dead_owner=DeadJobOwner())
    keys = [c.key for c in cells]
    status = store.status(keys)
    recorded = store.jobs()
    states = job_states(j.job_id for j in recorded) if recorded else {}
    held: dict[str, str] = {}
    for job in recorded:
        if is_live(states.get(job.job_id, "GONE")):
            for k in job.keys:
                held[k] = job.job_id
    todo: dict[str, list[Any]] = {}
    for c in cells:
        if status.get(c.key) == "queued" and c.key not in held:
            todo.setdefault(c.train_key, []).append(c)
    groups = [Group(tk, cs, resources(cs, spec, cli=cli, config=config, gpus_per_cell=gpus_per_cell))
              for tk, cs in todo.items()]
    return groups, held


def submit(groups: list[Group], *, store: Store, store_url: str, plan: Any, runs_dir: Path, launcher: str,
           max_retries: int) -> list[dict[str, Any]]:
    """Submit the groups (one job array per distinct set of options) and record every job in the store; returns
    the records (`JobRecord.to_dict`)."""
    submitit = _submitit()

    if shutil.which("sbatch") is None:
        raise SweepdaeError("sbatch: not found; --executor slurm needs the SLURM client commands on this machine")
    folder = runs_dir / "_slurm"
    by_options: dict[str, list[Group]] = {}
    for g in groups:
        by_options.setdefault(repr(sorted(g.options.items())), []).append(g)
    records: list[JobRecord] = []
    for same in by_options.values():
        opts = same[0].options
        ex = submitit.SlurmExecutor(folder=folder / "%j", max_num_timeout=int(opts.get("max_requeues", 3)))
        ex.update_parameters(job_name=f"sweepdae-{plan.grid.name}", **executor_parameters(opts))
        jobs: list[Any] = []
        try:
            with ex.batch():
                for g in same:
                    jobs.append(ex.submit(CellGroupJob(store_url=store_url, runs_dir=str(runs_dir),
                                                       keys=[c.key for c in g.cells], launcher=launcher,
                                                       gpus=int(g.options.get("gpus") or 0),
                                                       max_retries=max_retries)))
        except Exception as e:  # sbatch refused (no such partition, too many GPUs): nothing of this batch was queued
            msg = str(e).strip().splitlines()
            raise SweepdaeError(f"sbatch refused the jobs ({executor_parameters(opts)}): "
                                f"{msg[-1] if msg else type(e).__name__}") from None
        now = time.time()
        for g, job in zip(same, jobs, strict=True):
            records.append(JobRecord(job_id=str(job.job_id), grid=plan.grid.name, profile=plan.profile or "",
                                     train_key=g.train_key, keys=[c.key for c in g.cells],
                                     labels=[c.label for c in g.cells], log=str(job.paths.stdout),
                                     submitted=now, options=opts))
    store.record_jobs(records)
    return [r.to_dict() for r in records]


def cancel(store: Store, keys: set[str], *, wait_s: float = 30.0) -> tuple[list[str], list[str]]:
    """scancel the live jobs holding any of `keys`; wait for them to end, then queue their cells again (they
    resume from their checkpoints on the next submission). Returns (jobs cancelled, cells queued again)."""
    jobs = [j for j in store.jobs() if keys & set(j.keys)]
    states = job_states(j.job_id for j in jobs)
    live = sorted(jid for jid, st in states.items() if is_live(st))
    if live:
        _command("scancel", *live)
        deadline = time.time() + wait_s
        while time.time() < deadline and any(is_live(s) for s in job_states(live).values()):
            time.sleep(0.5)
    queued = store.reap_stale(dead_owner=DeadJobOwner(every_s=0.0))
    store.reap_stale_trainings(dead_owner=DeadJobOwner(every_s=0.0))
    return live, [k for k in queued if k in keys]


def job_of_cells(store: Store, keys: list[str] | None, jobs: list[JobRecord] | None = None
                 ) -> dict[str, dict[str, Any]]:
    """key -> the newest job submitted for it, with its `state` (for `status`); {} when no job was ever submitted.
    `jobs`: the store's jobs when the caller has read them already."""
    jobs = store.jobs() if jobs is None else jobs
    if not jobs:
        return {}
    wanted = set(keys) if keys is not None else None
    newest: dict[str, JobRecord] = {}
    for j in jobs:  # oldest first: later submissions win
        for k in j.keys:
            if wanted is None or k in wanted:
                newest[k] = j
    try:
        states = job_states({j.job_id for j in newest.values()})
    except SweepdaeError as e:
        states = {j.job_id: f"? ({e})"[:40] for j in newest.values()}
    return {k: {**j.to_dict(), "state": states.get(j.job_id, "GONE")} for k, j in newest.items()}
