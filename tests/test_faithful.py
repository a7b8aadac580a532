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


@pytest.mark.parametrize("latent_scale", ["global", "per_dim"])
def test_predicting_the_image_reweights_nothing_under_one_global_scale(latent_scale: str, tmp_path) -> None:
    """Tab. 3 rows 5 ("image output via inverse PCA", target z0) and 6 ("predict original image") with
    residual_weight = 0 weigh the same d PCA components: row 5 in latent units ((V_d^T r) / scale_i)^2 averaged
    over d, row 6 in pixel units r_i^2 averaged over D. With one global scale s the two differ by the constant
    d s^2 / D for every sample and t; with a per-dim scale (whitening) they do not: row 6 would re-weight the
    components by their variances, the confound a global scale removes."""
    from sweepdae.noise import create_schedule
    from sweepdae.objectives import compute_loss
    from sweepdae.tokenizers import get_tokenizer

    base = {"data.name": "digits", "data.image_size": 8, "tokenizer.patch_size": 4, "tokenizer.latent_dim": 6,
            "tokenizer.latent_scale": latent_scale, "noise.schedule": "sigma_linear",
            "objective.input_space": "image", "objective.output_space": "image", "objective.residual_weight": 0.0}
    row5 = recipe_from_flat({**base, "objective.target": "z0"})
    row6 = recipe_from_flat({**base, "objective.target": "image"})
    x, _ = load_dataset(row5.data, "train").tensors()
    tok, _ = get_tokenizer(row5.tokenizer, data_key="digits", images_uint8=x, channels=1, image_size=8,
                           cache_dir=tmp_path, seed=0)
    imgs = x[:64].float() / 127.5 - 1
    z0, xp = tok.encode(imgs), tok.patchify(imgs)
    g = torch.Generator().manual_seed(0)
    noise = torch.randn(z0.shape, generator=g)
    t = torch.randint(0, 1000, (64,), generator=g)
    out = xp + 0.3 * torch.randn(xp.shape, generator=g)  # any network output [B, N, D]
    schedule = create_schedule("sigma_linear")

    def model(inp: torch.Tensor, t: torch.Tensor, y: object) -> torch.Tensor:
        return out

    def loss(r):  # type: ignore[no-untyped-def]
        return compute_loss(model=model, tokenizer=tok, schedule=schedule, objective=r.objective, z0=z0,
                            x_patches=xp, t=t, noise=noise)["loss"].double()

    ratio = loss(row6) / loss(row5)
    if latent_scale == "global":
        s = float(tok.scale[0])
        assert torch.allclose(ratio, torch.full_like(ratio, 6 * s * s / 16), rtol=1e-4)
    else:
        assert float(ratio.std() / ratio.mean()) > 0.05  # sample-dependent: components re-weighted
