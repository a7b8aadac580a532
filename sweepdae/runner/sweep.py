"""What `sweepdae run`, `worker` and `tune` call: the sweep itself (a dry run, rounds until decided, the local run
grid after grid, or SLURM jobs), a worker, a study; on the `Resources` of runner/options.py.

These functions print progress on the `err` console and results on `out`, and return the command's exit status
(0; 1: a cell not done; 130: stopped); errors are raised as SweepdaeError."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.text import Text

import sweepdae.runner  # run_plan, run_cells, run_worker, enqueue_plan: looked up where callers may replace them
from sweepdae.errors import GridError, SweepdaeError, printable
from sweepdae.grid import Plan, expand, load_grid
from sweepdae.grid.schema import check_slurm_options
from sweepdae.metrics import METRICS
from sweepdae.resources import resource_dir, shipped_grids
from sweepdae.runner import make_slots, parse_gpus, register_plan, runs_dir_for, select
from sweepdae.runner import slurm as sl
from sweepdae.runner import tune as tn
from sweepdae.runner.dry_run import dry_run
from sweepdae.runner.options import Resources, SlurmOptions
from sweepdae.runner.status import summary_table, wait
from sweepdae.store import Store, open_store


def grid_path(name: str) -> Path:
    """A grid file path, or the name of a grid shipped with sweepdae (`quickstart`, `tokenizer_dims`, ...)."""
    p = Path(name)
    if p.exists() or p.suffix == ".toml" or "/" in name:
        return p
    shipped = resource_dir("grids") / f"{name}.toml"
    if shipped.exists():
        return shipped
    raise GridError(f"{name}: no such grid file, and no shipped grid of that name (shipped: "
                    + ", ".join(shipped_grids()) + ")")


def load_plan(grid: str, profile: str | None) -> Plan:
    """The cells of a grid file or shipped grid under a profile."""
    return expand(load_grid(grid_path(grid)), profile)


# -- sweepdae run ------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Sweep:
    """What `sweepdae run` does besides the resources: which cells, and how it ends."""

    only: str | None = None  # regex over labels (or a key prefix)
    fail_fast: bool = False
    dry_run: bool = False
    rate: float | None = None  # TFLOP/s per device for the dry run's estimate
    json_out: bool = False  # the dry run's estimate as JSON on stdout
    until_decided: bool = False
    max_seeds: int | None = None  # --until-decided: the seeds of the last look (None: 10)
    report: bool = False  # write the HTML report at the end
    wait: bool = False  # slurm: watch the jobs until they end

    def check(self, res: Resources) -> None:
        """Refuse options that do not go together (before any grid is read)."""
        if self.wait and not res.slurm:
            raise SweepdaeError("--wait: only with --executor slurm (a local run always waits)")
        if self.rate is not None and not (math.isfinite(self.rate) and self.rate > 0):
            raise SweepdaeError(f"--rate: expected a positive number of TFLOP/s, got {self.rate!r}")
        if self.json_out and not self.dry_run:
            raise SweepdaeError("--json: only with --dry-run")
        if self.max_seeds is not None and not self.until_decided:
            raise SweepdaeError("--max-seeds: only with --until-decided")
        if self.until_decided and (self.only or res.slurm or self.json_out):
            raise SweepdaeError("--until-decided: every cell of the grids, on this machine (no --only, --executor "
                                "slurm or --json)")


def _slurm_options(res: Resources, slurm: SlurmOptions) -> SlurmOptions:
    """The command line's options for every SLURM job (its GPUs are --gpus-per-cell), checked as sbatch reads
    them; an error when one is given without --executor slurm."""
    given = slurm.given()
    if given and not res.slurm:
        raise SweepdaeError(f"--{next(iter(given)).replace('_', '-')}: a SLURM option; add --executor slurm")
    if not res.slurm:
        return slurm
    check_slurm_options(given, "option",  # types, ranges and the strings sbatch would misread
                        lambda key, msg: SweepdaeError(f"--{key.split('.')[-1].replace('_', '-')}: {msg}"))
    return replace(slurm, gpus=res.gpus_per_cell)


def run_sweep(grids: Sequence[str], *, profile: str | None, store_url: str | None, res: Resources,
              slurm: SlurmOptions, sweep: Sweep, err: Console, out: Console) -> int:
    """`sweepdae run`: every grid (and its profile) is checked before anything runs; then the dry run, the rounds
    until decided, the SLURM jobs, or the local run, grid after grid. Returns the exit status."""
    res.apply(dry_run=sweep.dry_run)
    slurm = _slurm_options(res, slurm)
    sweep.check(res)
    plans = [load_plan(g, profile) for g in grids]
    chosen = [select(p, sweep.only, allow_empty=len(plans) > 1) for p in plans]
    if not any(chosen):
        raise SweepdaeError(f"--only {sweep.only!r} matches none of the cells of "
                            + ", ".join(p.grid.name for p in plans))

    def say(m: str) -> None:
        err.print(Text(printable(m)), soft_wrap=True)

    if sweep.dry_run:
        slots = make_slots(parse_gpus(res.gpus), gpus_per_cell=max(1, res.cell_gpus),
                           cells_per_gpu=res.cells_per_gpu, cpu_cells=res.cpu_cells)
        dry_run(store_url, list(zip(plans, chosen, strict=True)), slots, sweep.rate, json_out=sweep.json_out,
                slurm=slurm, executor=res.executor, gpus_per_cell=res.cell_gpus, err=err, out=out)
        if sweep.until_decided:
            from sweepdae.runner.until_decided import dry_run_from_cli  # why: pandas, scipy: ~2 s

            dry_run_from_cli(store_url, plans, max_seeds=sweep.max_seeds or 10, rate_tflops=sweep.rate,
                             slots=len(slots), gpus=sorted({g for slot in slots for g in slot.gpus}), say=say)
        return 0
    if res.slurm:
        return run_slurm(store_url, plans, chosen, slurm=slurm, res=res, watch=sweep.wait, err=err)
    if sweep.until_decided:
        from sweepdae.runner.until_decided import run_from_cli  # why: pandas, scipy: ~2 s

        ok = run_from_cli(store_url, plans, max_seeds=sweep.max_seeds or 10, runs_dir=res.runs_dir, gpus=res.gpus,
                          gpus_per_cell=res.cell_gpus, cells_per_gpu=res.cells_per_gpu, cpu_cells=res.cpu_cells,
                          max_retries=res.max_retries, fail_fast=sweep.fail_fast, launcher=res.launcher,
                          plain=res.plain, say=say)
        return 0 if ok else 1
    return run_local(store_url, plans, chosen, res=res, sweep=sweep, err=err, out=out)


def run_local(url: str | None, plans: list[Plan], chosen: list[list[Any]], *, res: Resources, sweep: Sweep,
              err: Console, out: Console) -> int:
    """The grids one after the other on this machine's slots; the summary table, the report if asked."""
    s = open_store(url)
    statuses: dict[str, str] = {}  # every selected cell: as its grid's run left it, or as the store has it
    failed = False
    try:
        for p in plans:  # every grid of the sweep is in `status` and `report` from the start, pending cells too
            register_plan(s, p)
        stopped = False
        for p, cells in zip(plans, chosen, strict=True):
            if (sweep.fail_fast and failed) or stopped:  # the grids after a failure or Ctrl-C are not started;
                # their cells count as they are
                statuses.update({k: v for k, v in s.status([c.key for c in cells]).items() if k not in statuses})
                continue
            if not cells:
                continue
            summary = sweepdae.runner.run_plan(
                s, p, only=sweep.only, gpus=res.gpus, gpus_per_cell=res.cell_gpus, cells_per_gpu=res.cells_per_gpu,
                cpu_cells=res.cpu_cells, max_retries=res.max_retries, fail_fast=sweep.fail_fast,
                runs_dir=res.runs_dir, launcher=res.launcher, plain=res.plain)
            statuses.update(summary.statuses)
            failed = failed or not summary.ok
            stopped = summary.interrupted
        keys = sorted({c.key for cells in chosen for c in cells})
        err.print(summary_table(s, keys))
        if sweep.report:
            from sweepdae.report import write_reports  # why: pandas, scipy: ~2 s to import

            paths = write_reports(s, grids=list(dict.fromkeys(p.grid.name for p in plans)), out=Path("reports"),
                                  html=True, latex=False, csv=False, runs_dir=runs_dir_for(res.runs_dir))
            for path in paths:
                out.print(f"report: {path}")
    finally:
        s.close()
    if failed or any(v != "done" for v in statuses.values()):
        bad = sum(1 for v in statuses.values() if v != "done")
        err.print(f"[red]{bad} of {len(statuses)} cells not done[/red]")
        return 1
    return 0


