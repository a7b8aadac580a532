"""The SLURM executor's parts that need no cluster: the grid's [slurm] table and its errors, option precedence,
submitit parameters, job owners, which groups a run submits, the store refusals and the CLI's usage errors.
(The real cluster runs in tests/test_slurm.py, marked `slurm`.)"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from sweepdae.cli import app
from sweepdae.errors import GridError, SweepdaeError
from sweepdae.grid import expand, parse_grid
from sweepdae.grid.schema import SlurmSpec
from sweepdae.runner import enqueue_plan
from sweepdae.runner import slurm as sl
from sweepdae.store import open_store

GRID = """
[grid]
name = "sl"
seeds = [0]

[base]
data.name = "digits"
data.image_size = 8
tokenizer.name = "patch_pca"
tokenizer.patch_size = 4
model.size = "micro"

[axes]
tokenizer.latent_dim = [2, 4]
probe.epochs = [2, 3]
"""
SLURM = """
[slurm]
partition = "gpu"
time = 30
mem_gb = 16.5

[slurm.by.latent_dim."4"]
time = 90
gpus = 2
constraint = "a100"
"""


def test_the_slurm_table_is_validated_and_kept_out_of_the_cell_keys() -> None:
    plain, with_slurm = parse_grid(GRID), parse_grid(GRID + SLURM)
    assert plain.slurm == SlurmSpec()
    assert with_slurm.slurm.options == {"partition": "gpu", "time": 30, "mem_gb": 16.5}
    assert with_slurm.slurm.by == {"latent_dim": {"4": {"time": 90, "gpus": 2, "constraint": "a100"}}}
    assert [c.key for c in expand(plain).cells] == [c.key for c in expand(with_slurm).cells]


@pytest.mark.parametrize(("table", "message"), [
    ('[slurm]\ntimee = 5', r"g.toml:\d+: slurm.timee: unknown key \(did you mean 'time'\?\)"),
    ('[slurm]\ntime = "1h"', r"slurm.time: must be an integer >= 1: the time limit of a job in minutes"),
    ('[slurm]\ngpus = -1', r"slurm.gpus: must be an integer >= 0"),
    ('[slurm]\ncpus = true', r"slurm.cpus: must be an integer >= 1"),
    ('[slurm]\npartition = ""', r"slurm.partition: must be a non-empty one-line string"),
    ('[slurm.by.d."2"]\ntime = 5', r"slurm.by.d: no axis 'd'.*axes: latent_dim, epochs"),
    ('[slurm.by.latent_dim."16"]\ntime = 5', r"slurm.by.latent_dim.16: no label '16' on axis 'latent_dim'; its "
                                             r"labels: 2, 4"),
    ('[slurm.by.latent_dim."2"]\nqueue = "x"', r"slurm.by.latent_dim.2.queue: unknown key"),
])
def test_slurm_table_errors_name_the_file_line_and_key(table: str, message: str) -> None:
    with pytest.raises(GridError, match=message) as e:
        parse_grid(GRID + table, "g.toml")
    assert "\n" not in str(e.value)


def test_a_profile_slurm_table_applies_to_that_profile_only() -> None:
    """`[profiles.NAME.slurm]` over the grid's `[slurm]`: the paper profile's jobs ask for a node's share of CPUs and
    days, the other profiles' keep the grid's (or the defaults); keys are unchanged."""
    text = GRID + SLURM + '\n[profiles.big]\ntrain.epochs = 3\n\n[profiles.big.slurm]\ncpus = 14\ntime = 600\n'
    g = parse_grid(text, "g.toml")
    base, big = expand(g), expand(g, "big")
    assert base.slurm == g.slurm and base.slurm.options == {"partition": "gpu", "time": 30, "mem_gb": 16.5}
    assert big.slurm.options == {"partition": "gpu", "time": 600, "mem_gb": 16.5, "cpus": 14}
    assert big.slurm.by == g.slurm.by
    d2 = [c for c in big.cells if c.coords["latent_dim"] == "2"]
    got = sl.resources(d2, big.slurm, cli={}, config={}, gpus_per_cell=1)
    assert (got["cpus"], got["time"]) == (14, 600)
    assert sl.resources(d2, base.slurm, cli={}, config={}, gpus_per_cell=1)["time"] == 30
    assert [c.key for c in expand(g, "big").cells] == [c.key for c in expand(parse_grid(
        GRID + '\n[profiles.big]\ntrain.epochs = 3\n'), "big").cells]
    with pytest.raises(GridError, match=r"g.toml:\d+: profiles.big.slurm.cpux: unknown key \(did you mean 'cpus'"):
        parse_grid(text.replace("cpus = 14", "cpux = 14"), "g.toml")


def _cells(text: str = GRID + SLURM) -> list[Any]:
    return list(expand(parse_grid(text)).cells)


def test_option_precedence_cli_then_axis_value_then_grid_then_user_config_then_defaults() -> None:
    spec = parse_grid(GRID + SLURM).slurm
    d2 = [c for c in _cells() if c.coords["latent_dim"] == "2"]
    d4 = [c for c in _cells() if c.coords["latent_dim"] == "4"]
    config = {"account": "proj", "time": 5, "cpus": 8}
    none = {"time": None, "gpus": None}
    assert sl.resources(d2, spec, cli=none, config=config, gpus_per_cell=1) == {
        "time": 30, "cpus": 8, "max_requeues": 3, "gpus": 1, "account": "proj", "partition": "gpu", "mem_gb": 16.5}
    got = sl.resources(d4, spec, cli=none, config=config, gpus_per_cell=1)
    assert (got["time"], got["gpus"], got["constraint"], got["partition"]) == (90, 2, "a100", "gpu")
    got = sl.resources(d4, spec, cli={"time": 10, "gpus": 4}, config=config, gpus_per_cell=4)
    assert (got["time"], got["gpus"]) == (10, 4)
    # a group whose cells sit at two values of an axis gets the larger time and GPUs of the two
    mixed = parse_grid(GRID + SLURM + '\n[slurm.by.latent_dim."2"]\ntime = 120\ngpus = 1\n').slurm
    got = sl.resources(_cells(), mixed, cli={}, config={}, gpus_per_cell=1)
    assert (got["time"], got["gpus"]) == (120, 2)
    assert sl.resources([], SlurmSpec(), cli={}, config={}, gpus_per_cell=0) == {**sl.DEFAULTS, "gpus": 0}


def test_per_gpu_cpus_and_memory_scale_with_the_jobs_gpus() -> None:
    """cpus_per_gpu / mem_gb_per_gpu give a job N x them for its N GPUs (sbatch --cpus-per-gpu, --mem-per-gpu);
    a total given at a higher layer (a later table, the command line) replaces them, and one table may not name
    both; submitit gets the totals."""
    text = GRID + '\n[profiles.big]\ntrain.epochs = 3\n\n[profiles.big.slurm]\ncpus_per_gpu = 14\nmem_gb_per_gpu = 30\n'
    g = parse_grid(text)
    spec = g.slurm.with_profile(g.profiles["big"])
    cells = list(expand(g, "big").cells)
    one = sl.resources(cells, spec, cli={}, config={"cpus": 8}, gpus_per_cell=1)
    eight = sl.resources(cells, spec, cli={"cpus": None}, config={"cpus": 8}, gpus_per_cell=8)
    assert (one["cpus"], one["mem_gb"], eight["cpus"], eight["mem_gb"]) == (14, 30, 112, 240)
    assert sl.resources(cells, spec, cli={}, config={}, gpus_per_cell=0)["cpus"] == 14  # a CPU job: one share
    cli = sl.resources(cells, spec, cli={"cpus": 20, "mem_gb": 64.0}, config={}, gpus_per_cell=8)
    assert (cli["cpus"], cli["mem_gb"]) == (20, 64.0) and "cpus_per_gpu" not in cli
    p = sl.executor_parameters(eight)
    assert p["cpus_per_task"] == 112 and p["mem"] == f"{240 * 1024}M" and p["gres"] == "gpu:8"
    # the grid's [slurm] total is replaced by the profile's per-GPU value
    over = parse_grid(GRID + "\n[slurm]\ncpus = 4\n" + text.removeprefix(GRID))
    spec = over.slurm.with_profile(over.profiles["big"])
    assert sl.resources(cells, spec, cli={}, config={}, gpus_per_cell=2)["cpus"] == 28
    with pytest.raises(GridError, match=r"slurm.cpus_per_gpu: give cpus \(the job's\) or cpus_per_gpu"):
        parse_grid(GRID + "\n[slurm]\ncpus = 4\ncpus_per_gpu = 2\n")
    # two [slurm.by] tables of one job, one with each: refused, not one silently winning
    mixed = parse_grid(GRID + '\n[slurm.by.latent_dim."2"]\ncpus = 6\n\n[slurm.by.latent_dim."4"]\ncpus_per_gpu = 3\n')
    both = list(expand(mixed, None).cells)
    with pytest.raises(SweepdaeError, match=r"\[slurm.by\] tables of one job give both cpus and cpus_per_gpu"):
        sl.resources(both, mixed.slurm, cli={}, config={}, gpus_per_cell=2)
    one = [c for c in both if c.coords["latent_dim"] == "4"]
    assert sl.resources(one, mixed.slurm, cli={}, config={}, gpus_per_cell=2)["cpus"] == 6


def test_executor_parameters() -> None:
    p = sl.executor_parameters({"time": 90, "cpus": 8, "gpus": 2, "mem_gb": 16.5, "partition": "gpu",
                                "account": "proj", "qos": None, "max_requeues": 3})
    assert p == {"time": 90, "cpus_per_task": 8, "ntasks_per_node": 1, "nodes": 1, "gres": "gpu:2",
                 "mem": "16896M", "partition": "gpu", "account": "proj", "additional_parameters": {"requeue": True}}
    assert "gres" not in sl.executor_parameters({"time": 5, "cpus": 1, "gpus": 0})


def test_user_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("SWEEPDAE_SLURM_CONFIG", raising=False)
    assert sl.user_config() == {}
    cfg = tmp_path / ".config" / "sweepdae" / "slurm.toml"
    cfg.parent.mkdir(parents=True)
    cfg.write_text('account = "proj"\nqos = "high"\n')
    assert sl.user_config() == {"account": "proj", "qos": "high"}
    cfg.write_text('[slurm]\ntime = "long"\n')
    with pytest.raises(SweepdaeError, match=r"slurm.toml: slurm.time: must be an integer"):
        sl.user_config()
    monkeypatch.setenv("SWEEPDAE_SLURM_CONFIG", str(tmp_path / "none.toml"))
    with pytest.raises(SweepdaeError, match="none.toml: no such SLURM config file"):
        sl.user_config()


def test_job_owners(monkeypatch: pytest.MonkeyPatch) -> None:
    tag = sl.owner_tag("12_3", 2)
    assert sl.parse_owner(f"{tag}@node7:4242") == ("12_3", 2)
    assert sl.parse_owner("node7:4242") is None and sl.parse_owner("slurm-x@h:1") is None
    asked: list[list[str]] = []

    def states(ids: Any) -> dict[str, str]:
        ids = list(ids)
        asked.append(ids)
        return {j: {"5": "RUNNING", "6": "CANCELLED"}.get(j, "GONE") for j in ids}

    monkeypatch.setattr(sl, "job_states", states)
    mine = sl.DeadJobOwner(me=("12_3", 2))
    # an earlier run of this very job (requeued since) is gone; this run is not; SLURM is not asked for either
    assert mine("slurm-12_3.1@node7:1") and not mine("slurm-12_3.2@node7:1") and not asked
    dead = sl.DeadJobOwner(every_s=0)
    assert not dead("slurm-5.0@n:1") and dead("slurm-6.0@n:1") and dead("slurm-7.0@n:1")
    assert not dead("n:1")  # not a SLURM job's: the lease decides


def test_job_store_url_is_absolute_for_a_journal(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("SWEEPDAE_STORE", raising=False)
    assert sl.job_store_url("journal:s.journal") == f"journal:{tmp_path / 's.journal'}"
    assert sl.job_store_url(None) == f"journal:{tmp_path / 'sweepdae.journal'}"
    assert sl.job_store_url("postgresql://u@db/x") == "postgresql://u@db/x"


def test_groups_are_the_queued_cells_no_live_job_holds_by_training(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    plan = expand(parse_grid(GRID + SLURM))
    by_tk: dict[str, list[str]] = {}
    for c in plan.cells:  # probe.epochs leaves the training alone: two cells per training
        by_tk.setdefault(c.train_key, []).append(c.key)
    assert sorted(map(len, by_tk.values())) == [2, 2]
    live = {"1_0": "RUNNING", "1_1": "CANCELLED"}
    monkeypatch.setattr(sl, "job_states", lambda ids: {j: live.get(j, "GONE") for j in ids})
    with open_store(f"journal:{tmp_path / 's.journal'}") as store:
        enqueue_plan(store, plan, list(plan.cells))
        groups, held = sl.plan_groups(store, list(plan.cells), spec=plan.grid.slurm, cli={}, config={},
                                      gpus_per_cell=1)
        assert sorted(sorted(c.key for c in g.cells) for g in groups) == sorted(map(sorted, by_tk.values()))
        assert {g.train_key: g.options["time"] for g in groups} == {
            c.train_key: 90 if c.coords["latent_dim"] == "4" else 30 for c in plan.cells}
        assert held == {}
        tk2, tk4 = (next(c.train_key for c in plan.cells if c.coords["latent_dim"] == d) for d in "24")
        store.record_jobs([{"job_id": "1_0", "keys": by_tk[tk2], "submitted": 1.0},
                           {"job_id": "1_1", "keys": by_tk[tk4], "submitted": 2.0}])
        groups, held = sl.plan_groups(store, list(plan.cells), spec=plan.grid.slurm, cli={}, config={},
                                      gpus_per_cell=1)
        # the live job keeps its cells; the cancelled job's cells are submitted again
        assert [g.train_key for g in groups] == [tk4] and held == dict.fromkeys(by_tk[tk2], "1_0")
        jobs = sl.job_of_cells(store, None)
        assert {k: j["state"] for k, j in jobs.items()} == {**dict.fromkeys(by_tk[tk2], "RUNNING"),
                                                          **dict.fromkeys(by_tk[tk4], "CANCELLED")}


@pytest.fixture
def grid(tmp_path: Path) -> Path:
    p = tmp_path / "sl.toml"
    p.write_text(GRID)
    return p


@pytest.mark.parametrize(("args", "message"), [
    (["--wait"], "--wait: only with --executor slurm"),
    (["--time", "30"], "--time: a SLURM option; add --executor slurm"),
    (["--executor", "pbs"], "--executor: expected local or slurm, got 'pbs'"),
    (["--executor", "slurm", "--time", "0"], "--time: must be an integer >= 1"),
    (["--executor", "slurm", "--gpus-per-cell", "-1"], "--gpus-per-cell: expected an integer >= 0"),
    (["--gpus-per-cell", "0"], "--gpus-per-cell: expected an integer >= 1"),
])
def test_run_usage_errors_of_the_slurm_options(grid: Path, tmp_path: Path, args: list[str], message: str,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sl, "submit", lambda *a, **k: pytest.fail("submitted"))
    r = CliRunner().invoke(app, ["run", str(grid), "--store", f"journal:{tmp_path / 's.journal'}", *args])
    assert isinstance(r.exception, SweepdaeError) and message in str(r.exception), (r.output, r.exception)
    assert not (tmp_path / "s.journal").exists()  # refused before the store was touched


def test_slurm_refuses_an_sqlite_store_and_warns_on_a_journal(grid: Path, tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    submitted: list[int] = []
    monkeypatch.setattr(sl, "submit", lambda groups, **k: submitted.append(len(groups)) or [])
    monkeypatch.setattr(sl, "job_states", lambda ids: dict.fromkeys(ids, "GONE"))
    monkeypatch.setattr(sl, "user_config", lambda: {})
    r = CliRunner().invoke(app, ["run", str(grid), "--executor", "slurm", "--store",
                                 f"sqlite:///{tmp_path / 's.db'}"])
    assert isinstance(r.exception, SweepdaeError) and "SQLite store cannot be shared by cluster jobs" in str(
        r.exception) and not submitted
    r = CliRunner().invoke(app, ["run", str(grid), "--executor", "slurm", "--store",
                                 f"journal:{tmp_path / 's.journal'}"])
    assert r.exit_code == 0, (r.output, r.exception)
    assert "journal store: every node must see the same file" in r.output and submitted == [2]


@pytest.mark.parametrize(("table", "key"), [('[slurm]\npartition = "-a b"', "slurm.partition"),
                                            ('[slurm.by.latent_dim."2"]\nqos = "x y"', "slurm.by.latent_dim.2.qos"),
                                            ('[profiles.p.slurm]\naccount = "--wrap=x"', "profiles.p.slurm.account")])
def test_slurm_option_strings_are_checked_when_the_grid_is_read(table: str, key: str) -> None:
    """Every value a grid sets is validated at plan time, whichever executor later runs it: a SLURM string sbatch
    would misread (a space, a leading '-') is refused by `plan`, not only by `run --executor slurm`."""
    with pytest.raises(GridError, match=rf"g.toml:\d+: {re.escape(key)}: expected .*not starting with '-'") as e:
        parse_grid(GRID + table, "g.toml")
    assert "\n" not in str(e.value)
