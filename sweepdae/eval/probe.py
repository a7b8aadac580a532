"""Frozen-feature evaluation: linear probe (MAE protocol) and weighted kNN (InstDisc / DINO).

Linear probe = facebookresearch/mae `main_linprobe.py`: a parameter-free BatchNorm1d(affine=False, eps=1e-6) in
front of a Linear head whose weight is trunc_normal(std=0.01) (MoCo v3), zero weight decay, LARS (or SGD with
momentum 0.9), lr = blr x batch / 256, per-iteration linear warm-up (10 of 90 epochs) then half-cycle cosine,
cross-entropy, `drop_last=True` batches. `linear_probe` trains on cached features (fast: a probe of 60k x 1k
features runs in seconds); `linear_probe_augmented_data` (in-memory or streamed sets; `linear_probe_augmented` on
tensors) recomputes features on RandomResizedCrop + flip every epoch, which is MAE's actual train path (paper Sec. 4,
"train aug RandomResizedCrop + flip").

Several processes (an `accelerator` of more than one process, e.g. a cell launched with `--procs-per-cell 2` or
on two GPUs): every feature pass is sharded as MAE main_linprobe.py shards its loaders, with a DistributedSampler
split of each pass (`ImageData.batches(shard=)`), and each batch's features are gathered back in order
(`gather_rows`, an all-gather): every process then holds the features of the whole split and trains the same
(small) head on them, so the processes stay in step and agree on the result without a barrier that a long probe
could time out.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from sweepdae.data import ImageData, InMemoryData, to_unit_range
from sweepdae.errors import TrainingError
from sweepdae.eval.crops import AugmentFn, _uniform, crop_boxes, random_resized_crop_flip, resized_crop
from sweepdae.eval.lars import LARS, WARMUP_FRACTION, cosine_lr, probe_lr, set_lr
from sweepdae.recipe import ProbeConfig, ProbeOptimizer
from sweepdae.utils import trim_heap

# (images float [-1, 1] [B, C, H, W] on device, labels [B] long) -> features [B, F]
FeatureFn = Callable[[Tensor, Tensor], Tensor]
# progress(epoch done (1-based), epochs, mean train loss of that epoch)
ProgressFn = Callable[[int, int, float], None]

HEAD_INIT_STD = 0.01  # MAE main_linprobe.py: trunc_normal_(model.head.weight, std=0.01), following MoCo v3
BN_EPS = 1e-6  # MAE main_linprobe.py: BatchNorm1d(affine=False, eps=1e-6)
SGD_MOMENTUM = 0.9  # MAE's LARS default momentum, used for SGD as well


def rank_world(accelerator: Any) -> tuple[int, int]:
    """(this process's rank, number of processes) of an Accelerator; (0, 1) for None."""
    if accelerator is None:
        return 0, 1
    return int(accelerator.process_index), int(accelerator.num_processes)


def gather_rows(accelerator: Any, local: Tensor) -> Tensor:
    """A global batch back in order from its shards: rank r holds rows r, r + W, ... (`ImageData.batches(shard=)`,
    the same count on every rank); an all-gather (rank-major) then interleaved. One process: `local` as is."""
    world = rank_world(accelerator)[1]
    if world == 1:
        return local
    full = accelerator.gather(local.contiguous())  # [W * b, ...], rank-major
    return full.view(world, -1, *local.shape[1:]).transpose(0, 1).reshape(-1, *local.shape[1:])


def _crop_rows(x: Tensor, generator: torch.Generator, *, rank: int, world: int) -> Tensor:
    """`random_resized_crop_flip` of a global chunk of which this rank holds rows rank::world (`x`): the crops
    and flips are drawn for the whole chunk (the same draws as one process makes) and this rank's rows applied."""
    b, _, height, width = x.shape
    boxes = crop_boxes(b * world, height, width, generator=generator, device=x.device)
    flip = _uniform(b * world, 0.0, 1.0, generator, x.device) < 0.5
    out = resized_crop(x.float(), boxes[rank::world], flip[rank::world])
    return to_unit_range(out.clamp(0.0, 255.0))


def _as_device(device: torch.device | str) -> torch.device:
    return torch.device(device)


@torch.no_grad()
def extract_features(feature_fn: FeatureFn, images_uint8: Tensor, labels: Tensor, *, batch_size: int,
                     device: torch.device | str) -> tuple[Tensor, Tensor]:
    """Features of every image, in order: CPU float32 [N, F] and CPU long labels [N].

    Images go to `feature_fn` as float [-1, 1] on `device`. When `feature_fn` is an nn.Module it is put in eval
    mode for the call and restored afterwards; closures are expected to handle their own module's mode.
    """
    dev = _as_device(device)
    module = feature_fn if isinstance(feature_fn, nn.Module) else None
    was_training = module.training if module is not None else False
    if module is not None:
        module.eval()
    feats: list[Tensor] = []
    try:
        for start in range(0, images_uint8.shape[0], batch_size):
            x = to_unit_range(images_uint8[start:start + batch_size].to(dev, non_blocking=True))
            y = labels[start:start + batch_size].to(dev, non_blocking=True).long()
            feats.append(feature_fn(x, y).float().cpu())
    finally:
        if module is not None:
            module.train(was_training)
    out = torch.cat(feats) if feats else torch.zeros(0, 0)
    return out, labels.detach().cpu().long()


class ProbeHead(nn.Module):
    """Parameter-free BatchNorm then Linear (MAE main_linprobe.py's `model.head`)."""

    def __init__(self, num_features: int, num_classes: int, generator: torch.Generator | None = None) -> None:
        super().__init__()
        self.norm = nn.BatchNorm1d(num_features, affine=False, eps=BN_EPS)
        self.linear = nn.Linear(num_features, num_classes)
        nn.init.trunc_normal_(self.linear.weight, std=HEAD_INIT_STD, generator=generator)
        nn.init.zeros_(self.linear.bias)  # MAE/timm ViT init leaves Linear biases at 0

    def forward(self, x: Tensor) -> Tensor:
        """x [B, F] -> logits [B, num_classes]."""
        return self.linear(self.norm(x))


class _ProbeTrainer:
    """The head, its optimizer and the per-iteration lr schedule shared by both probe variants."""

    def __init__(self, num_features: int, num_classes: int, cfg: ProbeConfig, *, batch_size: int,
                 iters_per_epoch: int, seed: int, device: torch.device) -> None:
        gen = torch.Generator().manual_seed(seed)
        self.head = ProbeHead(num_features, num_classes, generator=gen).to(device)
        self.peak_lr = probe_lr(lr=cfg.lr, base_lr=cfg.base_lr, batch_size=batch_size)
        params = list(self.head.parameters())
        if cfg.optimizer == ProbeOptimizer.lars:
            self.opt: torch.optim.Optimizer = LARS(params, lr=self.peak_lr, weight_decay=0.0)
        else:
            self.opt = torch.optim.SGD(params, lr=self.peak_lr, momentum=SGD_MOMENTUM, weight_decay=0.0)
        self.epochs = cfg.epochs
        self.warmup = cfg.epochs * WARMUP_FRACTION
        self.iters_per_epoch = iters_per_epoch

    def step(self, feats: Tensor, labels: Tensor, epoch: int, it: int) -> float:
        lr = cosine_lr(epoch + it / self.iters_per_epoch, peak_lr=self.peak_lr, epochs=self.epochs,
                       warmup_epochs=self.warmup)
        set_lr(self.opt, lr)
        self.head.train()
        loss = F.cross_entropy(self.head(feats), labels)
        value = float(loss.detach())
        if not math.isfinite(value):  # MAE engine_finetune.py stops on a non-finite loss
            raise TrainingError(f"linear probe loss is {value} at epoch {epoch}", failure_class="non_finite")
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        return value


@torch.no_grad()
def _topk_accuracy(head: nn.Module, feats: Tensor, labels: Tensor, ks: tuple[int, ...],
                   device: torch.device, batch_size: int = 8192) -> list[float]:
    head.eval()
    correct = [0] * len(ks)
    for start in range(0, feats.shape[0], batch_size):
        logits = head(feats[start:start + batch_size].to(device))
        y = labels[start:start + batch_size].to(device)
        top = logits.topk(max(ks), dim=1).indices  # [B, kmax]
        hit = top.eq(y[:, None])
        for i, k in enumerate(ks):
            correct[i] += int(hit[:, :k].any(dim=1).sum())
    n = max(feats.shape[0], 1)
    return [100.0 * c / n for c in correct]


def _result(trainer: _ProbeTrainer, train_feats: Tensor, train_labels: Tensor, test_feats: Tensor,
            test_labels: Tensor, num_classes: int, device: torch.device, started: float) -> dict[str, float]:
    ks = (1, 5) if num_classes > 5 else (1,)
    test = _topk_accuracy(trainer.head, test_feats, test_labels, ks, device)
    out = {"probe_top1": test[0]}
    if num_classes > 5:
        out["probe_top5"] = test[1]
    if train_feats.numel():
        out["probe_train_top1"] = _topk_accuracy(trainer.head, train_feats, train_labels, (1,), device)[0]
    out["probe_seconds"] = time.perf_counter() - started
    return out


def _batching(n: int, batch_size: int) -> tuple[int, int]:
    if n == 0:
        raise ValueError("linear probe needs at least one training sample")
    batch = min(batch_size, n)  # lr scales with the batch actually used
    return batch, n // batch  # drop_last=True as MAE's train loader


def linear_probe(train_feats: Tensor, train_labels: Tensor, test_feats: Tensor, test_labels: Tensor, *,
                 num_classes: int, cfg: ProbeConfig, seed: int, device: torch.device | str = "cpu",
                 progress: ProgressFn | None = None) -> dict[str, float]:
    """Train the MAE probe head on cached features; return top-1 (and top-5 when > 5 classes) in percent.

    Keys: probe_top1, probe_top5 (num_classes > 5 only), probe_train_top1, probe_seconds.

    Small-scale caveat (measured): LARS moves the weight by at most lr x 0.001 x |w| per step, so with MAE's
    lr = 0.1 x batch / 256 and the few thousand steps of a small data set the head underfits (a 20k-sample,
    10-class Gaussian mixture: 91.5% vs 95.3% for logistic regression at batch 1024, 90 epochs). MAE's regime
    (lr 6.4) or an explicit `cfg.lr` of ~1.6-6.4 matches logistic regression, as does SGD at the scaled lr.
    """
    started = time.perf_counter()
    dev = _as_device(device)
    xtr = train_feats.to(dev, torch.float32)
    ytr = train_labels.to(dev).long()
    batch, iters = _batching(xtr.shape[0], cfg.batch_size)
    trainer = _ProbeTrainer(xtr.shape[1], num_classes, cfg, batch_size=batch, iters_per_epoch=iters, seed=seed,
                            device=dev)
    shuffle = torch.Generator().manual_seed(seed + 1)
    for epoch in range(cfg.epochs):
        perm = torch.randperm(xtr.shape[0], generator=shuffle).to(dev)
        total = 0.0
        for it in range(iters):
            idx = perm[it * batch:(it + 1) * batch]
            total += trainer.step(xtr[idx], ytr[idx], epoch, it)
        if progress is not None:
            progress(epoch + 1, cfg.epochs, total / iters)
    return _result(trainer, xtr, ytr, test_feats.to(dev, torch.float32), test_labels.to(dev).long(),
                   num_classes, dev, started)


def epoch_generator(seed: int, epoch: int, device: torch.device | str = "cpu") -> torch.Generator:
    """The generator of epoch `epoch`'s probe crops, seeded by (seed, epoch): any epoch's crops can be redrawn alone."""
    state = np.random.SeedSequence([seed, epoch]).generate_state(1, dtype=np.uint64)[0]
    return torch.Generator(device=device).manual_seed(int(state) & 0x7FFF_FFFF_FFFF_FFFF)


def linear_probe_augmented(feature_fn: FeatureFn, train_images: Tensor, train_labels: Tensor,
                           test_images: Tensor, test_labels: Tensor, *, num_classes: int, cfg: ProbeConfig,
                           seed: int, augment_fn: AugmentFn | None = None, feature_batch_size: int = 0,
                           device: torch.device | str = "cpu",
                           progress: ProgressFn | None = None) -> dict[str, float]:
    """`linear_probe_augmented_data` on uint8 tensors [N, C, S, S] (held as in-memory sets); same keys."""
    train = InMemoryData("tensors", "train", train_images, train_labels.to(train_images.device), num_classes)
    test = InMemoryData("tensors", "test", test_images, test_labels.to(test_images.device), num_classes)
    return linear_probe_augmented_data(feature_fn, train, test, cfg=cfg, seed=seed, augment_fn=augment_fn,
                                       feature_batch_size=feature_batch_size, device=device, progress=progress)


def linear_probe_augmented_data(feature_fn: FeatureFn, train: ImageData, test: ImageData, *, cfg: ProbeConfig,
                                seed: int, augment_fn: AugmentFn | None = None, feature_batch_size: int = 0,
                                device: torch.device | str = "cpu", progress: ProgressFn | None = None,
                                accelerator: Any = None) -> dict[str, float]:
    """MAE's way: every epoch, features of a fresh RandomResizedCrop + flip of each train image.

    Works alike on in-memory and streamed (imagefolder) sets: both give their images as uint8 batches already at
    the model's size (center-cropped by the data pipeline), and `augment_fn(uint8 chunk on device, generator) ->
    float [-1, 1]` (default `random_resized_crop_flip`) crops each chunk on the device. Epoch e shuffles with one
    generator seeded by seed + 1 (as `linear_probe`) and crops with `epoch_generator(seed, e)`, chunk by chunk
    of `feature_batch_size` images (0 = the probe batch) in shuffled order, so the same images give the same
    crops, features and result on either kind of set. Test images are used as given (center crop);
    probe_train_top1 is measured on un-augmented train images. Same keys as `linear_probe`.

    With an `accelerator` of several processes each chunk is sharded (a process decodes and encodes its rows
    only; the crops are drawn for the whole chunk, so they are those one process draws) and the features gathered:
    the chunk is rounded up to a multiple of the processes. A custom `augment_fn` cannot be split by rows: each
    process then crops and encodes every chunk, unsharded.
    """
    started = time.perf_counter()
    dev = _as_device(device)
    aug = augment_fn or random_resized_crop_flip
    module = feature_fn if isinstance(feature_fn, nn.Module) else None
    was_training = module.training if module is not None else False
    batch, iters = _batching(len(train), cfg.batch_size)
    chunk = min(feature_batch_size or batch, batch)
    shuffle = torch.Generator().manual_seed(seed + 1)
    world = rank_world(accelerator)[1]
    shard = rank_world(accelerator) if world > 1 and augment_fn is None else None
    if shard is not None:
        chunk = -(-chunk // world)  # this process's rows of a global chunk of chunk x world

    @torch.no_grad()
    def epoch_batches(epoch: int) -> Iterator[tuple[Tensor, Tensor]]:
        """The epoch's probe batches (features [batch, F], labels [batch]) from crops of `chunk` images at once."""
        aug_gen = epoch_generator(seed, epoch, dev)
        fs: list[Tensor] = []  # features (and their labels) waiting for their probe batch
        ys: list[Tensor] = []
        held, left = 0, iters * batch  # how many wait; images still to crop this epoch
        chunks = train.batches(chunk, shuffle=True, generator=shuffle, device=dev, shard=shard)
        for x, y in chunks:  # uint8 [<= chunk, C, S, S], int64 [<= chunk]
            f, lab = _crop_features(feature_fn, aug, x, y, aug_gen, shard=shard, accelerator=accelerator)
            fs.append(f)
            ys.append(lab)
            if dev.type == "cpu":  # the chunk's crops and activations were host memory: their freed pages go back
                trim_heap()
            got = fs[-1].shape[0]
            held, left = held + got, left - got
            while held >= batch:
                f, lab = (fs[0], ys[0]) if len(fs) == 1 else (torch.cat(fs), torch.cat(ys))
                yield f[:batch], lab[:batch]
                fs, ys, held = [f[batch:]], [lab[batch:]], held - batch
            if left <= 0:  # drop_last, as MAE's train loader: the images past iters x batch are not encoded
                break
        close = getattr(chunks, "close", None)
        if close is not None:
            close()  # a streamed set's loader workers stop now, not when the generator is collected

    trainer: _ProbeTrainer | None = None
    if module is not None:
        module.eval()
    try:
        for epoch in range(cfg.epochs):
            total = 0.0
            for it, (feats, labels) in enumerate(epoch_batches(epoch)):
                if trainer is None:  # the feature width is known after the first batch
                    trainer = _ProbeTrainer(feats.shape[1], num_classes=train.num_classes, cfg=cfg, batch_size=batch,
                                            iters_per_epoch=iters, seed=seed, device=dev)
                total += trainer.step(feats, labels, epoch, it)
            if progress is not None:
                progress(epoch + 1, cfg.epochs, total / iters)
        if trainer is None:
            raise ValueError("linear_probe_augmented needs cfg.epochs >= 1")
        fbs = feature_batch_size or batch
        te_feats, te_labels = split_features(feature_fn, test, batch_size=fbs, device=dev, accelerator=accelerator)
        tr_feats, tr_labels = split_features(feature_fn, train, batch_size=fbs, device=dev, accelerator=accelerator)
    finally:
        if module is not None:
            module.train(was_training)
    return _result(trainer, tr_feats, tr_labels, te_feats, te_labels, train.num_classes, dev, started)


def _crop_features(feature_fn: FeatureFn, aug: AugmentFn, x: Tensor, y: Tensor, generator: torch.Generator, *,
                   shard: tuple[int, int] | None, accelerator: Any) -> tuple[Tensor, Tensor]:
    """Features (float) and labels (int64) of one chunk's crops: of the whole chunk, or, sharded as (rank, world),
    of this process's rows gathered back in order (`_crop_rows`, `gather_rows`)."""
    if shard is None:
        return feature_fn(aug(x, generator), y).float(), y.long()
    rank, world = shard
    feats = feature_fn(_crop_rows(x, generator, rank=rank, world=world), y).float()
    return gather_rows(accelerator, feats), gather_rows(accelerator, y.long())


@torch.no_grad()
def split_features(feature_fn: FeatureFn, data: ImageData, *, batch_size: int, device: torch.device | str,
                   accelerator: Any = None) -> tuple[Tensor, Tensor]:
    """Features of a whole split in order, its images as given (no crop): CPU float32 [N, F], int64 [N].

    With an `accelerator` of several processes each process encodes its shard (batches of batch_size / W) and
    every process gets the whole split's features, gathered batch by batch (MAE main_linprobe.py's
    DistributedSampler loaders; the split's padding of the last shard is cut off)."""
    rank, world = rank_world(accelerator)
    shard = (rank, world) if world > 1 else None
    per = -(-batch_size // world)
    feats, labels = [], []
    for x, y in data.batches(per, shuffle=False, device=device, shard=shard):
        f, lab = feature_fn(to_unit_range(x), y).float(), y.long()
        if shard is not None:
            f, lab = gather_rows(accelerator, f), gather_rows(accelerator, lab)
        feats.append(f.cpu())
        labels.append(lab.cpu())
        if f.device.type == "cpu":  # the batch's activations were host memory: their freed pages go back
            trim_heap()
    if not feats:
        return torch.zeros(0, 0), torch.zeros(0, dtype=torch.long)
    n = len(data)
    return torch.cat(feats)[:n], torch.cat(labels)[:n]


@torch.no_grad()
def knn_probe(train_feats: Tensor, train_labels: Tensor, test_feats: Tensor, test_labels: Tensor, *, k: int = 20,
              temperature: float = 0.07, num_classes: int, chunk_size: int = 1024,
              accelerator: Any = None) -> dict[str, float]:
    """Weighted kNN on cosine similarity (DINO `eval_knn.py` knn_classifier, InstDisc's vote).

    Features are L2-normalised; each test sample's k nearest train samples vote for their class with weight
    exp(sim / T); prediction = the class with the largest summed weight. Returns {"knn_top1": percent}.
    With an `accelerator` of N processes (each holding all the features) rank r scores the test chunks r, r + N,
    ... against the whole bank and the correct counts are summed over the ranks: every rank returns the number one
    process computes (the same chunks, each scored alike).
    """
    if train_feats.shape[0] == 0:
        raise ValueError("knn_probe needs at least one training sample")
    rank, world = rank_world(accelerator)
    k = min(k, train_feats.shape[0])
    dev = train_feats.device
    train_n = F.normalize(train_feats.float(), dim=1)
    ytr = train_labels.to(dev).long()
    correct = 0
    for start in range(rank * chunk_size, test_feats.shape[0], world * chunk_size):
        q = F.normalize(test_feats[start:start + chunk_size].to(dev).float(), dim=1)
        sim, idx = (q @ train_n.T).topk(k, dim=1, largest=True, sorted=True)  # [B, k]
        weights = (sim / temperature).exp()
        votes = torch.zeros(q.shape[0], num_classes, device=dev)
        votes.scatter_add_(1, ytr[idx], weights)
        pred = votes.argmax(dim=1)
        correct += int((pred == test_labels[start:start + chunk_size].to(dev)).sum())
    if world > 1:
        correct = int(accelerator.gather(torch.tensor([correct], device=accelerator.device)).sum())
    return {"knn_top1": 100.0 * correct / max(test_feats.shape[0], 1)}
