"""The dry run's cost model (`sweepdae.runner.estimate`): FLOP counts against torch's own counter on the real
modules, trainings counted once, calibration from a store, and `sweepdae run --dry-run` over several grids."""

from __future__ import annotations

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


def cells_of(name: str = "g", ts: str = "[10, 50, 100]") -> list[Any]:
    return list(expand(parse_grid(GRID.format(name=name, ts=ts), f"{name}.toml")).cells)


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


def test_a_training_made_by_an_earlier_grid_of_the_run_is_not_costed_again() -> None:
    a, b = cells_of("a", "[10]"), cells_of("b", "[10, 50]")
    assert a[0].train_key == b[0].train_key
    ea, eb = E.estimate_grids([("a", None, a, a), ("b", None, b, b)], trained=set(), rate=CPU, devices=2, slots=1)
    assert (ea.trainings, ea.shared, eb.trainings, eb.shared) == (1, 0, 1, 1)
    assert eb.flops == pytest.approx(sum(E.evaluation_flops(c.recipe) for c in b))
    # one cell on two devices: the training is data-parallel, evaluation runs on rank 0 alone (PHASES)
    r = a[0].recipe
    assert ea.seconds == pytest.approx(E.training_flops(r) / 2e9 + E.evaluation_flops(r) / 1e9)


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
