"""The ImageData interface, its in-memory implementation and the uint8 image helpers every dataset shares."""

from __future__ import annotations

import abc
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from sweepdae.data._augment import random_resized_crop_batch
from sweepdae.errors import DatasetError
from sweepdae.recipe import Augment

# Seed of the fixed permutation that picks train_size / test_size subsets (and digits' 80/20 split). It is not the
# cell's seed, so every cell of a sweep sees the same examples; any constant works, this is the paper's arXiv id.
SUBSET_SEED = 240114404

# ITU-R 601-2 luma in PIL's fixed point (PIL Convert.c: L = (R*19595 + G*38470 + B*7471 + 0x8000) >> 16), so
# in-memory sets and PIL-decoded image folders turn RGB into grey identically.
_LUMA = (19595, 38470, 7471)


def as_augment(augment: Augment | str) -> Augment:
    """Parse an augmentation name; an unknown one lists the valid names."""
    try:
        return Augment(augment)
    except ValueError:
        raise ValueError(f"unknown augment {augment!r}; valid: {', '.join(a.value for a in Augment)}") from None


def augment_batch(images: torch.Tensor, augment: Augment | str, *,
                  generator: torch.Generator | None = None) -> torch.Tensor:
    """Train-time augmentation of a uint8 [B, C, S, S] batch on its device; uint8 out, same shape."""
    # center_crop: as is (images were resized and center-cropped at load); random_resized_crop: MAE pretraining's
    # RandomResizedCrop(scale=(0.2, 1)) + horizontal flip, per image.
    if as_augment(augment) == Augment.random_resized_crop:
        return random_resized_crop_batch(images, generator=generator)
    return images


def to_unit_range(images_uint8: torch.Tensor) -> torch.Tensor:
    """uint8 [0, 255] -> float32 [-1, 1]: the one conversion into the range every tokenizer and model sees."""
    return images_uint8.to(torch.float32).div(127.5).sub(1.0)


def from_unit_range(x: torch.Tensor) -> torch.Tensor:
    """float [-1, 1] (clamped) -> uint8 [0, 255], the inverse of `to_unit_range` up to rounding."""
    return x.clamp(-1, 1).add(1).mul(127.5).round().to(torch.uint8)


def cache_dir() -> Path:
    """Where downloads go: $XDG_CACHE_HOME/sweepdae, else ~/.cache/sweepdae."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "sweepdae"


def data_env_dir() -> Path | None:
    """The folder named by $SWEEPDAE_DATA, if set."""
    value = os.environ.get("SWEEPDAE_DATA", "")
    return Path(value).expanduser() if value else None


def subset_indices(n: int, size: int, *, what: str) -> np.ndarray | None:
    """Sorted indices of a fixed `size`-example subset of `n` (None = all); a prefix of one fixed permutation."""
    if size <= 0 or size == n:
        return None
    if size > n:
        raise DatasetError(f"{what} has {n} examples, fewer than the {size} asked for")
    perm = np.random.default_rng(SUBSET_SEED).permutation(n)
    return np.sort(perm[:size])


def convert_channels(images: torch.Tensor, channels: int) -> torch.Tensor:
    """uint8 [N, C, H, W] to `channels` (0 = keep): grey to RGB repeats, RGB to grey uses PIL's luma."""
    have = images.shape[1]
    if channels in (0, have):
        return images
    if channels == 3 and have == 1:
        return images.expand(-1, 3, -1, -1).contiguous()
    if channels == 1 and have == 3:
        weights = torch.tensor(_LUMA, dtype=torch.int32, device=images.device).view(1, 3, 1, 1)
        grey = ((images.to(torch.int32) * weights).sum(dim=1, keepdim=True) + 0x8000) >> 16
        return grey.to(torch.uint8)
    raise DatasetError(f"cannot convert {have}-channel images to {channels} channels (use 0, 1 or 3)")


def resize_uint8(images: torch.Tensor, size: int, *, chunk: int = 4096) -> torch.Tensor:
    """Bilinear, antialiased resize of uint8 [N, C, H, W] to [N, C, size, size] (uint8 kernel, chunked)."""
    if images.shape[-2:] == (size, size):
        return images
    parts = [F.interpolate(images[i:i + chunk], size=(size, size), mode="bilinear", antialias=True,
                           align_corners=False) for i in range(0, images.shape[0], chunk)]
    out = torch.cat(parts) if parts else images.new_empty(images.shape[0], images.shape[1], size, size)
    return out if out.dtype == torch.uint8 else out.round().clamp(0, 255).to(torch.uint8)