def run_slurm(url: str | None, plans: list[Plan], chosen: list[list[Any]], *, slurm: SlurmOptions, res: Resources,
              watch: bool, err: Console) -> int:
    """`run --executor slurm`: enqueue every grid, submit a job for each training group that no live job holds,
    print the jobs, and return (or, with --wait, watch until they end)."""
    config = sl.user_config()
    store_url = sl.job_store_url(url)
    s = open_store(url)
    try:
        sl.check_store(s, lambda m: err.print(f"[yellow]warning:[/yellow] {m}", highlight=False))
        for p in plans:
            register_plan(s, p)
        all_keys: list[str] = []
        for p, cells in zip(plans, chosen, strict=True):
            if cells:
                all_keys += [c.key for c in cells]
                _submit_grid(s, p, cells, slurm=slurm, config=config, store_url=store_url, res=res, err=err)
        if not watch:
            err.print("jobs run on the cluster; watch them with `sweepdae status GRID --watch`", highlight=False)
            return 0
        try:
            st = wait(s, sorted(set(all_keys)), console=err, plain=res.plain)
        except KeyboardInterrupt:
            err.print("stopped watching; the jobs go on", highlight=False)
            return 130
        err.print(summary_table(s, sorted(set(all_keys))))
    finally:
        s.close()
    bad = sum(1 for v in st.values() if v != "done")
    if bad:
        left = sum(1 for v in st.values() if v == "queued")
        err.print(f"[red]{bad} of {len(st)} cells not done[/red]"
                  + (f" ({left} queued with no job: run the command again to submit them)" if left else ""))
        return 1
    return 0


