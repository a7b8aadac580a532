"""Synthetic store contents for the report tests and benchmarks/bench_report.py: `synthetic_grids(n_cells)` ->
(grids, rows).

`grids` is what `store.grids()` returns and `rows` the records of `store.cells()`; wrap them in any object with
those two methods. Two grids: a Tab. 2-like table (tokenizer x d x seeds) and a Tab. 1-like trajectory with FID,
together holding about `n_cells` cells: ~85% done, 5% failed, 5% queued, the rest never enqueued ("new").
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["synthetic_grids", "synthetic_recipe", "write_image_folder"]

SEEDS = 4


def synthetic_recipe(seed: int, *, model: str = "micro") -> dict[str, Any]:
    return {"data": {"name": "fashion-mnist", "image_size": 32, "train_size": 6000, "test_size": 1000},
            "tokenizer": {"name": "patch_pca", "patch_size": 8}, "noise": {"schedule": "ddpm_linear"},
            "model": {"size": model}, "train": {"epochs": 2, "batch_size": 128},
            "objective": {"target": "eps", "output_space": "latent"}, "seed": seed}


def _row(rng: np.random.Generator, key: str, label: str, seed: int, metrics: dict[str, float]) -> dict[str, Any] | None:
    u = rng.random()
    status = "done" if u < 0.85 else "failed" if u < 0.90 else "queued" if u < 0.95 else "new"
    if status == "new":
        return None  # never enqueued: absent from store.cells()
    info = {"timings": {"data_s": 1.0, "tokenizer_s": 2.0, "train_s": float(rng.uniform(50, 80)), "probe_s": 5.0,
                        "fid_s": 0.0, "figures_s": 0.5, "wall_s": float(rng.uniform(60, 90))},
            "artifacts": {}, "run_dir": f"/runs/{key}",
            "provenance": {"sweepdae": "0.1.0", "git_commit": "0123456789abcdef", "git_dirty": False,
                           "torch": "2.4.0", "device": "cpu", "host": "bench"}}
    row: dict[str, Any] = {"key": key, "label": label, "status": status, "attempts": 1,
                           "failure_class": "crash" if status == "failed" else None,
                           "error": "boom" if status == "failed" else None, "recipe": synthetic_recipe(seed),
                           "info": info}
    for name, value in metrics.items():
        row[f"metric.{name}"] = value if status == "done" else math.nan
    return row


def synthetic_grids(n_cells: int = 5000, *, seed: int = 0) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    rng = np.random.default_rng(seed)
    n_steps = max(2, n_cells // (25 * SEEDS))
    n_table = max(1, n_cells - n_steps * SEEDS) // SEEDS
    n_cols = max(2, int(math.sqrt(n_table * 0.75)))
    n_rows = max(1, n_table // n_cols)
    toks = [f"tok{i}" for i in range(n_rows)]
    dims = [str(8 * (i + 1)) for i in range(n_cols)]
    grids: list[dict[str, Any]] = []
    rows: list[dict[str, Any]] = []
    cells = []
    for ti, t in enumerate(toks):
        for di, d in enumerate(dims):
            for s in range(SEEDS):
                key, label = f"tab-{t}-{d}-{s}", f"{t} d={d} seed={s}"
                cells.append({"key": key, "label": label, "coords": {"tokenizer": t, "d": d, "seed": str(s)},
                              "step": None, "seed": s})
                peak = 60 - 3 * abs(di - n_cols / 3) + ti * 0.01
                r = _row(rng, key, label, s, {"probe_top1": peak + rng.normal(0, 0.5)})
                if r:
                    rows.append(r)
    spec = {"name": "synthetic_table", "title": "Synthetic Tab. 2", "description": "", "mirrors": "tab2",
            "profile": "smoke", "profile_description": "", "seeds": list(range(SEEDS)), "steps": [],
            "axes": [{"name": "tokenizer", "paths": ["tokenizer.name"], "labels": toks},
                     {"name": "d", "paths": ["tokenizer.latent_dim"], "labels": dims}],
            "report": {"rows": "tokenizer", "cols": "d", "metrics": ["probe_top1"],
                       "findings": ["optimal_latent_dim", "unimodal_in_d", "kl_unnecessary"]}, "path": "synthetic"}
    grids.append({"name": "synthetic_table", "profile": "smoke", "spec": spec, "cells": cells})
    steps = [f"step {i}" for i in range(n_steps)]
    cells = []
    for i, st in enumerate(steps):
        for s in range(SEEDS):
            key, label = f"traj-{i}-{s}", f"{st} seed={s}"
            cells.append({"key": key, "label": label, "coords": {"step": st, "seed": str(s)}, "step": i, "seed": s})
            r = _row(rng, key, label, s, {"probe_top1": 50 + i * 0.1 + rng.normal(0, 0.5),
                                          "fid": 20 + i + rng.normal(0, 1)})
            if r:
                rows.append(r)
    spec = {"name": "synthetic_traj", "title": "Synthetic Tab. 1", "description": "", "mirrors": "tab1",
            "profile": "smoke", "profile_description": "", "seeds": list(range(SEEDS)), "steps": steps, "axes": [],
            "report": {"rows": "step", "cols": None, "metrics": ["probe_top1", "fid"],
                       "findings": ["fid_vs_accuracy", "trajectory"]}, "path": "synthetic"}
    grids.append({"name": "synthetic_traj", "profile": "smoke", "spec": spec, "cells": cells})
    return grids, rows


def write_image_folder(root: Path, per_class: dict[str, int], *, num_classes: int = 2, size: int = 16,
                       brightness_step: float = 16.0, seed: int = 0) -> dict[str, tuple[Any, Any]]:
    """An ImageNet-layout folder (root/SPLIT/classNN/NNN.png) of size x size RGB PNGs whose class shifts the mean
    brightness by `brightness_step` under heavy noise; returns each split's images (uint8 torch [N, 3, S, S]) and
    labels, in the folder's scan order."""
    import torch
    from PIL import Image

    rng = np.random.default_rng(seed)
    out = {}
    for split, n in per_class.items():
        images, labels = [], []
        for c in range(num_classes):
            d = root / split / f"class{c:02d}"
            d.mkdir(parents=True)
            for i in range(n):
                arr = np.clip(rng.normal(100 + brightness_step * c, 50, (size, size, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(arr).save(d / f"{i:03d}.png")
                images.append(torch.from_numpy(arr).permute(2, 0, 1))
                labels.append(c)
        out[split] = (torch.stack(images), torch.tensor(labels))
    return out
