"""Shared test configuration.

Hypothesis runs derandomized by default: every property and fuzz test draws the same examples on every run and
machine (a seed fixed per test, no example database), so the default suite cannot fail on one run in three.
`SWEEPDAE_HYPOTHESIS=random` (or pytest's `--hypothesis-profile random`) draws fresh examples to hunt for new
failures; a failure prints the `@reproduce_failure` blob that replays it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import types
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import _pg
import _store_workers
import _synthetic
import pytest
from hypothesis import settings

from sweepdae.store import open_store

# Under pytest-xdist (the README's test command runs 2 workers) each worker shares the CPU with the other: one torch
# thread per worker, inherited by the sweeps it launches: with 2 threads a micro DiT step ran 15x slower than with 1
# while another job held a core (BENCHMARKS.md, section 11).
if int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")) > 1:
    import torch

    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)

settings.register_profile("ci", derandomize=True, database=None, print_blob=True)
settings.register_profile("random", derandomize=False, database=None, print_blob=True)
settings.load_profile(os.environ.get("SWEEPDAE_HYPOTHESIS", "ci"))


# ---------------------------------------------------------------------------------------- shared fixtures
# Test modules import nothing from each other: what several of them need is a fixture here. The PostgreSQL
# launcher, the spawned store workers and the synthetic report store are helper modules beside this file
# (tests/_pg.py, tests/_store_workers.py, tests/_synthetic.py; the benchmarks import them too).
TINY = """
[grid]
name = "tiny"
seeds = [0]

[base]
data.name = "digits"
data.image_size = 8
tokenizer.name = "patch_pca"
tokenizer.patch_size = 4
tokenizer.pca_num_patches = 2000
model.size = "micro"
train.epochs = {epochs}
train.batch_size = 64
train.warmup_epochs = 0.5
probe.epochs = 5

[axes]
tokenizer.latent_dim = {dims}
"""


def _write_grid(tmp: Path, dims: list[int] = [2, 4, 8], epochs: int = 1, name: str = "tiny",  # noqa: B006
                train_size: int = 0) -> Path:
    """A tiny digits grid (8 px, micro DiT, 1,438 training images: 22 steps per epoch at batch 64), one cell per
    latent dim. `train_size` > 0 trains (and probes) on that many images instead (512: 8 steps per epoch, PCA
    still fitted on 2,048 >= 2,000 patches): for tests about the sweep, not about what the cells learn."""
    text = TINY.format(dims=dims, epochs=epochs).replace('name = "tiny"', f'name = "{name}"')
    if train_size:
        text = text.replace("data.image_size = 8\n", f"data.image_size = 8\ndata.train_size = {train_size}\n")
    p = tmp / f"{name}.toml"
    p.write_text(text)
    return p


def sweepdae_command(tmp: Path, *args: str, store: str | None = None) -> list[str]:
    """`python -m sweepdae ARGS`, on the journal store and runs folder in `tmp` unless told otherwise."""
    cmd = [sys.executable, "-m", "sweepdae", *args]
    if args and args[0] in ("run", "worker", "status") and "--store" not in args:
        cmd += ["--store", store or f"journal:{tmp / 'store.journal'}"]
    if args and args[0] in ("run", "worker"):
        cmd += ["--plain"] + ([] if "--runs-dir" in args else ["--runs-dir", str(tmp / "runs")])
    return cmd


def sweepdae_env(env: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of the tests' sweepdae subprocesses: one torch thread each."""
    return {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}


def _sweepdae(tmp: Path, *args: str, env: dict[str, str] | None = None, timeout: float = 300,
              store: str | None = None) -> subprocess.CompletedProcess[str]:
    """`sweepdae_command` run in `tmp`."""
    return subprocess.run(sweepdae_command(tmp, *args, store=store), cwd=tmp, capture_output=True, text=True,
                          timeout=timeout, env=sweepdae_env(env))


