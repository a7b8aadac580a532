"""The pre-training loop through Accelerate: warm-up + cosine lr, EMA, accumulation, checkpoint + resume.

The loop trains on latents encoded once by the frozen tokenizer (in-memory sets without augmentation) or per batch
(random-resized-crop augmentation, streamed sets); a VAE tokenizer's latents are fresh posterior samples each time
(DiT trains on `latent_dist.sample()`). Time steps, noise and those samples are drawn from a generator seeded by
(seed, epoch), so a training resumed from its epoch checkpoint takes exactly the steps an uninterrupted run takes.

A stop request (`stop()` true: the coordinator was told to give its node back, SLURM's pre-timeout signal or a
preemption) checkpoints mid-epoch at the next optimizer step: the batches done in the epoch and the step generator's
state are saved with the weights, and the resumed epoch replays its data order up to there, so it too continues
exactly where the stopped one left off (`TrainingError` class "preempted" tells the coordinator to requeue it).

A training is identified by its recipe's `train_key` and lives in its own folder (`runs/_train/<train_key>/`):
`checkpoint.pt` (written every `train.checkpoint_every` epochs and at the end) and, once finished, `trained.json`.
`ensure_trained` loads a finished training or trains (resuming) and marks it finished.
"""

from __future__ import annotations

import copy
import math
import pickle
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import torch
from accelerate import Accelerator
from torch import nn

from sweepdae import __version__, faults
from sweepdae.cell.build import build_model, order_seed, step_seed
from sweepdae.cell.folder import CHECKPOINT, TRAINED, TrainedInfo, read_trained
from sweepdae.cell.latents import stored_latents, stored_order
from sweepdae.data import ImageData, StreamedImageData, to_unit_range
from sweepdae.errors import TrainingError
from sweepdae.models import Denoiser
from sweepdae.noise import Schedule, schedule_for
from sweepdae.objectives import compute_loss
from sweepdae.recipe import Augment, Recipe, Space, Target, fixed_t
from sweepdae.tokenizers import PatchTokenizer, Tokenizer
from sweepdae.utils import atomic_write, git_info

__all__ = ["CHECKPOINT", "CURVE_FIELDS", "TRAINED", "StopRequested", "Trained", "Trainer", "ensure_trained",
           "load_weights", "lr_at", "read_trained", "setup_training", "train", "train_one_epoch", "train_step"]

Events = Callable[..., None]
# The training curve: about CURVE_POINTS points per training, each [step, loss, lr, grad_norm, images_per_s]; kept in
# the checkpoint (a resumed training keeps its points), in trained.json and in the store (`Store.training_curves`),
# and sent to the tracker (TensorBoard by default) as they come.
CURVE_POINTS = 200
CURVE_FIELDS = ("step", "loss", "lr", "grad_norm", "images_per_s")
Tracker = Callable[[dict[str, float], int], None]  # (values, step): Accelerator.log


def lr_at(step: float, *, peak: float, warmup_steps: float, total_steps: int) -> float:
    """Linear warm-up then half-cycle cosine to 0 (MAE `util/lr_sched.py`, which the paper follows)."""
    if step < warmup_steps:
        return peak * step / max(warmup_steps, 1e-8)
    progress = (step - warmup_steps) / max(total_steps - warmup_steps, 1e-8)
    return peak * 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))


def _patches(tokenizer: Tokenizer, x: torch.Tensor) -> torch.Tensor:
    """The original image patches [B, N, D] (objectives that read them need a patch tokenizer: recipe.validate)."""
    return cast(PatchTokenizer, tokenizer).patchify(x)


def encode_all(tokenizer: Tokenizer, images: torch.Tensor, *, batch: int, device: torch.device,
               want_patches: bool) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """(latents, posterior std, original image patches) of a uint8 image set, computed once under no_grad.

    For a VAE the latents are the posterior means and std its posterior std (both scaled, [n, N, d]): the
    source draws a fresh sample from them each time an image is used. Deterministic tokenizers: std is None."""
    zs, ss, ps = [], [], []
    tokenizer.eval()
    with torch.no_grad():
        for i in range(0, len(images), batch):
            x = to_unit_range(images[i:i + batch].to(device))
            mean, std = tokenizer.posterior(x)
            zs.append(mean)
            if std is not None:
                ss.append(std)
            if want_patches:
                ps.append(_patches(tokenizer, x))
    return torch.cat(zs), (torch.cat(ss) if ss else None), (torch.cat(ps) if want_patches else None)


