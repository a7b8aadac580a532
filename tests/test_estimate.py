"""The dry run's cost model (`sweepdae.runner.estimate`): FLOP counts against torch's own counter on the real
modules, trainings counted once, calibration from a store, and `sweepdae run --dry-run` over several grids."""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode
from typer.testing import CliRunner

from sweepdae.cli import app
from sweepdae.grid import expand, parse_grid
from sweepdae.recipe import Recipe, recipe_from_flat
from sweepdae.runner import RunSummary
from sweepdae.runner import estimate as E
from sweepdae.store import open_store

SCRIPT = shutil.which("sweepdae", path=str(Path(sys.executable).parent))
SIX = ["deconstruction", "tokenizer_dims", "noise_levels", "towards_dae", "model_size", "epochs"]


def flops_of(fn: Any) -> int:
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        fn()
    return int(counter.get_total_flops())


# ------------------------------------------------------------------------------ counts against FlopCounterMode
@pytest.mark.parametrize(("size", "tokens", "in_dim", "out_dim", "ratio"),
                         [("micro", 16, 4, 4, 0.25), ("tiny", 16, 64, 64, 1.0), ("micro_b", 64, 8, 48, 0.25)])
def test_dit_forward_flops_match_torch_flop_counter(size: str, tokens: int, in_dim: int, out_dim: int,
                                                    ratio: float) -> None:
    from sweepdae.models import create_model

    # unfused attention: the CPU's fused kernel has no FLOP formula in FlopCounterMode, the two matmuls do
    model = create_model(size, in_dim=in_dim, out_dim=out_dim, num_tokens=tokens, cond_mlp_ratio=ratio,
                         fused_attn=False, num_classes=10).eval()
    x, t, y = torch.randn(2, tokens, in_dim), torch.randint(0, 1000, (2,)), torch.randint(0, 10, (2,))
    counted = flops_of(lambda: model(x, t, y)) / 2
    ours = E.dit_forward_flops(size, tokens=tokens, in_dim=in_dim, out_dim=out_dim, cond_mlp_ratio=ratio)
    assert ours == pytest.approx(counted, rel=0.01)
    depth = model.depth // 2  # the probe's encoder: embedding + the first half of the blocks
    counted = flops_of(lambda: model.features(x, t, None, depth=depth)) / 2
    ours = E.dit_forward_flops(size, tokens=tokens, in_dim=in_dim, out_dim=out_dim, cond_mlp_ratio=ratio,
                               blocks=depth)
    assert ours == pytest.approx(counted, rel=0.01)


def test_conv_vae_and_discriminator_flops_match_torch_flop_counter() -> None:
    from sweepdae.tokenizers._conv_vae import ConvVAE
    from sweepdae.tokenizers._losses import PatchGANDiscriminator, discriminator_layers

    r = recipe_from_flat({"tokenizer.name": "conv_vae", "data.image_size": 32, "tokenizer.conv_downsample": 4,
                          "tokenizer.conv_group": 2, "tokenizer.conv_channels": 16, "tokenizer.latent_dim": 8})
    vae = ConvVAE(channels=1, image_size=32, latent_dim=8, downsample=4, group=2, base_channels=16)
    x = torch.randn(1, 1, 32, 32)
    enc, dec = E.conv_vae_flops(r)
    assert enc == pytest.approx(flops_of(lambda: vae.encoder(x)), rel=0.01)
    assert dec == pytest.approx(flops_of(lambda: vae.decoder(torch.randn(1, 2, 8, 8))), rel=0.01)
    disc = PatchGANDiscriminator(1, 16, discriminator_layers(32))
    assert E.discriminator_flops(1, 32, 16) == pytest.approx(flops_of(lambda: disc(x)), rel=0.01)


def test_constants_match_the_modules_they_mirror() -> None:
    import timm

    from sweepdae.models import _layers
    from sweepdae.tokenizers import _conv_vae, _losses, _perceptual

    assert E.MLP_RATIO == _layers.MLP_RATIO and E.FREQUENCY_EMBEDDING_SIZE == _layers.FREQUENCY_EMBEDDING_SIZE
    assert E.CONV_CH_MULT == _conv_vae.CH_MULT and E.MAX_DISC_LAYERS == _losses.MAX_DISC_LAYERS
    assert E.ADV_WARMUP_FRACTION == _losses.ADV_WARMUP_FRACTION and E.PERCEPTUAL_MIN_SIDE == _perceptual.MIN_SIDE
    net = _perceptual.EfficientNetPerceptual(timm.create_model("tf_efficientnet_lite0", pretrained=False))
    assert E.PERCEPTUAL_FLOPS_64PX == flops_of(lambda: net.features(torch.randn(1, 1, 64, 64)))


