"""Fit each tokenizer once and keep it on disk: `cache_dir / f"{key}.pt"`, shared by concurrent cells.

Contract:
- the key hashes what decides the fitted tokenizer: the data (`data_key`, channels, image size), the knobs
  that matter for this tokenizer (knobs of other tokenizers are left out), the seed and TOKENIZER_VERSION;
- a file is written to a temporary name in the same folder, fsync-ed and `os.replace`-d, so readers see the
  old state or the whole new file, never a part;
- fitting happens under an exclusive `fcntl.flock` on `{key}.lock`: of several processes asking at once, one
  fits, the others wait and load its file (lock files are left in place: deleting them would race);
- an unreadable, truncated or mismatching file is reported with a TokenizerCacheWarning and fitted again;
- patch PCA keys its basis without `latent_dim` and `latent_scale` (`pca_basis_key`), so
  PCA tokenizers with different d share one eigendecomposition and only slice their d columns.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from sweepdae.errors import SweepdaeError
from sweepdae.recipe import TOKENIZER_KNOBS, TokenizerConfig, TokenizerName
from sweepdae.tokenizers._base import TOKENIZER_VERSION, Progress, Tokenizer, check_train_images, posterior_stats
from sweepdae.tokenizers._patch import PCABasis, fit_pca_basis
from sweepdae.tokenizers._registry import _name, create_tokenizer, fit_with_basis
from sweepdae.utils import atomic_write, file_lock, plain

_FORMAT = "sweepdae-tokenizer"
_BASIS_FORMAT = "sweepdae-pca-basis"

# The knobs of TokenizerConfig that change each tokenizer (the rest belong to other tokenizers).
RELEVANT_KNOBS = TOKENIZER_KNOBS
_PCA_BASIS_KNOBS = ("patch_size", "pca_num_patches", "pca_center")
WAIT_POLL_S = 1.0  # get_tokenizer(wait=True): seconds between looks at the cache (a fit takes seconds to hours)


class TokenizerCacheWarning(UserWarning):
    """A cached tokenizer file could not be used (unreadable, truncated or stale) and is fitted again."""


def _knobs(cfg: TokenizerConfig, name: str) -> dict[str, Any]:
    knobs = {k: plain(getattr(cfg, k)) for k in RELEVANT_KNOBS[name]}
    if name == "conv_vae" and cfg.perceptual_weight == 0:
        knobs.pop("perceptual_net")  # unused without a perceptual term
    return knobs


def _hash(header: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(header, sort_keys=True, separators=(",", ":")).encode()).hexdigest()[:20]


def _header(cfg: TokenizerConfig, *, data_key: str, channels: int, image_size: int, seed: int) -> dict[str, Any]:
    name = _name(cfg)
    return {"format": _FORMAT, "version": TOKENIZER_VERSION, "tokenizer": name, "knobs": _knobs(cfg, name),
            "data_key": data_key, "channels": channels, "image_size": image_size, "seed": seed}


def _basis_header(cfg: TokenizerConfig, *, data_key: str, channels: int, image_size: int, seed: int
                  ) -> dict[str, Any]:
    return {"format": _BASIS_FORMAT, "version": TOKENIZER_VERSION,
            "knobs": {k: getattr(cfg, k) for k in _PCA_BASIS_KNOBS},
            "data_key": data_key, "channels": channels, "image_size": image_size, "seed": seed}


def tokenizer_key(cfg: TokenizerConfig, *, data_key: str, channels: int, image_size: int, seed: int) -> str:
    """File stem of the fitted tokenizer: "{name}-{hash of data, relevant knobs, seed, code version}"."""
    header = _header(cfg, data_key=data_key, channels=channels, image_size=image_size, seed=seed)
    return f"{header['tokenizer']}-{_hash(header)}"


def pca_basis_key(cfg: TokenizerConfig, *, data_key: str, channels: int, image_size: int, seed: int) -> str:
    """File stem of a patch-PCA eigen-basis: like `tokenizer_key` but blind to d, whitening and latent scale."""
    header = _basis_header(cfg, data_key=data_key, channels=channels, image_size=image_size, seed=seed)
    return f"pca_basis-{_hash(header)}"


def save_atomic(payload: dict[str, Any], path: Path) -> None:
    """torch.save through the project's atomic writer (readers never see a partial file)."""
    atomic_write(path, lambda f: torch.save(payload, f))


def _load_checked(path: Path, header: dict[str, Any], use: Callable[[dict[str, Any]], Any], *,
                  quiet: bool = False) -> Any | None:
    """`use(payload)` for a readable file whose header matches; None if absent; None (and a warning unless
    `quiet`: the unlocked first look stays quiet, the locked second look reports) if unusable."""
    if not path.exists():
        return None
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
        if not isinstance(payload, dict) or payload.get("header") != header:
            raise ValueError("its header does not match the requested tokenizer")
        return use(payload)
    except Exception as err:  # torch.load raises many types on a truncated file; any of them means "refit"
        if not quiet:
            warnings.warn(f"tokenizer cache {path} is unusable ({type(err).__name__}: {err}); fitting it again",
                          TokenizerCacheWarning, stacklevel=3)
        return None