Micro = tuple[torch.Tensor, "torch.Tensor | None", "torch.Tensor | None"]  # (z0, image patches, labels)


@dataclass
class Trainer:
    """Everything one training step needs, built once by `setup_training` (tests build one and call
    `train_step` / `train_one_epoch` directly)."""

    recipe: Recipe
    accelerator: Accelerator
    model: nn.Module  # as prepared by Accelerate (may be wrapped)
    raw_model: Denoiser
    ema: Denoiser | None
    opt: torch.optim.Optimizer
    tokenizer: Tokenizer
    schedule: Schedule
    fixed_t: int | None  # the one time step of a single-noise-level recipe
    source: Source
    steps_per_epoch: int
    total_steps: int
    peak_lr: float
    warmup_steps: float
    log_every: int = 1  # a curve point every this many steps (and at the last)
    curve: list[list[float]] = field(default_factory=list)
    track: Tracker | None = None
    want_grad_norm: bool = False  # set before a step whose point is logged: train_step measures the gradient norm
    grad_norm: torch.Tensor | None = None
    last_point: tuple[int, float] = (0, 0.0)  # (step, time) of the previous point: images/s over the window


def setup_training(recipe: Recipe, *, tokenizer: Tokenizer, data: ImageData, accelerator: Accelerator,
                   latent_cache: Path | None = None) -> Trainer:
    """Model, EMA, optimizer and this process's data source for the recipe (nothing loaded or trained yet).

    With `latent_cache` (a folder: a cell passes runs/_cache/latents/) a streamed set whose training input is
    deterministic (center crop, no objective reading image patches) is encoded once and trained from its stored
    latents (`sweepdae.cell.latents`), as an in-memory set is; else it is decoded and encoded every epoch."""
    tc = recipe.train
    device = accelerator.device
    world, rank = accelerator.num_processes, accelerator.process_index
    accum = accelerator.gradient_accumulation_steps
    n = len(data)
    if tc.batch_size > n:
        raise TrainingError(f"train.batch_size ({tc.batch_size}) is larger than the training set ({n} images)",
                            "bad_recipe")
    per_proc = tc.batch_size // (world * accum)
    if per_proc * world * accum != tc.batch_size or per_proc == 0:
        raise TrainingError(f"train.batch_size ({tc.batch_size}) must split evenly over {world} processes x "
                            f"{accum} accumulation steps", "bad_recipe")
    steps_per_epoch = n // tc.batch_size
    schedule = schedule_for(recipe.noise)
    tokenizer = tokenizer.to(device).requires_grad_(False)
    want_patches = recipe.objective.target == Target.image or recipe.objective.input_space == Space.image
    layout = dict(per_proc=per_proc, rank=rank, accum=accum, world=world, steps=steps_per_epoch, device=device,
                  want_patches=want_patches)
    if data.in_memory and recipe.data.augment == Augment.center_crop:
        source = _encoded_source(data, tokenizer, recipe, **layout)
    elif (latent_cache is not None and isinstance(data, StreamedImageData) and not want_patches
          and recipe.data.augment == Augment.center_crop):
        stored = stored_latents(recipe, data, tokenizer, cache=latent_cache, device=device, accelerator=accelerator)
        source = _stored_source(stored, recipe, n=len(data), **layout)
    else:
        source = _batch_source(data, tokenizer, recipe, **layout)

    torch.manual_seed(recipe.seed)
    model = build_model(recipe, tokenizer, data.num_classes).to(device)
    ema = copy.deepcopy(model).requires_grad_(False) if tc.ema_decay > 0 else None
    peak_lr = tc.base_lr * tc.batch_size / 256  # paper Sec. 4: lr = 1e-4 x batch / 256
    opt = torch.optim.AdamW(model.parameters(), lr=peak_lr, betas=(tc.beta1, tc.beta2),
                            weight_decay=tc.weight_decay, fused=device.type == "cuda")
    return Trainer(recipe=recipe, accelerator=accelerator, model=model, raw_model=model, ema=ema, opt=opt,
                   tokenizer=tokenizer, schedule=schedule, fixed_t=fixed_t(recipe), source=source,
                   steps_per_epoch=steps_per_epoch, total_steps=steps_per_epoch * tc.epochs, peak_lr=peak_lr,
                   warmup_steps=tc.warmup_epochs * steps_per_epoch,
                   log_every=max(1, steps_per_epoch * tc.epochs // CURVE_POINTS))


def train_step(tr: Trainer, micros: list[Micro], step: int, gd: torch.Generator) -> torch.Tensor:
    """One optimizer step over this process's micro-batches (gradient accumulation); returns the summed
    micro-batch losses as a 0-dim tensor (no host sync)."""
    acc, tc, device = tr.accelerator, tr.recipe.train, tr.accelerator.device
    world, rank = acc.num_processes, acc.process_index
    lr = lr_at(step, peak=tr.peak_lr, warmup_steps=tr.warmup_steps, total_steps=tr.total_steps)
    for group in tr.opt.param_groups:
        group["lr"] = lr
    loss_sum = torch.zeros((), device=device)
    for z0, xp, y in micros:
        b = z0.shape[0]
        # this rank's rows of the global micro-batch's draws (the layout above `_global_draw`)
        t = (torch.full((b,), tr.fixed_t, device=device, dtype=torch.long) if tr.fixed_t is not None
             else _global_draw(gd, b, (), world=world, rank=rank, device=device, kind="randint",
                               high=tr.schedule.num_steps))  # [B]
        noise = _global_draw(gd, b, tuple(z0.shape[1:]), world=world, rank=rank, device=device)  # [B, N, d]
        with acc.accumulate(tr.model), acc.autocast():
            terms = compute_loss(model=tr.model, tokenizer=tr.tokenizer, schedule=tr.schedule,
                               objective=tr.recipe.objective, z0=z0, x_patches=xp, t=t, noise=noise,
                               y=y if tr.recipe.model.class_cond else None)
            loss = terms["loss"].mean()
            acc.backward(loss)
            if acc.sync_gradients and tc.grad_clip > 0:
                tr.grad_norm = acc.clip_grad_norm_(tr.model.parameters(), tc.grad_clip)  # the norm before clipping
            elif acc.sync_gradients and tr.want_grad_norm:
                grads = [p.grad for p in tr.model.parameters() if p.grad is not None]
                tr.grad_norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))
            tr.opt.step()
            tr.opt.zero_grad(set_to_none=True)
        loss_sum += loss.detach()
    if tr.ema is not None:
        _ema_update(tr.ema, tr.raw_model, tc.ema_decay)
    return loss_sum


