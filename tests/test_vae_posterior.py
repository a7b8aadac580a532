"""VAE tokenizers: the denoiser trains on posterior samples (DiT's `latent_dist.sample()`), probing reads the
posterior mean, the latent scale is measured on samples (LDM's scale_factor), and each cell records the posterior
std and KL per token. References are independent: torch.distributions for the KL and the Gaussian, sample
moments over many draws for the sampler, the unscaled encoder moments for the scaling."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import torch
from accelerate import Accelerator
from torch.distributions import Normal, kl_divergence

from sweepdae.cell.build import build_model
from sweepdae.cell.probing import encoder_feature_fn
from sweepdae.cell.run import run_cell
from sweepdae.cell.train import _batch_source, _encoded_source, setup_training, train_one_epoch
from sweepdae.data import load_dataset, to_unit_range
from sweepdae.data._base import InMemoryData
from sweepdae.recipe import Recipe, TokenizerConfig, TokenizerName, recipe_from_flat
from sweepdae.tokenizers import (
    STOCHASTIC_TOKENIZERS,
    ConvVAE,
    PatchVAE,
    Tokenizer,
    build_conv_vae_loss,
    create_tokenizer,
    fit_tokenizer,
    gaussian_kl,
    get_tokenizer,
    patchify,
    posterior_stats,
)
from sweepdae.utils import atomic_write_json

SIZE, CH = 16, 3
# A standard normal exceeds 5.5 in absolute value with probability 3.8e-8; with at most ~10^4 compared values a
# correct sampler fails a 5.5-sigma bound with probability < 4e-4 (and never here: every draw is seeded).
Z_BOUND = 5.5


def _cfg(name: str, **kw: Any) -> TokenizerConfig:
    base: dict[str, Any] = dict(name=TokenizerName(name), patch_size=4, latent_dim=8, fit_epochs=1,
                                fit_batch_size=16, conv_downsample=2, conv_group=2, conv_channels=8)
    return TokenizerConfig(**{**base, **kw})


def _images(n: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, CH, SIZE, SIZE), generator=g, dtype=torch.uint8)


def _reference_moments(tok: Tokenizer, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean, std) of the posterior over scaled tokens, straight from each VAE's own encoder."""
    if isinstance(tok, PatchVAE):
        mean, logvar = tok.moments(patchify(x, tok.patch_size))
    else:
        assert isinstance(tok, ConvVAE)
        m, lv = tok.moments(x)
        mean, logvar = patchify(m, tok.group), patchify(lv, tok.group)
    return mean / tok.scale, torch.exp(0.5 * logvar) / tok.scale


def test_stochastic_names_match_the_classes() -> None:
    for name in TokenizerName:
        tok = create_tokenizer(_cfg(name.value), channels=CH, image_size=SIZE)
        assert tok.stochastic == (name.value in STOCHASTIC_TOKENIZERS), name


