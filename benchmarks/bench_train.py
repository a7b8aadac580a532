"""Training throughput of a sweepdae cell vs a bare loop of the same timm ViT blocks (the upper bound).

    python benchmarks/bench_train.py [--width 128 --depth 6 --heads 4 --tokens 16 --batch 128 --steps 60]

Both run in this one process, alternately, on the same device: the bare loop is timm `Block`s + a linear token
embedding + AdamW on an MSE loss; the cell is `sweepdae.cell.train.train` on in-memory data with the same shapes
(micro DiT: adaLN conditioning, PCA tokenizer, eps objective). Prints images/s of both and their ratio.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
from timm.models.vision_transformer import Block


def bare_loop(width: int, depth: int, heads: int, tokens: int, d: int, batch: int, steps: int,
              device: torch.device) -> float:
    torch.manual_seed(0)
    embed = torch.nn.Linear(d, width)
    blocks = torch.nn.Sequential(*[Block(width, heads, mlp_ratio=4.0, qkv_bias=True) for _ in range(depth)])
    head = torch.nn.Linear(width, d)
    model = torch.nn.Sequential(embed, blocks, torch.nn.LayerNorm(width), head).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.0, fused=device.type == "cuda")
    x = torch.randn(batch, tokens, d, device=device)
    for i in range(steps + 5):
        if i == 5:
            t0 = time.perf_counter()
        loss = (model(x) - x).pow(2).mean()
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return steps * batch / (time.perf_counter() - t0)


def bare_denoiser_loop(tokens: int, d: int, batch: int, steps: int, device: torch.device) -> float:
    """The same micro DiT as the cell (adaLN conditioning included), in the plainest possible loop."""
    from sweepdae.models import create_model

    torch.manual_seed(0)
    model = create_model("micro", in_dim=d, out_dim=d, num_tokens=tokens).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.0, fused=device.type == "cuda")
    x = torch.randn(batch, tokens, d, device=device)
    t = torch.randint(0, 1000, (batch,), device=device)
    for i in range(steps + 5):
        if i == 5:
            t0 = time.perf_counter()
        loss = (model(x, t) - x).pow(2).mean()
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return steps * batch / (time.perf_counter() - t0)


def cell_loop(tokens: int, batch: int, steps: int, device: torch.device) -> float:
    from accelerate import Accelerator

    from sweepdae.cell.train import train
    from sweepdae.data import load_dataset
    from sweepdae.recipe import recipe_from_flat
    from sweepdae.tokenizers import get_tokenizer

    side = int(tokens ** 0.5) * 8
    n = batch * steps
    r = recipe_from_flat({"data.name": "synthetic", "data.image_size": side, "data.channels": 1,
                          "data.train_size": n, "tokenizer.patch_size": 8, "tokenizer.latent_dim": 4,
                          "tokenizer.pca_num_patches": 5000, "model.size": "micro", "train.epochs": 1,
                          "train.batch_size": batch, "train.warmup_epochs": 0.1})
    data = load_dataset(r.data, "train")
    x, y = data.tensors()
    with tempfile.TemporaryDirectory() as tmp:
        tok, _ = get_tokenizer(r.tokenizer, data_key="bench", images_uint8=x, channels=1, image_size=side,
                               cache_dir=Path(tmp), seed=0)
        acc = Accelerator(cpu=device.type == "cpu", mixed_precision="no")
        state = train(r, tokenizer=tok, data=data, train_dir=Path(tmp), accelerator=acc, events=lambda **e: None)
    return state.images_per_s


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokens", type=int, default=16)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--repeats", type=int, default=2)
    a = ap.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    # micro DiT: 128 wide, 6 blocks, 4 heads (sweepdae.models.MODEL_SIZES["micro"])
    bare, dit, cell = [], [], []
    for _ in range(a.repeats):
        bare.append(bare_loop(128, 6, 4, a.tokens, 4, a.batch, a.steps, device))
        dit.append(bare_denoiser_loop(a.tokens, 4, a.batch, a.steps, device))
        cell.append(cell_loop(a.tokens, a.batch, a.steps, device))
    b, m, c = max(bare), max(dit), max(cell)
    print(f"device {device}, torch threads {torch.get_num_threads()}, tokens {a.tokens}, batch {a.batch}")
    print(f"bare timm ViT blocks loop : {b:8.1f} images/s  (runs: {', '.join(f'{v:.0f}' for v in bare)})")
    print(f"bare loop, same micro DiT : {m:8.1f} images/s  (runs: {', '.join(f'{v:.0f}' for v in dit)})")
    print(f"sweepdae cell (train loop): {c:8.1f} images/s  (runs: {', '.join(f'{v:.0f}' for v in cell)})")
    print(f"ratio cell / timm blocks  : {c / b:.3f}   (includes adaLN conditioning, which the timm loop lacks)")
    print(f"ratio cell / same DiT     : {c / m:.3f}   (the training loop's own overhead)")


if __name__ == "__main__":
    main()
