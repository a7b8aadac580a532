"""Name -> builder registry of tokenizers, and the one fitting entry point shared by every tokenizer."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from sweepdae.errors import RecipeError
from sweepdae.recipe import TokenizerConfig, TokenizerName
from sweepdae.tokenizers._base import (
    TOKENIZER_VERSION,
    Progress,
    Tokenizer,
    apply_latent_scale,
    check_train_images,
    recon_mse,
    stats_sample,
)
from sweepdae.tokenizers._conv_vae import ConvVAE
from sweepdae.tokenizers._patch import PatchAE, PatchPCA, PatchVAE, PCABasis, PixelTokenizer

TokenizerBuilder = Callable[[TokenizerConfig, int, int], Tokenizer]


def _pixel(cfg: TokenizerConfig, channels: int, image_size: int) -> Tokenizer:
    return PixelTokenizer(channels=channels, image_size=image_size, patch_size=cfg.patch_size)


def _patch_pca(cfg: TokenizerConfig, channels: int, image_size: int) -> Tokenizer:
    return PatchPCA(channels=channels, image_size=image_size, patch_size=cfg.patch_size, latent_dim=cfg.latent_dim)


def _patch_ae(cfg: TokenizerConfig, channels: int, image_size: int) -> Tokenizer:
    return PatchAE(channels=channels, image_size=image_size, patch_size=cfg.patch_size, latent_dim=cfg.latent_dim)


def _patch_vae(cfg: TokenizerConfig, channels: int, image_size: int) -> Tokenizer:
    return PatchVAE(channels=channels, image_size=image_size, patch_size=cfg.patch_size, latent_dim=cfg.latent_dim,
                    kl_weight=cfg.kl_weight)


def _conv_vae(cfg: TokenizerConfig, channels: int, image_size: int) -> Tokenizer:
    return ConvVAE(channels=channels, image_size=image_size, latent_dim=cfg.latent_dim,
                   downsample=cfg.conv_downsample, group=cfg.conv_group, base_channels=cfg.conv_channels)


# Registry: recipe.TokenizerName value -> builder(cfg, channels, image_size). Grid values come from here.
TOKENIZERS: dict[str, TokenizerBuilder] = {
    TokenizerName.pixel.value: _pixel,
    TokenizerName.patch_pca.value: _patch_pca,
    TokenizerName.patch_ae.value: _patch_ae,
    TokenizerName.patch_vae.value: _patch_vae,
    TokenizerName.conv_vae.value: _conv_vae,
}

# Tokenizers with a posterior to sample (`Tokenizer.stochastic`), known before one is built: a cell gathers
# held-out images for `posterior_stats` only for these.
STOCHASTIC_TOKENIZERS = frozenset({TokenizerName.patch_vae.value, TokenizerName.conv_vae.value})


def _name(cfg: TokenizerConfig) -> str:
    name = cfg.name.value if isinstance(cfg.name, TokenizerName) else str(cfg.name)
    if name not in TOKENIZERS:
        raise RecipeError(f"tokenizer.name: unknown tokenizer {name!r}; valid: {', '.join(TOKENIZERS)}")
    return name


def create_tokenizer(cfg: TokenizerConfig, *, channels: int, image_size: int) -> Tokenizer:
    """Build the (unfitted) tokenizer `cfg.name`; RecipeError for an unknown name or impossible sizes."""
    return TOKENIZERS[_name(cfg)](cfg, channels, image_size)


def fit_tokenizer(tok: Tokenizer, images_uint8: Tensor, *, cfg: TokenizerConfig, seed: int,
                  device: torch.device | str = "cpu", progress: Progress | None = None) -> dict[str, Any]:
    """Fit `tok` in place on the train split (uint8 [N, C, H, W]) from a fresh `seed`-ed init; return fit stats.

    Steps: re-initialise parameters under `seed`; fit the tokenizer's own parameters (PCA basis / training);
    set the latent scale (`cfg.latent_scale`) on a sample of the training images (a VAE's on posterior samples
    drawn with `seed`); measure the reconstruction MSE there (through the posterior mean). The tokenizer is left
    on `device`, in eval mode, with `fitted = True`.
    """
    return fit_with_basis(tok, images_uint8, cfg=cfg, seed=seed, device=device, progress=progress, pca_basis=None)


def fit_with_basis(tok: Tokenizer, images_uint8: Tensor, *, cfg: TokenizerConfig, seed: int,
                   device: torch.device | str, progress: Progress | None, pca_basis: PCABasis | None
                   ) -> dict[str, Any]:
    """`fit_tokenizer`, optionally installing an already fitted (cached) PCA basis instead of fitting one."""
    name = _name(cfg)
    if tok.name != name:
        raise RecipeError(f"fit_tokenizer: tokenizer is {tok.name!r} but cfg.name is {name!r}")
    check_train_images(images_uint8, channels=tok.channels, image_size=tok.image_size)
    dev = torch.device(device)
    tok.to(dev)
    t0 = time.perf_counter()
    if progress is not None:
        progress({"event": "fit_start", "tokenizer": name})
    cuda = [dev.index if dev.index is not None else torch.cuda.current_device()] if dev.type == "cuda" else []
    with torch.random.fork_rng(devices=cuda):
        torch.manual_seed(seed)
        for module in tok.modules():
            reset = getattr(module, "reset_parameters", None)
            if module is not tok and callable(reset):
                reset()
        with torch.no_grad():
            tok.scale.fill_(1.0)
        if isinstance(tok, PatchPCA):
            extra = tok.fit_data(images_uint8, cfg=cfg, seed=seed, device=dev, progress=progress, basis=pca_basis)
        else:
            extra = tok.fit_data(images_uint8, cfg=cfg, seed=seed, device=dev, progress=progress)
        tok.eval()
        sample = stats_sample(images_uint8.shape[0], seed)
        scale_info = apply_latent_scale(tok, images_uint8, sample, mode=cfg.latent_scale, device=dev, seed=seed)
        mse = recon_mse(tok, images_uint8, sample, device=dev)
    tok.fitted = True
    stats: dict[str, Any] = {
        "tokenizer": name, "version": TOKENIZER_VERSION, "latent_dim": tok.latent_dim,
        "num_tokens": tok.num_tokens, "recon_mse": mse, "fit_seconds": time.perf_counter() - t0,
        "num_train_images": int(images_uint8.shape[0]), "stats_images": int(sample.numel()),
        "latent_scale": cfg.latent_scale, "scale_min": float(tok.scale.min()), "scale_max": float(tok.scale.max()),
        "num_parameters": sum(p.numel() for p in tok.parameters()), "seed": seed, **scale_info, **extra,
    }
    if progress is not None:
        progress({"event": "fit_end", "tokenizer": name, "recon_mse": mse, "seconds": stats["fit_seconds"]})
    return stats