# ------------------------------------------------------------------------------------------- trainings counted once
GRID = """
[grid]
name = "{name}"
[base]
data.name = "fashion-mnist"
data.train_size = 1000
data.test_size = 200
tokenizer.name = "patch_pca"
tokenizer.latent_dim = 4
model.size = "micro"
train.epochs = 2
train.batch_size = 100
[axes]
probe.t = {ts}
"""
CPU = E.Rate(1e9, 0.0, "cpu", "test", measured=True)

# The two states of the phase model the tests run under (`set_flags`): "rank0", the code before multi-process cells
# (every rank decoding the whole training batch, evaluation on rank 0 alone in fp32, a streamed set decoded every
# epoch), and "sharded", the one cells run now (what estimate.py ships; tests/test_estimate.py
# test_shipped_flags_are_the_sharded_state checks it).
SHARDED, EACH, ONCE = E.Decoding.sharded, E.Decoding.each, E.Decoding.once
FLAGS: dict[str, tuple[dict[str, tuple[bool, E.Decoding, str]], bool]] = {
    "rank0": ({"tokenizer_fit": (False, EACH, "bf16"), "train": (True, EACH, "train"),
               "probe": (False, EACH, "fp32"), "baselines": (False, EACH, "fp32"), "knn": (False, EACH, "fp32"),
               "fid_reference": (False, EACH, "fp32"), "fid_sampling": (False, EACH, "fp32")}, False),
    "sharded": ({"tokenizer_fit": (False, ONCE, "bf16"), "train": (True, SHARDED, "train"),
                 "probe": (True, SHARDED, "train"), "baselines": (True, SHARDED, "train"), "knn": (True, ONCE, "fp32"),
                 "fid_reference": (True, SHARDED, "fp32"), "fid_sampling": (True, SHARDED, "train")}, True),
}


def set_flags(monkeypatch: pytest.MonkeyPatch, state: str) -> None:
    phases, latents_once = FLAGS[state]
    monkeypatch.setattr(E, "PHASES", dict(phases))
    monkeypatch.setattr(E, "STREAMED_LATENTS_ONCE", latents_once)


def test_shipped_flags_are_the_sharded_state() -> None:
    assert (E.PHASES, E.STREAMED_LATENTS_ONCE) == FLAGS["sharded"]


def cells_of(name: str = "g", ts: str = "[10, 50, 100]") -> list[Any]:
    return list(expand(parse_grid(GRID.format(name=name, ts=ts), f"{name}.toml")).cells)


def test_the_pool2x2_probe_costs_one_more_feature_pass() -> None:
    base = Recipe()
    pooled = base.with_updates({"probe.pool2x2": True})
    n_tr, n_te = E.split_sizes(base)
    a, b = E.evaluation_phases(base)["probe"], E.evaluation_phases(pooled)["probe"]
    assert b.decoded == a.decoded + n_tr + n_te and b.flops == pytest.approx(a.flops * 2)


def test_a_training_shared_by_cells_is_counted_once() -> None:
    cells = cells_of()
    assert len({c.train_key for c in cells}) == 1 and len(cells) == 3
    [e] = E.estimate_grids([("g", None, cells, cells)], trained=set(), rate=CPU, devices=1, slots=1)
    r: Recipe = cells[0].recipe
    assert e.trainings == 1 and e.shared == 0 and e.run == 3
    assert e.flops == pytest.approx(E.training_flops(r) + sum(E.evaluation_flops(c.recipe) for c in cells))
    # 3 x forward per image seen: 10 steps of 100 images a epoch, 2 epochs (+ PCA encoding, once)
    assert E.training_flops(r) == pytest.approx(3 * E.recipe_forward_flops(r) * 2000 + 1000 * E.encode_flops(r))
    assert e.seconds == pytest.approx(e.flops / 1e9)


def test_an_already_trained_training_costs_only_evaluation() -> None:
    cells = cells_of()
    [e] = E.estimate_grids([("g", None, cells, cells[1:])], trained={cells[0].train_key}, rate=CPU, devices=1,
                           slots=1)
    assert e.trainings == 0 and e.done == 1 and e.run == 2
    assert e.flops == pytest.approx(sum(E.evaluation_flops(c.recipe) for c in cells[1:]))