def test_gaussian_kl_matches_torch_distributions() -> None:
    g = torch.Generator().manual_seed(0)
    mean, logvar = torch.randn(5, 7, 8, generator=g, dtype=torch.float64) * 2, torch.randn(5, 7, 8, generator=g,
                                                                                              dtype=torch.float64)
    ref = kl_divergence(Normal(mean, torch.exp(0.5 * logvar)), Normal(0.0, 1.0)).sum(-1)  # [5, 7] nats per token
    assert torch.allclose(gaussian_kl(mean, logvar).sum(-1), ref, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", ["patch_vae", "conv_vae"])
def test_samples_have_the_posterior_mean_and_std(name: str) -> None:
    """K draws per value: the sample mean is within Z_BOUND standard errors (std / sqrt(K)) of the posterior mean
    and the sample std within Z_BOUND of the posterior std (its standard error is ~ std / sqrt(2K))."""
    torch.manual_seed(0)
    tok = create_tokenizer(_cfg(name), channels=CH, image_size=SIZE).eval()
    tok.scale.copy_(torch.linspace(0.5, 2.0, tok.latent_dim))  # scaled units must scale mean and std alike
    x = to_unit_range(_images(2))
    k = 4000
    with torch.no_grad():
        mu, sd = _reference_moments(tok, x)  # [2, N, d]
        assert torch.equal(tok.encode(x), tok.posterior(x)[0]) and torch.allclose(tok.encode(x), mu, atol=1e-6)
        z = tok.encode_sample(x.repeat(k, 1, 1, 1), torch.Generator().manual_seed(1)).view(k, *mu.shape)
    assert sd.min() > 0.05 * sd.max()  # a non-degenerate posterior, so the std check means something
    z_mean = (z.double().mean(0) - mu) / (sd / k ** 0.5)
    z_std = (z.double().std(0) / sd - 1.0) * (2 * k) ** 0.5
    assert z_mean.abs().max() < Z_BOUND and z_std.abs().max() < Z_BOUND
    # seeded: the same generator seed gives the same sample, another seed another one
    with torch.no_grad():
        a = tok.encode_sample(x, torch.Generator().manual_seed(3))
        b = tok.encode_sample(x, torch.Generator().manual_seed(3))
        c = tok.encode_sample(x, torch.Generator().manual_seed(4))
    assert torch.equal(a, b) and not torch.allclose(a, c)


@pytest.mark.parametrize("name", ["pixel", "patch_pca", "patch_ae"])
def test_deterministic_tokenizers_sample_their_latent_and_draw_nothing(name: str) -> None:
    tok = create_tokenizer(_cfg(name), channels=CH, image_size=SIZE).eval()
    x = to_unit_range(_images(3))
    g = torch.Generator().manual_seed(0)
    state = g.get_state()
    with torch.no_grad():
        assert torch.equal(tok.encode_sample(x, g), tok.encode(x))
    assert torch.equal(g.get_state(), state) and tok.posterior(x)[1] is None


@pytest.mark.parametrize("name", ["patch_vae", "conv_vae"])
def test_kl_weight_means_kl_per_token_over_values_per_token(name: str) -> None:
    """What recipe.py says of `tokenizer.kl_weight`: loss - reconstruction = kl_weight x KL per token / D, with the
    KL in nats summed over a token's d dims (torch.distributions reference) and D = C*H*W / N."""
    torch.manual_seed(0)
    cfg = _cfg(name, kl_weight=0.5)
    tok = create_tokenizer(cfg, channels=CH, image_size=SIZE)
    x = to_unit_range(_images(4))
    with torch.no_grad():
        mu, sd = _reference_moments(tok, x)  # scale is 1: the VAE's own units
    kl_ref = kl_divergence(Normal(mu.double(), sd.double()), Normal(0.0, 1.0)).sum(-1).mean()
    values_per_token = CH * SIZE * SIZE / tok.num_tokens
    if isinstance(tok, PatchVAE):
        terms = tok.loss_terms(x)
    else:
        assert isinstance(tok, ConvVAE)
        xrec, mean, logvar = tok.reconstruct_sample(x)
        loss_fn = build_conv_vae_loss(cfg, channels=CH, image_size=SIZE)
        terms = loss_fn.generator_terms(x, xrec, mean, logvar, adversarial=False, last_layer=None)
    got = float((terms["loss"] - terms["recon"]).detach())
    assert got == pytest.approx(0.5 * float(kl_ref) / values_per_token, rel=1e-5)


@pytest.mark.parametrize("name", ["patch_vae", "conv_vae"])
def test_latent_scale_is_fitted_on_posterior_samples(name: str) -> None:
    """After a global-scale fit, sampled latents have unit second moment: E[mean^2] + E[std^2] (closed form) is 1
    up to the one draw's sampling error (relative ~ sqrt(2 / n) = 1.6% for n = 8192 values; bound 8%), while
    the means alone stay clearly below 1 (they would be exactly 1 if the scale were fitted on means)."""
    images = _images(64)
    cfg = _cfg(name, latent_scale="global")
    tok = create_tokenizer(cfg, channels=CH, image_size=SIZE)
    fit_tokenizer(tok, images, cfg=cfg, seed=0, device="cpu")
    with torch.no_grad():
        mu, sd = _reference_moments(tok, to_unit_range(images))
    second = float((mu.double().pow(2) + sd.double().pow(2)).mean())
    assert second == pytest.approx(1.0, abs=0.08)
    assert float(mu.double().pow(2).mean()) < 0.9
    again = create_tokenizer(cfg, channels=CH, image_size=SIZE)
    fit_tokenizer(again, images, cfg=cfg, seed=0, device="cpu")
    assert torch.equal(again.scale, tok.scale)  # the samples are seeded


def test_posterior_stats_against_torch_distributions(tmp_path: Path) -> None:
    images, heldout = _images(48), _images(20, seed=1)
    cfg = _cfg("patch_vae")
    tok, stats = get_tokenizer(cfg, data_key="synthetic-16", images_uint8=images, channels=CH, image_size=SIZE,
                               cache_dir=tmp_path, heldout_uint8=heldout)
    assert isinstance(tok, PatchVAE)
    with torch.no_grad():
        mean, logvar = tok.moments(patchify(to_unit_range(heldout), 4))
    q = Normal(mean.double(), torch.exp(0.5 * logvar.double()))
    kl_tokens = kl_divergence(q, Normal(0.0, 1.0)).sum(-1)  # [20, N]
    assert stats["kl_per_token_nats"] == pytest.approx(float(kl_tokens.mean()), rel=1e-9)
    assert stats["kl_per_token_nats"] > 0 and stats["posterior_images"] == 20
    assert sum(stats["kl_per_dim_nats"]) == pytest.approx(stats["kl_per_token_nats"], rel=1e-9)
    ref_std = q.stddev.reshape(-1, cfg.latent_dim).mean(0)
    assert torch.allclose(torch.tensor(stats["posterior_std"], dtype=torch.float64), ref_std, rtol=1e-9)
    assert torch.allclose(torch.tensor(stats["posterior_std_scaled"], dtype=torch.float64),
                          ref_std / tok.scale.double(), rtol=1e-6)
    frac = (q.variance / tok.scale.double() ** 2).sum() / ((q.variance + mean.double() ** 2)
                                                            / tok.scale.double() ** 2).sum()
    assert stats["posterior_var_fraction"] == pytest.approx(float(frac), rel=1e-9)
    # the same numbers from the cache; none without held-out images, none for a deterministic tokenizer
    _, cached = get_tokenizer(cfg, data_key="synthetic-16", images_uint8=images, channels=CH, image_size=SIZE,
                              cache_dir=tmp_path, heldout_uint8=heldout)
    assert cached["from_cache"] and cached["kl_per_token_nats"] == stats["kl_per_token_nats"]
    _, bare = get_tokenizer(cfg, data_key="synthetic-16", images_uint8=images, channels=CH, image_size=SIZE,
                            cache_dir=tmp_path)
    assert "kl_per_token_nats" not in bare
    ae = create_tokenizer(_cfg("patch_ae"), channels=CH, image_size=SIZE)
    assert posterior_stats(ae, heldout, device="cpu") == {}


# -- the training sources ------------------------------------------------------------------------------------------
BASE = {"data.name": "digits", "data.image_size": 8, "tokenizer.patch_size": 4, "tokenizer.latent_dim": 4,
        "tokenizer.pca_num_patches": 500, "tokenizer.fit_epochs": 1, "data.train_size": 256, "data.test_size": 64,
        "train.epochs": 1, "train.batch_size": 64, "probe.epochs": 2}
N_IMAGES = 96


def _source_setup(tmp_path: Path, name: str) -> tuple[Recipe, InMemoryData, Tokenizer]:
    """Distinct synthetic 8 px images labelled 0..n-1, so a micro-batch's labels name its images."""
    r = recipe_from_flat({**BASE, "tokenizer.name": name})
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (N_IMAGES, 1, 8, 8), generator=g, dtype=torch.uint8)
    data = InMemoryData("synthetic", "train", images, torch.arange(N_IMAGES), N_IMAGES)
    tok, _ = get_tokenizer(r.tokenizer, data_key="synthetic-8", images_uint8=images, channels=1, image_size=8,
                           cache_dir=tmp_path / "tok", seed=0)
    return r, data, tok


