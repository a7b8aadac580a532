"""`sweepdae run --executor slurm` against a real single-node SLURM (`.ci/slurm-up`): every cell done exactly once,
a cancelled job's cell finished by a resubmitted job, a requeued job's cell resumed from its checkpoint, GPUs per
job as asked. The store is PostgreSQL, as on a cluster.

Marked `slurm`: the default `pytest` deselects them; `.ci/slurm-up && pytest -m slurm` runs them (CI: own step).
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from sweepdae.store import open_store

pytestmark = [pytest.mark.slurm, pytest.mark.timeout(420)]

# CPU jobs of 1 CPU, 2 GB; time >= 5 min: submitit's USR2 may come up to 60 s early (docs/slurm.md#time-limit)
JOB = ["--executor", "slurm", "--cpus", "1", "--mem-gb", "2", "--time", "10"]


@pytest.fixture(scope="module", autouse=True)
def slurm_up() -> None:
    try:
        subprocess.run(["scontrol", "ping"], check=True, capture_output=True, timeout=20)
    except (OSError, subprocess.SubprocessError):
        pytest.fail("no SLURM controller answers: run .ci/slurm-up first (these tests need a real SLURM)")


@pytest.fixture
def make_grid(write_grid: Callable[..., Path]) -> Callable[..., Path]:
    """conftest's tiny digits grid (22 steps an epoch, ~0.1 s a step on a busy 2-core machine: 8 epochs are long
    enough to be caught mid-training), plus `extra` tables."""

    def make(tmp: Path, name: str, *, epochs: int = 1, dims: list[int] | None = None, extra: str = "") -> Path:
        p = write_grid(tmp, dims=dims or [4], epochs=epochs, name=name)
        p.write_text(p.read_text() + extra)
        return p

    return make


def _store_trials(url: str) -> Any:
    with open_store(url, create=False) as s:
        return s.attempts(), s.cells(), [j.to_dict() for j in s.jobs()]


def _sacct(job_ids: list[str], fields: str = "JobID,State,AllocTRES,TimelimitRaw") -> dict[str, dict[str, str]]:
    # accounting is written asynchronously: ask until every job is there
    names = fields.split(",")
    rows: dict[str, dict[str, str]] = {}
    for _ in range(40):
        out = subprocess.run(["sacct", "-X", "-n", "-P", f"--format={fields}", "--jobs=" + ",".join(job_ids)],
                             capture_output=True, text=True, check=True).stdout
        rows = {line.split("|")[0]: dict(zip(names, line.split("|"), strict=True)) for line in out.splitlines()}
        if all(j in rows for j in job_ids):
            return rows
        time.sleep(0.5)
    return rows


def _wait_for(what: str, check: Callable[[], Any], timeout: float = 120.0) -> Any:
    deadline = time.time() + timeout
    while time.time() < deadline:
        got = check()
        if got:
            return got
        time.sleep(0.3)
    raise AssertionError(f"timed out waiting for {what}")


def _train_events(run_dir: Path) -> list[dict[str, Any]]:
    path = run_dir / "events.jsonl"
    if not path.exists():
        return []
    return [e for e in map(json.loads, path.read_text().splitlines()) if e.get("phase") == "train"]


def _job_of(url: str, key: str) -> str:
    jobs = _store_trials(url)[2]
    return [j["job_id"] for j in jobs if key in j["keys"]][-1]


def _live(job_id: str) -> bool:
    out = subprocess.run(["squeue", "-h", "-r", "-o", "%i %T"], capture_output=True, text=True).stdout
    return any(line.split()[0] == job_id for line in out.splitlines() if line.strip())


def test_quickstart_on_slurm_every_cell_done_exactly_once(tmp_path: Path, sweepdae: Any, pg_url: str) -> None:
    """The issue's command: `sweepdae run quickstart --profile ci --executor slurm --wait`; then a rerun submits
    nothing."""
    r = sweepdae(tmp_path, "run", "quickstart", "--profile", "ci", *JOB, "--wait", store=pg_url, timeout=400)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "submitted 3 jobs (3 cells)" in r.stderr
    attempts, cells, jobs = _store_trials(pg_url)
    assert len(cells) == 3 and set(cells["status"]) == {"done"}
    # exactly once: one attempt per cell, one COMPLETE each
    assert len(attempts) == 3 and (attempts["state"] == "COMPLETE").sum() == 3
    ids = [j["job_id"] for j in jobs]
    assert len(ids) == 3 and sorted(k for j in jobs for k in j["keys"]) == sorted(cells["key"])
    # --wait returns once the cells are done; a job's process may still be exiting: ask until each job has ended
    def ended() -> dict[str, dict[str, str]] | None:
        a = _sacct(ids)
        return a if all(a.get(j, {}).get("State") not in (None, "PENDING", "RUNNING", "COMPLETING") for j in ids) \
            else None

    acct = _wait_for("the jobs' end in accounting", ended, 60)
    assert {acct[j]["State"] for j in ids} == {"COMPLETED"}, acct
    for j in jobs:  # each job's log is where status says it is
        assert Path(j["log"]).exists(), j["log"]
    again = sweepdae(tmp_path, "run", "quickstart", "--profile", "ci", *JOB, store=pg_url)
    assert again.returncode == 0 and "3 done; submitted 0 jobs" in again.stderr, again.stderr
    assert len(_store_trials(pg_url)[2]) == 3


def test_scancel_mid_cell_then_the_next_run_resubmits_and_finishes_it(tmp_path: Path, sweepdae: Any,
                                                                      pg_url: str, make_grid: Any) -> None:
    grid = make_grid(tmp_path, "cancelme", epochs=8)
    r = sweepdae(tmp_path, "run", str(grid), *JOB, store=pg_url)
    assert r.returncode == 0 and "submitted 1 jobs" in r.stderr, r.stderr
    _, cells, _ = _store_trials(pg_url)
    key = str(cells["key"].iloc[0])
    first = _job_of(pg_url, key)
    run_dir = tmp_path / "runs" / key
    _wait_for("training", lambda: any(e.get("step", 0) >= 30 for e in _train_events(run_dir)))
    # a rerun while the job lives submits nothing for its cell
    mid = sweepdae(tmp_path, "run", str(grid), *JOB, store=pg_url)
    assert "submitted 0 jobs" in mid.stderr and "1 jobs already hold 1 cells" in mid.stderr, mid.stderr
    subprocess.run(["scancel", first], check=True)
    _wait_for("the job to end", lambda: not _live(first), timeout=60)
    shown = sweepdae(tmp_path, "status", str(grid), "--json", store=pg_url)
    assert json.loads(shown.stdout)["cells"][0]["slurm_job"]["job_id"] == first
    r = sweepdae(tmp_path, "run", str(grid), *JOB, "--wait", store=pg_url, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    attempts, cells, jobs = _store_trials(pg_url)
    assert list(cells["status"]) == ["done"]
    second = _job_of(pg_url, key)
    assert second != first and len(jobs) == 2
    assert (attempts["state"] == "COMPLETE").sum() == 1  # finished exactly once, by the resubmitted job
    assert _sacct([first], "JobID,State")[first]["State"].startswith("CANCELLED")
    assert json.loads((run_dir / "result.json").read_text())["steps"] == 8 * 22


@pytest.mark.parametrize("how", ["scontrol requeue", "pre-timeout USR2"])
def test_requeue_resumes_the_cell_from_its_checkpoint(tmp_path: Path, sweepdae: Any, pg_url: str, make_grid: Any,
                                                      how: str) -> None:
    """`scontrol requeue` (SIGTERM to the job; SLURM requeues it) or submitit's pre-timeout signal (USR2; the job
    requeues itself through submitit): the training checkpoints at its next step, and the job's next run resumes
    that checkpoint (mid-epoch) instead of starting over."""
    grid = make_grid(tmp_path, "requeueme", epochs=8)
    r = sweepdae(tmp_path, "run", str(grid), *JOB, store=pg_url)
    assert r.returncode == 0, r.stderr
    _, cells, _ = _store_trials(pg_url)
    key = str(cells["key"].iloc[0])
    job = _job_of(pg_url, key)
    run_dir = tmp_path / "runs" / key
    _wait_for("training past 2 epochs", lambda: any(e.get("step", 0) >= 50 for e in _train_events(run_dir)))
    if how == "scontrol requeue":
        subprocess.run(["scontrol", "requeue", job], check=True)
    else:  # what SLURM sends 90 s before the time limit (submitit's --signal=USR2@90), as submitit's own tests do
        subprocess.run(["scancel", job, "--signal", "USR2"], check=True)
    stopped = _wait_for("the stop checkpoint", lambda: [e for e in _train_events(run_dir) if "stopped_at_step" in e],
                        timeout=30)[0]
    _wait_for("the job to be pending again", lambda: "PENDING" in subprocess.run(
        ["squeue", "-h", "-r", "-o", "%i %T"], capture_output=True, text=True).stdout, timeout=60)
    subprocess.run(["scontrol", "update", f"JobId={job}", "StartTime=now"], check=True)  # skip the requeue delay
    r = sweepdae(tmp_path, "run", str(grid), *JOB, "--wait", store=pg_url, timeout=300)
    assert r.returncode == 0 and "submitted 0 jobs" in r.stderr, r.stdout + r.stderr
    resumed = [e for e in _train_events(run_dir) if "resumed_from_epoch" in e]
    assert resumed and resumed[-1]["step"] == stopped["stopped_at_step"] > 50
    assert resumed[-1].get("batch") == stopped["batch"]
    attempts, cells, jobs = _store_trials(pg_url)
    assert list(cells["status"]) == ["done"] and len(jobs) == 1  # the same job, requeued
    assert (attempts["state"] == "COMPLETE").sum() == 1 and len(attempts) == 2
    result = json.loads((run_dir / "result.json").read_text())
    assert result["steps"] == 8 * 22  # every step once: resumed, not restarted
    shown = subprocess.run(["scontrol", "show", "job", job], capture_output=True, text=True, check=True).stdout
    assert "Restarts=1" in shown.split(), shown


def test_gpus_per_job_from_the_command_line_and_per_axis_value(tmp_path: Path, sweepdae: Any, pg_url: str,
                                                               make_grid: Any) -> None:
    """--gpus-per-cell 2 for every job, but the grid's [slurm.by.latent_dim."8"] asks 1 GPU and 7 minutes (the
    command line wins over the grid: so only --gpus-per-cell is left off in the second run)."""
    extra = '\n[slurm]\ntime = 6\n\n[slurm.by.latent_dim."8"]\ngpus = 1\ntime = 7\n'
    grid = make_grid(tmp_path, "gpus", dims=[4, 8], extra=extra)
    job = ["--executor", "slurm", "--cpus", "1", "--mem-gb", "2"]
    r = sweepdae(tmp_path, "run", str(grid), *job, "--gpus-per-cell", "2", "--only", "latent_dim=4", "--wait",
                 store=pg_url, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    r = sweepdae(tmp_path, "run", str(grid), *job, "--wait", store=pg_url, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    jobs = {j["labels"][0]: j["job_id"] for j in _store_trials(pg_url)[2]}
    acct = _sacct(list(jobs.values()))
    first, second = acct[jobs["latent_dim=4 seed=0"]], acct[jobs["latent_dim=8 seed=0"]]
    assert "gres/gpu=2" in first["AllocTRES"] and first["TimelimitRaw"] == "6", first
    assert "gres/gpu=1" in second["AllocTRES"] and second["TimelimitRaw"] == "7", second


def test_cancel_leaves_the_grids_cells_queued(tmp_path: Path, sweepdae: Any, pg_url: str, make_grid: Any) -> None:
    grid = make_grid(tmp_path, "cancelgrid", epochs=8)
    r = sweepdae(tmp_path, "run", str(grid), *JOB, store=pg_url)
    assert r.returncode == 0, r.stderr
    _, cells, _ = _store_trials(pg_url)
    key = str(cells["key"].iloc[0])
    _wait_for("training", lambda: _train_events(tmp_path / "runs" / key))
    r = sweepdae(tmp_path, "cancel", str(grid), "--store", pg_url)
    assert r.returncode == 0 and "cancelled 1 jobs" in r.stderr, r.stderr
    _, cells, _ = _store_trials(pg_url)
    assert list(cells["status"]) == ["queued"]

