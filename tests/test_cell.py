"""The phases of a cell: the training step and epoch, strict checkpoint resume, and one training shared by the
cells that evaluate it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from accelerate import Accelerator

from sweepdae.cell import RETRYABLE, CellResult, TrainedInfo, classify, classify_exit, read_result, read_trained
from sweepdae.cell.run import run_cell, write_failure
from sweepdae.cell.train import (
    CHECKPOINT,
    TRAINED,
    load_weights,
    setup_training,
    train,
    train_one_epoch,
    train_step,
)
from sweepdae.data import load_dataset
from sweepdae.errors import RecipeError, TrainingError
from sweepdae.metrics import FINDINGS, METRICS
from sweepdae.recipe import recipe_from_flat
from sweepdae.tokenizers import get_tokenizer
from sweepdae.utils import atomic_write_json

BASE = {"data.name": "digits", "data.image_size": 8, "tokenizer.patch_size": 4, "tokenizer.latent_dim": 4,
        "tokenizer.pca_num_patches": 500, "data.train_size": 256, "data.test_size": 64, "train.epochs": 2,
        "train.batch_size": 64, "probe.epochs": 2}


def _setup(tmp_path: Path, **knobs: object):  # type: ignore[no-untyped-def]
    r = recipe_from_flat({**BASE, **knobs})
    data = load_dataset(r.data, "train")
    tok, _ = get_tokenizer(r.tokenizer, data_key="digits", images_uint8=data.tensors()[0], channels=1, image_size=8,
                           cache_dir=tmp_path / "tok", seed=0)
    return r, data, tok


def test_train_step_and_epoch_are_callable(tmp_path: Path) -> None:
    r, data, tok = _setup(tmp_path)
    tr = setup_training(r, tokenizer=tok, data=data, accelerator=Accelerator(cpu=True))
    before = [p.detach().clone() for p in tr.raw_model.parameters()]
    gd = torch.Generator().manual_seed(0)
    micros = next(iter(tr.source(0, gd)))
    loss = train_step(tr, micros, step=5, gd=gd)
    assert loss.dim() == 0 and torch.isfinite(loss)
    assert any(not torch.equal(a, b) for a, b in zip(before, tr.raw_model.parameters(), strict=True))
    events: list[dict[str, object]] = []
    step, mean_loss = train_one_epoch(tr, epoch=1, step=6, events=lambda **e: events.append(e))
    assert step == 6 + tr.steps_per_epoch == 6 + 256 // 64
    assert mean_loss > 0 and events[-1]["step"] == step


def test_nonfinite_loss_stops_training_as_nonfinite(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A test objective that returns NaN (no fault hook in the training loop)."""
    import sweepdae.cell.train as train_mod

    real = train_mod.compute_loss

    def nan_loss(**kw):  # type: ignore[no-untyped-def]
        terms = real(**kw)
        return {**terms, "loss": terms["loss"] * float("nan")}

    monkeypatch.setattr(train_mod, "compute_loss", nan_loss)
    r, data, tok = _setup(tmp_path)
    tr = setup_training(r, tokenizer=tok, data=data, accelerator=Accelerator(cpu=True))
    with pytest.raises(TrainingError) as e:
        train_one_epoch(tr, epoch=0, step=0, events=lambda **_: None)
    assert e.value.failure_class == "nonfinite" and classify(e.value) == ("nonfinite", False)


def test_metric_and_finding_names_have_one_source() -> None:
    from sweepdae.grid import schema
    from sweepdae.report import findings, tables

    assert set(findings.FINDING_CHECKS) == set(FINDINGS) and schema.FINDINGS is FINDINGS
    assert schema.METRICS is METRICS and tables.METRICS is METRICS


def test_failure_classes() -> None:
    assert classify(torch.OutOfMemoryError("CUDA out of memory")) == ("oom", True)
    assert classify(RecipeError("x")) == ("bad_recipe", False)
    assert classify(OSError(28, "No space left")) == ("io", True)
    assert classify(RuntimeError("boom")) == ("crash", True)
    assert classify(TrainingError("x", "bad_checkpoint")) == ("bad_checkpoint", False)
    assert RETRYABLE == {"oom", "crash", "killed", "io", "preempted"}
    # a cell that ended without a result: its failure.json decides, else its exit status
    assert classify_exit(1, {"failure_class": "nonfinite"}, interrupted=False) == ("nonfinite", False)
    assert classify_exit(-9, {}, interrupted=False) == ("killed", True)
    assert classify_exit(74, {}, interrupted=False) == ("io", True)
    assert classify_exit(1, {}, interrupted=False) == ("crash", True)
    assert classify_exit(1, {}, interrupted=True) == ("killed", True)


