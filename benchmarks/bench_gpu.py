"""GPU figures for choosing defaults: bf16 throughput and MFU, fused attention, torch.compile, packed cells.

    python benchmarks/bench_gpu.py                 # on a GPU machine: everything below, ~5 minutes on one H100/H200
    python benchmarks/bench_gpu.py --smoke         # the same code paths on the CPU, tiny shapes (checks the script)

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
import time
from typing import Any

import torch

from sweepdae.models import create_model, get_model_spec

# Dense bf16 tensor-core peaks, TFLOP/s (NVIDIA data sheets: H100/H200 SXM 989.4, A100 312, L40S 362.05)
PEAK_TFLOPS = {"H200": 989.4, "H100": 989.4, "A100": 312.0, "L40S": 362.05}


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
    return next((v for k, v in PEAK_TFLOPS.items() if k in name), None)


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
    ap.add_argument("--smoke", action="store_true", help="tiny shapes on the CPU: check the script, no figures")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--json", help="also write the figures to this JSON file")
    a = ap.parse_args()
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
    print(f"{'model':11} {'batch':>5} {'fused attn':>10} {'compile':>7} {'images/s':>9} {'MFU':>6} {'1st step s':>10}")
    for size in sizes:
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
    for n in (1, 2, 4):
        rate = packed(n, pack_size, 64 if not a.smoke else tokens, dim, pack_batch, seconds, device)
        one = one or rate
        figures.setdefault("packing", []).append({"cells": n, "images_per_s": rate})
        print(f"packed {n} x {pack_size}: {rate:9.1f} images/s in all, {rate / one:.2f}x one cell")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(figures, f, indent=1)


if __name__ == "__main__":
    main()
