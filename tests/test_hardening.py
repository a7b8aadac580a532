"""Hardening: bad input never crashes or corrupts; faults never lose or duplicate a result.

Fast tests here run in the default suite; the fault loops (random SIGKILLs, PostgreSQL restarts, a real full disk)
are marked slow and run by `.ci/run` in their own step. Each prints one `FAULT-MATRIX` line with its counts (run
pytest with -s to see them).
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import torch
from _console import run_main as cli
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from optuna.trial import TrialState

from sweepdae.store import open_store

ROOT = Path(__file__).resolve().parent.parent
SEEDS = {p.name: p.read_text() for p in sorted((ROOT / "grids").glob("*.toml"))}
SEEDS["mini"] = (ROOT / "tests" / "grids" / "mini.toml").read_text() + """
[profiles.smoke]
train.epochs = 1
axes.d = [2, 4, 6]
"""


def fault_matrix(name: str, **counts: Any) -> None:
    print(f"\nFAULT-MATRIX {name}: " + ", ".join(f"{k}={v}" for k, v in counts.items()))


# ------------------------------------------------------------------------------------------ fuzzed grid files
KNOB_NAMES = ["data.name", "data.image_size", "tokenizer.name", "tokenizer.latent_dim", "tokenizer.patch_size",
              "model.size", "noise.schedule", "train.epochs", "train.batch_size", "probe.epochs", "fid.enabled",
              "objective.target", "seeds", "name", "labels", "values", "default_profile", "axes.d"]
ident = st.text(alphabet=st.characters(codec="utf-8", exclude_characters='"\\\n\r'), min_size=0, max_size=12)


def toml_str(s: str) -> str:
    return json.dumps(s, ensure_ascii=False)  # a TOML basic string is a JSON string for these characters


scalar = st.one_of(
    st.integers(min_value=-(2**70), max_value=2**70).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(lambda f: {"nan": "nan", "inf": "inf", "-inf": "-inf"}
                                                        .get(repr(f), repr(f))),
    st.booleans().map(lambda b: "true" if b else "false"),
    ident.map(toml_str),
    st.sampled_from(['"micro"', '"patch_pca"', '"digits"', '"pixel"', '"eps"', "1979-05-27", '""', "0", "-1"]),
)
toml_value = st.recursive(
    scalar,
    lambda inner: st.one_of(
        st.lists(inner, max_size=6).map(lambda xs: "[" + ", ".join(xs) + "]"),
        st.dictionaries(st.sampled_from(["values", "labels", "name", "x", "é"]), inner, max_size=3).map(
            lambda d: "{ " + ", ".join(f"{toml_str(k)} = {v}" for k, v in d.items()) + " }"),
    ),
    max_leaves=12,
)
huge_list = st.integers(min_value=1, max_value=30_000).map(lambda n: "[" + ", ".join(map(str, range(n))) + "]")
key = st.one_of(st.sampled_from(KNOB_NAMES), ident.map(toml_str),
                st.lists(st.sampled_from(["a", "b", "model", "axes", "é"]), min_size=2, max_size=40).map(".".join))
header = st.sampled_from(["[grid]", "[base]", "[axes]", "[[zip]]", "[[exclude]]", "[[include]]", "[profiles.smoke]",
                          "[profiles.é]", "[report]", "[axes.d]", "[[trajectory]]", "[nope]", "[grid.sub]", "[[grid]]"])


@st.composite
def mutated_grid(draw: st.DrawFn) -> bytes:
    """A shipped grid (or a small one) with 1-6 random edits: values of wrong types, unknown/duplicate keys,
    huge or empty lists, unicode, deep nesting, stray headers, deleted lines, truncation, raw bytes."""
    lines = SEEDS[draw(st.sampled_from(sorted(SEEDS)))].splitlines()
    for _ in range(draw(st.integers(min_value=1, max_value=6))):
        op = draw(st.sampled_from(["value", "insert", "delete", "duplicate", "header", "empty", "huge", "char"]))
        i = draw(st.integers(min_value=0, max_value=max(0, len(lines) - 1)))
        assign = [j for j, line in enumerate(lines) if "=" in line and not line.lstrip().startswith("#")]
        if op == "value" and assign:
            j = draw(st.sampled_from(assign))
            lines[j] = lines[j].split("=", 1)[0] + "= " + draw(toml_value)
        elif op == "insert":
            lines.insert(i, f"{draw(key)} = {draw(toml_value)}")
        elif op == "delete" and lines:
            del lines[i]
        elif op == "duplicate" and lines:
            lines.insert(i, lines[i])
        elif op == "header":
            lines.insert(i, draw(header))
        elif op == "empty" and assign:
            j = draw(st.sampled_from(assign))
            lines[j] = lines[j].split("=", 1)[0] + "= []"
        elif op == "huge" and assign:
            j = draw(st.sampled_from(assign))
            lines[j] = lines[j].split("=", 1)[0] + "= " + draw(huge_list)
        elif op == "char" and lines:
            pos = draw(st.integers(min_value=0, max_value=len(lines[i])))
            lines[i] = lines[i][:pos] + draw(st.characters(codec="utf-8")) + lines[i][pos:]
    data = "\n".join(lines).encode()
    if draw(st.booleans()) and draw(st.integers(0, 9)) == 0:
        data = data[: draw(st.integers(min_value=0, max_value=len(data)))]
    if draw(st.integers(0, 19)) == 0:
        data = data + draw(st.binary(min_size=1, max_size=8))
    return data




@pytest.fixture(scope="module")
def full_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A journal store that already holds a done cell and a queued one: fuzzing must leave it byte for byte."""
    path = tmp_path_factory.mktemp("store") / "store.journal"
    with open_store(f"journal:{path}") as s:
        s.enqueue([{"key": "k0", "label": "a", "recipe": {}}, {"key": "k1", "label": "b", "recipe": {}}])
        c = s.claim("tester")
        assert c is not None
        s.complete(c, metrics={"probe_top1": 0.5}, info={})
    return path


