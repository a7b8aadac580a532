"""The untrained nonlinear reading of a cell's tokens: the regime gate's baseline (`random_features_probe_top1`,
REPRODUCTION.md, "The regime gate and seeds until decided").

One per-token ReLU layer of the model's width, untrained, with a random position code, mean-pooled over tokens:

    features(x) = mean_n ReLU((x_n + p_n) W),   W ~ N(0, 1/D) of shape [D, width],   p_n ~ N(0, 1) of shape [D]

for tokens x of shape [B, N, D] (the encoder's input tokens: the cell's tokenizer, then what the model's input layer
reads). Why this map: adaLN-Zero makes the cell's random-init encoder the mean of a *linear* map of its tokens
(`baselines.py`), so `probe_gain` partly measures "became nonlinear"; this map is nonlinear per token and nothing
else, which is the least an encoder must beat to have learned more than re-reading its tokens.
- W's scale is fan-in (1/D, as the default init of a linear layer on D inputs up to a constant), so x W keeps the
  tokens' per-coordinate scale;
- the position code is added in token space before the layer, so each position has its own ReLU thresholds
  (W p_n acts as a per-position bias): the pooled features keep where a pattern was, as the encoder's position
  embedding lets it (DiT models.py adds its fixed sin-cos code after the patch embedding; a random code here, as
  nothing is trained to read a structured one);
- no bias besides the position code.

The draws come from a CPU `torch.Generator` in float32 (W first, then the codes), so the features are the same on
every device; the map runs in float32 on the tokens' device, whatever autocast is active.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from sweepdae.errors import SweepdaeError

__all__ = ["RandomFeatures", "RandomFeaturesError", "draw_random_features", "random_features"]


class RandomFeaturesError(SweepdaeError):
    """Tokens that do not fit the drawn layer (another token count or dimension), or an empty layer."""


@dataclass(frozen=True)
class RandomFeatures:
    """The untrained layer's draws: `weight` [D, width] and the position code `position` [N, D]."""

    weight: torch.Tensor
    position: torch.Tensor


def draw_random_features(tokens: int, dim: int, width: int, generator: torch.Generator) -> RandomFeatures:
    """Draw W ~ N(0, 1/dim) [dim, width], then the position code ~ N(0, 1) [tokens, dim], from `generator` (CPU)."""
    if min(tokens, dim, width) < 1:
        raise RandomFeaturesError(f"random features need tokens, dim and width >= 1, got {tokens}, {dim}, {width}")
    weight = torch.randn(dim, width, generator=generator, dtype=torch.float32) / dim ** 0.5
    position = torch.randn(tokens, dim, generator=generator, dtype=torch.float32)
    return RandomFeatures(weight=weight, position=position)


def random_features(x: torch.Tensor, draws: RandomFeatures) -> torch.Tensor:
    """Tokens [B, N, D] -> mean over tokens of ReLU((x_n + p_n) W): [B, width], float32."""
    if x.ndim != 3 or tuple(x.shape[1:]) != tuple(draws.position.shape):
        raise RandomFeaturesError(f"tokens of shape [B, {', '.join(map(str, draws.position.shape))}] expected, got "
                         f"{list(x.shape)}")
    with torch.autocast(device_type=x.device.type, enabled=False):
        w, p = draws.weight.to(x.device), draws.position.to(x.device)
        h = torch.relu((x.float() + p) @ w)  # [B, N, width]
        return h.mean(dim=1)  # [B, width]
