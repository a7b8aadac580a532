"""DiT building blocks (facebookresearch/DiT `models.py`) on timm layers: embedders, the adaLN block, the final layer.

Initialisation lives in one place, `Denoiser.initialize_weights`, not here.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from timm.layers import GELUTanh, Mlp
from timm.models.vision_transformer import Attention
from torch import nn

# DiT `TimestepEmbedder`: 256 sinusoidal frequencies, max period 10000 (as the Transformer's positional code).
FREQUENCY_EMBEDDING_SIZE = 256
MAX_PERIOD = 10000
# DiT / ViT: MLP hidden = 4 x width; LayerNorm eps 1e-6 without affine parameters (adaLN provides them).
MLP_RATIO = 4.0
LN_EPS = 1e-6


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """adaLN: x [B, N, C] scaled and shifted per sample by shift, scale [B, C] (DiT `modulate`), in one fused
    kernel (addcmul; BENCHMARKS.md: ~5% of a micro DiT step on the CPU)."""
    return torch.addcmul(shift.unsqueeze(1), x, 1 + scale.unsqueeze(1))


def linear_at(seq: nn.Sequential, index: int) -> nn.Linear:
    """seq[index], checked to be a Linear (for typed access in init code)."""
    layer = seq[index]
    if not isinstance(layer, nn.Linear):
        raise TypeError(f"expected a Linear at index {index}, got {type(layer).__name__}")
    return layer


class TimestepEmbedder(nn.Module):
    """Scalar time steps -> sinusoidal features -> two-layer MLP (DiT)."""

    def __init__(self, hidden_size: int, frequency_embedding_size: int = FREQUENCY_EMBEDDING_SIZE) -> None:
        super().__init__()
        self.mlp = nn.Sequential(
            nn.Linear(frequency_embedding_size, hidden_size, bias=True),
            nn.SiLU(),
            nn.Linear(hidden_size, hidden_size, bias=True),
        )
        self.frequency_embedding_size = frequency_embedding_size

    @staticmethod
    def timestep_embedding(t: torch.Tensor, dim: int, max_period: int = MAX_PERIOD) -> torch.Tensor:
        """t [B] (int or float, may be fractional) -> [B, dim] cos/sin features (GLIDE / DiT)."""
        half = dim // 2
        freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
        args = t[:, None].float() * freqs[None]  # [B, half]
        embedding = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)  # [B, 2*half]
        if dim % 2:
            embedding = torch.cat([embedding, torch.zeros_like(embedding[:, :1])], dim=-1)  # [B, dim]
        return embedding

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        t_freq = self.timestep_embedding(t, self.frequency_embedding_size)  # [B, F]
        return self.mlp(t_freq.to(linear_at(self.mlp, 0).weight.dtype))  # [B, C]


class LabelEmbedder(nn.Module):
    """Class labels -> vectors, with label dropout to a learned null class for classifier-free guidance (DiT)."""

    def __init__(self, num_classes: int, hidden_size: int, dropout_prob: float) -> None:
        super().__init__()
        use_cfg_embedding = int(dropout_prob > 0)  # one extra row: the null class, index num_classes
        self.embedding_table = nn.Embedding(num_classes + use_cfg_embedding, hidden_size)
        self.num_classes = num_classes
        self.dropout_prob = dropout_prob

    @property
    def has_null_class(self) -> bool:
        return self.dropout_prob > 0

    def token_drop(self, labels: torch.Tensor, force_drop_ids: torch.Tensor | None = None) -> torch.Tensor:
        """Replace labels by the null class, at random (prob dropout_prob) or where force_drop_ids == 1."""
        if force_drop_ids is None:
            drop_ids = torch.rand(labels.shape[0], device=labels.device) < self.dropout_prob
        else:
            drop_ids = force_drop_ids.to(labels.device) == 1
        return torch.where(drop_ids, torch.full_like(labels, self.num_classes), labels)

    def forward(self, labels: torch.Tensor, train: bool, force_drop_ids: torch.Tensor | None = None) -> torch.Tensor:
        if (train and self.dropout_prob > 0) or force_drop_ids is not None:
            labels = self.token_drop(labels, force_drop_ids)  # [B]
        return self.embedding_table(labels)  # [B, C]


def make_modulation(width: int, num_chunks: int, cond_mlp_ratio: float) -> nn.Sequential:
    """The adaLN conditioning MLP: c [B, C] -> [B, num_chunks * C].

    cond_mlp_ratio == 1: DiT's SiLU -> Linear(C, k C). Otherwise SiLU -> Linear(C, h) -> SiLU -> Linear(h, k C) with
    h = round(ratio x C), the l-DAE shrink of the per-block conditioning MLP (paper: h = C/4). The last Linear is
    always `[-1]`, which adaLN-Zero zero-initialises.
    """
    if cond_mlp_ratio == 1.0:
        return nn.Sequential(nn.SiLU(), nn.Linear(width, num_chunks * width, bias=True))
    hidden = max(1, round(cond_mlp_ratio * width))
    return nn.Sequential(nn.SiLU(), nn.Linear(width, hidden, bias=True), nn.SiLU(),
                         nn.Linear(hidden, num_chunks * width, bias=True))


class DiTBlock(nn.Module):
    """Transformer block with adaLN(-Zero) conditioning: shift/scale/gate for attention and for the MLP (DiT)."""

    def __init__(self, width: int, heads: int, *, mlp_ratio: float = MLP_RATIO, cond_mlp_ratio: float = 1.0,
                 fused_attn: bool = True) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(width, elementwise_affine=False, eps=LN_EPS)
        self.attn = Attention(width, num_heads=heads, qkv_bias=True)  # DiT: qkv_bias=True
        self.attn.fused_attn = fused_attn  # type: ignore[misc]  # timm picks scaled_dot_product_attention when True
        self.norm2 = nn.LayerNorm(width, elementwise_affine=False, eps=LN_EPS)
        # DiT: tanh-approximated GELU, no dropout
        self.mlp = Mlp(in_features=width, hidden_features=int(width * mlp_ratio), act_layer=GELUTanh, drop=0.0)
        self.adaLN_modulation = make_modulation(width, 6, cond_mlp_ratio)

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        mod = self.adaLN_modulation(c)  # [B, 6C]
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = mod.chunk(6, dim=1)  # 6 x [B, C]
        # x + gate * f(...), fused (addcmul)
        x = torch.addcmul(x, gate_msa.unsqueeze(1), self.attn(modulate(self.norm1(x), shift_msa, scale_msa)))
        x = torch.addcmul(x, gate_mlp.unsqueeze(1), self.mlp(modulate(self.norm2(x), shift_mlp, scale_mlp)))
        return x


class FinalLayer(nn.Module):
    """adaLN-modulated LayerNorm then a per-token Linear to the output dimension (DiT)."""

    def __init__(self, width: int, out_dim: int) -> None:
        super().__init__()
        self.norm_final = nn.LayerNorm(width, elementwise_affine=False, eps=LN_EPS)
        self.linear = nn.Linear(width, out_dim, bias=True)
        # DiT's single SiLU + Linear; the l-DAE shrink is described for the blocks only (paper Sec. 4.1).
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(width, 2 * width, bias=True))

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift, scale = self.adaLN_modulation(c).chunk(2, dim=1)  # 2 x [B, C]
        x = modulate(self.norm_final(x), shift, scale)  # [B, N, C]
        return self.linear(x)  # [B, N, out_dim]


# -- fixed 2-D sin-cos positional embedding (MAE `util/pos_embed.py`, used by DiT) ----------------------------
def get_2d_sincos_pos_embed(embed_dim: int, grid_size: int) -> np.ndarray:
    """[grid_size^2, embed_dim] float64: half the channels encode the row, half the column (MAE / DiT)."""
    grid_h = np.arange(grid_size, dtype=np.float32)
    grid_w = np.arange(grid_size, dtype=np.float32)
    grid = np.stack(np.meshgrid(grid_w, grid_h), axis=0)  # [2, G, G]; w goes first, as MAE
    grid = grid.reshape([2, 1, grid_size, grid_size])
    return get_2d_sincos_pos_embed_from_grid(embed_dim, grid)


def get_2d_sincos_pos_embed_from_grid(embed_dim: int, grid: np.ndarray) -> np.ndarray:
    if embed_dim % 2:
        raise ValueError(f"the 2-D sin-cos embedding needs an even dimension, got {embed_dim}")
    emb_h = get_1d_sincos_pos_embed_from_grid(embed_dim // 2, grid[0])  # [G*G, D/2]
    emb_w = get_1d_sincos_pos_embed_from_grid(embed_dim // 2, grid[1])  # [G*G, D/2]
    return np.concatenate([emb_h, emb_w], axis=1)  # [G*G, D]


def get_1d_sincos_pos_embed_from_grid(embed_dim: int, pos: np.ndarray) -> np.ndarray:
    if embed_dim % 2:
        raise ValueError(f"the 1-D sin-cos embedding needs an even dimension, got {embed_dim}")
    omega = np.arange(embed_dim // 2, dtype=np.float64)
    omega /= embed_dim / 2.0
    omega = 1.0 / MAX_PERIOD ** omega  # [D/2]; Transformer's 10000
    out = np.einsum("m,d->md", pos.reshape(-1), omega)  # [M, D/2]
    return np.concatenate([np.sin(out), np.cos(out)], axis=1)  # [M, D]
