"""Wall time of a probe-only grid when its cells share one training, against a checkout that trains per cell.

    git worktree add /tmp/sweepdae-before <commit>     # a checkout from before train keys (schema 1)
    .venv/bin/python benchmarks/bench_train_once.py --before /tmp/sweepdae-before \
        [--grid /tmp/sweepdae-before/grids/probe_t.toml --profile smoke]

Runs `python -m sweepdae run GRID --profile P --plain` on a fresh store and runs folder, once with this checkout's
sweepdae and once with the other checkout's (same Python, same packages: only PYTHONPATH differs), one after the
other in this process, and prints both wall times, their ratio and how many trainings each made. GRID defaults to
the other checkout's grid file, so both run the same cells even when the shipped grid has changed since.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent.parent


def run(src: Path, grid: str, profile: str) -> tuple[float, int, str]:
    """(wall seconds, trainings made, last line) of one sweep with the sweepdae in `src`."""
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "PYTHONPATH": str(src), "SWEEPDAE_STORE": f"journal:{tmp}/store.journal",
               "SWEEPDAE_RUNS": f"{tmp}/runs"}
        t0 = time.perf_counter()
        p = subprocess.run([sys.executable, "-m", "sweepdae", "run", grid, "--profile", profile, "--plain"],
                           cwd=tmp, env=env, capture_output=True, text=True)
        wall = time.perf_counter() - t0
        if p.returncode != 0:
            raise SystemExit(f"{src}: sweep failed:\n{p.stderr[-2000:]}")
        runs = Path(tmp) / "runs"
        trained = len(list((runs / "_train").glob("*/trained.json")))  # schema 2: one folder per training
        if not trained:  # schema 1: every cell trains its own network and keeps its checkpoint
            trained = sum(1 for d in runs.glob("[0-9a-f]*") if (d / "checkpoint.pt").exists())
        done = sum(1 for d in runs.glob("[0-9a-f]*") if (d / "result.json").exists()
                   and json.loads((d / "result.json").read_text()).get("metrics"))
        return wall, trained, f"{done} cells done"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--before", type=Path, required=True, help="a checkout of sweepdae to compare against")
    ap.add_argument("--grid", default="", help="grid file or name (default: the other checkout's probe_t.toml)")
    ap.add_argument("--profile", default="smoke")
    a = ap.parse_args()
    a.grid = a.grid or str(a.before.resolve() / "grids" / "probe_t.toml")
    before = run(a.before.resolve(), a.grid, a.profile)
    after = run(HERE, a.grid, a.profile)
    print(f"{a.grid} --profile {a.profile}, OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', '-')}")
    print(f"before ({a.before}): {before[0]:7.1f} s, {before[1]} trainings, {before[2]}")
    print(f"after  (this tree) : {after[0]:7.1f} s, {after[1]} trainings, {after[2]}")
    print(f"ratio before / after: {before[0] / after[0]:.2f}x")


if __name__ == "__main__":
    main()
