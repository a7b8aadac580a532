"""Targets and losses against a tiny fake PCA tokenizer (torch.linalg.svd on random patches)."""

from __future__ import annotations

import itertools

import pytest
import torch
from torch import nn

from sweepdae.errors import RecipeError
from sweepdae.models import create_model
from sweepdae.noise import Schedule, create_schedule
from sweepdae.objectives import (
    compute_loss,
    eps_from_x0,
    latent_to_patches,
    make_model_input,
    model_io_dims,
    patches_to_latent,
    predict_x0_latent,
)
from sweepdae.recipe import LossWeight, ObjectiveConfig, ScheduleName, Space, Target

C, P, H = 3, 2, 8  # channels, patch, image side -> N = 16 tokens of D = 12
NT, DP = (H // P) ** 2, C * P * P
B = 3


class FakePCATokenizer(nn.Module):
    """Patch-wise PCA fitted by SVD on random correlated patches (stands in for sweepdae.tokenizers.patch_pca)."""

    def __init__(self, latent_dim: int, seed: int = 0) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        mix = torch.randn(DP, DP, generator=g) * torch.linspace(1.0, 0.05, DP)  # unequal variances
        patches = torch.randn(4096, DP, generator=g) @ mix.T + 0.3
        mean = patches.mean(0)
        _, s, vh = torch.linalg.svd(patches - mean, full_matrices=False)  # Vh: [D, D] as M > D
        self.latent_dim, self.patch_dim = latent_dim, DP
        self.register_buffer("basis", vh.T.contiguous())  # [D, D], columns by descending variance
        self.register_buffer("mean", mean)
        self.register_buffer("scale", s[:latent_dim] / (patches.shape[0] - 1) ** 0.5)  # unit variance per dim
        self.basis: torch.Tensor
        self.mean: torch.Tensor
        self.scale: torch.Tensor

    def patchify(self, x: torch.Tensor) -> torch.Tensor:
        b = x.shape[0]
        x = x.reshape(b, C, H // P, P, H // P, P).permute(0, 2, 4, 1, 3, 5)
        return x.reshape(b, NT, DP)

    def unpatchify(self, p: torch.Tensor) -> torch.Tensor:
        b = p.shape[0]
        p = p.reshape(b, H // P, H // P, C, P, P).permute(0, 3, 1, 4, 2, 5)
        return p.reshape(b, C, H, H)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return ((self.patchify(x) - self.mean) @ self.basis[:, : self.latent_dim]) / self.scale

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.unpatchify((z * self.scale) @ self.basis[:, : self.latent_dim].T + self.mean)


class LatentOnlyTokenizer(nn.Module):
    """A tokenizer with no PCA attributes (e.g. the conv VAE)."""

    latent_dim = 4

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return z


class Stub(nn.Module):
    """Returns a fixed output and records what it was called with."""

    def __init__(self, out: torch.Tensor) -> None:
        super().__init__()
        self.out = out
        self.calls: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]] = []

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        self.calls.append((x, t, y))
        return self.out


def _data(tok: FakePCATokenizer, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    images = torch.rand(B, C, H, H, generator=g) * 2 - 1
    z0 = tok.encode(images)
    noise = torch.randn(z0.shape, generator=g)
    t = torch.tensor([0, 400, 999])
    return images, z0, noise, t


ALL_OBJECTIVES = [
    ObjectiveConfig(target=tgt, input_space=i, output_space=o)
    for tgt, i, o in itertools.product(Target, Space, Space)
    if not (tgt == Target.image and o == Space.latent)
]


def test_model_io_dims() -> None:
    tok = FakePCATokenizer(5)
    for obj in ALL_OBJECTIVES:
        d_in, d_out = model_io_dims(tokenizer=tok, objective=obj)
        assert d_in == (5 if obj.input_space == Space.latent else DP)
        assert d_out == (5 if obj.output_space == Space.latent else DP)
    assert model_io_dims(tokenizer=LatentOnlyTokenizer(), objective=ObjectiveConfig()) == (4, 4)
    with pytest.raises(RecipeError, match="patch_pca"):
        model_io_dims(tokenizer=LatentOnlyTokenizer(), objective=ObjectiveConfig(input_space=Space.image))
    with pytest.raises(RecipeError, match="output_space = 'image'"):
        model_io_dims(tokenizer=tok, objective=ObjectiveConfig(target=Target.image))


def test_image_input_is_the_tokenizer_decode() -> None:
    tok = FakePCATokenizer(5)
    z = torch.randn(B, NT, 5)
    obj = ObjectiveConfig(input_space=Space.image)
    assert torch.allclose(make_model_input(z, tokenizer=tok, objective=obj), tok.patchify(tok.decode(z)), atol=1e-5)
    assert make_model_input(z, tokenizer=tok, objective=ObjectiveConfig()) is z
    assert torch.allclose(patches_to_latent(latent_to_patches(z, tok), tok), z, atol=1e-4)


def test_weighted_residual_loss_matches_double_loop() -> None:
    d, rw = 3, 0.1
    tok = FakePCATokenizer(d)
    sched = create_schedule("linear_gamma2", 1000)
    images, z0, noise, t = _data(tok)
    x = tok.patchify(images)
    x_hat = torch.randn(B, NT, DP, generator=torch.Generator().manual_seed(5))
    obj = ObjectiveConfig(target=Target.image, input_space=Space.image, output_space=Space.image, residual_weight=rw)
    out = compute_loss(model=Stub(x_hat), tokenizer=tok, schedule=sched, objective=obj, z0=z0, x_patches=x, t=t,
                       noise=noise)
    assert out["loss"].shape == (B,) and out["mse"].shape == (B,)
    V = tok.basis.double().tolist()
    for b in range(B):
        total, sq = 0.0, 0.0
        for n in range(NT):
            diff = [float(x_hat[b, n, j]) - float(x[b, n, j]) for j in range(DP)]
            sq += sum(v * v for v in diff)
            for i in range(DP):
                r_i = sum(diff[j] * V[j][i] for j in range(DP))
                total += (1.0 if i < d else rw) * r_i * r_i / DP
        lam = float(sched.gamma[int(t[b])]) ** 2  # auto weight for a clean target with input scaling
        assert out["loss"][b].item() == pytest.approx(lam * total / NT, rel=1e-5)
        assert out["mse"][b].item() == pytest.approx(sq / (NT * DP), rel=1e-5)


@pytest.mark.parametrize("target", [Target.eps, Target.z0])
def test_image_output_with_full_rank_pca_reproduces_latent_loss(target: Target) -> None:
    tok = FakePCATokenizer(DP)  # d = D: the PCA map is a bijection
    sched = create_schedule("ddpm_linear", 1000)
    _, z0, noise, t = _data(tok)
    out_img = torch.randn(B, NT, DP, generator=torch.Generator().manual_seed(2))
    out_lat = patches_to_latent(out_img, tok)
    kw = dict(tokenizer=tok, schedule=sched, z0=z0, t=t, noise=noise)
    lat = compute_loss(model=Stub(out_lat), objective=ObjectiveConfig(target=target), **kw)  # type: ignore[arg-type]
    img = compute_loss(model=Stub(out_img), objective=ObjectiveConfig(target=target, output_space=Space.image),
                       **kw)  # type: ignore[arg-type]
    assert torch.allclose(lat["loss"], img["loss"], rtol=1e-4)
    assert torch.allclose(lat["mse"], img["mse"], rtol=1e-4)


def test_latent_losses_and_weights() -> None:
    tok = FakePCATokenizer(4)
    _, z0, noise, t = _data(tok)
    pred = torch.randn(z0.shape, generator=torch.Generator().manual_seed(3))
    for name in ScheduleName:
        sched = create_schedule(name, 1000)
        for target, truth in ((Target.eps, noise), (Target.z0, z0)):
            obj = ObjectiveConfig(target=target)
            stub = Stub(pred)
            out = compute_loss(model=stub, tokenizer=tok, schedule=sched, objective=obj, z0=z0, t=t, noise=noise)
            mse = (pred - truth).pow(2).mean(dim=(1, 2))
            lam = sched.loss_weight(t, LossWeight.auto, target)
            assert torch.allclose(out["mse"], mse, rtol=1e-6)
            assert torch.allclose(out["loss"], lam * mse, rtol=1e-6)
            x_in, t_in, y_in = stub.calls[0]
            assert torch.equal(x_in, sched.add_noise(z0, t, noise)) and t_in is t and y_in is None
            exact = compute_loss(model=Stub(truth), tokenizer=tok, schedule=sched, objective=obj, z0=z0, t=t,
                                 noise=noise)
            assert float(exact["loss"].abs().max()) == 0.0
    uniform = ObjectiveConfig(target=Target.z0, loss_weight=LossWeight.uniform)
    sched = create_schedule("ddpm_linear")
    out = compute_loss(model=Stub(pred), tokenizer=tok, schedule=sched, objective=uniform, z0=z0, t=t, noise=noise)
    assert torch.equal(out["loss"], out["mse"])


def test_loss_scale_does_not_depend_on_token_count() -> None:
    tok = FakePCATokenizer(4)
    sched = create_schedule("ddpm_linear")
    _, z0, noise, t = _data(tok)

    def half(x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        return 0.5 * x

    obj = ObjectiveConfig()
    a = compute_loss(model=half, tokenizer=tok, schedule=sched, objective=obj, z0=z0, t=t, noise=noise)
    b = compute_loss(model=half, tokenizer=tok, schedule=sched, objective=obj, z0=z0.repeat(1, 4, 1), t=t,
                     noise=noise.repeat(1, 4, 1))
    assert torch.allclose(a["loss"], b["loss"], rtol=1e-6)


def test_image_target_needs_patches() -> None:
    tok = FakePCATokenizer(4)
    _, z0, noise, t = _data(tok)
    obj = ObjectiveConfig(target=Target.image, output_space=Space.image)
    with pytest.raises(ValueError, match="x_patches"):
        compute_loss(model=Stub(torch.zeros(B, NT, DP)), tokenizer=tok, schedule=create_schedule("ddpm_linear"),
                     objective=obj, z0=z0, t=t, noise=noise)


def _true_output(obj: ObjectiveConfig, tok: FakePCATokenizer, images: torch.Tensor, z0: torch.Tensor,
                 noise: torch.Tensor) -> torch.Tensor:
    if obj.target == Target.image:
        return tok.patchify(images)
    truth = noise if obj.target == Target.eps else z0
    return truth if obj.output_space == Space.latent else latent_to_patches(truth, tok)


@pytest.mark.parametrize("obj", ALL_OBJECTIVES, ids=lambda o: f"{o.target.value}-{o.input_space.value}-"
                         f"{o.output_space.value}")
@pytest.mark.parametrize("name", [m.value for m in ScheduleName])
def test_predict_x0_inverts_add_noise(obj: ObjectiveConfig, name: str) -> None:
    tok = FakePCATokenizer(5)
    sched = create_schedule(name, 1000)
    images, z0, noise, _ = _data(tok)
    t = torch.tensor([0, 300, 700])  # gamma stays away from 0, so the eps inversion is well conditioned
    x_t = sched.add_noise(z0, t, noise)
    out = _true_output(obj, tok, images, z0, noise)
    x0 = predict_x0_latent(out, x_t, t, tokenizer=tok, schedule=sched, objective=obj)
    assert x0.shape == z0.shape
    assert torch.allclose(x0, z0, atol=2e-4)
    assert torch.allclose(eps_from_x0(x0, x_t, t, schedule=sched), noise, atol=5e-3)


def test_end_to_end_with_the_denoiser() -> None:
    tok = FakePCATokenizer(4)
    sched: Schedule = create_schedule("sigma_linear")
    images, z0, noise, t = _data(tok)
    obj = ObjectiveConfig(target=Target.image, input_space=Space.image, output_space=Space.image)
    d_in, d_out = model_io_dims(tokenizer=tok, objective=obj)
    torch.manual_seed(0)
    model = create_model("micro", in_dim=d_in, out_dim=d_out, num_tokens=NT, num_classes=10, adaln_zero=False)
    y = torch.tensor([1, 2, 3])
    out = compute_loss(model=model, tokenizer=tok, schedule=sched, objective=obj, z0=z0,
                       x_patches=tok.patchify(images), t=t, noise=noise, y=y)
    out["loss"].mean().backward()
    assert torch.isfinite(out["loss"]).all() and out["loss"].shape == (B,)
    assert model.x_embedder.weight.grad is not None
