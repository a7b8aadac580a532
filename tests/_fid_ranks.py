"""FID of a tiny untrained cell, computed by `fid_cell` in 1 process or sharded over an `accelerate launch` of
several (CPU, gloo); each rank writes its metrics to OUT/rank{r}.json. Used by tests/test_memory.py.

Inception is replaced by a fixed linear map of the pixels to 2048 features: the test is about who computes
which samples and how the statistics are merged, not about the network.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import torch


class LinearFeatures:
    """images float [B, C, H, W] in [0, 1] -> float64 [B, 2048], a fixed random projection."""

    def __init__(self, device: object = "cpu", *, batch_size: int = 64, quantize: bool = True) -> None:
        self.batch_size = batch_size
        self.proj: torch.Tensor | None = None

    def features(self, images: torch.Tensor, batch_size: int | None = None) -> torch.Tensor:
        x = images.double().flatten(1)
        if self.proj is None:
            self.proj = torch.randn(x.shape[1], 2048, generator=torch.Generator().manual_seed(0),
                                    dtype=torch.float64)
        return torch.tanh(x @ self.proj)


def tiny_cell() -> tuple[Any, Any, Any, Any]:
    """(recipe, tokenizer, untrained model, reference set) of a class-conditional 8 px pixel-token cell."""
    from sweepdae.cell.build import build_model
    from sweepdae.data._base import InMemoryData
    from sweepdae.recipe import recipe_from_flat
    from sweepdae.tokenizers import create_tokenizer

    recipe = recipe_from_flat({"data.name": "digits", "data.image_size": 8, "tokenizer.name": "pixel",
                               "tokenizer.patch_size": 4, "model.size": "micro", "model.class_cond": True,
                               "fid.enabled": True, "fid.num_samples": 300, "fid.ref_size": 250, "fid.steps": 3})
    tok = create_tokenizer(recipe.tokenizer, channels=1, image_size=8)
    tok.fitted = True
    torch.manual_seed(0)
    model = build_model(recipe, tok, 10).eval()
    g = torch.Generator().manual_seed(1)
    ref = InMemoryData("digits", "test", torch.randint(0, 256, (260, 1, 8, 8), generator=g, dtype=torch.uint8),
                       torch.randint(0, 10, (260,), generator=g), 10)
    return recipe, tok, model, ref


def main(out: Path, sharded: bool) -> None:
    from accelerate import Accelerator

    import sweepdae.cell.generate as generate

    generate.InceptionFeatures = LinearFeatures  # type: ignore[misc,assignment]
    acc = Accelerator(cpu=True) if sharded else None
    recipe, tok, model, ref = tiny_cell()
    artifacts: dict[str, str] = {}
    metrics = generate.fid_cell(recipe, model=model, tokenizer=tok, ref=ref, num_classes=10,
                                device=torch.device("cpu"), cache=out / "cache", run_dir=out, artifacts=artifacts,
                                accelerator=acc)
    rank = acc.process_index if acc is not None else 0
    (out / f"rank{rank}.json").write_text(json.dumps({"metrics": metrics, "artifacts": artifacts,
                                                      "world": acc.num_processes if acc is not None else 1}))


if __name__ == "__main__":
    main(Path(sys.argv[1]), sharded=len(sys.argv) > 2 and sys.argv[2] == "sharded")
