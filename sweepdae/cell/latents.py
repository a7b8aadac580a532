"""A streamed set's latents, encoded once and stored on disk: fast-DiT's feature pre-extraction for image folders.

Where a training's input is deterministic (the paper's center crop, no flip) each image's latent is the same every
epoch, so the cell's processes encode the set once with the frozen tokenizer, each its DistributedSampler shard
(each image decoded once in all), writing their rows into one file, and every epoch then reads
latents instead of decoding JPEGs. A VAE stores its posterior mean and std (a fresh sample is drawn per use, as
from in-memory latents). Memory stays bounded by the batch: a batch's rows are read (and written) with pread /
pwrite, not through a memory map, whose touched pages would count in the process's resident memory.

Cache: `runs/_cache/latents/<key>/` (`cache_dir(run_dir)`), shared by every cell and training that reads the same:
key = SHA-256 of the data (data key, image size, channels, the split's files and labels), the tokenizer's own
cache key and LATENTS_VERSION. `done.json` is written last: a folder without it is incomplete and rebuilt. One
cell builds an entry under a file lock while others wait and read it.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Iterator
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from accelerate.utils import broadcast_object_list

from sweepdae.cell.build import order_seed
from sweepdae.data import StreamedImageData, to_unit_range
from sweepdae.data._base import shard_positions
from sweepdae.recipe import Recipe
from sweepdae.tokenizers import STOCHASTIC_TOKENIZERS, Tokenizer, tokenizer_key
from sweepdae.utils import atomic_write_json, file_lock

LATENTS_VERSION = 1
ENCODE_BATCH = 256  # images per encoding batch and process


class _Rows:
    """Rows of a float32 .npy file [N, ...] read and written with pread / pwrite: no memory map, so the pages
    of a large file stay in the page cache and out of the process's resident memory (a cell's peak RSS is
    bounded by the batch, not the set)."""

    def __init__(self, path: Path, *, write: bool = False) -> None:
        header = np.load(path, mmap_mode="r")  # the header only: its offset, shape and dtype
        if header.dtype != np.float32:
            raise ValueError(f"{path}: {header.dtype}, expected float32")
        self.offset, self.shape = int(header.offset), tuple(header.shape)
        del header
        self.row_bytes = int(np.prod(self.shape[1:])) * 4
        self.fd = os.open(path, os.O_RDWR if write else os.O_RDONLY)

    def read(self, idx: np.ndarray) -> np.ndarray:
        out = np.empty((len(idx), *self.shape[1:]), dtype=np.float32)
        flat = out.reshape(len(idx), -1)
        for j, i in enumerate(idx.tolist()):
            flat[j] = np.frombuffer(os.pread(self.fd, self.row_bytes, self.offset + i * self.row_bytes),
                                    dtype=np.float32)
        return out

    def write(self, idx: np.ndarray, rows: np.ndarray) -> None:
        rows = np.ascontiguousarray(rows, dtype=np.float32).reshape(len(idx), -1)
        for j, i in enumerate(idx.tolist()):
            os.pwrite(self.fd, rows[j].tobytes(), self.offset + i * self.row_bytes)

    def close(self) -> None:
        os.close(self.fd)


@dataclass
class StoredLatents:
    """The latents of a split (float32 [N, tokens, d] on disk), their posterior std (a VAE) and labels."""

    mean: _Rows
    std: _Rows | None
    labels: torch.Tensor  # int64 [N]

    def rows(self, idx: torch.Tensor, device: torch.device) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(mean, std) of the images `idx` (CPU int64), on `device`."""
        i = idx.numpy()
        mean = torch.from_numpy(self.mean.read(i)).to(device)
        std = None if self.std is None else torch.from_numpy(self.std.read(i)).to(device)
        return mean, std


def latents_key(recipe: Recipe, data: StreamedImageData) -> str:
    """What the stored latents depend on, hashed: the data read (its files and labels) and the tokenizer."""
    h = hashlib.sha256()
    for f, y in zip(data.files, data.labels, strict=True):
        h.update(f"{f}\0{y}\n".encode())
    ident = {"version": LATENTS_VERSION, "data_key": recipe.data_key(), "image_size": recipe.data.image_size,
             "channels": data.channels, "files": h.hexdigest(), "n": len(data),
             "tokenizer": tokenizer_key(recipe.tokenizer, data_key=recipe.data_key(), channels=recipe.channels,
                                        image_size=recipe.data.image_size, seed=recipe.seed)}
    return hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:32]