class StopRequested(Exception):
    """Raised by `train_one_epoch` at a step boundary when `stop()` said so: where to resume."""

    def __init__(self, batch: int, step: int, gd_state: torch.Tensor) -> None:
        super().__init__(f"stop requested after batch {batch} (step {step})")
        self.batch, self.step, self.gd_state = batch, step, gd_state


def train_one_epoch(tr: Trainer, epoch: int, step: int, events: Events, *, skip: int = 0,
                    gd_state: torch.Tensor | None = None, stop: Callable[[], bool] | None = None
                    ) -> tuple[int, float]:
    """One epoch from optimizer step `step`; returns (steps done after it, mean loss of the epoch).

    `skip` batches of the epoch were done before a mid-epoch checkpoint whose step generator state is `gd_state`:
    the source starts after them (a streamed set's sampler at that sample position, reading none of them again;
    an in-memory augmented set redraws their crops without encoding them). `stop()` is asked
    after every step but the epoch's last (all processes agree through one all-reduce); when true,
    `StopRequested` is raised."""
    tc, acc = tr.recipe.train, tr.accelerator
    device, accum = acc.device, acc.gradient_accumulation_steps
    tr.model.train()
    # time steps and noise from a generator seeded by (seed, epoch), alike on every rank (each keeps its rows of
    # the global draws): a resumed epoch replays exactly, at any world size
    gd = torch.Generator(device=device).manual_seed(step_seed(tr.recipe.seed, epoch))
    t0 = time.perf_counter()
    loss_sum = torch.zeros((), device=device)
    last_loss = float("nan")
    batches = tr.source(epoch, gd, skip)  # starts at the resumed step: the skipped images are not read again
    if gd_state is not None:
        gd.set_state(gd_state)
    for i, micros in enumerate(batches, start=skip):
        faults.maybe_fault("step", step)
        point = (step + 1) % tr.log_every == 0 or step + 1 == tr.total_steps
        tr.want_grad_norm, tr.grad_norm = point, None
        step_loss = train_step(tr, micros, step, gd)
        loss_sum += step_loss
        step += 1
        if point:  # losses are the mean over the cell's processes (one all-reduce), as one process logs them
            _curve_point(tr, step, _mean_over(acc, step_loss).item() / accum)
        # one host sync per logging window, not per step (measured: per-step .item() costs ~3% on CPU)
        if (i + 1) % max(1, tr.steps_per_epoch // 4) == 0 or i + 1 == tr.steps_per_epoch:
            last_loss = _mean_over(acc, loss_sum).item() / ((i + 1 - skip) * accum)
            if not math.isfinite(last_loss):
                raise TrainingError(f"non-finite loss ({last_loss}) at epoch {epoch} step {step}", "nonfinite")
            dt = time.perf_counter() - t0
            events(phase="train", epoch=epoch + 1, epochs=tc.epochs, step=step, steps=tr.total_steps,
                   loss=last_loss, lr=tr.opt.param_groups[0]["lr"],
                   images_per_s=(i + 1 - skip) * tc.batch_size / max(dt, 1e-9))
        if stop is not None and i + 1 < tr.steps_per_epoch and _agreed(acc, stop()):
            raise StopRequested(i + 1, step, gd.get_state())
    return step, last_loss


def _curve_point(tr: Trainer, step: int, loss: float) -> None:
    now = time.perf_counter()
    last_step, last_t = tr.last_point
    ips = (step - last_step) * tr.recipe.train.batch_size / (now - last_t) if last_t and now > last_t else math.nan
    gn = float(tr.grad_norm) if tr.grad_norm is not None else math.nan
    values = [float(step), loss, float(tr.opt.param_groups[0]["lr"]), gn, ips]
    tr.curve.append(values)
    tr.last_point = (step, now)
    if tr.track is not None:
        tr.track({f"train/{k}": v for k, v in zip(CURVE_FIELDS[1:], values[1:], strict=True) if math.isfinite(v)},
                 step)


def _mean_over(acc: Accelerator, value: torch.Tensor) -> torch.Tensor:
    """The mean of a 0-dim tensor over the processes (itself when one): every rank's share of the global batch."""
    if acc.num_processes == 1:
        return value
    return cast(torch.Tensor, acc.reduce(value.detach().clone(), reduction="mean"))


def _agreed(acc: Accelerator, flag: bool) -> bool:
    """True when any process says so (one all-reduce when there are several, so they all stop at one step)."""
    if acc.num_processes == 1:
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=acc.device)
    return bool(acc.reduce(t, reduction="sum").item() > 0)


