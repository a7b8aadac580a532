"""Is a CPU fit bitwise repeatable, at one thread count and across thread counts?

Fits the conv VAE of tokenizer_dims' cpu profile (d = 16, seed 1: the recipe whose training ran twice in the shipped
reproduction) for `--steps` optimizer steps, each run in a fresh process with a given torch thread count, and
prints a hash of the fitted parameters, and their sum, per run. Equal hashes at one count and different hashes
across counts mean the difference comes from the thread count (the order of float sums), not the seed or the code.

    .venv/bin/python benchmarks/thread_repeatability.py --threads 1 1 2 2
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import subprocess
import sys
from pathlib import Path

GRID = Path(__file__).resolve().parent.parent / "grids" / "tokenizer_dims.toml"


def fit(threads: int, steps: int) -> str:
    """A hash of the fitted parameters, and their sum (to show how far apart two hashes are)."""
    import torch

    from sweepdae.data import load_dataset
    from sweepdae.grid import expand, load_grid
    from sweepdae.tokenizers import create_tokenizer, fit_tokenizer

    torch.set_num_threads(threads)
    (cell,) = [c for c in expand(load_grid(GRID), "cpu").cells
               if c.seed == 1 and c.coords["tokenizer"] == "conv_vae" and c.coords["d"] == "16"]
    cfg = dataclasses.replace(cell.recipe.tokenizer, fit_epochs=1)  # one epoch over `steps` batches
    images = load_dataset(cell.recipe.data, "train", seed=0).tensors()[0][: steps * cfg.fit_batch_size]
    tok = create_tokenizer(cfg, channels=1, image_size=cell.recipe.data.image_size)
    fit_tokenizer(tok, images, cfg=cfg, seed=cell.seed)
    digest = hashlib.sha256(b"".join(p.detach().numpy().tobytes() for p in tok.parameters())).hexdigest()[:16]
    total = sum(float(p.detach().double().sum()) for p in tok.parameters())
    return f"{digest} (sum {total:.5f})"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 1, 2, 2])
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--child", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child is not None:
        print(fit(args.child, args.steps))
        return
    for n in args.threads:  # a fresh process per run: nothing cached between them
        out = subprocess.run([sys.executable, __file__, "--child", str(n), "--steps", str(args.steps)],
                             check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1]
        print(f"threads {n}: parameters {out}", flush=True)


if __name__ == "__main__":
    main()
