"""Every shipped grid plans under every profile; the paper profile resolves to the paper's settings."""

from __future__ import annotations

from pathlib import Path

import pytest

from sweepdae.grid import Cell, expand, load_grid
from sweepdae.recipe import probe_t

GRIDS = Path(__file__).resolve().parent.parent / "grids"
CELLS = {"quickstart": 3, "tokenizer_dims": 23, "pixel_tokenizer": 4, "towards_dae": 6, "deconstruction": 5,
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
        cells = expand(g, p).cells
        positions = FEWER.get((name, p), CELLS[name])
        assert len(cells) == positions * len({c.seed for c in cells}), (name, p)


# Profiles that keep fewer positions than the grid has (axes.NAME = {values, labels}): per seed.
FEWER = {("tokenizer_dims", "demo"): 18, ("tokenizer_dims", "cpu"): 12, ("tokenizer_dims", "cpu_fitted"): 12,
         ("epochs", "cpu"): 2, ("tokenizer_dims", "cpu_fair"): 7, ("towards_dae", "cpu_fair"): 2}
# The six headline findings' grids (REPRODUCTION.md): their reproduction profiles run the reported seeds.
FINDING_GRIDS = ("deconstruction", "tokenizer_dims", "noise_levels", "towards_dae", "model_size", "epochs")
REPORTED_SEEDS = {0, 1, 2}


@pytest.mark.parametrize("name", FINDING_GRIDS)
def test_reproduction_profiles_run_the_reported_seeds(name: str) -> None:
    g = load_grid(GRIDS / f"{name}.toml")
    assert g.report.findings, name  # each names the findings it tests
    for p in ("cpu", "demo"):
        assert {c.seed for c in expand(g, p).cells} == REPORTED_SEEDS, (name, p)


@pytest.mark.parametrize("name", PAPER_GRIDS)
def test_paper_profile_is_the_papers_setting(name: str) -> None:
    plan = expand(load_grid(GRIDS / f"{name}.toml"), "paper")
    for c in plan.cells:
        r = c.recipe
        assert r.data.name.value == "imagefolder"
        assert r.train.batch_size == 2048 and r.train.base_lr == 1e-4 and r.train.weight_decay == 0
        assert r.train.warmup_epochs == 100
        assert r.probe.batch_size == 16384 and r.probe.base_lr == 0.1
        assert probe_t(r) in ((0, 10, 20, 40, 80) if name == "probe_t" else (407,) if
                              r.noise.levels.value == "single" else (10,))
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
def test_mirroring_grids_measure_baselines_and_report_probe_gain(name: str) -> None:
    """Issue 16: every grid that mirrors a paper table or figure also probes the random-init encoders of each cell's
    recipe (and the raw pixels), in every profile, and reports probe_gain right after probe_top1."""
    g = load_grid(GRIDS / f"{name}.toml")
    assert g.mirrors
    for profile in _profiles(name) or [None]:
        assert {c.recipe.probe.baselines for c in _cells(name, profile)} == {True}, (name, profile)
    metrics = list(g.report.metrics)
    assert metrics[metrics.index("probe_top1") + 1] == "probe_gain", metrics


@pytest.mark.parametrize("name", sorted(CELLS))
def test_smoke_profiles_keep_tokens_comparable(name: str) -> None:
    g = load_grid(GRIDS / f"{name}.toml")
    profile = "smoke" if "smoke" in g.profiles else None
    tokens = {c.recipe.num_tokens() for c in expand(g, profile).cells}
    assert tokens == {16}, (name, tokens)


# -- the paper's recipe facts, per grid and profile (docs/paper.md; each grid's comments quote the paper) -------------
SCHEDULES = {  # the schedule of every cell, in plan order ("*": every cell)
    "quickstart": "linear_gamma2", "tokenizer_dims": "linear_gamma2", "pixel_tokenizer": "linear_gamma2",
    "deconstruction": ["ddpm_linear"] * 4 + ["linear_gamma2"],
    "towards_dae": ["linear_gamma2"] * 2 + ["sigma_linear"] * 4,
    **{g: "sigma_linear" for g in ("noise_levels", "augmentation", "epochs", "model_size", "probe_t",
                                   "encoder_depth")},
}


def _cells(name: str, profile: str | None) -> list[Cell]:
    return list(expand(load_grid(GRIDS / f"{name}.toml"), profile).cells)


def _profiles(name: str) -> list[str]:
    return sorted(load_grid(GRIDS / f"{name}.toml").profiles)


@pytest.mark.parametrize("name", sorted(CELLS))
def test_recipe_facts_of_every_profile(name: str) -> None:
    for profile in _profiles(name):
        cells = _cells(name, profile)
        want = SCHEDULES[name]
        first = min(c.seed for c in cells)  # positions in order, one seed
        got = [c.recipe.noise.schedule.value for c in cells if c.seed == first]
        if isinstance(want, list) and (name, profile) == ("towards_dae", "cpu_fair"):
            want = [want[0], want[-1]]  # its declared cut: Tab. 3's first and last steps
        assert got == (want if isinstance(want, list) else [want] * len(got)), (name, profile)
        for c in cells:
            r = c.recipe
            per_dim = name == "tokenizer_dims" and c.coords.get("tokenizer") == "patch_pca per-dim"
            assert r.tokenizer.latent_scale == ("per_dim" if per_dim else "global"), (name, c.label)
            assert r.model.cond_mlp_ratio == 0.25  # docs/paper.md#architecture
            single = r.noise.levels.value == "single"
            assert probe_t(r) == (int(c.coords["t"]) if name == "probe_t" else 407 if single else 10)
            if name == "noise_levels":
                assert single == (c.coords["noise"] == "single")
            upsampled_ok = name == "pixel_tokenizer" and profile != "paper" and r.data.image_size == 64
            assert r.upsampled == upsampled_ok, (name, profile, c.label)
            if name in ("tokenizer_dims", "pixel_tokenizer", "quickstart"):  # Tab. 2 / Fig. 5: after Tab. 1
                assert not r.model.class_cond and r.objective.target.value == "eps"
                assert r.tokenizer.perceptual_weight == 0 and r.tokenizer.adversarial_weight == 0


def _one(name: str, profile: str, **coords: str) -> Cell:
    cells = _cells(name, profile)
    coords = {"seed": str(min(c.seed for c in cells)), **coords}  # the shared runs of one seed
    found = [c for c in cells if all(c.coords.get(k) == v for k, v in coords.items())]
    assert len(found) == 1, (name, profile, coords, [c.coords for c in _cells(name, profile)])
    return found[0]


# The runs the paper shares across tables (docs/paper.md#shared-runs): each group is one training in every profile.
SHARED = {
    "Tab. 1 last row = Tab. 2 conv VAE d=16": [
        ("deconstruction", {"step": "replace noise schedule"}),
        ("tokenizer_dims", {"tokenizer": "conv_vae", "d": "16"})],
    "Tab. 2 PCA d=32 = Tab. 3 baseline": [
        ("tokenizer_dims", {"tokenizer": "patch_pca", "d": "32"}), ("towards_dae", {"step": "baseline (patch PCA)"})],
    "Tab. 3 l-DAE = multi-level = center crop = probe t=10 clean = half depth": [
        ("towards_dae", {"step": "predict original image"}), ("noise_levels", {"noise": "multi"}),
        ("augmentation", {"augment": "center_crop"}), ("probe_t", {"t": "10", "input": "clean"}),
        ("encoder_depth", {"depth": "12"})],
    "random crop = 400 epochs = ViT-1/2L": [
        ("augmentation", {"augment": "random_resized_crop"}), ("epochs", {"epochs": "400"}),
        ("model_size", {"size": "ViT-1/2L"})],
}


@pytest.mark.parametrize("group", sorted(SHARED))
@pytest.mark.parametrize("profile", ["paper", "demo", "smoke", "cpu"])
def test_shared_runs_are_one_training(group: str, profile: str) -> None:
    members = [(name, coords) for name, coords in SHARED[group]
               if profile in load_grid(GRIDS / f"{name}.toml").profiles]
    assert len(members) >= 2, (group, profile)  # cpu: in the six findings' grids only
    cells = [_one(name, profile, **coords) for name, coords in members]
    assert len({c.train_key for c in cells}) == 1, [(c.label, c.train_key[:10]) for c in cells]
    if group.startswith("Tab. 3 l-DAE"):  # the same evaluation too: 64.5 in every one of these places
        assert len({c.key for c in cells}) == 1


def test_upsampled_is_flagged() -> None:
    flagged = [c.coords["d"] for c in _cells("pixel_tokenizer", "smoke") if c.recipe.upsampled]
    assert flagged == ["768"]  # 64 px from 28 px Fashion-MNIST; 32 px is zero-padded, 16 and 8 downsampled


def test_cpu_fitted_refits_only_the_patch_tokenizers() -> None:
    """REPRODUCTION.md's fit-budget rerun: the patch VAE / AE at their measured budgets (32 / 64 epochs) are new
    cells; every conv VAE and patch PCA cell is the cpu profile's own (same cell key: done once, never rerun)."""
    cpu = {c.label: c for c in _cells("tokenizer_dims", "cpu")}
    fitted = _cells("tokenizer_dims", "cpu_fitted")
    assert {c.label for c in fitted} == set(cpu)
    budgets = {"conv_vae": 1, "patch_vae": 32, "patch_ae": 64, "patch_pca": 1}
    for c in fitted:
        tok = c.coords["tokenizer"]
        assert c.recipe.tokenizer.fit_epochs == budgets[tok], c.label
        assert cpu[c.label].recipe.tokenizer.fit_epochs == 1
        same = c.key == cpu[c.label].key
        assert same == (tok in ("conv_vae", "patch_pca")), c.label


def test_cpu_fair_is_the_searched_configuration_with_its_declared_cuts() -> None:
    """REPRODUCTION.md, the fair CPU test: the search's choice (micro, 60,000 x 8 epochs, peak lr 3e-4) on the full
    splits with the 2x2 readout, seeds 0-2; patch PCA at d = 1..32 of 64 and the patch VAE at d = 16 (fit 32
    epochs); Tab. 3's first and last steps only; the paper's shared runs stay one training."""
    grids = ("tokenizer_dims", "noise_levels", "towards_dae")
    for name in grids:
        for c in _cells(name, "cpu_fair"):
            r = c.recipe
            assert c.seed in REPORTED_SEEDS and r.model.size.value == "micro", (name, c.label)
            assert (r.data.train_size, r.data.test_size, r.train.epochs, r.train.base_lr) == (60000, 10000, 8, 6e-4)
            assert r.probe.pool2x2 and r.probe.baselines
    dims = {(c.coords["tokenizer"], c.recipe.tokenizer.latent_dim, c.recipe.tokenizer.fit_epochs)
            for c in _cells("tokenizer_dims", "cpu_fair")}
    assert dims == {("patch_pca", d, 1) for d in (1, 2, 4, 8, 16, 32)} | {("patch_vae", 2, 32)}
    assert {c.coords["step"] for c in _cells("towards_dae", "cpu_fair")} == {"baseline (patch PCA)",
                                                                            "predict original image"}
    assert (_one("tokenizer_dims", "cpu_fair", tokenizer="patch_pca", d="32").key
            == _one("towards_dae", "cpu_fair", step="baseline (patch PCA)").key)
    assert (_one("towards_dae", "cpu_fair", step="predict original image").key
            == _one("noise_levels", "cpu_fair", noise="multi").key)
    for name in ("deconstruction", "model_size", "epochs"):  # out of scope at this budget (REPRODUCTION.md)
        assert "cpu_fair" not in _profiles(name)
