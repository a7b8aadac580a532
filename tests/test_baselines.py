"""The probe's reference baselines (sweepdae/cell/baselines.py): the random-init encoder against a closed form, the
adaLN-Zero-off network, raw pixels pooled to 32 px, the cache key (what moves it and what must not), cache hits,
streamed = in-memory, and probe_gain in a real cell's result."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from _digits import BASE, CPU, _digits

import sweepdae.cell.baselines as baselines_module
import sweepdae.eval as eval_module
from sweepdae.cell.baselines import (
    BASELINES,
    baseline_key,
    measure_baselines,
    pixel_features,
    random_encoder,
)
from sweepdae.cell.probing import encoder_feature_fn
from sweepdae.cell.run import run_cell
from sweepdae.data import InMemoryData, StreamedImageData, load_dataset, to_unit_range
from sweepdae.recipe import probe_depth, probe_t, recipe_from_flat
from sweepdae.tokenizers import get_tokenizer
from sweepdae.utils import atomic_write_json


# digits at 8 px, 4 px patches (4 tokens), micro DiT: a probe of 256 images in well under a second. SGD at lr 0.5:
# LARS at the default base_lr 6.4 leaves all of these at chance (9.4%) in 40 steps; this gives distinct numbers.
def test_random_init_is_a_mean_pooled_random_linear_embedding(tmp_path: Path) -> None:
    """With adaLN-Zero every block starts as the identity, so the random-init features are, in closed form,
    mean_n(W gamma_t z0_n + b + pos_n) with W, b, pos the network's own embedding; the adaLN-Zero-off network has the
    same draws (same embedding) but random blocks, and so other features."""
    r, tok, train, _ = _digits(tmp_path)
    x, _ = train.tensors()
    x = x[:32]
    init = random_encoder(r, tok, train.num_classes, adaln_zero=True)
    net = random_encoder(r, tok, train.num_classes, adaln_zero=False)
    assert torch.equal(init.x_embedder.weight, net.x_embedder.weight)  # one seed, the same draws
    t = probe_t(r)
    assert (t, probe_depth(r)) == (10, 3)
    # DDPM's linear betas (paper Sec. 4.1): gamma_t^2 = prod_{s <= t} (1 - beta_s)
    gamma = float(np.sqrt(np.prod(1.0 - np.linspace(1e-4, 0.02, 1000)[: t + 1])))
    z0 = tok.encode(to_unit_range(x))  # [B, N, d]
    emb = (gamma * z0) @ init.x_embedder.weight.T + init.x_embedder.bias + init.pos_embed  # [B, N, C]
    want = emb.mean(dim=1)  # [B, C]
    with torch.no_grad():
        got = encoder_feature_fn(r, init, tok, depth=probe_depth(r), t=t)(to_unit_range(x), torch.zeros(32))
        other = encoder_feature_fn(r, net, tok, depth=probe_depth(r), t=t)(to_unit_range(x), torch.zeros(32))
    assert got.shape == (32, 128)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    # random blocks move the features, if little: their adaLN gates come from the untrained conditioning
    # (t embedding ~N(0, 0.02) weights), measured |gate| ~0.006 in micro, and move them by ~0.5% here
    assert (other - want).abs().mean() > 1e-3 * want.abs().mean()
    # the recipe's own init: with adaln_zero = false the "random init" baseline is that random network
    off = recipe_from_flat({**BASE, "model.adaln_zero": False})
    with torch.no_grad():
        same = encoder_feature_fn(off, random_encoder(off, tok, 10, adaln_zero=off.model.adaln_zero), tok,
                                  depth=3, t=t)(to_unit_range(x), torch.zeros(32))
    torch.testing.assert_close(same, other)


def test_raw_pixels_pool_large_images_to_32px() -> None:
    """Up to 32 px a side the raw pixels are the image as it is; a 64 px image is averaged over 2 x 2 blocks."""
    small = torch.rand(3, 2, 16, 16)
    assert torch.equal(pixel_features(small, torch.zeros(3)), small.flatten(1))
    big = torch.rand(3, 3, 64, 64)
    want = big.reshape(3, 3, 32, 2, 32, 2).mean(dim=(3, 5)).flatten(1)  # [3, 3 * 32 * 32]
    torch.testing.assert_close(pixel_features(big, torch.zeros(3)), want)


# Every knob a baseline reads, with another valid value; the kinds it moves (all: the three).
ENCODER = ("random_init", "random_net")
MOVES: dict[str, tuple[Any, tuple[str, ...]]] = {
    "data.name": ("mnist", BASELINES), "data.root": ("/elsewhere", BASELINES), "data.image_size": (16, BASELINES),
    "data.channels": (3, BASELINES), "data.train_size": (128, BASELINES), "data.test_size": (32, BASELINES),
    "tokenizer.name": ("patch_ae", ENCODER), "tokenizer.latent_dim": (8, ENCODER),
    "tokenizer.patch_size": (2, ENCODER), "tokenizer.pca_num_patches": (600, ENCODER),
    "tokenizer.latent_scale": ("per_dim", ENCODER),
    "model.size": ("micro_b", ENCODER), "model.class_cond": (True, ENCODER), "model.cond_mlp_ratio": (0.5, ENCODER),
    "model.encoder_depth": (2, ENCODER), "model.adaln_zero": (False, ("random_init",)),
    "objective.input_space": ("image", ENCODER), "objective.output_space": ("image", ENCODER),
    "noise.schedule": ("sigma_linear", ENCODER), "noise.num_steps": (500, ENCODER),
    "noise.levels": ("single", ENCODER),  # probe.t = -1 (auto): a single-level model is probed at its own t
    "probe.t": (20, ENCODER), "probe.noisy_input": (True, ENCODER), "probe.depth": (1, ENCODER),
    "probe.epochs": (3, BASELINES), "probe.batch_size": (128, BASELINES), "probe.optimizer": ("lars", BASELINES),
    "probe.base_lr": (1.0, BASELINES), "probe.lr": (0.5, BASELINES), "probe.augment": (True, BASELINES),
    "seed": (1, BASELINES),
}
# Knobs no baseline reads: training only, evaluation it does not do, runtime, other tokenizers' knobs.
STAYS: dict[str, Any] = {
    "train.epochs": 7, "train.base_lr": 3e-4, "train.batch_size": 32, "train.ema_decay": 0.999,
    "train.precision": "fp32", "train.micro_batch_size": 32, "objective.target": "z0",
    "objective.loss_weight": "gamma2", "data.augment": "random_resized_crop", "data.num_workers": 1,
    "model.fused_attn": False, "model.class_dropout": 0.2,
    "tokenizer.fit_epochs": 9, "noise.single_sigma": 0.5, "probe.knn_k": 5, "probe.knn_temperature": 0.1,
    "probe.baselines": True, "fid.enabled": True, "fid.num_samples": 64, "probe.pool2x2": True,
}


def test_cache_key_moves_with_what_a_baseline_reads_only() -> None:
    base = recipe_from_flat(BASE)
    keys = {name: baseline_key(base, name) for name in BASELINES}
    assert len(set(keys.values())) == 3
    for path, (value, moved) in MOVES.items():
        r = base.with_updates({path: value})
        for name in BASELINES:
            assert (baseline_key(r, name) != keys[name]) == (name in moved), (path, name)
    for path, value in STAYS.items():
        r = base.with_updates({path: value})
        assert r.flat()[path] != base.flat()[path]
        assert {name: baseline_key(r, name) for name in BASELINES} == keys, path
    # an explicit probe t makes the noise levels irrelevant; probe.base_lr is not read once probe.lr is set
    fixed = base.with_updates({"probe.t": 10})
    assert baseline_key(fixed.with_updates({"noise.levels": "single"}), "random_init") == baseline_key(
        fixed, "random_init")
    lr = base.with_updates({"probe.lr": 0.5})
    assert baseline_key(lr.with_updates({"probe.base_lr": 1.0}), "raw_pixel") == baseline_key(lr, "raw_pixel")


def _count_calls(monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    """How often the baselines extract features and train a probe head (either kind of probe)."""
    calls = {"features": 0, "probes": 0}
    features_of = baselines_module.features_of

    def counting_features(*a: Any, **k: Any) -> Any:
        calls["features"] += 1
        return features_of(*a, **k)

    monkeypatch.setattr(baselines_module, "features_of", counting_features)
    for name in ("linear_probe", "linear_probe_augmented_data"):
        real = getattr(eval_module, name)

        def counting_probe(*a: Any, _real: Any = real, **k: Any) -> Any:
            calls["probes"] += 1
            return _real(*a, **k)

        monkeypatch.setattr(eval_module, name, counting_probe)
    return calls


def test_baselines_are_cached_and_shared_by_recipes_that_train_differently(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The first call measures the three (6 feature passes, 3 probes); the same recipe with other training knobs
    reads all three back with no feature extraction, the same numbers; a corrupt entry is measured again."""
    r, tok, train, test = _digits(tmp_path)
    calls = _count_calls(monkeypatch)
    cache = tmp_path / "cache"
    events: list[dict[str, Any]] = []
    first = measure_baselines(r, tokenizer=tok, train=train, test=test, device=CPU, cache=cache,
                              events=lambda **e: events.append(e))
    assert calls == {"features": 6, "probes": 3}
    assert sorted(first) == ["random_init_probe_top1", "random_net_probe_top1", "raw_pixel_probe_top1"]
    assert all(0 <= v <= 100 for v in first.values())
    assert [e["cached"] for e in events if "cached" in e] == [False] * 3
    assert sorted(p.name for p in cache.glob("*.json")) == sorted(f"{baseline_key(r, n)}.json" for n in BASELINES)
    other = r.with_updates({"train.epochs": 5, "train.base_lr": 3e-4, "objective.target": "z0"})
    assert other.train_key() != r.train_key() and other.key() != r.key()
    events.clear()
    again = measure_baselines(other, tokenizer=tok, train=train, test=test, device=CPU, cache=cache,
                              events=lambda **e: events.append(e))
    assert again == first and calls == {"features": 6, "probes": 3}
    assert [e["cached"] for e in events if "cached" in e] == [True] * 3
    (cache / f"{baseline_key(r, 'random_net')}.json").write_text('{"identity": {"trunc')
    third = measure_baselines(r, tokenizer=tok, train=train, test=test, device=CPU, cache=cache)
    assert third == first and calls == {"features": 8, "probes": 4}  # the random network again, deterministically
    doc = json.loads((cache / f"{baseline_key(r, 'random_net')}.json").read_text())
    assert doc["result"]["probe_top1"] == first["random_net_probe_top1"]


