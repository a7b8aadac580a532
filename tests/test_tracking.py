"""Training curves: every training logs loss, lr, gradient norm and images/s through Accelerate's tracking API
(TensorBoard by default, under runs/_tensorboard/<grid>/<label>_<train key>), and the store keeps about 200 points
of each, so a shipped store can still draw them (the report's loss curves)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest

from sweepdae.cell import run_name, tracker_options
from sweepdae.store import open_store

event_accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")


def test_tracker_options(tmp_path: Path) -> None:
    assert tracker_options("none", tmp_path) == ({}, None)
    opts, why = tracker_options("tensorboard", tmp_path)
    assert why is None and opts == {"log_with": "tensorboard", "project_dir": str(tmp_path / "_tensorboard")}
    assert tracker_options("comet", tmp_path)[1].startswith("SWEEPDAE_TRACKER='comet': unknown tracker")
    assert run_name("tokenizer_dims", "d=16 pca seed=0", "0123456789") == "tokenizer_dims/d=16_pca_seed=0_01234567"
    assert run_name("g", "a/b\x1b", "k") == "g/a_b_k"


def test_every_training_reaches_tensorboard_and_the_store(tmp_path: Path, write_grid: Any, sweepdae: Any) -> None:
    grid = write_grid(tmp_path, dims=[2, 4], epochs=2, train_size=512)  # 8 steps an epoch: 16 points a training
    r = sweepdae(tmp_path, "run", str(grid))
    assert r.returncode == 0, r.stderr
    runs = sorted({p.parent for p in (tmp_path / "runs" / "_tensorboard").rglob("events.out.tfevents.*")})
    assert [p.parent.name for p in runs] == ["tiny", "tiny"] and len({p.name for p in runs}) == 2
    for run in runs:
        ea = event_accumulator.EventAccumulator(str(run))
        ea.Reload()
        assert {"train/loss", "train/lr", "train/grad_norm", "train/images_per_s"} <= set(ea.Tags()["scalars"])
        losses = ea.Scalars("train/loss")
        assert [e.step for e in losses] == list(range(1, 17))
        assert all(math.isfinite(e.value) and e.value > 0 for e in losses)
    with open_store(f"journal:{tmp_path / 'store.journal'}", create=False) as s:
        curves = s.training_curves()
    assert len(curves) == 2
    for c in curves.values():
        assert c["grid"] == "tiny" and c["fields"] == ["step", "loss", "lr", "grad_norm", "images_per_s"]
        assert [p[0] for p in c["points"]] == list(range(1, 17)) and all(p[3] > 0 for p in c["points"])
    # the HTML report draws them, one line per training
    r = sweepdae(tmp_path, "report", "--store", f"journal:{tmp_path / 'store.journal'}", "--html", "--out",
                 str(tmp_path / "rep"))
    assert r.returncode == 0, r.stderr
    assert "<b>Training loss.</b>" in (tmp_path / "rep" / "report.html").read_text()
    svg = (tmp_path / "rep" / "figures" / "tiny-base-curves.svg").read_text()
    assert "latent_dim=2 seed=0" in svg and "latent_dim=4 seed=0" in svg
