"""Fixed cost per cell, fork launcher vs `accelerate launch`, measured on a small real grid in one run.

    python benchmarks/bench_overhead.py [--cells 3]

Runs the same tiny grid (digits, 1 epoch) twice through `sweepdae run`, once per launcher, each in a fresh store,
and reports per cell: wall time (claim to result stored, from the store), the cell's own phases (data, tokenizer,
train, probe, figures), and the rest = launch + imports + bookkeeping. Also the share of the grid's wall time.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

GRID = """
[grid]
name = "overhead"
[base]
data.name = "digits"
data.image_size = 8
tokenizer.patch_size = 4
tokenizer.pca_num_patches = 2000
model.size = "micro"
train.epochs = 1
train.batch_size = 64
probe.epochs = 5
[axes]
tokenizer.latent_dim = {dims}
"""


def run(launcher: str, cells: int) -> dict[str, float]:
    from sweepdae.store import open_store

    with tempfile.TemporaryDirectory() as tmp:
        t = Path(tmp)
        (t / "g.toml").write_text(GRID.format(dims=list(range(1, cells + 1))))
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-m", "sweepdae", "run", "g.toml", "--store", "journal:s.journal", "--plain",
                        "--launcher", launcher, "--runs-dir", "runs"], cwd=t, check=True, capture_output=True,
                       env={**os.environ})
        total = time.perf_counter() - t0
        s = open_store(f"journal:{t / 's.journal'}", create=False)
        df = s.cells()
        s.close()
    phases = ["time.data_s", "time.tokenizer_s", "time.train_s", "time.probe_s", "time.figures_s"]
    wall = df["duration_s"].mean()
    inside = df[phases].sum(axis=1).mean()
    return {"grid_s": total, "cell_wall_s": wall, "cell_phases_s": inside, "fixed_s": wall - inside,
            "train_s": df["time.train_s"].mean(), "tokenizer_s": df["time.tokenizer_s"].mean()}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--cells", type=int, default=3)
    a = ap.parse_args()
    res = {lc: run(lc, a.cells) for lc in ("fork", "accelerate")}
    print(f"{a.cells} cells per grid (digits 8 px, micro DiT, 1 epoch)")
    print(f"{'launcher':<11}{'grid s':>8}{'cell wall s':>13}{'in phases s':>13}{'fixed s':>9}{'fixed share':>13}"
          f"{'tokenizer s':>13}")
    for lc, r in res.items():
        print(f"{lc:<11}{r['grid_s']:8.1f}{r['cell_wall_s']:13.2f}{r['cell_phases_s']:13.2f}{r['fixed_s']:9.2f}"
              f"{r['fixed_s'] * a.cells / r['grid_s']:13.1%}{r['tokenizer_s']:13.3f}")
    print(f"fixed cost ratio accelerate/fork: {res['accelerate']['fixed_s'] / max(res['fork']['fixed_s'], 1e-9):.1f}x")


if __name__ == "__main__":
    main()
