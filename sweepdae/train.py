"""One cell's pre-training loop through Accelerate: warm-up + cosine lr, EMA, accumulation, checkpoint + resume.

The loop trains on latents encoded once by the cell's frozen tokenizer (for center-crop data) or per batch (with
random-resized-crop augmentation). Time steps and noise are drawn from a generator seeded by (seed, epoch), so a
cell resumed from its epoch checkpoint takes exactly the steps an uninterrupted run takes.
"""

from __future__ import annotations

import copy
import math
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from sweepdae import faults
from sweepdae.errors import TrainingError
from sweepdae.objectives import compute_loss, model_io_dims
from sweepdae.recipe import Augment, Precision, Recipe, Space, Target, encoder_depth
from sweepdae.utils import atomic_write

CHECKPOINT = "checkpoint.pt"


@dataclass
class TrainState:
    model: nn.Module
    ema: nn.Module | None
    epoch: int  # epochs completed
    step: int  # optimizer steps taken
    resumed_from: int | None
    seconds: float
    last_loss: float
    images_per_s: float


def mixed_precision(precision: Precision, device: torch.device) -> str:
    if precision == Precision.auto:
        return "bf16" if device.type == "cuda" else "no"  # bf16 measured ~14x slower on the 2-core CPU here
    return {"fp32": "no", "bf16": "bf16", "fp16": "fp16"}[precision.value]


def build_model(recipe: Recipe, tokenizer: Any, num_classes: int) -> nn.Module:
    from sweepdae.models import create_model

    in_dim, out_dim = model_io_dims(tokenizer=tokenizer, objective=recipe.objective)
    return create_model(recipe.model.size.value, in_dim=in_dim, out_dim=out_dim, num_tokens=tokenizer.num_tokens,
                        num_classes=num_classes if recipe.model.class_cond else 0,
                        cond_mlp_ratio=recipe.model.cond_mlp_ratio, adaln_zero=recipe.model.adaln_zero,
                        encoder_depth=encoder_depth(recipe), fused_attn=recipe.model.fused_attn,
                        class_dropout=recipe.model.class_dropout)


def lr_at(step: float, *, peak: float, warmup_steps: float, total_steps: int) -> float:
    """Linear warm-up then half-cycle cosine to 0 (MAE `util/lr_sched.py`, which the paper follows)."""
    if step < warmup_steps:
        return peak * step / max(warmup_steps, 1e-8)
    progress = (step - warmup_steps) / max(total_steps - warmup_steps, 1e-8)
    return peak * 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))


