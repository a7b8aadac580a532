"""The network of a recipe, the precision it trains in, and the seeds of its training's random streams."""

from __future__ import annotations

import torch

from sweepdae.models import Denoiser, create_model
from sweepdae.objectives import model_io_dims
from sweepdae.recipe import Precision, Recipe
from sweepdae.tokenizers import Tokenizer


def mixed_precision(precision: Precision, device: torch.device) -> str:
    """Accelerate's mixed_precision for a recipe's precision on this device."""
    if precision == Precision.auto:
        return "bf16" if device.type == "cuda" else "no"  # bf16 measured ~14x slower than fp32 on a 2-core CPU
    return {"fp32": "no", "bf16": "bf16", "fp16": "fp16"}[precision.value]


def build_model(recipe: Recipe, tokenizer: Tokenizer, num_classes: int, *, adaln_zero: bool | None = None
                ) -> Denoiser:
    """The recipe's DiT-style denoiser for this tokenizer (inputs and outputs sized by the objective).

    `adaln_zero` overrides `model.adaln_zero` (the probe's random-init baseline builds both kinds)."""
    in_dim, out_dim = model_io_dims(tokenizer=tokenizer, objective=recipe.objective)
    return create_model(recipe.model.size.value, in_dim=in_dim, out_dim=out_dim, num_tokens=tokenizer.num_tokens,
                        num_classes=num_classes if recipe.model.class_cond else 0,
                        cond_mlp_ratio=recipe.model.cond_mlp_ratio,
                        adaln_zero=recipe.model.adaln_zero if adaln_zero is None else adaln_zero,
                        fused_attn=recipe.model.fused_attn, class_dropout=recipe.model.class_dropout)


# A training's random streams, from its recipe's seed (fixed: a change reorders every training's data). Epoch e's
# data order is drawn from order_seed(seed, e) (a streamed set's sampler adds e to order_seed(seed) itself), its
# time steps, noise and posterior samples from step_seed(seed, e), a stream apart from the order's.
SEED_STRIDE = 100_003  # prime: the streams of seeds s and s + 1 meet only after 100,003 epochs
STEP_STREAM = 7919  # prime: the step generator's offset from the data order's


def order_seed(seed: int, epoch: int = 0) -> int:
    """Seed of epoch `epoch`'s data order."""
    return seed * SEED_STRIDE + epoch


def step_seed(seed: int, epoch: int) -> int:
    """Seed of epoch `epoch`'s step generator (time steps, noise, a VAE's posterior draws)."""
    return order_seed(seed, epoch) + STEP_STREAM
