"""runner/options.py and runner/sweep.py: Resources checked in one place; the closed sets of choices."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from sweepdae.errors import SweepdaeError
from sweepdae.runner.coordinator import Decision
from sweepdae.runner.launch import Launcher
from sweepdae.runner.options import Executor, Resources, SlurmOptions, choice
from sweepdae.runner.slots import PROCS_ENV
from sweepdae.runner.sweep import Sweep


def test_choices_keep_the_strings_of_the_command_line_and_the_store() -> None:
    assert [m.value for m in Launcher] == ["auto", "accelerate", "fork"]
    assert [m.value for m in Executor] == ["local", "slurm"]
    assert [m.value for m in Decision] == ["start", "wait", "elsewhere"]
    assert Resources(launcher="fork").launcher == "fork" and Resources().executor == "local"


@pytest.mark.parametrize(("kw", "message"), [
    ({"launcher": "slurm"}, "--launcher: expected auto, accelerate or fork, got 'slurm'"),
    ({"executor": "pbs"}, "--executor: expected local or slurm, got 'pbs'"),
])
def test_resources_refuse_a_value_outside_the_choices(kw: dict[str, str], message: str) -> None:
    with pytest.raises(SweepdaeError, match=message):
        Resources(**kw)


def test_choice_names_every_valid_value() -> None:
    assert choice(Launcher, "accelerate", "--launcher") is Launcher.ACCELERATE
    with pytest.raises(SweepdaeError, match="expected auto, accelerate or fork, got 'x'"):
        choice(Launcher, "x", "--launcher")


def test_apply_checks_gpus_per_cell_by_executor(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    Resources(gpus_per_cell=0, executor="slurm").apply()  # a CPU job
    with pytest.raises(SweepdaeError, match="--gpus-per-cell: expected an integer >= 1, got 0"):
        Resources(gpus_per_cell=0).apply()
    assert Resources().cell_gpus == 1 and Resources(gpus_per_cell=3).cell_gpus == 3


def test_apply_exports_what_the_cells_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    for name in ("SWEEPDAE_TRACKER", PROCS_ENV):  # recorded first, so what apply() exports is undone afterwards
        monkeypatch.setenv(name, "")
        monkeypatch.delenv(name)
    Resources(gpus="cpu", procs_per_cell=2, tracker="None").apply(dry_run=True)
    assert os.environ["SWEEPDAE_TRACKER"] == "none" and PROCS_ENV not in os.environ  # a dry run launches nothing
    Resources(gpus="cpu", procs_per_cell=2).apply()
    assert os.environ[PROCS_ENV] == "2"
    with pytest.raises(SweepdaeError, match="--procs-per-cell: local runs only"):
        Resources(gpus="cpu", procs_per_cell=2, executor="slurm").apply()
    (tmp_path / "file").write_text("")
    with pytest.raises(SweepdaeError, match="--runs-dir: .* is not a folder"):
        Resources(runs_dir=str(tmp_path / "file")).apply()


def test_sweep_options_that_do_not_go_together() -> None:
    local, slurm = Resources(), Resources(executor="slurm")
    with pytest.raises(SweepdaeError, match="--wait: only with --executor slurm"):
        Sweep(wait=True).check(local)
    Sweep(wait=True).check(slurm)
    with pytest.raises(SweepdaeError, match="--until-decided: every cell of the grids"):
        Sweep(until_decided=True).check(slurm)
    with pytest.raises(SweepdaeError, match="--rate: expected a positive number"):
        Sweep(rate=float("nan"), dry_run=True).check(local)


def test_slurm_options_given_are_the_ones_set() -> None:
    assert SlurmOptions().given() == {}
    assert SlurmOptions(time=30, mem_gb=4.0).given() == {"time": 30, "mem_gb": 4.0}