def _sweepdae_or_stacks(tmp: Path, *args: str, timeout: float) -> subprocess.CompletedProcess[str]:
    """`sweepdae ARGS` in `tmp` (journal store, runs/ there); past `timeout` s every process of its cells is sent
    SIGUSR1 (the cell's faulthandler writes each thread's stack to cell.log) and the test fails with those logs."""
    cmd = sweepdae_command(tmp, *args)
    proc = subprocess.Popen(cmd, cwd=tmp, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=sweepdae_env())
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        for pid in Path("/proc").iterdir():  # the cell's processes (not their launcher: USR1 would end it)
            try:
                line = (pid / "cmdline").read_text() if pid.name.isdigit() else ""
                if str(tmp / "runs") in line and "sweepdae.cell" in line and "accelerate" not in line:
                    os.kill(int(pid.name), signal.SIGUSR1)
            except OSError:
                pass
        time.sleep(3.0)
        proc.kill()
        proc.communicate()
        logs = "\n".join(f"--- {f}\n{f.read_text()[-6000:]}" for f in (tmp / "runs").glob("*/cell.log"))
        pytest.fail(f"`sweepdae {' '.join(args)}` still running after {timeout:.0f} s; the cells' logs:\n{logs}")
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def _events(run_dir: Path) -> list[dict[str, Any]]:
    path = run_dir / "events.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def _attempts(tmp: Path, store: str | None = None) -> Any:
    with open_store(store or f"journal:{tmp / 'store.journal'}", create=False) as s:
        return s.attempts()


def _cells(tmp: Path, store: str | None = None) -> Any:
    with open_store(store or f"journal:{tmp / 'store.journal'}", create=False) as s:
        return s.cells()


@pytest.fixture(scope="session")
def write_grid() -> Callable[..., Path]:
    return _write_grid


@pytest.fixture(scope="session")
def sweepdae() -> Callable[..., subprocess.CompletedProcess[str]]:
    return _sweepdae


@pytest.fixture(scope="session")
def sweepdae_or_stacks() -> Callable[..., subprocess.CompletedProcess[str]]:
    """`sweepdae` for a sweep that might hang: past its timeout the cells dump their threads' stacks and it fails."""
    return _sweepdae_or_stacks


@pytest.fixture(scope="session")
def events() -> Callable[[Path], list[dict[str, Any]]]:
    return _events


@pytest.fixture(scope="session")
def attempts() -> Callable[..., Any]:
    """The store's attempts table (one row per trial) of the sweep in a tmp folder."""
    return _attempts


@pytest.fixture(scope="session")
def cells() -> Callable[..., Any]:
    """The store's cells table (one row per key) of the sweep in a tmp folder."""
    return _cells


@pytest.fixture(scope="session")
def pg_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[_pg.PostgresServer]:
    """One throwaway PostgreSQL server per session (skips with the reason when it cannot start here)."""
    reason = _pg.postgres_unavailable_reason()
    if reason:
        pytest.skip(reason)
    server = _pg.start_postgres_server(tmp_path_factory.mktemp("pg"))
    yield server
    server.stop()


@pytest.fixture
def pg_url(pg_server: _pg.PostgresServer) -> str:
    """A store URL on a fresh, empty schema of the session's server."""
    return _pg.create_schema(pg_server.url, f"t_{uuid.uuid4().hex[:12]}")


@pytest.fixture
def own_pg_server(tmp_path: Path) -> Iterator[_pg.PostgresServer]:
    """A server of the test's own, for tests that stop and restart it while processes use it."""
    reason = _pg.postgres_unavailable_reason()
    if reason:
        pytest.skip(reason)
    server = _pg.start_postgres_server(tmp_path / "pg")
    yield server
    server.stop()


@pytest.fixture
def pg_launcher() -> types.ModuleType:
    """The launcher module itself (for tests of its own behaviour)."""
    return _pg


@pytest.fixture(scope="session")
def store_workers() -> types.ModuleType:
    """`drain_queue` and `chaos_worker`: bodies of spawned store workers (importable by name in the child)."""
    return _store_workers


@pytest.fixture(scope="session")
def image_folder() -> Callable[..., dict[str, tuple[Any, Any]]]:
    """`image_folder(root, {"train": n, "val": m}, num_classes=, size=, brightness_step=, seed=)`: an ImageNet-layout
    folder of synthetic PNGs, and each split's uint8 images and labels (see tests/_synthetic.py)."""
    return _synthetic.write_image_folder


@pytest.fixture(scope="session")
def synthetic_grids() -> Callable[..., tuple[list[dict[str, Any]], list[dict[str, Any]]]]:
    """`synthetic_grids(n_cells)` -> (grids, rows) of a synthetic store (see tests/_synthetic.py)."""
    return _synthetic.synthetic_grids
