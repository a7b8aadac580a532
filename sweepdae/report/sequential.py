"""The design behind a finding's verdict: one fixed look, or a group-sequential test whose looks are fixed in advance.

REPRODUCTION.md ("Seeds until decided") fixes the rule: a two-sided test of each finding's per-seed statistic
against its decision point at total level alpha = 0.05, with the Lan-DeMets O'Brien-Fleming-type spending function
alpha(tau) = 2 - 2 Phi(z_{1 - alpha/2} / sqrt(tau)), tau = n / N the information fraction in seeds. The z-scale
boundaries come from the recursive numerical integration of Armitage, McPherson & Rowe (1969) (Jennison & Turnbull,
*Group Sequential Methods*, 2000, ch. 19); seed noise has an unknown variance and few seeds, so each look uses its
boundary's nominal level on the t-scale (ibid. Sec. 3.8): the look's interval is
mean +- t_{1 - p_k/2, n_k - 1} s / sqrt(n_k), a repeated confidence interval, and the committed verdict rule reads
it in place of the fixed 95 % one.

Why written here instead of a dependency (judged 2026-12-06 on the PyPI releases):
- `gsdesign` 0.1.5 (alpha, "experimental"): 189 lines of the recursive-integration primitives (gridpts, h1,
  hupdate) and no spending function, boundary search or t-scale looks: what this module needs on top of them is
  most of the work, and it pins numpy >= 2.0 only;
- `savvi` 0.3.1 (2024-10): anytime-valid tests for A/B settings, pulls cvxpy and py-markdown-table;
- `confseq` 0.0.11 (2023-01, no release since): a C++ extension built from source here (no wheel for this
  Python), confidence sequences for bounded or sub-Gaussian data with a known scale, where ours is unknown;
- `expectation` 0.6 needs Python >= 3.12 (this project supports 3.11).
A confidence sequence with an unknown scale at 3-10 seeds is also far wider than a group-sequential test with a
handful of planned looks, which is what a sweep does (rounds of seeds). The integration below is ~40 lines of numpy
and scipy, deterministic, and checked in tests/test_sequential.py against closed forms and by simulation.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np
from scipy import optimize, stats

from sweepdae.errors import SweepdaeError

__all__ = ["ALPHA", "DEFAULT_MAX_SEEDS", "MAX_LOOKS", "Design", "calibrated_alpha", "fixed_design", "group_sequential",
           "nominal_levels", "obf_spending", "z_boundaries"]

ALPHA = 0.05  # two-sided, as the fixed rule's 95 % interval (REPRODUCTION.md, Interval)
DEFAULT_MAX_SEEDS = 10  # `--max-seeds`: findings 3, 4 and 6 were estimated to need 6, 8 and 10 seeds
MAX_LOOKS = 4  # looks per design (REPRODUCTION.md): few looks, as rounds of seeds are costly
MAX_SEEDS_LIMIT = 50  # seeds continue after the grid's largest; keeps them clear of searches' seeds (100-103)
_GRID_POINTS = 401  # per look, Simpson's rule on the continuation region (odd); 1e-6 accuracy on the spending
# The t-scale calibration (see `calibrated_alpha`): seeded draws, so a design's levels are the same on every run.
CALIBRATION_DRAWS = 400_000  # Monte Carlo standard error of the calibrated error rate: ~0.035 % at 5 %
CALIBRATION_SEED = 20261206


class DesignError(SweepdaeError):
    """A design that cannot be built (too few seeds, max_seeds out of range)."""


def obf_spending(tau: float, alpha: float = ALPHA) -> float:
    """Lan-DeMets O'Brien-Fleming-type alpha spent by information fraction `tau` (two-sided):
    2 - 2 Phi(z_{1-alpha/2} / sqrt(tau)); 0 at 0, alpha at 1."""
    if tau <= 0:
        return 0.0
    return float(2 * stats.norm.sf(stats.norm.isf(alpha / 2) / math.sqrt(min(tau, 1.0))))


def _simpson(n: int) -> np.ndarray:
    w = np.ones(n)
    w[1:-1:2], w[2:-1:2] = 4.0, 2.0
    return w / 3.0


@lru_cache(maxsize=256)
def z_boundaries(taus: tuple[float, ...], alpha: float = ALPHA) -> tuple[float, ...]:
    """Two-sided z-scale boundaries c_1..c_K at information fractions `taus` (increasing, the last 1 for the full
    alpha) such that under no effect the chance of first crossing |Z_k| >= c_k at look k is
    alpha(tau_k) - alpha(tau_{k-1}).

    Z_k = B(tau_k) / sqrt(tau_k) for a standard Brownian motion B; the sub-density of B on the continuation region
    |B(tau_k)| < c_k sqrt(tau_k) is carried from look to look by convolving with the increment's normal density
    (Armitage, McPherson & Rowe 1969; Jennison & Turnbull 2000, ch. 19)."""
    if not taus or any(b <= a for a, b in zip(taus, taus[1:], strict=False)) or taus[0] <= 0:
        raise DesignError(f"information fractions must increase from above 0, got {taus}")
    out: list[float] = []
    x: np.ndarray | None = None  # grid of B(tau_{k-1}) on the continuation region
    g: np.ndarray | None = None  # sub-density there times the quadrature weights
    spent = 0.0
    for k, tau in enumerate(taus):
        target = obf_spending(tau, alpha) - spent
        if x is None or g is None:
            c = float(stats.norm.isf(target / 2)) if target > 0 else math.inf
        else:
            sd = math.sqrt(tau - taus[k - 1])
            xs, gs = x, g

            def cross(c: float, xs: np.ndarray = xs, gs: np.ndarray = gs, sd: float = sd, tau: float = tau) -> float:
                b = c * math.sqrt(tau)
                return float(np.sum(gs * (stats.norm.sf((b - xs) / sd) + stats.norm.cdf((-b - xs) / sd))))

            if target <= 0:
                c = math.inf
            else:
                c = float(optimize.brentq(lambda c, t=target: cross(c) - t, 1e-6, 40.0, xtol=1e-10))
        out.append(c)
        spent += target
        if k + 1 < len(taus):  # the continuation region's sub-density at this look, for the next
            b = min(c, 40.0) * math.sqrt(tau)
            y = np.linspace(-b, b, _GRID_POINTS)
            if x is None or g is None:
                dens = stats.norm.pdf(y / math.sqrt(tau)) / math.sqrt(tau)
            else:
                sd = math.sqrt(tau - taus[k - 1])
                dens = (g[None, :] * stats.norm.pdf((y[:, None] - x[None, :]) / sd) / sd).sum(axis=1)
            x, g = y, dens * _simpson(_GRID_POINTS) * (y[1] - y[0])
    return tuple(out)


def nominal_levels(taus: Sequence[float], alpha: float = ALPHA) -> tuple[float, ...]:
    """The two-sided nominal level p_k = 2 (1 - Phi(c_k)) of each look's boundary."""
    return tuple(float(2 * stats.norm.sf(c)) for c in z_boundaries(tuple(float(t) for t in taus), alpha))


