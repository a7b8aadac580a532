"""Noise levels of the named schedules in plain Python (float64), for what must be known without torch: the one
time step of a single-level recipe, which its keys and its probe t read (`sweepdae.recipe.fixed_t`).

The ratios sigma_t / gamma_t follow the formulas of `sweepdae.noise`'s tables (whose float64 tensors the training
and sampling use); `closest_t` is the one rule that picks a level's t, for both. tests/test_noise.py checks that
these ratios pick the same t as the tensors' for every schedule.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

from sweepdae.errors import ScheduleError

__all__ = ["check_num_steps", "closest_t", "noise_to_signal"]


def _ddpm_linear(num_steps: int) -> list[float]:
    # sweepdae.noise._ddpm_linear: betas linspace(1e-4, 0.02) x 1000/T, gamma^2 = cumprod(1 - beta)
    scale = 1000.0 / num_steps
    lo, hi = scale * 1e-4, scale * 0.02
    step = (hi - lo) / (num_steps - 1)
    out, gamma2 = [], 1.0
    for i in range(num_steps):
        gamma2 *= 1.0 - (lo + step * i)
        out.append(math.sqrt(1.0 - gamma2) / math.sqrt(gamma2))
    return out


def _linear_gamma2(num_steps: int) -> list[float]:
    # sweepdae.noise._linear_gamma2: gamma_t^2 = 1 - (t+1)/(T+1)
    out = []
    for t in range(num_steps):
        gamma2 = 1.0 - (t + 1.0) / (num_steps + 1.0)
        out.append(math.sqrt(1.0 - gamma2) / math.sqrt(gamma2))
    return out


def _sigma_linear(num_steps: int) -> list[float]:
    # sweepdae.noise._sigma_linear: gamma = 1, sigma_t = sqrt(2)(t+1)/T
    return [math.sqrt(2.0) * (t + 1.0) / num_steps for t in range(num_steps)]


_RATIOS: dict[str, Callable[[int], list[float]]] = {
    "ddpm_linear": _ddpm_linear, "linear_gamma2": _linear_gamma2, "sigma_linear": _sigma_linear}


def noise_to_signal(name: str, num_steps: int) -> list[float]:
    """sigma_t / gamma_t of schedule `name` with T = num_steps (a name of `sweepdae.recipe.ScheduleName`)."""
    if name not in _RATIOS:
        raise ValueError(f"unknown noise schedule {name!r}; valid: " + ", ".join(_RATIOS))
    check_num_steps(name, num_steps)
    return _RATIOS[name](num_steps)


def check_num_steps(name: str, num_steps: int) -> None:
    """The steps a named schedule can be built with (here and by `sweepdae.noise`'s tables): T >= 2, and for
    ddpm_linear T > 20 (its largest beta, 0.02 x 1000 / T, must stay below 1)."""
    if num_steps < 2:
        raise ScheduleError(f"schedule {name!r}: num_steps must be >= 2, got {num_steps}")
    if name == "ddpm_linear" and 0.02 * 1000.0 / num_steps >= 1.0:
        raise ScheduleError(f"schedule 'ddpm_linear': num_steps={num_steps} gives beta >= 1 (need T > 20)")


def closest_t(ratios: Sequence[float], sigma: float) -> int:
    """The t whose noise-to-signal ratio is closest to `sigma` (ties: the smaller t).

    The paper's single-level ablation (Sec. 5) uses sigma = sqrt(1/3) on the input x_t / gamma_t = z0 + (sigma_t /
    gamma_t) eps, which is the same corruption for every schedule.
    """
    if not (math.isfinite(sigma) and sigma > 0):
        raise ValueError(f"sigma must be positive and finite, got {sigma}")
    return min(range(len(ratios)), key=lambda t: abs(ratios[t] - sigma))