def _per_image(source: Any, epoch: int, gd: torch.Generator) -> dict[int, torch.Tensor]:
    """{image index: the latent the source gave it} over one epoch."""
    out: dict[int, torch.Tensor] = {}
    for micros in source(epoch, gd):
        for z0, _, y in micros:
            for zi, yi in zip(z0, y.tolist(), strict=True):
                out[int(yi)] = zi
    return out


def _sources(r: Recipe, data: InMemoryData, tok: Tokenizer) -> list[Any]:
    layout: dict[str, Any] = dict(per_proc=16, rank=0, accum=2, world=1, steps=N_IMAGES // 32,
                                  device=torch.device("cpu"), want_patches=False)
    return [_encoded_source(data, tok, r, **layout), _batch_source(data, tok, r, **layout)]


@pytest.mark.parametrize("kind", [0, 1], ids=["encoded_source", "batch_source"])
def test_vae_source_samples_afresh_and_replays_exactly(tmp_path: Path, kind: int) -> None:
    r, data, tok = _source_setup(tmp_path, "patch_vae")
    source = _sources(r, data, tok)[kind]
    with torch.no_grad():
        mean, std = tok.posterior(to_unit_range(data.tensors()[0]))  # [n, N, d]
    assert std is not None
    e0 = _per_image(source, 0, torch.Generator().manual_seed(11))
    e1 = _per_image(source, 1, torch.Generator().manual_seed(12))
    replay = _per_image(source, 1, torch.Generator().manual_seed(12))
    both = sorted(set(e0) & set(e1))
    assert len(both) > N_IMAGES // 2  # most images are seen in both epochs
    assert all(not torch.allclose(e0[i], e1[i]) for i in both)  # a fresh sample each time an image is seen
    assert set(replay) == set(e1) and all(torch.equal(replay[i], e1[i]) for i in e1)  # a resumed epoch replays
    # and the draws come from each image's posterior: normalized residuals are standard normal (mean and std
    # within Z_BOUND standard errors over the ~ 1000 residuals)
    res = torch.cat([((e1[i] - mean[i]) / std[i]).flatten() for i in e1]).double()
    n = res.numel()
    assert abs(float(res.mean())) * n ** 0.5 < Z_BOUND and abs(float(res.std()) - 1) * (2 * n) ** 0.5 < Z_BOUND


