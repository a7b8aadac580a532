"""Peak host RSS of one streamed cell as its image folder grows 8x (issue 30: memory bounded by the batch).

    .venv/bin/python benchmarks/bench_stream_rss.py [--images 256 --factor 8 --procs 1 --json out.json]

Writes two ImageNet-layout folders of JPEGs (32 px, 4 classes, quality 90; N and factor x N train images, a
quarter as many validation images), then runs one tiny streamed cell on each through `sweepdae run` (its own
journal store and runs folder in a temp directory): data.name = "imagefolder", center crop to 32 px, pixel
tokenizer (patch 8), micro model, 1 epoch at batch 32, linear probe (2 epochs) and kNN on, FID and the random-init
baselines off, one DataLoader worker. Prints each cell's per-phase `peak_rss_mb` from `sweepdae status --json`
(the max over the cell's processes of ru_maxrss, itself or its largest finished child, by the phase's end: a
running peak, so a phase's number is at least the previous phase's), the images decoded per phase, and the ratio
large / small per phase. The bound holds when every ratio is at most 1.15.

glibc's malloc raises its mmap threshold as large blocks are freed (up to 32 MiB), after which the feature passes'
per-batch activations come from the heap and fragment it: the probe phase's peak then grows with the number of
batches, not with anything the pass keeps. The CPU feature passes give the freed pages back after each batch
(`sweepdae.utils.trim_heap`, glibc malloc_trim(0)); BENCHMARKS.md section 17 gives the numbers before that, with
it, and with `MALLOC_MMAP_THRESHOLD_=65536` (the fixed threshold, which costs training throughput).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent

GRID = """
[grid]
name = "rss{n}"
seeds = [0]
[base]
data.name = "imagefolder"
data.root = "{root}"
data.image_size = 32
data.train_size = 0
data.test_size = 0
data.num_workers = 1
tokenizer.name = "pixel"
tokenizer.patch_size = 8
model.size = "micro"
train.epochs = 1
train.batch_size = 32
train.warmup_epochs = 0
probe.epochs = 2
probe.batch_size = 32
probe.baselines = false
fid.enabled = false
[axes]
noise.schedule = ["ddpm_linear"]
"""


def write_jpegs(root: Path, n_train: int, *, classes: int = 4, size: int = 32) -> None:
    """The folder layout and image recipe of tests/_synthetic.py's write_image_folder, as JPEGs."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, n in (("train", n_train), ("val", max(classes, n_train // 4))):
        for i in range(n):
            c = i % classes
            d = root / split / f"class{c:02d}"
            d.mkdir(parents=True, exist_ok=True)
            arr = np.clip(rng.normal(100 + 16 * c, 50, (size, size, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(arr).save(d / f"{i:05d}.jpg", quality=90)


def run_cell(work: Path, n: int, procs: int) -> dict[str, Any]:
    folder = work / f"imgs{n}"
    write_jpegs(folder, n)
    (work / f"g{n}.toml").write_text(GRID.format(n=n, root=folder))
    store = f"journal:{work / f'store{n}.journal'}"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "sweepdae", "run", f"g{n}.toml", "--store", store, "--plain",
           "--runs-dir", str(work / f"runs{n}")]
    if procs > 1:
        cmd += ["--procs-per-cell", str(procs)]
    p = subprocess.run(cmd, cwd=work, capture_output=True, text=True, env=env)
    if p.returncode != 0:
        raise SystemExit(f"sweepdae run failed on {n} images:\n{p.stderr[-3000:]}")
    s = subprocess.run([sys.executable, "-m", "sweepdae", "status", "--json", "--store", store], cwd=work,
                       capture_output=True, text=True, env=env, check=True)
    (cell,) = json.loads(s.stdout)["cells"]
    if cell["status"] != "done":
        raise SystemExit(f"cell on {n} images is {cell['status']}")
    return {"images": n, "world_size": cell.get("world_size"), "phases": cell["phases"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=256, help="train images of the small folder")
    ap.add_argument("--factor", type=int, default=8)
    ap.add_argument("--procs", type=int, default=1, help="processes per cell (--procs-per-cell)")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench_stream_rss_") as tmp:
        small = run_cell(Path(tmp), args.images, args.procs)
        large = run_cell(Path(tmp), args.images * args.factor, args.procs)
    print(f"streamed cell, {args.procs} process(es): peak RSS per phase (MiB), {args.images} vs "
          f"{args.images * args.factor} train images")
    print(f"{'phase':<10} {'decoded':>8} {'peak MiB':>9} {'decoded':>8} {'peak MiB':>9} {'ratio':>6}")
    ratios = {}
    order = ["data", "tokenizer", "train", "probe", "fid", "figures"]
    for name in sorted(small["phases"], key=lambda k: (order.index(k) if k in order else len(order), k)):
        a, b = small["phases"][name], large["phases"].get(name)
        if b is None:
            continue
        ratios[name] = b["peak_rss_mb"] / a["peak_rss_mb"]
        print(f"{name:<10} {a['decoded']:>8} {a['peak_rss_mb']:>9.1f} {b['decoded']:>8} {b['peak_rss_mb']:>9.1f} "
              f"{ratios[name]:>6.3f}")
    worst = max(ratios, key=ratios.__getitem__)
    print(f"largest ratio: {ratios[worst]:.3f} ({worst}); bound 1.15 {'holds' if ratios[worst] <= 1.15 else 'FAILS'}")
    if args.json:
        args.json.write_text(json.dumps({"small": small, "large": large, "ratios": ratios}, indent=1))


if __name__ == "__main__":
    main()
