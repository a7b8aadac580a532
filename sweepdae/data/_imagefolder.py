"""ImageNet-layout folders (root/train/<class>/*, root/val/<class>/*), decoded with PIL and streamed by a DataLoader."""

from __future__ import annotations

import functools
import multiprocessing
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from sweepdae.data._augment import sample_crop_boxes, sample_flips
from sweepdae.data._base import ImageData, as_augment, data_env_dir, subset_indices
from sweepdae.data._memory import MISC, split_size
from sweepdae.errors import DatasetError
from sweepdae.recipe import Augment, DataConfig
from sweepdae.utils import exit_when_gone

# torchvision.datasets.folder.IMG_EXTENSIONS, matched case-insensitively.
IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
# ImageNet's folders are train/ and val/; "test" is accepted for sets that name it so.
SPLIT_DIRS = {"train": ("train",), "test": ("val", "test")}
ENV_SUBDIRS = ("imagefolder", "imagenet")  # looked for under $SWEEPDAE_DATA when data.root is empty


def locate_imagefolder(root: str) -> Path:
    """The folder holding train/: data.root, else $SWEEPDAE_DATA/imagefolder or $SWEEPDAE_DATA/imagenet."""
    env = data_env_dir()
    if root:
        candidates = [Path(root).expanduser()]
    else:
        candidates = [env / sub for sub in ENV_SUBDIRS] if env else []
    for folder in candidates:
        if (folder / "train").is_dir():
            return folder
    looked = "; ".join(str(c) for c in candidates) or "nowhere (data.root is empty and SWEEPDAE_DATA is unset)"
    raise DatasetError(f"imagefolder: no train/ folder found; looked in {looked}; set data.root to a folder laid "
                       "out as train/<class>/*.jpg and val/<class>/*.jpg (ImageNet layout)")


def scan_split(root: Path, split: str) -> tuple[list[str], list[str], list[int]]:
    """(classes, files, labels): classes are train/'s sorted sub-folders, files sorted within each class."""
    key = ("imagefolder-scan", str(root.resolve()), split)
    if key in MISC:
        return MISC[key]  # type: ignore[no-any-return]
    classes = sorted(e.name for e in os.scandir(root / "train") if e.is_dir())
    split_dir = next((root / d for d in SPLIT_DIRS[split] if (root / d).is_dir()), None)
    if not classes:
        raise DatasetError(f"imagefolder: {root / 'train'} has no class folders (expected train/<class>/*.jpg)")
    if split_dir is None:
        raise DatasetError(f"imagefolder: {root} has no {' or '.join(SPLIT_DIRS[split])}/ folder for the {split} split")
    unknown = sorted({e.name for e in os.scandir(split_dir) if e.is_dir()} - set(classes))
    if unknown:
        raise DatasetError(f"imagefolder: {split_dir} has classes not in train/: {unknown[:5]}")
    files: list[str] = []
    labels: list[int] = []
    for label, cls in enumerate(classes):
        for dirpath, dirnames, names in os.walk(split_dir / cls, followlinks=True):
            dirnames.sort()
            for fname in sorted(names):
                if fname.lower().endswith(IMG_EXTENSIONS):
                    files.append(os.path.join(dirpath, fname))
                    labels.append(label)
    if not files:
        raise DatasetError(f"imagefolder: no images ({', '.join(IMG_EXTENSIONS)}) under {split_dir}")
    MISC[key] = (classes, files, labels)
    return classes, files, labels


