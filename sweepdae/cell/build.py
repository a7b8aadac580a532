"""The network of a recipe, and the precision it trains in."""

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
