"""The augmented linear probe (MAE: RandomResizedCrop + flip on train, center crop on test, features recomputed every
epoch) on a streamed image folder: the same result as on the same images held in memory, fresh crops every epoch
drawn from (seed, epoch), reproducible, and through a whole cell."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn as nn

from sweepdae.data import ImageData, InMemoryData, StreamedImageData, load_dataset
from sweepdae.eval import linear_probe_augmented_data, random_resized_crop_flip
from sweepdae.eval.probe import epoch_generator
from sweepdae.recipe import DataConfig, ProbeConfig, ProbeOptimizer, recipe_from_flat


def _sets(root: Path, arrays: dict[str, tuple[torch.Tensor, torch.Tensor]], num_classes: int, size: int, *,
          num_workers: int = 0) -> tuple[tuple[ImageData, ImageData], tuple[ImageData, ImageData]]:
    """((streamed train, test), (in-memory train, test)) of the same images."""
    cfg = DataConfig(name="imagefolder", root=str(root), image_size=size, num_workers=num_workers)
    streamed = (load_dataset(cfg, "train"), load_dataset(cfg, "test"))
    assert all(isinstance(s, StreamedImageData) for s in streamed)
    memory = (InMemoryData("mem", "train", *arrays["train"], num_classes),
              InMemoryData("mem", "test", *arrays["val"], num_classes))
    return streamed, memory


class _Encoder(nn.Module):
    """Frozen stand-in encoder: a fixed random strided conv, pooled to [B, 48]."""

    def __init__(self) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(0)
        self.conv = nn.Conv2d(3, 48, 4, 4)
        with torch.no_grad():
            self.conv.weight.copy_(torch.randn(self.conv.weight.shape, generator=gen) * 0.2)
            self.conv.bias.zero_()

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """x [B, 3, S, S] in [-1, 1] -> [B, 48]."""
        return torch.relu(self.conv(x)).mean(dim=(2, 3))


def _probe(train: ImageData, test: ImageData, *, seed: int = 0, epochs: int = 6, batch_size: int = 32,
           feature_batch_size: int = 12) -> tuple[dict[str, float], list[float]]:
    """The augmented probe's result and its per-epoch mean train losses."""
    losses: list[float] = []
    cfg = ProbeConfig(epochs=epochs, batch_size=batch_size, optimizer=ProbeOptimizer.sgd, base_lr=0.5, augment=True)
    out = linear_probe_augmented_data(_Encoder(), train, test, cfg=cfg, seed=seed,
                                      feature_batch_size=feature_batch_size,
                                      progress=lambda epoch, epochs, loss: losses.append(loss))
    return out, losses


def test_streamed_and_in_memory_augmented_probe_agree(tmp_path: Path, image_folder: Any) -> None:
    """Both kinds of set yield the same uint8 images at the model's size, and the crop is taken from those on the
    device by one function, so the probe's every loss and accuracy agree exactly (not within a tolerance)."""
    arrays = image_folder(tmp_path, {"train": 25, "val": 10}, num_classes=4, size=16)
    (s_train, s_test), (m_train, m_test) = _sets(tmp_path, arrays, 4, 16, num_workers=2)
    decoded = torch.cat([x for x, _ in s_train.batches(40, shuffle=False)])
    assert torch.equal(decoded, arrays["train"][0])  # premise: the loader decodes exactly the in-memory images
    # 100 images, batch 32 (3 iterations, 4 images dropped), crops of 12 images: chunks straddle probe batches
    streamed, s_losses = _probe(s_train, s_test)
    memory, m_losses = _probe(m_train, m_test)
    assert s_losses == m_losses and len(s_losses) == 6
    assert streamed["probe_top1"] == memory["probe_top1"]
    assert streamed["probe_train_top1"] == memory["probe_train_top1"]
    assert memory["probe_top1"] > 40.0  # 4 classes, chance 25: the probe learns something through the crops


def _recorded_crops(train: ImageData, test: ImageData, *, epochs: int, seed: int) -> list[dict[int, torch.Tensor]]:
    """Per epoch, the cropped input the encoder saw for each train image (identified by its label)."""
    seen: list[dict[int, torch.Tensor]] = [{} for _ in range(epochs)]
    done = {"epochs": 0}

    class Recorder(_Encoder):
        def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            if done["epochs"] < epochs:  # the train epochs; afterwards the uncropped evaluation passes
                for xi, yi in zip(x, y.tolist(), strict=True):
                    seen[done["epochs"]][yi] = xi.clone()
            return super().forward(x, y)

    cfg = ProbeConfig(epochs=epochs, batch_size=len(train), optimizer=ProbeOptimizer.sgd, augment=True)
    linear_probe_augmented_data(Recorder(), train, test, cfg=cfg, seed=seed, feature_batch_size=5,
                                progress=lambda e, n, loss: done.update(epochs=e))
    return seen


