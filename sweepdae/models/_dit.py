"""The denoiser: a DiT (facebookresearch/DiT `models.py`) on pre-patchified tokens; sizes by name (the table,
`MODEL_SIZES`, lives in the torch-free `sweepdae.recipe`)."""

from __future__ import annotations

import math
from enum import Enum

import torch
from torch import nn

from sweepdae.errors import RecipeError
from sweepdae.models._layers import (
    MLP_RATIO,
    DiTBlock,
    FinalLayer,
    LabelEmbedder,
    TimestepEmbedder,
    get_2d_sincos_pos_embed,
    linear_at,
)
from sweepdae.recipe import MODEL_SIZES, ModelSize, ModelSpec, suggest

# DiT: labels are dropped to the null class with probability 0.1 while training (classifier-free guidance).
CLASS_DROPOUT = 0.1
# DiT `initialize_weights`: embedding tables and the timestep MLP start from N(0, 0.02^2).
EMBED_INIT_STD = 0.02


class Pool(str, Enum):
    """How `Denoiser.features` pools the token grid into one vector per image."""

    mean = "mean"  # all tokens averaged, [B, C]: the paper's linear probe (MAE's global pool)
    quadrants = "2x2"  # each of the 2 x 2 spatial quadrants averaged, concatenated, [B, 4C]


def model_names() -> list[str]:
    return list(MODEL_SIZES)


def get_model_spec(size: str | ModelSize) -> ModelSpec:
    key = size.value if isinstance(size, ModelSize) else str(size)
    spec = MODEL_SIZES.get(key)
    if spec is None:
        raise RecipeError(f"unknown model size {key!r}{suggest(key, MODEL_SIZES)}; valid: " + ", ".join(MODEL_SIZES))
    return spec