@pytest.mark.parametrize("cmd", [["plan"], ["run", "--dry-run"]])
@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                   HealthCheck.too_slow, HealthCheck.data_too_large])
@given(text=mutated_grid())
def test_fuzzed_grids_give_one_line_errors_and_leave_the_store_alone(tmp_path: Path, full_store: Path,
                                                                     cmd: list[str], text: bytes) -> None:
    before = hashlib.sha256(full_store.read_bytes()).hexdigest()
    path = tmp_path / "fuzz.toml"
    path.write_bytes(text)
    code, out, err = cli(*cmd, str(path), "--store", f"journal:{full_store}")
    assert "Traceback" not in err + out
    assert code in (0, 2), (code, err)
    if code == 2:
        lines = err.strip().splitlines()
        assert len(lines) == 1, err
        assert lines[0].startswith("error: ") and str(path) in lines[0], err
        assert all(ch.isprintable() for ch in err.rstrip("\n")), err  # echoed input is escaped, prefix included
    assert hashlib.sha256(full_store.read_bytes()).hexdigest() == before
    assert not (tmp_path / "sweepdae.journal").exists()


# ------------------------------------------------------------------------------------------------- store URLs
BAD_URLS = {
    "unknown scheme": ("mongodb://localhost/x", "expected"),
    "empty journal path": ("journal:", "journal"),
    "postgres without database": ("postgresql://u:secret@127.0.0.1:1", "secret"),
    "unreachable postgres": ("postgresql://u:secret@127.0.0.1:1/db", "cannot open store"),
    "sqlite in a missing folder": ("sqlite:////nonexistent/dir/x.db", "x.db"),
    "journal is a folder": ("journal:/", "/"),
}


@pytest.mark.parametrize("name", sorted(BAD_URLS))
@pytest.mark.parametrize("cmd", [["status"], ["report"], ["worker", "--cpu-cells", "1"], ["run"]])
def test_bad_store_urls_via_cli(tmp_path: Path, name: str, cmd: list[str], write_grid: Any) -> None:
    url, expected = BAD_URLS[name]
    grid = write_grid(tmp_path)
    args = [*cmd, str(grid)] if cmd[0] == "run" else list(cmd)
    code, out, err = cli(*args, "--store", url)
    assert code != 0 and "Traceback" not in err + out
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    if expected == "secret":
        assert "secret" not in err and "***" in err, err  # the password is masked
    else:
        assert expected in lines[0], err
    assert not (tmp_path / "runs").exists()


