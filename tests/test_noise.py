"""Noise schedules against closed forms, the table checks, and single-level lookup."""

from __future__ import annotations

import math

import pytest
import torch

from sweepdae.errors import RecipeError
from sweepdae.noise import SCHEDULES, Schedule, ScheduleError, create_schedule, schedule_names, single_level_t
from sweepdae.noise_levels import closest_t, noise_to_signal
from sweepdae.recipe import LossWeight, ScheduleName, Target

T = 1000
TS = [0, 1, 10, 250, 500, 998, 999]


def _ddpm_gamma2(t: int, num_steps: int = T) -> float:
    """prod_{k<=t} (1 - beta_k), betas linear from 1e-4 to 0.02 (scaled by 1000/T), in Python floats."""
    scale = 1000.0 / num_steps
    lo, hi = scale * 1e-4, scale * 0.02
    prod = 1.0
    for k in range(t + 1):
        prod *= 1.0 - (lo + (hi - lo) * k / (num_steps - 1))
    return prod


def test_registry_names_are_the_recipe_enum() -> None:
    assert schedule_names() == [m.value for m in ScheduleName]
    assert set(SCHEDULES) == {m.value for m in ScheduleName}


@pytest.mark.parametrize("name", [m.value for m in ScheduleName])
def test_tables_are_float64_and_well_formed(name: str) -> None:
    s = create_schedule(name, T)
    assert s.name == name and s.num_steps == T
    assert s.gamma.dtype == torch.float64 and s.sigma.dtype == torch.float64
    assert s.gamma.shape == (T,) and s.sigma.shape == (T,)
    nsr = s.noise_to_signal()
    assert bool((nsr[1:] > nsr[:-1]).all())
    if s.input_scaling:
        assert torch.allclose(s.gamma ** 2 + s.sigma ** 2, torch.ones(T, dtype=torch.float64), atol=1e-14)


def test_ddpm_linear_closed_form() -> None:
    s = create_schedule("ddpm_linear", T)
    assert s.input_scaling
    assert s.gamma[0].item() ** 2 == pytest.approx(1 - 1e-4, rel=1e-14)
    for t in TS:
        assert s.gamma[t].item() ** 2 == pytest.approx(_ddpm_gamma2(t), rel=1e-11)
        assert s.sigma[t].item() ** 2 == pytest.approx(1 - _ddpm_gamma2(t), rel=1e-10)
    # other T: the endpoints scale by 1000/T (DiT get_named_beta_schedule), so t = 0 has beta = 1e-3 at T = 100
    s100 = create_schedule("ddpm_linear", 100)
    assert s100.gamma[0].item() ** 2 == pytest.approx(1 - 1e-3, rel=1e-14)
    assert s100.gamma[-1].item() ** 2 == pytest.approx(_ddpm_gamma2(99, 100), rel=1e-10)


def test_ddpm_linear_too_few_steps_is_rejected() -> None:
    with pytest.raises(ScheduleError, match="beta >= 1"):
        create_schedule("ddpm_linear", 20)


def test_linear_gamma2_closed_form() -> None:
    s = create_schedule("linear_gamma2", T)
    for t in TS:
        assert s.gamma[t].item() ** 2 == pytest.approx(1 - (t + 1) / (T + 1), rel=1e-13)
    # linear in t: constant first difference of gamma^2
    d = torch.diff(s.gamma ** 2)
    assert torch.allclose(d, torch.full_like(d, -1 / (T + 1)), rtol=0, atol=1e-13)
    assert 0 < s.gamma[-1].item() < 0.05 and s.sigma[0].item() > 0


def test_sigma_linear_closed_form() -> None:
    s = create_schedule(ScheduleName.sigma_linear, T)
    assert not s.input_scaling
    assert bool((s.gamma == 1).all())
    for t in TS:
        assert s.sigma[t].item() == pytest.approx(math.sqrt(2) * (t + 1) / T, rel=1e-14)
    assert s.sigma[-1].item() == pytest.approx(math.sqrt(2), rel=1e-15)


def _table(values: list[float]) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float64)


@pytest.mark.parametrize(("gamma", "sigma", "scaling", "match"), [
    (_table([1.0, 1.0, 1.0]), _table([0.1, 0.3, 0.2]), False, "strictly increasing"),
    (_table([1.0, 1.0, 1.0]), _table([0.0, 0.1, 0.2]), False, "sigma must be > 0"),
    (_table([1.0, 1.0, 1.1]), _table([0.1, 0.2, 0.3]), False, r"gamma must lie in \(0, 1\]"),
    (_table([1.0, 0.9, 1.0]), _table([0.1, 0.2, 0.3]), False, "non-increasing|gamma = 1"),
    (_table([0.9, 0.9, 0.9]), _table([0.1, 0.2, 0.3]), False, "gamma = 1"),
    (_table([1.0, 1.0, 1.0]), _table([0.1, float("nan"), 0.3]), False, "non-finite"),
    (_table([0.99, 0.9, 0.5]), _table([0.1, 0.2, 0.3]), True, "gamma\\^2 \\+ sigma\\^2 = 1"),
    (torch.ones(3), _table([0.1, 0.2, 0.3]), False, "float64"),
    (_table([1.0, 1.0]), _table([0.1, 0.2]), False, "shape"),
])
def test_bad_tables_are_rejected(gamma: torch.Tensor, sigma: torch.Tensor, scaling: bool, match: str) -> None:
    with pytest.raises(ScheduleError, match=match):
        Schedule("bad", 3, gamma, sigma, scaling)