def test_checkpoint_resumes_whole_or_not_at_all(tmp_path: Path) -> None:
    r, data, tok = _setup(tmp_path, **{"train.epochs": 1})
    folder = tmp_path / "train"
    folder.mkdir()
    state = train(r, tokenizer=tok, data=data, train_dir=folder, accelerator=Accelerator(cpu=True),
                  events=lambda **_: None)
    ckpt = torch.load(folder / CHECKPOINT, map_location="cpu", weights_only=False)
    assert ckpt["train_key"] == r.train_key() and "git_commit" in ckpt and ckpt["epoch"] == 1
    # resume at 2 epochs: starts from the saved epoch
    r2 = r.with_updates({"train.epochs": 2})
    ckpt["train_key"] = r2.train_key()
    torch.save(ckpt, folder / CHECKPOINT)
    events: list[dict[str, object]] = []
    s2 = train(r2, tokenizer=tok, data=data, train_dir=folder, accelerator=Accelerator(cpu=True),
               events=lambda **e: events.append(e))
    assert s2.resumed_from == 1 and s2.step == 2 * state.step
    # a checkpoint missing one tensor is not half-loaded: training restarts from scratch, warned
    bad = torch.load(folder / CHECKPOINT, map_location="cpu", weights_only=False)
    dropped = next(iter(bad["model"]))
    del bad["model"][dropped]
    torch.save(bad, folder / CHECKPOINT)
    with pytest.warns(UserWarning, match="keys differ"):
        s3 = train(r2, tokenizer=tok, data=data, train_dir=folder, accelerator=Accelerator(cpu=True),
                   events=lambda **_: None)
    assert s3.resumed_from is None
    # a wrong shape is refused before loading, and a finished training's weights load exactly or raise
    bad = torch.load(folder / CHECKPOINT, map_location="cpu", weights_only=False)
    name = next(k for k, v in bad["model"].items() if v.dim() == 2)
    bad["model"][name] = bad["model"][name][:, :1]
    torch.save(bad, folder / CHECKPOINT)
    from sweepdae.cell.build import build_model

    with pytest.raises(TrainingError, match="shape") as e:
        load_weights(folder / CHECKPOINT, r2.train_key(), build_model(r2, tok, 10), ema=False)
    assert e.value.failure_class == "bad_checkpoint"


@pytest.mark.parametrize("knobs", [{}, {"data.augment": "random_resized_crop", "train.ema_decay": 0.9}],
                         ids=["encoded-once", "augmented+ema"])