def _null_abs_t(looks: tuple[int, ...]) -> np.ndarray:
    """|t| of the per-seed mean against its true value at each look, for CALIBRATION_DRAWS simulated sweeps with
    no effect (draws x looks); t is free of the noise's scale, so one draw serves every finding."""
    rng = np.random.default_rng(CALIBRATION_SEED)
    x = rng.standard_normal((CALIBRATION_DRAWS, looks[-1]))
    out = np.empty((CALIBRATION_DRAWS, len(looks)))
    for j, n in enumerate(looks):
        m, s = x[:, :n].mean(axis=1), x[:, :n].std(axis=1, ddof=1)
        out[:, j] = np.abs(m) / (s / math.sqrt(n))
    return out


def _t_crits(looks: tuple[int, ...], alpha: float) -> np.ndarray:
    levels = nominal_levels([k / looks[-1] for k in looks], alpha)
    return np.asarray([stats.t.isf(p / 2, n - 1) for p, n in zip(levels, looks, strict=True)])


@lru_cache(maxsize=64)
def calibrated_alpha(looks: tuple[int, ...], alpha: float = ALPHA) -> float:
    """The spending function's total alpha at which the t-scale looks reject a true null with probability `alpha`.

    Read on the t-scale by nominal level alone (Jennison & Turnbull 2000, Sec. 3.8), the z-design's looks reject
    more often than its alpha when each look has few seeds: 5.4 % for looks at 3, 5, 8, 10 seeds and 5.8 % at
    3, 4, 5, 6 (tests/test_sequential.py). The t statistics under no effect do not depend on the noise's scale, so
    the error rate of a set of looks is one number, computed here on seeded simulated sweeps and brought to
    `alpha` by bisection on the spending function's alpha (REPRODUCTION.md, amendment of 2026-12-06)."""
    if len(looks) == 1:
        return alpha  # one look: the t interval is exact
    abs_t = _null_abs_t(looks)

    def error(a: float) -> float:
        return float(np.mean((abs_t > _t_crits(looks, a)[None, :]).any(axis=1)))

    lo, hi = alpha / 4, alpha
    if error(hi) <= alpha:
        return alpha
    for _ in range(18):  # alpha / 4 .. alpha to 3e-7
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if error(mid) <= alpha else (lo, mid)
    return lo


