"""Cells of several processes (issue 30): `--procs-per-cell N` launches N CPU processes through the same
`accelerate launch --multi_gpu` as N GPUs (gloo); each image is decoded once per epoch across them; the first step
at 2 processes is the step of 1; the evaluation passes are sharded and gathered back in order; every cell records
its phases (seconds, images decoded in all and per rank, peak RSS) and its world size."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from sweepdae.data import InMemoryData, load_dataset
from sweepdae.data._base import shard_positions
from sweepdae.data._imagefolder import EpochShard, _Files
from sweepdae.recipe import recipe_from_flat
from sweepdae.runner.launch import accelerate_command
from sweepdae.runner.slots import PROCS_ENV, Slot, cell_procs

ROOT = Path(__file__).resolve().parents[1]


def write_jpegs(root: Path, per_class: dict[str, int], *, num_classes: int = 2, size: int = 12) -> None:
    """An ImageNet-layout folder of small JPEGs whose class shifts the mean brightness."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, n in per_class.items():
        for c in range(num_classes):
            d = root / split / f"class{c}"
            d.mkdir(parents=True)
            for i in range(n):
                arr = np.clip(rng.normal(100 + 40 * c, 50, (size, size, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(arr).save(d / f"{i:03d}.jpg", quality=90)


# ------------------------------------------------------------------------------------------------ fast: layout
def test_procs_per_cell_launches_cpu_processes_like_gpus() -> None:
    """N CPU processes: `--multi_gpu --num_processes N` without `--cpu` (Accelerate refuses the two together; with
    no GPU visible it runs MULTI_CPU over gloo); one CPU process keeps `--cpu`; GPUs are one process each."""
    cmd = accelerate_command(Path("r"), Slot(0, ()), 1234, procs=2)
    assert cmd[cmd.index("--num_processes") + 1] == "2" and "--multi_gpu" in cmd and "--cpu" not in cmd
    assert "--cpu" in accelerate_command(Path("r"), Slot(0, ()), 1234, procs=1)
    assert cell_procs(Slot(0, ()), {PROCS_ENV: "3"}) == 3 and cell_procs(Slot(0, ()), {}) == 1
    assert cell_procs(Slot(0, (0, 1)), {PROCS_ENV: "3"}) == 2  # a GPU cell: one process per GPU
    from sweepdae.errors import SweepdaeError

    with pytest.raises(SweepdaeError, match="whole number"):
        cell_procs(Slot(0, ()), {PROCS_ENV: "0"})


def test_epoch_shards_cover_the_one_process_pass_once() -> None:
    """Each rank's shard of an epoch (DistributedSampler's split of the seeded pass) is disjoint from the others'
    and together they are the pass one process reads, up to the last full global batch; a resumed epoch starts
    at the sample position; crop seeds go with their positions."""
    files = _Files([f"f{i}" for i in range(50)], [0] * 50, 8, "RGB")
    per_rank = 3 * 8 // 2  # 3 steps of a global batch of 8 over 2 ranks

    def items(world: int, rank: int, start: int = 0, epoch: int = 1) -> list[tuple[int, int | None]]:
        s = EpochShard(files, world=world, rank=rank, seed=7, augment=True, per_rank=per_rank * 2 // world)
        s.set_epoch(epoch, start)
        assert len(s) == per_rank * 2 // world - start
        return list(s)

    one = items(1, 0)
    ranks = [items(2, 0), items(2, 1)]
    assert len(one) == 24 and sorted(one) == sorted(ranks[0] + ranks[1])
    assert [x for pair in zip(*ranks, strict=True) for x in pair] == one  # position k: rank k mod 2
    assert items(2, 1, start=5) == ranks[1][5:]
    g = torch.Generator().manual_seed(7 + 1)  # today's one-process pass: randperm then one seed per position
    assert [i for i, _ in one] == torch.randperm(50, generator=g)[:24].tolist()
    assert items(2, 0, epoch=2) != ranks[0]


def test_sharded_batches_interleave_back_to_the_pass() -> None:
    """`batches(shard=(r, W))` gives rank r the positions r, r + W, ... (padded by wrapping, as DistributedSampler)
    so that interleaving the ranks' batch c (what `gather_rows` does after the all-gather) is the pass in order."""
    n = 11
    images = torch.arange(n, dtype=torch.uint8).view(n, 1, 1, 1).expand(n, 1, 2, 2).contiguous()
    data = InMemoryData("t", "train", images, torch.arange(n), 11)
    for world in (2, 3):
        got = [[y for _, y in data.batches(2, shuffle=False, shard=(r, world))] for r in range(world)]
        assert all(len(g) == len(got[0]) for g in got)
        merged = torch.cat([torch.stack([g[c] for g in got], 1).reshape(-1) for c in range(len(got[0]))])
        assert merged[:n].tolist() == list(range(n))
        assert shard_positions(n, (world - 1, world)) == [(world - 1 + world * k) % n
                                                         for k in range(-(-n // world))]


# ------------------------------------------------------------------------------------------- slow: processes
def _launch(knobs: dict[str, Any], out: Path, *mode: str) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--main_process_port", str(_port()), "--dynamo_backend", "no",
           "--mixed_precision", "no", str(ROOT / "tests" / "_mp_step.py"), json.dumps(knobs), str(out), *mode]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=300,
                       env={**_env(), "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1"})
    assert p.returncode == 0, p.stderr[-3000:]
    got: dict[str, Any] = torch.load(out, weights_only=False)
    return got


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT)}


def _port() -> int:
    from sweepdae.runner.slots import free_port

    return free_port()


MEMORY = {"data.name": "digits", "data.image_size": 8, "data.train_size": 64, "data.test_size": 18,
          "tokenizer.name": "pixel", "tokenizer.patch_size": 4, "model.size": "micro", "train.batch_size": 8,
          "train.warmup_epochs": 0, "probe.epochs": 2, "probe.batch_size": 8}


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["in-memory", "streamed"])
def test_first_step_of_two_processes_is_the_step_of_one(tmp_path: Path, kind: str) -> None:
    """Needs two launched processes (~20 s each kind). The same global batch, seed and draws give the same loss
    and weights after the first optimizer step at 1 and 2 processes, and the sharded, gathered evaluation passes
    (test features, mean- and 2 x 2-pooled; the augmented probe's per-epoch crops and result) equal the one-process
    ones."""
    from _mp_step import measure

    knobs = dict(MEMORY)
    if kind == "streamed":
        write_jpegs(tmp_path / "imgs", {"train": 24, "val": 9})
        knobs.update({"data.name": "imagefolder", "data.root": str(tmp_path / "imgs"), "data.train_size": 0,
                      "data.test_size": 0, "data.num_workers": 1})
    knobs["probe.augment"] = True
    two = _launch(knobs, tmp_path / "two.pt")
    one = measure(knobs, tmp_path)
    assert two["world"] == 2 and one["world"] == 1
    assert one["rows"] == 8 and two["rows"] == 4  # the global batch, and each rank's half of it
    assert two["loss"] == pytest.approx(one["loss"], rel=1e-5)
    changed = 0
    for name, p in one["params"].items():
        torch.testing.assert_close(two["params"][name], p, rtol=1e-5, atol=1e-6, msg=name)
        changed += int(not torch.equal(p, one["before"][name]))
    assert changed > 0  # the step moved the weights
    assert torch.equal(two["labels"], one["labels"]) and len(one["labels"]) == len(load_dataset(
        recipe_from_flat(knobs).data, "test"))
    torch.testing.assert_close(two["features"], one["features"], rtol=1e-5, atol=1e-5)
    assert one["quadrants"].shape == (one["features"].shape[0], 4 * one["features"].shape[1])
    torch.testing.assert_close(two["quadrants"], one["quadrants"], rtol=1e-5, atol=1e-5)
    assert two["probe"]["probe_top1"] == one["probe"]["probe_top1"]
    assert two["probe"]["probe_train_top1"] == one["probe"]["probe_train_top1"]


@pytest.mark.slow
def test_two_process_evaluation_steps_split_their_work(tmp_path: Path) -> None:
    """Needs two launched processes (~20 s). On a streamed folder: the FID reference statistics of 2 processes
    equal 1 process's (float64 rounding) with each rank decoding its half of the 15 images (in batches of 2: 8
    and 8, against 16 for one process in batches of 4); the sharded kNN is exactly the 1-process number; the
    tokenizer's fit sample is decoded by the main process alone, and not at all once the tokenizer is cached."""
    from _eval_ranks import measure

    write_jpegs(tmp_path / "imgs", {"train": 8, "val": 9})
    (tmp_path / "one").mkdir()
    (tmp_path / "two").mkdir()
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--main_process_port", str(_port()), "--dynamo_backend", "no",
           "--mixed_precision", "no", str(ROOT / "tests" / "_eval_ranks.py"), str(tmp_path / "imgs"),
           str(tmp_path / "two")]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=300,
                       env={**_env(), "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1"})
    assert p.returncode == 0, p.stderr[-3000:]
    one = measure(tmp_path / "imgs", tmp_path / "one", None)
    two = [torch.load(tmp_path / "two" / f"rank{r}.pt", weights_only=False) for r in (0, 1)]
    assert one["world"] == 1 and [t["world"] for t in two] == [2, 2]
    for t in two:
        np.testing.assert_allclose(t["mu"], one["mu"], rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(t["sigma"], one["sigma"], rtol=1e-10, atol=1e-14)
        assert t["knn"] == one["knn"]
        for name, v in one["tok_state"].items():
            assert torch.equal(t["tok_state"][name], v), name
    assert one["ref_decoded"] == 16 and [t["ref_decoded"] for t in two] == [8, 8]
    assert one["tok_decoded"] == [16, 0] and [t["tok_decoded"] for t in two] == [[16, 0], [0, 0]]


@pytest.mark.slow
def test_two_process_stop_mid_epoch_resumes_exactly(tmp_path: Path) -> None:
    """Needs a launched 2-process training (~30 s). tests/test_cell.py's exact mid-epoch resume at 2 processes on a
    streamed, augmented set: stopped on request at epoch 1 batch 2 and resumed (each rank's sampler starting at
    its sample position, the shared step generator restored) it ends bitwise where the uninterrupted 2-process
    training ends, and within float tolerance of the 1-process training."""
    from _mp_step import resume

    write_jpegs(tmp_path / "imgs", {"train": 24, "val": 4})
    knobs = {**MEMORY, "data.name": "imagefolder", "data.root": str(tmp_path / "imgs"), "data.train_size": 0,
             "data.test_size": 0, "data.num_workers": 1, "data.augment": "random_resized_crop",
             "train.ema_decay": 0.9, "train.epochs": 2}
    two = _launch(knobs, tmp_path / "two.pt", "resume")
    assert two["world"] == 2 and two["steps"] == (12, 12) and two["resumed_from"] == 1
    for name, p in two["whole"].items():
        assert torch.equal(p, two["resumed"][name]), name
    one = resume(knobs, tmp_path / "one")
    assert one["steps"] == (12, 12)
    for name, p in one["whole"].items():
        torch.testing.assert_close(two["whole"][name], p, rtol=1e-4, atol=1e-5, msg=name)


GRID = """
[grid]
name = "mp"
seeds = [0]
[base]
data.name = "imagefolder"
data.root = "{root}"
data.image_size = 8
data.num_workers = 1
tokenizer.name = "pixel"
tokenizer.patch_size = 4
model.size = "micro"
train.epochs = 1
train.batch_size = 8
probe.epochs = 2
probe.baselines = true
fid.enabled = true
fid.num_samples = 16
fid.steps = 2
[axes]
noise.schedule = ["ddpm_linear"]
"""


@pytest.mark.slow
def test_two_process_cell_on_a_streamed_folder_end_to_end(tmp_path: Path, sweepdae: Any,
                                                          sweepdae_or_stacks: Any) -> None:
    """Needs a launched 2-process cell (~60 s). `sweepdae run --procs-per-cell 2` on an image folder of JPEGs:
    training, probe, kNN, FID and baselines; `status --json` gives world_size 2 and the phases, and one epoch
    decodes the train set once (48 images: 6 steps of 8), half on each rank."""
    write_jpegs(tmp_path / "imgs", {"train": 24, "val": 8})
    (tmp_path / "g.toml").write_text(GRID.format(root=tmp_path / "imgs"))
    p = sweepdae_or_stacks(tmp_path, "run", "g.toml", "--procs-per-cell", "2", timeout=420)
    assert p.returncode == 0, p.stderr[-3000:]
    run_dir = next(d for d in (tmp_path / "runs").iterdir() if not d.name.startswith("_"))
    launched = (run_dir / "cell.log").read_text().splitlines()[0]
    assert "--num_processes 2" in launched and "--multi_gpu" in launched and "--cpu" not in launched
    s = sweepdae(tmp_path, "status", "--json")
    assert s.returncode == 0, s.stderr
    (cell,) = json.loads(s.stdout)["cells"]
    assert cell["status"] == "done" and cell["world_size"] == 2
    metrics = {k.removeprefix("metric."): v for k, v in cell.items() if k.startswith("metric.")}
    for m in ("probe_top1", "knn_top1", "fid", "random_init_probe_top1", "random_net_probe_top1",
              "raw_pixel_probe_top1", "probe_gain"):
        assert metrics.get(m) is not None and np.isfinite(metrics[m]), m
    phases = cell["phases"]
    assert {"data", "tokenizer", "train", "probe", "fid", "figures"} <= set(phases)
    train = phases["train"]
    assert 48 - 8 < train["decoded"] <= 48 and train["decoded_per_rank"] == [train["decoded"] // 2] * 2
    assert len(phases["probe"]["decoded_per_rank"]) == 2 and len(phases["figures"]["decoded_per_rank"]) == 1
    # the tokenizer's fit sample is decoded by the main process alone; each rank reads half the 16 FID references
    assert phases["data"]["decoded"] == 0 and phases["tokenizer"]["decoded_per_rank"] == [48, 0]
    assert phases["fid"]["decoded_per_rank"] == [8, 8]
    assert all(p["seconds"] >= 0 and p["peak_rss_mb"] > 0 and p["peak_gpu_mb"] is None for p in phases.values())
    result = json.loads((run_dir / "result.json").read_text())
    assert result["world_size"] == 2 and result["provenance"]["num_processes"] == 2


def test_streamed_center_crop_trains_from_latents_stored_once(tmp_path: Path) -> None:
    """A streamed set with a deterministic input (center crop) is encoded once into stored latents: the training
    decodes each image once in all (not once per epoch), takes the steps that decoding every epoch takes (within
    float tolerance: the images are encoded in other batches), and a second training of the same data and
    tokenizer reads the stored latents without decoding anything."""
    from accelerate import Accelerator

    from sweepdae.cell.train import train
    from sweepdae.data import decoded_images, sample_images
    from sweepdae.tokenizers import get_tokenizer

    write_jpegs(tmp_path / "imgs", {"train": 24, "val": 4})
    r = recipe_from_flat({**MEMORY, "data.name": "imagefolder", "data.root": str(tmp_path / "imgs"),
                          "data.train_size": 0, "data.test_size": 0, "data.num_workers": 0, "train.epochs": 2})
    data = load_dataset(r.data, "train")
    tok, _ = get_tokenizer(r.tokenizer, data_key=r.data_key(), images_uint8=sample_images(data, 8)[0], channels=3,
                           image_size=8, cache_dir=tmp_path / "tok")
    acc = Accelerator(cpu=True)

    def run(folder: str, cache: Path | None) -> tuple[dict[str, torch.Tensor], int]:
        before = decoded_images()
        state = train(r, tokenizer=tok, data=data, train_dir=tmp_path / folder, accelerator=acc,
                      events=lambda **_: None, latent_cache=cache)
        return state.model.state_dict(), decoded_images() - before

    streamed, n_streamed = run("streamed", None)
    stored, n_stored = run("stored", tmp_path / "latents")
    again, n_again = run("again", tmp_path / "latents")
    assert (n_streamed, n_stored, n_again) == (2 * 48, 48, 0)
    assert len(list((tmp_path / "latents").glob("*/done.json"))) == 1
    for name, p in streamed.items():
        torch.testing.assert_close(stored[name], p, rtol=1e-5, atol=1e-6, msg=name)
        assert torch.equal(again[name], stored[name]), name