def test_each_epoch_crops_afresh_from_seed_and_epoch(tmp_path: Path, image_folder: Any) -> None:
    """One image per class, so a label names its image: every epoch crops each image anew, and epoch e's crops are
    exactly `random_resized_crop_flip` of that epoch's shuffled images under `epoch_generator(seed, e)`."""
    n = 12
    arrays = image_folder(tmp_path, {"train": 1, "val": 1}, num_classes=n, size=16)
    (train, test), _ = _sets(tmp_path, arrays, n, 16)
    seen = _recorded_crops(train, test, epochs=3, seed=7)
    assert all(sorted(s) == list(range(n)) for s in seen)
    for a, b in ((0, 1), (1, 2), (0, 2)):
        differ = sum(not torch.equal(seen[a][i], seen[b][i]) for i in range(n))
        assert differ >= n - 1, (a, b, differ)  # a 16 px image may, rarely, get one box and flip twice
    def draws(seed: int, epoch: int) -> torch.Tensor:
        return torch.rand(8, generator=epoch_generator(seed, epoch))

    assert torch.equal(draws(7, 1), draws(7, 1))  # (seed, epoch) decides the stream, and both of them do:
    assert len({tuple(draws(s, e).tolist()) for s in (7, 8) for e in (0, 1, 2)}) == 6
    shuffle = torch.Generator().manual_seed(7 + 1)  # the probe's shuffle, as linear_probe's
    images = arrays["train"][0]
    for epoch in range(3):
        order = torch.randperm(n, generator=shuffle)
        gen = epoch_generator(7, epoch)
        replay = torch.cat([random_resized_crop_flip(images[order[s:s + 5]], gen) for s in range(0, n, 5)])
        for k, i in enumerate(order.tolist()):
            assert torch.equal(seen[epoch][i], replay[k]), (epoch, i)


def test_augmented_probe_on_streamed_set_is_reproducible(tmp_path: Path, image_folder: Any) -> None:
    """The same seed twice (on the same set object, whose own pass counter moves on) gives the same losses and
    accuracy; another seed gives other crops and so other losses."""
    arrays = image_folder(tmp_path, {"train": 16, "val": 4}, num_classes=2, size=16)
    (train, test), _ = _sets(tmp_path, arrays, 2, 16)
    first, first_losses = _probe(train, test, seed=3, epochs=4)
    for _ in train.batches(8, shuffle=True):  # another pass without a generator between the two probes
        pass
    again, again_losses = _probe(train, test, seed=3, epochs=4)
    assert again_losses == first_losses
    assert again["probe_top1"] == first["probe_top1"] and again["probe_train_top1"] == first["probe_train_top1"]
    _, other_losses = _probe(train, test, seed=4, epochs=4)
    assert other_losses != first_losses


def test_cell_with_augmented_probe_on_imagefolder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                   image_folder: Any) -> None:
    """probe.augment = true on an imagefolder set (the paper profile's data path) runs a whole cell, cropping every
    probe epoch's train images, where it raised RecipeError before."""
    import sweepdae.eval.probe as probe_module
    from sweepdae.cell.run import run_cell
    from sweepdae.utils import atomic_write_json

    image_folder(tmp_path / "folder", {"train": 24, "val": 8}, num_classes=2, size=12)
    calls = {"images": 0}

    def counting(images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        calls["images"] += images.shape[0]
        return random_resized_crop_flip(images, generator)

    monkeypatch.setattr(probe_module, "random_resized_crop_flip", counting)
    r = recipe_from_flat({"data.name": "imagefolder", "data.root": str(tmp_path / "folder"), "data.image_size": 8,
                          "data.num_workers": 0, "tokenizer.patch_size": 4, "tokenizer.latent_dim": 4,
                          "tokenizer.pca_num_patches": 200, "model.size": "micro", "train.epochs": 1,
                          "train.batch_size": 16, "probe.epochs": 3, "probe.batch_size": 16, "probe.augment": True})
    run_dir = tmp_path / "runs" / r.key()
    atomic_write_json(run_dir / "recipe.json", {"key": r.key(), "label": "augmented probe", "recipe": r.to_dict()})
    result = run_cell(run_dir)
    m = result["metrics"]
    assert 0 <= m["probe_top1"] <= 100 and "probe_train_top1" in m and "knn_top1" in m
    assert calls["images"] == 3 * 48  # 3 probe epochs x 48 train images (batch 16 divides 48: none dropped)
    saved = json.loads((run_dir / "result.json").read_text())
    assert saved["key"] == r.key() and saved["metrics"]["probe_top1"] == m["probe_top1"]


def test_every_paper_profile_uses_the_augmented_probe() -> None:
    """The paper's probe (docs/paper.md#linear-probe) is MAE's: RandomResizedCrop + flip on train, center crop on
    test; so every shipped paper profile (ImageNet, streamed) sets probe.augment."""
    from sweepdae.grid import expand, load_grid

    grids = [load_grid(p) for p in sorted((Path(__file__).resolve().parent.parent / "grids").glob("*.toml"))]
    papers = [g for g in grids if "paper" in g.profiles]
    assert len(papers) >= 10
    for g in papers:
        cells = expand(g, "paper").cells
        assert {c.recipe.probe.augment for c in cells} == {True}, g.name
        assert {c.recipe.data.name.value for c in cells} == {"imagefolder"}, g.name
