"""Data path: images/s the training data sources deliver vs images/s the micro DiT consumes in a training step.

    .venv/bin/python benchmarks/bench_data.py [--dataset fashion-mnist --batch 128 --n 12000 --folder-n 4096
                                               --folder-px 64 --workers 0,2 --steps 20]

Sources, each timed over whole passes in this one process, on the CPU:
  * `InMemoryData.batches` (sweepdae.data): uint8 batches, center crop and MAE's random-resized-crop + flip;
  * the trainer's in-memory sources (`sweepdae.cell.train._encoded_source` / `_batch_source`), for digits /
    fashion-mnist): latents encoded once then indexed (center crop; the one-time encode is shown apart), or
    cropped + encoded per batch (random-resized-crop);
  * an image folder of generated PNGs in a temp dir (`imagefolder`, StreamedImageData: PIL decode + ADM center crop
    in DataLoader workers), bare and through the trainer's streamed source (`_batch_source`, + encode).
The model side is the trainer's step on precomputed latents: micro DiT forward + `compute_loss` + backward + AdamW,
at the same batch. ratio = source images/s / model images/s (the issue's target: >= 5 for in-memory sets).
Grey 32 px images everywhere (the folder is decoded to 1 channel) so one tokenizer and one model serve every row.
"""

from __future__ import annotations

import argparse
import functools
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sweepdae.cell.build import build_model  # noqa: E402
from sweepdae.cell.train import _batch_source, _encoded_source  # noqa: E402
from sweepdae.data import ImageData, clear_cache, load_dataset  # noqa: E402
from sweepdae.objectives import compute_loss  # noqa: E402
from sweepdae.recipe import Recipe, recipe_from_flat  # noqa: E402
from sweepdae.tokenizers import get_tokenizer  # noqa: E402

CPU = torch.device("cpu")


def make_recipe(dataset: str, n: int, batch: int, augment: str = "center_crop",
                extra: dict[str, Any] | None = None) -> Recipe:
    size, patch = (8, 4) if dataset == "digits" else (32, 8)
    return recipe_from_flat({"data.name": dataset, "data.image_size": size, "data.channels": 1,
                             "data.train_size": n, "data.augment": augment, "tokenizer.patch_size": patch,
                             "tokenizer.latent_dim": 16 if dataset != "digits" else 4,
                             "tokenizer.pca_num_patches": 20000, "model.size": "micro", "train.batch_size": batch,
                             **(extra or {})})


def timed_pass(batches: Iterable[Any], count: Callable[[Any], int]) -> float:
    """images/s of one full pass over `batches`."""
    t0 = time.perf_counter()
    n = sum(count(b) for b in batches)
    return n / (time.perf_counter() - t0)


def best(fn: Callable[[], float], repeats: int) -> float:
    return max(fn() for _ in range(repeats))


def count(batch: tuple[torch.Tensor, torch.Tensor]) -> int:
    return int(batch[0].shape[0])


def batches_rate(data: ImageData, batch: int, augment: str) -> float:
    """images/s of one shuffled `ImageData.batches` pass (uint8 batches, no tokenizer)."""
    return timed_pass(data.batches(batch, shuffle=True, augment=augment, drop_last=True), count)


def micros_images(micros: list[tuple[torch.Tensor, Any, Any]]) -> int:
    return sum(int(z.shape[0]) for z, _, _ in micros)


def trainer_source(recipe: Recipe, tokenizer: Any, data: ImageData) -> Callable[[int], float]:
    """images/s of one epoch of the source `sweepdae.cell.train.setup_training` builds for this recipe (world 1,
    no accumulation): encoded once for in-memory center-crop sets, per batch otherwise."""
    b = recipe.train.batch_size
    layout = dict(per_proc=b, rank=0, accum=1, world=1, steps=len(data) // b, device=CPU, want_patches=False)
    if data.in_memory and recipe.data.augment.value == "center_crop":
        source = _encoded_source(data, tokenizer, recipe, **layout)
    else:
        source = _batch_source(data, tokenizer, recipe, **layout)

    def epoch(e: int) -> float:
        return timed_pass(source(e, torch.Generator().manual_seed(e)), micros_images)

    return epoch


def model_rate(recipe: Recipe, tokenizer: Any, latents: torch.Tensor, steps: int) -> float:
    """images/s of the trainer's step body (no data loading): noise, model, loss, backward, AdamW."""
    from sweepdae.noise import create_schedule

    torch.manual_seed(0)
    schedule = create_schedule(recipe.noise.schedule.value, recipe.noise.num_steps)
    model = build_model(recipe, tokenizer, 10)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.0)
    b = recipe.train.batch_size
    g = torch.Generator().manual_seed(0)
    warm = 3
    for i in range(steps + warm):
        if i == warm:
            t0 = time.perf_counter()
        z0 = latents[(i * b) % (len(latents) - b):][:b]
        t = torch.randint(0, schedule.num_steps, (b,), generator=g)
        noise = torch.randn(z0.shape, generator=g)
        loss = compute_loss(model=model, tokenizer=tokenizer, schedule=schedule, objective=recipe.objective, z0=z0,
                            t=t, noise=noise)["loss"].mean()
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    return steps * b / (time.perf_counter() - t0)