# ----------------------------------------------------------------------------------------- missing/corrupt data
@pytest.fixture
def cell_failure(sweepdae: Any, attempts: Any) -> Any:
    """`cell_failure(tmp_path, grid_text)`: run the grid with up to 3 retries; (the process, its attempts)."""
    def run(tmp_path: Path, grid_text: str, env: dict[str, str] | None = None) -> tuple[Any, Any]:
        grid = tmp_path / "g.toml"
        grid.write_text(grid_text)
        p = sweepdae(tmp_path, "run", str(grid), "--max-retries", "3", env=env)
        assert "Traceback" not in p.stderr.split("\n")[-3:], p.stderr
        return p, attempts(tmp_path)

    return run


FOLDER_GRID = """
[grid]
name = "folder"
seeds = [0]
[base]
data.name = "imagefolder"
data.root = "{root}"
data.image_size = 8
tokenizer.name = "pixel"
tokenizer.patch_size = 4
model.size = "micro"
train.epochs = 1
train.batch_size = 8
probe.epochs = 2
[axes]
noise.schedule = ["ddpm_linear"]
"""


def test_missing_dataset_path_fails_the_cell_once_not_retried(tmp_path: Path, cell_failure: Any) -> None:
    p, att = cell_failure(tmp_path, FOLDER_GRID.format(root=tmp_path / "no_such_folder"))
    assert p.returncode == 1
    assert len(att) == 1 and att.iloc[0]["failure_class"] == "missing_input"  # not retried: retrying cannot help
    assert "no_such_folder" in att.iloc[0]["error"]