@dataclass
class TrainState:
    model: Denoiser
    ema: Denoiser | None
    epoch: int  # epochs completed
    step: int  # optimizer steps taken
    resumed_from: int | None
    seconds: float
    last_loss: float
    images_per_s: float
    curve: list[list[float]] = field(default_factory=list)  # CURVE_FIELDS per point


def train(recipe: Recipe, *, tokenizer: Tokenizer, data: ImageData, train_dir: Path, accelerator: Accelerator,
          events: Events, identity: str | None = None, stop: Callable[[], bool] | None = None,
          track: Tracker | None = None, latent_cache: Path | None = None) -> TrainState:
    """Train the recipe's denoiser; resumes from train_dir/checkpoint.pt when it belongs to this training.

    `identity` is the training's key (default: the recipe's train_key); runtime overrides (a halved micro-batch
    after out-of-memory) keep it, so a retry still resumes the checkpoint. When `stop()` turns true the training
    checkpoints at the next step and raises `TrainingError` of class "preempted".
    """
    identity = identity or recipe.train_key()
    tc = recipe.train
    tr = setup_training(recipe, tokenizer=tokenizer, data=data, accelerator=accelerator, latent_cache=latent_cache)
    ckpt_path = train_dir / CHECKPOINT
    start_epoch, step, resumed, skip, gd_state = 0, 0, None, 0, None
    if ckpt_path.exists():
        start_epoch, step, skip, gd_state, tr.curve = _load_checkpoint(ckpt_path, identity, tr.raw_model, tr.ema,
                                                                       tr.opt, events)
        resumed = start_epoch or (0 if skip else None)
    tr.track = track
    tr.last_point = (step, time.perf_counter())
    tr.model, tr.opt = accelerator.prepare(tr.model, tr.opt)
    tr.raw_model = accelerator.unwrap_model(tr.model)

    t0 = time.perf_counter()
    last_loss = float("nan")
    for epoch in range(start_epoch, tc.epochs):
        faults.maybe_fault("epoch", epoch)
        first = epoch == start_epoch
        try:
            step, last_loss = train_one_epoch(tr, epoch, step, events, skip=skip if first else 0,
                                              gd_state=gd_state if first else None, stop=stop)
        except StopRequested as s:
            if accelerator.is_main_process:
                _save_checkpoint(ckpt_path, identity, recipe, tr.raw_model, tr.ema, tr.opt, epoch, s.step,
                                 batch=s.batch, gd_state=s.gd_state, curve=tr.curve)
            accelerator.wait_for_everyone()
            events(phase="train", stopped_at_step=s.step, epoch=epoch, batch=s.batch)
            raise TrainingError(f"stopped on request at epoch {epoch} step {s.step} (batch {s.batch} of the epoch); "
                                "checkpointed, resumes there", "preempted") from None
        if accelerator.is_main_process and ((epoch + 1) % tc.checkpoint_every == 0 or epoch + 1 == tc.epochs):
            _save_checkpoint(ckpt_path, identity, recipe, tr.raw_model, tr.ema, tr.opt, epoch + 1, step,
                             curve=tr.curve)
        accelerator.wait_for_everyone()
    seconds = time.perf_counter() - t0
    seen = ((tc.epochs - start_epoch) * tr.steps_per_epoch - skip) * tc.batch_size
    return TrainState(model=tr.raw_model, ema=tr.ema, epoch=tc.epochs, step=step, resumed_from=resumed,
                      seconds=seconds, last_loss=last_loss, images_per_s=seen / max(seconds, 1e-9), curve=tr.curve)