def center_crop_arr(image: Image.Image, image_size: int) -> np.ndarray:
    """ADM's center crop (DiT train.py): halve with BOX while large, bicubic so the short side fits, crop middle."""
    while min(*image.size) >= 2 * image_size:
        image = image.resize((image.width // 2, image.height // 2), resample=Image.Resampling.BOX)
    scale = image_size / min(*image.size)
    image = image.resize((round(image.width * scale), round(image.height * scale)), resample=Image.Resampling.BICUBIC)
    arr = np.array(image, dtype=np.uint8)
    top, left = (arr.shape[0] - image_size) // 2, (arr.shape[1] - image_size) // 2
    return arr[top:top + image_size, left:left + image_size]


def load_image(path: str, image_size: int, mode: str, seed: int | None) -> torch.Tensor:
    """Decode one file to uint8 [C, S, S]: ADM center crop, or MAE's RandomResizedCrop + flip drawn from `seed`."""
    try:
        with Image.open(path) as opened:
            image = opened.convert(mode)
    except (OSError, ValueError, Image.DecompressionBombError) as e:
        raise DatasetError(f"imagefolder: cannot decode {path}: {e}") from e
    if seed is None:
        arr = center_crop_arr(image, image_size)
    else:
        g = torch.Generator().manual_seed(seed)
        width, height = image.size
        top, left, h, w = (int(v) for v in sample_crop_boxes(1, height, width, generator=g)[0])
        # MAE main_pretrain.py: interpolation=3 (bicubic); PIL's resize antialiases when it shrinks.
        image = image.resize((image_size, image_size), resample=Image.Resampling.BICUBIC,
                             box=(left, top, left + w, top + h))
        if bool(sample_flips(1, generator=g)[0]):
            image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        arr = np.array(image, dtype=np.uint8)
    arr = arr[:, :, None] if arr.ndim == 2 else arr  # [S, S, C]
    return torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1)))


def _exit_with(owner: int, worker_id: int) -> None:
    """A loader worker's init (`worker_init_fn`): exit when the process that owns the loader is gone. The worker's
    parent is the forkserver, so DataLoader's own check (is my parent alive?) never fires when the owner dies
    without closing its loader (SIGKILL, os._exit); the worker, and the server it keeps open, would wait forever."""
    exit_when_gone(owner, 0, "sweepdae-loader-owner-watch")


def loader_workers(num_workers: int) -> dict[str, object]:
    """A streamed set's DataLoader arguments for how its workers start (`worker_context`) and end (`_exit_with`)."""
    ctx = worker_context(num_workers)
    return {"multiprocessing_context": ctx, "worker_init_fn": functools.partial(_exit_with, os.getpid())} if ctx \
        else {}


def worker_context(num_workers: int) -> multiprocessing.context.BaseContext | None:
    """How a loader's worker processes start: from a forkserver where there is one (Linux, macOS), else the
    platform's default. Not `fork`: a cell's processes have threads (gloo's, NCCL's, the coordinator watch), and a
    child forked while one of them holds a lock can wait on it forever (pytorch/pytorch#130610; Python 3.14 made
    forkserver the default on Linux for this reason). The server preloads the main module and this one (torch,
    PIL), so starting a worker is a fork of a single-threaded process that has them, not an interpreter start;
    as with `spawn`, a script that runs loaders must keep its work under `if __name__ == "__main__":`. The
    workers' parent is then the server, not the loader's owner: `loader_workers` adds the check that ends them."""
    if num_workers == 0 or "forkserver" not in multiprocessing.get_all_start_methods():
        return None
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(["__main__", __name__])  # read when the server starts (the first loader's workers)
    return ctx


class _Pass(Dataset[tuple[torch.Tensor, int]]):
    """One pass in a fixed order: item k is file order[k], augmented with seeds[k] (picklable for workers)."""

    def __init__(self, files: list[str], labels: list[int], order: list[int], seeds: list[int] | None,
                 image_size: int, mode: str) -> None:
        self.files, self.labels, self.order, self.seeds = files, labels, order, seeds
        self.image_size, self.mode = image_size, mode

    def __len__(self) -> int:
        return len(self.order)

    def __getitem__(self, k: int) -> tuple[torch.Tensor, int]:
        i = self.order[k]
        seed = None if self.seeds is None else self.seeds[k]
        return load_image(self.files[i], self.image_size, self.mode, seed), self.labels[i]


