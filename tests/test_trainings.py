"""Exactly one training per train_key: the store's training leases, and coordinators that share one sweep."""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from sweepdae.store import open_store

PROBE_GRID = """
[grid]
name = "probes"
seeds = [0]

[base]
data.name = "digits"
data.image_size = 8
data.train_size = 512
tokenizer.name = "patch_pca"
tokenizer.patch_size = 4
tokenizer.latent_dim = 4
tokenizer.pca_num_patches = 2000
model.size = "micro"
train.epochs = {epochs}
train.batch_size = 64
train.warmup_epochs = 0.5
probe.epochs = 3

[axes]
probe.t = {{ values = [10, 40], name = "t" }}
probe.noisy_input = {{ values = [false, true], labels = ["clean", "noisy"], name = "input" }}
"""


@pytest.fixture(params=["journal", "sqlite"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    return f"journal:{tmp_path / 's.journal'}" if request.param == "journal" else f"sqlite:///{tmp_path / 's.db'}"


def test_training_lease_contract(store_url: str) -> None:
    with open_store(store_url) as s:
        assert s.training_status(["tk"]) == {"tk": "new"}
        a = s.acquire_training("tk", owner="host:1", lease_s=60)
        assert a.state == "mine" and a.claim is not None and a.claim.key == "tk"
        b = s.acquire_training("tk", owner="host:2", lease_s=60)
        assert (b.state, b.claim, b.owner) == ("busy", None, "host:1")
        assert s.heartbeat_training(a.claim)
        # given back unfinished (its cell failed): the next owner takes it
        s.fail_training(a.claim, error="cell crashed")
        c = s.acquire_training("tk", owner="host:2", lease_s=60)
        assert c.state == "mine" and c.claim is not None and c.claim.attempt == 2
        assert s.complete_training(c.claim, info={"host": "h", "train_dir": "_train/tk"})
        d = s.acquire_training("tk", owner="host:3")
        assert d.state == "done" and d.info == {"host": "h", "train_dir": "_train/tk"}
        assert s.training_status(["tk", "other"]) == {"tk": "done", "other": "new"}


def test_a_dead_trainer_is_reaped(store_url: str) -> None:
    with open_store(store_url) as s:
        a = s.acquire_training("tk", owner="host:1", lease_s=5)
        assert a.state == "mine"
        assert s.reap_stale_trainings(now=time.time() + 1) == []  # lease still running
        assert s.reap_stale_trainings(now=time.time() + 60) == ["tk"]
        b = s.acquire_training("tk", owner="host:2")
        assert b.state == "mine" and b.claim is not None and not s.heartbeat_training(a.claim)


def test_release_and_skip(store_url: str) -> None:
    with open_store(store_url) as s:
        s.enqueue([{"key": "k1", "label": "a", "recipe": {}, "grid": "g", "train_key": "t1"},
                   {"key": "k2", "label": "b", "recipe": {}, "grid": "g", "train_key": "t2"}])
        c = s.claim("host:1", skip_train_keys={"t1"})
        assert c is not None and (c.key, c.train_key) == ("k2", "t2")
        assert s.release(c, reason="its training lives elsewhere")
        assert s.status() == {"k1": "queued", "k2": "queued"}
        again = s.claim("host:1", skip_train_keys={"t1"})
        assert again is not None and again.key == "k2" and again.attempt == 1  # a release uses up no attempt
        assert s.claim("host:1", skip_train_keys={"t1", "t2"}) is None


def _race(url: str, owner: str, out: Any) -> None:
    with open_store(url) as s:
        out.put((owner, s.acquire_training("tk", owner=owner, lease_s=60).state))


def test_racing_acquirers_get_one_lease(tmp_path: Path) -> None:
    url = f"journal:{tmp_path / 'race.journal'}"
    open_store(url).close()
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    procs = [ctx.Process(target=_race, args=(url, f"h:{i}", out)) for i in range(6)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    states = sorted(out.get(timeout=5)[1] for _ in procs)
    assert states == ["busy"] * 5 + ["mine"], states


# ------------------------------------------------------------------------------------------ through the CLI
def _grid(tmp: Path, epochs: int = 1) -> Path:
    """4 cells (2 probe t x clean/noisy input) of one training on 512 digits images (8 steps per epoch)."""
    p = tmp / "probes.toml"
    p.write_text(PROBE_GRID.format(epochs=epochs))
    return p


def _status(tmp: Path, sweepdae: Any) -> list[dict[str, Any]]:
    p = sweepdae(tmp, "status", str(tmp / "probes.toml"), "--json")
    assert p.returncode == 0, p.stderr
    return list(json.loads(p.stdout)["cells"])


@pytest.mark.slow  # 25-45 s of CI's default suite: whole sweeps, cell after cell
def test_one_training_for_a_probe_grid_and_cells_wait_for_it(tmp_path: Path, sweepdae: Any) -> None:
    grid = _grid(tmp_path)
    plan = subprocess.run([sys.executable, "-m", "sweepdae", "plan", str(grid), "--json"], cwd=tmp_path,
                          capture_output=True, text=True)
    doc = json.loads(plan.stdout)
    assert len({c["train_key"] for c in doc["cells"]}) == 1 and doc["summary"].startswith("4 cells, 1 trainings")
    p = sweepdae(tmp_path, "run", str(grid), "--cpu-cells", "2")
    assert p.returncode == 0, p.stderr
    assert "wait " in p.stderr and "is being made (here)" in p.stderr  # the second slot's cell waited, visibly
    rows = _status(tmp_path, sweepdae)
    assert len(rows) == 4 and {r["status"] for r in rows} == {"done"}
    assert len({r["train_key"] for r in rows}) == 1
    assert sorted(r["reused_training"] for r in rows) == [False] + [True] * 3
    trained = [e for d in (tmp_path / "runs").glob("[0-9a-f]*")
               for e in map(json.loads, (d / "events.jsonl").read_text().splitlines()) if e["phase"] == "trained"]
    assert len(trained) == 1
    again = subprocess.run([sys.executable, "-m", "sweepdae", "plan", str(grid), "--store",
                            f"journal:{tmp_path / 'store.journal'}"], cwd=tmp_path, capture_output=True, text=True)
    assert "4 cells, 1 trainings (1 already trained)" in again.stdout

    # removing two cells' results keeps their training: the rerun evaluates them without training
    tk = rows[0]["train_key"]
    assert sweepdae(tmp_path, "forget", str(grid), "--only", "t=40", "--store",
                    f"journal:{tmp_path / 'store.journal'}", "--runs-dir", str(tmp_path / "runs")).returncode == 0
    rows = _status(tmp_path, sweepdae)
    assert sorted(r["status"] for r in rows) == ["done"] * 2 + ["new"] * 2
    stray = tmp_path / "runs" / "_train" / ("0" * 64)  # a training no cell uses (e.g. of an edited grid)
    stray.mkdir()
    gc = sweepdae(tmp_path, "gc", "--store", f"journal:{tmp_path / 'store.journal'}", "--runs-dir",
                  str(tmp_path / "runs"))
    assert gc.returncode == 0 and not stray.exists() and (tmp_path / "runs" / "_train" / tk).exists(), gc.stderr
    p = sweepdae(tmp_path, "run", str(grid), "--cpu-cells", "2")
    assert p.returncode == 0, p.stderr
    rows = _status(tmp_path, sweepdae)
    assert {r["status"] for r in rows} == {"done"} and all(r["reused_training"] for r in rows if "t=40" in r["label"])
    trained = [e for d in (tmp_path / "runs").glob("[0-9a-f]*")
               for e in map(json.loads, (d / "events.jsonl").read_text().splitlines()) if e["phase"] == "trained"]
    assert len(trained) == 1


@pytest.mark.slow  # 25-45 s of CI's default suite: whole sweeps, cell after cell
def test_two_machines_train_once(tmp_path: Path) -> None:
    """Two coordinators on one store with separate runs folders (two machines, nothing shared but the store):
    one trains; the other waits, then leaves the cells to the machine that holds the training."""
    grid = _grid(tmp_path, epochs=3)
    store = f"journal:{tmp_path / 'store.journal'}"

    def start(name: str) -> subprocess.Popen[str]:
        return subprocess.Popen([sys.executable, "-m", "sweepdae", "run", str(grid), "--store", store, "--plain",
                                 "--runs-dir", str(tmp_path / name)], cwd=tmp_path, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})

    a = start("runs_a")
    deadline = time.time() + 120
    while time.time() < deadline:  # B starts once A holds the training lease
        time.sleep(0.5)
        if (tmp_path / "store.journal").exists():
            with open_store(store, create=False) as s:
                if "running" in s.training_status(None).values():
                    break
    b = start("runs_b")
    out_a, err_a = a.communicate(timeout=600)
    out_b, err_b = b.communicate(timeout=600)
    assert a.returncode == 0 and b.returncode == 0, (err_a, err_b)
    assert not (tmp_path / "runs_b" / "_train").exists(), err_b  # B never trained
    assert len(list((tmp_path / "runs_a" / "_train").iterdir())) == 1
    with open_store(store, create=False) as s:
        assert set(s.status().values()) == {"done"}
        trainings = s.training_status(None)
    assert list(trainings.values()) == ["done"]
    assert "lives on" in err_b or "is being made" in err_b, err_b


@pytest.mark.slow  # 25-45 s of CI's default suite: whole sweeps, cell after cell
def test_a_lost_training_is_parked_then_forgotten_and_trained_again(tmp_path: Path, sweepdae: Any) -> None:
    """A training finished in runs_a, whose folder this machine (runs_b) does not have: the run leaves its cells
    alone and says where it lives; `forget --missing-trainings` drops it, and the next run trains it again."""
    grid = _grid(tmp_path)
    store = ["--store", f"journal:{tmp_path / 'store.journal'}"]
    assert sweepdae(tmp_path, "run", str(grid), "--only", "t=10 clean", "--runs-dir",
                    str(tmp_path / "runs_a"), *store).returncode == 0
    b = ["--runs-dir", str(tmp_path / "runs_b")]
    p = sweepdae(tmp_path, "run", str(grid), "--only", "t=40 clean", *b, *store)
    assert p.returncode == 1 and "lives on" in p.stderr and str(tmp_path / "runs_a") in p.stderr, p.stderr
    keep = sweepdae(tmp_path, "forget", str(grid), "--missing-trainings", "--runs-dir", str(tmp_path / "runs_a"),
                    *store)
    assert keep.returncode == 0 and "forgot 0 of 1 trainings" in keep.stderr, keep.stderr  # runs_a has it
    f = sweepdae(tmp_path, "forget", str(grid), "--missing-trainings", *b, *store)
    assert f.returncode == 0 and "forgot 1 of 1 trainings" in f.stderr, f.stderr
    p = sweepdae(tmp_path, "run", str(grid), "--only", "t=40 clean", *b, *store)
    assert p.returncode == 0, p.stderr
    assert len(list((tmp_path / "runs_b" / "_train").iterdir())) == 1  # trained again here
    rows = {r["label"]: r for r in _status(tmp_path, sweepdae)}
    assert rows["t=10 clean seed=0"]["status"] == "done"  # the first cell kept its result
    assert rows["t=40 clean seed=0"]["status"] == "done"
