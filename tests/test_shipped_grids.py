"""Every shipped grid plans under every profile; the paper profile resolves to the paper's settings."""

from __future__ import annotations

from pathlib import Path

import pytest

from sweepdae.grid import expand, load_grid

GRIDS = Path(__file__).resolve().parent.parent / "grids"
CELLS = {"quickstart": 3, "tokenizer_dims": 18, "pixel_tokenizer": 4, "towards_dae": 6, "deconstruction": 5,
         "noise_levels": 2, "augmentation": 2, "epochs": 3, "model_size": 3, "encoder_depth": 3, "probe_t": 10}
PAPER_GRIDS = sorted(set(CELLS) - {"quickstart"})


def test_every_grid_is_listed() -> None:
    assert sorted(p.stem for p in GRIDS.glob("*.toml")) == sorted(CELLS)


@pytest.mark.parametrize("name", sorted(CELLS))
def test_cell_counts_per_profile(name: str) -> None:
    g = load_grid(GRIDS / f"{name}.toml")
    assert g.mirrors, "every grid names the paper table/figure it mirrors"
    profiles = set(g.profiles)
    if name != "quickstart":
        assert {"paper", "demo", "smoke"} <= profiles
    for p in profiles:
        assert len(expand(g, p).cells) == CELLS[name], (name, p)


@pytest.mark.parametrize("name", PAPER_GRIDS)
def test_paper_profile_is_the_papers_setting(name: str) -> None:
    plan = expand(load_grid(GRIDS / f"{name}.toml"), "paper")
    for c in plan.cells:
        r = c.recipe
        assert r.data.name.value == "imagefolder"
        assert r.train.batch_size == 2048 and r.train.base_lr == 1e-4 and r.train.weight_decay == 0
        assert r.train.warmup_epochs == 100
        assert r.probe.batch_size == 16384 and r.probe.base_lr == 0.1 and r.probe.t in (0, 10, 20, 40, 80)
        if name != "pixel_tokenizer":
            assert r.data.image_size == 256 and r.num_tokens() == 256
            if r.tokenizer.name.value != "conv_vae":
                assert r.tokenizer.patch_size == 16
        if name not in ("model_size",):
            assert r.model.size.value == "half_large"
        if name not in ("epochs",):
            assert r.train.epochs == 400
    if name == "epochs":
        assert [c.recipe.train.epochs for c in plan.cells] == [400, 800, 1600]
    if name == "model_size":
        assert [c.recipe.model.size.value for c in plan.cells] == ["base", "half_large", "large"]
    if name == "pixel_tokenizer":
        assert [(c.recipe.data.image_size, c.recipe.tokenizer.patch_size) for c in plan.cells] == [
            (256, 16), (128, 8), (64, 4), (32, 2)]
        assert all(c.recipe.num_tokens() == 256 for c in plan.cells)
    if name == "deconstruction":
        s = [c.recipe.noise.schedule.value for c in plan.cells]
        assert s == ["ddpm_linear"] * 4 + ["linear_gamma2"] and plan.cells[0].recipe.model.class_cond
        assert plan.cells[0].recipe.fid.num_samples == 50000
    if name == "towards_dae":
        last = plan.cells[-1].recipe
        assert (last.noise.schedule.value, last.objective.target.value, last.tokenizer.latent_dim) == (
            "sigma_linear", "image", 32)


@pytest.mark.parametrize("name", sorted(CELLS))
def test_smoke_profiles_keep_tokens_comparable(name: str) -> None:
    g = load_grid(GRIDS / f"{name}.toml")
    profile = "smoke" if "smoke" in g.profiles else None
    tokens = {c.recipe.num_tokens() for c in expand(g, profile).cells}
    assert tokens == {16}, (name, tokens)
