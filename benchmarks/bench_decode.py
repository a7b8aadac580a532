"""Decode rate per CPU core: what one data-loading process delivers, the data side of the dry-run estimate.

    .venv/bin/python benchmarks/bench_decode.py [--n 200 --px 256 --json decode.json]

Writes `--n` ImageNet-shaped JPEGs (500 x 375, the most common ImageNet-1k train size; quality 90, smooth colour
fields plus grain, ~110 KB each like ImageNet's average file) to a temp folder, then times, in this one process with
one thread (one core, as one DataLoader worker is):
  * `load_image` (sweepdae.data._imagefolder, what `imagefolder` cells decode with): PIL decode + ADM's center crop to
    `--px` (the paper's 256 px; DiT train.py `center_crop_arr`), and MAE's RandomResizedCrop + flip to `--px`;
  * an in-memory set (`synthetic`, 32 px, the path of fashion-mnist / cifar): `ImageData.batches`, center crop,
    already decoded, so per image ~free.
Each figure is the best of `--repeats` passes over the files (the page cache warm after the first: a cluster's
shared file system adds its own read time on top). The rates go in `sweepdae/runner/estimate.py` DECODE_RATES
with this machine's CPU model and this command.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import PIL
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sweepdae.data import load_dataset  # noqa: E402
from sweepdae.data._imagefolder import load_image  # noqa: E402
from sweepdae.recipe import DataConfig, DatasetName  # noqa: E402


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def write_jpegs(folder: Path, n: int, *, width: int = 500, height: int = 375, quality: int = 90) -> int:
    """n JPEGs like ImageNet photos (smooth fields + grain, not white noise, which no photo is); total bytes."""
    rng = np.random.default_rng(0)
    total = 0
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    for i in range(n):
        a, b, c = rng.uniform(0.005, 0.03, 3)
        base = np.stack([128 + 100 * np.sin(a * xx + b * yy + k + c * i) for k in range(3)], axis=-1)
        img = np.clip(base + rng.normal(0, 25, base.shape), 0, 255).astype(np.uint8)
        path = folder / f"{i:05d}.JPEG"
        Image.fromarray(img).save(path, quality=quality)
        total += path.stat().st_size
    return total


def rate(fn: Any, items: list[Any], repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        for it in items:
            fn(it)
        best = min(best, time.perf_counter() - t0)
    return len(items) / best


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=200, help="JPEGs written and decoded per pass")
    ap.add_argument("--px", type=int, default=256, help="output side (the paper: 256)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--json", help="also write the figures to this JSON file")
    a = ap.parse_args(argv)
    torch.set_num_threads(1)
    out: dict[str, Any] = {"cpu": cpu_model(), "python": platform.python_version(), "pillow": PIL.__version__,
                           "command": "python benchmarks/bench_decode.py " + " ".join(argv if argv is not None
                                                                                      else sys.argv[1:]),
                           "px": a.px, "n": a.n}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        size = write_jpegs(folder, a.n)
        files = sorted(str(p) for p in folder.iterdir())
        out["mean_jpeg_kb"] = size / a.n / 1024
        out["center_crop_per_core"] = rate(lambda f: load_image(f, a.px, "RGB", None), files, a.repeats)
        seeds = list(range(len(files)))
        out["random_resized_crop_per_core"] = rate(lambda k: load_image(files[k], a.px, "RGB", seeds[k]),
                                                   list(range(len(files))), a.repeats)
    mem = load_dataset(DataConfig(name=DatasetName.synthetic, image_size=32, train_size=4096, test_size=64), "train")

    def one_pass(_: int) -> None:
        for _x, _y in mem.batches(256, shuffle=True, generator=torch.Generator().manual_seed(0)):
            pass

    out["in_memory_per_core"] = rate(one_pass, [0], a.repeats) * len(mem)
    print(f"CPU {out['cpu']}, Pillow {out['pillow']}, one core")
    print(f"JPEG 500x375 (mean {out['mean_jpeg_kb']:.0f} KB) -> {a.px} px center crop: "
          f"{out['center_crop_per_core']:.0f} images/s")
    print(f"JPEG 500x375 -> {a.px} px random-resized-crop + flip:  {out['random_resized_crop_per_core']:.0f} images/s")
    print(f"in memory (synthetic 32 px, batches of 256):        {out['in_memory_per_core']:,.0f} images/s")
    if a.json:
        Path(a.json).write_text(json.dumps(out, indent=1))
    return out


if __name__ == "__main__":
    main()
