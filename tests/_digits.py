"""A tiny digits recipe, its data and fitted tokenizer, for the baseline tests."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from sweepdae.data import ImageData, load_dataset
from sweepdae.recipe import Recipe, recipe_from_flat
from sweepdae.tokenizers import Tokenizer, get_tokenizer

BASE: dict[str, Any] = {"data.name": "digits", "data.image_size": 8, "tokenizer.patch_size": 4,
                        "tokenizer.latent_dim": 4, "tokenizer.pca_num_patches": 500, "data.train_size": 256,
                        "data.test_size": 64, "train.epochs": 1, "train.batch_size": 64, "probe.epochs": 10,
                        "probe.batch_size": 64, "probe.optimizer": "sgd", "probe.base_lr": 0.5}
CPU = torch.device("cpu")


def _digits(tmp_path: Path, **knobs: Any) -> tuple[Recipe, Tokenizer, ImageData, ImageData]:
    r = recipe_from_flat({**BASE, **knobs})
    train, test = load_dataset(r.data, "train"), load_dataset(r.data, "test")
    tok, _ = get_tokenizer(r.tokenizer, data_key=r.data_key(), images_uint8=train.tensors()[0], channels=1,
                           image_size=8, cache_dir=tmp_path / "tok", seed=r.seed)
    return r, tok, train, test
