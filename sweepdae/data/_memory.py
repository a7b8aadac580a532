"""Decode -> subset -> convert -> resize -> device, once per process: the module-level cache of in-memory splits."""

from __future__ import annotations

from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from sweepdae.data._base import InMemoryData, convert_channels, resize_uint8, subset_indices
from sweepdae.recipe import DataConfig, DatasetName, image_fit


@dataclass(frozen=True)
class RawSplit:
    """A decoded split at its native resolution: uint8 [N, C, H, W] images, int64 [N] labels."""

    images: np.ndarray
    labels: np.ndarray
    num_classes: int

    def __post_init__(self) -> None:
        if self.images.dtype != np.uint8 or self.images.ndim != 4:
            raise ValueError(f"raw images must be uint8 [N, C, H, W], got {self.images.dtype} {self.images.shape}")
        if self.labels.shape != (self.images.shape[0],):
            raise ValueError(f"raw labels must be [N={self.images.shape[0]}], got {self.labels.shape}")


# Decoded native-resolution splits, keyed by (name, source, split): a sweep over image sizes decodes once.
_RAW: dict[tuple[str, str, str], RawSplit] = {}
# Ready splits, keyed by (name, source, split, image_size, channels, size, device): train-then-probe reuses them.
_READY: dict[tuple[Any, ...], tuple[torch.Tensor, torch.Tensor, int]] = {}
# Anything else a loader wants to keep for the process (image-folder file lists), keyed by its own tuples.
MISC: dict[Hashable, Any] = {}


def clear_cache() -> None:
    """Forget every decoded split and file list (frees the memory; the next load decodes again)."""
    _RAW.clear()
    _READY.clear()
    MISC.clear()


def split_size(cfg: DataConfig, split: str) -> int:
    """cfg.train_size or cfg.test_size (0 = the whole split)."""
    return cfg.train_size if split == "train" else cfg.test_size


def in_memory_split(name: str, source: str, split: str, cfg: DataConfig, device: torch.device, seed: int,
                    decode: Callable[[], RawSplit], *, subset: bool = True) -> InMemoryData:
    """The split as InMemoryData: decoded by `decode` once per (name, source, split), then cached ready to use."""
    # `source` identifies the files (their resolved folder) so a different root never hits a stale entry;
    # `subset=False` is for generators that already made exactly the examples asked for.
    size = split_size(cfg, split)
    key = (name, source, split, cfg.image_size, cfg.channels, size if subset else 0)
    ready = _READY.get((*key, str(device)))
    if ready is None:
        on_cpu = _READY.get((*key, "cpu"))
        if on_cpu is None:
            on_cpu = _prepare(name, source, split, cfg, size if subset else 0, decode)
            _READY[(*key, "cpu")] = on_cpu
        ready = on_cpu if device.type == "cpu" else (on_cpu[0].to(device), on_cpu[1].to(device), on_cpu[2])
        _READY[(*key, str(device))] = ready
    images, labels, num_classes = ready
    return InMemoryData(name, split, images, labels, num_classes, seed=seed)


def _prepare(name: str, source: str, split: str, cfg: DataConfig, size: int,
             decode: Callable[[], RawSplit]) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Decode (or reuse) the raw split, take the fixed subset, convert channels and resize on the CPU."""
    raw = _RAW.get((name, source, split))
    if raw is None:
        raw = decode()
        _RAW[(name, source, split)] = raw
    idx = subset_indices(raw.images.shape[0], size, what=f"{name} {split}")
    images = torch.from_numpy(np.ascontiguousarray(raw.images if idx is None else raw.images[idx]))
    labels = torch.from_numpy(np.asarray(raw.labels if idx is None else raw.labels[idx], dtype=np.int64))
    fit, px = image_fit(DatasetName(cfg.name).value, cfg.image_size)
    if fit == "pad":  # a few pixels short (28 -> 32): zero borders, no interpolation (recipe.image_fit)
        images = F.pad(images, (px, px, px, px))
    if cfg.channels == 1:  # fewer channels first: less to resize
        images = resize_uint8(convert_channels(images, 1), cfg.image_size)
    else:
        images = convert_channels(resize_uint8(images, cfg.image_size), cfg.channels)
    if images.data_ptr() == raw.images.ctypes.data:
        images = images.clone()  # never hand out a view of the raw cache's numpy buffer
    return images.contiguous(), labels.clone(), raw.num_classes
