"""Samplers for FID: DDPM ancestral, DDIM (eta = 0) and Euler, on a respaced subsequence of the schedule.

Written against duck types so that it does not depend on how the schedule and the model are built:
  schedule: `.num_steps` T, `.gamma` [T] and `.sigma` [T] (float64), `.input_scaling`; x_t = gamma_t z0 + sigma_t eps
  denoise_fn(x_t [B, N, d], t [B] long, y [B] long | None) -> x0_hat [B, N, d], a clean-latent estimate (the
      caller converts an eps / image prediction to z0 and applies classifier-free guidance if it wants any).

Timesteps: DiT `diffusion/respace.py` space_timesteps(T, str(steps)) -- `steps` indices spread evenly over
[0, T - 1] with Python's round; the model sees the original indices (DiT's _WrappedModel timestep_map).

DDPM ("ddpm"): DiT `gaussian_diffusion.py` p_sample with the posterior q(x_s | x_t, x0_hat) of the respaced
process and its fixed small variance (DDPM's sigma_t^2 = beta-tilde), no noise on the last step. It is written for
a general schedule (VDM, Kingma et al. 2021, eq. for q(z_s | z_t, x)): with a = gamma_t / gamma_s and
b2 = sigma_t^2 - a^2 sigma_s^2, mean = a sigma_s^2 / sigma_t^2 x_t + gamma_s b2 / sigma_t^2 x0_hat and
var = b2 sigma_s^2 / sigma_t^2; for variance-preserving schedules (gamma^2 + sigma^2 = 1) this is exactly DDPM's
posterior_mean_coef1/2 and posterior_variance on the respaced betas.

DDIM ("ddim", eta = 0): x_s = gamma_s x0_hat + sigma_s eps_hat, eps_hat = (x_t - gamma_t x0_hat) / sigma_t (DiT
ddim_sample). Euler ("euler"): one Euler step of the probability-flow ODE dx~/dsigma~ = (x~ - x0_hat) / sigma~ in
the scaled variables x~ = x / gamma, sigma~ = sigma / gamma (Karras et al. 2022, EDM, Sec. 4). The two are
algebraically the same update (EDM App. B.2 / Sec. 4: DDIM is Euler in this parametrisation); both are kept so
a grid can name the one it means.

"auto": DDPM for schedules with input scaling (ddpm_linear, linear_gamma2), DDIM for `input_scaling=False`
(sigma_linear).

Start: x_T = gamma_T * 0 + sigma_T * eps, pure noise at the largest t (DiT starts from N(0, I); sigma_T ~ 1 for
ddpm_linear). Known limitation: sigma_linear (gamma = 1, sigma_max = sqrt(2), paper Tab. 3 "remove input
scaling") never removes the signal -- x_T = z0 + sqrt(2) eps -- so starting from sqrt(2) eps mismatches the
marginal at T by the data's own variance and its samples are biased; that schedule is meant for representation
learning, not generation, and its FID should be read with that in mind.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from enum import Enum
from typing import Any, Protocol

import numpy as np
import torch
from torch import Tensor

from sweepdae.errors import SweepdaeError

DenoiseFn = Callable[[Tensor, Tensor, "Tensor | None"], Tensor]


class SamplerError(SweepdaeError):
    """A sampler cannot run with the given schedule or arguments."""


class ScheduleLike(Protocol):
    @property
    def num_steps(self) -> int: ...

    @property
    def gamma(self) -> Any: ...  # [T] float64 numpy array or tensor

    @property
    def sigma(self) -> Any: ...

    @property
    def input_scaling(self) -> bool: ...


SAMPLERS = ("ddpm", "ddim", "euler", "auto")


def space_timesteps(num_steps: int, steps: int) -> list[int]:
    """DiT respace.py space_timesteps(num_steps, str(steps)) sorted ascending; `steps` = 1 takes T - 1 (DiT would
    take 0, which cannot start generation from noise)."""
    if not 1 <= steps <= num_steps:
        raise SamplerError(f"sampling steps must be in [1, {num_steps}], got {steps}")
    if steps == 1:
        return [num_steps - 1]
    frac_stride = (num_steps - 1) / (steps - 1)
    cur, taken = 0.0, []
    for _ in range(steps):
        taken.append(round(cur))
        cur += frac_stride
    return sorted(set(taken))


def _table(values: Any, name: str, num_steps: int) -> np.ndarray:
    arr = values.detach().cpu().double().numpy() if isinstance(values, Tensor) else np.asarray(values, np.float64)
    if arr.shape != (num_steps,) or not np.isfinite(arr).all():
        raise SamplerError(f"schedule.{name} must be a finite [{num_steps}] table, got shape {arr.shape}")
    return arr


def resolve_sampler(sampler: str | Enum, schedule: ScheduleLike) -> str:
    name = sampler.value if isinstance(sampler, Enum) else str(sampler)
    if name not in SAMPLERS:
        raise SamplerError(f"unknown sampler {name!r}; valid: {', '.join(SAMPLERS)}")
    if name == "auto":
        return "ddpm" if schedule.input_scaling else "ddim"
    return name


def _randn(shape: tuple[int, ...], generator: torch.Generator | None, device: torch.device) -> Tensor:
    gen_device = generator.device if generator is not None else device
    return torch.randn(shape, generator=generator, device=gen_device).to(device)


def _step_coefficients(kind: str, g_t: float, s_t: float, g_s: float, s_s: float) -> tuple[float, float, float]:
    """(c_x, c_0, std) with x_s = c_x x_t + c_0 x0_hat + std * noise, in float64."""
    if s_t <= 0.0:  # x_t is already clean (sigma_linear at t = 0): nothing to denoise
        return 0.0, 1.0, 0.0
    if kind == "ddpm":
        a = g_t / g_s if g_s > 0.0 else 0.0
        b2 = max(s_t ** 2 - a ** 2 * s_s ** 2, 0.0)
        c_x = a * s_s ** 2 / s_t ** 2
        c_0 = g_s * b2 / s_t ** 2
        return c_x, c_0, math.sqrt(b2 * s_s ** 2 / s_t ** 2)
    if kind == "ddim":  # x_s = g_s x0 + s_s (x_t - g_t x0) / s_t
        return s_s / s_t, g_s - s_s * g_t / s_t, 0.0
    if kind == "euler":  # x~_s = x~_t + (sig~_s - sig~_t) (x~_t - x0) / sig~_t, x~ = x / g, sig~ = s / g
        if g_t <= 0.0:  # sig~_t infinite: the ODE limit of the step is the DDIM update
            return _step_coefficients("ddim", g_t, s_t, g_s, s_s)
        sig_t, sig_s = s_t / g_t, s_s / g_s
        ratio = (sig_s - sig_t) / sig_t
        return g_s * (1.0 + ratio) / g_t, -g_s * ratio, 0.0
    raise SamplerError(f"unknown sampler step {kind!r}")


@torch.no_grad()
def sample(denoise_fn: DenoiseFn, schedule: ScheduleLike, *, shape: tuple[int, ...], steps: int,
           sampler: str | Enum = "auto", generator: torch.Generator | None = None,
           device: torch.device | str = "cpu", y: Tensor | None = None) -> Tensor:
    """Draw latents [B, N, d] with `steps` calls of `denoise_fn` (module doc for the samplers and the start)."""
    dev = torch.device(device)
    kind = resolve_sampler(sampler, schedule)
    num_steps = int(schedule.num_steps)
    gamma = _table(schedule.gamma, "gamma", num_steps)
    sigma = _table(schedule.sigma, "sigma", num_steps)
    ts = space_timesteps(num_steps, steps)
    batch = shape[0]
    y_dev = y.to(dev) if y is not None else None
    x = float(sigma[ts[-1]]) * _randn(tuple(shape), generator, dev)
    for i in reversed(range(len(ts))):
        t = ts[i]
        x0_hat = denoise_fn(x, torch.full((batch,), t, dtype=torch.long, device=dev), y_dev).to(x.dtype)
        if i == 0:  # last step: the prediction itself (DiT: posterior with alpha_bar_prev = 1, no noise)
            x = x0_hat
            break
        s = ts[i - 1]
        c_x, c_0, std = _step_coefficients(kind, float(gamma[t]), float(sigma[t]), float(gamma[s]), float(sigma[s]))
        x = c_x * x + c_0 * x0_hat
        if std > 0.0:
            x = x + std * _randn(tuple(shape), generator, dev)
    return x