@pytest.mark.parametrize("kind", [0, 1], ids=["encoded_source", "batch_source"])
def test_deterministic_source_is_unchanged_and_draws_nothing(tmp_path: Path, kind: int) -> None:
    r, data, tok = _source_setup(tmp_path, "patch_pca")
    source = _sources(r, data, tok)[kind]
    with torch.no_grad():
        ref = tok.encode(to_unit_range(data.tensors()[0]))
    gd = torch.Generator().manual_seed(5)
    state = gd.get_state()
    got = _per_image(source, 0, gd)
    assert all(torch.equal(z, ref[i]) for i, z in got.items())
    assert torch.equal(gd.get_state(), state)  # the step's t and noise draws are what they were


def test_vae_training_epoch_replays_exactly(tmp_path: Path) -> None:
    """Two trainers built alike run the same epoch to the same weights (a resumed epoch replays its samples)."""
    r, data, tok = _source_setup(tmp_path, "patch_vae")
    params = []
    for _ in range(2):
        tr = setup_training(r, tokenizer=tok, data=data, accelerator=Accelerator(cpu=True))
        train_one_epoch(tr, epoch=3, step=0, events=lambda **_: None)
        params.append([p.detach().clone() for p in tr.raw_model.parameters()])
    assert all(torch.equal(a, b) for a, b in zip(*params, strict=True))


def test_probe_features_read_the_posterior_mean(tmp_path: Path) -> None:
    """Deterministic across calls (whatever the global RNG), and blind to the posterior std: a copy of the VAE whose
    log-variances are raised by 8 (std x 55) gives the same features, so they are the mean's."""
    r, data, tok = _source_setup(tmp_path, "patch_vae")
    assert isinstance(tok, PatchVAE)
    noisy = copy.deepcopy(tok)
    with torch.no_grad():
        noisy.encoder.bias[tok.latent_dim:] += 8.0
    model = build_model(r, tok, 10).eval()
    x = to_unit_range(data.tensors()[0][:8])
    y = torch.zeros(8, dtype=torch.long)
    feats = []
    with torch.no_grad():
        for seed, t in ((1, tok), (2, tok), (3, noisy)):
            torch.manual_seed(seed)
            feats.append(encoder_feature_fn(r, model, t, depth=1)(x, y))
    assert torch.equal(feats[0], feats[1]) and torch.equal(feats[0], feats[2])


def test_vae_cell_records_its_posterior(tmp_path: Path) -> None:
    r = recipe_from_flat({**BASE, "tokenizer.name": "patch_vae"})
    run_dir = tmp_path / "runs" / r.key()
    atomic_write_json(run_dir / "recipe.json", {"key": r.key(), "label": "vae", "recipe": r.to_dict()})
    tok_stats = run_cell(run_dir)["tokenizer"]
    assert len(tok_stats["posterior_std"]) == 4 and all(s > 0 for s in tok_stats["posterior_std"])
    assert tok_stats["kl_per_token_nats"] > 0
    assert tok_stats["posterior_images"] == len(load_dataset(r.data, "test"))  # the test split, held out
