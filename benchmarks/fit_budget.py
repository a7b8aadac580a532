"""The patch tokenizers' fit budget (REPRODUCTION.md, "The patch tokenizers' fit budget"): held-out reconstruction
MSE against fit epochs, and the budget the criterion fixed before this ran picks.

    .venv/bin/python benchmarks/fit_budget.py [--epochs 64] [--seeds 100 101 102] [--threads 1]

For `patch_vae` and `patch_ae` with the cpu profile's own recipes (grids/tokenizer_dims.toml: data, tokenizer
knobs, d = 2, 4, 8 labelled 16, 32, 64), fit epochs replaced by `--epochs`: one fit of `--epochs` epochs
per seed through `fit_tokenizer` (the cells' own entry point, constant lr and one seeded data order, so the fit at
E epochs is the first E epochs of it), read at E = 1, 2, 4, ...: MSE per pixel value in [-1, 1] through the
posterior mean on the profile's 2,000 test-split images, and for the VAE the posterior-noise share of its latent
variance there. Reading does not touch the fit's random streams.

Rule (fixed before the run): E* = the smallest E with mean MSE(2E) > 0.99 x mean MSE(E), else the largest E
measured; a tokenizer's budget is the largest E* over its d.
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path

import torch

from sweepdae.data import load_dataset
from sweepdae.grid import expand, load_grid
from sweepdae.tokenizers import create_tokenizer, fit_tokenizer
from sweepdae.tokenizers._base import posterior_stats, recon_mse

GRID = Path(__file__).resolve().parent.parent / "grids" / "tokenizer_dims.toml"
TOKENIZERS = ("patch_vae", "patch_ae")
IMPROVEMENT = 0.01  # "stops improving by more than 1 % per doubling" (REPRODUCTION.md)


def budget(mse: dict[int, float]) -> int:
    """E* of the rule, from mean held-out MSE per measured E (powers of two)."""
    es = sorted(mse)
    for e in es:
        if 2 * e in mse and mse[2 * e] > (1.0 - IMPROVEMENT) * mse[e]:
            return e
    return es[-1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=64)
    ap.add_argument("--seeds", type=int, nargs="+", default=[100, 101, 102])
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    # the cpu profile's own recipes (data, tokenizer knobs, d values), one seed's cells of the patch tokenizers
    cells = [c for c in expand(load_grid(GRID), "cpu").cells if c.seed == 0 and c.coords["tokenizer"] in TOKENIZERS]
    data = cells[0].recipe.data
    train_set, test_set = load_dataset(data, "train", seed=0), load_dataset(data, "test", seed=0)
    train, test = train_set.tensors()[0], test_set.tensors()[0]
    heldout = torch.arange(test.shape[0])
    reads = [e for e in (2 ** k for k in range(20)) if e <= args.epochs]
    rows = []
    for name in TOKENIZERS:
        for cell in (c for c in cells if c.coords["tokenizer"] == name):
            cfg = dataclasses.replace(cell.recipe.tokenizer, fit_epochs=args.epochs)
            d = f"{cfg.latent_dim} ({cell.coords['d']})"
            per_e: dict[int, list[float]] = {e: [] for e in reads}
            noise: dict[int, list[float]] = {e: [] for e in reads}
            seconds = []
            for seed in args.seeds:
                tok = create_tokenizer(cfg, channels=train_set.channels, image_size=data.image_size)

                def read(event: dict, tok=tok, per_e=per_e, noise=noise) -> None:
                    if event.get("event") != "fit_epoch" or event["epoch"] not in per_e:
                        return
                    tok.eval()
                    per_e[event["epoch"]].append(recon_mse(tok, test, heldout, device=torch.device("cpu")))
                    post = posterior_stats(tok, test, device="cpu")
                    if post:
                        noise[event["epoch"]].append(float(post["posterior_var_fraction"]))
                    tok.train()

                t0 = time.perf_counter()
                fit_tokenizer(tok, train, cfg=cfg, seed=seed, progress=read)
                seconds.append(time.perf_counter() - t0)
            mean = {e: sum(v) / len(v) for e, v in per_e.items()}
            rows.append((name, d, mean, {e: sum(v) / len(v) for e, v in noise.items() if v}, budget(mean),
                         sum(seconds) / len(seconds)))
            print(f"{name} d={d}: done ({rows[-1][5]:.1f} s per fit)", flush=True)

    print(f"\nheld-out MSE (mean over seeds {', '.join(map(str, args.seeds))}), {test.shape[0]:,} test images")
    print("| tokenizer | d (label) | " + " | ".join(f"E={e}" for e in reads) + " | E* | s per fit |")
    print("|---|---|" + "---|" * len(reads) + "---|---|")
    for name, d, mean, _, e_star, sec in rows:
        print(f"| {name} | {d} | " + " | ".join(f"{mean[e]:.4f}" for e in reads)
              + f" | {e_star} | {sec:.1f} |")
    print("\npatch VAE posterior-noise share of latent variance (held-out; not in the rule)")
    print("| d (label) | " + " | ".join(f"E={e}" for e in reads) + " |")
    print("|---|" + "---|" * len(reads))
    for _name, d, _, nz, _, _ in rows:
        if nz:
            print(f"| {d} | " + " | ".join(f"{nz[e]:.2f}" for e in reads) + " |")
    print()
    for name in TOKENIZERS:
        print(f"budget {name}: {max(r[4] for r in rows if r[0] == name)} epochs")


if __name__ == "__main__":
    main()