@dataclass
class Trained:
    """The network a cell evaluates: the EMA weights when the recipe keeps an EMA, else the trained ones."""

    model: Denoiser
    info: TrainedInfo  # trained.json
    reused: bool  # True when another cell made this training
    resumed_from: int | None

    @property
    def metrics(self) -> dict[str, float]:
        return self.info.metrics


def ensure_trained(recipe: Recipe, *, tokenizer: Tokenizer, data: ImageData, train_key: str, train_dir: Path,
                   accelerator: Accelerator, events: Events, cell_key: str,
                   stop: Callable[[], bool] | None = None, track: Tracker | None = None,
                   latent_cache: Path | None = None) -> Trained:
    """The trained network of the recipe (its training `train_key`, `recipe.train_key()`): loaded from train_dir
    when that training finished, else trained there (resuming its checkpoint) and marked finished with
    trained.json. Emits a `trained` event once it exists."""
    info = read_trained(train_dir, train_key)
    if info is not None:
        model = build_model(recipe, tokenizer, data.num_classes)
        load_weights(train_dir / CHECKPOINT, train_key, model, ema=recipe.train.ema_decay > 0)
        model = model.to(accelerator.device)
        events(phase="train", reused_training=train_key, trained_by=info.cell)
        return Trained(model=model, info=info, reused=info.cell != cell_key, resumed_from=None)
    train_dir.mkdir(parents=True, exist_ok=True)
    state = train(recipe, tokenizer=tokenizer, data=data, train_dir=train_dir, accelerator=accelerator,
                  events=events, identity=train_key, stop=stop, track=track, latent_cache=latent_cache)
    info = TrainedInfo(train_key=train_key, cell=cell_key, epochs=state.epoch, steps=state.step,
                       train_loss=state.last_loss, images_per_s=state.images_per_s, seconds=state.seconds,
                       resumed_from_epoch=state.resumed_from, git_commit=git_info().get("commit"),
                       curve_fields=list(CURVE_FIELDS), curve=state.curve, finished=time.time())
    if accelerator.is_main_process:
        info.write(train_dir)
        events(phase="trained", train_key=train_key)
    accelerator.wait_for_everyone()
    model = state.ema if state.ema is not None else state.model
    return Trained(model=model, info=info, reused=False, resumed_from=state.resumed_from)


