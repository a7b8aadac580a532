"""Datasets that need no files: scikit-learn's `digits` and the generated `synthetic` set."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from sweepdae.data._base import SUBSET_SEED, ImageData
from sweepdae.data._memory import RawSplit, in_memory_split, split_size
from sweepdae.recipe import NATIVE_CHANNELS, DataConfig

DIGITS_TRAIN_FRACTION = 0.8  # sklearn's digits has no official split; a fixed 80/20 one (sweepdae choice)
DIGITS_MAX = 16  # load_digits pixels are counts 0..16 of a 4x4 block of the 32x32 bitmap (UCI optdigits)

# Synthetic defaults (sweepdae choices, sized for tests and CPU benchmarks).
SYNTH_CLASSES = 10
SYNTH_SIZES = {"train": 1000, "test": 200}
SYNTH_SEED = 20240124  # fixed: the set never depends on the cell's seed
SYNTH_GRID = 4  # each class pattern is a random 4 x 4 grid per channel, smoothly upsampled (low frequency)
SYNTH_CHUNK = 256  # examples generated at once, bounds memory at large image sizes


def load_digits_split(split: str) -> RawSplit:
    """sklearn's 1797 8x8 digits scaled to 0..255, split 80/20 by a fixed permutation."""
    from sklearn.datasets import load_digits  # bundled with scikit-learn: no download

    bunch = load_digits()
    images = np.rint(np.asarray(bunch.images, dtype=np.float64) * (255.0 / DIGITS_MAX)).astype(np.uint8)
    labels = np.asarray(bunch.target, dtype=np.int64)
    n = images.shape[0]
    perm = np.random.default_rng(SUBSET_SEED).permutation(n)
    n_train = int(round(DIGITS_TRAIN_FRACTION * n))
    idx = np.sort(perm[:n_train] if split == "train" else perm[n_train:])
    return RawSplit(images[idx][:, None].copy(), labels[idx], 10)


def build_digits(cfg: DataConfig, split: str, device: torch.device, seed: int) -> ImageData:
    """Registry builder for `digits`."""
    return in_memory_split("digits", "sklearn", split, cfg, device, seed, lambda: load_digits_split(split))


def make_synthetic(n: int, image_size: int, channels: int, split: str, *,
                   num_classes: int = SYNTH_CLASSES) -> RawSplit:
    """`n` class-structured images: class pattern (low-frequency, fixed) x random contrast + pixel noise."""
    rng = np.random.default_rng(SYNTH_SEED)
    grids = torch.from_numpy(rng.standard_normal((num_classes, channels, SYNTH_GRID, SYNTH_GRID)))
    smooth = F.interpolate(grids, size=(image_size, image_size), mode="bicubic", align_corners=False)
    patterns = (smooth / smooth.flatten(1).std(dim=1).view(-1, 1, 1, 1)).float().numpy()  # unit std per class
    rng = np.random.default_rng([SYNTH_SEED, 0 if split == "train" else 1])  # disjoint train / test streams
    labels = (np.arange(n) % num_classes)[rng.permutation(n)].astype(np.int64)  # balanced classes
    images = np.empty((n, channels, image_size, image_size), dtype=np.uint8)
    for start in range(0, n, SYNTH_CHUNK):
        y = labels[start:start + SYNTH_CHUNK]
        contrast = rng.uniform(0.6, 1.4, size=(len(y), 1, 1, 1)).astype(np.float32)
        noise = rng.standard_normal((len(y), channels, image_size, image_size), dtype=np.float32)
        x = 128.0 + 40.0 * (contrast * patterns[y] + 0.5 * noise)
        images[start:start + SYNTH_CHUNK] = np.clip(np.rint(x), 0, 255).astype(np.uint8)
    return RawSplit(images, labels, num_classes)


def build_synthetic(cfg: DataConfig, split: str, device: torch.device, seed: int) -> ImageData:
    """Registry builder for `synthetic`: made at the asked size and channels; sizes default to 1000 / 200."""
    n = split_size(cfg, split) or SYNTH_SIZES[split]
    channels = cfg.channels or NATIVE_CHANNELS["synthetic"]
    source = f"n={n},c={channels},s={cfg.image_size}"
    return in_memory_split("synthetic", source, split, cfg, device, seed,
                           lambda: make_synthetic(n, cfg.image_size, channels, split), subset=False)