@dataclass(frozen=True)
class Design:
    """How a finding's verdict is read: `fixed` (one look at the seeds there are, the 95 % interval) or
    `group_sequential` (looks at `looks` seeds, Lan-DeMets O'Brien-Fleming-type spending of `alpha`)."""

    kind: str
    looks: tuple[int, ...]
    alpha: float = ALPHA

    @property
    def max_seeds(self) -> int:
        return self.looks[-1]

    @property
    def sequential(self) -> bool:
        return self.kind == "group_sequential"

    def looks_at(self, n: int) -> tuple[int, ...]:
        """The looks a store holding `n` seeds has had: the planned ones below n, then n itself (off the
        schedule when a round stopped early; the spending function is evaluated there, REPRODUCTION.md)."""
        if not self.sequential:
            return (n,)
        n = min(n, self.max_seeds)
        return tuple(k for k in self.looks if k < n) + (n,)

    def confidence(self, n: int, history: Sequence[int] | None = None) -> float:
        """1 - the nominal two-sided level of the look at `n` seeds, given the looks before it (default: the
        planned ones below n). Fixed design: 1 - alpha."""
        if not self.sequential:
            return 1.0 - self.alpha
        n = min(n, self.max_seeds)
        looks = tuple(k for k in (history if history is not None else self.looks) if k < n) + (n,)
        spend = calibrated_alpha(self.looks, self.alpha)
        return 1.0 - nominal_levels([k / self.max_seeds for k in looks], spend)[-1]

    def next_look(self, n: int) -> int | None:
        """The planned look after `n` seeds, None past the last."""
        return next((k for k in self.looks if k > n), None)

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "looks": list(self.looks), "alpha": self.alpha, "max_seeds": self.max_seeds,
                "spending": "lan_demets_obf" if self.sequential else None}

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> Design:
        try:
            looks = tuple(int(k) for k in d["looks"])
            design = cls(kind=str(d["kind"]), looks=looks, alpha=float(d.get("alpha", ALPHA)))
        except (KeyError, TypeError, ValueError) as e:
            raise DesignError(f"unreadable design {dict(d)!r}: {e}") from None
        if design.kind not in ("fixed", "group_sequential") or not looks or list(looks) != sorted(set(looks)):
            raise DesignError(f"unreadable design {dict(d)!r}")
        return design


def fixed_design(n: int) -> Design:
    """The committed rule: one look at the `n` seeds there are."""
    return Design("fixed", (n,))


def group_sequential(first: int, max_seeds: int = DEFAULT_MAX_SEEDS, alpha: float = ALPHA) -> Design:
    """Looks at min(MAX_LOOKS, N - n0 + 1) seed counts evenly spaced from `first` (n0) to `max_seeds` (N),
    rounded: 3 -> 10 gives 3, 5, 8, 10 (REPRODUCTION.md)."""
    if first < 2:
        raise DesignError(f"a sequential design needs at least 2 seeds at its first look, the grid has {first}")
    if not first <= max_seeds <= MAX_SEEDS_LIMIT:
        raise DesignError(f"--max-seeds: expected {first} (the grid's seeds) to {MAX_SEEDS_LIMIT}, got {max_seeds}")
    k = min(MAX_LOOKS, max_seeds - first + 1)
    if k == 1:
        return Design("group_sequential", (first,), alpha)
    looks = sorted({int(math.floor(first + (max_seeds - first) * i / (k - 1) + 0.5)) for i in range(k)})
    return Design("group_sequential", tuple(looks), alpha)