# (epoch, step generator, steps already done in the epoch) -> this rank's micro-batches, step by step
Source = Callable[..., Iterator[list[Micro]]]

# The layout of a step over the cell's processes, the same for every source so that a step is the same whatever
# the world size (tests/test_multiprocess.py): an epoch is one shuffled pass; step i takes its positions
# [i B, (i+1) B) (B = world x accum x per_proc, the global batch); its micro-batch a is the global micro
# [i B + a P W, i B + (a+1) P W) (P = per_proc, W = world), of which rank r holds every W-th sample from r:
# position i B + a P W + j W + r for j < P. This is DistributedSampler's split (`indices[rank::num_replicas]`)
# of the pass, and with W = 1 the layout of one process. Time steps, noise and a VAE's posterior draws are drawn
# for the whole global micro from the step generator `gd` (seeded alike on every rank) and each rank keeps its
# rows: sample k gets the same draws at any world size, and one process draws exactly what it drew before.


def _global_draw(gd: torch.Generator, rows: int, rest: tuple[int, ...], *, world: int, rank: int,
                 device: torch.device, kind: str = "randn", high: int = 0) -> torch.Tensor:
    """This rank's rows of one draw for a global micro of `rows` x world samples: randn [rows, *rest], or
    randint(0, high) [rows] (kind "randint")."""
    n = rows * world
    if kind == "randint":
        full = torch.randint(0, high, (n,), device=device, generator=gd)
    else:
        full = torch.randn((n, *rest), device=device, generator=gd)
    return full.view(rows, world, *full.shape[1:])[:, rank] if world > 1 else full


def _posterior_draw(mean: torch.Tensor, std: torch.Tensor | None, gd: torch.Generator, *, world: int,
                    rank: int) -> torch.Tensor:
    """A VAE's posterior sample z = mean + std eps with eps this rank's rows of a global draw (`sample_posterior`
    when one process); the mean of a deterministic tokenizer, drawing nothing."""
    if std is None:
        return mean
    eps = _global_draw(gd, mean.shape[0], tuple(mean.shape[1:]), world=world, rank=rank, device=mean.device)
    return mean + std * eps.to(mean.dtype)


def _encoded_source(data: ImageData, tokenizer: Tokenizer, recipe: Recipe, *, per_proc: int, rank: int, accum: int,
                    world: int, steps: int, device: torch.device, want_patches: bool) -> Source:
    """An in-memory set without augmentation: latents encoded once; order seeded by (seed, epoch). A VAE keeps its
    posterior mean and std and draws each micro-batch's sample from the step's generator `gd` (a fresh sample per
    use, as DiT's `latent_dist.sample()`; a resumed epoch replays the same draws)."""
    images, labels = data.tensors()
    labels = labels.to(device)
    latents, stds, patches = encode_all(tokenizer, images, batch=512, device=device, want_patches=want_patches)

    def z0(idx: torch.Tensor, gd: torch.Generator) -> torch.Tensor:
        return _posterior_draw(latents[idx], None if stds is None else stds[idx], gd, world=world, rank=rank)

    def source(epoch: int, gd: torch.Generator, skip: int = 0) -> Iterator[list[Micro]]:
        g = torch.Generator(device="cpu").manual_seed(order_seed(recipe.seed, epoch))
        order = torch.randperm(len(images), generator=g)[: steps * per_proc * world * accum]
        order = order.view(steps, accum, per_proc, world)[..., rank].to(device)  # the layout above
        for i in range(skip, steps):
            yield [(z0(idx, gd), patches[idx] if patches is not None else None, labels[idx]) for idx in order[i]]

    return source