class Denoiser(nn.Module):
    """DiT denoiser on tokens [B, N, in_dim] -> [B, N, out_dim], conditioned on t (and a class label if any)."""

    def __init__(self, *, in_dim: int, out_dim: int, num_tokens: int, width: int, depth: int, heads: int,
                 num_classes: int = 0, cond_mlp_ratio: float = 1.0, adaln_zero: bool = True, encoder_depth: int = 0,
                 fused_attn: bool = True, class_dropout: float = CLASS_DROPOUT) -> None:
        super().__init__()
        grid = math.isqrt(num_tokens)
        if num_tokens <= 0 or grid * grid != num_tokens:
            raise ValueError(f"num_tokens must be a positive square (a G x G token grid), got {num_tokens}")
        if width % heads or width % 4:
            raise ValueError(f"width ({width}) must be divisible by heads ({heads}) and by 4 (2-D sin-cos code)")
        if depth < 2:
            raise ValueError(f"depth must be >= 2 (encoder + decoder), got {depth}")
        encoder_depth = encoder_depth or depth // 2  # paper: the first half of the blocks
        if not 0 < encoder_depth < depth:
            raise ValueError(f"encoder_depth must be in 1..{depth - 1}, got {encoder_depth}")
        if num_classes < 0 or not 0.0 <= class_dropout < 1.0 or cond_mlp_ratio <= 0:
            raise ValueError("need num_classes >= 0, 0 <= class_dropout < 1 and cond_mlp_ratio > 0")
        self.in_dim, self.out_dim, self.num_tokens = in_dim, out_dim, num_tokens
        self.width, self.depth, self.heads = width, depth, heads
        self.num_classes, self.encoder_depth = num_classes, encoder_depth
        self.cond_mlp_ratio, self.adaln_zero = cond_mlp_ratio, adaln_zero

        # Tokenizers already patchify, so the token embedding is a Linear (DiT's PatchEmbed conv on p x p patches).
        self.x_embedder = nn.Linear(in_dim, width, bias=True)
        self.t_embedder = TimestepEmbedder(width)
        # Unconditional models have no label embedder at all (the conditioning is t only).
        self.y_embedder = LabelEmbedder(num_classes, width, class_dropout) if num_classes else None
        # Fixed sin-cos code, recomputed from (width, num_tokens) so it is not saved (DiT: a frozen Parameter).
        pos = torch.tensor(get_2d_sincos_pos_embed(width, grid), dtype=torch.float32).unsqueeze(0)  # [1, N, C]
        self.register_buffer("pos_embed", pos, persistent=False)
        self.pos_embed: torch.Tensor
        self.blocks = nn.ModuleList([
            DiTBlock(width, heads, mlp_ratio=MLP_RATIO, cond_mlp_ratio=cond_mlp_ratio, fused_attn=fused_attn)
            for _ in range(depth)
        ])
        self.final_layer = FinalLayer(width, out_dim)
        self.initialize_weights()

    def initialize_weights(self) -> None:
        """All initialisation, as DiT: xavier Linears, N(0, 0.02) embeddings, adaLN-Zero when `adaln_zero`."""
        def _basic_init(module: nn.Module) -> None:
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                if module.bias is not None:
                    nn.init.constant_(module.bias, 0)

        self.apply(_basic_init)  # includes x_embedder, which DiT initialises like a Linear too
        if self.y_embedder is not None:
            nn.init.normal_(self.y_embedder.embedding_table.weight, std=EMBED_INIT_STD)
        nn.init.normal_(linear_at(self.t_embedder.mlp, 0).weight, std=EMBED_INIT_STD)
        nn.init.normal_(linear_at(self.t_embedder.mlp, 2).weight, std=EMBED_INIT_STD)
        if self.adaln_zero:
            # Every block starts as the identity and the output as zero (DiT Sec. 3.2 "adaLN-Zero").
            modulations = [block.adaLN_modulation for block in self.blocks] + [self.final_layer.adaLN_modulation]
            for modulation in modulations:
                assert isinstance(modulation, nn.Sequential)
                last = linear_at(modulation, -1)
                nn.init.constant_(last.weight, 0)
                nn.init.constant_(last.bias, 0)
            nn.init.constant_(self.final_layer.linear.weight, 0)
            nn.init.constant_(self.final_layer.linear.bias, 0)

    # -- conditioning and trunk ----------------------------------------------------------------------------
    def condition(self, t: torch.Tensor, y: torch.Tensor | None = None,
                  force_drop_ids: torch.Tensor | None = None) -> torch.Tensor:
        """c = t embedding (+ label embedding), [B, C].

        For a class-conditional model y = None means the null class (the unconditional branch learned through
        label dropout; used e.g. by the linear probe, which must not see labels). Unconditional models ignore y.
        """
        c = self.t_embedder(t)  # [B, C]
        if self.y_embedder is None:
            return c
        if y is None:
            if not self.y_embedder.has_null_class:
                raise ValueError("this class-conditional model has no null class (class_dropout = 0): pass y")
            y = torch.full((t.shape[0],), self.num_classes, dtype=torch.long, device=t.device)  # [B]
        return c + self.y_embedder(y, self.training, force_drop_ids)  # [B, C]

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 3 or x.shape[1:] != (self.num_tokens, self.in_dim):
            raise ValueError(f"expected x of shape [B, {self.num_tokens}, {self.in_dim}], got {tuple(x.shape)}")
        return self.x_embedder(x) + self.pos_embed.to(x.dtype)  # [B, N, C]

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None, *,
                force_drop_ids: torch.Tensor | None = None) -> torch.Tensor:
        """x [B, N, in_dim], t [B] (long or float), y [B] long or None -> [B, N, out_dim]."""
        h = self.embed(x)  # [B, N, C]
        c = self.condition(t, y, force_drop_ids)  # [B, C]
        for block in self.blocks:
            h = block(h, c)  # [B, N, C]
        return self.final_layer(h, c)  # [B, N, out_dim]

    def forward_with_cfg(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor, cfg_scale: float) -> torch.Tensor:
        """Classifier-free guidance (DiT): out_uncond + s (out_cond - out_uncond), [B, N, out_dim].

        Unlike DiT, x is not pre-doubled: the conditional and null-class halves are built here. The whole output is
        guided (DiT guides only the eps channels because it also learns a variance); eps and clean-data
        predictions are affine in each other at fixed x_t, so guiding either is the same.
        """
        if self.y_embedder is None or not self.y_embedder.has_null_class:
            raise ValueError("guidance needs a class-conditional model with a null class (class_dropout > 0)")
        b = x.shape[0]
        xx = torch.cat([x, x], dim=0)  # [2B, N, in_dim]
        tt = torch.cat([t, t], dim=0)  # [2B]
        yy = torch.cat([y, y], dim=0)  # [2B]
        drop = torch.cat([torch.zeros(b, dtype=torch.long, device=x.device),
                          torch.ones(b, dtype=torch.long, device=x.device)])  # [2B]: second half -> null class
        out = self.forward(xx, tt, yy, force_drop_ids=drop)  # [2B, N, out_dim]
        cond, uncond = out[:b], out[b:]  # 2 x [B, N, out_dim]
        return uncond + cfg_scale * (cond - uncond)  # [B, N, out_dim]

    def features(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None, *,
                 depth: int | None = None, pool: Pool | str = Pool.mean) -> torch.Tensor:
        """Pooled tokens after block `depth` (default: the encoder's last): [B, C] averaged over all tokens
        (`Pool.mean`), or [B, 4C] for `Pool.quadrants` ("2x2").

        Runs only the first `depth` blocks: the frozen encoder of the linear probe (paper: block 12 of 24).
        "2x2" views the tokens as their G x G raster grid, splits rows and columns at ceil(G / 2) (a 7 x 7 grid
        gives quadrants of 4 x 4, 4 x 3, 3 x 4 and 3 x 3 tokens), averages each quadrant and concatenates them
        in the order top-left, top-right, bottom-left, bottom-right.
        """
        pool = Pool(pool)
        depth = self.encoder_depth if depth is None else depth
        if not 0 <= depth <= self.depth:
            raise ValueError(f"depth must be in 0..{self.depth}, got {depth}")
        g = math.isqrt(self.num_tokens)
        if pool == Pool.quadrants and g < 2:
            raise ValueError(f"2 x 2 pooling needs a token grid of at least 2 x 2, got {g} x {g}")
        h = self.embed(x)  # [B, N, C]
        c = self.condition(t, y)  # [B, C]
        for block in self.blocks[:depth]:
            h = block(h, c)  # [B, N, C]
        if pool == Pool.mean:
            return h.mean(dim=1)  # [B, C]
        s = (g + 1) // 2  # ceil(G / 2): the top rows and left columns take the odd one
        grid = h.reshape(h.shape[0], g, g, h.shape[2])  # [B, G, G, C], tokens in raster order
        halves = (slice(0, s), slice(s, g))
        quads = [grid[:, rows, cols].mean(dim=(1, 2)) for rows in halves for cols in halves]  # 4 x [B, C]
        return torch.cat(quads, dim=1)  # [B, 4C]


def create_model(size: str | ModelSize, *, in_dim: int, out_dim: int, num_tokens: int, num_classes: int = 0,
                 cond_mlp_ratio: float = 1.0, adaln_zero: bool = True, encoder_depth: int = 0,
                 fused_attn: bool = True, class_dropout: float = CLASS_DROPOUT) -> Denoiser:
    """Build the named size (`MODEL_SIZES`); encoder_depth 0 = half the blocks."""
    spec = get_model_spec(size)
    return Denoiser(in_dim=in_dim, out_dim=out_dim, num_tokens=num_tokens, width=spec.width, depth=spec.depth,
                    heads=spec.heads, num_classes=num_classes, cond_mlp_ratio=cond_mlp_ratio, adaln_zero=adaln_zero,
                    encoder_depth=encoder_depth, fused_attn=fused_attn, class_dropout=class_dropout)
