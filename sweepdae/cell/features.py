"""Frozen features of a cell's networks, shared by its probe (`sweepdae.cell.probing`) and its baselines
(`sweepdae.cell.baselines`): the encoder's pooled tokens at a fixed t, mixed precision, one split's features
sharded over the processes, and the one all-reduce that makes a cache hit every process's."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from sweepdae.data import ImageData
from sweepdae.eval.probe import split_features
from sweepdae.models import Denoiser, Pool
from sweepdae.noise import schedule_for
from sweepdae.objectives import make_model_input
from sweepdae.recipe import Recipe, probe_t
from sweepdae.tokenizers import Tokenizer

__all__ = ["FEATURE_BATCH", "agreed", "amp", "encoder_feature_fn", "features_of"]

FEATURE_BATCH = 512


def encoder_feature_fn(recipe: Recipe, model: Denoiser, tokenizer: Tokenizer, *, depth: int, t: int | None = None,
                       seed: int = 0, pool: Pool | str = Pool.mean
                       ) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """x in [-1, 1] -> pooled tokens after block `depth` ([B, width] mean-pooled, [B, 4 width] for "2x2": see
    `Denoiser.features`), the encoder conditioned on time step `t` (default: the recipe's resolved probe t; paper
    Sec. 4: clean input, t = 10).

    Class-conditional models get the null label, so the probe never sees the true class through the input.
    """
    schedule = schedule_for(recipe.noise)
    at = probe_t(recipe) if t is None else t
    pool = Pool(pool)
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
        return model.features(inp, t, None, depth=depth, pool=pool)  # [B, F]; y=None: the null class

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


def features_of(fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], data: ImageData, *, batch_size: int,
                device: torch.device, accelerator: Any = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Features of a whole split, in order (CPU float32 [N, F], int64 [N]), batch by batch: in-memory and
    streamed sets alike; sharded over the processes of `accelerator` and gathered (`split_features`)."""
    return split_features(fn, data, batch_size=batch_size, device=device, accelerator=accelerator)