# Images this process has decoded from files (delivered by a streamed set's loaders, its workers included): what a
# cell's phases record as `decoded` (`sweepdae.cell.Phases`).
_DECODED = [0]


def decoded_images() -> int:
    """Images decoded by this process's streamed-set loaders so far (a running count)."""
    return _DECODED[0]


class _Files(Dataset[tuple[torch.Tensor, int]]):
    """The files of a split, item (file index, crop seed or None) (the sampler gives both; picklable)."""

    def __init__(self, files: list[str], labels: list[int], image_size: int, mode: str) -> None:
        self.files, self.labels, self.image_size, self.mode = files, labels, image_size, mode

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, item: tuple[int, int | None]) -> tuple[torch.Tensor, int]:  # type: ignore[override]
        i, seed = item
        return load_image(self.files[i], self.image_size, self.mode, seed), self.labels[i]


class EpochShard(DistributedSampler[tuple[int, "int | None"]]):
    """This rank's share of one epoch's shuffled pass, from a sample position on: DistributedSampler's split
    (positions rank, rank + W, ...: `indices[rank:total_size:num_replicas]`) of the pass `randperm(n)` seeded by
    seed + epoch (as DistributedSampler with shuffle=True), with three additions: each item carries its crop seed
    (drawn after the order from the same generator, one per position, so a pass is the same for any number of
    workers and processes), the epoch can start at this rank's sample `start` (a mid-epoch resume reads nothing
    twice: torchdata's StatefulDataLoader does the same with a saved sampler state), and it ends after
    `per_rank` samples (the epoch's last full global batch: no decode is wasted on a dropped remainder)."""

    def __init__(self, dataset: _Files, *, world: int, rank: int, seed: int, augment: bool, per_rank: int) -> None:
        super().__init__(dataset, num_replicas=world, rank=rank, shuffle=True, seed=seed, drop_last=True)
        self.augment, self.per_rank, self.start = augment, min(per_rank, self.num_samples), 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        super().set_epoch(epoch)
        self.start = start

    def __iter__(self) -> Iterator[tuple[int, int | None]]:
        n = len(self.dataset)  # type: ignore[arg-type]
        g = torch.Generator().manual_seed(self.seed + self.epoch)
        order = torch.randperm(n, generator=g)
        seeds = torch.randint(0, 2**62, (n,), generator=g).tolist() if self.augment else None
        positions = range(self.rank + self.start * self.num_replicas, self.per_rank * self.num_replicas,
                          self.num_replicas)
        for k in positions:
            yield int(order[k]), (None if seeds is None else seeds[k])

    def __len__(self) -> int:
        return max(0, self.per_rank - self.start)


