"""Sweep execution end to end on the CPU: real CLI processes, real journal/PostgreSQL stores, real cells."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

# The sweeps here test the runner, not what cells learn: 512 training images (8 steps per epoch at batch 64).
TRAIN_SIZE = 512
SPE = TRAIN_SIZE // 64


def test_run_records_every_cell_then_rerun_is_cached(tmp_path: Path, write_grid: Any, sweepdae: Any, cells: Any,
                                                     attempts: Any) -> None:
    grid = write_grid(tmp_path, dims=[2, 4, 8], train_size=TRAIN_SIZE)
    p = sweepdae(tmp_path, "run", str(grid), "--cpu-cells", "2")  # independent cells: two at a time
    assert p.returncode == 0, p.stderr
    df = cells(tmp_path)
    assert sorted(df["status"]) == ["done"] * 3
    assert df["metric.probe_top1"].between(0, 100).all() and df["metric.knn_top1"].notna().all()
    for run_dir in (tmp_path / "runs").glob("[0-9a-f]*"):
        result = json.loads((run_dir / "result.json").read_text())
        assert result["steps"] == SPE and (run_dir / "denoising.png").exists()
    sizes = {d: (d / "events.jsonl").stat().st_size for d in (tmp_path / "runs").glob("[0-9a-f]*")}
    again = sweepdae(tmp_path, "run", str(grid))
    assert again.returncode == 0 and "3 of 3 cells already done" in again.stderr
    assert sizes == {d: (d / "events.jsonl").stat().st_size for d in sizes}  # nothing ran again
    assert len(attempts(tmp_path)) == 3


def test_accelerate_launch_path(tmp_path: Path, write_grid: Any, sweepdae: Any) -> None:
    grid = write_grid(tmp_path, dims=[2], train_size=TRAIN_SIZE)
    p = sweepdae(tmp_path, "run", str(grid), "--launcher", "accelerate")
    assert p.returncode == 0, p.stderr
    (run_dir,) = (tmp_path / "runs").glob("[0-9a-f]*")
    log = (run_dir / "cell.log").read_text()
    assert "accelerate.commands.launch" in log and "--main_process_port" in log and "--cpu" in log
    assert json.loads((run_dir / "result.json").read_text())["metrics"]["probe_top1"] >= 0


def test_failing_cell_is_isolated_and_retried(tmp_path: Path, write_grid: Any, sweepdae: Any, cells: Any,
                                              attempts: Any) -> None:
    # the failing cell is the first one claimed (FIFO), so the sweep has to go on past it to the other
    grid = write_grid(tmp_path, dims=[2, 4], train_size=TRAIN_SIZE)
    env = {"SWEEPDAE_FAULT": "crash@phase=probe for latent_dim=2"}
    p = sweepdae(tmp_path, "run", str(grid), "--max-retries", "0", env=env)
    assert p.returncode == 1
    df = cells(tmp_path).set_index("label")
    assert df.loc["latent_dim=2 seed=0", "status"] == "failed"
    assert df.loc["latent_dim=2 seed=0", "failure_class"] == "crash"
    assert "injected crash" in df.loc["latent_dim=2 seed=0", "traceback_tail"]
    assert (df.drop("latent_dim=2 seed=0")["status"] == "done").all()
    # a new run retries the failed cell (once-only fault now passes) and leaves the done one alone
    env["SWEEPDAE_FAULT"] = "crash@phase=probe:once"
    p = sweepdae(tmp_path, "run", str(grid), "--max-retries", "1", env=env)
    assert p.returncode == 0, p.stderr
    a = attempts(tmp_path)
    assert len(a) == 3 and sorted(cells(tmp_path)["status"]) == ["done"] * 2


def test_max_retries_and_fail_fast(tmp_path: Path, write_grid: Any, sweepdae: Any, cells: Any) -> None:
    # a cell that crashes once is retried (within --max-retries 2) and then done: 2 attempts, not 3
    grid = write_grid(tmp_path, dims=[2], train_size=TRAIN_SIZE)
    env = {"SWEEPDAE_FAULT": "crash@phase=train:once for latent_dim=2"}
    p = sweepdae(tmp_path, "run", str(grid), "--max-retries", "2", env=env)
    assert p.returncode == 0, p.stderr
    df = cells(tmp_path).set_index("label")
    assert df.loc["latent_dim=2 seed=0", "attempts"] == 2 and (df["status"] == "done").all()

    # --fail-fast: the first cell fails for good, nothing else is started (cheap: it fails before training)
    other = tmp_path / "ff"
    other.mkdir()
    grid = write_grid(other, train_size=TRAIN_SIZE)
    env = {"SWEEPDAE_FAULT": "crash@phase=train for latent_dim=2"}
    p = sweepdae(other, "run", str(grid), "--fail-fast", "--max-retries", "0", env=env)
    assert p.returncode == 1
    st = cells(other).set_index("label")["status"]
    assert st["latent_dim=2 seed=0"] == "failed" and (st.drop("latent_dim=2 seed=0") == "queued").all()


def test_oom_retries_with_half_micro_batch_and_nonfinite_is_final(tmp_path: Path, write_grid: Any, sweepdae: Any,
                                                                  cells: Any, attempts: Any) -> None:
    grid = write_grid(tmp_path, dims=[2, 4], train_size=TRAIN_SIZE)  # step 3 of 8
    env = {"SWEEPDAE_FAULT": "oom@step=3:once for latent_dim=2"}
    p = sweepdae(tmp_path, "run", str(grid), "--max-retries", "1", "--only", "latent_dim=2", env=env)
    assert p.returncode == 0, p.stderr
    a = attempts(tmp_path).sort_values("trial")
    assert list(a["failure_class"].fillna("")) == ["oom", ""]
    assert a.iloc[1]["recipe_overrides"] == {"train": {"micro_batch_size": 32}}
    (run_dir,) = [d for d in (tmp_path / "runs").glob("[0-9a-f]*")]
    spec = json.loads((run_dir / "recipe.json").read_text())
    assert spec["recipe"]["train"]["micro_batch_size"] == 32 and spec["recipe"]["train"]["batch_size"] == 64

    # a recipe that really diverges (base_lr 100, the largest the recipe allows: AdamW steps of ~25 blow the
    # activations up to inf within 8 steps): non-finite, not retried
    diverging = write_grid(tmp_path, dims=[4], name="diverge", train_size=TRAIN_SIZE)
    diverging.write_text(diverging.read_text().replace("train.batch_size = 64", "train.batch_size = 64\n"
                                                       "train.base_lr = 100").replace("train.warmup_epochs = 0.5",
                                                                                     "train.warmup_epochs = 0"))
    p = sweepdae(tmp_path, "run", str(diverging), "--max-retries", "3")
    assert p.returncode == 1
    (row,) = [r for _, r in cells(tmp_path).iterrows() if r["grid"] == "diverge"]
    assert row["failure_class"] == "nonfinite" and row["attempts"] == 1, row["error"]


def _wait_for(cond: Any, timeout: float, what: str) -> None:
    t0 = time.time()
    while not cond():
        if time.time() - t0 > timeout:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.2)


@pytest.mark.slow
def test_sigkill_mid_sweep_then_rerun_resumes_from_checkpoint(tmp_path: Path, write_grid: Any, sweepdae: Any,
                                                              cells: Any, attempts: Any, events: Any) -> None:
    grid = write_grid(tmp_path, dims=[2, 4], epochs=3)
    spe = 1438 // 64
    # the first cell sleeps in the middle of its third epoch (after the epoch-2 checkpoint), where it is killed
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "SWEEPDAE_FAULT": f"sleep@step={2 * spe + 5}:once for latent_dim=2",
           "SWEEPDAE_FAULT_SLEEP": "60"}
    cmd = [sys.executable, "-m", "sweepdae", "run", str(grid), "--store", f"journal:{tmp_path / 'store.journal'}",
           "--plain", "--runs-dir", str(tmp_path / "runs")]
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ckpts = lambda: list((tmp_path / "runs" / "_train").glob("*/checkpoint.pt"))  # noqa: E731
    cell_dirs = lambda: list((tmp_path / "runs").glob("[0-9a-f]*"))  # noqa: E731
    _wait_for(lambda: bool(ckpts()) and any(e.get("epoch") == 3 and "loss" in e for e in events(cell_dirs()[0])),
              180, "the middle of epoch 3")
    time.sleep(1.0)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    (run_dir,) = cell_dirs()
    time.sleep(2.5)  # the orphaned cell notices its coordinator is gone and exits
    assert not (run_dir / "result.json").exists()
    st = cells(tmp_path).set_index("label")["status"]
    assert st["latent_dim=2 seed=0"] == "running"  # stuck until a coordinator reaps it

    p = sweepdae(tmp_path, "run", str(grid), env={k: v for k, v in env.items() if not k.startswith("SWEEPDAE_F")})
    assert p.returncode == 0, p.stderr
    df = cells(tmp_path).set_index("label")
    assert (df["status"] == "done").all()
    result = json.loads((run_dir / "result.json").read_text())
    assert result["resumed_from_epoch"] == 2 and result["steps"] == 3 * spe
    ev = events(run_dir)
    (mark,) = [i for i, e in enumerate(ev) if e.get("resumed_from_epoch") == 2]
    before = [e["step"] for e in ev[:mark] if "loss" in e]
    after = [e["step"] for e in ev[mark:] if "loss" in e]
    # attempt 1 got into epoch 3 (step 2 x spe + 5) before the kill; attempt 2 restarted at the epoch-2
    # checkpoint (step 2 x spe) and trained epoch 3 only: the total is the uninterrupted run's 3 x spe
    assert max(before) == 2 * spe + 5 and min(after) > 2 * spe and max(after) == 3 * spe
    a = attempts(tmp_path)
    assert (a.groupby("key")["state"].apply(lambda s: (s == "COMPLETE").sum()) == 1).all()


# Slow tier: the default suite covers this faster in test_store.py::test_concurrent_claimers_complete_each_key_once
# (processes racing the same enqueue on one journal: each key completed once, the copies failed as duplicates) and
# end to end in test_run_and_worker_on_postgres (two processes on one store, each cell run once) and
# test_trainings.py::test_two_machines_train_once (two `sweepdae run` of one grid on one journal).
@pytest.mark.slow
def test_two_coordinators_on_one_journal_run_each_cell_once(tmp_path: Path, write_grid: Any, attempts: Any,
                                                            events: Any) -> None:
    grid = write_grid(tmp_path, dims=[1, 2, 3, 4], train_size=TRAIN_SIZE)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "sweepdae", "run", str(grid), "--store", f"journal:{tmp_path / 'store.journal'}",
           "--plain", "--runs-dir", str(tmp_path / "runs")]
    procs = [subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    starts = sum(o[1].count("] start") for o in outs)
    assert starts == 4, outs  # each cell started by exactly one of the two coordinators
    for run_dir in (tmp_path / "runs").glob("[0-9a-f]*"):
        assert sum(1 for e in events(run_dir) if e.get("phase") == "data") == 1
    a = attempts(tmp_path)
    done = a[a["state"] == "COMPLETE"]
    assert len(done) == 4 and done["key"].nunique() == 4
    # both coordinators enqueued the same cells at once: the extra copies were failed as duplicates, never run
    assert a[a["state"] != "COMPLETE"]["duplicate"].all()


@pytest.mark.slow  # 25-45 s of CI's default suite: whole sweeps, cell after cell
@pytest.mark.postgres
def test_run_and_worker_on_postgres(tmp_path: Path, write_grid: Any, cells: Any, pg_url: str) -> None:
    url = pg_url
    grid = write_grid(tmp_path, dims=[1, 2, 3, 4], train_size=TRAIN_SIZE)
    machine_a, machine_b = tmp_path / "a", tmp_path / "b"
    machine_a.mkdir()
    machine_b.mkdir()
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    run = subprocess.Popen([sys.executable, "-m", "sweepdae", "run", str(grid), "--store", url, "--plain",
                            "--runs-dir", str(machine_a / "runs")], cwd=machine_a, env=env,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _wait_for(lambda: (machine_a / "runs").exists(), 120, "the first cell to start")
    worker = subprocess.Popen([sys.executable, "-m", "sweepdae", "worker", "--store", url, "--plain",
                               "--runs-dir", str(machine_b / "runs")], cwd=machine_b, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    outs = [run.communicate(timeout=300), worker.communicate(timeout=300)]
    assert run.returncode == 0 and worker.returncode == 0, outs
    ran = [d for m in (machine_a, machine_b) for d in (m / "runs").glob("[0-9a-f]*")
           if (d / "result.json").exists()]
    assert len(ran) == 4 and len({d.name for d in ran}) == 4  # each cell ran on exactly one machine
    assert sorted(cells(tmp_path, url)["status"]) == ["done"] * 4


@pytest.mark.slow
def test_ctrl_c_stops_claiming_and_leaves_cells_resumable(tmp_path: Path, write_grid: Any, sweepdae: Any, cells: Any,
                                                          events: Any) -> None:
    grid = write_grid(tmp_path, dims=[2, 4], epochs=3)
    spe = 1438 // 64
    env = {**os.environ, "OMP_NUM_THREADS": "1", "SWEEPDAE_FAULT": f"sleep@step={spe + 3}:once for latent_dim=2",
           "SWEEPDAE_FAULT_SLEEP": "60"}
    cmd = [sys.executable, "-m", "sweepdae", "run", str(grid), "--store", f"journal:{tmp_path / 'store.journal'}",
           "--plain", "--runs-dir", str(tmp_path / "runs")]
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    ckpts = lambda: list((tmp_path / "runs" / "_train").glob("*/checkpoint.pt"))  # noqa: E731
    cell_dirs = lambda: list((tmp_path / "runs").glob("[0-9a-f]*"))  # noqa: E731
    _wait_for(lambda: bool(ckpts()) and any(e.get("epoch") == 2 and "loss" in e for e in events(cell_dirs()[0])),
              180, "the middle of epoch 2")
    t0 = time.time()
    proc.send_signal(signal.SIGINT)  # once: no new cells, the running one stops, the sweep exits
    _, err = proc.communicate(timeout=60)
    assert time.time() - t0 < 30 and proc.returncode == 1, err
    assert "Ctrl-C" in err and "interrupted (resumable)" in err
    st = cells(tmp_path).set_index("label")["status"]
    assert st["latent_dim=2 seed=0"] == "queued" and st["latent_dim=4 seed=0"] == "queued"  # nothing lost
    p = sweepdae(tmp_path, "run", str(grid), env={"SWEEPDAE_FAULT": ""})
    assert p.returncode == 0, p.stderr
    run_dir = next(d for d in cell_dirs() if (d / "result.json").exists()
                   and json.loads((d / "result.json").read_text())["resumed_from_epoch"])
    result = json.loads((run_dir / "result.json").read_text())
    assert result["resumed_from_epoch"] == 1 and result["steps"] == 3 * spe
