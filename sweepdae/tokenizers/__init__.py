"""Tokenizers: images [B, C, H, W] in [-1, 1] <-> tokens [B, N, d] (paper Sec. 4.2, Tab. 2, Fig. 5).

A name -> builder registry (`TOKENIZERS`, names = recipe.TokenizerName values); `create_tokenizer` builds an
unfitted one, `fit_tokenizer` fits it in place, `get_tokenizer` fits once per (data, knobs, seed) and caches it
on disk for every cell that asks.

Latent scaling (`tokenizer.latent_scale`): after fitting, each tokenizer's latents are divided by `scale` so that
they have unit second moment on the training data: by one scalar for the whole latent ("global", the default, as
LDM's `scale_factor`; patch PCA stays V and V^T as the paper has it, every component keeping its own variance
against one sigma), per dim ("per_dim", the whitening ablation) or not at all ("none").

VAEs (`STOCHASTIC_TOKENIZERS`): `encode` is the posterior mean (probing, figures); `encode_sample` a posterior
sample, what the denoiser trains on and the scale is measured on (DiT / LDM); `posterior_stats` measures the
posterior std per dim and the KL per token on held-out images.
"""

from sweepdae.tokenizers._base import (
    LATENT_SCALE_MODES,
    TOKENIZER_VERSION,
    PatchTokenizer,
    Tokenizer,
    gaussian_kl,
    patchify,
    posterior_stats,
    sample_posterior,
    unpatchify,
)
from sweepdae.tokenizers._cache import (
    RELEVANT_KNOBS,
    TokenizerCacheWarning,
    get_tokenizer,
    pca_basis_key,
    tokenizer_key,
)
from sweepdae.tokenizers._conv_vae import ConvVAE
from sweepdae.tokenizers._losses import ConvVAELoss, PatchGANDiscriminator, build_conv_vae_loss
from sweepdae.tokenizers._patch import PatchAE, PatchPCA, PatchVAE, PCABasis, PixelTokenizer, fit_pca_basis
from sweepdae.tokenizers._perceptual import PERCEPTUAL_NETS, create_perceptual
from sweepdae.tokenizers._registry import STOCHASTIC_TOKENIZERS, TOKENIZERS, create_tokenizer, fit_tokenizer

__all__ = [
    "LATENT_SCALE_MODES", "PERCEPTUAL_NETS", "RELEVANT_KNOBS", "STOCHASTIC_TOKENIZERS", "TOKENIZERS",
    "TOKENIZER_VERSION",
    "ConvVAE", "ConvVAELoss", "PCABasis", "PatchAE", "PatchGANDiscriminator", "PatchPCA", "PatchTokenizer",
    "PatchVAE", "PixelTokenizer", "Tokenizer", "TokenizerCacheWarning",
    "build_conv_vae_loss", "create_perceptual", "create_tokenizer", "fit_pca_basis", "fit_tokenizer",
    "gaussian_kl", "get_tokenizer", "pca_basis_key", "patchify", "posterior_stats", "sample_posterior",
    "tokenizer_key", "unpatchify",
]