def stored_latents(recipe: Recipe, data: StreamedImageData, tokenizer: Tokenizer, *, cache: Path,
                   device: torch.device, accelerator: Any = None) -> StoredLatents:
    """The split's stored latents: read from `cache` (a folder), or encoded there first by all processes."""
    folder = cache / latents_key(recipe, data)
    n, vae = len(data), recipe.tokenizer.name.value in STOCHASTIC_TOKENIZERS
    shape = (n, int(tokenizer.num_tokens), int(tokenizer.latent_dim))
    rank, world = (0, 1) if accelerator is None else (accelerator.process_index, accelerator.num_processes)
    main = rank == 0

    def complete() -> bool:
        try:
            done = json.loads((folder / "done.json").read_text())
        except (OSError, ValueError):
            return False
        return isinstance(done, dict) and done.get("shape") == list(shape) and done.get("vae") == vae

    def sync() -> None:
        if world > 1:
            accelerator.wait_for_everyone()

    def agreed(flag: bool) -> bool:
        if world == 1:
            return flag
        return bool(broadcast_object_list([flag])[0])

    if not agreed(complete()):
        folder.parent.mkdir(parents=True, exist_ok=True)
        with file_lock(folder.with_suffix(".lock")) if main else nullcontext():
            if not agreed(complete()):  # another cell may have built it while this one waited
                _build(folder, data, tokenizer, shape=shape, vae=vae, device=device, rank=rank, world=world,
                       sync=sync)
            sync()
    return StoredLatents(mean=_Rows(folder / "mean.npy"), std=_Rows(folder / "std.npy") if vae else None,
                         labels=torch.tensor(data.labels, dtype=torch.int64))


@torch.no_grad()
def _build(folder: Path, data: StreamedImageData, tokenizer: Tokenizer, *, shape: tuple[int, int, int], vae: bool,
           device: torch.device, rank: int, world: int, sync: Any) -> None:
    """Every process encodes its shard of the split and writes its rows; the main one publishes the files."""
    partial = folder.with_name(folder.name + ".partial")
    names = ["mean.npy", "std.npy"] if vae else ["mean.npy"]
    if rank == 0:
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir(parents=True)
        for name in names:
            np.lib.format.open_memmap(partial / name, mode="w+", dtype=np.float32, shape=shape).flush()
    sync()
    arrays = [_Rows(partial / name, write=True) for name in names]
    shard = (rank, world) if world > 1 else None
    positions = shard_positions(len(data), shard) or list(range(len(data)))
    tokenizer.eval()
    at = 0
    for x, _ in data.batches(ENCODE_BATCH, shuffle=False, device=device, shard=shard):
        mean, std = tokenizer.posterior(to_unit_range(x))
        rows = np.asarray(positions[at:at + x.shape[0]])
        at += x.shape[0]
        arrays[0].write(rows, mean.float().cpu().numpy())
        if vae and std is not None:
            arrays[1].write(rows, std.float().cpu().numpy())
    for a in arrays:
        os.fsync(a.fd)
        a.close()
    sync()
    if rank == 0:
        shutil.rmtree(folder, ignore_errors=True)
        os.replace(partial, folder)
        atomic_write_json(folder / "done.json", {"shape": list(shape), "vae": vae, "n": shape[0]})


def stored_order(recipe: Recipe, n: int, epoch: int, *, steps: int, accum: int, per_proc: int, world: int,
                 rank: int) -> Iterator[torch.Tensor]:
    """This rank's micro-batch indices of each step of an epoch: the layout of `sweepdae.cell.train` (the pass
    `randperm(n)` seeded by (seed, epoch), as the streamed sampler draws it)."""
    g = torch.Generator().manual_seed(order_seed(recipe.seed, epoch))
    order = torch.randperm(n, generator=g)[: steps * per_proc * world * accum]
    yield from order.view(steps, accum, per_proc, world)[..., rank]
