"""Memory bounded by the batch (issue 30): peak host RSS of the conv VAE fit and of FID reference statistics.

    .venv/bin/python benchmarks/bench_memory.py [--size 64 --channels 32 --micro 8 --batches 8,32 --refs 2000,8000]

Each case runs in a fresh Python process and reports that process's peak resident set (ru_maxrss), so the
numbers include torch itself (the floor every case shares); what matters is how they move between rows.

- conv VAE fit: one optimizer step of `ConvVAE.fit_data` (L1 + KL; random images of --size px, conv_channels
  --channels, stride 4), with $SWEEPDAE_FIT_MICRO_BATCH = --micro for every `fit_batch_size` in --batches, and
  once in one pass at the largest batch (micro-batch = batch: the fit before gradient accumulation).
- FID reference statistics: `reference_stats_streamed` over --refs images streamed in batches of 100 (synthetic
  uint8 --size px images made batch by batch), against the old way (concatenate every image, then every feature
  row, then np.cov). Inception is replaced by a fixed random projection to its 2048 features: the network's own
  memory depends on its batch only, and on a CPU it would make each case minutes long.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

FEATURE_DIM = 2048
REF_BATCH = 100


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


def _fit_case(size: int, channels: int, batch: int, micro: int) -> dict[str, float]:
    import torch

    from sweepdae.recipe import TokenizerConfig, TokenizerName
    from sweepdae.tokenizers import create_tokenizer

    os.environ["SWEEPDAE_FIT_MICRO_BATCH"] = str(micro)
    cfg = TokenizerConfig(name=TokenizerName.conv_vae, latent_dim=16, conv_downsample=4, conv_group=2,
                          conv_channels=channels, fit_epochs=1, fit_batch_size=batch)
    tok = create_tokenizer(cfg, channels=3, image_size=size)
    images = torch.randint(0, 256, (batch, 3, size, size), generator=torch.Generator().manual_seed(0),
                           dtype=torch.uint8)
    before = _peak_mb()
    t = time.perf_counter()
    stats = tok.fit_data(images, cfg=cfg, seed=0, device=torch.device("cpu"), progress=None)
    return {"seconds": time.perf_counter() - t, "peak_rss_mb": _peak_mb(), "peak_before_fit_mb": before,
            "micro": float(stats["fit_micro_batch"]), "steps": float(stats["steps"])}


def _projection(size: int):  # type: ignore[no-untyped-def]
    import torch

    proj = torch.randn(3 * 32 * 32, FEATURE_DIM, generator=torch.Generator().manual_seed(0))

    def features(x: torch.Tensor) -> torch.Tensor:
        small = torch.nn.functional.interpolate(x.float() / 255.0, size=(32, 32), mode="bilinear")
        return torch.tanh(small.flatten(1) @ proj).double()

    return features


def _batches(n: int, size: int):  # type: ignore[no-untyped-def]
    import torch

    g = torch.Generator().manual_seed(0)
    for s in range(0, n, REF_BATCH):
        yield torch.randint(0, 256, (min(REF_BATCH, n - s), 3, size, size), generator=g, dtype=torch.uint8)


def _ref_case(size: int, n: int, streamed: bool) -> dict[str, float]:
    import numpy as np
    import torch

    from sweepdae.eval.fid import feature_stats, reference_stats_streamed

    features = _projection(size)
    t = time.perf_counter()
    if streamed:
        with tempfile.TemporaryDirectory() as tmp:
            mu, _ = reference_stats_streamed(lambda: _batches(n, size), n=n, cache_dir=Path(tmp), key="bench",
                                             features=features)
    else:  # before: every reference image, then every feature row, then np.cov
        images = torch.cat(list(_batches(n, size)))
        feats = np.concatenate([features(images[s:s + REF_BATCH]).numpy() for s in range(0, n, REF_BATCH)])
        mu, _ = feature_stats(feats)
    return {"seconds": time.perf_counter() - t, "peak_rss_mb": _peak_mb(), "mu0": float(mu[0])}


def _child(args: list[str]) -> dict[str, float]:
    out = subprocess.run([sys.executable, __file__, "--child", *args], capture_output=True, text=True, check=True,
                         env={**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2")})
    result: dict[str, float] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--channels", type=int, default=32)
    ap.add_argument("--micro", type=int, default=8)
    ap.add_argument("--batches", default="8,32")
    ap.add_argument("--refs", default="2000,8000")
    ap.add_argument("--child", nargs="*")
    args = ap.parse_args()
    if args.child is not None:
        kind, *rest = args.child
        if kind == "fit":
            print(json.dumps(_fit_case(args.size, args.channels, int(rest[0]), int(rest[1]))))
        else:
            print(json.dumps(_ref_case(args.size, int(rest[0]), rest[1] == "streamed")))
        return
    common = ["--size", str(args.size), "--channels", str(args.channels)]
    batches = [int(b) for b in args.batches.split(",")]
    print(f"conv VAE fit, one step, {args.size} px, conv_channels {args.channels}, peak RSS of the process:")
    print("| fit_batch_size | micro-batch | peak RSS MB | seconds |")
    print("|---:|---:|---:|---:|")
    for batch, micro in [(b, args.micro) for b in batches] + [(batches[-1], batches[-1])]:
        r = _child(["fit", str(batch), str(micro), *common])
        print(f"| {batch} | {int(r['micro'])}{' (one pass)' if micro == batch and batch != args.micro else ''} "
              f"| {r['peak_rss_mb']:.0f} | {r['seconds']:.1f} |")
    print(f"\nFID reference statistics, {args.size} px images in batches of {REF_BATCH}, 2048 features "
          f"(stand-in projection), peak RSS of the process:")
    print("| reference images | streamed peak RSS MB | seconds | all at once (before) peak RSS MB | seconds |")
    print("|---:|---:|---:|---:|---:|")
    for n in (int(v) for v in args.refs.split(",")):
        s = _child(["ref", str(n), "streamed", *common])
        b = _child(["ref", str(n), "concat", *common])
        assert abs(s["mu0"] - b["mu0"]) <= 1e-9 * max(1.0, abs(b["mu0"])), (s, b)
        print(f"| {n} | {s['peak_rss_mb']:.0f} | {s['seconds']:.1f} | {b['peak_rss_mb']:.0f} | {b['seconds']:.1f} |")


if __name__ == "__main__":
    main()