def _stored_source(stored: Any, recipe: Recipe, *, n: int, per_proc: int, rank: int, accum: int, world: int,
                   steps: int, device: torch.device, want_patches: bool) -> Source:
    """A streamed set's stored latents (`sweepdae.cell.latents`), read a micro-batch's rows at a time in the
    layout above (the same order as the streamed sampler's, so the same steps as decoding every epoch)."""
    assert not want_patches

    def source(epoch: int, gd: torch.Generator, skip: int = 0) -> Iterator[list[Micro]]:
        for i, idx in enumerate(stored_order(recipe, n, epoch, steps=steps, accum=accum, per_proc=per_proc,
                                             world=world, rank=rank)):
            if i < skip:
                continue
            micros: list[Micro] = []
            for m in idx:  # [per_proc] image indices of one micro-batch
                mean, std = stored.rows(m, device)
                micros.append((_posterior_draw(mean, std, gd, world=world, rank=rank), None,
                               stored.labels[m].to(device)))
            yield micros

    return source


def _batch_source(data: ImageData, tokenizer: Tokenizer, recipe: Recipe, *, per_proc: int, rank: int, accum: int,
                  world: int, steps: int, device: torch.device, want_patches: bool) -> Source:
    """Augmented or streamed sets, encoded per micro-batch (a VAE's posterior sampled with the step's generator).

    A streamed set (an image folder) gives each process only its own shard of the epoch (`shard_loader`: a
    DistributedSampler over the epoch's shuffled pass, persistent DataLoader workers, starting at the resumed
    sample position), so each image is decoded once per epoch across the cell's processes, as DiT's train.py.
    An in-memory set with augmentation has nothing to decode: every process crops the global micro-batch
    (seeded by (seed, epoch), the same on every rank) and keeps its rows."""
    group = world * per_proc
    seed = order_seed(recipe.seed)

    def encode(xb: torch.Tensor, yb: torch.Tensor, gd: torch.Generator) -> Micro:
        x = to_unit_range(xb)
        with torch.no_grad():
            mean, std = tokenizer.posterior(x)
            return (_posterior_draw(mean, std, gd, world=world, rank=rank),
                    _patches(tokenizer, x) if want_patches else None, yb)

    if isinstance(data, StreamedImageData):
        loader = data.shard_loader(per_proc, world=world, rank=rank, seed=seed, augment=recipe.data.augment,
                                   per_rank=steps * accum * per_proc, device=device)

        def streamed(epoch: int, gd: torch.Generator, skip: int = 0) -> Iterator[list[Micro]]:
            mine: list[Micro] = []
            for xb, yb in loader.epoch(epoch, start=skip * accum * per_proc):
                mine.append(encode(xb, yb, gd))
                if len(mine) == accum:
                    yield mine
                    mine = []

        return streamed

    def source(epoch: int, gd: torch.Generator, skip: int = 0) -> Iterator[list[Micro]]:
        g = torch.Generator().manual_seed(seed + epoch)
        mine: list[Micro] = []
        for j, (xb, yb) in enumerate(data.batches(group, shuffle=True, generator=g, device=device,
                                                  augment=recipe.data.augment, drop_last=True)):
            if j >= steps * accum:
                return
            if j < skip * accum:  # crops drawn (the generator replays), not encoded
                continue
            mine.append(encode(xb[rank::world], yb[rank::world], gd))
            if len(mine) == accum:
                yield mine
                mine = []

    return source


@torch.no_grad()
def _ema_update(ema: nn.Module, model: nn.Module, decay: float) -> None:
    for pe, pm in zip(ema.parameters(), model.parameters(), strict=True):
        pe.mul_(decay).add_(pm.detach(), alpha=1 - decay)


def _save_checkpoint(path: Path, identity: str, recipe: Recipe, model: nn.Module, ema: nn.Module | None, opt: Any,
                     epoch: int, step: int, *, batch: int = 0, gd_state: torch.Tensor | None = None,
                     curve: list[list[float]] | None = None) -> None:
    """`epoch` epochs done, plus `batch` batches of the next one (a mid-epoch stop, with the step generator's
    state `gd_state` there)."""
    state = {"train_key": identity, "recipe": recipe.to_dict(), "sweepdae": __version__,
             "git_commit": git_info().get("commit"), "epoch": epoch, "step": step, "batch": batch,
             "gd_state": gd_state, "curve": curve or [], "model": model.state_dict(),
             "ema": ema.state_dict() if ema is not None else None, "opt": opt.state_dict()}
    faults.maybe_fault("checkpoint", epoch)
    atomic_write(path, lambda f: torch.save(state, f))


