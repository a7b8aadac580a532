"""Prediction targets and losses (paper Sec. 4.2-4.3, Tab. 3), where the network and the noise process meet.

Every variant corrupts the clean latent, z_t = gamma_t z0 + sigma_t eps, and differs in what goes in and comes out:

- input_space = latent: the network reads z_t; = image: it reads the inverse PCA of z_t, [B, N, D] patches.
- target = eps / z0, output_space = latent: the network predicts eps or z0 in the latent space ([B, N, d]).
- output_space = image: it outputs D-dim patches, which the PCA encoder (centre, V_d, scale) maps to the latent
  before the same latent loss (one fixed affine map for either target).
- target = image (needs output_space = image): it predicts the original image patches x; the residual is rotated
  onto the full PCA basis, r = (x_hat - x) V in un-scaled PCA coordinates, and weighted w_i = 1 for the first d
  components and `residual_weight` (paper: 0.1) beyond (paper Tab. 3, last row = l-DAE).

Per-sample losses are lambda_t times a mean over tokens and dims, so their scale does not depend on N.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol, cast

import torch

from sweepdae.errors import RecipeError
from sweepdae.noise import Schedule
from sweepdae.recipe import ObjectiveConfig, Space, Target

__all__ = [
    "ModelFn",
    "PCATokenizer",
    "Tokenizer",
    "compute_loss",
    "eps_from_x0",
    "latent_to_patches",
    "make_model_input",
    "model_io_dims",
    "patches_to_latent",
    "predict_x0_latent",
    "residual_weights",
]


class Tokenizer(Protocol):
    """What objectives need from any tokenizer (sweepdae.tokenizers)."""

    latent_dim: int  # d

    def encode(self, x: torch.Tensor) -> torch.Tensor: ...  # [B, C, H, W] in [-1, 1] -> [B, N, d], unit variance

    def decode(self, z: torch.Tensor) -> torch.Tensor: ...  # [B, N, d] -> [B, C, H, W]


class PCATokenizer(Protocol):
    """The patch-wise PCA tokenizer: z = ((p - mean) @ basis[:, :d]) / scale for patches p [B, N, D]."""

    latent_dim: int  # d
    patch_dim: int  # D = C p p
    basis: torch.Tensor  # [D, D], orthonormal columns sorted by explained variance (descending)
    mean: torch.Tensor  # [D] (zeros when not centred)
    scale: torch.Tensor  # [d]

    def encode(self, x: torch.Tensor) -> torch.Tensor: ...

    def decode(self, z: torch.Tensor) -> torch.Tensor: ...

    def patchify(self, x: torch.Tensor) -> torch.Tensor: ...  # [B, C, H, W] -> [B, N, D]

    def unpatchify(self, p: torch.Tensor) -> torch.Tensor: ...  # [B, N, D] -> [B, C, H, W]


# model(x [B, N, in_dim], t [B], y [B] or None) -> [B, N, out_dim]; a Denoiser or a test stub.
ModelFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor | None], torch.Tensor]


def _uses_pca(objective: ObjectiveConfig) -> bool:
    return (objective.input_space == Space.image or objective.output_space == Space.image
            or objective.target == Target.image)


def _as_pca(tokenizer: Tokenizer | PCATokenizer) -> PCATokenizer:
    missing = [a for a in ("patch_dim", "basis", "mean", "scale", "patchify") if not hasattr(tokenizer, a)]
    if missing:
        raise RecipeError(f"objective.input_space/output_space = 'image' and objective.target = 'image' go through "
                          f"the inverse PCA and need the patch_pca tokenizer ({type(tokenizer).__name__} lacks "
                          + ", ".join(missing) + ")")
    return cast(PCATokenizer, tokenizer)


def _check_objective(objective: ObjectiveConfig) -> None:
    if objective.target == Target.image and objective.output_space != Space.image:
        raise RecipeError("objective.target = 'image' predicts the original image and needs "
                          "objective.output_space = 'image'")


# -- the PCA maps between latent and patch space ------------------------------------------------------------------
def latent_to_patches(z: torch.Tensor, tokenizer: PCATokenizer) -> torch.Tensor:
    """Inverse PCA: [B, N, d] -> [B, N, D], p = (z * scale) @ V_d^T + mean."""
    d = tokenizer.latent_dim
    v_d = tokenizer.basis[:, :d].to(device=z.device, dtype=z.dtype)  # [D, d]
    scale = tokenizer.scale.to(device=z.device, dtype=z.dtype)  # [d]
    return (z * scale) @ v_d.T + tokenizer.mean.to(device=z.device, dtype=z.dtype)  # [B, N, D]


def patches_to_latent(p: torch.Tensor, tokenizer: PCATokenizer) -> torch.Tensor:
    """PCA encoder on patches: [B, N, D] -> [B, N, d], z = ((p - mean) @ V_d) / scale."""
    d = tokenizer.latent_dim
    v_d = tokenizer.basis[:, :d].to(device=p.device, dtype=p.dtype)  # [D, d]
    centred = p - tokenizer.mean.to(device=p.device, dtype=p.dtype)  # [B, N, D]
    return (centred @ v_d) / tokenizer.scale.to(device=p.device, dtype=p.dtype)  # [B, N, d]


def residual_weights(tokenizer: PCATokenizer, residual_weight: float) -> torch.Tensor:
    """w_i over the D PCA components: 1 for the first d, `residual_weight` beyond (paper Tab. 3: 0.1), float32 [D]."""
    w = torch.full((tokenizer.patch_dim,), float(residual_weight), dtype=torch.float32)
    w[: tokenizer.latent_dim] = 1.0
    return w


# -- public API -----------------------------------------------------------------------------------------------------
def model_io_dims(*, tokenizer: Tokenizer | PCATokenizer, objective: ObjectiveConfig) -> tuple[int, int]:
    """(in_dim, out_dim) of the network: d in the latent space, D = C p p in the image (inverse PCA) space."""
    _check_objective(objective)
    d = tokenizer.latent_dim
    big = _as_pca(tokenizer).patch_dim if _uses_pca(objective) else d
    return (d if objective.input_space == Space.latent else big,
            d if objective.output_space == Space.latent else big)


def make_model_input(x_t_latent: torch.Tensor, *, tokenizer: Tokenizer | PCATokenizer,
                     objective: ObjectiveConfig) -> torch.Tensor:
    """The network's input: the noisy latent [B, N, d], or its inverse PCA [B, N, D] (paper Tab. 3 "image input")."""
    if objective.input_space == Space.latent:
        return x_t_latent
    return latent_to_patches(x_t_latent, _as_pca(tokenizer))


