"""Linear probe: sweepdae's cached-feature probe vs re-running the frozen backbone every epoch vs scikit-learn.

    .venv/bin/python benchmarks/bench_probe.py [--train-n 5000 --test-n 1000 --epochs 30 --pretrain-epochs 1]

One micro DiT (patch PCA d = 16 on Fashion-MNIST 32 px; `--pretrain-epochs` of `sweepdae.cell.train.train` on the
probe's train images, 0 = random init) is probed three ways, all in this one process on the CPU:
  * cached: `sweepdae.eval.extract_features` once (train + test), then `linear_probe` (MAE head, LARS, cosine) --
    what `sweepdae.cell.probing.probe_cell` does;
  * recomputed: `linear_probe_augmented` with an identity "augmentation": the same head, optimizer, batches and
    epochs, but the backbone re-runs on every probe batch, as MAE's probe does (there with RandomResizedCrop);
    on identical features it must reach the cached probe's accuracy, so only the time differs;
  * scikit-learn: StandardScaler + LogisticRegression (lbfgs) on the same cached features.
Prints seconds, the ratio to the cached probe and the test top-1 each reaches.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sweepdae.cell.build import build_model  # noqa: E402
from sweepdae.cell.probing import encoder_feature_fn  # noqa: E402
from sweepdae.cell.train import train  # noqa: E402
from sweepdae.data import load_dataset, to_unit_range  # noqa: E402
from sweepdae.eval import extract_features, linear_probe, linear_probe_augmented  # noqa: E402
from sweepdae.recipe import probe_depth, recipe_from_flat  # noqa: E402
from sweepdae.tokenizers import get_tokenizer  # noqa: E402

CPU = torch.device("cpu")


def identity(x: torch.Tensor, _g: torch.Generator | None) -> torch.Tensor:
    return to_unit_range(x)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", default="fashion-mnist")
    ap.add_argument("--train-n", type=int, default=5000)
    ap.add_argument("--test-n", type=int, default=1000)
    ap.add_argument("--epochs", type=int, default=30, help="probe epochs (MAE: 90)")
    ap.add_argument("--pretrain-epochs", type=int, default=1, help="denoiser training before probing; 0 = random init")
    a = ap.parse_args()
    torch.set_float32_matmul_precision("high")
    r = recipe_from_flat({"data.name": a.dataset, "data.image_size": 32, "data.channels": 1,
                          "data.train_size": a.train_n, "data.test_size": a.test_n, "tokenizer.patch_size": 8,
                          "tokenizer.latent_dim": 16, "tokenizer.pca_num_patches": 20000, "model.size": "micro",
                          "train.epochs": max(a.pretrain_epochs, 1), "train.batch_size": 128,
                          "train.warmup_epochs": 0.2, "probe.epochs": a.epochs})
    train_set = load_dataset(r.data, "train")
    tr_x, tr_y = train_set.tensors()
    te_x, te_y = load_dataset(r.data, "test").tensors()
    with tempfile.TemporaryDirectory() as tmp:
        tok, _ = get_tokenizer(r.tokenizer, data_key="bench-probe", images_uint8=tr_x, channels=1, image_size=32,
                               cache_dir=Path(tmp) / "tok", seed=0)
        if a.pretrain_epochs > 0:
            from accelerate import Accelerator

            t0 = time.perf_counter()
            model = train(r, tokenizer=tok, data=train_set, train_dir=Path(tmp), accelerator=Accelerator(cpu=True),
                          events=lambda **e: None).model
            pretrain_s = time.perf_counter() - t0
        else:
            torch.manual_seed(0)
            model, pretrain_s = build_model(r, tok, 10), 0.0
    model.eval()
    tok.eval()
    fn = encoder_feature_fn(r, model, tok, depth=probe_depth(r))

    t0 = time.perf_counter()
    tr_f, tr_l = extract_features(fn, tr_x, tr_y, batch_size=512, device=CPU)
    te_f, te_l = extract_features(fn, te_x, te_y, batch_size=512, device=CPU)
    extract_s = time.perf_counter() - t0
    cached = linear_probe(tr_f, tr_l, te_f, te_l, num_classes=10, cfg=r.probe, seed=0, device=CPU)
    cached_s = extract_s + cached["probe_seconds"]

    recomputed = linear_probe_augmented(fn, tr_x, tr_y, te_x, te_y, num_classes=10, cfg=r.probe, seed=0,
                                        augment_fn=identity, feature_batch_size=512, device=CPU)

    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    t0 = time.perf_counter()
    clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000))
    clf.fit(tr_f.numpy(), tr_l.numpy())
    sk_top1 = 100.0 * float((clf.predict(te_f.numpy()) == te_l.numpy()).mean())
    sk_s = time.perf_counter() - t0 + extract_s  # the same one extraction as the cached probe

    n_iter = int(clf[-1].n_iter_.max())
    backbone = f"{a.pretrain_epochs} epoch(s) trained, {pretrain_s:.1f} s" if a.pretrain_epochs else "random init"
    print(f"{a.dataset}: {len(tr_x)} train / {len(te_x)} test images, features {tuple(tr_f.shape[1:])} after block "
          f"{probe_depth(r)} of micro DiT ({backbone}); probe: {a.epochs} epochs, batch {r.probe.batch_size}, "
          f"LARS; torch threads {torch.get_num_threads()}")
    print(f"feature extraction (train + test, once): {extract_s:.2f} s "
          f"({(len(tr_x) + len(te_x)) / extract_s:.0f} images/s)")
    print(f"{'probe':<52}{'seconds':>9}{'vs cached':>11}{'test top-1':>12}")
    rows = [
        ("sweepdae cached features (extract once + linear_probe)", cached_s, cached["probe_top1"]),
        (f"backbone re-run every epoch ({a.epochs} epochs, MAE way)", recomputed["probe_seconds"],
         recomputed["probe_top1"]),
        (f"scikit-learn LogisticRegression ({n_iter} lbfgs iters)", sk_s, sk_top1),
    ]
    for name, sec, top1 in rows:
        print(f"{name:<52}{sec:>9.2f}{sec / cached_s:>10.1f}x{top1:>11.2f}%")
    print(f"linear_probe alone (head training on cached features): {cached['probe_seconds']:.2f} s; "
          f"sklearn fit alone: {sk_s - extract_s:.2f} s")


if __name__ == "__main__":
    main()