def state_mismatch(module: nn.Module, saved: Any) -> str | None:
    """Why `saved` cannot load into `module` exactly (key sets or shapes differ), or None when it can."""
    if not isinstance(saved, dict):
        return f"not a state dict ({type(saved).__name__})"
    want = module.state_dict()
    missing, unexpected = sorted(set(want) - set(saved)), sorted(set(saved) - set(want))
    if missing or unexpected:
        return f"keys differ (missing {missing[:3]}, unexpected {unexpected[:3]})"
    for name, tensor in want.items():
        got = saved[name]
        if not isinstance(got, torch.Tensor) or got.shape != tensor.shape:
            shape = tuple(got.shape) if isinstance(got, torch.Tensor) else type(got).__name__
            return f"{name}: shape {shape}, expected {tuple(tensor.shape)}"
    return None


def _read_checkpoint(path: Path) -> dict[str, Any]:
    # weights_only: on a cluster runs/ is a shared filesystem, and a crafted pickle would run code on unpickling;
    # everything _save_checkpoint writes (tensors, numbers, strings, lists, dicts, None) loads this way.
    state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, dict):
        raise ValueError("not a checkpoint")
    return state


def _unreadable(e: BaseException) -> str:
    """Why a checkpoint did not load, in a few words."""
    if isinstance(e, pickle.UnpicklingError):
        return "refused: it holds objects other than tensors and plain data, which could run code"
    return f"unreadable ({type(e).__name__})"


def _load_checkpoint(path: Path, identity: str, model: nn.Module, ema: nn.Module | None, opt: Any,
                     events: Events) -> tuple[int, int, int, torch.Tensor | None, list[list[float]]]:
    """(epochs done, steps done, batches done of the next epoch, step generator state there, curve points so far)
    from a checkpoint of this training; anything else restarts from scratch, warned.

    Key sets and shapes are checked before anything is loaded: a checkpoint loads whole or not at all."""
    try:
        state = _read_checkpoint(path)
    except Exception as e:  # a truncated, foreign or crafted file: never trust it
        warnings.warn(f"{path}: checkpoint {_unreadable(e)}; training from scratch", stacklevel=2)
        events(phase="train", warning=f"checkpoint {_unreadable(e)}; restarted")
        return 0, 0, 0, None, []
    why = None if state.get("train_key") == identity else "it belongs to another training"
    why = why or state_mismatch(model, state.get("model"))
    if why is None and ema is not None:
        why = state_mismatch(ema, state.get("ema"))
    if why is not None:
        warnings.warn(f"{path}: checkpoint not loaded: {why}; training from scratch", stacklevel=2)
        events(phase="train", warning=f"checkpoint not loaded: {why}; restarted")
        return 0, 0, 0, None, []
    model.load_state_dict(state["model"])
    if ema is not None:
        ema.load_state_dict(state["ema"])
    opt.load_state_dict(state["opt"])
    batch = int(state.get("batch") or 0)
    events(phase="train", resumed_from_epoch=state["epoch"], step=state["step"], **({"batch": batch} if batch else {}))
    curve = [list(map(float, p)) for p in state.get("curve") or [] if p[0] <= state["step"]]
    return int(state["epoch"]), int(state["step"]), batch, state.get("gd_state") if batch else None, curve


def load_weights(path: Path, identity: str, model: nn.Module, *, ema: bool) -> None:
    """Load a finished training's weights (its EMA when it kept one) into `model`, exactly, or raise."""
    try:
        state = _read_checkpoint(path)
    except Exception as e:
        raise TrainingError(f"{path}: checkpoint of a finished training {_unreadable(e)}; "
                            f"remove {path.parent} to train again", "bad_checkpoint") from e
    if state.get("train_key") != identity:
        raise TrainingError(f"{path}: checkpoint of another training", "bad_checkpoint")
    saved = state.get("ema") if ema else state.get("model")
    why = state_mismatch(model, saved)
    if why is not None or not isinstance(saved, dict):
        raise TrainingError(f"{path}: checkpoint does not fit the model: {why}", "bad_checkpoint")
    model.load_state_dict(saved)