@pytest.mark.parametrize("augment", [False, True])
def test_streamed_set_gives_the_in_memory_numbers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                  augment: bool, image_folder: Any) -> None:
    """The same images from an image folder (streamed) and held in memory: the same three baselines to the bit, with
    the cell's probe protocol (augmented probe when probe.augment)."""
    arrays = image_folder(tmp_path / "folder", {"train": 24, "val": 8}, size=16, brightness_step=40)
    r = recipe_from_flat({"data.name": "imagefolder", "data.root": str(tmp_path / "folder"), "data.image_size": 16,
                          "data.num_workers": 0, "tokenizer.patch_size": 4, "tokenizer.latent_dim": 4,
                          "tokenizer.pca_num_patches": 200, "probe.epochs": 3, "probe.batch_size": 16,
                          "probe.augment": augment})
    streamed = (load_dataset(r.data, "train"), load_dataset(r.data, "test"))
    assert all(isinstance(s, StreamedImageData) for s in streamed)
    memory = (InMemoryData("mem", "train", *arrays["train"], 2), InMemoryData("mem", "test", *arrays["val"], 2))
    tok, _ = get_tokenizer(r.tokenizer, data_key=r.data_key(), images_uint8=arrays["train"][0], channels=3,
                           image_size=16, cache_dir=tmp_path / "tok")
    calls = _count_calls(monkeypatch)
    got = [measure_baselines(r, tokenizer=tok, train=tr, test=te, device=CPU, cache=tmp_path / kind)
           for kind, (tr, te) in (("streamed", streamed), ("memory", memory))]
    assert got[0] == got[1]
    assert sorted(got[0]) == ["random_init_probe_top1", "random_net_probe_top1", "raw_pixel_probe_top1"]
    # Without augmentation the streamed set's three baselines share one feature pass per split (2 passes, each image
    # decoded once for all three: measure_baselines shares by default) and the in-memory set runs one per baseline
    # and split (6): 8 in all, down from 12 when the streamed baselines ran a pass each. The augmented probe
    # recomputes its features per epoch inside linear_probe_augmented_data, so no features_of pass is counted.
    assert calls == ({"features": 0, "probes": 6} if augment else {"features": 8, "probes": 6})