@pytest.mark.parametrize("state", list(FLAGS))
def test_a_training_made_by_an_earlier_grid_of_the_run_is_not_costed_again(state: str,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    set_flags(monkeypatch, state)
    a, b = cells_of("a", "[10]"), cells_of("b", "[10, 50]")
    assert a[0].train_key == b[0].train_key
    ea, eb = E.estimate_grids([("a", None, a, a), ("b", None, b, b)], trained=set(), rate=CPU, devices=2, slots=1)
    assert (ea.trainings, ea.shared, eb.trainings, eb.shared) == (1, 0, 1, 1)
    assert eb.flops == pytest.approx(sum(E.evaluation_flops(c.recipe) for c in b))
    # one cell on two devices: the training is data-parallel; evaluation on rank 0 alone ("rank0"), or its sharded
    # phases over both ranks, kNN's queries shared out too ("sharded")
    r = a[0].recipe
    parts = E.evaluation_phases(r)
    assert set(parts) == {"probe", "baselines", "knn"} and parts["probe"].flops > 0 and parts["knn"].flops > 0
    if state == "rank0":
        assert ea.seconds == pytest.approx(E.training_flops(r) / 2e9 + E.evaluation_flops(r) / 1e9)
    else:
        assert ea.seconds == pytest.approx((E.training_flops(r) + parts["probe"].flops + parts["baselines"].flops
                                            + parts["knn"].flops) / 2e9)


# ----------------------------------------------------------------------------------------- calibration from a store
def finished(store: Any, cell: Any, *, seconds: float, device: str = "cpu", reused: bool = False,
             resumed: int | None = None, wall: float = 0.0) -> None:
    store.enqueue([{"key": cell.key, "label": cell.label, "recipe": cell.recipe.to_dict(), "grid": "g",
                    "train_key": cell.train_key}])
    claim = store.claim("tester", keys={cell.key})
    assert claim is not None
    store.complete(claim, metrics={"probe_top1": 50.0, "train_seconds": seconds},
                   info={"train_key": cell.train_key, "reused_training": reused, "resumed_from_epoch": resumed,
                         "timings": {"wall_s": wall}, "provenance": {"device_type": device, "device": "x86_64",
                                                                     "num_processes": 1}})


def test_calibrate_measures_the_rate_from_finished_cells_each_training_once(tmp_path: Path) -> None:
    shared = cells_of(ts="[10, 50]")
    other = list(expand(parse_grid(GRID.format(name="h", ts="[10]").replace("epochs = 2", "epochs = 4"),
                                   "h.toml")).cells)
    r1, r2 = shared[0].recipe, other[0].recipe
    with open_store(f"journal:{tmp_path / 's.journal'}") as s:
        finished(s, shared[0], seconds=10.0, wall=25.0)
        finished(s, shared[1], seconds=10.0, reused=True, wall=3.0)  # the same training: not counted again
        finished(s, other[0], seconds=30.0, resumed=2, wall=40.0)  # half of its epochs after a resume
        rows = s.cells().to_dict("records")
    rate = E.calibrate(rows, "cpu")
    assert rate is not None and rate.measured
    expected = (E.training_flops(r1) + E.training_flops(r2) / 2) / 40.0
    assert rate.flops_per_s == pytest.approx(expected)
    cost = E.training_flops(r1) + E.tokenizer_fit_flops(r1) + E.evaluation_flops(r1)
    assert rate.fixed_s == pytest.approx(25.0 - cost / expected)  # only the unresumed cell that trained
    assert "rate measured from 2 finished cells in this store" in rate.source
    assert E.calibrate(rows, "cuda") is None  # other device kind: nothing measured


def test_dry_run_uses_the_store_rate_and_its_trained_keys(tmp_path: Path) -> None:
    grid = tmp_path / "g.toml"
    grid.write_text(GRID.format(name="g", ts="[10, 50]"))
    cells = list(expand(parse_grid(grid.read_text(), str(grid))).cells)
    url = f"journal:{tmp_path / 's.journal'}"
    with open_store(url) as s:
        finished(s, cells[0], seconds=10.0, wall=12.0)
        lease = s.acquire_training(cells[0].train_key, owner="tester")
        s.complete_training(lease.claim, info={})
    r = CliRunner().invoke(app, ["run", str(grid), "--store", url, "--gpus", "cpu", "--dry-run"])
    assert r.exit_code == 0, r.output
    assert "g (base): 2 cells, 0 trainings, 1 done, 1 would run" in r.output
    assert "rate measured from 1 finished cells in this store" in r.output
    r = CliRunner().invoke(app, ["run", str(grid), "--store", url, "--gpus", "cpu", "--dry-run", "--rate", "2"])
    assert r.exit_code == 0 and "2 TFLOP/s on the CPU" in r.output and "rate given with --rate" in r.output
    r = CliRunner().invoke(app, ["run", str(grid), "--store", url, "--dry-run", "--rate", "0"])
    assert r.exit_code != 0 and "--rate" in str(r.exception)


# -------------------------------------------------------------------------------------------- the command line
def test_six_findings_dry_run_on_one_gpu_from_a_cpu_machine(tmp_path: Path) -> None:
    assert SCRIPT, f"no sweepdae console script beside {sys.executable}"
    p = subprocess.run([SCRIPT, "run", *SIX, "--profile", "demo", "--gpus", "0", "--dry-run", "--store",
                        f"journal:{tmp_path / 's.journal'}"], cwd=tmp_path, capture_output=True, text=True,
                       timeout=120)
    assert p.returncode == 0, p.stderr
    lines = p.stderr.splitlines()
    for name in SIX:
        n = len(expand(parse_grid((Path(__file__).parents[1] / "grids" / f"{name}.toml").read_text(),
                                  f"{name}.toml"), "demo").cells)
        assert any(line.startswith(f"{name} (demo): {n} cells, ") and "would run" in line and "about " in line
                   for line in lines), (name, p.stderr)
    total = next(line for line in lines if line.startswith("total: 6 grids, "))
    assert " cells, " in total and "about " in total, total
    assert any(line.startswith("estimated for 1 GPU (cuda:0): ") and "assumed, not measured" in line
               for line in lines), p.stderr
    assert len(p.stdout.splitlines()) > 6  # the cells that would run
    assert sorted(x.name for x in tmp_path.iterdir()) == []  # no store, no runs folder: nothing ran


def test_a_missing_profile_in_one_of_several_grids_is_one_line_and_nothing_runs(tmp_path: Path) -> None:
    assert SCRIPT
    (tmp_path / "plain.toml").write_text(GRID.format(name="plain", ts="[10]"))
    for extra in ([], ["--dry-run"]):
        p = subprocess.run([SCRIPT, "run", "noise_levels", "plain.toml", "--profile", "demo", *extra, "--store",
                            "journal:s.journal", "--runs-dir", "runs"], cwd=tmp_path, capture_output=True, text=True,
                           timeout=120)
        assert p.returncode == 2, p.stderr
        assert p.stderr.startswith("error: ") and p.stderr.count("\n") == 1, p.stderr
        assert "plain" in p.stderr and "no profile 'demo'" in p.stderr and p.stdout == "", p.stderr
        assert sorted(x.name for x in tmp_path.iterdir()) == ["plain.toml"]


def test_run_runs_each_grid_in_turn_with_the_same_options(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("a", "b"):
        (tmp_path / f"{name}.toml").write_text(GRID.format(name=name, ts="[10, 50]" if name == "a" else "[20]"))
    calls: list[dict[str, Any]] = []
    reports: list[list[str]] = []

    def fake_run_plan(store: Any, plan: Any, **kw: Any) -> RunSummary:
        calls.append({"grid": plan.grid.name, **kw})
        bad = plan.grid.name == "b"
        return RunSummary(total=len(plan.cells), cached=0, done=[], failed=[c.key for c in plan.cells] if bad else [],
                          statuses={c.key: "failed" if bad else "done" for c in plan.cells})

    monkeypatch.setattr("sweepdae.runner.run_plan", fake_run_plan)
    monkeypatch.setattr("sweepdae.report.write_reports", lambda store, **kw: reports.append(kw["grids"]) or [])
    url = f"journal:{tmp_path / 's.journal'}"
    r = CliRunner().invoke(app, ["run", str(tmp_path / "a.toml"), str(tmp_path / "b.toml"), "--store", url,
                                 "--gpus", "cpu", "--max-retries", "3", "--report"])
    assert [c["grid"] for c in calls] == ["a", "b"]
    assert all(c["gpus"] == "cpu" and c["max_retries"] == 3 for c in calls)
    assert reports == [["a", "b"]]  # one report of all the grids
    assert r.exit_code == 1 and "1 of 3 cells not done" in r.output, r.output
    calls.clear()  # --fail-fast: a grid with a failure ends the run
    r = CliRunner().invoke(app, ["run", str(tmp_path / "b.toml"), str(tmp_path / "a.toml"), "--store", url,
                                 "--fail-fast"])
    assert [c["grid"] for c in calls] == ["b"] and r.exit_code == 1, r.output
    with open_store(url, create=False) as st:  # both grids registered before either ran
        assert sorted(g["name"] for g in st.grids()) == ["a", "b"]


def test_human_formats() -> None:
    assert E.human_seconds(0) == "nothing" and E.human_seconds(35) == "about 35 s"
    assert E.human_seconds(42 * 60) == "about 42 min" and E.human_seconds(2 * 3600 + 5 * 60) == "about 2 h 05 min"
    assert E.human_seconds(5 * 86400) == "about 5 days"
    assert E.human_flops(3.2e15) == "3.2 PFLOP" and E.human_flops(1.88e21) == "1,880 EFLOP"


# ------------------------------------------------------------------------------------------------- the plan: phases
FOLDER = """
[grid]
name = "f"
[base]
data.name = "imagefolder"
data.root = "/nowhere"
data.train_size = 5000
data.test_size = 1000
data.num_workers = {workers}
tokenizer.name = "patch_pca"
tokenizer.latent_dim = 4
model.size = "micro"
train.epochs = 2
train.batch_size = 100
[axes]
probe.t = [10, 50]
"""


def folder_cells(workers: int = 4) -> list[Any]:
    return list(expand(parse_grid(FOLDER.format(workers=workers), "f.toml")).cells)


@pytest.mark.parametrize("state", list(FLAGS))
def test_each_phase_takes_the_larger_of_compute_and_data_time(state: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Closed forms: compute = FLOPs / rate, data = images / (decode rate x cores), phase = max of the two."""
    set_flags(monkeypatch, state)
    cells = folder_cells(workers=4)
    r: Recipe = cells[0].recipe
    slow = E.Rate(1e9, 0.0, "cpu", "test", measured=True)
    [e] = E.estimate_grids([("f", None, cells, cells)], trained=set(), rate=slow, devices=1, slots=1)
    n_tr, n_te = 5000, 1000
    train = e.phases["train"]
    # decoded every epoch (2 epochs), or once into stored latents
    seen = (n_tr // 100) * 100 * 2 if state == "rank0" else n_tr
    assert train.decoded == seen and train.compute_seconds == pytest.approx(E.training_flops(r) / 1e9)
    assert train.data_seconds == pytest.approx(seen / (E.DECODE_RATES["center_crop"] * 4))
    assert train.seconds == pytest.approx(max(train.compute_seconds, train.data_seconds))
    probe = e.phases["probe"]  # cached features of train + test, one pass per cell (two cells)
    assert probe.decoded == 2 * (n_tr + n_te)
    assert probe.data_seconds == pytest.approx(2 * (n_tr + n_te) / (E.DECODE_RATES["center_crop"] * 4))
    fit = e.phases["tokenizer_fit"]  # one fit (two cells, one tokenizer) decodes its sample; PCA costs no FLOPs
    assert fit.decoded == n_tr and fit.compute_seconds == 0 and fit.bound == "data"
    assert e.phases["knn"].data_seconds == 0 and e.phases["knn"].bound == "compute"
    busy = sum(p.seconds for p in e.phases.values())
    assert e.seconds == pytest.approx(busy)
    # a fast device makes the training data-bound; more decoding cores bring it back to compute
    fast = E.Rate(1e15, 0.0, "cpu", "test", measured=True)
    [e4] = E.estimate_grids([("f", None, cells, cells)], trained=set(), rate=fast, devices=1, slots=1)
    assert e4.phases["train"].bound == "data"
    many = folder_cells(workers=64)
    [e64] = E.estimate_grids([("f", None, many, many)], trained=set(), rate=fast, devices=1, slots=1,
                             cpus_per_process=[9])  # 9 CPUs: 8 decoding workers and the process itself
    assert e64.phases["train"].data_seconds == pytest.approx(e4.phases["train"].data_seconds / 2)


@pytest.mark.parametrize("state", list(FLAGS))
def test_single_rank_phases_are_not_divided_by_the_processes(state: str, monkeypatch: pytest.MonkeyPatch) -> None:
    set_flags(monkeypatch, state)
    cells = folder_cells()
    r: Recipe = cells[0].recipe
    [one] = E.estimate_grids([("f", None, cells, cells)], trained=set(), rate=CPU, devices=1, slots=1)
    [eight] = E.estimate_grids([("f", None, cells, cells)], trained=set(), rate=CPU, devices=8, slots=1)
    assert eight.phases["train"].compute_seconds == pytest.approx(E.training_flops(r) / 8e9)
    assert one.phases["train"].data_seconds > 0 and one.phases["probe"].data_seconds > 0
    if state == "rank0":
        # every rank decodes the whole pass (cell/train.py _batch_source then): 8x the images, the same data time
        assert eight.phases["train"].decoded == 8 * one.phases["train"].decoded
        assert eight.phases["train"].data_seconds == pytest.approx(one.phases["train"].data_seconds)
        for name in ("probe", "knn"):  # rank 0 alone
            assert eight.phases[name].compute_seconds == pytest.approx(one.phases[name].compute_seconds)
            assert eight.phases[name].data_seconds == pytest.approx(one.phases[name].data_seconds)
    else:
        # per-rank shards (a DistributedSampler): the same images, an eighth of the data time each
        assert eight.phases["train"].decoded == one.phases["train"].decoded
        assert eight.phases["train"].data_seconds == pytest.approx(one.phases["train"].data_seconds / 8)
        assert eight.phases["probe"].compute_seconds == pytest.approx(one.phases["probe"].compute_seconds / 8)
        assert eight.phases["probe"].data_seconds == pytest.approx(one.phases["probe"].data_seconds / 8)
        assert eight.phases["probe"].decoded == one.phases["probe"].decoded
        # kNN: the ranks share the queries out
        assert eight.phases["knn"].compute_seconds == pytest.approx(one.phases["knn"].compute_seconds / 8)
        # the tokenizer's sample: decoded once, by the main process, whatever the processes
        assert eight.phases["tokenizer_fit"].decoded == one.phases["tokenizer_fit"].decoded
        assert eight.phases["tokenizer_fit"].data_seconds == pytest.approx(one.phases["tokenizer_fit"].data_seconds)
    # one flag per phase: flipping the probe's divides it, or stops dividing it
    on = not E.PHASES["probe"][0]
    monkeypatch.setitem(E.PHASES, "probe", (on, SHARDED if on else EACH, "fp32"))
    [flipped] = E.estimate_grids([("f", None, cells, cells)], trained=set(), rate=CPU, devices=8, slots=1)
    div = 8 if on else 1
    assert flipped.phases["probe"].compute_seconds == pytest.approx(one.phases["probe"].compute_seconds / div)
    assert flipped.phases["probe"].data_seconds == pytest.approx(one.phases["probe"].data_seconds / div)
    assert flipped.phases["probe"].decoded == one.phases["probe"].decoded * (8 // div)


def test_slots_share_the_work_but_not_a_chain() -> None:
    cells = cells_of(ts="[10, 50, 100]")  # in memory: data costs nothing
    [one] = E.estimate_grids([("g", None, cells, cells)], trained=set(), rate=CPU, devices=1, slots=1)
    [three] = E.estimate_grids([("g", None, cells, cells)], trained=set(), rate=CPU, devices=3, slots=3)
    r: Recipe = cells[0].recipe
    chain = (E.training_flops(r) + E.tokenizer_fit_flops(r) + max(E.evaluation_flops(c.recipe) for c in cells)) / 1e9
    assert one.seconds == pytest.approx(one.flops / 1e9)
    assert three.critical_seconds == pytest.approx(chain)  # the training cannot be split over the slots
    assert three.seconds == pytest.approx(max(one.flops / 3e9, chain))
    assert all(p.data_seconds == 0 for p in one.phases.values())
    assert one.jobs == [pytest.approx(one.flops / 1e9)]  # one training group: one SLURM job


@pytest.mark.parametrize(("name", "peak"), [("NVIDIA H100 80GB HBM3", "H100"), ("NVIDIA H100 PCIe", "H100 PCIe"),
                                            ("NVIDIA H200", "H200"), ("NVIDIA A100-SXM4-80GB", "A100")])
def test_gpu_rate_is_the_peak_of_the_phase_precision_times_the_assumed_mfu(name: str, peak: str) -> None:
    rate = E.default_rate("cuda", name)
    p = E.GPU_PEAKS[peak]
    assert rate.gpu == p and not rate.measured and "MFU assumed, not measured" in rate.source
    paper = recipe_from_flat({"model.size": "half_large"})
    small = recipe_from_flat({"model.size": "micro"})
    assert E.phase_flops_per_s(rate, paper, "train") == pytest.approx(p.bf16 * 1e12 * 0.30)
    assert E.phase_flops_per_s(rate, paper, "fp32") == pytest.approx(p.tf32 * 1e12 * 0.30)
    assert E.phase_flops_per_s(rate, small, "train") == pytest.approx(p.bf16 * 1e12 * 0.01)
    fp32 = recipe_from_flat({"model.size": "half_large", "train.precision": "fp32"})
    assert E.phase_flops_per_s(rate, fp32, "train") == pytest.approx(p.tf32 * 1e12 * 0.30)
    # dense peaks are half the data sheets' 2:4-sparsity figures, and TF32 half of bf16
    assert p.tf32 == pytest.approx(p.bf16 / 2, rel=0.01) and p.fp32 < p.tf32
    unknown = E.default_rate("cuda", "Some GPU")
    assert unknown.gpu == E.GPU_PEAKS[E.DEFAULT_GPU] and "is in no row of GPU_PEAKS" in unknown.source
    assert "no GPU visible here" in E.default_rate("cuda").source
    measured = E.Rate(5e12, 1.0, "cuda", "store", measured=True)  # a measured rate serves every phase
    assert E.phase_flops_per_s(measured, paper, "fp32") == 5e12


def test_gpu_benchmark_reads_the_same_peaks() -> None:
    import importlib.util

    spec = importlib.util.spec_from_file_location("bench_gpu", Path(__file__).parents[1] / "benchmarks" /
                                                  "bench_gpu.py")
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    assert mod.GPU_PEAKS is E.GPU_PEAKS


@pytest.mark.parametrize(("size", "ratio"), [("micro", 0.25), ("tiny", 1.0), ("micro_l", 0.25)])
def test_dit_parameters_match_the_module(size: str, ratio: float) -> None:
    from sweepdae.models import create_model

    model = create_model(size, in_dim=48, out_dim=48, num_tokens=16, cond_mlp_ratio=ratio, num_classes=0)
    ours = E.dit_parameters(size, tokens=16, in_dim=48, out_dim=48, cond_mlp_ratio=ratio)
    assert ours == sum(p.numel() for p in model.parameters() if p.requires_grad)


def test_requeues() -> None:
    assert E.requeues(3600, 60) == 0 and E.requeues(3601, 60) == 1 and E.requeues(10 * 3600, 60) == 9
    assert E.requeues(0.5, 60) == 0


def test_shipped_paper_profiles_slurm_tables_are_sized_by_the_plan() -> None:
    """Each grid's [profiles.paper.slurm] table is slurm_sizing of its paper cells (other profiles get none); its
    data.num_workers use those CPUs."""
    from sweepdae.grid import load_grid

    grids = sorted((Path(__file__).parents[1] / "grids").glob("*.toml"))
    sized = 0
    for path in grids:
        g = load_grid(str(path))
        if "paper" not in g.profiles:
            continue
        recipes = [c.recipe for c in expand(g, "paper").cells]
        want = E.slurm_sizing(recipes)
        assert g.profiles["paper"].slurm == want and not g.slurm.options, (path.name, "regenerate the table:", want)
        assert all(r.data.num_workers == want["cpus_per_gpu"] - 1 for r in recipes), path.name
        assert want["cpus_per_gpu"] <= E.CPUS_PER_GPU_MAX and want["time"] >= E.SLURM_TIME_MIN
        sized += 1
    assert sized >= 2


def test_slurm_sizing_closed_forms() -> None:
    r = recipe_from_flat({"data.name": "imagefolder", "data.image_size": 256, "model.size": "half_large",
                          "tokenizer.name": "patch_pca", "tokenizer.patch_size": 16, "tokenizer.latent_dim": 32,
                          "train.batch_size": 2048, "train.epochs": 400, "probe.augment": True,
                          "probe.baselines": True})
    out = E.slurm_sizing([r])
    workers = out["cpus_per_gpu"] - 1
    n = 1_281_167 + 50_000
    params = E.dit_parameters("half_large", tokens=256, in_dim=32, out_dim=32)
    host = E.HOST_BASE_GB + (workers * 2 * 2048 * 3 * 256 * 256 + 4 * n * 1024 + 16 * params) / 1e9
    assert out["mem_gb_per_gpu"] == math.ceil(1.25 * host)
    assert out["time"] % 60 == 0 and out["max_requeues"] >= 1


# ------------------------------------------------------------------------------------------- the dry run as JSON
def test_paper_dry_run_json_per_grid_per_phase(tmp_path: Path) -> None:
    r = CliRunner().invoke(app, ["run", "tokenizer_dims", "deconstruction", "--profile", "paper", "--gpus",
                                 "0,1,2,3,4,5,6,7", "--dry-run", "--json", "--store",
                                 f"journal:{tmp_path / 's.journal'}"])
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    assert [g["name"] for g in doc["grids"]] == ["tokenizer_dims", "deconstruction"]
    assert doc["total_seconds"] == pytest.approx(sum(g["total_seconds"] for g in doc["grids"]))
    for g in doc["grids"]:
        assert {"tokenizer_fit", "train", "probe", "baselines", "knn"} <= set(g["phases"])
        for p in g["phases"].values():
            assert p["bound"] in ("compute", "data")
            # a sum over cells of max(compute, data): at least the larger sum, at most both
            assert max(p["compute_seconds"], p["data_seconds"]) * (1 - 1e-9) <= p["seconds"]
            assert p["seconds"] <= (p["compute_seconds"] + p["data_seconds"]) * (1 + 1e-9)
        assert g["total_seconds"] >= sum(p["seconds"] for p in g["phases"].values())
        assert g["slurm"]["time_min"] >= E.SLURM_TIME_MIN and g["slurm"]["requeues"] <= g["slurm"]["max_requeues"]
        assert 0 < g["slurm"]["longest_training_seconds"] <= g["slurm"]["longest_job_seconds"]
        assert g["slurm"]["training_requeues"] <= g["slurm"]["requeues"]
    assert "fid_sampling" in doc["grids"][1]["phases"]
    assert "MFU assumed, not measured" in doc["rates"]["compute"]
    assert E.DECODE_COMMAND in doc["rates"]["data"] and "sharded phases: train" in doc["rates"]["processes"]
    r = CliRunner().invoke(app, ["run", "tokenizer_dims", "--profile", "paper", "--json"])
    assert r.exit_code != 0 and "--json: only with --dry-run" in str(r.exception)


def test_paper_dry_run_says_the_bound_and_the_requeues(tmp_path: Path) -> None:
    args = ["run", "tokenizer_dims", "--profile", "paper", "--gpus", "0,1", "--dry-run", "--store",
            f"journal:{tmp_path / 's.journal'}"]
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 0, r.output
    lines = r.output.splitlines()
    assert any(line.startswith("  train ") and "-bound (compute about" in line for line in lines), r.output
    assert any("slurm: time = " in line and "the longest training takes about " in line and "requeue" in line
               for line in lines), r.output
    assert any(line.startswith("data: streamed images decoded at ") for line in lines), r.output
    r = CliRunner().invoke(app, [*args, "--executor", "slurm", "--time", "60", "--cpus", "5"])
    assert r.exit_code == 0, r.output
    from sweepdae.grid import load_grid

    allowed = load_grid(str(Path(__file__).parents[1] / "grids" / "tokenizer_dims.toml")).profiles["paper"].slurm
    assert f"max_requeues = {allowed['max_requeues']}: too few" in r.output and "a requeue restarts it" in r.output
    assert "4 decoding cores per process" in r.output  # 5 CPUs: 4 workers and the process


def test_decode_benchmark_runs(tmp_path: Path) -> None:
    out = tmp_path / "d.json"
    p = subprocess.run([sys.executable, str(Path(__file__).parents[1] / "benchmarks" / "bench_decode.py"), "--n",
                        "3", "--repeats", "1", "--json", str(out)], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    d = json.loads(out.read_text())
    assert d["center_crop_per_core"] > 0 and d["random_resized_crop_per_core"] > 0 and d["in_memory_per_core"] > 0
    assert d["px"] == 256 and d["cpu"]


@pytest.mark.slow
def test_gpu_benchmark_cell_cpu_smoke(tmp_path: Path) -> None:
    """Slow: a whole cell through `sweepdae run` (store, coordinator, a process per cell): ~40 s on 2 cores."""
    out = tmp_path / "gpu.json"
    p = subprocess.run([sys.executable, str(Path(__file__).parents[1] / "benchmarks" / "bench_gpu.py"), "--cpu-smoke",
                        "--only", "cell", "--json", str(out)], capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stdout + p.stderr
    cell = json.loads(out.read_text())["cell"]
    assert cell["train_seconds"] > 0 and cell["images_per_s"] > 0 and cell["mfu"] is None  # no peak on a CPU
    assert "decoded / used by training: " in p.stdout and "images/s, MFU" in p.stdout


def test_stored_latents_decode_and_encode_a_streamed_set_once(monkeypatch: pytest.MonkeyPatch) -> None:
    cells = folder_cells()
    r: Recipe = cells[0].recipe
    monkeypatch.setattr(E, "STREAMED_LATENTS_ONCE", False)
    per_epoch = E.training_flops(r)
    assert E.training_images(r) == 5000 * 2  # decoded and encoded every epoch (2 epochs)
    monkeypatch.setattr(E, "STREAMED_LATENTS_ONCE", True)
    assert E.training_images(r) == 5000
    assert per_epoch - E.training_flops(r) == pytest.approx(E.encode_flops(r) * 5000)
    # an objective that reads the images' patches trains from decoded images every epoch (cell/train.py)
    patches = r.with_updates({"objective.input_space": "image"})
    assert E.reads_patches(patches) and not E.encoded_once(patches) and E.training_images(patches) == 5000 * 2


def test_stored_latents_are_shared_by_the_trainings_of_one_set_and_tokenizer(monkeypatch: pytest.MonkeyPatch
                                                                             ) -> None:
    """cell/latents.py keys them by the images and the tokenizer: a second training of the same set decodes none."""
    monkeypatch.setattr(E, "STREAMED_LATENTS_ONCE", True)
    grid = FOLDER.format(workers=4).replace("probe.t = [10, 50]", "train.batch_size = [100, 200]").replace(
        "train.batch_size = 100\n", "")
    cells = list(expand(parse_grid(grid, "f.toml")).cells)
    assert len({c.train_key for c in cells}) == 2
    [e] = E.estimate_grids([("f", None, cells, cells)], trained=set(), rate=CPU, devices=1, slots=1)
    a, b = (c.recipe for c in cells)
    assert e.phases["train"].decoded == 5000
    assert e.phases["train"].flops == pytest.approx(E.training_flops(a) + E.training_flops(b)
                                                    - E.encode_flops(b) * 5000)
