"""GPU figures for choosing defaults and checking the plan: one paper-shaped cell, bf16 throughput and MFU, fused
attention, torch.compile, packed cells. Untested on a GPU so far (none was lent when it was written); sized for one
10-minute call on one H100/H200.

    python benchmarks/bench_gpu.py                 # on a GPU machine: 0 and 1 below, ~8 minutes
    python benchmarks/bench_gpu.py --only cell     # the cell alone (~3 minutes); --only packing: 2 (~2 minutes)
    python benchmarks/bench_gpu.py --cpu-smoke     # the same code paths on the CPU at toy shapes (the cell: ~40 s
                                                   # on 2 busy cores; all parts: minutes, torch.compile) (--smoke:
                                                   # the same flag, the name tests/test_benchmarks.py uses)

0. A paper-shaped cell for one epoch through `sweepdae run` (the real path: store, coordinator, `accelerate launch`,
   the cell's phases): ImageNet's shapes (256 px JPEGs of 500 x 375 written to a temp folder, 10 classes, 16 px
   patches -> 256 tokens, patch PCA d = 32 (Tab. 3's baseline), DiT-L (half_large), batch 256 = the paper's 2048
   over 8 GPUs), one training epoch of 16,384 images, the augmented linear probe for one epoch, no baselines and
   no FID (its Inception weights need a download). Printed: training images/s and MFU (sweepdae.runner.estimate's
   training FLOPs over the train phase's seconds, against GPU_PEAKS' bf16 peak), peak GPU memory and host RSS,
   and images decoded / used by training, from the cell's per-phase record (result.json `phases`, where recorded).
1. `base` and `half_large` (paper sizes) at 256 tokens of D = 768 (ImageNet 256 px, 16x16 patches), one training
   step = forward + backward + fused AdamW, bf16 autocast: images/s and model FLOP utilisation (MFU) against the
   GPU's dense bf16 peak; each with fused attention (scaled_dot_product_attention) on and off, and with
   torch.compile on and off.
2. Packing: aggregate images/s of 1, 2 and 4 processes each training a small cell on the same GPU
   (`--cells-per-gpu`).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from sweepdae.models import create_model, get_model_spec
from sweepdae.runner.estimate import GPU_PEAKS, human_flops, training_flops

# Dense bf16 tensor-core peaks, TFLOP/s: the dry-run estimate's table (its data-sheet sources), plus the L40S
# (NVIDIA L40S datasheet: 733 TFLOPS bf16 with sparsity, 362.05 dense)
PEAK_TFLOPS = {**{k: v.bf16 for k, v in GPU_PEAKS.items()}, "L40S": 362.05}


def train_flops_per_image(size: str, tokens: int, dim: int) -> float:
    """Matmul FLOPs of one training image (forward 1x, backward 2x): 2 x params x tokens per Linear pass plus the
    attention products 2 x 2 x tokens^2 x width per block (PaLM appendix B / nanoGPT `estimate_mfu`)."""
    spec = get_model_spec(size)
    per_block = 12 * spec.width ** 2  # qkv 3C^2 + proj C^2 + MLP 8C^2 (per token)
    linear = spec.depth * per_block * tokens + 2 * dim * spec.width * tokens  # + token embed and output head
    attention = spec.depth * 2 * tokens ** 2 * spec.width
    return 3 * 2 * (linear + attention)


def peak_tflops(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in PEAK_TFLOPS.items() if k.lower() in name.lower()), None)


# -- 0. one paper-shaped cell -----------------------------------------------------------------------------------------
CELL_GRID = """
[grid]
name = "gpu_check"
seeds = [0]
[base]
data.name = "imagefolder"
data.root = "{root}"
data.image_size = {px}
data.num_workers = {workers}
data.train_size = {n_train}
data.test_size = {n_val}
tokenizer.name = "patch_pca"
tokenizer.patch_size = {patch}
tokenizer.latent_dim = 32
model.size = "{size}"
train.epochs = 1
train.batch_size = {batch}
train.warmup_epochs = 0
probe.augment = true
probe.epochs = 1
probe.batch_size = {probe_batch}
probe.baselines = false
fid.enabled = false
[axes]
probe.t = [10]
"""


def _write_class(args: tuple[str, int, int, int, int]) -> None:
    """`count` JPEGs of one class like ImageNet photos (smooth colour fields + grain; see bench_decode.py)."""
    folder, cls, count, width, height = args
    rng = np.random.default_rng(cls)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    Path(folder).mkdir(parents=True, exist_ok=True)
    for i in range(count):
        a, b = rng.uniform(0.005, 0.03, 2)
        base = np.stack([128 + 100 * np.sin(a * xx + b * yy + k + cls) for k in range(3)], axis=-1)
        img = np.clip(base + rng.normal(0, 25, base.shape), 0, 255).astype(np.uint8)
        Image.fromarray(img).save(f"{folder}/{i:06d}.JPEG", quality=90)


def write_folder(root: Path, *, classes: int, train: int, val: int, width: int, height: int) -> None:
    jobs = [(str(root / split / f"c{c:03d}"), c, n // classes, width, height)
            for split, n in (("train", train), ("val", val)) for c in range(classes)]
    with mp.get_context("spawn").Pool(max(1, min(len(jobs), (os.cpu_count() or 2) - 1))) as pool:
        pool.map(_write_class, jobs)


def cell(device: torch.device, *, smoke: bool, peak: float | None) -> dict[str, Any]:
    """One cell through `sweepdae run`; its figures from result.json."""
    from sweepdae.grid import expand, parse_grid

    cpus = os.cpu_count() or 2
    if smoke:  # seconds on a CPU: the same phases at toy shapes
        shape = {"px": 32, "patch": 8, "size": "micro", "batch": 16, "probe_batch": 32, "workers": 1}
        classes, n_train, n_val, width, height = 2, 64, 32, 48, 40
    else:
        shape = {"px": 256, "patch": 16, "size": "half_large", "batch": 256, "probe_batch": 1024,
                 "workers": max(1, min(15, cpus - 1))}
        classes, n_train, n_val, width, height = 10, 16_384, 1_024, 500, 375
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        t0 = time.perf_counter()
        write_folder(root / "data", classes=classes, train=n_train, val=n_val, width=width, height=height)
        wrote = time.perf_counter() - t0
        grid = root / "gpu_check.toml"
        grid.write_text(CELL_GRID.format(root=root / "data", n_train=n_train, n_val=n_val, **shape))
        [c] = expand(parse_grid(grid.read_text(), str(grid))).cells
        gpus = "cpu" if device.type == "cpu" else "0"
        cmd = [sys.executable, "-m", "sweepdae", "run", str(grid), "--gpus", gpus, "--store",
               f"journal:{root / 'store.journal'}", "--runs-dir", str(root / "runs"), "--plain"]
        t0 = time.perf_counter()
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=560)
        wall = time.perf_counter() - t0
        result_path = root / "runs" / c.key / "result.json"
        if p.returncode != 0 or not result_path.exists():
            tail = (p.stdout + p.stderr)[-3000:]
            failure = root / "runs" / c.key / "failure.json"
            raise SystemExit(f"the cell failed (rc {p.returncode}):\n{tail}\n"
                             + (failure.read_text()[-3000:] if failure.exists() else ""))
        result = json.loads(result_path.read_text())
    metrics = result.get("metrics", {})
    phases = result.get("phases") or result.get("info", {}).get("phases") or {}
    train_s = float(metrics.get("train_seconds") or (phases.get("train") or {}).get("seconds") or 0.0)
    used = (n_train // shape["batch"]) * shape["batch"]  # one epoch, whole batches
    flops = training_flops(c.recipe)
    out: dict[str, Any] = {"shape": shape, "train_images": n_train, "write_s": wrote, "cell_wall_s": wall,
                           "train_seconds": train_s, "images_per_s": used / train_s if train_s else None,
                           "mfu": flops / train_s / (peak * 1e12) if train_s and peak else None,
                           "probe_top1": metrics.get("probe_top1"), "phases": phases,
                           "world_size": result.get("world_size")}
    decoded = (phases.get("train") or {}).get("decoded")
    out["decoded_per_used"] = decoded / used if decoded else None
    out["peak_gpu_mb"] = max((float(v.get("peak_gpu_mb") or 0) for v in phases.values()), default=0.0) or None
    out["peak_rss_mb"] = max((float(v.get("peak_rss_mb") or 0) for v in phases.values()), default=0.0) or None
    print(f"cell: {shape['size']} at {shape['px']} px, batch {shape['batch']}, {n_train:,} images (written in "
          f"{wrote:.0f} s), {shape['workers']} loader workers: cell {wall:.0f} s, train {train_s:.1f} s")
    ips, mfu, gpu_mb, rss_mb, dpu = (out[k] for k in ("images_per_s", "mfu", "peak_gpu_mb", "peak_rss_mb",
                                                      "decoded_per_used"))
    record = "not recorded by this version's cells (issue 30 item 6)"
    print(f"  training: {'?' if ips is None else format(ips, ',.0f')} images/s, MFU "
          f"{'? (no peak for this device)' if mfu is None else format(mfu, '.1%')} "
          f"({human_flops(flops)} by the estimate's count)")
    print(f"  peak GPU memory {record if gpu_mb is None else format(gpu_mb, ',.0f') + ' MB'}; "
          f"peak host RSS {record if rss_mb is None else format(rss_mb, ',.0f') + ' MB'}")
    print(f"  decoded / used by training: {record if dpu is None else f'{decoded:,.0f} / {used:,} = {dpu:.2f}'}")
    for name, ph in phases.items():
        print(f"  phase {name}: " + ", ".join(f"{k} {v}" for k, v in ph.items()))
    return out


def throughput(size: str, tokens: int, dim: int, batch: int, steps: int, device: torch.device, *, fused_attn: bool,
               compile_model: bool, bf16: bool) -> tuple[float, float]:
    """(images/s, seconds to the first step incl. compilation) of a bare training loop of the sweepdae DiT."""
    torch.manual_seed(0)
    model = create_model(size, in_dim=dim, out_dim=dim, num_tokens=tokens, fused_attn=fused_attn).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=device.type == "cuda")
    step_fn: Any = torch.compile(model) if compile_model else model
    x = torch.randn(batch, tokens, dim, device=device)
    t = torch.randint(0, 1000, (batch,), device=device)
    dtype = torch.bfloat16 if bf16 else torch.float32
    t_start = time.perf_counter()
    warm = 3
    for i in range(steps + warm):
        if i == 1:
            first = time.perf_counter() - t_start
        if i == warm:
            if device.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
        with torch.autocast(device.type, dtype=dtype, enabled=bf16):
            loss = (step_fn(x, t) - x).float().pow(2).mean()
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return steps * batch / (time.perf_counter() - t0), first


def _packed_worker(args: tuple[str, int, int, int, int, float, str, Any]) -> None:
    size, tokens, dim, batch, _, seconds, device_name, queue = args
    device = torch.device(device_name)
    torch.manual_seed(0)
    model = create_model(size, in_dim=dim, out_dim=dim, num_tokens=tokens).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=device.type == "cuda")
    x = torch.randn(batch, tokens, dim, device=device)
    t = torch.randint(0, 1000, (batch,), device=device)
    bf16 = device.type == "cuda"
    images, t0, started = 0, 0.0, False
    while True:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            loss = (model(x, t) - x).float().pow(2).mean()
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if not started:  # first step done (CUDA context, allocator): start the clock
            if device.type == "cuda":
                torch.cuda.synchronize()
            t0, started = time.perf_counter(), True
            continue
        images += batch
        if time.perf_counter() - t0 > seconds:
            break
    if device.type == "cuda":
        torch.cuda.synchronize()
    queue.put(images / (time.perf_counter() - t0))


def packed(n: int, size: str, tokens: int, dim: int, batch: int, seconds: float, device: torch.device) -> float:
    """Aggregate images/s of n processes training at once on the same device."""
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_packed_worker, args=((size, tokens, dim, batch, i, seconds, str(device), queue),))
             for i in range(n)]
    for p in procs:
        p.start()
    rates = [queue.get(timeout=600) for _ in procs]
    for p in procs:
        p.join()
    return sum(rates)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cpu-smoke", "--smoke", dest="smoke", action="store_true",
                    help="tiny shapes on the CPU, in seconds: check the script, no figures")
    ap.add_argument("--only", choices=["cell", "loops", "packing"], action="append",
                    help="run only these parts (repeatable; default: all)")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--json", help="also write the figures to this JSON file")
    a = ap.parse_args()
    # one 10-minute device call: the cell (~3 min) and the loops (~5 min); packing (~2 min) when asked for
    parts = set(a.only or (["cell", "loops", "packing"] if a.smoke or not torch.cuda.is_available()
                           else ["cell", "loops"]))
    device = torch.device("cuda" if torch.cuda.is_available() and not a.smoke else "cpu")
    if a.smoke:
        sizes, tokens, dim, batches, steps, pack_size, pack_batch, seconds = (["micro"], 16, 64, {"micro": 8}, 2,
                                                                              "micro", 8, 1.0)
    else:
        # paper: 256 tokens of 16x16x3 = 768 values; batches sized for one 80-141 GB GPU
        sizes, tokens, dim, batches, steps = ["base", "half_large"], 256, 768, {"base": 256, "half_large": 128}, a.steps
        pack_size, pack_batch, seconds = "small", 128, 20.0  # a CPU-grid-sized cell scaled to a GPU: ViT-S, 64 tok
    peak = peak_tflops(device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"device {name}, torch {torch.__version__}, peak bf16 {peak or '?'} TFLOP/s")
    figures: dict[str, Any] = {"device": name, "torch": torch.__version__, "peak_tflops": peak, "runs": []}
    if "cell" in parts:
        figures["cell"] = cell(device, smoke=a.smoke, peak=peak)
    if "loops" in parts:
        print(f"{'model':11} {'batch':>5} {'fused attn':>10} {'compile':>7} {'images/s':>9} {'MFU':>6} "
              f"{'1st step s':>10}")
    for size in sizes if "loops" in parts else []:
        flops = train_flops_per_image(size, tokens, dim)
        for fused_attn, compile_model in [(True, False), (False, False), (True, True)]:
            rate, first = throughput(size, tokens, dim, batches[size], steps, device, fused_attn=fused_attn,
                                     compile_model=compile_model, bf16=device.type == "cuda")
            mfu = rate * flops / (peak * 1e12) if peak else None
            figures["runs"].append({"model": size, "batch": batches[size], "fused_attn": fused_attn,
                                    "compile": compile_model, "images_per_s": rate, "mfu": mfu, "first_step_s": first})
            print(f"{size:11} {batches[size]:5d} {str(fused_attn):>10} {str(compile_model):>7} {rate:9.1f} "
                  f"{'' if mfu is None else f'{mfu:6.1%}':>6} {first:10.1f}")
    one = None
    for n in (1, 2, 4) if "packing" in parts else ():
        rate = packed(n, pack_size, 64 if not a.smoke else tokens, dim, pack_batch, seconds, device)
        one = one or rate
        figures.setdefault("packing", []).append({"cells": n, "images_per_s": rate})
        print(f"packed {n} x {pack_size}: {rate:9.1f} images/s in all, {rate / one:.2f}x one cell")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(figures, f, indent=1)


if __name__ == "__main__":
    main()