def write_folder(root: Path, n: int, px: int, classes: int = 10) -> None:
    """root/{train,val}/<class>/*.png: n RGB px x px smooth random images for train, n // 4 for val."""
    rng = np.random.default_rng(0)
    for split, count in (("train", n), ("val", max(classes, n // 4))):
        for i in range(count):
            d = root / split / f"c{i % classes}"
            d.mkdir(parents=True, exist_ok=True)
            small = rng.integers(0, 256, (px // 8, px // 8, 3), dtype=np.uint8)  # upsampled: compressible
            img = Image.fromarray(small).resize((px, px), Image.Resampling.BILINEAR)
            img.save(d / f"{i:06d}.png")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", default="fashion-mnist", help="in-memory set: fashion-mnist, mnist or digits")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--n", type=int, default=12000, help="in-memory training images (0 = the whole split)")
    ap.add_argument("--folder-n", type=int, default=4096, help="PNG files in the generated image folder")
    ap.add_argument("--folder-px", type=int, default=64, help="side of the PNG files (resized to 32 on load)")
    ap.add_argument("--workers", default="0,2", help="DataLoader workers to try for the folder")
    ap.add_argument("--steps", type=int, default=20, help="timed model steps")
    ap.add_argument("--repeats", type=int, default=2, help="passes per source (best is shown)")
    a = ap.parse_args()
    torch.set_float32_matmul_precision("high")  # as sweepdae.cell
    rows: list[tuple[str, float]] = []

    base = make_recipe(a.dataset, a.n, a.batch)
    clear_cache()
    t0 = time.perf_counter()
    data = load_dataset(base.data, "train")  # decode + subset + resize, once per process
    load_s = time.perf_counter() - t0
    x, y = data.tensors()
    with tempfile.TemporaryDirectory() as tmp:
        tok, _ = get_tokenizer(base.tokenizer, data_key="bench-data", images_uint8=x, channels=1,
                               image_size=base.data.image_size, cache_dir=Path(tmp) / "tok", seed=0)
        tok.eval()
        with torch.no_grad():
            t0 = time.perf_counter()
            latents = torch.cat([tok.encode(x[i:i + 512].float().div(127.5).sub(1)) for i in range(0, len(x), 512)])
            encode_s = time.perf_counter() - t0
        model = model_rate(base, tok, latents, a.steps)
        for aug in ("center_crop", "random_resized_crop"):
            rate = best(functools.partial(batches_rate, data, a.batch, aug), a.repeats)
            rows.append((f"InMemoryData.batches, {aug}", rate))
        for aug in ("center_crop", "random_resized_crop"):
            r = make_recipe(a.dataset, a.n, a.batch, aug)
            epoch = trainer_source(r, tok, data)  # center crop: encodes every image once here
            rows.append((f"train in-memory source, {aug}", best(functools.partial(epoch, 0), a.repeats)))

        if a.folder_n > 0 and a.dataset != "digits":  # the folder is decoded at 32 px, the digits model is 8 px
            root = Path(tmp) / "folder"
            write_folder(root, a.folder_n, a.folder_px)
            for w in (int(v) for v in a.workers.split(",")):
                r = make_recipe("imagefolder", 0, a.batch, extra={"data.root": str(root), "data.num_workers": w})
                stream = load_dataset(r.data, "train")
                rate = best(functools.partial(batches_rate, stream, a.batch, "center_crop"), a.repeats)
                rows.append((f"imagefolder batches, {w} workers", rate))
                epoch = trainer_source(r, tok, stream)
                rows.append((f"train streamed source, {w} workers", best(functools.partial(epoch, 0), a.repeats)))
        clear_cache()

    folder = a.folder_n > 0 and a.dataset != "digits"
    print(f"{a.dataset}: {len(x)} images {tuple(x.shape[1:])}, batch {a.batch}, torch threads "
          f"{torch.get_num_threads()}" + (f"; folder: {a.folder_n} PNGs of {a.folder_px} px -> 32 px grey" if folder
                                          else ""))
    print(f"model step (micro DiT, {tok.num_tokens} tokens of d = {tok.latent_dim}): {model:8.0f} images/s")
    print(f"one-time load of the in-memory split (decode, subset, resize): {load_s:.2f} s")
    print(f"one-time encode of the in-memory set (center crop): {encode_s:.2f} s ({len(x) / encode_s:.0f} images/s)")
    print(f"{'source':<40}{'images/s':>12}{'source / model':>16}")
    for name, rate in rows:
        print(f"{name:<40}{rate:>12.0f}{rate / model:>16.1f}")


if __name__ == "__main__":
    main()