def test_shared_feature_passes_give_the_numbers_of_a_pass_per_baseline(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, image_folder: Any) -> None:
    """A streamed set's baselines from one shared pass per split (the default) and from a pass per baseline: the same
    three probe numbers (float tolerance: the shared pass concatenates the three feature maps and splits them again),
    in 2 feature passes instead of 6."""
    arrays = image_folder(tmp_path / "folder", {"train": 24, "val": 8}, num_classes=3, size=16, brightness_step=40)
    r = recipe_from_flat({"data.name": "imagefolder", "data.root": str(tmp_path / "folder"), "data.image_size": 16,
                          "data.num_workers": 0, "tokenizer.patch_size": 4, "tokenizer.latent_dim": 4,
                          "tokenizer.pca_num_patches": 200, "probe.epochs": 5, "probe.batch_size": 16,
                          "probe.optimizer": "sgd", "probe.base_lr": 0.5})
    train, test = load_dataset(r.data, "train"), load_dataset(r.data, "test")
    assert isinstance(train, StreamedImageData) and isinstance(test, StreamedImageData)
    tok, _ = get_tokenizer(r.tokenizer, data_key=r.data_key(), images_uint8=arrays["train"][0], channels=3,
                           image_size=16, cache_dir=tmp_path / "tok")
    calls = _count_calls(monkeypatch)
    shared = measure_baselines(r, tokenizer=tok, train=train, test=test, device=CPU, cache=None)
    assert calls == {"features": 2, "probes": 3}
    alone = measure_baselines(r, tokenizer=tok, train=train, test=test, device=CPU, cache=None, share_passes=False)
    assert calls == {"features": 2 + 6, "probes": 6}
    assert sorted(shared) == sorted(alone) == sorted(f"{n}_probe_top1" for n in BASELINES)
    for name, value in alone.items():
        assert shared[name] == pytest.approx(value, abs=1e-6), name


def test_cell_records_probe_gain_over_the_better_random_encoder(tmp_path: Path) -> None:
    """A whole tiny cell with probe.baselines: the four numbers in result.json, probe_gain = probe_top1 - max of the
    two random encoders, and the baselines cached beside the cells (runs/_cache/baselines/)."""
    r = recipe_from_flat({**BASE, "probe.baselines": True})
    run_dir = tmp_path / "runs" / r.key()
    atomic_write_json(run_dir / "recipe.json", {"key": r.key(), "label": "baselines", "recipe": r.to_dict()})
    run_cell(run_dir)
    m = json.loads((run_dir / "result.json").read_text())["metrics"]
    for name in ("probe_top1", "random_init_probe_top1", "random_net_probe_top1", "raw_pixel_probe_top1"):
        assert 0 <= m[name] <= 100, name
    assert m["probe_gain"] == m["probe_top1"] - max(m["random_init_probe_top1"], m["random_net_probe_top1"])
    cached = sorted(p.name for p in (tmp_path / "runs" / "_cache" / "baselines").glob("*.json"))
    assert cached == sorted(f"{baseline_key(r, n)}.json" for n in BASELINES)
