"""`sweepdae tune`: the search space and its refusals, and a real search on a 6-point grid that never trains a
recipe twice, prunes what the grid excludes, stops when the space is exhausted and trains nothing when rerun."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import optuna
import pytest
from optuna.trial import TrialState

from sweepdae.errors import GridError, SweepdaeError
from sweepdae.grid import expand, parse_grid
from sweepdae.runner import tune as tn
from sweepdae.store import open_store

GRID = """
[grid]
name = "tn"
seeds = [0]

[base]
data.name = "digits"
data.image_size = 8
data.train_size = 512
tokenizer.name = "patch_pca"
tokenizer.patch_size = 4
tokenizer.pca_num_patches = 2000
model.size = "micro"
train.batch_size = 64
train.warmup_epochs = 0.5
probe.epochs = 5

[axes]
tokenizer.latent_dim = [2, 4, 8]
train.epochs = [1, 2]
"""


def test_the_default_space_is_one_categorical_per_axis_and_its_cells_are_runs_cells() -> None:
    g = parse_grid(GRID + '\n[[zip]]\nname = "obj"\nobjective.target = ["eps", "image"]\n'
                          'objective.output_space = ["latent", "image"]\n', "tn.toml")
    space = tn.search_space(g, None)
    assert [d.name for d in space.dims] == ["latent_dim", "epochs", "obj"] and space.size() == 12
    point = {"latent_dim": "4", "epochs": "2", "obj": "image/image"}
    cells = space.cells(point)
    assert not isinstance(cells, str)
    by_key = {c.key: c for c in expand(g).cells}
    assert [c.key for c in cells] == [c.key for c in by_key.values()
                                      if c.coords["latent_dim"] == "4" and c.coords["epochs"] == "2"
                                      and c.coords["obj"] == "image/image"]


def test_tune_params_replace_the_axes_of_their_knobs() -> None:
    g = parse_grid(GRID + '\n[tune]\nmetric = "knn_top1"\n[tune.params]\n'
                          '"tokenizer.latent_dim" = { type = "int", low = 2, high = 16, log = true }\n'
                          'train.base_lr = { type = "float", low = 1e-5, high = 1e-3, log = true }\n'
                          'model.size = { type = "categorical", choices = ["micro", "tiny"] }\n', "tn.toml")
    assert g.tune.metric == "knn_top1"
    space = tn.search_space(g, None)
    assert [d.name for d in space.dims] == ["epochs", "tokenizer.latent_dim", "train.base_lr", "model.size"]
    assert space.size() is None  # continuous ranges
    cells = space.cells({"epochs": "1", "tokenizer.latent_dim": 5, "train.base_lr": 3e-4, "model.size": "tiny"})
    assert not isinstance(cells, str)
    r = cells[0].recipe
    assert (r.tokenizer.latent_dim, r.train.base_lr, r.model.size.value, r.train.epochs) == (5, 3e-4, "tiny", 1)
    assert cells[0].label == "epochs=1 latent_dim=5 base_lr=0.0003 size=tiny seed=0"
    # a point whose recipe is invalid has no cells, and says why
    why = space.cells({"epochs": "1", "tokenizer.latent_dim": 17, "train.base_lr": 3e-4, "model.size": "tiny"})
    assert isinstance(why, str) and why.startswith("invalid recipe: ")


@pytest.mark.parametrize(("table", "message"), [
    ('[tune]\nmetrc = "fid"', r"tn.toml:\d+: tune.metrc: unknown key \(did you mean 'metric'\?\)"),
    ('[tune]\nmetric = "acc"', r"tune.metric: unknown metric 'acc'"),
    ('[tune]\ndirection = "up"', r'tune.direction: must be "maximize" or "minimize"'),
    ('[tune.params]\n"train.lr" = { type = "float", low = 1, high = 2 }', r"tune.params.train.lr: unknown knob"),
    ('[tune.params]\n"train.base_lr" = { type = "float", low = 2, high = 1 }', r"low \(2\) must be below high"),
    ('[tune.params]\n"train.base_lr" = { type = "float", low = 0, high = 1, log = true }', r"log range needs low > 0"),
    ('[tune.params]\n"tokenizer.latent_dim" = { type = "int", low = 2, high = 9.5 }', r"high: must be an integer"),
    ('[tune.params]\n"tokenizer.latent_dim" = { type = "int", low = 1, high = 8, step = 2, log = true }',
     r"log range takes no step"),
    ('[tune.params]\n"model.size" = { type = "int", low = 1, high = 3 }', r"model.size.low: .*"),
    ('[tune.params]\n"model.size" = { type = "categorical", choices = ["micro", "huge"] }', r"model.size.choices"),
    ('[tune.params]\n"model.size" = { type = "categorical", choices = [] }', r"must be a non-empty array"),
    ('[tune.params]\n"model.size" = { type = "choice", choices = ["micro"] }', r'type: must be "int", "float"'),
    ('[tune.params]\n"model.size" = { type = "categorical", choices = ["micro"], low = 1 }',
     r"unknown key for a categorical range"),
    ('[tune.params]\nseed = { type = "int", low = 0, high = 3 }', r"a cell's seed comes from grid.seeds"),
])
def test_tune_table_errors_name_the_file_line_and_key(table: str, message: str) -> None:
    with pytest.raises(GridError, match=message) as e:
        parse_grid(GRID + "\n" + table, "tn.toml")
    assert "\n" not in str(e.value)


def test_refusals() -> None:
    traj = parse_grid('[grid]\nname = "t"\n[base]\ndata.name = "digits"\ndata.image_size = 8\n'
                      '[[trajectory]]\nlabel = "a"\n[[trajectory]]\nlabel = "b"\n'
                      'set = { "model.size" = "tiny" }\n', "t.toml")
    with pytest.raises(SweepdaeError, match=r"t.toml: tune: grid 't' is a trajectory"):
        tn.search_space(traj, None)
    half = parse_grid(GRID + '\n[[zip]]\nname = "obj"\nobjective.target = ["eps", "image"]\n'
                             'objective.output_space = ["latent", "image"]\n[tune.params]\n'
                             '"objective.target" = { type = "categorical", choices = ["eps", "image"] }\n', "h.toml")
    with pytest.raises(SweepdaeError, match=r"objective.target is on axis 'obj', which also sets "
                                            r"objective.output_space"):
        tn.search_space(half, None)
    bare = parse_grid('[grid]\nname = "b"\n[base]\ndata.name = "digits"\ndata.image_size = 8\n', "b.toml")
    with pytest.raises(SweepdaeError, match="nothing to search"):
        tn.search_space(bare, None)
    assert tn.default_direction("fid") == "minimize" and tn.default_direction("train_loss") == "minimize"
    assert tn.default_direction("probe_top1") == "maximize"


def _trainings(store: Any) -> dict[str, int]:
    """train_key -> how many of its attempts ran (the trainings study: one trial per attempt at a training)."""
    trs = store._training_store(create=False)
    counts: dict[str, int] = {}
    for t in trs._trials():
        counts[str(t.user_attrs.get("key"))] = counts.get(str(t.user_attrs.get("key")), 0) + 1
    return counts


@pytest.mark.slow  # 25-45 s of CI's default suite: whole sweeps, cell after cell
def test_tune_never_trains_a_recipe_twice_prunes_exclusions_and_stops_when_exhausted(
        tmp_path: Path, sweepdae: Any) -> None:
    grid = tmp_path / "tn.toml"
    # 6 points, one excluded: 5 to run
    grid.write_text(GRID + '\n[[exclude]]\ntokenizer.latent_dim = [8]\ntrain.epochs = [2]\n')
    url = f"journal:{tmp_path / 'store.journal'}"
    r = sweepdae(tmp_path, "tune", str(grid), "--trials", "4", "--seed", "0", "--store", url, "--plain",
                 "--runs-dir", str(tmp_path / "runs"), timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "4 complete" in r.stderr and "best probe_top1" in r.stderr
    r = sweepdae(tmp_path, "tune", str(grid), "--trials", "9", "--seed", "1", "--store", url, "--plain",
                 "--runs-dir", str(tmp_path / "runs"), timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "every one of the 6 points of the space was tried; stopping at 5 trials" in r.stderr, r.stderr
    with open_store(url, create=False) as s:
        (study,) = s.tune_studies()
        assert study.study_name == "sweepdae-tune:tn::probe_top1"
        trials = study.get_trials()
        complete = [t for t in trials if t.state == TrialState.COMPLETE]
        assert len(complete) == 5 and all(isinstance(t.value, float) and 0 < t.value <= 100 for t in complete)
        # each complete trial is a distinct point with its own cells, and every cell ran exactly once
        assert len({tuple(sorted(t.params.items())) for t in complete}) == 5
        keys = [k for t in complete for k in t.user_attrs["cells"]]
        assert len(keys) == len(set(keys)) == 5
        attempts = s.attempts(keys)
        assert len(attempts) == 5 and set(attempts["state"]) == {"COMPLETE"}
        assert set(_trainings(s).values()) == {1} and len(_trainings(s)) == 5
        # the excluded point was pruned, with its reason, and trained nothing
        (excluded,) = [t for t in trials if "pruned" in t.user_attrs]
        assert excluded.params == {"latent_dim": "8", "epochs": "2"} and excluded.state == TrialState.PRUNED
        assert "excluded" in excluded.user_attrs["pruned"]
        # proposals of tried points are pruned duplicates, never run
        assert all(t.state == TrialState.PRUNED for t in trials if "duplicate_of" in t.user_attrs)
        value_by_point = {tuple(sorted(t.params.items())): t.value for t in complete}
        cells = s.cells(keys).set_index("key")
        for t in complete:  # the value is the metric of its (one seed's) cell
            assert t.value == pytest.approx(float(cells.loc[t.user_attrs["cells"][0], "metric.probe_top1"]))
        assert len(value_by_point) == 5
    # the report renders the study: best recipe, history, importances, every trial
    r = sweepdae(tmp_path, "report", str(grid), "--store", url, "--html", "--csv", "--out", str(tmp_path / "rep"))
    assert r.returncode == 0, r.stderr
    page = (tmp_path / "rep" / "report.html").read_text()
    best = max(complete, key=lambda t: t.value)
    assert "Tune: tn, maximize probe_top1" in page and f"Trial {best.number}: probe_top1 = {best.value:.2f}" in page
    assert "Optimisation history" in page and "Parameter importances" in page
    data = json.loads((tmp_path / "rep" / "data" / "tune-tn-base-probe-top1.json").read_text())
    assert data["best"]["number"] == best.number and data["counts"]["complete"] == 5
    assert set(data["importances"]) == {"latent_dim", "epochs"}
    assert (tmp_path / "rep" / "figures" / "tune-tn-base-probe-top1-history.svg").exists()
    # once more: nothing left to train, nothing new enqueued
    r = sweepdae(tmp_path, "tune", str(grid), "--trials", "5", "--store", url, "--plain", "--runs-dir",
                 str(tmp_path / "runs"))
    assert r.returncode == 0 and "5 trials already complete" in r.stderr, r.stderr
    with open_store(url, create=False) as s:
        assert len(s.attempts()) == 5


def test_tune_reuses_cells_that_run_made(tmp_path: Path, sweepdae: Any) -> None:
    grid = tmp_path / "tn.toml"
    grid.write_text(GRID.replace("[2, 4, 8]", "[2]").replace("[1, 2]", "[1]"))
    r = sweepdae(tmp_path, "run", str(grid))
    assert r.returncode == 0, r.stderr
    r = sweepdae(tmp_path, "tune", str(grid), "--trials", "1", "--store", f"journal:{tmp_path / 'store.journal'}",
                 "--plain", "--runs-dir", str(tmp_path / "runs"))
    assert r.returncode == 0 and "1 of 1 cells already done (cached)" in r.stderr, r.stderr
    with open_store(f"journal:{tmp_path / 'store.journal'}", create=False) as s:
        assert len(s.attempts()) == 1
        (study,) = s.tune_studies()
        assert [t.state for t in study.get_trials()] == [TrialState.COMPLETE]


def test_a_study_keeps_its_direction(tmp_path: Path) -> None:
    with open_store(f"journal:{tmp_path / 's.journal'}") as s:
        s.tune_study("sweepdae-tune:x::fid", direction="minimize")
        with pytest.raises(SweepdaeError, match="was created to minimize its metric"):
            s.tune_study("sweepdae-tune:x::fid", direction="maximize")
        assert [st.direction for st in s.tune_studies()] == [optuna.study.StudyDirection.MINIMIZE]


def test_trials_of_a_stopped_tune_process_are_failed(tmp_path: Path) -> None:
    """A RUNNING trial whose tune process of this host is gone is failed (the search goes on); one of a live
    process, or of another host, is left running."""
    import socket
    import subprocess
    import sys

    from sweepdae.store import dead_local_owner, tune_study_name

    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    host = socket.gethostname()
    with open_store(f"journal:{tmp_path / 's.journal'}") as s:
        study = s.tune_study(tune_study_name("x", None, "fid"), direction="minimize")
        for owner in (f"{host}:{gone.pid}", f"{host}:{os.getpid()}", f"elsewhere:{gone.pid}"):
            study.ask().set_user_attr("owner", owner)
        assert s.fail_abandoned_tune_trials(study, dead_owner=dead_local_owner) == [(0, f"{host}:{gone.pid}")]
        trials = study.get_trials()
        assert [t.state for t in trials] == [TrialState.FAIL, TrialState.RUNNING, TrialState.RUNNING]
        assert trials[0].user_attrs["error"] == "its tune process stopped"


@pytest.mark.slow
def test_tune_the_quickstart_then_again_trains_nothing(tmp_path: Path, sweepdae: Any) -> None:
    """The issue's command in a scratch folder: `sweepdae tune quickstart --profile ci --trials 3` leaves a study
    with 3 complete trials that carry values; running it again trains nothing."""
    args = ["tune", "quickstart", "--profile", "ci", "--trials", "3", "--plain"]
    r = sweepdae(tmp_path, *args, timeout=900)
    assert r.returncode == 0, r.stdout + r.stderr
    with open_store(f"journal:{tmp_path / 'sweepdae.journal'}", create=False) as s:
        (study,) = s.tune_studies()
        complete = study.get_trials(states=(TrialState.COMPLETE,))
        assert len(complete) == 3 and all(t.value is not None and 0 < t.value <= 100 for t in complete)
        before = len(s.attempts())
    r = sweepdae(tmp_path, *args)
    assert r.returncode == 0 and "3 trials already complete" in r.stderr, r.stderr
    with open_store(f"journal:{tmp_path / 'sweepdae.journal'}", create=False) as s:
        assert len(s.attempts()) == before == 3