def compute_loss(*, model: ModelFn, tokenizer: Tokenizer | PCATokenizer, schedule: Schedule,
                 objective: ObjectiveConfig, z0: torch.Tensor, x_patches: torch.Tensor | None = None,
                 t: torch.Tensor, noise: torch.Tensor, y: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """Per-sample terms {"loss": [B], "mse": [B]}, float32.

    z0 [B, N, d] clean latents; x_patches [B, N, D] the original image patches (target = image only); t [B] and
    noise [B, N, d] are drawn by the caller (so tests can fix them). "mse" is the plain mean squared error of the
    prediction against its target (latent units for eps / z0, pixel units for image), before lambda_t and w_i.
    """
    _check_objective(objective)
    x_t = schedule.add_noise(z0, t, noise)  # [B, N, d]
    out = model(make_model_input(x_t, tokenizer=tokenizer, objective=objective), t, y)  # [B, N, out_dim]
    lam = schedule.loss_weight(t, objective.loss_weight, objective.target).to(out.device)  # [B]
    if objective.target == Target.image:
        if x_patches is None:
            raise ValueError("objective.target = 'image' needs x_patches (the tokenizer's patchify of the images)")
        pca = _as_pca(tokenizer)
        diff = out.float() - x_patches.float()  # [B, N, D]
        r = diff @ pca.basis.to(device=diff.device, dtype=torch.float32)  # [B, N, D], un-scaled PCA coordinates
        w = residual_weights(pca, objective.residual_weight).to(diff.device)  # [D]
        per_sample = ((r ** 2) * w).sum(dim=-1).div(pca.patch_dim).mean(dim=1)  # [B]
        mse = diff.pow(2).flatten(1).mean(dim=1)  # [B]
    else:
        pred = out if objective.output_space == Space.latent else patches_to_latent(out, _as_pca(tokenizer))
        target = noise if objective.target == Target.eps else z0  # [B, N, d]
        mse = (pred.float() - target.float()).pow(2).flatten(1).mean(dim=1)  # [B]
        per_sample = mse
    return {"loss": lam * per_sample, "mse": mse}


def predict_x0_latent(model_out: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor, *,
                      tokenizer: Tokenizer | PCATokenizer, schedule: Schedule,
                      objective: ObjectiveConfig) -> torch.Tensor:
    """Clean-latent estimate [B, N, d] from the network output for any target (for samplers and figures).

    x_t is the noisy latent [B, N, d] (not the network input). Computed in at least float32.
    """
    _check_objective(objective)
    work = torch.promote_types(x_t.dtype, torch.float32)
    out = model_out.to(work)
    if objective.output_space == Space.image:
        out = patches_to_latent(out, _as_pca(tokenizer))  # [B, N, d]; for target = image this is encode(x_hat)
    if objective.target != Target.eps:
        return out
    x_t = x_t.to(work)
    gamma = schedule.gather(schedule.gamma, t, x_t)  # [B, 1, 1]
    sigma = schedule.gather(schedule.sigma, t, x_t)  # [B, 1, 1]
    return (x_t - sigma * out) / gamma  # [B, N, d]


def eps_from_x0(x0: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor, *, schedule: Schedule) -> torch.Tensor:
    """The noise implied by a clean-latent estimate: (x_t - gamma_t x0) / sigma_t, [B, N, d] (for DDIM-type steps)."""
    work = torch.promote_types(x_t.dtype, torch.float32)
    x_t = x_t.to(work)
    gamma = schedule.gather(schedule.gamma, t, x_t)  # [B, 1, 1]
    sigma = schedule.gather(schedule.sigma, t, x_t)  # [B, 1, 1]
    return (x_t - gamma * x0.to(work)) / sigma
