"""The cell's probes: frozen encoder features at a fixed t (cached), linear probe, kNN; the reference baselines
(random-init encoders, raw pixels, `probe_gain`) are in `sweepdae.cell.baselines`."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from sweepdae.data import ImageData
from sweepdae.models import Denoiser
from sweepdae.recipe import PAPER_PROBE_T, Recipe, probe_depth, probe_t
from sweepdae.tokenizers import Tokenizer
from sweepdae.utils import atomic_write

FEATURES = "features.pt"


def encoder_feature_fn(recipe: Recipe, model: Denoiser, tokenizer: Tokenizer, *, depth: int, t: int | None = None,
                       seed: int = 0) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """x in [-1, 1] -> pooled tokens after block `depth`, the encoder conditioned on time step `t` (default: the
    recipe's resolved probe t; paper Sec. 4: clean input, t = 10).

    Class-conditional models get the null label, so the probe never sees the true class through the input.
    """
    from sweepdae.noise import create_schedule
    from sweepdae.objectives import make_model_input

    schedule = create_schedule(recipe.noise.schedule.value, recipe.noise.num_steps)
    at = probe_t(recipe) if t is None else t
    gen: dict[str, torch.Generator] = {}

    def fn(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        z0 = tokenizer.encode(x)  # [B, N, d]
        t = torch.full((x.shape[0],), at, device=x.device, dtype=torch.long)
        if recipe.probe.noisy_input:
            g = gen.setdefault("g", torch.Generator(device=x.device).manual_seed(seed))
            noise = torch.randn(z0.shape, device=x.device, generator=g)
        else:
            noise = torch.zeros_like(z0)
        xt = schedule.add_noise(z0, t, noise)
        inp = make_model_input(xt, tokenizer=tokenizer, objective=recipe.objective)
        return model.features(inp, t, None, depth=depth)  # [B, width]; y=None: the null class

    return fn


def amp(fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], accelerator: Any
        ) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """`fn` under the training's mixed precision (bf16 where training used it: Accelerator.autocast)."""
    if accelerator is None:
        return fn

    def run(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        with accelerator.autocast():
            return fn(x, y)

    return run


def agreed(accelerator: Any, flag: bool) -> bool:
    """True when every process says so (one all-reduce when there are several): a cache hit every process shares,
    so that none skips a collective feature pass the others run."""
    if accelerator is None or accelerator.num_processes == 1:
        return flag
    t = torch.tensor([0.0 if flag else 1.0], device=accelerator.device)
    return bool(accelerator.reduce(t, reduction="sum").item() == 0)


def probe_cell(recipe: Recipe, *, model: Denoiser, tokenizer: Tokenizer, train: ImageData, test: ImageData,
               device: torch.device, run_dir: Path, events: Callable[..., None],
               accelerator: Any = None) -> dict[str, float]:
    """Linear probe (MAE protocol) and kNN on the cell's encoder; with probe.baselines also the reference baselines
    (cached in `cache_dir(run_dir) / "baselines"`), `probe_gain` and the regime gate's untrained nonlinear reading
    of the tokens (`random_features_probe_top1`, cached in `cache_dir(run_dir) / "random_features"`; all in
    `sweepdae.cell.baselines`).

    Every process of the cell calls it (`accelerator`): the feature passes are sharded and gathered
    (`sweepdae.eval.probe.split_features`); every process gets the same metrics; only the main one writes files."""
    from sweepdae.cell import cache_dir
    from sweepdae.cell.baselines import measure_baselines, measure_random_features, probe_gain
    from sweepdae.eval import knn_probe, linear_probe, linear_probe_augmented_data

    depth, at = probe_depth(recipe), probe_t(recipe)
    fn = amp(encoder_feature_fn(recipe, model, tokenizer, depth=depth, t=at, seed=recipe.seed), accelerator)
    pc = recipe.probe
    out: dict[str, float] = {"probe_t": float(at)}
    (tr_f, tr_y), (te_f, te_y) = _cached_features(run_dir / FEATURES, fn, train, test, depth=depth, t=at,
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
    if pc.t < 0 and at != PAPER_PROBE_T:  # a single-level model probed at its own t: the paper's t = 10 too
        fn10 = amp(encoder_feature_fn(recipe, model, tokenizer, depth=depth, t=PAPER_PROBE_T, seed=recipe.seed),
                   accelerator)
        (a_f, a_y), (b_f, b_y) = _cached_features(run_dir / f"features_t{PAPER_PROBE_T}.pt", fn10, train, test,
                                                  depth=depth, t=PAPER_PROBE_T, device=device,
                                                  accelerator=accelerator)
        out["probe_top1_t10"] = linear_probe(a_f, a_y, b_f, b_y, num_classes=train.num_classes, cfg=pc,
                                             seed=recipe.seed, device=device)["probe_top1"]
    if pc.baselines:
        out.update(measure_baselines(recipe, tokenizer=tokenizer, train=train, test=test, device=device,
                                     cache=cache_dir(run_dir) / "baselines", events=events, accelerator=accelerator,
                                     share_passes=True))
        out["probe_gain"] = probe_gain(out)
        # the regime gate's baseline (REPRODUCTION.md), cached apart from the baselines above
        out.update(measure_random_features(recipe, tokenizer=tokenizer, train=train, test=test, device=device,
                                           cache=cache_dir(run_dir) / "random_features", events=events,
                                           accelerator=accelerator))
    return out


def _cached_features(path: Path, fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], train: ImageData,
                     test: ImageData, *, depth: int, t: int, device: torch.device, accelerator: Any = None
                     ) -> tuple[tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
    """Train and test features, from `path` when it holds those of this depth and t (for every process), else
    extracted (sharded over the processes) and saved by the main one."""
    feats: Any = None
    with contextlib.suppress(Exception):  # missing, truncated or foreign: extract again
        feats = torch.load(path, map_location="cpu", weights_only=True)  # a shared runs/ may hold a crafted file
        if not (isinstance(feats, dict) and feats.get("depth") == depth and feats.get("t") == t):
            feats = None
    if agreed(accelerator, feats is not None):
        return feats["train"], feats["test"]
    feats = {"train": features_of(fn, train, batch_size=FEATURE_BATCH, device=device, accelerator=accelerator),
             "test": features_of(fn, test, batch_size=FEATURE_BATCH, device=device, accelerator=accelerator),
             "depth": depth, "t": t}
    if accelerator is None or accelerator.is_main_process:
        atomic_write(path, lambda f: torch.save(feats, f))
    return feats["train"], feats["test"]


FEATURE_BATCH = 512


def features_of(fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], data: ImageData, *, batch_size: int,
                device: torch.device, accelerator: Any = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Features of a whole split, in order (CPU float32 [N, F], int64 [N]), batch by batch: in-memory and
    streamed sets alike; sharded over the processes of `accelerator` and gathered (`split_features`)."""
    from sweepdae.eval.probe import split_features

    return split_features(fn, data, batch_size=batch_size, device=device, accelerator=accelerator)
