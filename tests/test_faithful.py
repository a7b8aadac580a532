"""The paper's recipe, not a look-alike: how images are sized, how latents are scaled, what each objective weighs."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from sweepdae.data import load_dataset
from sweepdae.recipe import image_fit, recipe_from_flat


def test_28px_sets_reach_32px_by_zero_padding_not_resizing() -> None:
    r28 = recipe_from_flat({"data.name": "fashion-mnist", "data.image_size": 28, "data.train_size": 64,
                            "tokenizer.patch_size": 4})
    r32 = recipe_from_flat({"data.name": "fashion-mnist", "data.image_size": 32, "data.train_size": 64})
    x28, y28 = load_dataset(r28.data, "train").tensors()
    x32, y32 = load_dataset(r32.data, "train").tensors()
    assert torch.equal(x32, F.pad(x28, (2, 2, 2, 2))) and torch.equal(y28, y32)
    assert not r32.upsampled and image_fit("fashion-mnist", 32) == ("pad", 2)
    assert image_fit("fashion-mnist", 64) == ("up", 0) and recipe_from_flat({"data.image_size": 64}).upsampled
    assert image_fit("fashion-mnist", 16) == ("down", 0) and image_fit("imagefolder", 256) == ("resize", 0)
    assert r28.data_key() != r32.data_key()  # a tokenizer fitted on one is never reused for the other


@pytest.mark.parametrize("grid", ["pixel_tokenizer"])
def test_upsampled_points_are_flagged_in_the_plan(grid: str) -> None:
    import json
    import subprocess
    import sys

    for profile in ("smoke", "demo", "paper"):
        p = subprocess.run([sys.executable, "-m", "sweepdae", "plan", grid, "--profile", profile, "--json"],
                           capture_output=True, text=True)
        assert p.returncode == 0, p.stderr
        for c in json.loads(p.stdout)["cells"]:
            size = c["recipe"]["data"]["image_size"]
            native = {"fashion-mnist": 28, "mnist": 28, "digits": 8}.get(c["recipe"]["data"]["name"])
            gap = size - native if native is not None else 0
            padded = gap > 0 and gap % 2 == 0 and gap <= 8  # up to 4 px a side: zero-padded
            assert c["upsampled"] == (gap > 0 and not padded), (profile, c["label"], size)
