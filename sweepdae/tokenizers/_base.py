"""The tokenizer contract, image <-> patch reshapes, batching of uint8 images, and latent scaling.

Every tokenizer maps images [B, C, H, W] in [-1, 1] to N tokens of d values in raster order and back. A
tokenizer's latents are divided by a buffer `scale` [d] on the way in and multiplied on the way out, so that
the noise level sigma of the diffusion means the same for every tokenizer (the paper does not say how its
latents are normalised; LDM divides its latents by one global std, `scale_factor`).

VAE tokenizers (`stochastic = True`) have a diagonal Gaussian posterior q(z|x) = N(mean, std^2) per token:
`encode` is its mean (probing, figures), `encode_sample` draws z = (mean + std * eps) / scale, which is what the
denoiser trains on and what the scale is measured on, as DiT trains on `vae.encode(x).latent_dist.sample() *
0.18215` and LDM's `scale_factor` is 1 / std of sampled latents. Deterministic tokenizers return their latent.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from sweepdae.data._base import to_unit_range
from sweepdae.errors import DatasetError, RecipeError, TrainingError
from sweepdae.recipe import TokenizerConfig

# Bump when a fitted tokenizer would come out different for the same knobs: it is part of every cache key.
# 2: a VAE's latent scale is measured on posterior samples (LDM), not on the posterior mean.
TOKENIZER_VERSION = 2

# Training images used to measure latent statistics (scale) and the reported reconstruction error. A sample
# keeps the fit affordable on ImageNet-sized splits; 4096 images x N tokens is plenty for d <= 768 moments.
STATS_SAMPLE_IMAGES = 4096

# A latent dim whose RMS is below this fraction of the mean RMS is treated as dead: its scale is floored there
# so that encode never divides by ~0 (e.g. a PCA component of rank-deficient data).
SCALE_FLOOR = 1e-3

LATENT_SCALE_MODES = ("per_dim", "global", "none")

Progress = Callable[[dict[str, Any]], None]


def patchify(x: Tensor, p: int) -> Tensor:
    """[B, C, H, W] -> [B, (H/p)*(W/p), p*p*C], tokens in raster order, values (row, col, channel) as in MAE."""
    b, c, h, w = x.shape
    x = x.reshape(b, c, h // p, p, w // p, p)  # [B, C, h, p, w, p]
    x = torch.einsum("nchpwq->nhwpqc", x)  # [B, h, w, p, p, C] (facebookresearch/mae models_mae.patchify)
    return x.reshape(b, (h // p) * (w // p), p * p * c)


def unpatchify(t: Tensor, p: int, c: int) -> Tensor:
    """[B, N, p*p*C] -> [B, C, sqrt(N)*p, sqrt(N)*p]; the inverse of `patchify` for square images."""
    b, n, _ = t.shape
    g = math.isqrt(n)
    x = t.reshape(b, g, g, p, p, c)  # [B, h, w, p, p, C]
    x = torch.einsum("nhwpqc->nchpwq", x)  # [B, C, h, p, w, p]
    return x.reshape(b, c, g * p, g * p)


def check_train_images(images_uint8: Tensor, *, channels: int, image_size: int) -> None:
    """Raise DatasetError unless the training split is uint8 [N, channels, image_size, image_size]."""
    want = (channels, image_size, image_size)
    if images_uint8.dtype != torch.uint8 or images_uint8.ndim != 4 or tuple(images_uint8.shape[1:]) != want:
        raise DatasetError(f"tokenizer fitting needs uint8 training images [N, {channels}, {image_size}, "
                           f"{image_size}], got {images_uint8.dtype} {tuple(images_uint8.shape)}")
    if images_uint8.shape[0] == 0:
        raise DatasetError("tokenizer fitting needs at least one training image, got an empty split")


def iter_image_batches(images_uint8: Tensor, batch_size: int, *, device: torch.device | str,
                       indices: Tensor | None = None, generator: torch.Generator | None = None) -> Iterator[Tensor]:
    """Yield float batches [b, C, H, W] in [-1, 1] on `device`: over `indices` (default all), shuffled if seeded."""
    idx = torch.arange(images_uint8.shape[0]) if indices is None else indices
    if generator is not None:
        idx = idx[torch.randperm(idx.numel(), generator=generator)]
    for start in range(0, idx.numel(), batch_size):
        yield to_unit_range(images_uint8[idx[start:start + batch_size]].to(device))


def stats_sample(num_images: int, seed: int, limit: int = STATS_SAMPLE_IMAGES) -> Tensor:
    """Sorted indices of at most `limit` training images, drawn with `seed` (all of them when fewer)."""
    if num_images <= limit:
        return torch.arange(num_images)
    g = torch.Generator().manual_seed(seed)
    return torch.randperm(num_images, generator=g)[:limit].sort().values


def gaussian_kl(mean: Tensor, logvar: Tensor) -> Tensor:
    """KL(N(mean, exp(logvar)) || N(0, 1)) in nats, elementwise (LDM DiagonalGaussianDistribution.kl, unsummed)."""
    return 0.5 * (mean.pow(2) + logvar.exp() - 1.0 - logvar)


def sample_posterior(mean: Tensor, std: Tensor | None, generator: torch.Generator | None = None) -> Tensor:
    """z = mean + std * eps with eps ~ N(0, I) drawn from `generator` (on mean's device); `mean` when std is None
    (a deterministic tokenizer draws nothing, so its callers' random streams are untouched)."""
    if std is None:
        return mean
    eps = torch.randn(mean.shape, generator=generator, device=mean.device, dtype=mean.dtype)
    return mean + std * eps


def check_finite(loss: Tensor, *, what: str, step: int) -> None:
    """Stop a tokenizer fit whose loss went non-finite, naming the step (STYLE habit 7)."""
    if not torch.isfinite(loss).all():
        raise TrainingError(f"{what}: non-finite loss ({float(loss)}) at step {step}", failure_class="nonfinite")


class Tokenizer(nn.Module):
    """Images [B, C, H, W] in [-1, 1] <-> tokens [B, N, d]; subclasses supply the unscaled maps."""

    name: ClassVar[str] = ""
    stochastic: ClassVar[bool] = False  # a VAE: `moments_unscaled` gives a log-variance, `encode_sample` samples
    scale: Tensor  # [d] buffer: encode divides by it, decode multiplies (see `apply_latent_scale`)

    def __init__(self, *, channels: int, image_size: int, latent_dim: int, grid_size: int) -> None:
        super().__init__()
        self.channels = channels
        self.image_size = image_size
        self.latent_dim = latent_dim  # d per token
        self.grid_size = grid_size  # tokens per image side
        self.num_tokens = grid_size * grid_size  # N
        self.fitted = False  # set by fit_tokenizer / get_tokenizer
        self.register_buffer("scale", torch.ones(latent_dim))

    # -- the public maps ---------------------------------------------------------------------------------------
    def encode(self, x: Tensor) -> Tensor:
        """[B, C, H, W] in [-1, 1] -> [B, N, d] tokens in raster order, divided by `scale`."""
        self._check_images(x)
        return self.encode_unscaled(x) / self.scale

    def posterior(self, x: Tensor) -> tuple[Tensor, Tensor | None]:
        """[B, C, H, W] -> (mean, std) of q(z|x) over scaled tokens, each [B, N, d]; std None when deterministic."""
        self._check_images(x)
        mean, logvar = self.moments_unscaled(x)
        if logvar is None:
            return mean / self.scale, None
        return mean / self.scale, torch.exp(0.5 * logvar) / self.scale

    def encode_sample(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """[B, C, H, W] -> [B, N, d]: a posterior sample (mean + std * eps) / scale, eps from `generator`; for a
        deterministic tokenizer `encode(x)`, drawing nothing."""
        mean, std = self.posterior(x)
        return sample_posterior(mean, std, generator)

    def decode(self, z: Tensor) -> Tensor:
        """[B, N, d] scaled tokens -> [B, C, H, W] images."""
        if z.ndim != 3 or z.shape[1:] != (self.num_tokens, self.latent_dim):
            raise ValueError(f"{self.name}: expected tokens [B, {self.num_tokens}, {self.latent_dim}], "
                             f"got {tuple(z.shape)}")
        return self.decode_unscaled(z * self.scale)

    def forward(self, x: Tensor) -> Tensor:
        """[B, C, H, W] -> [B, C, H, W]: the reconstruction decode(encode(x))."""
        return self.decode(self.encode(x))

    # -- what subclasses implement -------------------------------------------------------------------------------
    def encode_unscaled(self, x: Tensor) -> Tensor:
        """[B, C, H, W] -> [B, N, d] before the latent scale."""
        raise NotImplementedError

    def decode_unscaled(self, z: Tensor) -> Tensor:
        """[B, N, d] (unscaled) -> [B, C, H, W]."""
        raise NotImplementedError

    def moments_unscaled(self, x: Tensor) -> tuple[Tensor, Tensor | None]:
        """[B, C, H, W] -> (posterior mean, log-variance), each [B, N, d] before the scale; log-variance None for a
        deterministic tokenizer (VAEs override this with one encoder pass)."""
        return self.encode_unscaled(x), None

    def fit_data(self, images_uint8: Tensor, *, cfg: TokenizerConfig, seed: int, device: torch.device,
                 progress: Progress | None) -> dict[str, Any]:
        """Fit the tokenizer's own parameters in place (not the scale); returns extra fit stats."""
        return {}

    def _check_images(self, x: Tensor) -> None:
        want = (self.channels, self.image_size, self.image_size)
        if x.ndim != 4 or tuple(x.shape[1:]) != want:
            raise ValueError(f"{self.name}: expected images [B, {want[0]}, {want[1]}, {want[2]}], "
                             f"got {tuple(x.shape)}")


class PatchTokenizer(Tokenizer):
    """A tokenizer that works patch by patch: tokens are p x p image patches (D = C*p*p values) mapped to d."""

    def __init__(self, *, channels: int, image_size: int, patch_size: int, latent_dim: int) -> None:
        if patch_size <= 0 or image_size % patch_size:
            raise RecipeError(f"tokenizer.patch_size ({patch_size}) must divide data.image_size ({image_size})")
        patch_dim = channels * patch_size * patch_size
        if not 0 < latent_dim <= patch_dim:
            raise RecipeError(f"tokenizer.latent_dim ({latent_dim}) must be in 1..{patch_dim}, the patch dimension "
                              f"({channels} x {patch_size}^2) for {self.name}")
        super().__init__(channels=channels, image_size=image_size, latent_dim=latent_dim,
                         grid_size=image_size // patch_size)
        self.patch_size = patch_size  # p
        self.patch_dim = patch_dim  # D = C*p*p (paper: 3 x 16 x 16 = 768)

    def patchify(self, x: Tensor) -> Tensor:
        """[B, C, H, W] -> [B, N, D]."""
        return patchify(x, self.patch_size)

    def unpatchify(self, p: Tensor) -> Tensor:
        """[B, N, D] -> [B, C, H, W]."""
        return unpatchify(p, self.patch_size, self.channels)


@torch.no_grad()
def recon_mse(tok: Tokenizer, images_uint8: Tensor, indices: Tensor, *, device: torch.device,
              batch_size: int = 256) -> float:
    """Mean squared reconstruction error per pixel value, in the [-1, 1] range, over the given images."""
    total, count = 0.0, 0
    for x in iter_image_batches(images_uint8, batch_size, device=device, indices=indices):
        total += float((tok(x) - x).double().pow(2).sum())
        count += x.numel()
    return total / max(count, 1)


@torch.no_grad()
def apply_latent_scale(tok: Tokenizer, images_uint8: Tensor, indices: Tensor, *, mode: str,
                       device: torch.device, batch_size: int = 256, seed: int = 0) -> dict[str, float]:
    """Multiply `tok.scale` so that the latents of the given images have unit second moment.

    "per_dim": each of the d latent dims separately; "global": one factor for all dims; "none": unchanged.
    The second moment E[z^2] (not the centred variance) is made 1: it equals the variance for zero-mean latents
    (PCA, VAEs) and keeps near-constant dims with a non-zero mean (e.g. the black border pixels of MNIST) from
    being blown up by a ~0 std. Unit second moment is also what keeps a variance-preserving x_t at unit scale.
    A VAE's latents are posterior samples (one per image, eps drawn with `seed`), what the denoiser trains on:
    LDM's `scale_factor` is 1 / std of sampled latents.
    """
    if mode not in LATENT_SCALE_MODES:
        raise RecipeError(f"tokenizer.latent_scale must be one of {', '.join(LATENT_SCALE_MODES)}, got {mode!r}")
    sumsq = torch.zeros(tok.latent_dim, dtype=torch.float64, device=device)
    count = 0
    gen = torch.Generator(device=device).manual_seed(seed)
    for x in iter_image_batches(images_uint8, batch_size, device=device, indices=indices):
        z = tok.encode_sample(x, gen)  # [B, N, d]
        sumsq += z.double().pow(2).sum(dim=(0, 1))
        count += z.shape[0] * z.shape[1]
    rms = (sumsq / max(count, 1)).sqrt()  # [d]
    global_rms = float((sumsq.sum() / max(count * tok.latent_dim, 1)).sqrt())
    out = {"latent_rms_global_before": global_rms}
    if mode == "none" or global_rms == 0.0:
        return out
    if mode == "per_dim":
        factor = torch.clamp(rms, min=SCALE_FLOOR * float(rms.mean()))
    else:
        factor = torch.full_like(rms, global_rms)
    tok.scale.mul_(factor.to(tok.scale.dtype))
    return out


@torch.no_grad()
def posterior_stats(tok: Tokenizer, images_uint8: Tensor, *, device: torch.device | str,
                    batch_size: int = 256) -> dict[str, Any]:
    """A VAE's posterior on the given (held-out) images: {} for a deterministic tokenizer, else

    - "posterior_std": [d] mean over tokens of each latent dim's posterior std, in the VAE's own units (its prior
      is N(0, 1): ~1 with KL ~0 is a collapsed dim, ~0 a deterministic one);
    - "posterior_std_scaled": the same divided by `scale`, in the units of the latents the denoiser sees;
    - "kl_per_token_nats": KL(q(z|x) || N(0, I)) summed over a token's d dims, mean over tokens (nats);
    - "kl_per_dim_nats": [d] its share per latent dim (sums to kl_per_token_nats);
    - "posterior_var_fraction": E[std^2] / E[z^2] of sampled latents, the share of the denoiser's input that is
      posterior noise (in closed form: sum std^2 / (sum mean^2 + sum std^2));
    - "posterior_images": the number of images measured.
    """
    if not tok.stochastic:
        return {}
    dev = torch.device(device)
    d = tok.latent_dim
    sum_std = torch.zeros(d, dtype=torch.float64, device=dev)
    sum_kl = torch.zeros(d, dtype=torch.float64, device=dev)
    sum_var = torch.zeros((), dtype=torch.float64, device=dev)
    sum_mean2 = torch.zeros((), dtype=torch.float64, device=dev)
    tokens = 0
    for x in iter_image_batches(images_uint8, batch_size, device=dev):
        tok._check_images(x)
        mean, logvar = tok.moments_unscaled(x)  # [B, N, d] each
        assert logvar is not None, f"{tok.name} is stochastic but gave no log-variance"
        mean, logvar = mean.double(), logvar.double()
        sum_std += torch.exp(0.5 * logvar).sum(dim=(0, 1))
        sum_kl += gaussian_kl(mean, logvar).sum(dim=(0, 1))
        scale = tok.scale.double()
        sum_var += (logvar.exp() / scale.pow(2)).sum()
        sum_mean2 += (mean / scale).pow(2).sum()
        tokens += mean.shape[0] * mean.shape[1]
    if tokens == 0:
        return {}
    std = sum_std / tokens
    total = float(sum_var + sum_mean2)
    return {"posterior_std": std.tolist(), "posterior_std_scaled": (std / tok.scale.double()).tolist(),
            "kl_per_token_nats": float(sum_kl.sum()) / tokens, "kl_per_dim_nats": (sum_kl / tokens).tolist(),
            "posterior_var_fraction": float(sum_var) / total if total > 0 else 0.0,
            "posterior_images": int(images_uint8.shape[0])}
