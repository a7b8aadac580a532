"""The cell's generative side: samples decoded through the tokenizer, FID, and the paper's Fig. 8 triplets."""

from __future__ import annotations

import contextlib
import functools
import math
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch

from sweepdae.cell.build import mixed_precision
from sweepdae.data import ImageData, from_unit_range, to_unit_range
from sweepdae.eval import denoising_figure, frechet_distance, reference_key, sample, sample_grid
from sweepdae.eval.fid import InceptionFeatures, RunningStats, reference_stats_streamed
from sweepdae.memory import BatchSize
from sweepdae.models import Denoiser
from sweepdae.noise import Schedule, schedule_for
from sweepdae.objectives import make_model_input, predict_x0_latent
from sweepdae.recipe import Recipe, image_fit
from sweepdae.tokenizers import Tokenizer

# Noise levels of the denoising figure, as fractions of the schedule (the paper's Fig. 8 shows several levels).
FIGURE_LEVELS = (0.1, 0.3, 0.5, 0.7)

# FID samples are drawn in chunks of this many, each from its own seed: the unit that ranks share out (and the
# first sampling batch; out-of-memory halves the batch, not the chunk, so the samples stay the same).
FID_CHUNK = 256
# chunk c samples with seed + CHUNK_SEED_STRIDE * c (a prime far above any chunk count of one cell)
CHUNK_SEED_STRIDE = 1_000_003
INCEPTION_BATCH = 100  # Inception-v3 images per call (first try; halved on out-of-memory)
REF_BATCH = 100  # reference images read per batch
GRID_SAMPLES = 64  # samples.png: the first 64 samples, 8 x 8