def encode_all(tokenizer: Any, images: torch.Tensor, *, batch: int, device: torch.device,
               want_patches: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Latents (and original image patches) of a uint8 image set, computed once under no_grad."""
    zs, ps = [], []
    tokenizer.eval()
    with torch.no_grad():
        for i in range(0, len(images), batch):
            x = images[i:i + batch].to(device).float().div_(127.5).sub_(1.0)
            zs.append(tokenizer.encode(x))
            if want_patches:
                ps.append(tokenizer.patchify(x))
    return torch.cat(zs), (torch.cat(ps) if want_patches else None)


Micro = tuple[torch.Tensor, "torch.Tensor | None", "torch.Tensor | None"]  # (z0, image patches, labels)


def train(recipe: Recipe, *, tokenizer: Any, images: torch.Tensor | None, labels: torch.Tensor | None,
          num_classes: int, run_dir: Path, accelerator: Any, events: Callable[..., None],
          augment_fn: Callable[..., Any] | None = None, identity: str | None = None, stream: Any = None,
          ) -> TrainState:
    """Train the denoiser of one cell; resumes from run_dir/checkpoint.pt when it belongs to this cell.

    Data come from in-memory uint8 `images`/`labels` or from a streamed set (`stream`, e.g. imagefolder).
    `identity` is the cell's key (default: the recipe's); a retry with runtime overrides that keep the result the
    same (a halved micro-batch after out-of-memory) still resumes the cell's checkpoint.
    """
    from sweepdae.noise import create_schedule, single_level_t

    identity = identity or recipe.key()
    tc = recipe.train
    device = accelerator.device
    world, rank = accelerator.num_processes, accelerator.process_index
    accum = accelerator.gradient_accumulation_steps
    n = len(stream) if stream is not None else len(images)  # type: ignore[arg-type]
    if tc.batch_size > n:
        raise TrainingError(f"train.batch_size ({tc.batch_size}) is larger than the training set ({n} images)",
                            "bad_recipe")
    per_proc = tc.batch_size // (world * accum)
    if per_proc * world * accum != tc.batch_size or per_proc == 0:
        raise TrainingError(f"train.batch_size ({tc.batch_size}) must split evenly over {world} processes x "
                            f"{accum} accumulation steps", "bad_recipe")
    steps_per_epoch = n // tc.batch_size
    total_steps = steps_per_epoch * tc.epochs
    peak_lr = tc.base_lr * tc.batch_size / 256  # paper Sec. 4: lr = 1e-4 x batch / 256
    warmup = tc.warmup_epochs * steps_per_epoch

    schedule = create_schedule(recipe.noise.schedule.value, recipe.noise.num_steps)
    fixed_t = single_level_t(schedule, recipe.noise.single_sigma) if recipe.noise.levels.value == "single" else None
    tokenizer = tokenizer.to(device).requires_grad_(False)
    want_patches = recipe.objective.target == Target.image or recipe.objective.input_space == Space.image
    if stream is not None:
        source = _streamed_source(stream, tokenizer, recipe, per_proc=per_proc, rank=rank, accum=accum,
                                  world=world, steps=steps_per_epoch, device=device, want_patches=want_patches)
    else:
        assert images is not None and labels is not None
        source = _memory_source(images, labels.to(device), tokenizer, recipe, per_proc=per_proc, rank=rank,
                                accum=accum, world=world, steps=steps_per_epoch, device=device,
                                want_patches=want_patches, augment_fn=augment_fn)

    torch.manual_seed(recipe.seed)
    model = build_model(recipe, tokenizer, num_classes).to(device)
    ema = copy.deepcopy(model).requires_grad_(False) if tc.ema_decay > 0 else None
    opt = torch.optim.AdamW(model.parameters(), lr=peak_lr, betas=(tc.beta1, tc.beta2),
                            weight_decay=tc.weight_decay, fused=device.type == "cuda")
    ckpt_path = run_dir / CHECKPOINT
    start_epoch, step, resumed = 0, 0, None
    if ckpt_path.exists():
        start_epoch, step = _load_checkpoint(ckpt_path, identity, model, ema, opt, events)
        resumed = start_epoch or None
    model, opt = accelerator.prepare(model, opt)
    raw_model = accelerator.unwrap_model(model)

    t0 = time.perf_counter()
    last_loss = float("nan")
    seen = 0
    for epoch in range(start_epoch, tc.epochs):
        faults.maybe_fault("epoch", epoch)
        model.train()
        # time steps and noise from a generator seeded by (seed, epoch, rank): a resumed epoch replays exactly
        gd = torch.Generator(device=device).manual_seed(recipe.seed * 100_003 + epoch + 7919 * (rank + 1))
        ep_t0 = time.perf_counter()
        loss_sum = torch.zeros((), device=device)
        for i, micros in enumerate(source(epoch, gd)):
            faults.maybe_fault("step", step)
            lr = lr_at(step, peak=peak_lr, warmup_steps=warmup, total_steps=total_steps)
            for group in opt.param_groups:
                group["lr"] = lr
            for z0, xp, y in micros:
                b = z0.shape[0]
                t = (torch.full((b,), fixed_t, device=device, dtype=torch.long) if fixed_t is not None
                     else torch.randint(0, schedule.num_steps, (b,), device=device, generator=gd))
                noise = torch.randn(z0.shape, device=device, generator=gd)
                with accelerator.accumulate(model), accelerator.autocast():
                    terms = compute_loss(model=model, tokenizer=tokenizer, schedule=schedule,
                                         objective=recipe.objective, z0=z0, x_patches=xp, t=t, noise=noise,
                                         y=y if recipe.model.class_cond else None)
                    loss = terms["loss"].mean()
                    if faults.nonfinite_at(step):
                        loss = loss * float("nan")
                    accelerator.backward(loss)
                    if accelerator.sync_gradients and tc.grad_clip > 0:
                        accelerator.clip_grad_norm_(model.parameters(), tc.grad_clip)
                    opt.step()
                    opt.zero_grad(set_to_none=True)
                loss_sum += loss.detach()
            step += 1
            if ema is not None:
                _ema_update(ema, raw_model, tc.ema_decay)
            # one host sync per logging window, not per step (measured: per-step .item() costs ~3% on CPU)
            if (i + 1) % max(1, steps_per_epoch // 4) == 0 or i + 1 == steps_per_epoch:
                last_loss = loss_sum.item() / ((i + 1) * accum)
                if not math.isfinite(last_loss):
                    raise TrainingError(f"non-finite loss ({last_loss}) at epoch {epoch} step {step}", "nonfinite")
                dt = time.perf_counter() - ep_t0
                events(phase="train", epoch=epoch + 1, epochs=tc.epochs, step=step, steps=total_steps, loss=last_loss,
                       lr=lr, images_per_s=(i + 1) * tc.batch_size / max(dt, 1e-9))
        seen += steps_per_epoch * tc.batch_size
        if accelerator.is_main_process and ((epoch + 1) % tc.checkpoint_every == 0 or epoch + 1 == tc.epochs):
            _save_checkpoint(ckpt_path, identity, recipe, raw_model, ema, opt, epoch + 1, step)
        accelerator.wait_for_everyone()
    seconds = time.perf_counter() - t0
    return TrainState(model=raw_model, ema=ema, epoch=tc.epochs, step=step, resumed_from=resumed, seconds=seconds,
                      last_loss=last_loss, images_per_s=seen / max(seconds, 1e-9))


Source = Callable[[int, torch.Generator], Iterator[list[Micro]]]  # (epoch, generator) -> this rank's micros/step


def _memory_source(images: torch.Tensor, labels: torch.Tensor, tokenizer: Any, recipe: Recipe, *, per_proc: int,
                   rank: int, accum: int, world: int, steps: int, device: torch.device, want_patches: bool,
                   augment_fn: Callable[..., Any] | None) -> Source:
    """In-memory sets: latents encoded once (center crop) or per batch (augmented); order seeded by (seed, epoch)."""
    precomputed = recipe.data.augment == Augment.center_crop
    if precomputed:
        latents, patches = encode_all(tokenizer, images, batch=512, device=device, want_patches=want_patches)

    def micro(idx: torch.Tensor, gd: torch.Generator) -> Micro:
        if precomputed:
            return latents[idx], (patches[idx] if patches is not None else None), labels[idx]
        x = images[idx.cpu()].to(device)
        x = augment_fn(x, generator=gd) if augment_fn is not None else x
        x = x.float().div_(127.5).sub_(1.0)
        with torch.no_grad():
            return tokenizer.encode(x), (tokenizer.patchify(x) if want_patches else None), labels[idx]

    def source(epoch: int, gd: torch.Generator) -> Iterator[list[Micro]]:
        g = torch.Generator(device="cpu").manual_seed(recipe.seed * 100_003 + epoch)
        order = torch.randperm(len(images), generator=g)[: steps * per_proc * world * accum]
        order = order.view(steps, world * accum, per_proc)
        for i in range(steps):
            yield [micro(order[i, rank * accum + a].to(device), gd) for a in range(accum)]

    return source


def _streamed_source(stream: Any, tokenizer: Any, recipe: Recipe, *, per_proc: int, rank: int, accum: int,
                     world: int, steps: int, device: torch.device, want_patches: bool) -> Source:
    """Streamed sets (imagefolder): each step takes world x accum consecutive micro-batches of one shuffled pass,
    this process its own accum of them (every process decodes the whole pass: simple and exact, at world x the
    decoding work -- README, known limitations)."""
    group = world * accum

    def source(epoch: int, gd: torch.Generator) -> Iterator[list[Micro]]:
        g = torch.Generator().manual_seed(recipe.seed * 100_003 + epoch)
        mine: list[Micro] = []
        for j, (xb, yb) in enumerate(stream.batches(per_proc, shuffle=True, generator=g, device=device,
                                                    augment=recipe.data.augment, drop_last=True)):
            i, a = divmod(j, group)
            if i >= steps:
                return
            if a // accum == rank:
                x = xb.float().div_(127.5).sub_(1.0)
                with torch.no_grad():
                    mine.append((tokenizer.encode(x), tokenizer.patchify(x) if want_patches else None, yb))
                if len(mine) == accum:
                    yield mine
                    mine = []

    return source


@torch.no_grad()
def _ema_update(ema: nn.Module, model: nn.Module, decay: float) -> None:
    for pe, pm in zip(ema.parameters(), model.parameters(), strict=True):
        pe.mul_(decay).add_(pm.detach(), alpha=1 - decay)


def _save_checkpoint(path: Path, identity: str, recipe: Recipe, model: nn.Module, ema: nn.Module | None, opt: Any,
                     epoch: int, step: int) -> None:
    from sweepdae import __version__

    state = {"recipe_key": identity, "recipe": recipe.to_dict(), "sweepdae": __version__, "epoch": epoch,
             "step": step, "model": model.state_dict(), "ema": ema.state_dict() if ema is not None else None,
             "opt": opt.state_dict()}
    faults.maybe_fault("checkpoint", epoch)
    atomic_write(path, lambda f: torch.save(state, f))


def _load_checkpoint(path: Path, identity: str, model: nn.Module, ema: nn.Module | None, opt: Any,
                     events: Callable[..., None]) -> tuple[int, int]:
    """(epochs done, steps done) from a checkpoint of this recipe; anything else restarts from scratch, warned."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # a truncated or foreign file: never trust it
        warnings.warn(f"{path}: unreadable checkpoint ({type(e).__name__}); restarting the cell from scratch",
                      stacklevel=2)
        events(phase="train", warning=f"unreadable checkpoint: {type(e).__name__}; restarted")
        return 0, 0
    if not isinstance(state, dict) or state.get("recipe_key") != identity:
        warnings.warn(f"{path}: checkpoint belongs to another recipe; restarting the cell from scratch", stacklevel=2)
        events(phase="train", warning="checkpoint of another recipe; restarted")
        return 0, 0
    missing, unexpected = model.load_state_dict(state["model"], strict=False)
    if missing or unexpected:  # MAE asserts exactly which keys differ after a partial load; we refuse instead
        warnings.warn(f"{path}: checkpoint keys differ (missing {list(missing)[:3]}, unexpected "
                      f"{list(unexpected)[:3]}); restarting from scratch", stacklevel=2)
        return 0, 0
    if ema is not None and state.get("ema") is not None:
        ema.load_state_dict(state["ema"])
    opt.load_state_dict(state["opt"])
    events(phase="train", resumed_from_epoch=state["epoch"], step=state["step"])
    return int(state["epoch"]), int(state["step"])

