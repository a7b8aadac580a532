"""CIFAR-10 / CIFAR-100 from the "python version" pickled batches (https://www.cs.toronto.edu/~kriz/cifar.html)."""

from __future__ import annotations

import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from sweepdae.data._base import ImageData, cache_dir, data_env_dir
from sweepdae.data._download import DOWNLOAD_ENV, downloads_allowed, extract_tar, fetch
from sweepdae.data._memory import RawSplit, in_memory_split
from sweepdae.errors import DatasetError
from sweepdae.recipe import DataConfig


@dataclass(frozen=True)
class CifarLayout:
    """Folder and batch names of one CIFAR archive, and where its labels live in each batch dict."""

    folder: str
    train: tuple[str, ...]
    test: tuple[str, ...]
    label_key: bytes
    num_classes: int
    url: str
    checksum: str


# Layout, URL and tarball MD5 as on the CIFAR page (the MD5s are the authors'; torchvision/datasets/cifar.py too).
CIFAR = {
    "cifar10": CifarLayout("cifar-10-batches-py", tuple(f"data_batch_{i}" for i in range(1, 6)), ("test_batch",),
                           b"labels", 10, "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
                           "md5:c58f30108f718f92721af3b95e74349a"),
    "cifar100": CifarLayout("cifar-100-python", ("train",), ("test",), b"fine_labels", 100,
                            "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
                            "md5:eb9058c3a382ffc7106e4002c42a8d85"),
}
_SIDE = 32  # CIFAR images are 3 x 32 x 32, stored as rows of 3072 bytes: all R, then G, then B


def _has_split(folder: Path, names: tuple[str, ...]) -> bool:
    return all((folder / n).is_file() for n in names)


def locate_cifar(name: str, split: str, root: str) -> Path:
    """The batch folder: under cfg.root alone when set, else $SWEEPDAE_DATA, the cache, or a permitted download."""
    layout = CIFAR[name]
    names = layout.train if split == "train" else layout.test
    if root:
        base = Path(root).expanduser()
        candidates = [base / layout.folder, base]
    else:
        env = data_env_dir()
        candidates = ([env / layout.folder, env / name / layout.folder] if env else []) + [cache_dir() / layout.folder]
    for folder in candidates:
        if _has_split(folder, names):
            return folder
    looked = "; ".join(str(c) for c in candidates)
    if not root and downloads_allowed():
        download_cifar(name, cache_dir())
        if _has_split(cache_dir() / layout.folder, names):
            return cache_dir() / layout.folder
    raise DatasetError(f"{name} {split} batches ({', '.join(names)}) not found; looked in {looked}; get "
                       f"{layout.url} and unpack it into data.root or $SWEEPDAE_DATA, or set {DOWNLOAD_ENV}=1")


def download_cifar(name: str, dest: Path, *, url: str | None = None, checksum: str | None = None,
                   timeout: float = 300.0) -> Path:
    """Download the CIFAR tarball (checksummed) and unpack it into `dest`; returns the batch folder."""
    layout = CIFAR[name]
    url = url or layout.url
    archive = dest / url.rsplit("/", 1)[-1]
    fetch(url, archive, checksum or layout.checksum, timeout=timeout)
    extract_tar(archive, dest)
    archive.unlink(missing_ok=True)
    return dest / layout.folder


def read_batch(path: Path, label_key: bytes, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """One pickled batch -> (uint8 [N, 3, 32, 32], int64 [N]); anything malformed raises DatasetError."""
    try:
        with path.open("rb") as f:
            # The CIFAR batches are pickles by design; only load folders you trust (as torchvision does).
            batch = pickle.load(f, encoding="bytes")
        data = np.asarray(batch[b"data"], dtype=np.uint8)
        labels = np.asarray(batch[label_key], dtype=np.int64)
    except Exception as e:  # a truncated or foreign pickle can fail in many ways; all mean the same here
        raise DatasetError(f"corrupt CIFAR batch {path}: {type(e).__name__}: {e}") from e
    if data.ndim != 2 or data.shape[1] != 3 * _SIDE * _SIDE or labels.shape != (data.shape[0],):
        raise DatasetError(f"corrupt CIFAR batch {path}: data {data.shape}, labels {labels.shape}; expected "
                           f"[N, {3 * _SIDE * _SIDE}] and [N]")
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise DatasetError(f"corrupt CIFAR batch {path}: labels outside 0..{num_classes - 1}")
    return data.reshape(-1, 3, _SIDE, _SIDE), labels


def load_cifar_split(name: str, folder: Path, split: str) -> RawSplit:
    """Concatenate the split's batches in their fixed order."""
    layout = CIFAR[name]
    parts = [read_batch(folder / n, layout.label_key, layout.num_classes)
             for n in (layout.train if split == "train" else layout.test)]
    return RawSplit(np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]), layout.num_classes)


def build_cifar(name: str, cfg: DataConfig, split: str, device: torch.device, seed: int) -> ImageData:
    """Registry builder for `cifar10` and `cifar100`."""
    folder = locate_cifar(name, split, cfg.root)
    return in_memory_split(name, str(folder.resolve()), split, cfg, device, seed,
                           lambda: load_cifar_split(name, folder, split))
