"""The dataset registry: name -> builder, and `load_dataset`, the one way the rest of sweepdae gets images."""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch

from sweepdae.data._base import ImageData
from sweepdae.data._builtin import build_digits, build_synthetic
from sweepdae.data._cifar import build_cifar
from sweepdae.data._idx import build_idx
from sweepdae.data._imagefolder import build_imagefolder
from sweepdae.errors import DatasetError
from sweepdae.recipe import DataConfig, DatasetName

# A builder makes one split: (config, split, device, seed) -> ImageData.
Builder = Callable[[DataConfig, str, torch.device, int], ImageData]

# Ordered as DatasetName so grid values, CLI choices and this registry list the same names.
_REGISTRY: dict[str, Builder] = {
    "digits": build_digits,
    "fashion-mnist": functools.partial(build_idx, "fashion-mnist"),
    "mnist": functools.partial(build_idx, "mnist"),
    "cifar10": functools.partial(build_cifar, "cifar10"),
    "cifar100": functools.partial(build_cifar, "cifar100"),
    "imagefolder": build_imagefolder,
    "synthetic": build_synthetic,
}

SPLITS = ("train", "test")


def dataset_names() -> list[str]:
    """Registered dataset names, in DatasetName order."""
    return list(_REGISTRY)


def get_builder(name: str) -> Builder:
    """The builder registered under `name`; an unknown name lists the valid ones."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise DatasetError(f"unknown dataset {name!r}; valid: {', '.join(_REGISTRY)}") from None


def load_dataset(cfg: DataConfig, split: str, *, seed: int = 0, device: torch.device | str = "cpu") -> ImageData:
    """One split of cfg's dataset at cfg.image_size and cfg.channels, as the fixed cfg.*_size subset."""
    # The examples never depend on `seed`: it only seeds the shuffle / augmentation of `batches` calls that pass no
    # generator (a new stream each pass). Small sets are cached per process and held on `device`.
    if split not in SPLITS:
        raise DatasetError(f"unknown split {split!r}; valid: {', '.join(SPLITS)}")
    if cfg.image_size <= 0:
        raise DatasetError(f"data.image_size must be positive, got {cfg.image_size}")
    if cfg.channels not in (0, 1, 3):
        raise DatasetError(f"data.channels must be 0 (keep), 1 or 3, got {cfg.channels}")
    name = cfg.name.value if isinstance(cfg.name, DatasetName) else str(cfg.name)
    dev = torch.device(device)
    if dev.type == "cuda" and dev.index is None:  # one cache entry per physical device
        dev = torch.device("cuda", torch.cuda.current_device())
    return get_builder(name)(cfg, split, dev, seed)