def test_stop_request_checkpoints_mid_epoch_and_the_resume_is_exact(tmp_path: Path, knobs: dict[str, object]
                                                                    ) -> None:
    """A training stopped on request mid-epoch and resumed ends bitwise where an uninterrupted one does: the saved
    batch index replays the epoch's data order, the saved step-generator state its time steps and noise."""
    r, data, tok = _setup(tmp_path, **{"train.epochs": 2, **knobs})  # 4 steps an epoch
    acc = Accelerator(cpu=True)
    whole = train(r, tokenizer=tok, data=data, train_dir=tmp_path / "whole", accelerator=acc, events=lambda **_: None)
    folder = tmp_path / "stopped"
    asked = iter(range(100))  # stop() is asked after every step but an epoch's last: the 5th ask is epoch 1, batch 2
    with pytest.raises(TrainingError, match="stopped on request") as e:
        train(r, tokenizer=tok, data=data, train_dir=folder, accelerator=acc, events=lambda **_: None,
              stop=lambda: next(asked) == 4)
    assert e.value.failure_class == "preempted" and classify(e.value) == ("preempted", True)
    ckpt = torch.load(folder / CHECKPOINT, map_location="cpu", weights_only=False)
    assert (ckpt["epoch"], ckpt["batch"], ckpt["step"]) == (1, 2, 6)
    events: list[dict[str, object]] = []
    resumed = train(r, tokenizer=tok, data=data, train_dir=folder, accelerator=acc,
                    events=lambda **ev: events.append(ev))
    assert {"resumed_from_epoch": 1, "step": 6, "batch": 2}.items() <= events[0].items()
    assert resumed.step == whole.step == 8 and resumed.resumed_from == 1
    # the curve too: the stopped run's points come back from the checkpoint (step, loss, lr, grad norm equal)
    assert [p[0] for p in whole.curve] == list(range(1, 9))
    assert [p[:4] for p in resumed.curve] == [p[:4] for p in whole.curve]
    for name, p in whole.model.state_dict().items():
        assert torch.equal(p, resumed.model.state_dict()[name]), name
    if whole.ema is not None and resumed.ema is not None:
        for a, b in zip(whole.ema.parameters(), resumed.ema.parameters(), strict=True):
            assert torch.equal(a, b)
    # a stopped training that resumes without the batch index (an epoch-boundary checkpoint) is not exact: the
    # comparison above can fail
    ckpt["batch"], ckpt["gd_state"] = 0, None
    torch.save(ckpt, folder / CHECKPOINT)
    off = train(r, tokenizer=tok, data=data, train_dir=folder, accelerator=acc, events=lambda **_: None)
    assert not all(torch.equal(p, off.model.state_dict()[n]) for n, p in whole.model.state_dict().items())


def test_single_level_cell_is_probed_at_its_own_t(tmp_path: Path) -> None:
    r = recipe_from_flat({**BASE, "train.epochs": 1, "noise.levels": "single", "noise.schedule": "sigma_linear"})
    run_dir = tmp_path / "runs" / r.key()
    atomic_write_json(run_dir / "recipe.json", {"key": r.key(), "label": "single", "recipe": r.to_dict()})
    m = run_cell(run_dir)["metrics"]
    assert m["probe_t"] == 407 and 0 <= m["probe_top1_t10"] <= 100 and 0 <= m["probe_top1"] <= 100
    assert torch.load(run_dir / "features.pt")["t"] == 407 and torch.load(run_dir / "features_t10.pt")["t"] == 10


def test_pool2x2_cell_adds_its_readout_and_keeps_the_mean_pooled_probe(tmp_path: Path) -> None:
    """probe.pool2x2 records probe_top1_pool2x2 from its own feature cache ([N, 4C]); probe_top1 is the same
    cell's without it."""
    rs = [recipe_from_flat({**BASE, "train.epochs": 1, "probe.pool2x2": on}) for on in (False, True)]
    ms = []
    for r in rs:
        run_dir = tmp_path / "runs" / r.key()
        atomic_write_json(run_dir / "recipe.json", {"key": r.key(), "label": "pool", "recipe": r.to_dict()})
        ms.append(run_cell(run_dir)["metrics"])
    plain, pooled = ms
    assert "probe_top1_pool2x2" not in plain and 0 <= pooled["probe_top1_pool2x2"] <= 100
    assert pooled["probe_top1"] == plain["probe_top1"] and pooled["knn_top1"] == plain["knn_top1"]
    mean, quads = (torch.load(tmp_path / "runs" / rs[1].key() / f) for f in ("features.pt", "features_pool2x2.pt"))
    assert quads["pool"] == "2x2" and "pool" not in mean
    assert quads["train"][0].shape[1] == 4 * mean["train"][0].shape[1]
    assert not (tmp_path / "runs" / rs[0].key() / "features_pool2x2.pt").exists()


