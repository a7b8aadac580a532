"""What a loader pass costs when its workers start from a forkserver (what streamed sets use) instead of `fork`.

    .venv/bin/python benchmarks/bench_loader_start.py [--n 48 --passes 5 --workers 1 4]

Writes `--n` small JPEGs (64 px) to a temp folder and times, side by side in this one process, a whole pass of
`sweepdae.data._imagefolder._Pass` (decode + center crop to 8 px, batch 8) through a DataLoader whose workers start
with `fork` and as streamed sets start them (`loader_workers`: a forkserver preloading the main module and the data
module, and a thread per worker that ends it when the loader's owner is gone). A training
loader with persistent workers is kept alive meanwhile, as in a cell (its queue feeder threads are what a fork can
copy mid-lock; it also starts the forkserver, timed apart). Printed: the median ms per pass of each, and the ratio.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
from PIL import Image
from torch.utils.data import DataLoader

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sweepdae.data._imagefolder import _Pass, loader_workers  # noqa: E402


def one_pass(ds: _Pass, workers: int, method: str) -> float:
    kw = loader_workers(workers) if method == "forkserver" else {"multiprocessing_context": "fork"}
    t = time.perf_counter()
    n = sum(int(x.shape[0]) for x, _ in DataLoader(ds, batch_size=8, num_workers=workers, **kw))  # type: ignore[arg-type]
    assert n == len(ds)
    return (time.perf_counter() - t) * 1000


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=48)
    ap.add_argument("--passes", type=int, default=5)
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 4])
    args = ap.parse_args()
    warnings.simplefilter("ignore")  # DataLoader's "more workers than cores" warning on a 2-core machine
    with tempfile.TemporaryDirectory() as tmp:
        rng = np.random.default_rng(0)
        files = []
        for i in range(args.n):
            files.append(str(Path(tmp) / f"{i:04d}.jpg"))
            Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(files[-1], quality=90)
        ds = _Pass(files, [0] * len(files), list(range(len(files))), None, 8, "RGB")
        training = DataLoader(ds, batch_size=8, num_workers=1, persistent_workers=True,
                              **loader_workers(1))  # type: ignore[arg-type]
        t = time.perf_counter()
        next(iter(training))  # its workers and feeder thread alive for the rest of the run
        print(f"first batch of the training loader, which starts the forkserver: "
              f"{(time.perf_counter() - t) * 1000:.0f} ms")
        print("| workers | fork ms/pass | forkserver ms/pass | forkserver / fork |")
        print("|---:|---:|---:|---:|")
        for w in args.workers:
            times: dict[str, list[float]] = {"fork": [], "forkserver": []}
            for _ in range(args.passes):  # interleaved, so a load change hits both alike
                for m in times:
                    times[m].append(one_pass(ds, w, m))
            f, s = statistics.median(times["fork"]), statistics.median(times["forkserver"])
            print(f"| {w} | {f:.0f} | {s:.0f} | {s / f:.2f} |")


if __name__ == "__main__":
    main()
