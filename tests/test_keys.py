"""Cell identity: a training identity (train_key) apart from what only evaluation reads (the cell key).

The expectations here are written out by hand (which knob is read by training, by evaluation, or by neither, and
which component reads it), not derived from `recipe.KNOB_ROLES`, so a wrong classification fails a test.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from sweepdae.errors import RecipeError
from sweepdae.grid import expand, load_grid
from sweepdae.recipe import KNOB_ROLES, KNOBS, Recipe

RUNTIME = {"data.num_workers", "model.fused_attn", "train.micro_batch_size", "train.compile",
           "train.checkpoint_every"}
EVAL_ONLY = {"data.test_size", "model.encoder_depth"} | {p for p in KNOBS if p.startswith(("probe.", "fid."))}

# Knobs that the default recipe (patch PCA, multi-level noise, unconditional, eps target, no FID, probe.lr = 0)
# never reads, with the companion settings under which it does.
UNREAD_BY_DEFAULT = {
    **{f"tokenizer.{k}": {"tokenizer.name": "conv_vae"} for k in (
        "conv_downsample", "conv_group", "conv_channels", "kl_weight", "fit_epochs", "fit_batch_size", "fit_lr",
        "perceptual_net")},
    "tokenizer.perceptual_weight": {"tokenizer.name": "conv_vae"},
    "tokenizer.adversarial_weight": {"tokenizer.name": "conv_vae"},
    "noise.single_sigma": {"noise.levels": "single"},
    "model.class_dropout": {"model.class_cond": True},
    "objective.residual_weight": {"objective.target": "image", "objective.input_space": "image",
                                  "objective.output_space": "image"},
    **{p: {"fid.enabled": True} for p in KNOBS if p.startswith("fid.") and p != "fid.enabled"},
    "fid.guidance_scale": {"fid.enabled": True, "model.class_cond": True},
}


def test_every_knob_is_classified() -> None:
    assert set(KNOB_ROLES) == set(KNOBS), set(KNOBS) ^ set(KNOB_ROLES)
    assert {p for p, r in KNOB_ROLES.items() if r == "runtime"} == RUNTIME
    assert {p for p, r in KNOB_ROLES.items() if r == "eval"} == EVAL_ONLY


def _changed(base: Recipe, path: str) -> Recipe:
    """The base recipe with one valid change of `path`."""
    v = KNOBS[path].default
    candidates: list[object]
    if isinstance(v, bool):
        candidates = [not v]
    elif hasattr(v, "value") and hasattr(type(v), "__members__"):
        candidates = [m.value for m in type(v) if m != v]
    elif isinstance(v, int):
        candidates = [v + 1, v + 2, max(0, v - 1), v * 2, 3, 1]
    elif isinstance(v, float):
        candidates = [v * 0.5 if v else 0.5, v + 0.25]
    else:
        candidates = [v + "x", "global", "none", "test"]
    for c in candidates:
        if c == v or c == getattr(v, "value", v):
            continue
        try:
            return base.with_updates({path: c})
        except RecipeError:
            continue
    raise AssertionError(f"no valid single change of {path}")


@pytest.mark.parametrize("path", sorted(KNOBS))
def test_each_knob_moves_the_right_key(path: str) -> None:
    companion = UNREAD_BY_DEFAULT.get(path)
    if companion is not None:  # not read by the default recipe: enters no key
        base = Recipe()
        other = _changed(base, path) if path not in ("tokenizer.perceptual_weight", "tokenizer.adversarial_weight",
                                                     "fid.guidance_scale") else None
        if other is not None:
            assert (other.train_key(), other.key()) == (base.train_key(), base.key()), path
        base = Recipe().with_updates(companion)
    else:
        base = Recipe()
    other = _changed(base, path)
    if path in RUNTIME:
        assert (other.train_key(), other.key()) == (base.train_key(), base.key()), path
    elif path in EVAL_ONLY:
        assert other.train_key() == base.train_key() and other.key() != base.key(), path
    else:
        assert other.train_key() != base.train_key() and other.key() != base.key(), path


def test_keys_hash_resolved_values() -> None:
    micro = Recipe()  # 6 blocks: the encoder is the first 3, which the probe reads by default
    assert micro.with_updates({"probe.depth": 3}).key() == micro.key()
    assert micro.with_updates({"model.encoder_depth": 3}).key() == micro.key()
    assert micro.with_updates({"model.encoder_depth": 2}).key() == micro.with_updates({"probe.depth": 2}).key()
    assert micro.with_updates({"probe.depth": 2}).key() != micro.key()
    fid = micro.with_updates({"fid.enabled": True, "fid.num_samples": 100})
    assert fid.with_updates({"fid.ref_size": 100}).key() == fid.key()
    lr = micro.with_updates({"probe.lr": 0.5})
    assert lr.with_updates({"probe.base_lr": 1.0}).key() == lr.key()


def test_probe_t_auto_is_ten_or_the_single_levels_own_t() -> None:
    """probe.t = -1 (the default): the paper's t = 10, except a single-level model, probed at the one t it saw.
    sigma = sqrt(1/3) on sigma-linear (sigma_t = sqrt(2)(t+1)/1000): t + 1 = 1000 sqrt(1/6) = 408.2 -> t = 407."""
    from sweepdae.recipe import probe_t

    assert probe_t(Recipe()) == 10 and Recipe().key() == Recipe().with_updates({"probe.t": 10}).key()
    single = Recipe().with_updates({"noise.levels": "single", "noise.schedule": "sigma_linear"})
    assert probe_t(single) == 407 == round(1000 * (1 / 6) ** 0.5) - 1
    assert single.key() == single.with_updates({"probe.t": 407}).key()
    assert single.key() != single.with_updates({"probe.t": 10}).key()


def test_shipped_probe_grids_train_once_per_seed() -> None:
    """`probe_t` probes one l-DAE at 5 t x clean/noisy, `encoder_depth` after 3 blocks: one training each, in
    every profile, and their cells differ only in evaluation."""
    for name, n_cells in (("probe_t", 10), ("encoder_depth", 3)):
        grid = load_grid(f"grids/{name}.toml")
        for profile in grid.profiles:
            plan = expand(grid, profile)
            seeds = {c.seed for c in plan.cells}
            assert len(plan.cells) == n_cells * len(seeds), (name, profile)
            assert len({c.train_key for c in plan.cells}) == len(seeds), (name, profile)
            assert len({c.key for c in plan.cells}) == len(plan.cells)


# Recipe().key() and train_key() as computed before probe.pool2x2 existed: a knob left off changes no key.
DEFAULT_KEY = "eb6b90c12472b62d1910a7b92a1c3fca9eaf11235e1663e039daebb3b8d1ed60"
DEFAULT_TRAIN_KEY = "008880f4f9f7f22f2c5cbfe82f6f4b3ec8ed890108c436d9f2f62ad9bb7e1466"


def test_pool2x2_is_an_evaluation_knob_that_off_enters_no_key() -> None:
    base = Recipe()
    assert KNOB_ROLES["probe.pool2x2"] == "eval" and KNOBS["probe.pool2x2"].default is False
    assert (base.key(), base.train_key()) == (DEFAULT_KEY, DEFAULT_TRAIN_KEY)
    assert "probe.pool2x2" not in base.eval_identity() and "probe.pool2x2" not in base.train_identity()
    on = base.with_updates({"probe.pool2x2": True})
    assert on.train_key() == base.train_key() and on.key() != base.key()
    assert on.eval_identity() == {**base.eval_identity(), "probe.pool2x2": True}
    shipped = sorted((Path(__file__).parents[1] / "grids").glob("*.toml"))
    assert len(shipped) > 5
    for path in shipped:  # no shipped cell turns it on but cpu_fair's (made with it): their keys are as before
        grid = load_grid(path)
        for profile in set(grid.profiles) - {"cpu_fair"}:
            for c in expand(grid, profile).cells:
                assert "probe.pool2x2" not in c.recipe.eval_identity(), (path.name, profile, c.label)


def test_pool2x2_is_refused_where_it_is_undefined() -> None:
    with pytest.raises(RecipeError, match="probe.augment"):
        Recipe().with_updates({"probe.pool2x2": True, "probe.augment": True})
    with pytest.raises(RecipeError, match="2 x 2"):  # 8 px in 8 px patches: one token
        Recipe().with_updates({"probe.pool2x2": True, "data.image_size": 8, "tokenizer.patch_size": 8,
                               "tokenizer.latent_dim": 4})
