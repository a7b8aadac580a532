"""The cell's generative side: samples decoded through the tokenizer, FID, and the paper's Fig. 8 triplets."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch

from sweepdae.data import ImageData, from_unit_range, sample_images, to_unit_range
from sweepdae.models import Denoiser
from sweepdae.noise import Schedule
from sweepdae.recipe import Recipe, image_fit
from sweepdae.tokenizers import Tokenizer

# Noise levels of the denoising figure, as fractions of the schedule (the paper's Fig. 8 shows several levels).
FIGURE_LEVELS = (0.1, 0.3, 0.5, 0.7)


def denoise_fn_for(recipe: Recipe, model: Denoiser, tokenizer: Tokenizer, schedule: Schedule
                   ) -> Callable[[torch.Tensor, torch.Tensor, torch.Tensor | None], torch.Tensor]:
    """(x_t latent, t, y) -> clean-latent estimate, whatever the cell's target; classifier-free guidance if > 1."""
    from sweepdae.objectives import make_model_input, predict_x0_latent

    scale = recipe.fid.guidance_scale

    def fn(xt: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        inp = make_model_input(xt, tokenizer=tokenizer, objective=recipe.objective)
        if y is not None and scale != 1.0:
            out = model.forward_with_cfg(inp, t, y, scale)
        else:
            out = model(inp, t, y)
        return predict_x0_latent(out, xt, t, tokenizer=tokenizer, schedule=schedule, objective=recipe.objective)

    return fn


@torch.no_grad()
def generate(recipe: Recipe, *, model: Denoiser, tokenizer: Tokenizer, num: int, num_classes: int,
             device: torch.device, seed: int, batch: int = 256) -> torch.Tensor:
    """`num` samples decoded to images in [0, 1], [num, C, H, W] on the CPU."""
    from sweepdae.eval import sample
    from sweepdae.noise import create_schedule

    schedule = create_schedule(recipe.noise.schedule.value, recipe.noise.num_steps)
    fn = denoise_fn_for(recipe, model, tokenizer, schedule)
    g = torch.Generator(device=device).manual_seed(seed)
    out = []
    for i in range(0, num, batch):
        b = min(batch, num - i)
        y = (torch.arange(i, i + b, device=device) % num_classes) if recipe.model.class_cond else None
        z = sample(fn, schedule, shape=(b, tokenizer.num_tokens, tokenizer.latent_dim), steps=recipe.fid.steps,
                   sampler=recipe.fid.sampler.value, generator=g, device=device, y=y)
        out.append(tokenizer.decode(z).clamp(-1, 1).add(1).div(2).float().cpu())
    return torch.cat(out)


def fid_cell(recipe: Recipe, *, model: Denoiser, tokenizer: Tokenizer, ref: ImageData, num_classes: int,
             device: torch.device, cache: Path, run_dir: Path, artifacts: dict[str, str]) -> dict[str, float]:
    """FID of fid.num_samples generated images against the reference split `ref` (statistics cached per split/n;
    the reference images are a fixed sample of the split)."""
    from sweepdae.eval import InceptionFeatures, fid_from_images, reference_key, reference_stats, sample_grid

    n_ref = min(len(ref), recipe.fid.ref_size or recipe.fid.num_samples)
    d = recipe.data
    fit, px = image_fit(d.name.value, d.image_size)
    dataset = (f"{d.name.value}:{d.root}:{d.train_size if recipe.fid.ref_split == 'train' else d.test_size}:"
               f"{d.channels}:{fit}{px or ''}")
    key = reference_key(dataset=dataset, split=recipe.fid.ref_split, n=n_ref, image_size=d.image_size)
    extractor = InceptionFeatures(device=device)
    ref_images = sample_images(ref, n_ref, shuffle=False)[0]
    mu, sigma = reference_stats(ref_images, cache_dir=cache, key=key, batch_size=100, device=device)
    fake = generate(recipe, model=model, tokenizer=tokenizer, num=recipe.fid.num_samples, num_classes=num_classes,
                    device=device, seed=recipe.seed + 12345)
    fid = fid_from_images(fake, mu, sigma, batch_size=100, device=device, extractor=extractor)
    path = run_dir / "samples.png"
    sample_grid(fake[:64], path, nrow=8)
    artifacts["samples"] = path.name
    return {"fid": float(fid), "fid_num_samples": float(recipe.fid.num_samples)}


@torch.no_grad()
def figures_cell(recipe: Recipe, *, model: Denoiser, tokenizer: Tokenizer, images: torch.Tensor, labels: torch.Tensor,
                 device: torch.device, run_dir: Path) -> dict[str, str]:
    """Fig. 8-style triplets: clean / noisy / denoised at several noise levels, decoded through the tokenizer."""
    from sweepdae.eval import denoising_figure
    from sweepdae.noise import create_schedule

    schedule = create_schedule(recipe.noise.schedule.value, recipe.noise.num_steps)
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
