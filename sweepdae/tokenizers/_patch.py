"""Patch-wise tokenizers of the paper's Tab. 2 / Fig. 5: pixel (identity), PCA, linear AE and linear VAE.

Each token is one p x p image patch (D = C*p*p values, paper: 16 x 16 x 3 = 768) mapped to d values.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from sweepdae.recipe import TokenizerConfig
from sweepdae.tokenizers._base import (
    PatchTokenizer,
    Progress,
    check_finite,
    gaussian_kl,
    iter_image_batches,
    patchify,
    recon_mse,
    stats_sample,
    to_unit_range,
)

# Above this many candidate patches, `sample_patch_indices` draws with replacement instead of a permutation
# (a randperm of ImageNet's 1.28M x 256 patches would need ~2.6 GB; duplicates are then negligible).
_PERMUTE_LIMIT = 10_000_000

# Images patchified at once while gathering PCA patches.
_GATHER_CHUNK = 512


class PixelTokenizer(PatchTokenizer):
    """Identity on image patches (paper Fig. 5): token = the p x p x C pixels, d = D."""

    name = "pixel"

    def __init__(self, *, channels: int, image_size: int, patch_size: int) -> None:
        super().__init__(channels=channels, image_size=image_size, patch_size=patch_size,
                         latent_dim=channels * patch_size * patch_size)

    def encode_unscaled(self, x: Tensor) -> Tensor:
        """[B, C, H, W] -> [B, N, D]."""
        return self.patchify(x)

    def decode_unscaled(self, z: Tensor) -> Tensor:
        """[B, N, D] -> [B, C, H, W]."""
        return self.unpatchify(z)


@dataclass(frozen=True)
class PCABasis:
    """Eigen-decomposition of the patch covariance, in float64, kept whole (all D components)."""

    basis: Tensor  # [D, D], orthonormal columns sorted by eigenvalue, descending
    eigvals: Tensor  # [D], descending, >= 0: variance (second moment if not centred) along each column
    mean: Tensor  # [D], zeros when not centred
    num_patches: int  # patches the covariance was estimated from
    seconds: float


def sample_patch_indices(num_images: int, tokens_per_image: int, num_patches: int, seed: int
                         ) -> tuple[Tensor, Tensor]:
    """(image index, token index) of `num_patches` random grid-aligned patches, sorted by image; all if fewer."""
    total = num_images * tokens_per_image
    if num_patches >= total:
        flat = torch.arange(total)
    else:
        g = torch.Generator().manual_seed(seed)
        if total <= _PERMUTE_LIMIT:
            flat = torch.randperm(total, generator=g)[:num_patches]
        else:
            flat = torch.randint(total, (num_patches,), generator=g)
        flat = flat.sort().values
    return flat // tokens_per_image, flat % tokens_per_image


def _gather_patches(images_uint8: Tensor, *, patch_size: int, num_patches: int, seed: int) -> Iterator[Tensor]:
    n_img, _, h, w = images_uint8.shape
    per_image = (h // patch_size) * (w // patch_size)
    img_idx, tok_idx = sample_patch_indices(n_img, per_image, num_patches, seed)
    uniq, counts = torch.unique_consecutive(img_idx, return_counts=True)
    pos = 0
    for c0 in range(0, uniq.numel(), _GATHER_CHUNK):
        u, cnt = uniq[c0:c0 + _GATHER_CHUNK], counts[c0:c0 + _GATHER_CHUNK]
        m = int(cnt.sum())
        p = patchify(to_unit_range(images_uint8[u]), patch_size)  # [len(u), N, D]
        local = torch.repeat_interleave(torch.arange(u.numel()), cnt)
        yield p[local, tok_idx[pos:pos + m]]  # [m, D]
        pos += m


def fit_pca_basis(images_uint8: Tensor, *, patch_size: int, num_patches: int, center: bool, seed: int,
                  progress: Progress | None = None) -> PCABasis:
    """Paper Sec. 4.2 "eigen-basis of randomly sampled patches": covariance of the sampled patches, eigh in float64.

    Centred: the sample covariance (divided by n - 1, as scikit-learn's PCA); otherwise the second-moment matrix.
    Each column's sign is fixed so that its largest-magnitude entry is positive (deterministic output).
    """
    t0 = time.perf_counter()
    s1: Tensor | None = None
    s2: Tensor | None = None
    n = 0
    for chunk in _gather_patches(images_uint8, patch_size=patch_size, num_patches=num_patches, seed=seed):
        xd = chunk.double()
        s1 = xd.sum(0) if s1 is None else s1 + xd.sum(0)
        s2 = xd.T @ xd if s2 is None else s2 + xd.T @ xd
        n += xd.shape[0]
    assert s1 is not None and s2 is not None
    if center and n > 1:
        mean = s1 / n
        cov = (s2 - n * torch.outer(mean, mean)) / (n - 1)
    else:
        mean = torch.zeros_like(s1)
        cov = s2 / n
    eigvals, vecs = torch.linalg.eigh((cov + cov.T) / 2)  # ascending
    eigvals, vecs = eigvals.flip(0).clamp(min=0.0), vecs.flip(1)
    sign = torch.sign(vecs.gather(0, vecs.abs().argmax(0, keepdim=True)))  # [1, D]
    vecs = vecs * torch.where(sign == 0, torch.ones_like(sign), sign)
    if progress is not None:
        progress({"event": "pca_basis", "num_patches": n, "seconds": time.perf_counter() - t0})
    return PCABasis(basis=vecs, eigvals=eigvals, mean=mean, num_patches=n, seconds=time.perf_counter() - t0)


class PatchPCA(PatchTokenizer):
    """Paper's patch-wise PCA: z = ((p - mean) @ basis[:, :d]) / scale; decode (z*scale) @ basis[:, :d].T + mean."""

    name = "patch_pca"
    basis: Tensor  # [D, D] full eigen-basis V (the weighted-residual target of paper Tab. 3 needs all columns)
    eigvals: Tensor  # [D] variance along each column of `basis`
    mean: Tensor  # [D]

    def __init__(self, *, channels: int, image_size: int, patch_size: int, latent_dim: int) -> None:
        super().__init__(channels=channels, image_size=image_size, patch_size=patch_size, latent_dim=latent_dim)
        dim = self.patch_dim
        self.register_buffer("basis", torch.eye(dim))
        self.register_buffer("eigvals", torch.ones(dim))
        self.register_buffer("mean", torch.zeros(dim))

    def encode_unscaled(self, x: Tensor) -> Tensor:
        """[B, C, H, W] -> [B, N, d] projections on the first d components."""
        return (self.patchify(x) - self.mean) @ self.basis[:, :self.latent_dim]

    def decode_unscaled(self, z: Tensor) -> Tensor:
        """[B, N, d] -> [B, C, H, W] through the transposed basis."""
        return self.unpatchify(z @ self.basis[:, :self.latent_dim].T + self.mean)

    def set_basis(self, fit: PCABasis) -> None:
        """Install a fitted basis (`scale` back to 1: `latent_scale` sets it afterwards)."""
        self.basis.copy_(fit.basis.to(self.basis))
        self.eigvals.copy_(fit.eigvals.to(self.eigvals))
        self.mean.copy_(fit.mean.to(self.mean))
        self.scale.fill_(1.0)

    def fit_data(self, images_uint8: Tensor, *, cfg: TokenizerConfig, seed: int, device: torch.device,
                 progress: Progress | None, basis: PCABasis | None = None) -> dict[str, Any]:
        """Fit (or install a cached) basis; returns patch count and explained variance ratio of the first d."""
        if basis is None:
            basis = fit_pca_basis(images_uint8, patch_size=self.patch_size, num_patches=cfg.pca_num_patches,
                                  center=cfg.pca_center, seed=seed, progress=progress)
        self.set_basis(basis)
        total = float(basis.eigvals.sum())
        return {"pca_num_patches_used": basis.num_patches, "pca_basis_seconds": basis.seconds,
                "explained_variance_ratio": float(basis.eigvals[:self.latent_dim].sum()) / total if total else 1.0}


class PatchAE(PatchTokenizer):
    """Paper's patch-wise AE: a linear encoder D -> d and a linear decoder d -> D (with biases), MSE-trained."""

    name = "patch_ae"

    def __init__(self, *, channels: int, image_size: int, patch_size: int, latent_dim: int) -> None:
        super().__init__(channels=channels, image_size=image_size, patch_size=patch_size, latent_dim=latent_dim)
        self.encoder = nn.Linear(self.patch_dim, self._enc_out())
        self.decoder = nn.Linear(latent_dim, self.patch_dim)

    def _enc_out(self) -> int:
        return self.latent_dim

    def encode_unscaled(self, x: Tensor) -> Tensor:
        """[B, C, H, W] -> [B, N, d]."""
        return self.encoder(self.patchify(x))

    def decode_unscaled(self, z: Tensor) -> Tensor:
        """[B, N, d] -> [B, C, H, W]."""
        return self.unpatchify(self.decoder(z))

    def loss_terms(self, x: Tensor) -> dict[str, Tensor]:
        """Fit loss on images [B, C, H, W]: {"loss", "recon"} (MSE per patch value)."""
        p = self.patchify(x)  # [B, N, D]
        recon = (self.decoder(self.encoder(p)) - p).pow(2).mean()
        return {"loss": recon, "recon": recon}

    def fit_data(self, images_uint8: Tensor, *, cfg: TokenizerConfig, seed: int, device: torch.device,
                 progress: Progress | None) -> dict[str, Any]:
        """AdamW on MSE (+ KL) over all training patches, `cfg.fit_batch_size` images per step, seeded order."""
        sample = stats_sample(images_uint8.shape[0], seed)
        init_mse = recon_mse(self, images_uint8, sample, device=device)
        # weight decay 0: it would shrink the linear maps of an autoencoder (paper silent on the optimizer)
        opt = torch.optim.AdamW(self.parameters(), lr=cfg.fit_lr, weight_decay=0.0)
        gen = torch.Generator().manual_seed(seed)
        step, last = 0, float("nan")
        self.train()
        for epoch in range(cfg.fit_epochs):
            for x in iter_image_batches(images_uint8, cfg.fit_batch_size, device=device, generator=gen):
                terms = self.loss_terms(x)
                check_finite(terms["loss"], what=f"{self.name} fit", step=step)
                opt.zero_grad(set_to_none=True)
                terms["loss"].backward()
                opt.step()
                step += 1
                last = float(terms["loss"].detach())
            if progress is not None:
                progress({"event": "fit_epoch", "tokenizer": self.name, "epoch": epoch + 1,
                          "epochs": cfg.fit_epochs, "loss": last})
        self.eval()
        return {"recon_mse_init": init_mse, "final_loss": last, "steps": step}


class PatchVAE(PatchAE):
    """Paper's patch-wise VAE: linear encoder D -> 2d (mean, log-variance), linear decoder d -> D, MSE + KL."""

    name = "patch_vae"
    stochastic = True

    def __init__(self, *, channels: int, image_size: int, patch_size: int, latent_dim: int,
                 kl_weight: float) -> None:
        super().__init__(channels=channels, image_size=image_size, patch_size=patch_size, latent_dim=latent_dim)
        self.kl_weight = kl_weight

    def _enc_out(self) -> int:
        return 2 * self.latent_dim

    def moments(self, p: Tensor) -> tuple[Tensor, Tensor]:
        """Patches [B, N, D] -> (mean, logvar), each [B, N, d]; logvar clamped as LDM's DiagonalGaussian."""
        mean, logvar = self.encoder(p).chunk(2, dim=-1)
        return mean, logvar.clamp(-30.0, 20.0)

    def encode_unscaled(self, x: Tensor) -> Tensor:
        """[B, C, H, W] -> [B, N, d]: the posterior mean."""
        return self.moments(self.patchify(x))[0]

    def moments_unscaled(self, x: Tensor) -> tuple[Tensor, Tensor | None]:
        """[B, C, H, W] -> (mean, logvar), each [B, N, d]."""
        return self.moments(self.patchify(x))

    def loss_terms(self, x: Tensor) -> dict[str, Tensor]:
        """{"loss", "recon", "kl"}: MSE per value + kl_weight * KL per token / D.

        KL / D keeps LDM's balance (reconstruction summed over pixels + kl_weight x KL summed over latents,
        per image) after dividing both by the image's C*H*W values: kl_weight means the same as in LDM.
        """
        p = self.patchify(x)  # [B, N, D]
        mean, logvar = self.moments(p)
        z = mean + torch.exp(0.5 * logvar) * torch.randn_like(mean)
        recon = (self.decoder(z) - p).pow(2).mean()
        kl = gaussian_kl(mean, logvar).sum(-1).mean()  # nats per token (summed over its d dims)
        return {"loss": recon + self.kl_weight * kl / self.patch_dim, "recon": recon, "kl": kl}
