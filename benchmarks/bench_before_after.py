"""One grid's cells, measured by another checkout and by this one, side by side: wall time and every cell's metrics.

    git worktree add /tmp/sweepdae-before <commit>
    .venv/bin/python benchmarks/bench_before_after.py --before /tmp/sweepdae-before --grid quickstart \\
        [--profile smoke] [--metrics probe_top1,random_init_probe_top1,raw_pixel_probe_top1]

Each checkout runs its own copy of the grid (`grids/<name>.toml` in its tree: the recipe as it stood there) with
`python -m sweepdae run` on a fresh store and runs folder, one after the other in this process; only PYTHONPATH
differs. Prints wall times and a table of the metrics per cell label.
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


def run(src: Path, grid: Path, profile: str, keep: Path | None = None) -> tuple[float, dict[str, dict[str, float]]]:
    """(wall seconds, label -> metrics) of one sweep of `grid` with the sweepdae in `src` (its store and runs
    folder kept in `keep` when given, else in a temporary folder)."""
    with tempfile.TemporaryDirectory() as scratch:
        tmp = str(keep.resolve()) if keep else scratch
        Path(tmp).mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "PYTHONPATH": str(src), "SWEEPDAE_STORE": f"journal:{tmp}/store.journal",
               "SWEEPDAE_RUNS": f"{tmp}/runs"}
        t0 = time.perf_counter()
        p = subprocess.run([sys.executable, "-m", "sweepdae", "run", str(grid), "--profile", profile, "--plain"],
                           cwd=tmp, env=env, capture_output=True, text=True)
        wall = time.perf_counter() - t0
        if p.returncode != 0:
            raise SystemExit(f"{src}: sweep failed:\n{p.stderr[-2000:]}")
        out = {}
        for d in Path(tmp, "runs").glob("[0-9a-f]*"):
            label = json.loads((d / "recipe.json").read_text()).get("label", d.name[:12])
            out[label] = json.loads((d / "result.json").read_text())["metrics"]
        return wall, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--before", type=Path, required=True, help="a checkout of sweepdae to compare against")
    ap.add_argument("--grid", default="quickstart", help="a shipped grid's name")
    ap.add_argument("--profile", default="smoke")
    ap.add_argument("--metrics", default="probe_top1,knn_top1,random_init_probe_top1,raw_pixel_probe_top1")
    ap.add_argument("--keep", type=Path, help="keep this tree's store and runs folder here (e.g. for a report)")
    a = ap.parse_args()
    names = a.metrics.split(",")
    before = run(a.before.resolve(), a.before.resolve() / "grids" / f"{a.grid}.toml", a.profile)
    after = run(HERE, HERE / "grids" / f"{a.grid}.toml", a.profile, a.keep)
    print(f"{a.grid} --profile {a.profile}: before ({a.before}) {before[0]:.0f} s, after (this tree) {after[0]:.0f} s")
    print("| cell | " + " | ".join(f"{m} before | after" for m in names) + " |")
    print("|---|" + "---|---|" * len(names))
    for label in sorted(set(before[1]) | set(after[1])):
        b, f = before[1].get(label, {}), after[1].get(label, {})
        cells = [f"{b[m]:.1f} | {f[m]:.1f}" if m in b and m in f else
                 f"{b.get(m, float('nan')):.1f} | {f.get(m, float('nan')):.1f}" for m in names]
        print(f"| {label} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