def test_corrupt_image_in_a_folder_is_named(tmp_path: Path, cell_failure: Any) -> None:
    from PIL import Image

    root = tmp_path / "imgs"
    for split in ("train", "val"):
        for cls in ("a", "b"):
            (root / split / cls).mkdir(parents=True)
            for i in range(12):
                Image.new("RGB", (10, 10), (i * 20, 0, 0)).save(root / split / cls / f"{i}.png")
    (root / "train" / "b" / "5.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10)
    p, att = cell_failure(tmp_path, FOLDER_GRID.format(root=root))
    assert p.returncode == 1
    assert "5.png" in att.iloc[-1]["error"], att.iloc[-1]["error"]
    assert set(att["failure_class"]) == {"missing_input"}


def test_corrupt_idx_file_is_a_dataset_error(tmp_path: Path, cell_failure: Any) -> None:
    src = Path("/usr/share/datasets/fashion-mnist")
    if not src.exists():
        pytest.skip("dataset-fashion-mnist is not installed (apt install dataset-fashion-mnist)")
    root = tmp_path / "fm"
    root.mkdir()
    for f in src.iterdir():
        shutil.copy(f, root / f.name)
    victim = next(root.glob("train-images*"))
    victim.write_bytes(victim.read_bytes()[: 3000])  # truncated download
    grid = FOLDER_GRID.format(root=root).replace('"imagefolder"', '"fashion-mnist"')
    p, att = cell_failure(tmp_path, grid)
    assert p.returncode == 1 and len(att) == 1
    assert att.iloc[0]["failure_class"] == "missing_input" and victim.name in att.iloc[0]["error"]


# -------------------------------------------------------------------------------------------------- disk full
@pytest.mark.parametrize("fault", ["diskfull@checkpoint=2:once",
                                   pytest.param("diskfull@write=result.json:once", marks=pytest.mark.slow),
                                   pytest.param("diskfull@write=features.pt:once", marks=pytest.mark.slow)])
def test_disk_full_injected_fails_the_attempt_and_the_retry_resumes(tmp_path: Path, fault: str, write_grid: Any,
                                                                     sweepdae: Any, attempts: Any, cells: Any,
                                                                     events: Any) -> None:
    grid = write_grid(tmp_path, dims=[2], epochs=3, train_size=512)  # 8 steps per epoch
    p = sweepdae(tmp_path, "run", str(grid), env={"SWEEPDAE_FAULT": fault})
    assert p.returncode == 0, p.stderr
    att = attempts(tmp_path)
    assert list(att["state"]) == ["FAIL", "COMPLETE"]
    assert att.iloc[0]["failure_class"] == "io" and "No space left" in att.iloc[0]["error"]
    run_dir = next((tmp_path / "runs").glob("[0-9a-f]*"))
    res = json.loads((run_dir / "result.json").read_text())
    evs = events(run_dir)
    resumed = [e["resumed_from_epoch"] for e in evs if "resumed_from_epoch" in e]
    reread = [e["reused_training"] for e in evs if e.get("phase") == "train" and "reused_training" in e]
    if "checkpoint" in fault:
        assert resumed == [1] and reread == []  # the last good checkpoint (epoch 1) was kept whole
    else:  # the training had finished: the retry reads it back instead of training again
        assert resumed == [] and reread == [res["train_key"]]
    assert not list((tmp_path / "runs").rglob(".*.tmp"))  # no half-written temp files left, cell or training
    assert res["steps"] == 3 * (512 // 64)  # all 3 epochs of 8 steps (512 digits images, batch 64), once each
    assert cells(tmp_path).iloc[0]["status"] == "done"


@pytest.mark.slow
def test_a_real_full_disk_keeps_the_last_checkpoint_and_the_store(tmp_path: Path, write_grid: Any, sweepdae: Any,
                                                                   attempts: Any, events: Any) -> None:
    """The cell folders on a tiny tmpfs: the epoch-2 checkpoint does not fit beside the epoch-1 one."""
    if os.geteuid() != 0 or not shutil.which("mount"):
        pytest.skip("needs root to mount a tmpfs")
    # size the disk from a checkpoint of the same recipe written on the normal disk
    probe_dir = tmp_path / "measure"
    probe_dir.mkdir()
    grid = write_grid(probe_dir, dims=[2], epochs=1)
    assert sweepdae(probe_dir, "run", str(grid)).returncode == 0
    ckpt = next((probe_dir / "runs" / "_train").glob("*/checkpoint.pt")).stat().st_size
    runs = tmp_path / "runs"
    runs.mkdir()
    size_kb = (ckpt * 3 // 2 + 256 * 1024) // 1024  # one checkpoint + caches, not two checkpoints
    if subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_kb}k", "tmpfs", str(runs)]).returncode != 0:
        pytest.skip("cannot mount a tmpfs here")
    try:
        grid = write_grid(tmp_path, dims=[2], epochs=3)
        p = sweepdae(tmp_path, "run", str(grid), "--max-retries", "1")
        assert p.returncode == 1 and "Traceback" not in p.stderr.splitlines()[-1]
        att = attempts(tmp_path)
        assert list(att["state"]) == ["FAIL", "FAIL"] and set(att["failure_class"]) == {"io"}, att
        run_dir = next(runs.glob("[0-9a-f]*"))
        state = torch.load(next((runs / "_train").glob("*/checkpoint.pt")), map_location="cpu", weights_only=False)
        assert state["epoch"] == 1  # the last good checkpoint is whole and loadable
        # free space (a bigger disk), run again: resumes from that checkpoint and finishes, stored once
        subprocess.run(["mount", "-o", f"remount,size={size_kb * 8}k", str(runs)], check=True)
        p = sweepdae(tmp_path, "run", str(grid))
        assert p.returncode == 0, p.stderr
        resumed = [e["resumed_from_epoch"] for e in events(run_dir) if "resumed_from_epoch" in e]
        assert resumed[-1] == 1
        att = attempts(tmp_path)
        assert list(att["state"]).count("COMPLETE") == 1
        fault_matrix("real full disk", failed_attempts=2, results_lost=0, duplicates=0,
                     checkpoint_bytes=ckpt, disk_kb=size_kb)
    finally:
        subprocess.run(["umount", "-l", str(runs)])


# ------------------------------------------------------------------------------------ random coordinator kills
def latest_phase(events: Any, runs: Path, since: float) -> str:
    """What the sweep was doing at the kill: the newest cell event after `since`, else 'startup/enqueue'."""
    newest: tuple[float, str] = (since, "startup/enqueue")
    for path in runs.glob("[0-9a-f]*/events.jsonl"):
        for e in events(path.parent):
            if e.get("time", 0) > newest[0]:
                newest = (e["time"], str(e.get("phase", "?")))
    return newest[1]


def check_exactly_once(attempts: Any, cells: Any, tmp: Path, keys: int) -> dict[str, int]:
    """Every cell done once: one COMPLETE trial per key, nothing queued or running, each result on disk equal to
    the stored one. Returns the attempt counts."""
    att = attempts(tmp)
    complete = Counter(att[att["state"] == "COMPLETE"]["key"])
    assert len(complete) == keys and set(complete.values()) == {1}, complete
    assert not set(att["state"]) & {"RUNNING", "WAITING"}, att[["key", "state"]]
    cells_df = cells(tmp)
    assert set(cells_df["status"]) == {"done"}
    for _, row in cells_df.iterrows():
        res = json.loads((tmp / "runs" / row["key"] / "result.json").read_text())
        assert res["key"] == row["key"]
        assert abs(res["metrics"]["probe_top1"] - row["metric.probe_top1"]) < 1e-9
    return {"attempts": len(att), "failed_attempts": int((att["state"] == "FAIL").sum())}


def wait_for(events: Any, target: str, runs: Path, journal: Path, start: float, size0: int, proc: Any,
             limit: float) -> None:
    """Poll every 20 ms until the sweep reaches `target` (enqueue: its first store write; a phase: that cell
    event) or `limit` seconds pass or the sweep ends."""
    deadline = time.time() + limit
    while time.time() < deadline and proc.poll() is None:
        if target == "enqueue":
            if journal.exists() and journal.stat().st_size != size0:
                return
        elif any(e.get("phase") == target and e.get("time", 0) > start
                 for path in runs.glob("[0-9a-f]*/events.jsonl") for e in events(path.parent)):
            return
        time.sleep(0.02)


@pytest.mark.slow
def test_twenty_random_sigkills_of_the_coordinator_lose_and_duplicate_nothing(tmp_path: Path, write_grid: Any,
                                                                              sweepdae: Any, attempts: Any,
                                                                              cells: Any, events: Any) -> None:
    """SIGKILL the coordinator 20+ times at random moments and at chosen ones (its enqueue, a cell's training,
    probe, figures, and right after a result is written while the coordinator records it), then let it finish."""
    seed = int(os.environ.get("SWEEPDAE_KILL_SEED", "0"))
    rng = random.Random(seed)
    grid = write_grid(tmp_path, dims=[2, 3, 4, 5, 6, 8, 12, 16], epochs=3)
    kills = 0
    phases: Counter[str] = Counter()
    runs, journal = tmp_path / "runs", tmp_path / "store.journal"
    # the kills here come from outside: on a slow (busy) machine three in a row can land on one cell, which the
    # poison-cell rule would then quarantine (tested on its own below); this test is about exactly-once
    env = {"OMP_NUM_THREADS": "1", "SWEEPDAE_POISON_ATTEMPTS": "0"}
    while kills < 20:
        size0 = journal.stat().st_size if journal.exists() else 0
        start = time.time()
        proc = subprocess.Popen([sys.executable, "-m", "sweepdae", "run", str(grid), "--plain", "--runs-dir",
                                 str(runs), "--store", f"journal:{journal}"], cwd=tmp_path,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**os.environ, **env})
        target = rng.choice(["random", "random", "enqueue", "train", "probe", "figures", "done"])
        if target == "random":
            time.sleep(rng.uniform(0.3, 8.0))
        else:
            wait_for(events, target, runs, journal, start, size0, proc, limit=30.0)
            time.sleep(rng.uniform(0.0, 0.01 if target == "enqueue" else 0.3))
        if proc.poll() is not None:
            break  # the sweep ended before this kill
        phases[latest_phase(events, runs, start) if target != "enqueue" else "enqueue"] += 1
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        kills += 1
        time.sleep(rng.uniform(0.0, 1.2))  # the orphaned cell sees its coordinator gone within 1 s
    p = sweepdae(tmp_path, "run", str(grid), timeout=900, env=env)
    assert p.returncode == 0, p.stderr
    counts = check_exactly_once(attempts, cells, tmp_path, keys=8)
    assert kills >= 20, f"the sweep finished after {kills} kills: make the grid bigger"
    fault_matrix("coordinator SIGKILLs", seed=seed, kills=kills, **{f"at_{k}": v for k, v in sorted(phases.items())},
                 **counts, results_lost=0, duplicates=0)


@pytest.mark.slow
def test_a_cell_that_keeps_killing_its_coordinator_is_quarantined(tmp_path: Path, write_grid: Any, sweepdae: Any,
                                                                 attempts: Any, cells: Any, events: Any) -> None:
    """Its coordinator dies during each of three attempts in a row (here: SIGKILLed while the cell trains): the
    fourth `sweepdae run` does not start it again but reports it failed as a poison cell."""
    grid = write_grid(tmp_path, dims=[2])
    env = {**os.environ, "OMP_NUM_THREADS": "1", "SWEEPDAE_FAULT": "sleep@phase=train", "SWEEPDAE_FAULT_SLEEP": "60"}
    env.pop("SWEEPDAE_POISON_ATTEMPTS", None)
    runs, journal = tmp_path / "runs", tmp_path / "store.journal"
    for _ in range(3):
        start = time.time()
        proc = subprocess.Popen([sys.executable, "-m", "sweepdae", "run", str(grid), "--plain", "--runs-dir",
                                 str(runs), "--store", f"journal:{journal}"], cwd=tmp_path,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
        wait_for(events, "train", runs, journal, start, 0, proc, limit=120.0)
        assert proc.poll() is None, "the sweep ended before the kill"
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        time.sleep(1.5)  # the orphaned cell sees its coordinator gone within 1 s
    p = sweepdae(tmp_path, "run", str(grid), env={"SWEEPDAE_FAULT": ""})
    assert p.returncode == 1 and "Traceback" not in p.stderr, p.stderr
    row = cells(tmp_path).iloc[0]
    assert row["status"] == "failed" and "poison cell" in row["error"] and "3 attempts in a row" in row["error"]
    att = attempts(tmp_path)
    assert list(att["state"]) == ["FAIL"] * 3 and att["stale"].all()  # not started a fourth time


# ------------------------------------------------------------------------------------ PostgreSQL restarted
@pytest.mark.slow
@pytest.mark.postgres
def test_postgres_restarts_mid_sweep_and_workers_carry_on(tmp_path: Path, write_grid: Any,
                                                           own_pg_server: Any) -> None:
    server = own_pg_server
    url = server.url
    grid = write_grid(tmp_path, dims=[2, 4, 6, 8], epochs=3)
    env = {"OMP_NUM_THREADS": "1", "SWEEPDAE_CPU_THREADS": "1", "SWEEPDAE_HEARTBEAT_S": "1",
           "SWEEPDAE_LEASE_S": "30"}
    base = [sys.executable, "-m", "sweepdae"]
    common = ["--store", url, "--plain", "--runs-dir", str(tmp_path / "runs")]
    run = subprocess.Popen([*base, "run", str(grid), *common], cwd=tmp_path, stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, text=True, env={**os.environ, **env})
    deadline = time.time() + 120
    while time.time() < deadline and not list((tmp_path / "runs").glob("[0-9a-f]*/events.jsonl")):
        time.sleep(0.2)
    wk = subprocess.Popen([*base, "worker", *common], cwd=tmp_path, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, env={**os.environ, **env})
    # the outages start once the worker has joined (a second cell started): a worker still starting up when the
    # server goes down fails to open the store, which is not what this test is about (on a busy machine its
    # start-up can take longer than the first 4 s)
    deadline = time.time() + 120
    while time.time() < deadline and len(list((tmp_path / "runs").glob("[0-9a-f]*/events.jsonl"))) < 2:
        time.sleep(0.2)
    restarts = 0
    for _ in range(2):  # two outages of a few seconds while cells train
        time.sleep(4.0)
        server.shutdown()
        time.sleep(3.0)  # the store is down: heartbeats and claims wait
        server.start()
        restarts += 1
    out_run, _ = run.communicate(timeout=600)
    out_wk, _ = wk.communicate(timeout=600)
    assert run.returncode == 0, out_run
    assert wk.returncode == 0, out_wk
    assert "Traceback" not in out_run + out_wk
    waited = out_run.count("store unreachable") + out_wk.count("store unreachable")
    assert waited >= 1, out_run + out_wk
    with open_store(url, create=False) as s:
        att = s.attempts()
        cells_df = s.cells()
    complete = Counter(att[att["state"] == TrialState.COMPLETE.name]["key"])
    assert len(complete) == 4 and set(complete.values()) == {1}
    assert set(cells_df["status"]) == {"done"}
    owners = {str(o).rsplit(":", 1)[-1] for o in att[att["state"] == "COMPLETE"]["owner"]}
    fault_matrix("postgres restarts", restarts=restarts, outages_waited_out=waited, coordinators=2,
                 coordinators_used=len(owners), attempts=len(att), results_lost=0, duplicates=0)
