"""Images decoded per image used by one training epoch of a streamed set at N processes (issue 30 item 2).

    .venv/bin/python benchmarks/bench_decoded.py [--procs 2 --images 192 --batch 32 --tree PATH --json out.json]

Writes `--images` JPEGs (an image folder, 2 classes, 48 px, quality 90) to a temp folder, then trains one epoch of
a micro recipe on it (pixel tokenizer, 16 px, one DataLoader worker per process) through
`accelerate launch --multi_gpu --num_processes N` (gloo on CPU), with the sweepdae source tree `--tree` (default:
this checkout; point it at an export of an older commit, e.g. `git archive COMMIT | tar -x -C /tmp/before`, to
measure that code). Every call of `sweepdae.data._imagefolder.load_image` is counted, in every process and in
their DataLoader workers, by a wrapper installed before training (the only change to the measured code). Prints,
per rank, the images decoded, and decoded / used, where used = steps x global batch (the images the epoch trains
on). One process decoding each used image once gives 1.0.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve()
ROOT = HERE.parent.parent


def write_jpegs(root: Path, n: int, *, size: int = 48) -> None:
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, count in (("train", n), ("val", 8)):
        for i in range(count):
            d = root / split / f"class{i % 2}"
            d.mkdir(parents=True, exist_ok=True)
            arr = np.clip(rng.normal(100 + 40 * (i % 2), 50, (size, size, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(arr).save(d / f"{i:05d}.jpg", quality=90)


def worker(folder: Path, batch: int, counts: Path, out: Path) -> None:
    """One process of the launched training: count load_image calls (workers inherit the wrapper), train."""
    import torch
    from accelerate import Accelerator

    import sweepdae.data._imagefolder as imf

    rank = int(os.environ.get("RANK", "0"))
    real = imf.load_image

    def counted(*a: Any, **k: Any) -> Any:
        fd = os.open(counts / f"rank{rank}.{os.getpid()}", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            os.write(fd, b".")
        finally:
            os.close(fd)
        return real(*a, **k)

    imf.load_image = counted  # type: ignore[assignment]
    from sweepdae.cell.train import train
    from sweepdae.data import load_dataset, sample_images
    from sweepdae.recipe import recipe_from_flat
    from sweepdae.tokenizers import get_tokenizer

    acc = Accelerator(cpu=True)
    r = recipe_from_flat({"data.name": "imagefolder", "data.root": str(folder), "data.image_size": 16,
                          "data.num_workers": 1, "tokenizer.name": "pixel", "tokenizer.patch_size": 4,
                          "model.size": "micro", "train.epochs": 1, "train.batch_size": batch})
    data = load_dataset(r.data, "train")
    tok, _ = get_tokenizer(r.tokenizer, data_key=r.data_key(), images_uint8=sample_images(data, 1)[0],
                           channels=data.channels, image_size=16, cache_dir=out.parent / f"tok{rank}", seed=0)
    for f in counts.glob(f"rank{rank}.*"):  # the tokenizer's sample is not the epoch's
        f.unlink()
    acc.wait_for_everyone()
    t = time.perf_counter()
    state = train(r, tokenizer=tok, data=data, train_dir=out.parent / f"train{rank}", accelerator=acc,
                  events=lambda **_: None)
    acc.wait_for_everyone()
    if acc.is_main_process:
        out.write_text(json.dumps({"steps": state.step, "global_batch": batch, "world": acc.num_processes,
                                   "train_images": len(data), "seconds": time.perf_counter() - t}))
    torch.distributed.barrier() if acc.num_processes > 1 else None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--procs", type=int, default=2)
    ap.add_argument("--images", type=int, default=192)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--tree", type=Path, default=ROOT, help="sweepdae source tree to measure (default: this one)")
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--worker", nargs=4, metavar=("FOLDER", "BATCH", "COUNTS", "OUT"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        folder, batch, counts, out = args.worker
        worker(Path(folder), int(batch), Path(counts), Path(out))
        return
    with tempfile.TemporaryDirectory() as tmp_s:
        tmp = Path(tmp_s)
        write_jpegs(tmp / "imgs", args.images)
        counts = tmp / "counts"
        counts.mkdir()
        launch = ["--multi_gpu", "--num_processes", str(args.procs)] if args.procs > 1 else ["--cpu"]
        cmd = [sys.executable, "-m", "accelerate.commands.launch", *launch, "--num_machines", "1",
               "--main_process_port", "0" if args.procs == 1 else str(_port()), "--dynamo_backend", "no",
               "--mixed_precision", "no", str(HERE), "--worker", str(tmp / "imgs"), str(args.batch), str(counts),
               str(tmp / "out.json")]
        env = {**os.environ, "PYTHONPATH": str(args.tree.resolve()), "CUDA_VISIBLE_DEVICES": "",
               "OMP_NUM_THREADS": "1"}
        p = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=tmp)
        if p.returncode != 0:
            sys.exit(p.stderr[-4000:])
        info = json.loads((tmp / "out.json").read_text())
        per_rank = [sum(f.stat().st_size for f in counts.glob(f"rank{r}.*")) for r in range(args.procs)]
    used = info["steps"] * info["global_batch"]
    figures = {**info, "tree": str(args.tree), "used": used, "decoded_per_rank": per_rank,
               "decoded": sum(per_rank), "decoded_per_used": sum(per_rank) / used}
    print(f"tree {args.tree}: {args.procs} processes, {info['train_images']} train images, global batch "
          f"{args.batch}, {info['steps']} steps: used {used}, decoded {sum(per_rank)} (per rank {per_rank}), "
          f"decoded/used {sum(per_rank) / used:.2f}, epoch {info['seconds']:.1f} s")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=1) + "\n")


def _port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("", 0))
        return int(s.getsockname()[1])


if __name__ == "__main__":
    main()