def denoise_fn_for(recipe: Recipe, model: Denoiser, tokenizer: Tokenizer, schedule: Schedule
                   ) -> Callable[[torch.Tensor, torch.Tensor, torch.Tensor | None], torch.Tensor]:
    """(x_t latent, t, y) -> clean-latent estimate, whatever the cell's target; classifier-free guidance if > 1."""
    scale = recipe.fid.guidance_scale

    def fn(xt: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        inp = make_model_input(xt, tokenizer=tokenizer, objective=recipe.objective)
        if y is not None and scale != 1.0:
            out = model.forward_with_cfg(inp, t, y, scale)
        else:
            out = model(inp, t, y)
        return predict_x0_latent(out, xt, t, tokenizer=tokenizer, schedule=schedule, objective=recipe.objective)

    return fn


def chunk_seed(seed: int, chunk: int) -> int:
    """The sampling seed of chunk `chunk` of FID_CHUNK samples (chunk 0: `seed` itself)."""
    return seed + CHUNK_SEED_STRIDE * chunk


def _autocast(recipe: Recipe, device: torch.device) -> contextlib.AbstractContextManager[Any]:
    """Sample in the precision training used (bf16 / fp16 autocast on a GPU); fp32 on CPU."""
    mp = mixed_precision(recipe.train.precision, device)
    if device.type == "cuda" and mp in ("bf16", "fp16"):
        return torch.autocast("cuda", dtype=torch.bfloat16 if mp == "bf16" else torch.float16)
    return contextlib.nullcontext()


@torch.no_grad()
def chunk_features(recipe: Recipe, *, model: Denoiser, tokenizer: Tokenizer, chunk: int, num: int, num_classes: int,
                   device: torch.device, seed: int, extractor: InceptionFeatures, sample_batch: BatchSize,
                   inception_batch: BatchSize, keep: int = 0) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Inception features [b, 2048] (float64) of chunk `chunk` of `num` samples (b = its FID_CHUNK share), and
    its first `keep` images as uint8 (for the sample grid), or None.

    The chunk's noise comes from one generator seeded with `chunk_seed(seed, chunk)` and is drawn for the whole
    chunk, while the denoiser, the decoder and Inception run `sample_batch` / `inception_batch` samples at a
    time (halved on out-of-memory): the samples do not depend on those batches, nor on which rank draws them.
    """
    schedule = schedule_for(recipe.noise)
    fn = denoise_fn_for(recipe, model, tokenizer, schedule)
    start = chunk * FID_CHUNK
    b = min(FID_CHUNK, num - start)
    amp = functools.partial(_autocast, recipe, device)

    def batched(xt: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        def run(m: int) -> torch.Tensor:
            with amp():
                return torch.cat([fn(xt[s:s + m], t[s:s + m], y[s:s + m] if y is not None else None).float()
                                  for s in range(0, xt.shape[0], m)])
        return sample_batch.run(run)

    g = torch.Generator(device=device).manual_seed(chunk_seed(seed, chunk))
    y = (torch.arange(start, start + b, device=device) % num_classes) if recipe.model.class_cond else None
    z = sample(batched, schedule, shape=(b, tokenizer.num_tokens, tokenizer.latent_dim), steps=recipe.fid.steps,
               sampler=recipe.fid.sampler.value, generator=g, device=device, y=y)

    def decode(m: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        feats, kept = [], []
        for s in range(0, b, m):
            with amp():
                images = tokenizer.decode(z[s:s + m])
            images = images.float().clamp(-1, 1).add(1).div(2)  # [m, C, H, W] in [0, 1], dropped after its features
            feats.append(inception_batch.run(functools.partial(extractor.features, images)))
            if s < keep:
                kept.append(from_unit_range(images[: keep - s] * 2 - 1).cpu())
        return torch.cat(feats), (torch.cat(kept) if kept else None)

    return sample_batch.run(decode)


def fid_cell(recipe: Recipe, *, model: Denoiser, tokenizer: Tokenizer, ref: ImageData, num_classes: int,
             device: torch.device, cache: Path, run_dir: Path, artifacts: dict[str, str],
             accelerator: Any | None = None) -> dict[str, float]:
    """FID of fid.num_samples generated images against the reference split `ref` (statistics cached per split/n;
    the reference images are the split's first n, in order).

    Memory is bounded by the batches, not by the sets: reference images and samples become Inception features
    batch by batch, merged into running float64 statistics. With `accelerator` (None: one process) every rank
    calls this; the samples are FID_CHUNK-sized chunks, chunk c drawn by rank c mod N with its own seed (DiT
    sample_ddp.py seeds each rank apart; seeding by chunk keeps the sample set the same for any N), each rank
    reads and decodes only its DistributedSampler share of the reference images (about n / N), the statistics
    are merged across ranks and every rank returns the same metrics. The sampling and Inception batches halve on
    out-of-memory; `artifacts` records the ones that worked.
    """
    rank = int(accelerator.process_index) if accelerator is not None else 0
    world = int(accelerator.num_processes) if accelerator is not None else 1
    main = accelerator is None or bool(accelerator.is_main_process)
    n_ref = min(len(ref), recipe.fid.ref_size or recipe.fid.num_samples)
    d = recipe.data
    fit, px = image_fit(d.name.value, d.image_size)
    dataset = (f"{d.name.value}:{d.root}:{d.train_size if recipe.fid.ref_split == 'train' else d.test_size}:"
               f"{d.channels}:{fit}{px or ''}")
    key = reference_key(dataset=dataset, split=recipe.fid.ref_split, n=n_ref, image_size=d.image_size)
    extractor = InceptionFeatures(device=device, batch_size=INCEPTION_BATCH)
    inception_batch = BatchSize(INCEPTION_BATCH, phase="fid", what="FID Inception features")
    sample_batch = BatchSize(FID_CHUNK, phase="fid", what="FID sampling")

    def ref_features(x: torch.Tensor) -> torch.Tensor:
        return inception_batch.run(functools.partial(extractor.features, x.to(device).float() / 255.0))

    def ref_shard(r: int, w: int) -> Iterator[torch.Tensor]:  # rank r's rows of global batches of REF_BATCH
        per = min(-(-REF_BATCH // w), -(-n_ref // w))  # no rank reads past its share of the first n_ref
        return (x for x, _ in ref.batches(per, shuffle=False, shard=(r, w)))

    mu, sigma = reference_stats_streamed(lambda: (x for x, _ in ref.batches(REF_BATCH, shuffle=False)), n=n_ref,
                                         cache_dir=cache, key=key, features=ref_features, accelerator=accelerator,
                                         device=device, shard=ref_shard)
    num = recipe.fid.num_samples
    stats = RunningStats(device=device)
    grid: torch.Tensor | None = None
    for chunk in range(rank, math.ceil(num / FID_CHUNK), world):
        feats, kept = chunk_features(recipe, model=model, tokenizer=tokenizer, chunk=chunk, num=num,
                                     num_classes=num_classes, device=device, seed=recipe.seed + 12345,
                                     extractor=extractor, sample_batch=sample_batch, inception_batch=inception_batch,
                                     keep=GRID_SAMPLES if chunk == 0 else 0)
        stats.update(feats)
        grid = kept if kept is not None else grid
    mu_f, sigma_f = stats.all_reduce(accelerator).stats()
    fid = frechet_distance(mu_f, sigma_f, mu, sigma)
    path = run_dir / "samples.png"
    if main and grid is not None:
        sample_grid(grid, path, nrow=8)
    artifacts["samples"] = path.name
    artifacts["fid_sample_batch"] = str(sample_batch.value)
    artifacts["fid_inception_batch"] = str(inception_batch.value)
    return {"fid": float(fid), "fid_num_samples": float(num)}


@torch.no_grad()
def figures_cell(recipe: Recipe, *, model: Denoiser, tokenizer: Tokenizer, images: torch.Tensor, labels: torch.Tensor,
                 device: torch.device, run_dir: Path) -> dict[str, str]:
    """Fig. 8-style triplets: clean / noisy / denoised at several noise levels, decoded through the tokenizer."""
    schedule = schedule_for(recipe.noise)
    fn = denoise_fn_for(recipe, model, tokenizer, schedule)
    x = to_unit_range(images.to(device))
    z0 = tokenizer.encode(x)
    g = torch.Generator(device=device).manual_seed(recipe.seed)
    levels = [min(schedule.num_steps - 1, int(f * schedule.num_steps)) for f in FIGURE_LEVELS]
    noisy, denoised = [], []
    y = labels.to(device) if recipe.model.class_cond else None
    for lv in levels:
        t = torch.full((len(x),), lv, device=device, dtype=torch.long)
        xt = schedule.add_noise(z0, t, torch.randn(z0.shape, device=device, generator=g))
        noisy.append(_to_uint8(tokenizer.decode(_unscale_for_view(xt, schedule, t))))
        denoised.append(_to_uint8(tokenizer.decode(fn(xt, t, y))))
    path = run_dir / "denoising.png"
    denoising_figure(images.cpu(), noisy, denoised, levels, path)
    return {"denoising": path.name}


def _unscale_for_view(xt: torch.Tensor, schedule: Schedule, t: torch.Tensor) -> torch.Tensor:
    """Show the noisy input at the data's scale (divide out gamma_t), as the paper's figure does."""
    gamma = schedule.gamma.to(xt.device)[t].float().view(-1, *([1] * (xt.dim() - 1)))
    return xt / gamma


def _to_uint8(x: torch.Tensor) -> torch.Tensor:
    return from_unit_range(x).cpu()
