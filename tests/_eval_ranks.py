"""What tests/test_multiprocess.py compares between one process and two for the evaluation steps that run on every
rank of a cell: run as `accelerate launch --multi_gpu --num_processes 2 tests/_eval_ranks.py ROOT OUT` (gloo on
CPU), each rank writing OUT/rank{r}.pt, or called in-process as `measure(root, work, None)`.

On an image folder of JPEGs (ROOT, streamed): the FID reference statistics of the first REF_N validation images
(a fixed random projection stands in for Inception: the test is about who reads which images), the images each
rank decoded for them; a sharded kNN on fixed random features; the tokenizer fit (patch PCA, on a sample of the
train split given as a callable) and the images each rank decoded for it, missing the cache and then hitting it.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import torch

from sweepdae.data import decoded_images, load_dataset, sample_images
from sweepdae.eval import knn_probe
from sweepdae.eval.fid import reference_stats_streamed
from sweepdae.recipe import recipe_from_flat
from sweepdae.tokenizers import get_tokenizer

REF_N = 15  # of the 18 validation images: the rows past it and DistributedSampler's wrapped padding are dropped
KNOBS = {"data.name": "imagefolder", "data.image_size": 8, "data.num_workers": 0, "tokenizer.name": "patch_pca",
         "tokenizer.patch_size": 4, "tokenizer.latent_dim": 8, "model.size": "micro"}


def project(x: torch.Tensor) -> torch.Tensor:
    """uint8 [B, C, H, W] -> float64 [B, 16]: a fixed random projection of the pixels."""
    flat = x.double().flatten(1) / 255.0
    proj = torch.randn(flat.shape[1], 16, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    return torch.tanh(flat @ proj)


def measure(root: Path, work: Path, accelerator: Any) -> dict[str, Any]:
    r = recipe_from_flat({**KNOBS, "data.root": str(root)})
    train, test = load_dataset(r.data, "train"), load_dataset(r.data, "test")

    before = decoded_images()
    mu, sigma = reference_stats_streamed(lambda: (x for x, _ in test.batches(4, shuffle=False)), n=REF_N,
                                         cache_dir=work / "fid", key="ref", features=project,
                                         accelerator=accelerator,
                                         shard=lambda rk, w: (x for x, _ in test.batches(2, shuffle=False,
                                                                                         shard=(rk, w))))
    ref_decoded = decoded_images() - before

    g = torch.Generator().manual_seed(3)
    bank, bank_y = torch.randn(60, 8, generator=g), torch.randint(0, 4, (60,), generator=g)
    queries, query_y = torch.randn(45, 8, generator=g), torch.randint(0, 4, (45,), generator=g)
    knn = knn_probe(bank, bank_y, queries, query_y, k=5, num_classes=4, chunk_size=8, accelerator=accelerator)

    main = accelerator is None or accelerator.is_main_process
    tok_decoded = []
    for _ in range(2):  # a miss (the main process fits, the others wait for its file), then a hit
        before = decoded_images()
        tok, _ = get_tokenizer(r.tokenizer, data_key=r.data_key(), images_uint8=lambda: sample_images(train, 16)[0],
                               channels=train.channels, image_size=8, cache_dir=work / "tok", wait=not main)
        tok_decoded.append(decoded_images() - before)
    return {"mu": mu, "sigma": sigma, "ref_decoded": ref_decoded, "knn": knn, "tok_decoded": tok_decoded,
            "tok_state": {k: v.clone() for k, v in tok.state_dict().items()},
            "world": accelerator.num_processes if accelerator is not None else 1}


if __name__ == "__main__":
    from accelerate import Accelerator

    acc = Accelerator(cpu=True)
    out = Path(sys.argv[2])
    got = measure(Path(sys.argv[1]), out, acc)
    torch.save(got, out / f"rank{acc.process_index}.pt")
    acc.wait_for_everyone()
