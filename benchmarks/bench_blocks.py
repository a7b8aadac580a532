"""The DiT block's own cost: sweepdae's DiT blocks vs timm ViT blocks vs the unfused adaLN formulas (the "before").

    python benchmarks/bench_blocks.py [--shapes micro,small --steps 8 --repeats 3]

Forward + backward of a stack of blocks on [B, N, C] tokens, in this one process, the three variants interleaved
and the median of `repeats` runs kept:
  timm      timm `Block`s (no conditioning): the upper bound;
  unfused   DiT blocks with DiT's own `x * (1 + scale) + shift` and `x + gate * f(x)` (sweepdae before);
  sweepdae  `sweepdae.models._layers.DiTBlock` (adaLN as fused addcmul kernels).
adaLN's matmuls are small (6 C^2 per sample vs 12 C^2 per token), but its elementwise ops touch every token:
on a CPU at micro width they are what separates a DiT from plain ViT blocks.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from timm.models.vision_transformer import Block

from sweepdae.models._layers import DiTBlock

SHAPES = {  # name: (width, blocks, heads, tokens, batch)
    "micro": (128, 6, 4, 16, 128),  # the CPU grids' micro DiT on 16 tokens
    "small": (384, 4, 6, 64, 16),  # ViT-S width and heads (DeiT) on 64 tokens; 4 blocks to keep the run short
}


class UnfusedDiTBlock(DiTBlock):
    """DiT's `models.py` formulas verbatim: what sweepdae's block computed before fusing."""

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = self.adaLN_modulation(c).chunk(6, dim=1)
        h = self.norm1(x) * (1 + scale_msa.unsqueeze(1)) + shift_msa.unsqueeze(1)
        x = x + gate_msa.unsqueeze(1) * self.attn(h)
        h = self.norm2(x) * (1 + scale_mlp.unsqueeze(1)) + shift_mlp.unsqueeze(1)
        return x + gate_mlp.unsqueeze(1) * self.mlp(h)


def step_ms(blocks: torch.nn.ModuleList, x: torch.Tensor, c: torch.Tensor | None, steps: int) -> float:
    for i in range(steps + 3):
        if i == 3:
            t0 = time.perf_counter()
        h = x
        for b in blocks:
            h = b(h) if c is None else b(h, c)
        h.square().mean().backward()
    return (time.perf_counter() - t0) / steps * 1e3


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shapes", default="micro,small")
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=3)
    a = ap.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, forward + backward, median of {a.repeats}")
    print(f"{'shape':26} {'timm ms':>9} {'unfused ms':>11} {'sweepdae ms':>12} {'fused/unfused':>14} "
          f"{'timm/sweepdae':>14}")
    for name in a.shapes.split(","):
        width, depth, heads, tokens, batch = SHAPES[name]
        torch.manual_seed(0)
        timm_blocks = torch.nn.ModuleList([Block(width, heads, qkv_bias=True) for _ in range(depth)])
        ours = torch.nn.ModuleList([DiTBlock(width, heads) for _ in range(depth)])
        for b in ours:  # leave adaLN-Zero's zero init: a trained block modulates
            torch.nn.init.normal_(b.adaLN_modulation[-1].weight, std=0.02)
        before = torch.nn.ModuleList([UnfusedDiTBlock(width, heads) for _ in range(depth)])
        before.load_state_dict(ours.state_dict())
        x = torch.randn(batch, tokens, width, requires_grad=True)
        c = torch.randn(batch, width)
        with torch.no_grad():  # the same function, up to float rounding
            h1, h2 = x, x
            for b1, b2 in zip(ours, before, strict=True):
                h1, h2 = b1(h1, c), b2(h2, c)
            assert torch.allclose(h1, h2, atol=1e-4), (h1 - h2).abs().max()
        runs: dict[str, list[float]] = {"timm": [], "unfused": [], "sweepdae": []}
        for _ in range(a.repeats):  # interleaved, so a noisy neighbour hits all three alike
            runs["timm"].append(step_ms(timm_blocks, x, None, a.steps))
            runs["unfused"].append(step_ms(before, x, c, a.steps))
            runs["sweepdae"].append(step_ms(ours, x, c, a.steps))
        t, u, s = (statistics.median(runs[k]) for k in ("timm", "unfused", "sweepdae"))
        shape = f"{name} C{width} N{tokens} B{batch}"
        print(f"{shape:26} {t:9.1f} {u:11.1f} {s:12.1f} {u / s:14.3f} {t / s:14.3f}")


if __name__ == "__main__":
    main()