def _get_pca_basis(cfg: TokenizerConfig, *, data_key: str, images_uint8: Tensor, channels: int, image_size: int,
                   cache_dir: Path, seed: int, progress: Progress | None) -> tuple[PCABasis, bool]:
    """The cached eigen-basis for these patches (fitting and caching it under a lock if needed)."""
    header = _basis_header(cfg, data_key=data_key, channels=channels, image_size=image_size, seed=seed)
    key = pca_basis_key(cfg, data_key=data_key, channels=channels, image_size=image_size, seed=seed)
    path = cache_dir / f"{key}.pt"

    def use(payload: dict[str, Any]) -> PCABasis:
        basis = PCABasis(basis=payload["basis"], eigvals=payload["eigvals"], mean=payload["mean"],
                         num_patches=int(payload["num_patches"]), seconds=float(payload["seconds"]))
        dim = channels * cfg.patch_size ** 2
        if basis.basis.shape != (dim, dim) or basis.eigvals.shape != (dim,) or basis.mean.shape != (dim,):
            raise ValueError(f"basis shapes do not match the patch dimension {dim}")
        return basis

    with file_lock(cache_dir / f"{key}.lock"):
        cached = _load_checked(path, header, use)
        if cached is not None:
            return cached, True
        fit = fit_pca_basis(images_uint8, patch_size=cfg.patch_size, num_patches=cfg.pca_num_patches,
                            center=cfg.pca_center, seed=seed, progress=progress)
        save_atomic({"header": header, "basis": fit.basis, "eigvals": fit.eigvals, "mean": fit.mean,
                     "num_patches": fit.num_patches, "seconds": fit.seconds}, path)
        return fit, False


class TokenizerFitError(SweepdaeError):
    """The tokenizer fit another process of the cell was making failed."""


def _raise_if_failed(failed: Path, *, since: float) -> None:
    """A waiting process's end when the fit it waits on failed (a marker written after it began waiting)."""
    try:
        if failed.stat().st_mtime >= since - 1.0:
            raise TokenizerFitError(f"tokenizer fit failed in the process that fits it: "
                                    f"{failed.read_text()[:500]}")
    except FileNotFoundError:
        pass


def get_tokenizer(cfg: TokenizerConfig, *, data_key: str, images_uint8: Tensor | Callable[[], Tensor],
                  channels: int, image_size: int, cache_dir: Path, seed: int = 0, device: torch.device | str = "cpu",
                  progress: Progress | None = None, heldout_uint8: Tensor | None = None, wait: bool = False
                  ) -> tuple[Tokenizer, dict[str, Any]]:
    """The fitted tokenizer for `cfg` on this data: loaded from `cache_dir` or fitted once and cached.

    `images_uint8` is the train split [N, C, H, W], or a callable returning it (called only to fit, so a cache
    hit reads no image); `data_key` must identify it (dataset, subset, size, channels). `wait`: never fit, poll
    the cache until another process (a cell's main process) has written it; no collective, so a fit of any
    length keeps no barrier waiting. Returns (tokenizer on `device`, eval mode, parameters frozen; its fit stats plus
    "from_cache", "key" and "cache_path"). With `heldout_uint8` (images the tokenizer was not fitted on, e.g.
    test-split images), a VAE's stats also carry its posterior measured there (`posterior_stats`: posterior_std,
    kl_per_token_nats, ...), computed on every call (deterministic) and not stored in the cache file.
    """
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    header = _header(cfg, data_key=data_key, channels=channels, image_size=image_size, seed=seed)
    key = tokenizer_key(cfg, data_key=data_key, channels=channels, image_size=image_size, seed=seed)
    path = cache_dir / f"{key}.pt"
    tok = create_tokenizer(cfg, channels=channels, image_size=image_size)

    def use(payload: dict[str, Any]) -> dict[str, Any]:
        tok.load_state_dict(payload["state_dict"], strict=True)
        stats = payload["stats"]
        if not isinstance(stats, dict):
            raise ValueError("fit stats missing")
        return stats

    def finish(stats: dict[str, Any], from_cache: bool) -> tuple[Tokenizer, dict[str, Any]]:
        tok.fitted = True
        tok.to(device).eval().requires_grad_(False)
        posterior = posterior_stats(tok, heldout_uint8, device=device) if heldout_uint8 is not None else {}
        return tok, {**stats, **posterior, "from_cache": from_cache, "key": key, "cache_path": str(path)}

    failed = cache_dir / f"{key}.failed"  # the fitter's error, for the processes that wait on its fit
    started = time.time()
    stats = _load_checked(path, header, use, quiet=True)  # fast path: atomic writes make an unlocked read safe
    while stats is None and wait:
        _raise_if_failed(failed, since=started)
        time.sleep(WAIT_POLL_S)
        stats = _load_checked(path, header, use, quiet=True)
    if stats is not None:
        return finish(stats, True)
    with file_lock(cache_dir / f"{key}.lock"):
        stats = _load_checked(path, header, use)  # another process may have fitted it while we waited
        if stats is not None:
            return finish(stats, True)
        failed.unlink(missing_ok=True)
        try:
            images = images_uint8() if callable(images_uint8) else images_uint8
            check_train_images(images, channels=channels, image_size=image_size)
            basis, basis_cached = None, None
            if _name(cfg) == TokenizerName.patch_pca.value:
                basis, basis_cached = _get_pca_basis(cfg, data_key=data_key, images_uint8=images,
                                                     channels=channels, image_size=image_size, cache_dir=cache_dir,
                                                     seed=seed, progress=progress)
            stats = fit_with_basis(tok, images, cfg=cfg, seed=seed, device=device, progress=progress,
                                   pca_basis=basis)
        except BaseException as e:  # the waiting processes stop with it instead of polling forever
            why = f"{type(e).__name__}: {e}"[:2000].encode()
            atomic_write(failed, lambda f: f.write(why))
            raise
        if basis_cached is not None:
            stats["pca_basis_from_cache"] = basis_cached
        state = {k: v.detach().cpu() for k, v in tok.state_dict().items()}
        save_atomic({"header": header, "config": {f.name: plain(getattr(cfg, f.name))
                                                  for f in dataclasses.fields(cfg)},
                     "state_dict": state, "stats": stats}, path)
    return finish(stats, False)