def test_a_cell_records_its_cpu_thread_count(tmp_path: Path) -> None:
    """CPU float results repeat bitwise at one thread count but not across counts, so a cell records its count."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        r = recipe_from_flat({**BASE, "train.epochs": 1})
        run_dir = tmp_path / "runs" / r.key()
        atomic_write_json(run_dir / "recipe.json", {"key": r.key(), "label": "one thread", "recipe": r.to_dict()})
        assert run_cell(run_dir)["provenance"]["cpu_threads"] == 1
    finally:
        torch.set_num_threads(before)


def test_cells_of_one_training_share_it(tmp_path: Path) -> None:
    """Two cells that differ only in evaluation (probe t): the first trains, the second loads that training."""
    results = []
    for t in (10, 40):
        r = recipe_from_flat({**BASE, "probe.t": t})
        run_dir = tmp_path / "runs" / r.key()
        atomic_write_json(run_dir / "recipe.json", {"key": r.key(), "label": f"t={t}", "recipe": r.to_dict()})
        results.append(run_cell(run_dir))
    a, b = results
    assert a["train_key"] == b["train_key"] and a["key"] != b["key"]
    assert (a["reused_training"], b["reused_training"]) == (False, True) and b["trained_by"] == a["key"]
    assert b["metrics"]["train_loss"] == a["metrics"]["train_loss"]  # the same training's numbers
    reportable = {m for m in a["metrics"] if m in METRICS}
    assert reportable == {"probe_top1", "probe_top5", "knn_top1", "train_loss", "train_seconds", "images_per_s"}
    assert b["timings"]["train_s"] < a["timings"]["train_s"] / 3
    folders = list((tmp_path / "runs" / "_train").iterdir())
    assert [f.name for f in folders] == [a["train_key"]]
    assert json.loads((folders[0] / TRAINED).read_text())["cell"] == a["key"]
    # no checkpoint in the cell folders: the training lives once, beside them
    assert not list((tmp_path / "runs").glob("[0-9a-f]*/checkpoint.pt"))


def test_result_and_trained_json_read_back_and_write_the_same_bytes(tmp_path: Path) -> None:
    """result.json and trained.json as the cell writes them: read into their dataclass and written again, the
    bytes are the same; a foreign or unfinished file reads as None; an older result lacking keys reads."""
    trained = {"train_key": "tk", "cell": "c1", "epochs": 2, "steps": 8, "train_loss": 0.5, "images_per_s": 10.0,
               "seconds": 1.5, "resumed_from_epoch": None, "git_commit": None, "curve_fields": ["step", "loss"],
               "curve": [[1.0, 0.5]], "finished": 1.0}
    folder = tmp_path / "_train" / "tk"
    atomic_write_json(folder / TRAINED, trained)
    assert read_trained(folder, "tk") is None  # no checkpoint: not finished
    (folder / CHECKPOINT).write_bytes(b"")
    info = read_trained(folder, "tk")
    assert info is not None and info.cell == "c1" and read_trained(folder, "other") is None
    before = (folder / TRAINED).read_bytes()
    info.write(folder)
    assert (folder / TRAINED).read_bytes() == before and TrainedInfo.from_dict(trained).to_dict() == trained
    result = {"key": "k", "train_key": "tk", "reused_training": False, "trained_by": "c1", "metrics": {"a": 1.0},
              "timings": {"probe_s": 1.0}, "artifacts": {}, "tokenizer": {}, "steps": 8, "resumed_from_epoch": None,
              "world_size": 1, "phases": {}, "provenance": {"seed": 0}, "finished": 2.0}
    run_dir = tmp_path / "k"
    atomic_write_json(run_dir / "result.json", result)
    before = (run_dir / "result.json").read_bytes()
    got = read_result(run_dir, "k")
    assert got is not None and got.to_dict() == result and read_result(run_dir, "other") is None
    got.write(run_dir)
    assert (run_dir / "result.json").read_bytes() == before
    old = CellResult.from_dict({"key": "k", "metrics": {"a": 1.0}})
    assert old.metrics == {"a": 1.0} and old.phases == {} and old.world_size == 1


def test_the_other_processes_of_a_cell_keep_the_main_process_failure(tmp_path: Path) -> None:
    """When a cell's main process fails, the launcher stops the others: their interruption ("killed", retried
    without using a retry) must not overwrite the main process's failure (here a recipe error, never retried)."""
    from sweepdae.errors import RecipeError

    main = write_failure(tmp_path, RecipeError("patch_size 7 does not divide 32"))
    other = write_failure(tmp_path, KeyboardInterrupt(), keep=True)
    stored = json.loads((tmp_path / "failure.json").read_text())
    assert main["failure_class"] == other["failure_class"] == stored["failure_class"] == "bad_recipe"
    (tmp_path / "new").mkdir()
    assert write_failure(tmp_path / "new", KeyboardInterrupt(), keep=True)["failure_class"] == "killed"  # its own
