"""Noise schedules: x_t = gamma_t * z0 + sigma_t * eps for t in 0..T-1 (t = 0 is the least noise).

Schedules are looked up by name (the values of `recipe.ScheduleName`). Tables are built in float64 and checked
on construction. Schedules may be added but never changed once committed (DiT `gaussian_diffusion.py`): a
changed table silently changes what every stored cell with that name means.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from sweepdae.errors import RecipeError, ScheduleError
from sweepdae.noise_levels import check_num_steps, closest_t
from sweepdae.recipe import LossWeight, NoiseConfig, ScheduleName, Target, suggest

__all__ = ["SCHEDULES", "Schedule", "ScheduleError", "create_schedule", "schedule_for", "schedule_names",
           "single_level_t"]

# Largest allowed |gamma^2 + sigma^2 - 1| for a variance-preserving table; float64 round-off is ~1e-16.
_VP_TOL = 1e-12


@dataclass(frozen=True, eq=False)
class Schedule:
    """One noise schedule: float64 tables of gamma_t (signal scale) and sigma_t (noise scale) over T steps.

    `input_scaling = True` means variance preserving (gamma^2 + sigma^2 = 1, checked); False means gamma = 1
    (checked) and sigma alone grows, as in the paper's Tab. 3 "remove input scaling".
    """

    name: str
    num_steps: int
    gamma: torch.Tensor  # float64 [T]
    sigma: torch.Tensor  # float64 [T]
    input_scaling: bool

    def __post_init__(self) -> None:
        _check_tables(self)

    # -- corruption --------------------------------------------------------------------------------------------
    def gather(self, table: torch.Tensor, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """table[t] cast to like's dtype and device, shaped [B, 1, ..., 1] to broadcast against `like`."""
        # float64 -> float32 on the CPU first: some backends (MPS) have no float64.
        values = table.to(torch.float32).to(like.device)[t.to(like.device).long()]
        return values.to(like.dtype).reshape(-1, *([1] * (like.dim() - 1)))

    def add_noise(self, z0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """x_t = gamma_t z0 + sigma_t noise, in z0's dtype. z0, noise [B, ...]; t [B] -> [B, ...]."""
        if z0.shape != noise.shape:
            raise ValueError(f"z0 {tuple(z0.shape)} and noise {tuple(noise.shape)} must have the same shape")
        if t.shape != (z0.shape[0],):
            raise ValueError(f"t must have shape [{z0.shape[0]}], got {tuple(t.shape)}")
        return self.gather(self.gamma, t, z0) * z0 + self.gather(self.sigma, t, z0) * noise.to(z0.dtype)

    def loss_weight(self, t: torch.Tensor, kind: LossWeight, target: Target) -> torch.Tensor:
        """lambda_t, float32 [B] on t's device.

        auto (paper Sec. 4.2 / Tab. 3): 1 for the eps target; for clean targets (z0, image) gamma_t^2 with input
        scaling and 1/(1 + sigma_t^2) without it (the gamma^2 of the equivalent rescaled VP process).
        """
        kind = LossWeight(kind)
        if kind == LossWeight.auto:
            if Target(target) == Target.eps:
                kind = LossWeight.uniform
            else:
                kind = LossWeight.gamma2 if self.input_scaling else LossWeight.inv_1p_sigma2
        if kind == LossWeight.uniform:
            table = torch.ones(self.num_steps, dtype=torch.float64)
        elif kind == LossWeight.gamma2:
            table = self.gamma ** 2
        elif kind == LossWeight.inv_1p_sigma2:
            table = 1.0 / (1.0 + self.sigma ** 2)
        else:  # pragma: no cover - LossWeight is closed
            raise ValueError(f"unknown loss weight {kind!r}")
        # the table is built in float64, then gathered on t's device (no host sync)
        return table.to(torch.float32).to(t.device)[t.long()]

    def noise_to_signal(self) -> torch.Tensor:
        """sigma_t / gamma_t, float64 [T] (strictly increasing, checked)."""
        return self.sigma / self.gamma


def _check_tables(s: Schedule) -> None:
    def need(cond: bool, msg: str) -> None:
        if not cond:
            raise ScheduleError(f"schedule {s.name!r}: {msg}")

    need(s.num_steps >= 2, f"num_steps must be >= 2, got {s.num_steps}")
    for label, table in (("gamma", s.gamma), ("sigma", s.sigma)):
        need(isinstance(table, torch.Tensor) and table.dtype == torch.float64,
             f"{label} must be a float64 tensor (tables are built in float64)")
        need(tuple(table.shape) == (s.num_steps,), f"{label} must have shape [{s.num_steps}], got "
             f"{tuple(table.shape)}")
        need(bool(torch.isfinite(table).all()), f"{label} has non-finite values")
    g, sg = s.gamma, s.sigma
    need(bool((g > 0).all() and (g <= 1).all()), "gamma must lie in (0, 1]")
    need(bool((sg > 0).all()), "sigma must be > 0 at every step (t = 0 still adds some noise)")
    need(bool((g[1:] <= g[:-1]).all()), "gamma must be non-increasing in t")
    need(bool((sg[1:] > sg[:-1]).all()), "sigma must be strictly increasing in t")
    if s.input_scaling:
        err = float((g ** 2 + sg ** 2 - 1).abs().max())
        need(err <= _VP_TOL, f"variance-preserving tables need gamma^2 + sigma^2 = 1 (max error {err:.3g})")
    else:
        need(bool((g == 1).all()), "a schedule without input scaling needs gamma = 1 everywhere")


# -- the registry ----------------------------------------------------------------------------------------------
def _ddpm_linear(num_steps: int) -> Schedule:
    # DDPM (Ho et al.) linear betas 1e-4 -> 0.02 at T = 1000; for other T the endpoints scale by 1000/T as in
    # DiT / improved-DDPM `get_named_beta_schedule("linear")`, so the end-point noise level stays comparable.
    check_num_steps("ddpm_linear", num_steps)
    scale = 1000.0 / num_steps
    betas = torch.linspace(scale * 1e-4, scale * 0.02, num_steps, dtype=torch.float64)
    gamma2 = torch.cumprod(1.0 - betas, dim=0)
    return Schedule("ddpm_linear", num_steps, gamma2.sqrt(), (1.0 - gamma2).sqrt(), input_scaling=True)


def _linear_gamma2(num_steps: int) -> Schedule:
    # Paper Tab. 1 last row: gamma^2 linear from 1 to 0. The grid is open at both ends, gamma_t^2 =
    # 1 - (t+1)/(T+1), so t = 0 still adds noise (sigma^2 = 1/(T+1)) and t = T-1 keeps gamma > 0 (sweepdae choice).
    t = torch.arange(num_steps, dtype=torch.float64)
    gamma2 = 1.0 - (t + 1.0) / (num_steps + 1.0)
    return Schedule("linear_gamma2", num_steps, gamma2.sqrt(), (1.0 - gamma2).sqrt(), input_scaling=True)


def _sigma_linear(num_steps: int) -> Schedule:
    # Paper Tab. 3 "remove input scaling": gamma = 1, sigma linear from 0 to sqrt(2). sigma_t = sqrt(2)(t+1)/T, so
    # t = 0 adds a little noise (sqrt(2)/T) and t = T-1 reaches the paper's sqrt(2) exactly (sweepdae choice).
    t = torch.arange(num_steps, dtype=torch.float64)
    sigma = math.sqrt(2.0) * (t + 1.0) / num_steps
    return Schedule("sigma_linear", num_steps, torch.ones(num_steps, dtype=torch.float64), sigma,
                    input_scaling=False)


SCHEDULES: dict[str, Callable[[int], Schedule]] = {
    ScheduleName.ddpm_linear.value: _ddpm_linear,
    ScheduleName.linear_gamma2.value: _linear_gamma2,
    ScheduleName.sigma_linear.value: _sigma_linear,
}


def schedule_names() -> list[str]:
    return list(SCHEDULES)


def create_schedule(name: str | ScheduleName, num_steps: int = 1000) -> Schedule:
    """Build the named schedule with T = num_steps (paper / DDPM: 1000)."""
    key = name.value if isinstance(name, ScheduleName) else str(name)
    builder = SCHEDULES.get(key)
    if builder is None:
        raise RecipeError(f"unknown noise schedule {key!r}{suggest(key, SCHEDULES)}; valid: "
                          + ", ".join(SCHEDULES))
    check_num_steps(key, num_steps)
    return builder(num_steps)


def schedule_for(noise: NoiseConfig) -> Schedule:
    """The schedule of a recipe's `noise` settings (noise.schedule with T = noise.num_steps)."""
    return create_schedule(noise.schedule, noise.num_steps)


def single_level_t(schedule: Schedule, sigma: float) -> int:
    """The t whose noise-to-signal ratio sigma_t / gamma_t is closest to `sigma` (ties: the smaller t;
    `sweepdae.noise_levels.closest_t`, the rule a recipe's own t follows too)."""
    return closest_t(schedule.noise_to_signal().tolist(), sigma)