class ImageData(abc.ABC):
    """One split of a dataset as uint8 image batches: the one interface the trainer, probe and FID use."""

    name: str
    split: str
    num_classes: int
    channels: int  # after conversion
    image_size: int
    in_memory: bool

    def __init__(self, *, seed: int = 0) -> None:
        self._seed = seed
        self._passes = 0

    @abc.abstractmethod
    def __len__(self) -> int:
        """Examples in the split (after the subset)."""

    @abc.abstractmethod
    def batches(self, batch_size: int, *, shuffle: bool, generator: torch.Generator | None = None,
                device: torch.device | str | None = None, augment: Augment | str = "center_crop",
                drop_last: bool = False, shard: tuple[int, int] | None = None
                ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """One pass: (uint8 [B, C, H, W], int64 [B]) on `device` (None = where the set lives).

        `shard` = (rank, world): only rank's share of the pass, DistributedSampler's split of it (positions rank,
        rank + world, ... of the pass padded by its first positions to a multiple of world, so every rank gets
        ceil(n / world) images): batch c of each rank then holds rows rank::world of the pass's positions
        [c B world, (c+1) B world), which `sweepdae.eval.probe.gather_rows` puts back in order."""

    def tensors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The whole split as (uint8 [N, C, H, W], int64 [N]); streamed sets raise DatasetError."""
        raise DatasetError(f"{self.name} {self.split} is streamed from disk and has no tensors(); use batches()")

    def _pass_generator(self, generator: torch.Generator | None) -> torch.Generator:
        """The caller's generator, else a fresh one seeded by (load seed, pass number): reproducible per pass."""
        if generator is not None:
            return generator
        state = np.random.SeedSequence([self._seed, self._passes]).generate_state(1, dtype=np.uint64)[0]
        self._passes += 1
        return torch.Generator().manual_seed(int(state) & 0x7FFF_FFFF_FFFF_FFFF)

    def __repr__(self) -> str:
        return (f"{type(self).__name__}({self.name!r}, split={self.split!r}, n={len(self)}, "
                f"classes={self.num_classes}, shape=({self.channels}, {self.image_size}, {self.image_size}))")


def shard_positions(n: int, shard: tuple[int, int] | None) -> list[int] | None:
    """Positions of a pass of n that rank takes under `shard` = (rank, world) (DistributedSampler with
    shuffle=False, drop_last=False: padded by wrapping, then every world-th from rank); None = all of them."""
    if shard is None or shard[1] == 1:
        return None
    rank, world = shard
    if not 0 <= rank < world:
        raise ValueError(f"shard: rank {rank} not in [0, {world})")
    total = -(-n // world) * world
    padded = list(range(n)) + [k % max(n, 1) for k in range(n, total)]
    return padded[rank:total:world]


def sample_images(data: ImageData, n: int, *, shuffle: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Up to n images of a set as uint8 tensors (with their labels): the whole in-memory set when it has at most
    n, else a fixed sample, the same for every caller (shuffled with seed 0, or the first n)."""
    if data.in_memory and len(data) <= n:
        return data.tensors()
    xs, ys, got = [], [], 0
    gen = torch.Generator().manual_seed(0) if shuffle else None
    for x, y in data.batches(min(n, 256), shuffle=shuffle, generator=gen):
        xs.append(x[: n - got])
        ys.append(y[: n - got])
        got += len(xs[-1])
        if got >= n:
            break
    return torch.cat(xs), torch.cat(ys)


class InMemoryData(ImageData):
    """A split held as uint8 tensors on one device; batches are index_select plus an optional on-device crop."""

    in_memory = True

    def __init__(self, name: str, split: str, images: torch.Tensor, labels: torch.Tensor, num_classes: int, *,
                 seed: int = 0) -> None:
        super().__init__(seed=seed)
        if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[-1] != images.shape[-2]:
            raise ValueError(f"images must be uint8 [N, C, S, S], got {images.dtype} {tuple(images.shape)}")
        if labels.shape != (images.shape[0],):
            raise ValueError(f"labels must be [N={images.shape[0]}], got {tuple(labels.shape)}")
        self.name, self.split = name, split
        self.images = images
        self.labels = labels.to(torch.int64)
        self.num_classes = num_classes
        self.channels = int(images.shape[1])
        self.image_size = int(images.shape[-1])

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def tensors(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.images, self.labels

    def batches(self, batch_size: int, *, shuffle: bool, generator: torch.Generator | None = None,
                device: torch.device | str | None = None, augment: Augment | str = "center_crop",
                drop_last: bool = False, shard: tuple[int, int] | None = None
                ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        if batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        aug = as_augment(augment)
        random = shuffle or aug == Augment.random_resized_crop
        gen = self._pass_generator(generator) if random else None
        target = torch.device(device) if device is not None else self.images.device
        return self._iterate(batch_size, shuffle, gen, target, aug, drop_last, shard)

    def _iterate(self, batch_size: int, shuffle: bool, gen: torch.Generator | None, device: torch.device,
                 aug: Augment, drop_last: bool, shard: tuple[int, int] | None = None
                 ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        n = len(self)
        if shuffle:
            assert gen is not None
            order = torch.randperm(n, generator=gen, device=gen.device).to(self.images.device)
        else:
            order = torch.arange(n, device=self.images.device)
        mine = shard_positions(n, shard)
        if mine is not None:
            order = order[torch.tensor(mine, dtype=torch.long, device=order.device)]
            n = len(mine)
        stop = n - n % batch_size if drop_last else n
        for start in range(0, stop, batch_size):
            idx = order[start:start + batch_size]
            x = self.images.index_select(0, idx).to(device, non_blocking=True)  # [B, C, S, S] uint8
            y = self.labels.index_select(0, idx).to(device, non_blocking=True)  # [B] int64
            yield augment_batch(x, aug, generator=gen), y
