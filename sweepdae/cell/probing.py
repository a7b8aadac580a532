"""The cell's probes: frozen encoder features at a fixed t (cached), linear probe, kNN; the reference baselines
(random-init encoders, raw pixels, `probe_gain`) are in `sweepdae.cell.baselines`."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from sweepdae.cell.baselines import measure_baselines, measure_random_features, probe_gain
from sweepdae.cell.features import FEATURE_BATCH, agreed, amp, encoder_feature_fn, features_of
from sweepdae.cell.folder import cache_dir
from sweepdae.data import ImageData
from sweepdae.eval import knn_probe, linear_probe, linear_probe_augmented_data
from sweepdae.models import Denoiser, Pool
from sweepdae.recipe import PAPER_PROBE_T, Recipe, probe_at
from sweepdae.tokenizers import Tokenizer
from sweepdae.utils import atomic_write

__all__ = ["FEATURES", "FEATURES_POOL2X2", "encoder_feature_fn", "probe_cell"]

FEATURES = "features.pt"
FEATURES_POOL2X2 = "features_pool2x2.pt"  # probe.pool2x2: the 2 x 2-pooled features, cached beside the mean-pooled


def probe_cell(recipe: Recipe, *, model: Denoiser, tokenizer: Tokenizer, train: ImageData, test: ImageData,
               device: torch.device, run_dir: Path, events: Callable[..., None],
               accelerator: Any = None) -> dict[str, float]:
    """Linear probe (MAE protocol) and kNN on the cell's encoder; with probe.pool2x2 also the same linear probe on
    the 2 x 2-pooled tokens (`probe_top1_pool2x2`, features cached in FEATURES_POOL2X2); with probe.baselines also
    the reference baselines (cached in `cache_dir(run_dir) / "baselines"`), `probe_gain` and the regime gate's
    untrained nonlinear reading of the tokens (`random_features_probe_top1`, cached in
    `cache_dir(run_dir) / "random_features"`; all in `sweepdae.cell.baselines`).

    Every process of the cell calls it (`accelerator`): the feature passes are sharded and gathered
    (`sweepdae.eval.probe.split_features`); every process gets the same metrics; only the main one writes files."""
    at = probe_at(recipe)
    depth = at.depth
    fn = amp(encoder_feature_fn(recipe, model, tokenizer, depth=depth, t=at.t, seed=recipe.seed), accelerator)
    pc = recipe.probe
    out: dict[str, float] = {"probe_t": float(at.t)}
    (tr_f, tr_y), (te_f, te_y) = _cached_features(run_dir / FEATURES, fn, train, test, depth=depth, t=at.t,
                                                  device=device, accelerator=accelerator)

    def progress(epoch: int, epochs: int, loss: float) -> None:
        events(phase="probe", probe_epoch=epoch, probe_epochs=epochs, probe_loss=loss)

    if pc.augment:  # MAE's probe augmentation (RandomResizedCrop 0.08-1 + flip), features recomputed per epoch
        # In-memory and streamed sets alike: the crop is taken on device from the model-size uint8 batch, loaded
        # and encoded FEATURE_BATCH images at a time (the paper profile's probe batch of 16384 256-px images would
        # be 3.2 GB per loader batch, held num_workers x 2 times over by a DataLoader's prefetch).
        out.update(linear_probe_augmented_data(fn, train, test, cfg=pc, seed=recipe.seed,
                                               feature_batch_size=FEATURE_BATCH, device=device, progress=progress,
                                               accelerator=accelerator))
    else:
        out.update(linear_probe(tr_f, tr_y, te_f, te_y, num_classes=train.num_classes, cfg=pc, seed=recipe.seed,
                                device=device, progress=progress))
    out.update(knn_probe(tr_f, tr_y, te_f, te_y, k=pc.knn_k, temperature=pc.knn_temperature,
                         num_classes=train.num_classes, accelerator=accelerator))  # test rows shared out
    if at.also_paper_t:  # a single-level model probed at its own t: the paper's t = 10 too
        fn10 = amp(encoder_feature_fn(recipe, model, tokenizer, depth=depth, t=PAPER_PROBE_T, seed=recipe.seed),
                   accelerator)
        (a_f, a_y), (b_f, b_y) = _cached_features(run_dir / f"features_t{PAPER_PROBE_T}.pt", fn10, train, test,
                                                  depth=depth, t=PAPER_PROBE_T, device=device,
                                                  accelerator=accelerator)
        out["probe_top1_t10"] = linear_probe(a_f, a_y, b_f, b_y, num_classes=train.num_classes, cfg=pc,
                                             seed=recipe.seed, device=device)["probe_top1"]
    if pc.pool2x2:  # the same probe on [B, 4C] quadrant features (the recipe refuses it with probe.augment)
        fn2 = amp(encoder_feature_fn(recipe, model, tokenizer, depth=depth, t=at.t, seed=recipe.seed,
                                     pool=Pool.quadrants), accelerator)
        (q_f, q_y), (r_f, r_y) = _cached_features(run_dir / FEATURES_POOL2X2, fn2, train, test, depth=depth, t=at.t,
                                                  device=device, accelerator=accelerator, pool=Pool.quadrants)
        out["probe_top1_pool2x2"] = linear_probe(q_f, q_y, r_f, r_y, num_classes=train.num_classes, cfg=pc,
                                                 seed=recipe.seed, device=device)["probe_top1"]
    if pc.baselines:
        out.update(measure_baselines(recipe, tokenizer=tokenizer, train=train, test=test, device=device,
                                     cache=cache_dir(run_dir) / "baselines", events=events, accelerator=accelerator,
                                     share_passes=True, at=at))
        out["probe_gain"] = probe_gain(out)
        # the regime gate's baseline (REPRODUCTION.md), cached apart from the baselines above
        out.update(measure_random_features(recipe, tokenizer=tokenizer, train=train, test=test, device=device,
                                           cache=cache_dir(run_dir) / "random_features", events=events,
                                           accelerator=accelerator))
    return out


def _cached_features(path: Path, fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], train: ImageData,
                     test: ImageData, *, depth: int, t: int, device: torch.device, accelerator: Any = None,
                     pool: Pool = Pool.mean
                     ) -> tuple[tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
    """Train and test features, from `path` when it holds those of this depth, t and pooling (for every process),
    else extracted (sharded over the processes) and saved by the main one. A mean-pooled file carries no "pool"
    entry (as files written before the 2 x 2 readout)."""
    feats: Any = None
    with contextlib.suppress(Exception):  # missing, truncated or foreign: extract again
        feats = torch.load(path, map_location="cpu", weights_only=True)  # a shared runs/ may hold a crafted file
        if not (isinstance(feats, dict) and feats.get("depth") == depth and feats.get("t") == t
                and feats.get("pool", Pool.mean.value) == pool.value):
            feats = None
    if agreed(accelerator, feats is not None):
        return feats["train"], feats["test"]
    feats = {"train": features_of(fn, train, batch_size=FEATURE_BATCH, device=device, accelerator=accelerator),
             "test": features_of(fn, test, batch_size=FEATURE_BATCH, device=device, accelerator=accelerator),
             "depth": depth, "t": t}
    if pool != Pool.mean:
        feats["pool"] = pool.value
    if accelerator is None or accelerator.is_main_process:
        atomic_write(path, lambda f: torch.save(feats, f))
    return feats["train"], feats["test"]