class ShardLoader:
    """One DataLoader for the whole training (persistent workers), giving each epoch this rank's shard in
    batches: `for x, y in loader.epoch(e, start=k): ...` (uint8 [B, C, S, S] and int64 [B] on `device`)."""

    def __init__(self, data: StreamedImageData, batch_size: int, *, world: int, rank: int, seed: int,
                 augment: Augment | str, per_rank: int, device: torch.device) -> None:
        files = _Files(data.files, data.labels, data.image_size, "L" if data.channels == 1 else "RGB")
        self.sampler = EpochShard(files, world=world, rank=rank, seed=seed, per_rank=per_rank,
                                  augment=as_augment(augment) == Augment.random_resized_crop)
        self.device = device
        self.loader = DataLoader(files, batch_size=batch_size, sampler=self.sampler, num_workers=data.num_workers,
                                 persistent_workers=data.num_workers > 0, pin_memory=device.type == "cuda",
                                 **loader_workers(data.num_workers))  # type: ignore[arg-type]

    def epoch(self, epoch: int, *, start: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        self.sampler.set_epoch(epoch, start)
        return StreamedImageData._iterate(self.loader, self.device)


class StreamedImageData(ImageData):
    """An image folder decoded on the fly by `num_workers` DataLoader processes; never held in memory."""

    in_memory = False

    def __init__(self, split: str, files: list[str], labels: list[int], num_classes: int, *, channels: int,
                 image_size: int, num_workers: int, device: torch.device, seed: int = 0) -> None:
        super().__init__(seed=seed)
        self.name, self.split = "imagefolder", split
        self.files, self.labels = files, labels
        self.num_classes, self.channels, self.image_size = num_classes, channels, image_size
        self.num_workers, self.device = num_workers, device

    def __len__(self) -> int:
        return len(self.files)

    def batches(self, batch_size: int, *, shuffle: bool, generator: torch.Generator | None = None,
                device: torch.device | str | None = None, augment: Augment | str = "center_crop",
                drop_last: bool = False, shard: tuple[int, int] | None = None
                ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        if batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        aug = as_augment(augment)
        random = shuffle or aug == Augment.random_resized_crop
        gen = self._pass_generator(generator) if random else None
        n = len(self)
        order = list(range(n))
        if shuffle:
            assert gen is not None
            order = torch.randperm(n, generator=gen, device=gen.device).tolist()
        seeds = None
        if aug == Augment.random_resized_crop:
            assert gen is not None  # one seed per item, drawn here: the pass is the same for any num_workers
            seeds = torch.randint(0, 2**62, (n,), generator=gen, device=gen.device).tolist()
        target = torch.device(device) if device is not None else self.device
        one_pass = _Pass(self.files, self.labels, order, seeds, self.image_size, "L" if self.channels == 1 else "RGB")
        # a shard: DistributedSampler over the pass (its positions rank::world, padded), decoding only those
        sampler: DistributedSampler[tuple[torch.Tensor, int]] | None = None
        if shard is not None and shard[1] > 1:
            sampler = DistributedSampler(one_pass, num_replicas=shard[1], rank=shard[0], shuffle=False,
                                         drop_last=False)
        loader = DataLoader(one_pass, batch_size=batch_size, shuffle=False, sampler=sampler,
                            num_workers=self.num_workers, drop_last=drop_last, pin_memory=target.type == "cuda",
                            **loader_workers(self.num_workers))  # type: ignore[arg-type]
        return self._iterate(loader, target)

    def shard_loader(self, batch_size: int, *, world: int, rank: int, seed: int, augment: Augment | str,
                     per_rank: int, device: torch.device) -> ShardLoader:
        """This process's loader of its shard of every epoch (`EpochShard`): the training's data."""
        return ShardLoader(self, batch_size, world=world, rank=rank, seed=seed, augment=augment, per_rank=per_rank,
                           device=device)

    @staticmethod
    def _iterate(loader: DataLoader[tuple[torch.Tensor, int]],
                 device: torch.device) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        try:
            for x, y in loader:  # x: [B, C, S, S] uint8, y: [B] int64
                _DECODED[0] += int(x.shape[0])
                yield x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        except DatasetError as e:  # from a worker it carries the worker's traceback; keep the one-line message
            last = str(e).strip().splitlines()[-1]
            raise DatasetError(last.split("DatasetError: ", 1)[-1]) from e


def build_imagefolder(cfg: DataConfig, split: str, device: torch.device, seed: int) -> ImageData:
    """Registry builder for `imagefolder` (3 channels unless data.channels = 1)."""
    root = locate_imagefolder(cfg.root)
    classes, files, labels = scan_split(root, split)
    idx = subset_indices(len(files), split_size(cfg, split), what=f"imagefolder {split} ({root})")
    if idx is not None:
        files, labels = [files[i] for i in idx], [labels[i] for i in idx]
    return StreamedImageData(split, files, labels, len(classes), channels=1 if cfg.channels == 1 else 3,
                             image_size=cfg.image_size, num_workers=cfg.num_workers, device=device, seed=seed)
