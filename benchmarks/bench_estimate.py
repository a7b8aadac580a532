"""The dry run's cost model against real cells: the CPU rate, and estimate / actual for recipes of different sizes.

    .venv/bin/python benchmarks/bench_estimate.py [--threads 1] [--keep DIR]

One `sweepdae run` of four one-cell grids on real Fashion-MNIST (32 px, 8x8 patches: 16 tokens), fork launcher,
one fresh journal store:
- `rate`: a micro DiT (128 wide, 6 blocks) trained for a fixed 60 steps of 128 images. Its training FLOPs
  (`sweepdae.runner.estimate`) over the `train_seconds` it recorded are the rate; its wall time (claim to result
  stored) minus all its FLOPs at that rate is the fixed cost per cell. Both exactly as `calibrate` reads a store.
- `tiny_ldae` (tiny DiT, 192 wide, 12 blocks, the l-DAE objective, random-init baselines), `small` (ViT-S width,
  384 wide, 12 blocks) and `conv_vae_fid` (micro DiT, a conv VAE fitted for one epoch, class-conditional, FID of
  64 samples x 20 steps): predicted from the `rate` cell alone (rate + fixed cost), compared with their wall time.
Cells run with OMP_NUM_THREADS=1 by default: on a machine whose cores other jobs share, torch's OpenMP with 2
threads collapses when another process holds a core (micro DiT training step, measured side by side: 45 img/s with
2 threads vs 691 img/s with 1), which would measure the contention, not the model.
Also: the committed CPU defaults (`CPU_FLOPS_PER_S`, `CPU_FIXED_S`) against the whole run, and the rate that
`calibrate` reads from all four cells.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BASE = """
[grid]
name = "{name}"
[base]
data.name = "fashion-mnist"
data.image_size = 32
data.test_size = 1000
tokenizer.patch_size = 8
train.batch_size = 128
train.warmup_epochs = 0.5
train.epochs = 1
probe.epochs = 10
{extra}
"""

PCA = 'tokenizer.name = "patch_pca"\ntokenizer.latent_dim = 4\ntokenizer.pca_num_patches = 20000'
GRIDS = {
    "rate": 'model.size = "micro"\ndata.train_size = 7680\n' + PCA,  # 60 steps of 128
    "tiny_ldae": ('model.size = "tiny"\ndata.train_size = 3840\nnoise.schedule = "sigma_linear"\n'
                  'objective.target = "image"\nobjective.input_space = "image"\nobjective.output_space = "image"\n'
                  "probe.baselines = true\n" + PCA),
    "small": 'model.size = "small"\ndata.train_size = 1280\n' + PCA,
    "conv_vae_fid": ('model.size = "micro"\ndata.train_size = 3840\ntokenizer.name = "conv_vae"\n'
                     "tokenizer.conv_downsample = 8\ntokenizer.conv_group = 1\ntokenizer.latent_dim = 2\n"
                     "tokenizer.conv_channels = 16\ntokenizer.fit_epochs = 1\nmodel.class_cond = true\n"
                     "fid.enabled = true\nfid.num_samples = 64\nfid.steps = 20"),
}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=1, help="OMP_NUM_THREADS of the cells (default 1)")
    ap.add_argument("--keep", type=Path, help="run in this folder and keep it (default: a temporary one)")
    args = ap.parse_args()
    from sweepdae.grid import expand, load_grid
    from sweepdae.runner.estimate import (
        CPU_FIXED_S,
        CPU_FLOPS_PER_S,
        calibrate,
        evaluation_flops,
        tokenizer_fit_flops,
        training_flops,
    )
    from sweepdae.store import open_store

    tmp = args.keep or Path(tempfile.mkdtemp(prefix="bench-estimate-"))
    tmp.mkdir(parents=True, exist_ok=True)
    try:
        for name, extra in GRIDS.items():
            (tmp / f"{name}.toml").write_text(BASE.format(name=name, extra=extra))
        recipes = {name: expand(load_grid(tmp / f"{name}.toml")).cells[0].recipe for name in GRIDS}
        flops = {n: training_flops(r) + tokenizer_fit_flops(r) + evaluation_flops(r) for n, r in recipes.items()}
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-m", "sweepdae", "run", *(f"{n}.toml" for n in GRIDS), "--store",
                        "journal:s.journal", "--plain", "--gpus", "cpu", "--runs-dir", "runs"], cwd=tmp, check=True,
                       capture_output=True, env={**os.environ, "OMP_NUM_THREADS": str(args.threads)})
        total_s = time.perf_counter() - t0
        with open_store(f"journal:{tmp / 's.journal'}", create=False) as s:
            rows = {str(r["grid"]): r for r in s.cells().to_dict("records")}
        rate = calibrate([rows["rate"]], "cpu")
        assert rate is not None, "the rate cell recorded no train_seconds"
        print(f"rate cell (micro DiT, 60 steps x 128 images): {rate.flops_per_s / 1e9:.1f} GFLOP/s, "
              f"fixed cost {rate.fixed_s:.2f} s per cell (train {rows['rate']['metric.train_seconds']:.2f} s, "
              f"wall {rows['rate']['info']['timings']['wall_s']:.2f} s, {flops['rate'] / 1e12:.3f} TFLOP in all)")
        print()
        print("| recipe | TFLOP (train + fit + eval) | estimate s | actual s | estimate / actual |")
        print("|---|---|---|---|---|")
        for name in GRIDS:
            if name == "rate":
                continue
            est = flops[name] / rate.flops_per_s + rate.fixed_s
            actual = float(rows[name]["info"]["timings"]["wall_s"])
            print(f"| {name} | {flops[name] / 1e12:.3f} | {est:.1f} | {actual:.1f} | {est / actual:.2f} |")
        print()
        default = sum(flops.values()) / CPU_FLOPS_PER_S + len(flops) * CPU_FIXED_S
        print(f"committed CPU defaults ({CPU_FLOPS_PER_S / 1e9:.0f} GFLOP/s + {CPU_FIXED_S:.1f} s per cell) on the "
              f"whole run: estimate {default:.1f} s, actual {total_s:.1f} s (`sweepdae run` wall, 4 cells), "
              f"ratio {default / total_s:.2f}")
        everything = calibrate(list(rows.values()), "cpu")
        assert everything is not None
        print(f"calibrate() over all 4 cells: {everything.flops_per_s / 1e9:.1f} GFLOP/s, "
              f"{everything.fixed_s:.2f} s per cell ({everything.source})")
    finally:
        if args.keep is None:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