def test_unknown_name_lists_the_valid_ones() -> None:
    with pytest.raises(RecipeError, match="valid: ddpm_linear, linear_gamma2, sigma_linear"):
        create_schedule("ddpm_linaer")


@pytest.mark.parametrize("name", [m.value for m in ScheduleName])
def test_add_noise_matches_formula(name: str) -> None:
    s = create_schedule(name, T)
    g = torch.Generator().manual_seed(1)
    z0 = torch.randn(len(TS), 5, 3, generator=g)
    eps = torch.randn(len(TS), 5, 3, generator=g)
    t = torch.tensor(TS)
    out = s.add_noise(z0, t, eps)
    assert out.dtype == torch.float32
    for i, ti in enumerate(TS):
        ref = s.gamma[ti] * z0[i].double() + s.sigma[ti] * eps[i].double()
        assert torch.allclose(out[i].double(), ref, atol=1e-6)
    assert s.add_noise(z0.bfloat16(), t, eps).dtype == torch.bfloat16


def test_loss_weight_auto_and_explicit() -> None:
    vp, ve = create_schedule("ddpm_linear", T), create_schedule("sigma_linear", T)
    t = torch.tensor(TS)
    ones = torch.ones(len(TS))
    assert torch.equal(vp.loss_weight(t, LossWeight.auto, Target.eps), ones)
    assert torch.equal(ve.loss_weight(t, LossWeight.auto, Target.eps), ones)
    for target in (Target.z0, Target.image):
        w = vp.loss_weight(t, LossWeight.auto, target)
        assert w.dtype == torch.float32
        assert torch.allclose(w.double(), vp.gamma[t] ** 2, rtol=1e-6)
        w = ve.loss_weight(t, LossWeight.auto, target)
        assert torch.allclose(w.double(), 1 / (1 + ve.sigma[t] ** 2), rtol=1e-6)
    assert torch.equal(vp.loss_weight(t, LossWeight.uniform, Target.z0), ones)
    assert torch.allclose(vp.loss_weight(t, LossWeight.gamma2, Target.eps).double(), vp.gamma[t] ** 2, rtol=1e-6)
    assert torch.allclose(vp.loss_weight(t, LossWeight.inv_1p_sigma2, Target.eps).double(),
                          1 / (1 + vp.sigma[t] ** 2), rtol=1e-6)


@pytest.mark.parametrize("name", [m.value for m in ScheduleName])
def test_single_level_t_is_the_closest_ratio(name: str) -> None:
    s = create_schedule(name, T)
    target = math.sqrt(1 / 3)  # paper Sec. 5
    ratios = [s.sigma[i].item() / s.gamma[i].item() for i in range(T)]
    best = min(range(T), key=lambda i: abs(ratios[i] - target))
    assert single_level_t(s, target) == best
    assert abs(ratios[best] - target) < 0.01
    if name == "sigma_linear":  # sqrt(2)(t+1)/1000 = 0.57735 -> t + 1 = 408.2
        assert best == 407


def test_single_level_t_ties_and_extremes() -> None:
    s = Schedule("tie", 3, torch.ones(3, dtype=torch.float64), _table([0.25, 0.75, 1.25]), False)
    assert single_level_t(s, 0.5) == 0  # exactly equidistant from 0.25 and 0.75: the smaller t
    assert single_level_t(s, 100.0) == 2
    with pytest.raises(ValueError):
        single_level_t(s, 0.0)


@pytest.mark.parametrize("name", [m.value for m in ScheduleName])
def test_plain_ratios_pick_the_tables_t(name: str) -> None:
    """The torch-free ratios a recipe's single-level t reads pick the t the float64 tables pick."""
    for steps in (25, 100, 999, 1000, 4000):
        s = create_schedule(name, steps)
        ratios = noise_to_signal(name, steps)
        assert ratios == pytest.approx(s.noise_to_signal().tolist(), rel=1e-12)
        for sigma in (1e-3, 0.1, math.sqrt(1 / 3), 0.5, 1.0, 3.0):
            assert closest_t(ratios, sigma) == single_level_t(s, sigma)


def test_the_torch_free_levels_refuse_what_the_tables_refuse() -> None:
    """A single-level recipe's t is found without torch (noise_levels): the schedules it cannot build are refused
    there with the tables' own one-line error, not a ZeroDivisionError at plan time."""
    from sweepdae.noise_levels import noise_to_signal

    for name, steps in (("ddpm_linear", 20), ("ddpm_linear", 1), ("sigma_linear", 1)):
        with pytest.raises(ScheduleError) as torch_side:
            create_schedule(name, steps)
        with pytest.raises(ScheduleError) as plain_side:
            noise_to_signal(name, steps)
        assert str(plain_side.value) == str(torch_side.value)
    assert len(noise_to_signal("ddpm_linear", 21)) == 21