def _submit_grid(s: Store, p: Plan, cells: list[Any], *, slurm: SlurmOptions, config: dict[str, Any],
                 store_url: str, res: Resources, err: Console) -> None:
    """Enqueue one grid's cells and submit a job for each training group that no live job holds; print them."""
    outcome = sweepdae.runner.enqueue_plan(s, p, cells)
    cached = sum(1 for v in outcome.values() if v == "cached")
    groups, held = sl.plan_groups(s, cells, spec=p.slurm, cli=slurm.given(), config=config, gpus_per_cell=res.cell_gpus)
    jobs = sl.submit(groups, store=s, store_url=store_url, plan=p, runs_dir=runs_dir_for(res.runs_dir),
                     launcher=res.launcher, max_retries=res.max_retries) if groups else []
    name = f"{p.grid.name} ({p.profile or 'base'})"
    err.print(f"{name}: {len(cells)} cells, {cached} done; submitted {len(jobs)} jobs "
              f"({sum(len(j['keys']) for j in jobs)} cells); {len(set(held.values()))} jobs already hold "
              f"{len(held)} cells", highlight=False)
    for j in jobs:
        o = j["options"]
        err.print(f"  job {j['job_id']}: {len(j['keys'])} cells ({printable(j['labels'][0])}"
                  f"{', ...' if len(j['keys']) > 1 else ''}), {o['time']} min, {o['cpus']} CPUs, "
                  f"{o.get('gpus') or 0} GPUs; log {j['log']}", highlight=False, markup=False)


# -- sweepdae worker, sweepdae tune ----------------------------------------------------------------------------------
def work(store_url: str | None, *, res: Resources, forever: bool, err: Console) -> int:
    """`sweepdae worker`: run queued cells of any grid from a shared store here."""
    res.apply()
    s = open_store(store_url, create=False)
    try:
        summary = sweepdae.runner.run_worker(
            s, gpus=res.gpus, gpus_per_cell=res.cell_gpus, cells_per_gpu=res.cells_per_gpu, cpu_cells=res.cpu_cells,
            max_retries=res.max_retries, forever=forever, runs_dir=res.runs_dir, launcher=res.launcher,
            plain=res.plain)
    finally:
        s.close()
    err.print(f"worker: {len(summary.done)} done, {len(summary.failed)} failed")
    return 1 if summary.failed else 0


def tune_grid(grid: str, *, profile: str | None, store_url: str | None, trials: int, metric: str | None,
              direction: str | None, sampler: str, seed: int | None, res: Resources, err: Console) -> int:
    """`sweepdae tune`: an Optuna study over the grid's axes (or its tune.params), each trial the grid's seeds of
    one point, run as `run` runs cells."""
    if sampler not in tn.SAMPLERS:
        raise SweepdaeError(f"--sampler: expected one of {', '.join(tn.SAMPLERS)}, got {sampler!r}")
    res.apply()
    g = load_grid(grid_path(grid))
    space = tn.search_space(g, profile)
    metric = metric or g.tune.metric or "probe_top1"
    if metric not in METRICS:
        raise SweepdaeError(f"--metric: unknown metric {metric!r}; valid: {', '.join(METRICS)}")
    direction = direction or g.tune.direction or tn.default_direction(metric)
    if direction not in ("maximize", "minimize"):
        raise SweepdaeError(f"--direction: expected maximize or minimize, got {direction!r}")
    s = open_store(store_url)
    try:
        summary = tn.tune(s, space, trials=trials, metric=metric, direction=direction, sampler=sampler, seed=seed,
                          run_cells=_trial_runner(s, g.name, space.profile, res),
                          say=lambda m: err.print(m, markup=False, highlight=False))
    finally:
        s.close()
    best = (f"best {metric} {summary.best_value:.2f} at "
            + " ".join(f"{k}={v}" for k, v in summary.best_params.items())) if summary.best_value is not None else \
        "no complete trial yet"
    err.print(f"{summary.study}: {summary.completed} complete, {summary.pruned} pruned, {summary.failed} failed; "
              f"{best}", markup=False, highlight=False)
    return 130 if summary.stopped else 0


def _trial_runner(s: Store, grid: str, profile: str | None, res: Resources) -> Callable[[list[Any]], Any]:
    """Runs one trial's cells on this machine's slots, as `run` does."""
    n = 0

    def run(cells: list[Any]) -> Any:
        nonlocal n
        n += 1
        return sweepdae.runner.run_cells(
            s, cells, grid=grid, profile=profile, title=f"{grid} tune trial {n}", gpus=res.gpus,
            gpus_per_cell=res.cell_gpus, cells_per_gpu=res.cells_per_gpu, cpu_cells=res.cpu_cells,
            max_retries=res.max_retries, runs_dir=res.runs_dir, launcher=res.launcher, plain=res.plain)

    return run
